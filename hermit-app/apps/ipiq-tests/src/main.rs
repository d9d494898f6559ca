//! ipiq-tests: in-guest tests of ipiq through the patched kernel's `sys_ipiq_*` syscalls.
//!
//! One line per test (`PASS name: detail` / `FAIL name: reason`), the statistics per core, and
//! `ipiq-tests: N passed, M failed`; exits 0 only if every test passed. Checked by
//! `checks::ipiq_tests` (xtask/src/checks.rs) from `make -f hermit-app/image.mk image-test`.
//!
//! Message functions run on the target core in interrupt context: they only touch atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipiq_abi::hermit;
use ipiq_abi::{CpuSet, Error};

use hermit_apps::{pinned, stale};
mod sched_locks;

use pinned::{apic_id, join};

const MAX_CORES: usize = 64;
/// ipiq's tick period in the kernel patch (µs) and the bound this test holds passive messages to.
const TICK_PERIOD: Duration = Duration::from_millis(10);
const PASSIVE_BOUND: Duration = Duration::from_millis(100);
/// The stress test's target message count and wall-time budget.
const STRESS_TARGET: u64 = 1_000_000;
const STRESS_BUDGET: Duration = Duration::from_secs(10);
/// How long the scheduler-lock stress (`sched_locks.rs`) runs.
const SCHED_LOCKS_BUDGET: Duration = Duration::from_secs(2);

// ----- pinned threads --------------------------------------------------------------------------

/// A thread pinned to `core`; join it with `join`. A refusal fails the suite.
fn spawn_on(core: usize, job: impl FnOnce() + Send + 'static) -> i32 {
    pinned::spawn_on(core, job).unwrap_or_else(|e| panic!("{e}"))
}

fn run_on<T: Send + 'static>(core: usize, job: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let tid = spawn_on(core, move || {
        let _ = tx.send(job());
    });
    join(tid);
    rx.recv().expect("pinned job did not report")
}

// ----- message functions -----------------------------------------------------------------------

static RAN: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
static RAN_WHERE_WRONG: AtomicU64 = AtomicU64::new(0);

/// Counts a run on the core named by `expected_core` (checked against where it really ran).
extern "C" fn count_on(expected_core: usize) {
    let here = apic_id();
    if here != expected_core {
        RAN_WHERE_WRONG.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(counter) = RAN.get(here) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn ran(core: usize) -> u64 {
    RAN[core].load(Ordering::Relaxed)
}

/// Per (sender, target) pair: the next sequence index expected, and order violations.
static NEXT: [[AtomicU64; MAX_CORES]; MAX_CORES] = [const { [const { AtomicU64::new(0) }; MAX_CORES] }; MAX_CORES];
static OUT_OF_ORDER: AtomicU64 = AtomicU64::new(0);

/// Argument: sender in bits 56..63, index in bits 0..55. Checks per-pair order (I1).
extern "C" fn ordered(arg: usize) {
    let sender = arg >> 56;
    let index = (arg & ((1 << 56) - 1)) as u64;
    let here = apic_id();
    let (Some(row), true) = (NEXT.get(sender), here < MAX_CORES) else {
        return;
    };
    // Only core `here` touches NEXT[sender][here] (messages to it run there).
    let next = &row[here];
    if next.load(Ordering::Relaxed) != index {
        OUT_OF_ORDER.fetch_add(1, Ordering::Relaxed);
    }
    next.store(index + 1, Ordering::Relaxed);
}

static PASSIVE_DONE: AtomicU64 = AtomicU64::new(0);
extern "C" fn passive_hit(_: usize) {
    PASSIVE_DONE.fetch_add(1, Ordering::Release);
}

// ----- the tests -------------------------------------------------------------------------------

struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String, String>) {
        match result {
            Ok(detail) => {
                println!("PASS {name}: {detail}");
                self.passed += 1;
            }
            Err(reason) => {
                println!("FAIL {name}: {reason}");
                self.failed += 1;
            }
        }
    }
}

fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

fn others(me: usize, cpus: usize) -> Vec<usize> {
    (0..cpus).filter(|&c| c != me).collect()
}

fn test_core_id(cpus: usize) -> Result<String, String> {
    for core in 0..cpus {
        let (id, apic) = run_on(core, || (hermit::core_id(), apic_id()));
        ensure(id == core && apic == core, || format!("thread pinned to {core} reports core {id}, APIC {apic}"))?;
    }
    Ok(format!("{cpus} cores, ids match"))
}

fn test_send(me: usize, cpus: usize) -> Result<String, String> {
    let mut targets = others(me, cpus);
    targets.push(me);
    for &t in &targets {
        let before = ran(t);
        let seq = hermit::send(t, count_on, t).map_err(|e| format!("send to {t}: {e}"))?;
        hermit::wait(t, seq).map_err(|e| format!("wait on {t}: {e}"))?;
        ensure(ran(t) == before + 1, || format!("message to {t} had not run after wait"))?;
    }
    ensure(RAN_WHERE_WRONG.load(Ordering::Relaxed) == 0, || "a message ran on the wrong core".into())?;
    Ok(format!("{} targets (self included: ran in the caller)", targets.len()))
}

