//! The guest experiments: each boots applications on the ipiq kernel and on stock-probe, checks
//! every boot (a PASS/FAIL line each), and tabulates the boots' result lines through `report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checks::{self, ApicMode};
use crate::error::{Error, Result};
use crate::qemu::{self, Boot, BootArgs, Sink};
use crate::report;
use crate::util::{self, elapsed};

/// The CPU model every experiment boots with (x2APIC).
pub const MODEL: &str = "qemu64,+x2apic,+fsgsbase";

/// `NAME=IMAGE` words as a map; an error naming the setting for a word without `=` or a name
/// not in `allowed`.
pub fn images(
    setting: &str,
    specs: &[String],
    allowed: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some((name, image)) = spec.split_once('=') else {
            return Err(Error::usage(format!(
                "{setting}: expected NAME=IMAGE, not '{spec}'"
            )));
        };
        if !allowed.contains(&name) {
            return Err(Error::usage(format!(
                "{setting}: '{name}': expected one of {}",
                allowed.join(", ")
            )));
        }
        out.insert(name.to_string(), PathBuf::from(image));
    }
    Ok(out)
}

/// One checked boot: its log's text, whether every check passed, and the time it took.
pub struct Checked {
    pub text: String,
    pub passed: bool,
}

/// Boots `image` into `log` with the x2APIC model, runs the boot checks and `extra` on the log,
/// and prints `PASS NAME TIME s SUFFIX` or `FAIL NAME TIME s (log: LOG)` with the reasons.
#[allow(clippy::too_many_arguments)]
pub fn boot_checked(
    loader: &Path,
    image: &Path,
    args: &BootArgs,
    append: &str,
    log: &Path,
    name: &str,
    pass_suffix: &str,
    extra: impl FnOnce(&str) -> Vec<String>,
) -> Result<Checked> {
    boot_checked_in(
        ApicMode::X2Apic,
        loader,
        image,
        args,
        append,
        log,
        name,
        |_| pass_suffix.to_string(),
        extra,
    )
}

/// `boot_checked` under another APIC mode, with the PASS line's suffix read from the log.
#[allow(clippy::too_many_arguments)]
pub fn boot_checked_in(
    mode: ApicMode,
    loader: &Path,
    image: &Path,
    args: &BootArgs,
    append: &str,
    log: &Path,
    name: &str,
    pass_suffix: impl FnOnce(&str) -> String,
    extra: impl FnOnce(&str) -> Vec<String>,
) -> Result<Checked> {
    let start = Instant::now();
    let append_args = if append.is_empty() {
        Vec::new()
    } else {
        vec!["-append".to_string(), format!("-- {append}")]
    };
    let boot = Boot {
        loader,
        image,
        args,
        extra: &append_args,
    };
    let verdict = qemu::run(&boot, Sink::Log(log))?;
    let took = elapsed(start);
    let text = util::read_log(log);
    let mut reasons = checks::boot(&text, mode, verdict.passed());
    reasons.extend(extra(&text));
    let passed = reasons.is_empty();
    if passed {
        println!("PASS {name} {took}s{}", pass_suffix(&text));
    } else {
        println!("FAIL {name} {took}s (log: {})", log.display());
        for r in &reasons {
            println!("    - {r}");
        }
    }
    Ok(Checked { text, passed })
}

/// The mode line of a table's header: repeatable (QEMU_ICOUNT_SHIFT set) or normal.
pub fn mode_line() -> String {
    match std::env::var("QEMU_ICOUNT_SHIFT")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(shift) => format!(
            "repeatable: QEMU instruction counting, shift {shift}, phase {}",
            std::env::var("QEMU_ICOUNT_PHASE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0".into())
        ),
        None => "normal: multi-threaded TCG, counts follow the host's scheduling".into(),
    }
}

pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Writes `text` to stdout and to `path`.
pub fn tee(text: &str, path: &Path) -> Result<()> {
    print!("{text}");
    util::write(path, text)
}

// ---------------------------------------------------------------------------------------------
// The hypervisor bill.

/// The three experiments the bill covers, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BillKind {
    Wakeup,
    Shootdown,
    Rayon,
}

