//! The hang debugger's checks. `scripts/qemu-debug.sh` (bash: it also runs on machines with no
//! Rust, device-scaling.sh's hung boots) boots with QEMU's gdb stub and monitor; these boot it on
//! purpose-built guests and check what it reports:
//! - `qemu-debug-test`: the spin app loops forever on two cores; a hang must be reported and both
//!   vCPUs' RIP and backtrace must name `spin_on_purpose`;
//! - `lock-inject-test`: ipiq-tests' sched_locks stress with a gdb hook (`preempt_inject`) that
//!   delivers a timer interrupt to vCPU 1 whenever it holds the scheduler's SCHEDULER_INPUTS lock
//!   with interrupts on (hermit-app/kernel/LOCK-ORDER.md, rule 1); passes if that never happens.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Context, Error, Result};
use crate::util;

/// Runs qemu-debug.sh with its output in OUT/run.log; its exit status.
fn qemu_debug(out: &Path, hook: Option<&Path>, args: &[&str]) -> Result<i32> {
    let run_log = out.join("run.log");
    let log = File::create(&run_log).context(|| format!("cannot create {}", run_log.display()))?;
    let mut command = Command::new(util::scripts_dir().join("qemu-debug.sh"));
    command
        .env("QEMU_DEBUG_OUT", out)
        .args(args)
        .stdin(Stdio::null())
        .stderr(log.try_clone().context(|| "cannot share the log".into())?)
        .stdout(log);
    if let Some(hook) = hook {
        command.env("QEMU_DEBUG_GDB_HOOK", hook);
    }
    let status = command
        .status()
        .context(|| "cannot run qemu-debug.sh".into())?;
    Ok(status.code().unwrap_or(-1))
}

fn fresh_dir(out: &Path) -> Result<std::path::PathBuf> {
    util::remove_dir(out)?;
    util::create_dir(out)
}

/// Whether vCPU `cpu`'s gdb backtrace (gdb's thread cpu+1, from its "Thread 1.N" header to the
/// next) has a frame containing `pattern`.
fn in_backtrace(backtrace: &str, cpu: u32, pattern: &str) -> bool {
    let header = format!("Thread 1.{} ", cpu + 1);
    let mut inside = false;
    for line in backtrace.lines() {
        let is_header = line.starts_with("Thread ")
            && line["Thread ".len()..]
                .split_once(" (Thread 1.")
                .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if is_header {
            inside = line.contains(&header);
        }
        if inside && line.contains(pattern) {
            return true;
        }
    }
    false
}

/// "vCPU N: RIP <hex> ..." lines of qemu-debug.sh's monitor view: the rest of vCPU `cpu`'s line.
fn monitor_rip(run_log: &str, cpu: u32) -> Option<&str> {
    let prefix = format!("vCPU {cpu}: RIP ");
    run_log.lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let (rip, symbol) = rest.split_once(' ').unwrap_or((rest, ""));
        (!rip.is_empty() && rip.bytes().all(|b| b.is_ascii_hexdigit())).then_some(symbol)
    })
}

pub fn qemu_debug_test(loader: &Path, image: &Path, out: &Path) -> Result<()> {
    let out = fresh_dir(out)?;
    let start = Instant::now();
    let loader = loader.to_string_lossy();
    let image = image.to_string_lossy();
    let status = qemu_debug(
        &out,
        None,
        &[
            &loader,
            &image,
            "2",
            "qemu64,+x2apic,+fsgsbase",
            "512M",
            "6",
        ],
    )?;
    let run_log = util::read_log(&out.join("run.log"));
    let serial = util::read_log(&out.join("serial.log"));
    let backtrace = util::read_log(&out.join("backtrace.txt"));
    let mut reasons = Vec::new();
    if status != 2 {
        reasons.push(format!(
            "qemu-debug.sh exited {status}, not 2 (hang reported)"
        ));
    }
    if !serial
        .lines()
        .any(|l| l.starts_with("spin: spinning on purpose"))
    {
        reasons.push("the spin app did not start".to_string());
    }
    for cpu in 0..2 {
        // The monitor samples RIP once: a spinning core still takes its timer tick, so the
        // sample may land in an interrupt handler that preempted the loop; then gdb's backtrace
        // must show that handler on top of spin_on_purpose.
        let rip_ok = match monitor_rip(&run_log, cpu) {
            Some(symbol) => {
                symbol.contains("spin_on_purpose") || in_backtrace(&backtrace, cpu, "_handler")
            }
            None => false,
        };
        if !rip_ok {
            reasons.push(format!("monitor: vCPU {cpu}'s RIP is neither in spin_on_purpose nor in an interrupt handler above it"));
        }
        if !in_backtrace(&backtrace, cpu, "spin_on_purpose") {
            reasons.push(format!(
                "gdb: vCPU {cpu}'s backtrace does not name spin_on_purpose"
            ));
        }
    }
    if reasons.is_empty() {
        println!("PASS qemu-debug-test: hang reported after 6 s, both vCPUs' RIP and backtrace name spin_on_purpose ({} s)", start.elapsed().as_secs());
        Ok(())
    } else {
        for r in &reasons {
            println!("    - {r}");
        }
        println!("FAIL qemu-debug-test (output: {}/run.log)", out.display());
        Err(Error::exit(1))
    }
}