fn test_seq_wait(me: usize, cpus: usize) -> Result<String, String> {
    let t = if cpus > 1 { (me + 1) % cpus } else { me };
    let mut last = ipiq_abi::Seq(0);
    for _ in 0..10 {
        last = hermit::send(t, count_on, t).map_err(|e| e.to_string())?;
    }
    let seq = hermit::seq(t).map_err(|e| e.to_string())?;
    ensure(t == me || seq == last, || format!("seq {seq:?} != last send {last:?}"))?;
    hermit::wait(t, seq).map_err(|e| e.to_string())?;
    if t != me {
        let bogus = ipiq_abi::Seq(seq.0 + 1000);
        ensure(hermit::wait(t, bogus) == Err(Error::InvalidSequence), || "wait on a never-issued seq did not fail".into())?;
    }
    Ok(format!("seq {} to core {t}", seq.0))
}

fn test_passive_wait(me: usize, cpus: usize) -> Result<String, String> {
    let t = if cpus > 1 { (me + 1) % cpus } else { me };
    let before = ran(t);
    let seq = hermit::send_passive(t, count_on, t).map_err(|e| e.to_string())?;
    hermit::wait(t, seq).map_err(|e| e.to_string())?;
    ensure(ran(t) == before + 1, || "passive message had not run after wait".into())?;
    Ok(format!("core {t}"))
}

fn test_errors(cpus: usize) -> Result<String, String> {
    let bad = cpus + 5;
    ensure(hermit::send(bad, count_on, 0) == Err(Error::NoSuchCpu(bad)), || "send to unknown core".into())?;
    ensure(hermit::send_passive(bad, count_on, 0).is_err(), || "passive to unknown core".into())?;
    ensure(hermit::try_send(bad, count_on, 0).is_err(), || "try_send to unknown core".into())?;
    ensure(hermit::seq(bad).is_err() && hermit::wait(bad, ipiq_abi::Seq(1)).is_err(), || "seq/wait on unknown core".into())?;
    ensure(hermit::stats(bad).is_err(), || "stats of unknown core".into())?;
    let mut set = CpuSet::all(cpus).map_err(|e| e.to_string())?;
    set.insert(bad).map_err(|e| e.to_string())?;
    ensure(hermit::send_many(&set, count_on, 0).is_err(), || "send_many beyond the machine".into())?;
    ensure(hermit::send_many(&CpuSet::new(), count_on, 0).is_err(), || "send_many to the empty set".into())?;
    // Raw syscalls with null or oversized arguments: errors, never a kernel panic.
    // SAFETY: the kernel validates these arguments; null pointers are part of the test.
    unsafe {
        ensure(hermit::sys::sys_ipiq_send(0, 0, 0, std::ptr::null_mut()) < 0, || "null function".into())?;
        ensure(hermit::sys::sys_ipiq_send_many(std::ptr::null(), 3, count_on as usize, 0) < 0, || "null set".into())?;
        ensure(hermit::sys::sys_ipiq_send_many([1u64; 1].as_ptr(), 100_000, count_on as usize, 0) < 0, || "huge set".into())?;
        // 64 words (the most a set argument may have): a bit past the set capacity is EINVAL.
        let mut past_capacity = [0u64; 64];
        past_capacity[63] = 1 << 63;
        ensure(hermit::sys::sys_ipiq_send_many(past_capacity.as_ptr(), 64, count_on as usize, 0) == -22, || "core 4095 in a set".into())?;
        ensure(hermit::sys::sys_ipiq_stats(0, std::ptr::null_mut(), 4) < 0, || "null stats buffer".into())?;
        ensure(hermit::sys::sys_ipiq_seq(0, std::ptr::null_mut()) < 0, || "null seq".into())?;
        ensure(hermit::sys::sys_ipiq_swap_pages(1, 4096) < 0, || "unaligned swap".into())?;
    }
    Ok("unknown cores, empty/oversized sets, null pointers refused".into())
}

fn test_send_many(me: usize, cpus: usize) -> Result<String, String> {
    let before: Vec<u64> = (0..cpus).map(ran).collect();
    let all = CpuSet::all(cpus).map_err(|e| e.to_string())?;
    let stats_before = my_stats(me)?;
    // Every core, the caller included: each runs the function once.
    let n = hermit::send_many(&all, count_on_any, 0).map_err(|e| e.to_string())?;
    ensure(n == cpus, || format!("send_many reached {n} of {cpus}"))?;
    wait_all(me, &others(me, cpus))?;
    for (core, &b) in before.iter().enumerate() {
        ensure(ran(core) == b + 1, || format!("core {core} ran {} times", ran(core) - b))?;
    }
    let first = check_icr_writes(me, cpus, &others(me, cpus), stats_before, my_stats(me)?)?;
    if cpus == 1 {
        return Ok(format!("{n} cores"));
    }
    // ICR writes per multicast, by shape: every other core (the all-excluding-self shorthand:
    // exactly one write whenever every target needed an IPI), one other core, and on 4+ cores
    // every other core but the last, and the odd cores (one logical write per x2APIC cluster;
    // one write per target on xAPIC).
    let mut shapes = vec![("every other core", others(me, cpus))];
    shapes.push(("one other core", others(me, cpus)[..1].to_vec()));
    if cpus >= 4 {
        let mut most = others(me, cpus);
        most.pop();
        shapes.push(("all but one other core", most));
        shapes.push(("the odd cores", others(me, cpus).into_iter().filter(|c| c % 2 == 1).collect()));
    }
    let mut lines = vec![format!("{n} cores; {}", first.describe())];
    for (name, targets) in shapes {
        lines.push(format!("{name}: {}", measure_multicasts(me, cpus, &targets)?));
    }
    Ok(lines.join("; "))
}