impl BillKind {
    const ALL: [BillKind; 3] = [BillKind::Wakeup, BillKind::Shootdown, BillKind::Rayon];

    fn name(self) -> &'static str {
        match self {
            BillKind::Wakeup => "wakeup",
            BillKind::Shootdown => "shootdown",
            BillKind::Rayon => "rayon",
        }
    }

    /// The line that says the application finished its work.
    fn done_line(self) -> &'static str {
        match self {
            BillKind::Wakeup => "wakeup: ok",
            BillKind::Shootdown => "tlb-stale-rate: ",
            BillKind::Rayon => "rayon-work: all results correct",
        }
    }
}

pub struct BillRun {
    pub loader: PathBuf,
    pub out: PathBuf,
    /// `KIND.KERNEL` to image.
    pub images: BTreeMap<String, PathBuf>,
    pub wakeup_smp: Vec<u32>,
    pub wakeup_rounds: u32,
    pub shootdown_smp: Vec<u32>,
    pub swaps: u32,
    pub rayon_smp: Vec<u32>,
    pub rayon_args: String,
    pub timeout_s: u64,
}

pub const BILL_IMAGE_NAMES: [&str; 6] = [
    "wakeup.patched",
    "wakeup.stock-probe",
    "shootdown.patched",
    "shootdown.stock-probe",
    "rayon.patched",
    "rayon.stock-probe",
];

