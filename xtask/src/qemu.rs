//! Booting a Hermit image under QEMU (TCG) and turning the guest's exit into a verdict.
//!
//! With isa-debug-exit, the kernel's shutdown writes 1 (success) or 0 (failure) to port 0xf4 and
//! QEMU exits with (value << 1) | 1: 3 means the application exited 0; 1 means it failed or
//! panicked (the loader's panic handler writes 0 too). QEMU's own refusal to start (bad
//! arguments, an unknown CPU model) also exits 1: its stderr tells the two apart.
//!
//! `hermit-app/scripts/qemu.sh` is the same runner in bash, for the shell experiments and for
//! machines with no Rust (device-scaling.sh); `boot-args-test` checks both the same way.

use std::env;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::error::{Context, Error, Result};
use crate::util::{self, Scratch};

/// A boot's settings, checked before QEMU sees them (QEMU's refusal would otherwise look like a
/// guest failure, and a tiny MEM like a hang).
#[derive(Clone, Debug)]
pub struct BootArgs {
    pub smp: u32,
    pub cpu: String,
    pub mem: String,
    pub timeout_s: u64,
}

impl BootArgs {
    /// Checks SMP, CPU, MEM and the timeout; the error (exit status 2) names the setting.
    pub fn check(smp: &str, cpu: &str, mem: &str, timeout: &str) -> Result<BootArgs> {
        let smp_ok = digits(smp).filter(|n| (1..=255).contains(n));
        let Some(smp_n) = smp_ok else {
            return Err(Error::usage(format!(
                "SMP must be a whole number of vCPUs from 1 to 255 (Hermit keeps APIC ids in a byte), not '{smp}'"
            )));
        };
        if cpu.is_empty() || cpu.chars().any(char::is_whitespace) {
            return Err(Error::usage(format!(
                "CPU must be a QEMU CPU model such as qemu64,+x2apic,+fsgsbase (no spaces), not '{cpu}'"
            )));
        }
        let unit_at = mem.find(|c: char| !c.is_ascii_digit()).unwrap_or(mem.len());
        let (number, unit) = mem.split_at(unit_at);
        let shift = match unit {
            "K" | "k" => Some(-10),
            "" | "M" | "m" => Some(0),
            "G" | "g" => Some(10),
            "T" | "t" => Some(20),
            _ => None,
        };
        let (Some(n), Some(shift)) = (digits(number), shift) else {
            return Err(Error::usage(format!(
                "MEM must be a size such as 512M or 1G, not '{mem}'"
            )));
        };
        let mib = if shift < 0 {
            n >> -shift
        } else {
            n.saturating_mul(1 << shift)
        };
        if mib < 32 {
            return Err(Error::usage(format!(
                "MEM={mem} is too small: the kernel and an application need at least 32M"
            )));
        }
        let Some(timeout_s) = digits(timeout).filter(|&n| n >= 1) else {
            return Err(Error::usage(format!(
                "the timeout must be a whole number of seconds, not '{timeout}'"
            )));
        };
        Ok(BootArgs {
            smp: smp_n as u32,
            cpu: cpu.to_string(),
            mem: mem.to_string(),
            timeout_s,
        })
    }

    /// The same settings with a fixed memory size and timeout (the boot checks).
    pub fn new(smp: u32, cpu: &str, timeout_s: u64) -> Result<BootArgs> {
        BootArgs::check(&smp.to_string(), cpu, "512M", &timeout_s.to_string())
    }
}

/// A string of ASCII digits as a number (saturating: a huge number stays huge); None otherwise.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// QEMU exit 3: the application exited 0.
    Passed,
    /// QEMU exit 1 without a refusal: the application exited non-zero, or a panic.
    GuestFailed,
    /// QEMU did not start the guest; its message.
    Refused(String),
    /// Killed after the timeout.
    TimedOut,
    /// QEMU exit 0: the guest stopped without isa-debug-exit.
    NoDebugExit,
    /// Any other exit status.
    Other(i32),
}

impl Verdict {
    pub fn passed(&self) -> bool {
        *self == Verdict::Passed
    }