/// Whether the kernel drives the local APIC in x2APIC mode: it does whenever the CPU has one
/// (CPUID.1:ECX bit 21), as its `supports_x2apic` decides.
fn x2apic_mode() -> bool {
    // SAFETY: CPUID exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { std::arch::x86_64::__cpuid(1) };
    leaf1.ecx & (1 << 21) != 0
}

fn my_stats(me: usize) -> Result<ipiq_abi::Stats, String> {
    hermit::stats(me).map_err(|e| format!("stats of core {me}: {e}"))
}

/// Waits until every core of `targets` ran everything this core sent it.
fn wait_all(me: usize, targets: &[usize]) -> Result<(), String> {
    for &t in targets.iter().filter(|&&t| t != me) {
        let seq = hermit::seq(t).map_err(|e| e.to_string())?;
        hermit::wait(t, seq).map_err(|e| format!("wait on {t}: {e}"))?;
    }
    Ok(())
}

/// x2APIC clusters (APIC id >> 4; the APIC id is the core index here, `core_id` checks it)
/// among `targets`.
fn clusters(targets: &[usize]) -> u64 {
    let mut clusters: Vec<usize> = targets.iter().map(|t| t >> 4).collect();
    clusters.sort_unstable();
    clusters.dedup();
    clusters.len() as u64
}

/// What one multicast from this core to other cores cost, from this core's statistics.
struct MulticastCost {
    /// Targets that needed an IPI (the rest were avoided: already signalled or draining).
    interrupted: u64,
    targets: u64,
    /// ICR writes the platform reported.
    writes: u64,
}

impl MulticastCost {
    fn describe(&self) -> String {
        format!("{} of {} targets interrupted in {} ICR writes", self.interrupted, self.targets, self.writes)
    }
}

/// Checks the ICR writes of one multicast from `me` to `targets` (other cores only) between two
/// readings of `me`'s statistics: to every other core, with every one of them needing an IPI,
/// exactly one write (the shorthand); otherwise at most one per x2APIC cluster of the targets,
/// or (xAPIC) one per target interrupted. Nothing else on this core multicasts meanwhile, and
/// only this multicast's sends avoid IPIs, so the deltas are this multicast's.
fn check_icr_writes(me: usize, cpus: usize, targets: &[usize], before: ipiq_abi::Stats, after: ipiq_abi::Stats) -> Result<MulticastCost, String> {
    let targets: Vec<usize> = targets.iter().copied().filter(|&t| t != me).collect();
    let avoided = after.avoided - before.avoided;
    let cost = MulticastCost {
        interrupted: (targets.len() as u64).saturating_sub(avoided),
        targets: targets.len() as u64,
        writes: after.icr_writes - before.icr_writes,
    };
    let every_other_core = targets.len() == cpus - 1 && cost.interrupted == cost.targets;
    let (ok, expected) = if cost.interrupted == 0 {
        (cost.writes == 0, "none".to_string())
    } else if every_other_core {
        (cost.writes == 1, "exactly 1 (all-excluding-self shorthand)".to_string())
    } else if x2apic_mode() {
        let bound = clusters(&targets).min(cost.interrupted);
        (cost.writes >= 1 && cost.writes <= bound, format!("1..={bound} (one per cluster)"))
    } else {
        (cost.writes == cost.interrupted, format!("{} (one per target)", cost.interrupted))
    };
    ensure(ok, || format!("multicast to {targets:?}: {}; expected {expected}", cost.describe()))?;
    Ok(cost)
}