pub fn lock_inject_test(loader: &Path, image: &Path, out: &Path, seconds: u32) -> Result<()> {
    let out = fresh_dir(out)?;
    let hook = preempt_inject(image, Some(1))?;
    let hook_path = out.join("hook.gdb");
    util::write(&hook_path, &hook.script)?;
    let start = Instant::now();
    let status = qemu_debug(
        &out,
        Some(&hook_path),
        &[
            &loader.to_string_lossy(),
            &image.to_string_lossy(),
            "4",
            "qemu64,+x2apic,+fsgsbase",
            "512M",
            "120",
            "--",
            "-append",
            &format!("-- sched_locks {seconds}"),
        ],
    )?;
    let hook_log = util::read_log(&out.join("gdb-hook.log"));
    let serial = util::read_log(&out.join("serial.log"));
    let mut reasons = Vec::new();
    if !hook_log.contains("hook: breakpoints set, guest running") {
        reasons.push(format!(
            "the hook did not arm its breakpoints (see {}/gdb-hook.log)",
            out.display()
        ));
    }
    if let Some(l) = hook_log.lines().find(|l| l.starts_with("injected:")) {
        reasons.push(l.to_string());
    }
    if status != 0 {
        reasons.push(format!(
            "the guest did not exit successfully (qemu-debug.sh status {status}; {}/run.log)",
            out.display()
        ));
    }
    let pass = serial
        .lines()
        .find_map(|l| l.strip_prefix("PASS sched_locks: "));
    if pass.is_none() {
        reasons.push("sched_locks did not pass".to_string());
    }
    if reasons.is_empty() {
        println!(
            "PASS lock-inject-test: {} sites never ran with SCHEDULER_INPUTS held and interrupts on; {} ({} s)",
            hook.sites,
            pass.unwrap_or(""),
            start.elapsed().as_secs()
        );
        Ok(())
    } else {
        for r in &reasons {
            println!("    - {r}");
        }
        println!("FAIL lock-inject-test (output: {})", out.display());
        Err(Error::exit(1))
    }
}

/// A gdb hook for qemu-debug.sh (QEMU_DEBUG_GDB_HOOK) and how many sites it watches.
pub struct Hook {
    pub script: String,
    pub sites: usize,
}

