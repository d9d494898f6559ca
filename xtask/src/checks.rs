//! What a boot's serial log must show: the checks every boot gets (QEMU's verdict, the kernel's
//! `exit status 0`, the APIC mode), and each application's own (cores, ipiq-tests, fpu-stress).
//! Each returns the reasons a log failed; none means it passed.

use std::fmt;

/// The APIC mode a CPU model gives the kernel, and the model `image-test` and `fpu-test` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    X2Apic,
    XApic,
}

impl ApicMode {
    pub fn parse(s: &str) -> Option<ApicMode> {
        match s {
            "x2APIC" => Some(ApicMode::X2Apic),
            "xAPIC" => Some(ApicMode::XApic),
            _ => None,
        }
    }

    /// The QEMU CPU model that gives this mode (FSGSBASE for the kernel's `fsgsbase` feature).
    pub fn model(self) -> &'static str {
        match self {
            ApicMode::X2Apic => "qemu64,+x2apic,+fsgsbase",
            ApicMode::XApic => "qemu64,+fsgsbase",
        }
    }
}

impl fmt::Display for ApicMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ApicMode::X2Apic => "x2APIC",
            ApicMode::XApic => "xAPIC",
        })
    }
}

/// Which kernel a boot ran, as far as the boot-log marker goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    Patched,
    Stock,
    StockProbe,
}

impl KernelKind {
    pub fn parse(s: &str) -> Option<KernelKind> {
        match s {
            "patched" => Some(KernelKind::Patched),
            "stock" => Some(KernelKind::Stock),
            "stock-probe" => Some(KernelKind::StockProbe),
            _ => None,
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelKind::Patched => "patched",
            KernelKind::Stock => "stock",
            KernelKind::StockProbe => "stock-probe",
        })
    }
}

/// The ipiq kernel's boot-log marker (kernel patch 0002).
pub const PATCH_MARKER: &str = "ipiq patch applied";

/// The checks every boot log gets: the runner's verdict, the kernel's `exit status 0` and the
/// APIC mode it reports using.
pub fn boot(log: &str, mode: ApicMode, qemu_passed: bool) -> Vec<String> {
    let mut reasons = Vec::new();
    if !qemu_passed {
        reasons.push(
            "QEMU did not report a successful exit (see the runner's message in the log)".into(),
        );
    }
    if !log.lines().any(|l| l == "exit status 0") {
        reasons.push("no 'exit status 0' from the kernel".into());
    }
    let used = log.lines().find_map(apic_in_use);
    if used != Some(mode.to_string()) {
        reasons.push(format!(
            "kernel uses '{}', expected {mode}",
            used.as_deref().unwrap_or("nothing")
        ));
    }
    reasons
}

/// "x2APIC" or "xAPIC" from the kernel's "APIC in use: ..." line.
fn apic_in_use(line: &str) -> Option<String> {
    let at = line.rfind("APIC in use:")?;
    let rest = line[at + "APIC in use:".len()..].trim_start_matches(' ');
    let mode_len = rest.find(|c| c != 'x' && c != '2').unwrap_or(rest.len());
    rest[mode_len..]
        .starts_with("APIC")
        .then(|| format!("{}APIC", &rest[..mode_len]))
}

fn first_line_starting<'a>(log: &'a str, prefix: &str) -> Option<&'a str> {
    log.lines().find(|l| l.starts_with(prefix))
}