/// Sends multicasts to `targets` until three of them found every target needing an IPI (idle
/// targets halt after a short poll, so each round first sleeps) and every target has, in one of
/// those, run the message without its tick draining anything and with no IPI re-sent: reached
/// by the multicast's own ICR write (the shorthand, a cluster write or a physical one), which
/// is what shows QEMU delivers them. (A target's 10 ms tick may still drain a message before a
/// slow emulated IPI lands, so no single round has to show every target.) Checks each one's ICR
/// writes and that every target ran it once; returns a summary.
fn measure_multicasts(me: usize, cpus: usize, targets: &[usize]) -> Result<String, String> {
    const WANTED: usize = 3;
    const ROUNDS: usize = 40;
    let set = CpuSet::from_cpus(targets.iter().copied()).map_err(|e| e.to_string())?;
    let (mut full, mut rounds) = (0, 0);
    let mut by_write = vec![false; targets.len()];
    let mut writes_full = Vec::new();
    let tick_drained = |t: usize| hermit::stats(t).map_or(0, |s| s.tick_drained);
    while (full < WANTED || by_write.contains(&false)) && rounds < ROUNDS {
        rounds += 1;
        std::thread::sleep(Duration::from_millis(5));
        let ran_before: Vec<u64> = targets.iter().map(|&t| ran(t)).collect();
        let ticks_before: Vec<u64> = targets.iter().map(|&t| tick_drained(t)).collect();
        let before = my_stats(me)?;
        let n = hermit::send_many(&set, count_on_any, 0).map_err(|e| e.to_string())?;
        ensure(n == targets.len(), || format!("send_many reached {n} of {}", targets.len()))?;
        wait_all(me, targets)?;
        let after = my_stats(me)?;
        for (i, &t) in targets.iter().enumerate() {
            ensure(ran(t) == ran_before[i] + 1, || format!("core {t} ran {} times", ran(t) - ran_before[i]))?;
        }
        let cost = check_icr_writes(me, cpus, targets, before, after)?;
        if cost.interrupted == cost.targets {
            full += 1;
            writes_full.push(cost.writes);
            if after.ipi_resent == before.ipi_resent {
                for (i, &t) in targets.iter().enumerate() {
                    by_write[i] |= tick_drained(t) == ticks_before[i];
                }
            }
        }
    }
    ensure(full > 0, || format!("no multicast in {rounds} found all {} targets needing an IPI", targets.len()))?;
    let missed: Vec<usize> = targets.iter().zip(&by_write).filter(|(_, &w)| !w).map(|(&t, _)| t).collect();
    ensure(missed.is_empty(), || {
        format!("cores {missed:?} never ran a multicast without their tick or a re-sent IPI in {full} rounds (ICR writes {writes_full:?})")
    })?;
    Ok(format!(
        "{} targets, ICR writes {writes_full:?} in the {full} of {rounds} multicasts that interrupted all, each target reached by the write alone",
        targets.len()
    ))
}

extern "C" fn count_on_any(_: usize) {
    count_on(apic_id());
}

/// Cores on which a cpusync function found interrupts enabled.
static CPUSYNC_IRQ_ON: AtomicU64 = AtomicU64::new(0);

/// Whether the calling core has interrupts enabled (RFLAGS.IF).
fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no memory of ours is touched.
    unsafe { std::arch::asm!("pushfq", "pop {}", out(reg) flags) };
    flags & (1 << 9) != 0
}

/// A cpusync function: counts where it ran, and whether that core had interrupts on (the master
/// runs the whole rendezvous with them off, and targets run it from their interrupt context).
extern "C" fn count_in_cpusync(_: usize) {
    if interrupts_enabled() {
        CPUSYNC_IRQ_ON.fetch_add(1, Ordering::Relaxed);
    }
    count_on(apic_id());
}

fn test_cpusync(me: usize, cpus: usize) -> Result<String, String> {
    let before: Vec<u64> = (0..cpus).map(ran).collect();
    let irq_on = CPUSYNC_IRQ_ON.load(Ordering::Relaxed);
    let all = CpuSet::all(cpus).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(5));
    let stats_before = my_stats(me)?;
    let n = hermit::cpusync(&all, count_in_cpusync, 0).map_err(|e| e.to_string())?;
    ensure(n == cpus, || format!("cpusync gathered {n} of {cpus}"))?;
    // The enter messages: one multicast to every other core.
    let cost = check_icr_writes(me, cpus, &others(me, cpus), stats_before, my_stats(me)?)?;
    for (core, &b) in before.iter().enumerate() {
        ensure(ran(core) == b + 1, || format!("core {core} had not run the function when cpusync returned"))?;
    }
    let on = CPUSYNC_IRQ_ON.load(Ordering::Relaxed) - irq_on;
    ensure(on == 0, || format!("{on} cores ran the cpusync function with interrupts enabled"))?;
    ensure(interrupts_enabled(), || "interrupts stayed off after cpusync returned".into())?;
    Ok(format!("{n} cores in lockstep, interrupts off in all; enter messages: {}", cost.describe()))
}