    /// The line the runner prints for a failure.
    fn message(&self, timeout_s: u64) -> Option<String> {
        Some(match self {
            Verdict::Passed => return None,
            Verdict::Refused(msg) => format!("error: QEMU refused to start the guest: {msg}"),
            Verdict::GuestFailed => "error: the guest reported failure (QEMU exit 1: the application exited non-zero, or the kernel or loader panicked)".into(),
            Verdict::TimedOut => format!("error: QEMU did not finish within {timeout_s} s (guest hang?); killed"),
            Verdict::NoDebugExit => "error: QEMU exited 0: the guest stopped without isa-debug-exit (reset or triple fault?)".into(),
            Verdict::Other(status) => format!("error: QEMU exited with status {status}"),
        })
    }
}

/// Where a boot's output goes.
pub enum Sink<'a> {
    /// Serial console to stdout, QEMU's and the runner's messages to stderr.
    Terminal,
    /// Everything to this file (created afresh), as `qemu.sh ... >LOG 2>&1` did.
    Log(&'a Path),
}

/// One boot: the loader, the image and its settings, extra QEMU arguments.
pub struct Boot<'a> {
    pub loader: &'a Path,
    pub image: &'a Path,
    pub args: &'a BootArgs,
    pub extra: &'a [String],
}

/// The repeatable mode's options (QEMU_ICOUNT_SHIFT set, as `make REPEATABLE=1` exports it), with
/// its starting phase (QEMU_ICOUNT_PHASE).
///
/// QEMU counts instructions (-icount, single-threaded round-robin TCG; each guest instruction
/// advances virtual time by 2^N ns, sleep=off: idle time is skipped, not slept), so emulated time
/// no longer follows the host's load. -accel tcg,one-insn-per-tb=on is needed with x2APIC: QEMU
/// 10.0 translates RDMSR without marking it an I/O instruction, so the kernel's read of the APIC
/// timer's current count (MSR 0x839) in the middle of a translation block stops QEMU with "Bad
/// icount read"; with one instruction per block every instruction is the last of its block.
/// -rtc ...,clock=vm: the CMOS clock on virtual time from a fixed date (Hermit's boot polls the
/// RTC's update-in-progress flag, which on the host's clock takes a host-dependent number of
/// instructions). With all three, two boots write identical serial logs.
struct Repeatable {
    args: Vec<String>,
    phase: usize,
}

impl Repeatable {
    fn from_env() -> Result<Option<Repeatable>> {
        let shift = env::var("QEMU_ICOUNT_SHIFT").unwrap_or_default();
        if shift.is_empty() {
            return Ok(None);
        }
        if digits(&shift).is_none() {
            return Err(Error::usage(format!(
                "ICOUNT_SHIFT must be a whole number (ns per instruction as a power of 2), not '{shift}'"
            )));
        }
        let phase = env::var("QEMU_ICOUNT_PHASE").unwrap_or_default();
        let phase = if phase.is_empty() {
            0
        } else {
            match digits(&phase).filter(|&n| n <= 4096) {
                Some(n) => n as usize,
                None => {
                    return Err(Error::usage(format!(
                        "ICOUNT_PHASE must be a whole number (8-character steps), not '{phase}'"
                    )))
                }
            }
        };
        let args = [
            "-icount".to_string(),
            format!("shift={shift},sleep=off"),
            "-accel".into(),
            "tcg,one-insn-per-tb=on".into(),
            "-rtc".into(),
            "base=2026-01-01T00:00:00,clock=vm".into(),
        ];
        Ok(Some(Repeatable {
            args: args.to_vec(),
            phase,
        }))
    }
}

fn check_files(boot: &Boot) -> Result<()> {
    for f in [boot.loader, boot.image] {
        if !f.is_file() {
            return Err(Error::failed(format!(
                "{} does not exist (run make image loader)",
                f.display()
            )));
        }
    }
    util::require_program("qemu-system-x86_64", " (make qemu-install)")
}