/// The `cores` application: the processor count, one report per core in the expected APIC mode
/// with distinct APIC ids, its closing line, and the patch marker as the kernel says.
pub fn cores(
    log: &str,
    smp: u32,
    mode: ApicMode,
    kernel: KernelKind,
    qemu_passed: bool,
) -> Vec<String> {
    let mut reasons = boot(log, mode, qemu_passed);
    let counts: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("cores: "))
        .filter_map(|r| r.split_once(" (processor count)").map(|(n, _)| n))
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    if counts != [smp.to_string()] {
        let seen = if counts.is_empty() {
            "no".to_string()
        } else {
            counts.join(" ")
        };
        reasons.push(format!("application saw {seen} cores, expected {smp}"));
    }

    // "core N: apic id M (MODE)"
    let reports: Vec<(u64, u64, &str)> = log.lines().filter_map(core_report).collect();
    for core in 0..u64::from(smp) {
        let n = reports.iter().filter(|r| r.0 == core).count();
        if n != 1 {
            reasons.push(format!("core {core} reported {n} times"));
        }
    }
    let extra: Vec<String> = reports
        .iter()
        .filter(|r| r.0 >= u64::from(smp))
        .map(|r| r.0.to_string())
        .collect();
    if !extra.is_empty() {
        reasons.push(format!(
            "reports from cores outside 0..{}: {}",
            smp.saturating_sub(1),
            extra.join(" ")
        ));
    }
    let wrong_mode = reports.iter().filter(|r| r.2 != mode.to_string()).count();
    if wrong_mode > 0 {
        reasons.push(format!(
            "{wrong_mode} cores read their APIC id in another mode than {mode}"
        ));
    }
    let mut ids: Vec<u64> = reports.iter().map(|r| r.1).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        reasons.push(format!("APIC ids not distinct: {}", list.join(" ")));
    }

    let closing = format!("all {smp} cores reported");
    if !log.lines().any(|l| l == closing) {
        reasons.push(format!("no '{closing}' line"));
    }
    if let Some(error) = first_line_starting(log, "error") {
        reasons.push(format!("the application printed an error: {error}"));
    }
    let marker = log.contains(PATCH_MARKER);
    match kernel {
        KernelKind::Patched if !marker => reasons.push(format!(
            "patched kernel, but no '{PATCH_MARKER}' in the boot log"
        )),
        KernelKind::Stock if marker => reasons.push(format!(
            "stock kernel, but the boot log shows '{PATCH_MARKER}'"
        )),
        _ => {}
    }
    reasons
}

fn core_report(line: &str) -> Option<(u64, u64, &str)> {
    let rest = line.strip_prefix("core ")?;
    let (core, rest) = rest.split_once(": apic id ")?;
    let (id, rest) = rest.split_once(" (")?;
    let mode = rest.strip_suffix(')')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    matches!(mode, "x2APIC" | "xAPIC").then_some(())?;
    Some((number(core)?, number(id)?, mode))
}

/// The in-guest suite's tests, each of which must print `PASS NAME: ...`.
pub const IPIQ_TESTS: [&str; 14] = [
    "core_id",
    "send",
    "seq_wait",
    "send_passive",
    "errors",
    "send_many",
    "cpusync",
    "try_send",
    "passive_tick",
    "idle_tick",
    "stress",
    "stale_tlb",
    "stale_tlb_idle",
    "sched_locks",
];

/// The `ipiq-tests` application (patched kernel only): every test passed, none failed, no
/// watchdog gave up.
pub fn ipiq_tests(log: &str, smp: u32, mode: ApicMode, qemu_passed: bool) -> Vec<String> {
    let mut reasons = boot(log, mode, qemu_passed);
    if !log.contains(PATCH_MARKER) {
        reasons.push(format!("no '{PATCH_MARKER}' in the boot log"));
    }
    let start = format!("ipiq-tests: {smp} cores (ipiq serves {smp})");
    if first_line_starting(log, &start).is_none() {
        reasons.push(format!("application did not see {smp} cores"));
    }
    for test in IPIQ_TESTS {
        if first_line_starting(log, &format!("PASS {test}: ")).is_none() {
            let failure = first_line_starting(log, &format!("FAIL {test}: ")).unwrap_or("");
            reasons.push(format!("test {test} did not pass: {failure}"));
        }
    }
    let failed: Vec<&str> = log.lines().filter(|l| l.starts_with("FAIL ")).collect();
    if !failed.is_empty() {
        reasons.push(format!("failed: {};", failed.join(";")));
    }
    let total = format!("ipiq-tests: {} passed, 0 failed", IPIQ_TESTS.len());
    if !log.lines().any(|l| l == total) {
        reasons.push(format!("no '{total}' line"));
    }
    if let Some(l) = log.lines().find(|l| is_watchdog_give_up(l)) {
        reasons.push(format!("an ipiq watchdog gave up: {l}"));
    }
    reasons
}