/// try_send to a core that cannot drain (interrupts off) fills its FIFO until WouldBlock; every
/// accepted message runs, in order, once the core drains again.
fn test_try_send(me: usize, cpus: usize) -> Result<String, String> {
    if cpus == 1 {
        let before = ran(me);
        hermit::try_send(me, count_on, me).map_err(|e| e.to_string())?;
        ensure(ran(me) == before + 1, || "try_send to self did not run at once".into())?;
        return Ok("1 core: runs in the caller".into());
    }
    let t = (me + 1) % cpus;
    static HOLD: AtomicBool = AtomicBool::new(false);
    static HELD: AtomicBool = AtomicBool::new(false);
    HOLD.store(true, Ordering::Release);
    HELD.store(false, Ordering::Release);
    let tid = spawn_on(t, || {
        // SAFETY: ring 0; interrupts are re-enabled below, and nothing here blocks.
        unsafe { std::arch::asm!("cli") };
        HELD.store(true, Ordering::Release);
        while HOLD.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        // SAFETY: as above.
        unsafe { std::arch::asm!("sti") };
    });
    while !HELD.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let base = NEXT[me][t].load(Ordering::Relaxed);
    let mut accepted = 0u64;
    let mut refused = false;
    for i in 0..1000u64 {
        match hermit::try_send(t, ordered, (me << 56) | (base + i) as usize) {
            Ok(_) => accepted += 1,
            Err(Error::WouldBlock) => {
                refused = true;
                break;
            }
            Err(e) => {
                HOLD.store(false, Ordering::Release);
                join(tid);
                return Err(format!("try_send: {e}"));
            }
        }
    }
    HOLD.store(false, Ordering::Release);
    join(tid);
    let seq = hermit::seq(t).map_err(|e| e.to_string())?;
    hermit::wait(t, seq).map_err(|e| e.to_string())?;
    ensure(refused, || format!("never refused after {accepted} messages"))?;
    let done = NEXT[me][t].load(Ordering::Relaxed) - base;
    ensure(done == accepted, || format!("{accepted} accepted, {done} ran"))?;
    ensure(OUT_OF_ORDER.load(Ordering::Relaxed) == 0, || "out of order".into())?;
    Ok(format!("WouldBlock after {accepted} queued to a core with interrupts off; all ran in order"))
}

/// A thread pinned to a core that spins without syscalls (a busy core: no idle drain, no halt)
/// until stopped or dropped (so an early error return stops it too). One at a time.
struct Spinner(i32);

static SPIN: AtomicBool = AtomicBool::new(false);
static SPINNING: AtomicBool = AtomicBool::new(false);

impl Spinner {
    /// Starts the spinner on `core` and returns once it spins.
    fn start(core: usize) -> Self {
        // Release: the resets before the thread that reads them starts.
        SPIN.store(true, Ordering::Release);
        SPINNING.store(false, Ordering::Release);
        let tid = spawn_on(core, || {
            // Release: pairs with the Acquire wait below.
            SPINNING.store(true, Ordering::Release);
            // Acquire: pairs with `stop`'s Release.
            while SPIN.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        });
        // Acquire: pairs with the thread's Release.
        while !SPINNING.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        Spinner(tid)
    }

    /// Stops the spinner and joins its thread.
    fn stop(self) {
        drop(self);
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        // Release: the thread sees it and returns.
        SPIN.store(false, Ordering::Release);
        join(self.0);
    }
}

/// Passive messages to a busy core (a spinning thread: no syscalls, no idle drain) run at its
/// next tick (or any earlier drain of that core). A core's tick runs only while passive
/// messages come: a send that finds it stopped (the first, typically) wakes the core with one
/// IPI and asks for the tick, and the rest ride the tick with no IPI.
fn test_passive_tick(me: usize, cpus: usize) -> Result<String, String> {
    let t = if cpus > 1 { (me + 1) % cpus } else { me };
    if t == me {
        return Ok("1 core: passive to self runs at once".into());
    }
    let spinner = Spinner::start(t);
    let count = 10u64;
    let mut worst = Duration::ZERO;
    let sender_before = hermit::stats(me).map_err(|e| e.to_string())?;
    let target_before = hermit::stats(t).map_err(|e| e.to_string())?;
    let mut result = Ok(());
    for _ in 0..count {
        let done = PASSIVE_DONE.load(Ordering::Acquire);
        let start = Instant::now();
        if let Err(e) = hermit::send_passive(t, passive_hit, 0) {
            result = Err(format!("send_passive: {e}"));
            break;
        }
        while PASSIVE_DONE.load(Ordering::Acquire) == done && start.elapsed() < Duration::from_secs(2) {
            std::hint::spin_loop();
        }
        let took = start.elapsed();
        worst = worst.max(took);
        if PASSIVE_DONE.load(Ordering::Acquire) == done {
            result = Err("a passive message never ran".into());
            break;
        }
    }
    let sender_after = hermit::stats(me).map_err(|e| e.to_string())?;
    let target_after = hermit::stats(t).map_err(|e| e.to_string())?;
    spinner.stop();
    result?;
    let ipis = sender_after.ipis - sender_before.ipis;
    let passive = sender_after.passive - sender_before.passive;
    let by_tick = target_after.tick_drained - target_before.tick_drained;
    // Each send took one path: an IPI (the tick had stopped) or none (the tick runs). A slow
    // host may delay the sender past a whole tick period, which then finds nothing and stops,
    // so more than one IPI is possible; but once asked for, the tick carries messages.
    ensure(ipis + passive == count, || format!("{ipis} IPIs and {passive} counted passive for {count} sends"))?;
    ensure(passive >= 1, || format!("none of {count} went without an IPI ({ipis} IPIs): the tick never ran"))?;
    // Those are drained by the tick, or by any other drain of the busy core (an IPI another
    // core sent it, a shootdown), which is as good.
    ensure(by_tick >= 1, || format!("none of {count} drained by the tick"))?;
    ensure(worst <= PASSIVE_BOUND, || format!("worst latency {worst:?} over the bound {PASSIVE_BOUND:?}"))?;
    Ok(format!(
        "{count} passive to busy core {t}: {ipis} IPIs (tick stopped), {passive} without, {by_tick} drained by tick, worst {:.1} ms (tick {} ms, bound {} ms)",
        worst.as_secs_f64() * 1e3,
        TICK_PERIOD.as_millis(),
        PASSIVE_BOUND.as_millis()
    ))
}

