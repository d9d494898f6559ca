//! rayon-work on each kernel and vCPU count.

use super::*;

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