/// "ipiq: cpu ... gave up"
fn is_watchdog_give_up(line: &str) -> bool {
    line.find("ipiq: cpu ")
        .is_some_and(|at| line[at + "ipiq: cpu ".len()..].contains(" gave up"))
}

/// `fpu-stress`: the patch marker, its start line for SMP cores and its PASS verdict.
pub fn fpu_stress(log: &str, smp: u32, mode: ApicMode, qemu_passed: bool) -> Vec<String> {
    let mut reasons = boot(log, mode, qemu_passed);
    if !log.contains(PATCH_MARKER) {
        reasons.push(format!("no '{PATCH_MARKER}' in the boot log"));
    }
    if first_line_starting(log, &format!("fpu-stress: {smp} cores")).is_none() {
        reasons.push(format!("no start line for {smp} cores"));
    }
    if !log.lines().any(|l| l == "fpu-stress: PASS") {
        reasons.push(
            first_line_starting(log, "fpu-stress: FAIL")
                .unwrap_or("no verdict line")
                .to_string(),
        );
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cores_log(smp: u32, mode: &str) -> String {
        let mut log =
            format!("APIC in use: {mode}\nipiq patch applied\ncores: {smp} (processor count)\n");
        for c in 0..smp {
            log.push_str(&format!("core {c}: apic id {c} ({mode})\n"));
        }
        log.push_str(&format!("all {smp} cores reported\nexit status 0\n"));
        log
    }

    #[test]
    fn a_good_cores_log_passes() {
        let log = cores_log(4, "x2APIC");
        assert!(cores(&log, 4, ApicMode::X2Apic, KernelKind::Patched, true).is_empty());
    }

    #[test]
    fn a_cores_log_names_what_is_wrong() {
        let log = cores_log(2, "xAPIC").replace("core 1: apic id 1", "core 1: apic id 0");
        let reasons = cores(&log, 2, ApicMode::X2Apic, KernelKind::Stock, false);
        let text = reasons.join("\n");
        for want in [
            "QEMU did not report",
            "kernel uses 'xAPIC', expected x2APIC",
            "2 cores read their APIC id in another mode",
            "APIC ids not distinct: 0 0",
            "stock kernel, but the boot log shows",
        ] {
            assert!(text.contains(want), "{want} missing from {text}");
        }
        let reasons = cores(
            &cores_log(2, "x2APIC"),
            4,
            ApicMode::X2Apic,
            KernelKind::Patched,
            true,
        );
        assert!(reasons.contains(&"application saw 2 cores, expected 4".to_string()));
        assert!(reasons.contains(&"core 3 reported 0 times".to_string()));
    }

    #[test]
    fn apic_mode_is_read_from_the_kernel_line() {
        assert_eq!(
            apic_in_use("[0][INFO] APIC in use: x2APIC"),
            Some("x2APIC".into())
        );
        assert_eq!(
            apic_in_use("APIC in use:   xAPIC (MMIO)"),
            Some("xAPIC".into())
        );
        assert_eq!(apic_in_use("no apic"), None);
    }

    #[test]
    fn ipiq_tests_need_every_pass_line() {
        let mut log = String::from(
            "APIC in use: x2APIC\nipiq patch applied\nipiq-tests: 2 cores (ipiq serves 2)\n",
        );
        for t in IPIQ_TESTS {
            log.push_str(&format!("PASS {t}: ok\n"));
        }
        log.push_str("ipiq-tests: 14 passed, 0 failed\nexit status 0\n");
        assert!(ipiq_tests(&log, 2, ApicMode::X2Apic, true).is_empty());
        let broken =
            log.replace("PASS stress: ok", "FAIL stress: lost") + "ipiq: cpu 1 gave up waiting\n";
        let reasons = ipiq_tests(&broken, 2, ApicMode::X2Apic, true).join("\n");
        assert!(reasons.contains("test stress did not pass: FAIL stress: lost"));
        assert!(reasons.contains("an ipiq watchdog gave up"));
    }
}