/// A core nothing is sent to takes no tick: over a second in which nothing is sent, the other
/// cores (halted in their idle loops, their ticks stopped) take at most one tick each, and so
/// does a busy core (a spinning thread) over half a second: its tick stops at the first tick
/// that finds nothing queued. Then passive messages to an idle core run within the bound: each
/// either wakes the core with one IPI (halted, or its tick stopped) or, if it found the core
/// awake with its tick running, waits for its drain with none.
fn test_idle_tick(me: usize, cpus: usize) -> Result<String, String> {
    let idle: Vec<usize> = others(me, cpus);
    let Some(&busy) = idle.first() else {
        return Ok("1 core: no idle core to watch".into());
    };
    let ticks = |core: usize| hermit::stats(core).map(|s| s.ticks).map_err(|e| e.to_string());
    // Let every core settle into its idle loop, then watch them all for a second.
    std::thread::sleep(Duration::from_millis(50));
    let before: Vec<u64> = idle.iter().map(|&c| ticks(c)).collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let secs = start.elapsed().as_secs_f64();
    let after: Vec<u64> = idle.iter().map(|&c| ticks(c)).collect::<Result<_, _>>()?;
    let worst_idle = before.iter().zip(&after).map(|(b, a)| a - b).max().unwrap_or(0);
    // The same core, busy, with nothing sent to it: its tick stops too.
    let spinner = Spinner::start(busy);
    let busy_before = ticks(busy)?;
    let busy_start = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let busy_secs = busy_start.elapsed().as_secs_f64();
    let busy_ticks = ticks(busy)? - busy_before;
    spinner.stop();
    ensure(worst_idle <= 1, || format!("an idle core took {worst_idle} ticks in {secs:.2} s"))?;
    ensure(busy_ticks <= 1, || format!("a busy core nothing was sent to took {busy_ticks} ticks in {busy_secs:.2} s"))?;
    // Passive messages to the idle core.
    let t = busy;
    let (mut woken, mut worst) = (0u64, Duration::ZERO);
    let count = 10u64;
    for i in 0..count {
        std::thread::sleep(Duration::from_millis(20));
        let sender_before = hermit::stats(me).map_err(|e| e.to_string())?;
        let done = PASSIVE_DONE.load(Ordering::Acquire);
        let sent = Instant::now();
        hermit::send_passive(t, passive_hit, 0).map_err(|e| format!("send_passive: {e}"))?;
        while PASSIVE_DONE.load(Ordering::Acquire) == done && sent.elapsed() < Duration::from_secs(2) {
            std::hint::spin_loop();
        }
        worst = worst.max(sent.elapsed());
        ensure(PASSIVE_DONE.load(Ordering::Acquire) != done, || format!("passive message {i} to idle core {t} never ran"))?;
        let sender_after = hermit::stats(me).map_err(|e| e.to_string())?;
        let (ipis, passive) = (sender_after.ipis - sender_before.ipis, sender_after.passive - sender_before.passive);
        ensure(ipis + passive == 1, || format!("passive message {i}: {ipis} IPIs, {passive} counted passive"))?;
        woken += ipis;
    }
    ensure(woken > 0, || format!("none of {count} passive messages found core {t} halted"))?;
    ensure(worst <= PASSIVE_BOUND, || format!("worst latency {worst:?} over the bound {PASSIVE_BOUND:?}"))?;
    Ok(format!(
        "idle cores: at most {worst_idle} ticks in {secs:.2} s; busy core {busy}: {busy_ticks} in {busy_secs:.2} s; \
         {count} passive to idle core {t}: {woken} woke it with an IPI, worst {:.1} ms",
        worst.as_secs_f64() * 1e3
    ))
}