/// Fault injection for the kernel's lock order: breakpoints on every instruction that touches
/// SCHEDULER_INPUTS' data (the vector's pointer or length, touched only while the lock is held),
/// each with the condition "interrupt flag set" (and, with `vcpu`, "on that vCPU": gdb's thread N
/// is vCPU N-1). The first one that fires builds the frame the CPU pushes for an interrupt (SS,
/// RSP, RFLAGS, CS, RIP; RSP aligned to 16 first), clears IF and jumps to the scheduler's timer
/// handler, which reschedules; then the hook removes its breakpoints and detaches. A kernel where
/// the lock is only ever held with interrupts disabled never meets the condition.
pub fn preempt_inject(image: &Path, vcpu: Option<u32>) -> Result<Hook> {
    if !image.is_file() {
        return Err(Error::failed(format!("{} does not exist", image.display())));
    }
    for tool in ["objdump", "nm"] {
        util::require_program(tool, " (binutils)")?;
    }
    let symbols = util::output(Command::new("nm").arg("-C").arg(image))?;
    let handler = symbols
        .lines()
        .find(|l| {
            let f: Vec<&str> = l.splitn(3, ' ').collect();
            f.len() == 3
                && (f[1] == "t" || f[1] == "T")
                && f[2].ends_with("kernel::scheduler::timer_handler")
        })
        .and_then(|l| l.split(' ').next())
        .ok_or_else(|| Error::failed(format!("no timer_handler symbol in {}", image.display())))?;
    let disassembly = util::output(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", "-C"])
            .arg(image),
    )?;
    let sites: Vec<&str> = disassembly.lines().filter_map(lock_data_site).collect();
    if sites.is_empty() {
        return Err(Error::failed(format!(
            "nothing touches SCHEDULER_INPUTS' data in {}",
            image.display()
        )));
    }
    let only = vcpu
        .map(|v| format!(" && $_thread == {}", v + 1))
        .unwrap_or_default();
    let mut script = format!(
        "# preempt-inject: {} sites touching SCHEDULER_INPUTS' data; timer_handler at image offset 0x{handler}\n",
        sites.len()
    );
    for site in &sites {
        script.push_str(&format!(
            "break *($base + 0x{site}) if ($eflags & 0x200) != 0{only}\n"
        ));
    }
    script.push_str(&format!(
        r#"commands 1-{n}
silent
printf "injected: vCPU %d holds SCHEDULER_INPUTS with interrupts on at %#lx; delivering a timer interrupt there\n", $_thread - 1, $pc
set $old_rsp = (unsigned long) $rsp
set $frame = ($old_rsp & ~0xf) - 40
set *(unsigned long *) ($frame) = (unsigned long) $pc
set *(unsigned long *) ($frame + 8) = (unsigned long) $cs
set *(unsigned long *) ($frame + 16) = $eflags & 0xffffffff
set *(unsigned long *) ($frame + 24) = $old_rsp
set *(unsigned long *) ($frame + 32) = (unsigned long) $ss
set $rsp = $frame
set $eflags = ($eflags & 0xffffffff) & ~0x200
set $pc = $base + 0x{handler}
delete
detach
end
echo hook: breakpoints set, guest running\n
continue
"#,
        n = sites.len()
    ));
    Ok(Hook {
        script,
        sites: sites.len(),
    })
}

/// The address of an objdump line that reads or writes SCHEDULER_INPUTS+0x10 or +0x18 through
/// a RIP-relative operand ("  addr:\tinsn ...(%rip) ... # target <...SCHEDULER_INPUTS+0x10>").
fn lock_data_site(line: &str) -> Option<&str> {
    let after_rip = &line[line.find("(%rip)")?..];
    let touches = after_rip.match_indices(" # ").any(|(at, _)| {
        let rest = &after_rip[at + 3..];
        let hex = rest
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len());
        hex > 0
            && [
                " <hermit::scheduler::SCHEDULER_INPUTS+0x10>",
                " <hermit::scheduler::SCHEDULER_INPUTS+0x18>",
            ]
            .iter()
            .any(|t| rest[hex..].starts_with(t))
    });
    let address = line.split_whitespace().next()?.strip_suffix(':')?;
    touches.then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lock_data_sites() {
        let hit = "  1234a:\tmov    0x5c3e(%rip),%rax        # 2f000 <hermit::scheduler::SCHEDULER_INPUTS+0x18>";
        assert_eq!(lock_data_site(hit), Some("1234a"));
        let other = "  1234a:\tmov    0x5c3e(%rip),%rax        # 2f000 <hermit::scheduler::SCHEDULER_INPUTS+0x8>";
        assert_eq!(lock_data_site(other), None);
    }

    #[test]
    fn backtraces_are_read_per_thread() {
        let bt = "Thread 2 (Thread 1.2 (CPU#1 [running])):\n#0 spin::spin_on_purpose\nThread 1 (Thread 1.1 (CPU#0 [running])):\n#0 x::timer_handler\n";
        assert!(in_backtrace(bt, 1, "spin_on_purpose"));
        assert!(!in_backtrace(bt, 0, "spin_on_purpose"));
        assert!(in_backtrace(bt, 0, "_handler"));
        assert_eq!(
            monitor_rip("vCPU 1: RIP ffff12 on  spin_on_purpose+0x4", 1),
            Some("on  spin_on_purpose+0x4")
        );
    }
}