/// Boots once under `timeout`, output to `sink`; the runner's own message for a failure is
/// written there too. Errors only when the boot could not be attempted.
pub fn run(boot: &Boot, sink: Sink) -> Result<Verdict> {
    check_files(boot)?;
    let repeatable = Repeatable::from_env()?;

    // The output: the terminal, or one file both streams append to.
    let log_file = match sink {
        Sink::Terminal => None,
        Sink::Log(path) => {
            File::create(path).context(|| format!("cannot create {}", path.display()))?;
            Some(
                OpenOptions::new()
                    .append(true)
                    .open(path)
                    .context(|| format!("cannot open {}", path.display()))?,
            )
        }
    };
    let say = |line: &str, to_stderr: bool| -> Result<()> {
        match &log_file {
            Some(f) => writeln!(&*f, "{line}").context(|| "cannot write the log".into()),
            None if to_stderr => {
                eprintln!("{line}");
                Ok(())
            }
            None => {
                println!("{line}");
                Ok(())
            }
        }
    };

    // The guest reads the multiboot command line, which starts with the -kernel path: in the
    // repeatable mode QEMU runs from a scratch folder holding links named like the loader and
    // the image, so the same boot reads the same bytes from any checkout. ICOUNT_PHASE=n gives
    // the loader's link name 8n more characters: the guest starts a few hundred instructions
    // later, another deterministic sample.
    let mut scratch = None;
    let mut loader = boot.loader.to_path_buf();
    let mut image = boot.image.to_path_buf();
    let mut repeatable_args = Vec::new();
    if let Some(r) = &repeatable {
        say(
            &format!("xtask qemu: repeatable mode: {}", r.args.join(" ")),
            false,
        )?;
        let dir = Scratch::new("qemu")?;
        let name = format!(
            "{}{}",
            util::file_name(boot.loader),
            "_".repeat(8 * r.phase)
        );
        symlink(util::absolute(boot.loader)?, dir.0.join(&name))
            .context(|| "cannot link the loader".into())?;
        let image_name = util::file_name(boot.image);
        if image_name != name {
            symlink(util::absolute(boot.image)?, dir.0.join(&image_name))
                .context(|| "cannot link the image".into())?;
        }
        loader = PathBuf::from(name);
        image = PathBuf::from(image_name);
        repeatable_args = r.args.clone();
        scratch = Some(dir);
    }

    let args = boot.args;
    let mut command = Command::new("timeout");
    command
        .args([
            "--foreground",
            "-k",
            "5",
            &args.timeout_s.to_string(),
            "qemu-system-x86_64",
        ])
        .args([
            "-cpu",
            &args.cpu,
            "-smp",
            &args.smp.to_string(),
            "-m",
            &args.mem,
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-kernel")
        .arg(&loader)
        .arg("-initrd")
        .arg(&image)
        .args(&repeatable_args)
        .args(boot.extra)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dir) = &scratch {
        command.current_dir(&dir.0);
    }
    match &log_file {
        Some(f) => {
            command.stdout(f.try_clone().context(|| "cannot share the log".into())?);
        }
        None => {
            command.stdout(Stdio::inherit());
        }
    }
    let mut child = command
        .spawn()
        .context(|| "cannot run timeout qemu-system-x86_64".into())?;

    // QEMU's own messages (stderr) are kept as well as shown, so that its refusal to start is
    // told apart from the guest's failure (both exit 1).
    let errors = Arc::new(Mutex::new(String::new()));
    let reader = child.stderr.take().map(|stderr| {
        let errors = Arc::clone(&errors);
        let mut out: Box<dyn Write + Send> = match &log_file {
            Some(f) => match f.try_clone() {
                Ok(f) => Box::new(f),
                Err(_) => Box::new(io::sink()),
            },
            None => Box::new(io::stderr()),
        };
        thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n').map_while(|l| l.ok()) {
                let _ = out.write_all(&line);
                let _ = out.write_all(b"\n");
                if let Ok(mut e) = errors.lock() {
                    e.push_str(&String::from_utf8_lossy(&line));
                    e.push('\n');
                }
            }
        })
    });
    let status = child.wait().context(|| "cannot wait for QEMU".into())?;
    if let Some(reader) = reader {
        let _ = reader.join();
    }
    drop(scratch);

    let code = status.code().unwrap_or(128 + 9);
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    let refusal = errors
        .lines()
        .find_map(|l| l.strip_prefix("qemu-system-x86_64: "))
        .map(str::to_string);
    let verdict = match (code, refusal) {
        (3, _) => Verdict::Passed,
        (_, Some(msg)) => Verdict::Refused(msg),
        (1, None) => Verdict::GuestFailed,
        (124 | 137, None) => Verdict::TimedOut,
        (0, None) => Verdict::NoDebugExit,
        (other, None) => Verdict::Other(other),
    };
    if let Some(message) = verdict.message(args.timeout_s) {
        say(&message, true)?;
    }
    Ok(verdict)
}