/// Every core sends to every core (itself included) until the target count or the time budget;
/// zero lost, per-pair order kept; std threads, a channel and sleeps run alongside.
fn test_stress(cpus: usize) -> Result<String, String> {
    static SENT: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    SENT.store(0, Ordering::Relaxed);
    STOP.store(false, Ordering::Relaxed);
    let start: Vec<Vec<u64>> = (0..cpus).map(|s| (0..cpus).map(|t| NEXT[s][t].load(Ordering::Relaxed)).collect()).collect();

    // Alongside: a std thread pair with a channel and sleeps.
    let (tx, rx) = mpsc::channel::<u32>();
    let producer = std::thread::spawn(move || {
        for i in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            if tx.send(i).is_err() {
                return false;
            }
        }
        true
    });
    let sleeper = std::thread::spawn(|| {
        let t = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        t.elapsed()
    });

    let began = Instant::now();
    let per_sender = STRESS_TARGET / cpus as u64;
    let tids: Vec<i32> = (0..cpus)
        .map(|s| {
            spawn_on(s, move || {
                let deadline = Instant::now() + STRESS_BUDGET;
                let mut index = vec![0u64; cpus];
                for (t, slot) in index.iter_mut().enumerate() {
                    *slot = NEXT[s][t].load(Ordering::Relaxed);
                }
                let mut sent = 0u64;
                'outer: while sent < per_sender {
                    for t in 0..cpus {
                        if hermit::send(t, ordered, (s << 56) | index[t] as usize).is_err() {
                            break 'outer;
                        }
                        index[t] += 1;
                        sent += 1;
                    }
                    if sent % 4096 < cpus as u64 && Instant::now() > deadline {
                        break;
                    }
                }
                for t in 0..cpus {
                    if let Ok(seq) = hermit::seq(t) {
                        let _ = hermit::wait(t, seq);
                    }
                }
                SENT.fetch_add(sent, Ordering::Relaxed);
            })
        })
        .collect();
    for tid in tids {
        join(tid);
    }
    let took = began.elapsed();
    let received: Vec<String> = rx.iter().map(|v| v.to_string()).collect();
    let producer_ok = producer.join().unwrap_or(false);
    let slept = sleeper.join().unwrap_or(Duration::ZERO);

    let sent = SENT.load(Ordering::Relaxed);
    let mut ran = 0u64;
    for s in 0..cpus {
        for t in 0..cpus {
            ran += NEXT[s][t].load(Ordering::Relaxed) - start[s][t];
        }
    }
    ensure(ran == sent, || format!("{sent} sent, {ran} ran: {} lost", sent.saturating_sub(ran)))?;
    ensure(OUT_OF_ORDER.load(Ordering::Relaxed) == 0, || "messages ran out of order".into())?;
    ensure(producer_ok && received.len() == 20, || format!("channel delivered {} of 20", received.len()))?;
    ensure(received.iter().enumerate().all(|(i, v)| *v == i.to_string()), || "channel out of order".into())?;
    ensure(slept >= Duration::from_millis(50), || format!("sleep(50 ms) returned after {slept:?}"))?;
    Ok(format!(
        "{sent} messages all-to-all on {cpus} cores in {:.2} s ({:.0}/s), 0 lost, in order; channel 20/20, sleep {:.0} ms",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64(),
        slept.as_secs_f64() * 1e3
    ))
}

/// Readers that let their cores halt between reads: a shootdown defers a halted core's flush to
/// its wake-up instead of interrupting it, and the flush must come before the reader reads
/// again, whether the core wakes because the reader's sleep ended (the scheduler's timer) or
/// because the writer unparked it (a cross-core wake-up: a scheduler message, an IPI to a halted
/// core). No stale read, no reader killed, and some flushes really deferred.
fn test_stale_tlb_idle(me: usize, cpus: usize) -> Result<String, String> {
    if cpus < 2 {
        return Ok("1 core: no reader core".into());
    }
    let rounds: u64 = if cpus > 4 { 40 } else { 100 };
    let spawn = |core: usize, job: Box<dyn FnOnce() + Send>| pinned::spawn_on(core, job).unwrap_or(-1);
    let mut parts = Vec::new();
    for (name, between_reads) in [
        // Hermit busy-waits sleeps under 10 ms; from 10 ms the task blocks and the core halts.
        ("sleeping", stale::BetweenReads::Sleep(Duration::from_millis(10))),
        ("parked", stale::BetweenReads::Park),
    ] {
        let plan = stale::Plan { all_read: true, busy: false, gap: Some(Duration::from_millis(1)), between_reads };
        let before = hermit::stats(me).map_err(|e| e.to_string())?;
        let (out, pages) = stale::run_plan(me, cpus, rounds, plan, &spawn, &join)?;
        let after = hermit::stats(me).map_err(|e| e.to_string())?;
        pages.unmap()?;
        let deferred = after.shootdown_deferred - before.shootdown_deferred;
        ensure(out.stale == 0, || format!("{name} readers: {} stale reads of {}", out.stale, out.checks))?;
        ensure(out.readers_finished == out.readers, || {
            format!("{name} readers: {} of {} killed by a page fault", out.readers - out.readers_finished, out.readers)
        })?;
        ensure(out.checks > 0, || format!("{name} readers never checked"))?;
        ensure(deferred > 0, || format!("{name} readers: no shootdown found a reader's core halted"))?;
        parts.push(format!("{name}: {} checked reads, 0 stale, {deferred} flushes deferred to a wake-up", out.checks));
    }
    Ok(format!("{rounds} swaps under {} readers each way; {}", cpus - 1, parts.join("; ")))
}

