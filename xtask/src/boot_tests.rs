//! The boot checks of `make test`: each boots images under QEMU, checks every log
//! (`checks.rs`), prints one PASS/FAIL line per boot and fails if any boot failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::checks::{self, ApicMode, KernelKind};
use crate::error::{Error, Result};
use crate::qemu::{self, Boot, BootArgs, Sink};
use crate::util::{self, elapsed};

/// PASS/FAIL counts of one check run.
#[derive(Default)]
struct Tally {
    passed: u32,
    failed: u32,
}

impl Tally {
    fn record(&mut self, passed: bool) {
        if passed {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Prints "NAME: N passed, M failed" and fails if any did.
    fn finish(self, name: &str) -> Result<()> {
        println!("{name}{} passed, {} failed", self.passed, self.failed);
        if self.failed == 0 {
            Ok(())
        } else {
            Err(Error::exit(1))
        }
    }
}

fn print_reasons(reasons: &[String]) {
    for r in reasons {
        println!("    - {r}");
    }
}

/// One boot into a log; whether QEMU reported success, and the time it took.
fn boot_to_log(boot: &Boot, log: &Path) -> Result<(bool, String)> {
    let start = Instant::now();
    let verdict = qemu::run(boot, Sink::Log(log))?;
    Ok((verdict.passed(), elapsed(start)))
}

pub struct ImageTest {
    pub loader: PathBuf,
    pub image: PathBuf,
    pub kernel: KernelKind,
    pub logs: PathBuf,
    pub timeout_s: u64,
    /// The ipiq-tests image (patched kernel) and the vCPU counts it boots with.
    pub ipiq_tests: Option<(PathBuf, Vec<u32>)>,
}

/// Boots the `cores` image with 1, 2, 4 and 8 vCPUs under an x2APIC and an xAPIC CPU model and
/// checks each boot from its serial output, not only from QEMU's exit status; with ipiq-tests
/// (patched kernel), boots that on the same shapes too.
pub fn image_test(t: &ImageTest) -> Result<()> {
    let logs = util::create_dir(&t.logs)?;
    println!(
        "==> booting {} [kernel {}] under QEMU {} (TCG); logs in {}",
        util::file_name(&t.image),
        t.kernel,
        qemu::version(),
        logs.display()
    );
    let mut tally = Tally::default();
    for mode in [ApicMode::X2Apic, ApicMode::XApic] {
        let model = mode.model();
        for smp in [1, 2, 4, 8] {
            let args = BootArgs::new(smp, model, t.timeout_s)?;
            let log = logs.join(format!("smp{smp}-{mode}.log"));
            let boot = Boot {
                loader: &t.loader,
                image: &t.image,
                args: &args,
                extra: &[],
            };
            let (ok, took) = boot_to_log(&boot, &log)?;
            let reasons = checks::cores(&util::read_log(&log), smp, mode, t.kernel, ok);
            if reasons.is_empty() {
                println!("PASS smp={smp} cpu={model} {took}s");
            } else {
                println!(
                    "FAIL smp={smp} cpu={model} {took}s (log: {})",
                    log.display()
                );
                print_reasons(&reasons);
            }
            tally.record(reasons.is_empty());

            let Some((tests_image, tests_smp)) = &t.ipiq_tests else {
                continue;
            };
            if !tests_smp.contains(&smp) {
                continue;
            }
            let log = logs.join(format!("ipiq-tests-smp{smp}-{mode}.log"));
            let boot = Boot {
                loader: &t.loader,
                image: tests_image,
                args: &args,
                extra: &[],
            };
            let (ok, took) = boot_to_log(&boot, &log)?;
            let text = util::read_log(&log);
            let reasons = checks::ipiq_tests(&text, smp, mode, ok);
            if reasons.is_empty() {
                println!("PASS ipiq-tests smp={smp} cpu={model} {took}s");
                let headline = [
                    "passive_tick",
                    "idle_tick",
                    "stress",
                    "stale_tlb",
                    "stale_tlb_idle",
                    "sched_locks",
                ];
                for line in text.lines().filter(|l| {
                    headline
                        .iter()
                        .any(|t| l.starts_with(&format!("PASS {t}:")))
                }) {
                    println!("    {}", line.chars().take(196).collect::<String>());
                }
            } else {
                println!(
                    "FAIL ipiq-tests smp={smp} cpu={model} {took}s (log: {})",
                    log.display()
                );
                print_reasons(&reasons);
            }
            tally.record(reasons.is_empty());
        }
    }
    tally.finish("")
}

pub struct FpuTest {
    pub loader: PathBuf,
    pub image: PathBuf,
    pub logs: PathBuf,
    pub timeout_s: u64,
    pub smp: Vec<u32>,
    pub modes: Vec<ApicMode>,
    /// CPU models with AVX and XSAVE, booted with 2 vCPUs and `require-avx`.
    pub avx_models: Vec<String>,
    pub app_args: String,
}

/// Boots apps/fpu-stress (application message functions computing with f64, x87 and AVX against
/// threads that check their own floating-point state bit for bit) with each vCPU count on each
/// APIC mode's CPU model, and on each AVX model with AVX required; checks every boot.
pub fn fpu_test(t: &FpuTest) -> Result<()> {
    let logs = util::create_dir(&t.logs)?;
    let mut tally = Tally::default();
    let mut boot_one = |smp: u32, model: &str, mode: ApicMode, app_args: &str| -> Result<()> {
        let args = BootArgs::new(smp, model, t.timeout_s)?;
        let log = logs.join(format!(
            "fpu-stress-smp{smp}-{}.log",
            model.replace([',', '+'], "_")
        ));
        let extra = ["-append".to_string(), format!("-- {app_args}")];
        let boot = Boot {
            loader: &t.loader,
            image: &t.image,
            args: &args,
            extra: &extra,
        };
        let (ok, took) = boot_to_log(&boot, &log)?;
        let text = util::read_log(&log);
        let reasons = checks::fpu_stress(&text, smp, mode, ok);
        if reasons.is_empty() {
            let sent = text
                .lines()
                .find(|l| l.starts_with("fpu-stress: sent"))
                .map(|l| l.splitn(3, ' ').nth(2).unwrap_or(""))
                .unwrap_or("");
            println!("PASS fpu-stress smp={smp} cpu={model} ({mode}) {took}s: {sent}");
        } else {
            println!(
                "FAIL fpu-stress smp={smp} cpu={model} ({mode}) {took}s (log: {})",
                log.display()
            );
            print_reasons(&reasons);
            let detail = [
                "fpu-stress: core",
                "fpu-stress: messages",
                "fpu-stress: mismatch",
            ];
            for line in text
                .lines()
                .filter(|l| detail.iter().any(|d| l.starts_with(d)))
                .take(8)
            {
                println!("    {line}");
            }
        }
        tally.record(reasons.is_empty());
        Ok(())
    };
    for &mode in &t.modes {
        for &smp in &t.smp {
            boot_one(smp, mode.model(), mode, &t.app_args)?;
        }
    }
    for model in &t.avx_models {
        boot_one(
            2,
            model,
            ApicMode::X2Apic,
            &format!("require-avx {}", t.app_args),
        )?;
    }
    tally.finish("fpu-test: ")
}

/// The boot front door's checks: bad SMP, CPU, MEM and timeout values are refused with an error
/// naming the setting before QEMU runs (exit status 2), and QEMU's own refusal (an unknown CPU
/// model) is reported as such, not as a guest failure (status 1). Both runners are checked the
/// same way: this one (`cargo xtask qemu`) and `scripts/qemu.sh`, which the shell experiments
/// and the device machine use.
pub fn boot_args_test(loader: &Path, image: &Path) -> Result<()> {
    let xtask = std::env::current_exe()
        .map_err(|e| Error::failed(format!("cannot find the xtask binary: {e}")))?;
    let qemu_sh = util::scripts_dir().join("qemu.sh");
    let cpu = "qemu64,+x2apic,+fsgsbase";
    // (status, pattern, SMP, CPU, MEM, timeout)
    let cases: [(i32, &str, &str, &str, &str, &str); 9] = [
        (2, "SMP must be a whole number", "abc", cpu, "512M", "30"),
        (2, "SMP must be a whole number", "0", cpu, "512M", "30"),
        (2, "SMP must be a whole number", "300", cpu, "512M", "30"),
        (2, "MEM must be a size", "2", cpu, "lots", "30"),
        (2, "MEM=1K is too small", "2", cpu, "1K", "30"),
        (2, "CPU must be a QEMU CPU model", "2", "", "512M", "30"),
        (
            2,
            "timeout must be a whole number",
            "2",
            cpu,
            "512M",
            "soon",
        ),
        (
            1,
            "QEMU refused to start the guest: unable to find CPU model",
            "2",
            "no-such-model",
            "512M",
            "30",
        ),
        (0, "exit status 0", "2", cpu, "512M", "60"),
    ];
    let mut tally = Tally::default();
    for (want, pattern, smp, cpu, mem, timeout) in cases {
        for runner in ["xtask qemu", "qemu.sh"] {
            let mut command = if runner == "qemu.sh" {
                let mut c = Command::new(&qemu_sh);
                c.arg(loader).arg(image).args([smp, cpu, mem, timeout]);
                c
            } else {
                let mut c = Command::new(&xtask);
                c.arg("qemu")
                    .arg("--loader")
                    .arg(loader)
                    .arg("--image")
                    .arg(image);
                c.args([
                    "--smp",
                    smp,
                    "--cpu",
                    cpu,
                    "--mem",
                    mem,
                    "--timeout",
                    timeout,
                ]);
                c
            };
            let out = command
                .output()
                .map_err(|e| Error::failed(format!("cannot run {runner}: {e}")))?;
            let status = out.status.code().unwrap_or(-1);
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let shown = format!("{runner} SMP='{smp}' CPU='{cpu}' MEM='{mem}' timeout='{timeout}'");
            match text.lines().find(|l| l.contains(pattern)) {
                Some(line) if status == want => {
                    println!("PASS {shown} -> {status}: {line}");
                    tally.record(true);
                }
                _ => {
                    println!("FAIL {shown} -> {status} (wanted {want} and '{pattern}'):");
                    let lines: Vec<&str> = text.lines().collect();
                    for line in &lines[lines.len().saturating_sub(5)..] {
                        println!("    {line}");
                    }
                    tally.record(false);
                }
            }
        }
    }
    tally.finish("boot-args-test: ")
}
