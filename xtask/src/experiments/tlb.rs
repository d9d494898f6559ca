//! The stale-TLB experiment and the shootdown's cost.

use super::*;

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
    finish(&table, r.summary.as_deref(), passed, failed)
}

fn tlb_stale_checks(text: &str, kernel: &str, smp: u32) -> Vec<String> {
    let mut reasons = Vec::new();
    match kernel {
        "patched" if !text.contains(checks::PATCH_MARKER) => {
            reasons.push(format!("no '{}' in the boot log", checks::PATCH_MARKER))
        }
        "stock-probe" => {
            if !text.contains("stock-probe patch applied") {
                reasons.push("no 'stock-probe patch applied' in the boot log".into());
            }
            if text.contains(checks::PATCH_MARKER) {
                reasons.push(format!(
                    "'{}' in a stock-probe boot log",
                    checks::PATCH_MARKER
                ));
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
    finish(&table, r.summary.as_deref(), passed, failed)
}