/// Readers on the other cores keep reading a page while this core swaps the frames behind it
/// (map over a present entry, with shootdown): after each swap returns, no reader may see the
/// old frame. Then an unmap of a page other cores touched must shoot down too. The experiment
/// is `hermit_apps::stale`, shared with the `tlb-stale` app (which also runs it on the stock kernel).
fn test_stale_tlb(me: usize, cpus: usize) -> Result<String, String> {
    // Every swap is two shootdowns that need every vCPU; under TCG with more vCPUs than host
    // cores each costs host scheduling slices, so fewer rounds on big guests.
    let rounds: u64 = if cpus > 4 { 20 } else { 100 };
    stale::swap_rejects_bad_input()?;
    let before = hermit::stats(me).map_err(|e| e.to_string())?;
    let spawn = |core: usize, job: Box<dyn FnOnce() + Send>| pinned::spawn_on(core, job).unwrap_or(-1);
    let (out, pages) = stale::run(me, cpus, rounds, &spawn, &join)?;
    let after_swaps = hermit::stats(me).map_err(|e| e.to_string())?;
    // Both pages are unmapped (other cores touched `a`): each unmap must be shot down.
    pages.unmap()?;
    let after_unmap = hermit::stats(me).map_err(|e| e.to_string())?;
    let shootdowns = after_swaps.shootdowns - before.shootdowns;
    let unmap_shootdowns = after_unmap.shootdowns - after_swaps.shootdowns;
    ensure(out.stale == 0, || {
        format!(
            "{} stale reads of {} (after {} of {} swaps, at most {} after one)",
            out.stale, out.checks, out.stale_rounds, out.rounds, out.max_stale_in_round
        )
    })?;
    ensure(cpus == 1 || out.checks > 0, || "readers never checked".into())?;
    ensure(out.readers_finished == out.readers, || {
        format!("{} of {} readers were killed by a page fault during the swaps", out.readers - out.readers_finished, out.readers)
    })?;
    ensure(shootdowns >= 2 * rounds, || format!("{shootdowns} shootdowns for {rounds} swaps"))?;
    ensure(unmap_shootdowns >= 1, || "munmap did not shoot down".into())?;
    Ok(format!(
        "{rounds} swaps under {} readers: {} checked reads, 0 stale; {shootdowns} shootdowns for swaps, {unmap_shootdowns} for munmap",
        out.readers, out.checks
    ))
}

fn print_stats(cpus: usize) {
    println!("ipiq statistics ({}):", ipiq_abi::Stats::NAMES.join(" "));
    for core in 0..cpus {
        if let Ok(s) = hermit::stats(core) {
            println!("  core {core}: {}", s.values().map(|v| v.to_string()).collect::<Vec<_>>().join(" "));
        }
    }
    if let Ok(s) = hermit::total_stats() {
        println!(
            "  total: messages {} (+{} local), IPIs sent {}, avoided {}, passive {}, drained by tick {}, cpusyncs {}, shootdowns {}, pages {}, full flushes {}, IPIs re-sent {}, timeouts {}, multicast ICR writes {}",
            s.sent, s.local, s.ipis, s.avoided, s.passive, s.tick_drained, s.cpusync, s.shootdowns, s.shootdown_pages, s.full_flushes, s.ipi_resent, s.timeouts, s.icr_writes
        );
    }
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let me = hermit::core_id();
    println!("ipiq-tests: {cpus} cores (ipiq serves {}), main on core {me}", hermit::cpu_count());
    if cpus > MAX_CORES || hermit::cpu_count() != cpus {
        println!("FAIL setup: core count mismatch or more than {MAX_CORES} cores");
        println!("ipiq-tests: 0 passed, 1 failed");
        std::process::exit(1);
    }
    let mut report = Report { passed: 0, failed: 0 };
    // `sched_locks [SECONDS]` as the arguments (APP_ARGS=sched_locks): that test alone, for
    // reruns and longer runs.
    if std::env::args().nth(1).as_deref() == Some("sched_locks") {
        let budget = match std::env::args().nth(2).map(|s| s.parse::<f64>()) {
            None => SCHED_LOCKS_BUDGET,
            Some(Ok(secs)) if secs > 0.0 && secs < 1e6 => Duration::from_secs_f64(secs),
            Some(_) => {
                println!("FAIL setup: sched_locks takes a number of seconds (0 < s < 10^6)");
                std::process::exit(1);
            }
        };
        report.check("sched_locks", sched_locks::run(cpus, budget));
        println!("ipiq-tests: {} passed, {} failed", report.passed, report.failed);
        std::process::exit(if report.failed == 0 { 0 } else { 1 });
    }
    report.check("core_id", test_core_id(cpus));
    report.check("send", test_send(me, cpus));
    report.check("seq_wait", test_seq_wait(me, cpus));
    report.check("send_passive", test_passive_wait(me, cpus));
    report.check("errors", test_errors(cpus));
    report.check("send_many", test_send_many(me, cpus));
    report.check("cpusync", test_cpusync(me, cpus));
    report.check("try_send", test_try_send(me, cpus));
    report.check("passive_tick", test_passive_tick(me, cpus));
    report.check("idle_tick", test_idle_tick(me, cpus));
    report.check("stress", test_stress(cpus));
    report.check("stale_tlb", test_stale_tlb(me, cpus));
    report.check("stale_tlb_idle", test_stale_tlb_idle(me, cpus));
    report.check("sched_locks", sched_locks::run(cpus, SCHED_LOCKS_BUDGET));
    print_stats(cpus);
    println!("ipiq-tests: {} passed, {} failed", report.passed, report.failed);
    std::process::exit(if report.failed == 0 { 0 } else { 1 });
}