/// The hypervisor bill, ipiq kernel against stock-probe: boots the wake-up ping-pong, the
/// shootdown loop under a reader (tlb-stale rate) and rayon's sort and stencil on both kernels,
/// checks every boot, and tabulates their `bill:` lines into OUT/bill.md (and stdout).
pub fn bill(r: &BillRun) -> Result<()> {
    let out = util::create_dir(&r.out)?;
    let mut logs = Vec::new();
    let mut failed = 0;
    for kind in BillKind::ALL {
        let (smps, args) = match kind {
            BillKind::Wakeup => (&r.wakeup_smp, r.wakeup_rounds.to_string()),
            BillKind::Shootdown => (&r.shootdown_smp, format!("rate {}", r.swaps)),
            BillKind::Rayon => (&r.rayon_smp, r.rayon_args.clone()),
        };
        let image = |kernel: &str| r.images.get(&format!("{}.{kernel}", kind.name()));
        if image("patched").is_none() && image("stock-probe").is_none() {
            continue;
        }
        for kernel in ["patched", "stock-probe"] {
            if image(kernel).is_none() {
                return Err(Error::usage(format!(
                    "bill: {}.{kernel}=IMAGE missing",
                    kind.name()
                )));
            }
        }
        for &smp in smps {
            let boot_args =
                BootArgs::check(&smp.to_string(), MODEL, "512M", &r.timeout_s.to_string())?;
            for kernel in ["patched", "stock-probe"] {
                let Some(img) = image(kernel) else { continue };
                let log = out.join(format!("{}-{kernel}-{smp}.log", kind.name()));
                let name = format!("bill {} {kernel} smp={smp}", kind.name());
                let c = boot_checked(&r.loader, img, &boot_args, &args, &log, &name, "", |text| {
                    let mut reasons = Vec::new();
                    if !text.lines().any(|l| l.starts_with(kind.done_line())) {
                        reasons.push(format!("no '^{}' line", kind.done_line()));
                    }
                    if !text.lines().any(|l| l.starts_with("bill: ")) {
                        reasons.push("no bill line".into());
                    }
                    reasons
                })?;
                if c.passed {
                    logs.push((log, c.text));
                } else {
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        println!("{failed} boot(s) failed");
        return Err(Error::exit(1));
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Mode: {}. QEMU {}, cpu {MODEL}, host {} cores.",
        mode_line(),
        qemu::version(),
        host_cores()
    );
    let _ = writeln!(
        text,
        "wakeup: {} round trips per primitive; shootdown: tlb-stale rate {}; rayon-work: {}.",
        r.wakeup_rounds, r.swaps, r.rayon_args
    );
    let rendered = report::bill_table(&logs);
    text.push_str(&rendered.text);
    tee(&text, &out.join("bill.md"))?;
    report::finish(rendered).map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// The wake-up ping-pong.

pub struct WakeupRun {
    pub loader: PathBuf,
    pub logs: PathBuf,
    pub timeout_s: u64,
    pub smp: Vec<u32>,
    /// Round trips per primitive; None: the app's default.
    pub rounds: Option<u32>,
    pub patched: PathBuf,
    pub stock_probe: PathBuf,
    pub repeats: u32,
    pub summary: Option<PathBuf>,
}

/// Boots the wakeup app (cross-core wake-up ping-pong) on the ipiq kernel and stock-probe with
/// each vCPU count, `repeats` times with the kernels alternating, checks every boot, and prints
/// the side-by-side table (the median of each figure) with the target.
pub fn wakeup(r: &WakeupRun) -> Result<()> {
    let logs = util::create_dir(&r.logs)?;
    let append = r.rounds.map(|n| n.to_string()).unwrap_or_default();
    let (mut passed, mut failed) = (0, 0);
    let mut boots = Vec::new();
    for rep in 1..=r.repeats {
        for &smp in &r.smp {
            let args = BootArgs::check(&smp.to_string(), MODEL, "512M", &r.timeout_s.to_string())?;
            for (kernel, image) in [("patched", &r.patched), ("stock-probe", &r.stock_probe)] {
                let run = if rep == 1 {
                    String::new()
                } else {
                    format!("-r{rep}")
                };
                let log = logs.join(format!("wakeup-{kernel}-{smp}{run}.log"));
                let suffix = if r.repeats == 1 {
                    String::new()
                } else {
                    format!(" (run {rep} of {})", r.repeats)
                };
                let name = format!("wakeup {kernel} smp={smp}");
                let c = boot_checked(
                    &r.loader,
                    image,
                    &args,
                    &append,
                    &log,
                    &name,
                    &suffix,
                    |text| wakeup_checks(text, kernel, smp),
                )?;
                if !c.passed {
                    failed += 1;
                    continue;
                }
                passed += 1;
                boots.push(
                    report::WakeupBoot::parse(kernel, &c.text)
                        .map_err(|e| Error::failed(format!("{}: {e}", log.display())))?,
                );
            }
        }
    }
    let (table, _) = report::wakeup_table(&boots, &r.smp, r.repeats);
    match &r.summary {
        Some(path) => tee(&table, path)?,
        None => print!("{table}"),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::exit(1))
    }
}

/// The wakeup app's checks: the kernel's marker, `wakeup: ok`, and two result lines.
fn wakeup_checks(text: &str, kernel: &str, smp: u32) -> Vec<String> {
    let mut reasons = Vec::new();
    let marker = if kernel == "patched" {
        "ipiq patch applied"
    } else {
        "stock-probe patch applied"
    };
    if !text.contains(marker) {
        reasons.push(format!("no '{marker}' in the boot log"));
    }
    if !text.lines().any(|l| l.starts_with("wakeup: ok")) {
        reasons.push(
            text.lines()
                .find(|l| l.starts_with("wakeup: FAIL"))
                .unwrap_or("no wakeup: ok line")
                .to_string(),
        );
    }
    let results = report::lines_after(text, "wakeup: kernel=")
        .filter(|l| l.contains(&format!(" smp={smp} ")))
        .count();
    if results != 2 {
        reasons.push(format!("not 2 result lines for {smp} cores"));
    }
    reasons
}

// ---------------------------------------------------------------------------------------------
// The headline ratios' spread across runs.

pub struct SpreadRun {
    pub loader: PathBuf,
    pub out: PathBuf,
    pub runs: u32,
    pub smp: Vec<u32>,
    pub wakeup_smp: Vec<u32>,
    pub wakeup_rounds: Option<u32>,
    pub bench: PathBuf,
    pub patched: PathBuf,
    pub stock_probe: PathBuf,
    /// Repeatable mode only: one run per phase (QEMU_ICOUNT_PHASE), `runs` ignored.
    pub phases: Vec<u32>,
}

/// The headline guest ratios, each run `runs` times (interleaved: run 1 of every figure, then
/// run 2, ...), with their spread across runs: ipiq-bench's round trip against the raw ICR
/// ping-pong and statistics off against on per vCPU count, and the wakeup ratios per primitive
/// and vCPU count (`cargo xtask wakeup` per run). Table in OUT/spread.md (and stdout).
pub fn spread(r: &SpreadRun) -> Result<()> {
    let out = util::create_dir(&r.out)?;
    let runs = if r.phases.is_empty() {
        r.runs
    } else {
        r.phases.len() as u32
    };
    let start = Instant::now();
    let mut spread = report::Spread::default();
    let exe = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find the xtask: {e}")))?;
    for run in 1..=runs {
        let phase = r.phases.get(run as usize - 1).map(u32::to_string);
        if let Some(p) = &phase {
            std::env::set_var("QEMU_ICOUNT_PHASE", p);
        }
        for &smp in &r.smp {
            let log = out.join(format!("bench-smp{smp}-r{run}.log"));
            let args = BootArgs::check(&smp.to_string(), MODEL, "512M", "900")?;
            let extra = [
                "-append".to_string(),
                "-- round-trip,statistics".to_string(),
            ];
            let boot = Boot {
                loader: &r.loader,
                image: &r.bench,
                args: &args,
                extra: &extra,
            };
            if !qemu::run(&boot, Sink::Log(&log))?.passed() {
                eprintln!(
                    "FAIL ipiq-bench smp={smp} run {run} (log: {})",
                    log.display()
                );
                return Err(Error::exit(1));
            }
            let Some(h) = report::BenchHeadline::parse(&util::read_log(&log)) else {
                return Err(Error::failed(format!("no figures in {}", log.display())));
            };
            spread.add(
                format!("round trip ipiq p50 / raw ICR p50, {smp} vCPUs"),
                &h.round_trip,
            );
            spread.add(
                format!("statistics off / on, streaming msg/s, {smp} vCPUs"),
                &format!("{:.3}", 1.0 + h.stats_streaming_pct / 100.0),
            );
            spread.add(
                format!("statistics off / on, round trip p50, {smp} vCPUs"),
                &format!("{:.3}", 1.0 + h.stats_round_trip_pct / 100.0),
            );
            println!(
                "run {run}: ipiq-bench smp={smp} done ({} s)",
                start.elapsed().as_secs()
            );
        }
        let dir = out.join(format!("wakeup-r{run}"));
        let summary = out.join(format!("wakeup-r{run}.md"));
        let output = out.join(format!("wakeup-r{run}.out"));
        let file = std::fs::File::create(&output)
            .map_err(|e| Error::failed(format!("cannot create {}: {e}", output.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| Error::failed(format!("cannot share {}: {e}", output.display())))?;
        let mut command = std::process::Command::new(&exe);
        command
            .arg("wakeup")
            .arg("--loader")
            .arg(&r.loader)
            .arg("--logs")
            .arg(&dir)
            .args(["--timeout", "900", "--repeats", "1"])
            .arg("--summary")
            .arg(&summary)
            .args(["--smp", &join(&r.wakeup_smp)])
            .arg("--image")
            .arg(format!("patched={}", r.patched.display()))
            .arg("--image")
            .arg(format!("stock-probe={}", r.stock_probe.display()))
            .stdout(file)
            .stderr(err);
        if let Some(n) = r.wakeup_rounds {
            command.args(["--rounds", &n.to_string()]);
        }
        let ok = command.status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            eprintln!("FAIL wakeup run {run} (see {})", output.display());
            return Err(Error::exit(1));
        }
        let mut boots = Vec::new();
        for &smp in &r.wakeup_smp {
            for kernel in ["patched", "stock-probe"] {
                let log = dir.join(format!("wakeup-{kernel}-{smp}.log"));
                boots.push(
                    report::WakeupBoot::parse(kernel, &report::read(&log)?)
                        .map_err(|e| Error::failed(format!("{}: {e}", log.display())))?,
                );
            }
        }
        for row in report::wakeup_table(&boots, &r.wakeup_smp, 1).1 {
            let (p, smp) = (row.primitive.name(), row.smp);
            spread.add(
                format!("wakeup {p}: ipiq / stock round trips/s, {smp} vCPUs"),
                &row.ratio,
            );
            spread.add(
                format!("wakeup {p}: stock p50 / ipiq p50, {smp} vCPUs"),
                &row.speed_up,
            );
        }
        println!("run {run}: wakeup done ({} s)", start.elapsed().as_secs());
    }
    let mode = match std::env::var("QEMU_ICOUNT_SHIFT").ok().filter(|s| !s.is_empty()) {
        Some(shift) => format!("repeatable: -icount shift={shift},sleep=off -accel tcg,one-insn-per-tb=on -rtc base=2026-01-01T00:00:00,clock=vm"),
        None => "normal: multi-threaded TCG, emulated time follows the host".into(),
    };
    let columns: Vec<String> = (1..=runs)
        .map(|run| match r.phases.get(run as usize - 1) {
            Some(p) => format!("phase {p}"),
            None => format!("run {run}"),
        })
        .collect();
    let rounds = r.wakeup_rounds.map(|n| n.to_string()).unwrap_or_default();
    let intro = [
        format!(
            "QEMU {}, cpu {MODEL}, host {} cores; wakeup: {rounds} round trips per primitive.",
            qemu::version(),
            host_cores()
        ),
        "Spread: (max - min) / median of the runs.".to_string(),
    ];
    let title = format!("Headline guest ratios over {runs} runs ({mode})");
    tee(
        &spread.table(&title, &intro, &columns),
        &out.join("spread.md"),
    )
}

fn join(list: &[u32]) -> String {
    list.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------------
// The stale-TLB experiment.

pub struct TlbStaleRun {
    pub loader: PathBuf,
    pub logs: PathBuf,
    pub timeout_s: u64,
    pub smp: Vec<u32>,
    pub modes: Vec<ApicMode>,
    /// Kernel name (patched, stock-probe or stock) and image, in the order given.
    pub kernels: Vec<(String, PathBuf)>,
    pub summary: Option<PathBuf>,
}

/// Boots tlb-stale on each kernel with each vCPU count and APIC model, checks every boot (QEMU
/// or the app failed, the APIC mode or boot-log marker wrong, no result line), and prints one
/// table of what the readers saw. On the ipiq kernel the app itself fails on any stale read; on
/// stock-probe stale reads are reported, not failures.
pub fn tlb_stale(r: &TlbStaleRun) -> Result<()> {
    let logs = util::create_dir(&r.logs)?;
    let (mut passed, mut failed) = (0, 0);
    let mut results = Vec::new();
    for (kernel, image) in &r.kernels {
        for &mode in &r.modes {
            for &smp in &r.smp {
                let args = BootArgs::check(
                    &smp.to_string(),
                    mode.model(),
                    "512M",
                    &r.timeout_s.to_string(),
                )?;
                let log = logs.join(format!("tlb-stale-{kernel}-smp{smp}-{mode}.log"));
                let name = format!("tlb-stale {kernel} smp={smp} {mode}");
                let c = boot_checked_in(
                    mode,
                    &r.loader,
                    image,
                    &args,
                    "",
                    &log,
                    &name,
                    |text| {
                        let verdict = text
                            .lines()
                            .find(|l| {
                                l.starts_with("tlb-stale: PASS:")
                                    || l.starts_with("tlb-stale: REPORT:")
                            })
                            .unwrap_or("");
                        format!(": {}", verdict.splitn(3, ' ').nth(2).unwrap_or(""))
                    },
                    |text| tlb_stale_checks(text, kernel, smp),
                )?;
                if c.passed {
                    passed += 1;
                } else {
                    failed += 1;
                }
                let line = report::lines_after(&c.text, "tlb-stale: ")
                    .find(|l| l.starts_with("kernel="))
                    .map(report::TlbStale::parse);
                if let Some(t) = line {
                    results.push((t, mode));
                }
            }
        }
    }
    let table = report::tlb_stale_table(&results);
    match &r.summary {
        Some(path) => tee(&table, path)?,
        None => print!("{table}"),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::exit(1))
    }
}

fn tlb_stale_checks(text: &str, kernel: &str, smp: u32) -> Vec<String> {
    let mut reasons = Vec::new();
    match kernel {
        "patched" if !text.contains("ipiq patch applied") => {
            reasons.push("no 'ipiq patch applied' in the boot log".into())
        }
        "stock-probe" => {
            if !text.contains("stock-probe patch applied") {
                reasons.push("no 'stock-probe patch applied' in the boot log".into());
            }
            if text.contains("ipiq patch applied") {
                reasons.push("'ipiq patch applied' in a stock-probe boot log".into());
            }
        }
        _ => {}
    }
    let result = report::lines_after(text, "tlb-stale: kernel=")
        .any(|l| l.contains(&format!(" smp={smp} ")));
    if !result {
        reasons.push(format!("no result line for {smp} cores"));
    }
    let verdict = text
        .lines()
        .any(|l| l.starts_with("tlb-stale: PASS:") || l.starts_with("tlb-stale: REPORT:"));
    if !verdict {
        reasons.push(
            text.lines()
                .find(|l| l.starts_with("tlb-stale: FAIL"))
                .unwrap_or("no verdict line")
                .to_string(),
        );
    }
    reasons
}

// ---------------------------------------------------------------------------------------------
// The shootdown's cost.

pub struct ShootdownRun {
    pub loader: PathBuf,
    pub logs: PathBuf,
    pub timeout_s: u64,
    pub smp: Vec<u32>,
    pub swaps: u32,
    pub repeats: u32,
    pub patched: PathBuf,
    pub stock_probe: PathBuf,
    pub summary: Option<PathBuf>,
}

/// Boots tlb-stale's `rate` mode (swaps back to back under a reader on the last core; the cores
/// in between idle, then spinning) on the ipiq kernel and stock-probe with each vCPU count,
/// `repeats` times with the kernels alternating, checks every boot, and prints the side-by-side
/// table with issue 10's targets.
pub fn shootdown(r: &ShootdownRun) -> Result<()> {
    let logs = util::create_dir(&r.logs)?;
    let append = format!("rate {}", r.swaps);
    let (mut passed, mut failed) = (0, 0);
    let mut results = Vec::new();
    for rep in 1..=r.repeats {
        for &smp in &r.smp {
            let args = BootArgs::check(&smp.to_string(), MODEL, "512M", &r.timeout_s.to_string())?;
            for (kernel, image) in [("patched", &r.patched), ("stock-probe", &r.stock_probe)] {
                let log = logs.join(format!("shootdown-{kernel}-{smp}-r{rep}.log"));
                let name = format!("shootdown-rate {kernel} smp={smp}");
                let suffix = format!(" (run {rep} of {})", r.repeats);
                let c = boot_checked(
                    &r.loader,
                    image,
                    &args,
                    &append,
                    &log,
                    &name,
                    &suffix,
                    |text| {
                        if text.lines().any(|l| l.starts_with("tlb-stale-rate: ")) {
                            Vec::new()
                        } else {
                            vec!["no tlb-stale-rate line".to_string()]
                        }
                    },
                )?;
                if !c.passed {
                    failed += 1;
                    continue;
                }
                passed += 1;
                for line in report::lines_after(&c.text, "tlb-stale-rate: ") {
                    let rate = report::ShootdownRate::parse(line)
                        .map_err(|e| Error::failed(format!("{}: {e}", log.display())))?;
                    results.push((smp, kernel == "patched", rate));
                }
            }
        }
    }
    let table = report::shootdown_table(&results, &r.smp, r.swaps, r.repeats, MODEL);
    match &r.summary {
        Some(path) => tee(&table, path)?,
        None => print!("{table}"),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::exit(1))
    }
}

// ---------------------------------------------------------------------------------------------
// rayon-work on each kernel.

pub struct RayonRun {
    pub loader: PathBuf,
    pub cpu: String,
    pub mem: String,
    pub timeout_s: u64,
    pub logs: PathBuf,
    pub prefix: String,
    pub smp: Vec<u32>,
    /// The app's arguments ("smoke"; empty: the full workload).
    pub args: String,
    /// Kernel name and image, in the order given.
    pub images: Vec<(String, PathBuf)>,
    /// Extra QEMU arguments (after `--`).
    pub qemu_extra: Vec<String>,
}

/// Boots rayon-work on each kernel and vCPU count (vCPU count first, then kernel), keeps each
/// log, checks it (the app exited 0, printed its report block, saw SMP vCPUs and SMP rayon
/// threads), then writes the summary table of every log to LOGS/PREFIX-summary.md and prints it.
/// RAYON_QEMU_DEBUG=1 boots through scripts/qemu-debug.sh: a boot that hangs ends with every
/// vCPU's symbolized RIP in its log (files in LOGS/PREFIX-KERNEL-SMP.debug/).
pub fn rayon(r: &RayonRun) -> Result<()> {
    let logs_dir = util::create_dir(&r.logs)?;
    let debug = std::env::var("RAYON_QEMU_DEBUG").is_ok_and(|v| v == "1");
    let mut logs = Vec::new();
    let mut failed = Vec::new();
    for &n in &r.smp {
        let args = BootArgs::check(&n.to_string(), &r.cpu, &r.mem, &r.timeout_s.to_string())?;
        for (kernel, image) in &r.images {
            let log = logs_dir.join(format!("{}-{kernel}-{n}.log", r.prefix));
            let with_args = if r.args.is_empty() {
                String::new()
            } else {
                format!(", args: {}", r.args)
            };
            println!(
                "==> rayon-work: {kernel} kernel, {n} vCPUs{with_args} -> {}",
                log.display()
            );
            let mut extra = r.qemu_extra.clone();
            if !r.args.is_empty() {
                extra.extend(["-append".to_string(), format!("-- {}", r.args)]);
            }
            let start = Instant::now();
            let passed = if debug {
                let out = std::fs::File::create(&log)
                    .map_err(|e| Error::failed(format!("cannot create {}: {e}", log.display())))?;
                let err = out
                    .try_clone()
                    .map_err(|e| Error::failed(format!("cannot share {}: {e}", log.display())))?;
                std::process::Command::new(util::scripts_dir().join("qemu-debug.sh"))
                    .env(
                        "QEMU_DEBUG_OUT",
                        logs_dir.join(format!("{}-{kernel}-{n}.debug", r.prefix)),
                    )
                    .arg(&r.loader)
                    .arg(image)
                    .args([
                        n.to_string(),
                        r.cpu.clone(),
                        r.mem.clone(),
                        r.timeout_s.to_string(),
                    ])
                    .arg("--")
                    .args(&extra)
                    .stdout(out)
                    .stderr(err)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            } else {
                let boot = Boot {
                    loader: &r.loader,
                    image,
                    args: &args,
                    extra: &extra,
                };
                qemu::run(&boot, Sink::Log(&log))?.passed()
            };
            let took = start.elapsed().as_millis();
            let text = util::read_log(&log);
            for line in text.lines() {
                if line.starts_with("| ")
                    || line.starts_with("<<<report")
                    || line == ">>>report"
                    || line.starts_with("rayon-work:")
                    || line.starts_with("error:")
                {
                    println!("    {line}");
                }
            }
            let mut problems = Vec::new();
            if !passed {
                problems.push("the boot failed (see the log)".to_string());
            }
            if !text.lines().any(|l| l.starts_with("<<<report")) {
                problems.push("no report block".into());
            }
            if !text.lines().any(|l| l == ">>>report") {
                problems.push("report block not closed".into());
            }
            let seen = format!("rayon-work: kernel {kernel}, vCPUs {n}, rayon threads {n},");
            if !text.lines().any(|l| l.starts_with(&seen)) {
                problems.push(format!(
                    "the app did not see {n} vCPUs and {n} rayon threads on the {kernel} kernel"
                ));
            }
            logs.push((log, text));
            if problems.is_empty() {
                println!(
                    "    ok ({}.{} s host wall time)",
                    took / 1000,
                    took % 1000 / 100
                );
            } else {
                for p in &problems {
                    println!("    FAIL: {p}");
                }
                failed.push(format!("{kernel}/{n}"));
            }
        }
    }
    let summary = logs_dir.join(format!("{}-summary.md", r.prefix));
    let table = report::rayon_table(&logs);
    util::write(&summary, &table)?;
    println!();
    print!("{table}");
    println!(
        "==> logs: {}/{}-*.log, summary: {}",
        logs_dir.display(),
        r.prefix,
        summary.display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "rayon-work failed on: {}",
            failed.join(" ")
        )))
    }
}