/// The first line `qemu-system-x86_64 --version` prints ("QEMU emulator version 10.0.2"), if
/// QEMU runs and prints one.
pub fn version_line() -> Option<String> {
    let out = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
}

/// The QEMU version ("10.0.2"), for headers.
pub fn version() -> String {
    version_line()
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

/// Runs an image under uhyve (KVM), the runner for real KVM hosts. Hermit needs hardware
/// virtualization (VMX or SVM) behind /dev/kvm; some hosts offer a /dev/kvm without it (a
/// software nested scheme), on which Hermit guests die early, so this checks first and fails at
/// once instead of hanging.
pub fn uhyve(image: &Path, smp: u32, timeout_s: u64, version: &str) -> Result<()> {
    if !Path::new("/dev/kvm").exists() {
        return Err(Error::failed(
            "uhyve needs KVM, and /dev/kvm does not exist on this machine; use 'make qemu' instead",
        ));
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let virt = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if !virt {
        return Err(Error::failed(
            "/dev/kvm exists but the CPU has no vmx/svm flag (software-nested KVM): Hermit cannot run under\n       uhyve here (its guests die on XGETBV/SSE emulation failures); use 'make qemu' instead",
        ));
    }
    if !image.is_file() {
        return Err(Error::failed(format!(
            "{} does not exist (run make image)",
            image.display()
        )));
    }
    let installed = Command::new("uhyve")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false);
    if !installed {
        println!("==> installing uhyve {version} (~2 min)");
        util::run(util::cargo("stable").args([
            "install",
            "uhyve",
            "--version",
            version,
            "--locked",
        ]))?;
    }
    let status = Command::new("timeout")
        .args([
            "--foreground",
            "-k",
            "5",
            &timeout_s.to_string(),
            "uhyve",
            "-c",
        ])
        .arg(smp.to_string())
        .arg(image)
        .status()
        .context(|| "cannot run uhyve".into())?;
    match status.code() {
        Some(0) => Ok(()),
        Some(124 | 137) => Err(Error::failed(format!(
            "uhyve did not finish within {timeout_s} s; killed"
        ))),
        code => Err(Error {
            message: format!("uhyve exited with status {}", code.unwrap_or(-1)),
            status: code.and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(smp: &str, cpu: &str, mem: &str, timeout: &str) -> String {
        match BootArgs::check(smp, cpu, mem, timeout) {
            Ok(b) => panic!("accepted {b:?}"),
            Err(e) => {
                assert_eq!(e.status, 2);
                e.message
            }
        }
    }

    #[test]
    fn boot_settings_are_checked_with_the_setting_named() {
        let cpu = "qemu64,+x2apic,+fsgsbase";
        for smp in ["abc", "0", "256", "", "99999999999999999999999"] {
            assert!(
                refusal(smp, cpu, "512M", "30").starts_with("SMP must be"),
                "{smp}"
            );
        }
        assert!(refusal("2", "", "512M", "30").starts_with("CPU must be"));
        assert!(refusal("2", "qemu64 x", "512M", "30").starts_with("CPU must be"));
        for mem in ["lots", "", "512X", "M"] {
            assert!(
                refusal("2", cpu, mem, "30").starts_with("MEM must be a size"),
                "{mem}"
            );
        }
        assert!(refusal("2", cpu, "1K", "30").starts_with("MEM=1K is too small"));
        assert!(refusal("2", cpu, "31", "30").starts_with("MEM=31 is too small"));
        assert!(refusal("2", cpu, "512M", "soon").starts_with("the timeout"));
        assert!(refusal("2", cpu, "512M", "0").starts_with("the timeout"));
    }

    #[test]
    fn good_boot_settings_pass() {
        for (smp, mem) in [
            ("1", "32M"),
            ("255", "1G"),
            ("08", "32768K"),
            ("4", "512"),
            ("2", "1t"),
        ] {
            let b = BootArgs::check(smp, "qemu64", mem, "60").unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(b.smp, smp.parse::<u32>().unwrap_or(0));
        }
    }
}
