//! The wake-up ping-pong on both kernels, and the headline ratios' spread across runs.

use super::*;

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
    finish(&table, r.summary.as_deref(), passed, failed)
}

/// The wakeup app's checks: the kernel's marker, `wakeup: ok`, and two result lines.
fn wakeup_checks(text: &str, kernel: &str, smp: u32) -> Vec<String> {
    let mut reasons = Vec::new();
    let marker = if kernel == "patched" {
        checks::PATCH_MARKER
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
