//! The invariants under arbitrary preemption: the host platform's preemptive mode
//! ([`IrqDelivery::Preemptive`]), where every IPI and every timer tick is a POSIX signal that
//! interrupts the target core's thread wherever it is, whenever its virtual interrupt flag is on.
//!
//! The workers here do busy, non-allocating work with interrupts on and never reach a safe point
//! (no `interrupt_point`, no idle loop), so whatever they run, they run from the interrupt
//! handler, between two arbitrary instructions of that work; now and then they turn interrupts
//! off for a while (a `cli` section), and no message may run on them meanwhile. Each test
//! asserts that the deliveries really preempted task code: many of them landed there, at several
//! distinct instruction addresses ([`HostPlatform::interrupts`]).
//!
//! The binary's global allocator is [`InterruptsOffAlloc`]: the handler may allocate, so no
//! allocation may be interrupted (the kernel's rule for locks that interrupt context takes).
//! Run with `make test-host` (this binary: `cargo test --release --features std --test
//! preempt`).

use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ipiq::host::{
    HostConfig, HostCore, HostMachine, HostPlatform, Interrupts, InterruptsOffAlloc, IrqDelivery,
    Pending,
};
use ipiq::{Config, CpuSet, Ipiq, Message, Platform, SyncWork};

#[global_allocator]
static ALLOCATOR: InterruptsOffAlloc<System> = InterruptsOffAlloc(System);

type Q = Ipiq<HostPlatform>;

/// A preemptive machine, or `None` (said loudly) where the mode does not exist.
fn machine(cpus: usize, slots: usize) -> Option<HostMachine> {
    machine_with_faults(cpus, slots, 0, 0)
}

/// [`machine`] with `drop` and `delay` per mille of the IPIs lost and late (100 us).
fn machine_with_faults(cpus: usize, slots: usize, drop: u32, delay: u32) -> Option<HostMachine> {
    let mut config = HostConfig::cpus(cpus);
    config.drop_ipi_per_mille = drop;
    config.delay_ipi_per_mille = delay;
    config.ipi_delay = Duration::from_micros(100);
    config.delivery = IrqDelivery::Preemptive;
    config.tick = Duration::from_millis(1);
    config.ipiq = Config {
        fifo_slots: slots,
        resend_after_ns: 200_000,
        ..Config::default()
    };
    match HostMachine::try_start(config) {
        Ok(machine) => Some(machine),
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!("SKIPPED: the preemptive host platform is not available here: {e}");
            None
        }
        Err(e) => panic!("starting a preemptive machine: {e}"),
    }
}

/// Busy work that allocates nothing: `rounds` steps of a mixing function.
fn busy(rounds: u32, seed: u64) -> u64 {
    let mut x = seed | 1;
    for _ in 0..rounds {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x ^= x >> 29;
    }
    std::hint::black_box(x)
}

/// Per-core flags set while a core's task has its interrupts off: a message that runs on a
/// core while its flag is set ran with interrupts off, which the virtual flag must prevent.
struct CliBook {
    in_cli: Vec<AtomicBool>,
    violations: AtomicUsize,
    sections: AtomicUsize,
}

impl CliBook {
    fn new(cpus: usize) -> Self {
        Self {
            in_cli: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            violations: AtomicUsize::new(0),
            sections: AtomicUsize::new(0),
        }
    }

    /// Called by every message function, on the core it runs on.
    fn check(&self, me: usize) {
        // Relaxed: the flag is written by this same thread (its task); the handler that runs
        // the message is on this thread too.
        if self.in_cli[me].load(Ordering::Relaxed) {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Busy work with the core's interrupts off (a kernel's `cli` section): interrupts that
    /// arrive meanwhile wait for the `irq_restore`, which takes them.
    fn busy_with_interrupts_off(&self, core: &HostCore<'_>, rounds: u32) -> u64 {
        let platform = core.ipiq().platform();
        let irq = platform.irq_save();
        self.in_cli[core.cpu()].store(true, Ordering::Relaxed);
        let x = busy(rounds, core.cpu() as u64);
        self.in_cli[core.cpu()].store(false, Ordering::Relaxed);
        platform.irq_restore(irq);
        self.sections.fetch_add(1, Ordering::Relaxed);
        x
    }

    fn assert_clean(&self, what: &str) {
        let (violations, sections) = (
            self.violations.load(Ordering::Relaxed),
            self.sections.load(Ordering::Relaxed),
        );
        assert!(sections > 0, "{what}: no task ran with interrupts off");
        assert_eq!(
            violations, 0,
            "{what}: {violations} messages ran on a core whose interrupts were off"
        );
    }
}

/// Starts a busy worker on each of `cpus`: interrupts on, no safe point, until `stop`; every
/// 32nd slice runs with interrupts off, and every 256th ends by yielding the host CPU (the host
/// has fewer CPUs than the machine has cores: a spinning thread would keep the one a signal is
/// waiting for off its CPU for a whole time slice; see `yield_host_cpu`).
fn start_workers(
    machine: &HostMachine,
    cpus: impl IntoIterator<Item = usize>,
    stop: &Arc<AtomicBool>,
    cli: &'static CliBook,
) -> Vec<Pending<u64>> {
    // Returns only once every worker runs: before that its core idles (and halts), which a
    // test of running targets must not see.
    let running = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = cpus
        .into_iter()
        .map(|cpu| {
            let stop = stop.clone();
            let running = running.clone();
            machine
                .spawn_on(cpu, move |core| {
                    // Release: pairs with the Acquire wait below.
                    running.fetch_add(1, Ordering::Release);
                    let mut x = 0;
                    let mut slice = 0u64;
                    // Acquire: pairs with the test's Release when it is done.
                    while !stop.load(Ordering::Acquire) {
                        slice += 1;
                        x ^= if slice.is_multiple_of(32) {
                            cli.busy_with_interrupts_off(core, 2_000)
                        } else {
                            busy(500, slice)
                        };
                        if slice.is_multiple_of(256) {
                            yield_host_cpu();
                        }
                    }
                    x
                })
                .expect("a core of a running machine takes tasks")
        })
        .collect();
    // Acquire: pairs with the workers' Release increments.
    while running.load(Ordering::Acquire) < workers.len() {
        std::thread::yield_now();
    }
    workers
}

/// Yields the host CPU (interrupts on: a signal may land in the system call too, as on any
/// other instruction of the task).
fn yield_host_cpu() {
    std::thread::yield_now();
}

/// Sets the workers' stop flag when dropped: a test that fails (unwinds) before `stop_workers`
/// still lets its workers end, so the machine's drop can join its cores instead of hanging.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // Release: pairs with the workers' Acquire load.
        self.0.store(true, Ordering::Release);
    }
}

fn stop_workers(stop: &AtomicBool, workers: Vec<Pending<u64>>) {
    // Release: pairs with the workers' Acquire load.
    stop.store(true, Ordering::Release);
    for worker in workers {
        worker.join();
    }
}

/// The interrupt figures of `cpus`, summed.
fn interrupts_of(machine: &HostMachine, cpus: impl IntoIterator<Item = usize>) -> Interrupts {
    let mut total = Interrupts::default();
    for cpu in cpus {
        total += machine.platform().interrupts(cpu);
    }
    total
}

/// Asserts that deliveries really preempted task code on `cpus`: at least `min` landed there,
/// at no fewer than `min_pcs` distinct instruction addresses (where those are decoded).
fn assert_preempted(
    machine: &HostMachine,
    cpus: impl IntoIterator<Item = usize>,
    min: u64,
    min_pcs: u64,
    what: &str,
) -> Interrupts {
    let total = interrupts_of(machine, cpus);
    eprintln!("{what}: {total:?}");
    assert!(
        total.preempted_work >= min,
        "{what}: only {} deliveries landed in task code (want >= {min}): {total:?}",
        total.preempted_work
    );
    if cfg!(all(target_arch = "x86_64", target_env = "gnu")) {
        assert!(
            total.distinct_pcs >= min_pcs,
            "{what}: task code was interrupted at only {} distinct addresses (want >= {min_pcs})",
            total.distinct_pcs
        );
    } else {
        eprintln!("NOTE: interrupted addresses are not decoded on this target: not checked");
    }
    total
}

// ----- exactly once and per-sender order: an all-to-all flood with nested sends ---------------

const FLOOD_CPUS: usize = 4;
const FLOOD_PER_CORE: usize = 25_000;

struct FloodBook {
    /// Executions of each message id (its forwards included).
    runs: Vec<AtomicU64>,
    /// next[sender][target][forwarded]: the last pair sequence number the sender gave, counted
    /// apart for the task's sends and for forwards (see `send_numbered`).
    next: Vec<Vec<[AtomicU64; 2]>>,
    /// last[target][sender][forwarded]: the last pair sequence number the target ran.
    last: Vec<Vec<[AtomicU64; 2]>>,
    order_violations: AtomicUsize,
    cli: CliBook,
}

/// One book per flood test (the clean one and the one with faults), named by bit 38 of the
/// messages' second word.
static FLOOD: [OnceLock<FloodBook>; 2] = [OnceLock::new(), OnceLock::new()];

fn flood_book(which: usize) -> &'static FloodBook {
    FLOOD[which].get_or_init(|| FloodBook {
        runs: (0..FLOOD_CPUS * FLOOD_PER_CORE)
            .map(|_| AtomicU64::new(0))
            .collect(),
        next: (0..FLOOD_CPUS)
            .map(|_| (0..FLOOD_CPUS).map(|_| Default::default()).collect())
            .collect(),
        last: (0..FLOOD_CPUS)
            .map(|_| (0..FLOOD_CPUS).map(|_| Default::default()).collect())
            .collect(),
        order_violations: AtomicUsize::new(0),
        cli: CliBook::new(FLOOD_CPUS),
    })
}

fn hops_of(id: usize) -> usize {
    id % 3
}

#[derive(Clone, Copy)]
enum How {
    Active,
    Passive,
}

/// Numbers one message from the calling core to `target` and queues it, with interrupts off from
/// taking the number to queuing the message. (The handler sends on this core too: without the
/// `cli`, its message could take a later number and still be queued first.)
///
/// The task's sends and the forwards (sends from message functions) are numbered apart: a task's
/// send into a full FIFO drains the core's own queues before it queues its message, and a
/// forward sent from a message function run there goes first, though its number came later.
/// Within each kind the numbers are the sending order: the task sends one message at a time,
/// and a forward never drains (a nested send spills instead) and runs with interrupts off.
fn send_numbered(
    q: &Q,
    which: usize,
    target: usize,
    id: usize,
    hops: usize,
    how: How,
    forwarded: bool,
) {
    let book = flood_book(which);
    let platform = q.platform();
    let irq = platform.irq_save();
    let me = q.current_cpu();
    // Relaxed load and store: only core `me` numbers its sends, with interrupts off.
    let next = &book.next[me][target][usize::from(forwarded)];
    let n = next.load(Ordering::Relaxed) + 1;
    next.store(n, Ordering::Relaxed);
    let (word0, word1) = (
        (id << 8) | hops,
        (me << 40) | (usize::from(forwarded) << 39) | (which << 38) | n as usize,
    );
    let sent = match how {
        How::Active => q.send(target, flood_hop, word0, word1),
        How::Passive => q.send_passive(target, flood_hop, word0, word1),
    };
    platform.irq_restore(irq);
    sent.expect("a send to an online core is accepted");
}

/// Counts the run, checks the pair's order, forwards while hops are left (a nested send).
fn flood_hop(q: &Q, word0: usize, word1: usize) {
    let (id, hops) = (word0 >> 8, word0 & 0xff);
    let (sender, forwarded, which, n) = (
        word1 >> 40,
        (word1 >> 39) & 1,
        (word1 >> 38) & 1,
        (word1 & ((1 << 38) - 1)) as u64,
    );
    let book = flood_book(which);
    let me = q.current_cpu();
    book.cli.check(me);
    book.runs[id].fetch_add(1, Ordering::Relaxed);
    // Relaxed load and store: only core `me` runs messages for itself.
    let last = &book.last[me][sender][forwarded];
    if last.load(Ordering::Relaxed) + 1 != n {
        book.order_violations.fetch_add(1, Ordering::Relaxed);
    }
    last.store(n, Ordering::Relaxed);
    if hops > 0 {
        send_numbered(
            q,
            which,
            (me + 1) % FLOOD_CPUS,
            id,
            hops - 1,
            How::Active,
            true,
        );
    }
}

#[test]
fn flood_with_nested_sends_runs_each_message_once_and_in_order_under_preemption() {
    flood(0, 0, 0);
}

/// The same with 10% of the IPIs lost and 10% late (delivered by the timer thread as they fall
/// due): the tick and the watchdogs' re-sends, both interrupts too, recover them.
#[test]
fn flood_under_preemption_with_lost_and_late_ipis() {
    flood(1, 100, 100);
}

/// Every core sends `FLOOD_PER_CORE` numbered messages round the others through 8-slot FIFOs
/// (a quarter of them passive), each forwarded 0-2 times by nested sends, working with
/// interrupts on between sends; checks that each ran exactly once, per-sender order, that no
/// message ran inside an interrupts-off section, and that deliveries preempted task code.
fn flood(which: usize, drop: u32, delay: u32) {
    let Some(machine) = machine_with_faults(FLOOD_CPUS, 8, drop, delay) else {
        return;
    };
    let book = flood_book(which);
    let started = Instant::now();
    // Each core floods, then keeps working (interrupts on, no safe point) until every message
    // has run, so the last of the flood lands in its work too.
    let (sent, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let tasks: Vec<_> = (0..FLOOD_CPUS)
        .map(|me| {
            let (sent, stop) = (sent.clone(), stop.clone());
            machine
                .spawn_on(me, move |core| {
                    let q = core.ipiq();
                    let mut x = 0;
                    for i in 0..FLOOD_PER_CORE {
                        let id = me * FLOOD_PER_CORE + i;
                        let target = (me + 1 + i % (FLOOD_CPUS - 1)) % FLOOD_CPUS;
                        let how = if i % 4 == 3 {
                            How::Passive
                        } else {
                            How::Active
                        };
                        send_numbered(q, which, target, id, hops_of(id), how, false);
                        // Busy work with interrupts on, where the other cores' IPIs land.
                        x ^= busy(3_000 + (i % 7) as u32 * 300, i as u64);
                        if i % 64 == 0 {
                            x ^= flood_book(which).cli.busy_with_interrupts_off(core, 400);
                        }
                    }
                    sent.fetch_add(1, Ordering::Release);
                    // Acquire: pairs with the test's Release when it is done.
                    while !stop.load(Ordering::Acquire) {
                        x ^= busy(500, x);
                        // Leave the host's CPUs to the cores still sending.
                        yield_host_cpu();
                    }
                    x
                })
                .unwrap()
        })
        .collect();
    while sent.load(Ordering::Acquire) < FLOOD_CPUS {
        std::thread::sleep(Duration::from_millis(1));
    }
    let send_phase = started.elapsed();
    let drained = machine.quiesce(Duration::from_secs(30));
    stop_workers(&stop, tasks);
    assert!(
        drained,
        "the flood did not drain: {} outstanding",
        machine.ipiq().outstanding()
    );
    let elapsed = started.elapsed();
    let mut executions = 0;
    let mut wrong = Vec::new();
    for (id, runs) in book.runs.iter().enumerate() {
        let runs = runs.load(Ordering::Relaxed);
        executions += runs;
        if runs != hops_of(id) as u64 + 1 {
            wrong.push((id, runs));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} messages lost or repeated, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(
        book.order_violations.load(Ordering::Relaxed),
        0,
        "per-sender order"
    );
    book.cli.assert_clean("flood");
    let stats = machine.ipiq().total_stats();
    let faults = machine.platform().ipi_faults();
    eprintln!(
        "preempt flood drop={drop}‰ delay={delay}‰: {executions} executions in {elapsed:?} (sends done after \
         {send_phase:?}); ipis {} avoided {} fifo_full {} spilled {} resent {}; {faults:?}",
        stats.ipis, stats.avoided, stats.fifo_full, stats.spilled, stats.ipi_resent
    );
    if drop > 0 || delay > 0 {
        assert!(
            faults.dropped > 0 && faults.delayed > 0,
            "fault injection did not fire: {faults:?}"
        );
    }
    let irqs = assert_preempted(&machine, 0..FLOOD_CPUS, 1_000, 8, "preempt flood");
    assert!(
        irqs.deferred > 0 && irqs.on_restore > 0,
        "no interrupt waited for irq_restore: {irqs:?}"
    );
    machine.shutdown();
}

// ----- I5: wait stays exact when the target runs its messages from the interrupt handler -------

const WAIT_PAIRS: usize = 1_000;

struct SlowBook {
    returned: Vec<AtomicBool>,
    cli: CliBook,
}

static SLOW: OnceLock<SlowBook> = OnceLock::new();

fn slow_book() -> &'static SlowBook {
    SLOW.get_or_init(|| SlowBook {
        returned: (0..2 * WAIT_PAIRS)
            .map(|_| AtomicBool::new(false))
            .collect(),
        cli: CliBook::new(4),
    })
}

/// Even messages drain the queue again from inside themselves (the next message runs and
/// returns while this one is still on the stack), then work a while.
fn slow(q: &Q, index: usize, _: usize) {
    let book = slow_book();
    book.cli.check(q.current_cpu());
    if index.is_multiple_of(2) {
        q.process();
    }
    busy(3_000, index as u64);
    // Release: pairs with the waiter's Acquire load.
    book.returned[index].store(true, Ordering::Release);
}

#[test]
fn wait_is_exact_when_targets_run_messages_from_the_interrupt_handler() {
    let Some(machine) = machine(4, 64) else {
        return;
    };
    let book = slow_book();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_unwind = StopOnDrop(stop.clone());
    let workers = start_workers(&machine, 1..4, &stop, &book.cli);
    let failures = machine
        .run_on(0, |core| {
            let q = core.ipiq();
            let book = slow_book();
            let mut failures = 0;
            for pair in 0..WAIT_PAIRS {
                let target = 1 + pair % 3;
                q.send(target, slow, 2 * pair, 0).unwrap();
                let second = q.send(target, slow, 2 * pair + 1, 0).unwrap();
                q.wait(target, second).unwrap();
                for index in [2 * pair, 2 * pair + 1] {
                    // Acquire: pairs with the Release in `slow`.
                    if !book.returned[index].load(Ordering::Acquire) {
                        failures += 1;
                    }
                }
                busy(200, pair as u64);
            }
            failures
        })
        .unwrap();
    stop_workers(&stop, workers);
    assert_eq!(
        failures, 0,
        "wait returned before a message up to its seq returned"
    );
    book.cli.assert_clean("wait");
    assert_preempted(&machine, 1..4, WAIT_PAIRS as u64 / 2, 8, "preempt wait");
    machine.shutdown();
}

// ----- I6: cpusync and shootdown with targets preempted mid-work ----------------------------

const SYNC_ROUNDS: usize = 400;

struct SyncBook {
    started: AtomicUsize,
    finished: AtomicUsize,
    after: AtomicUsize,
    simple: AtomicUsize,
    cli: CliBook,
}

static SYNC: OnceLock<SyncBook> = OnceLock::new();

fn sync_book() -> &'static SyncBook {
    SYNC.get_or_init(|| SyncBook {
        started: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        after: AtomicUsize::new(0),
        simple: AtomicUsize::new(0),
        cli: CliBook::new(4),
    })
}

fn sync_count(q: &Q, which: usize, _: usize) {
    let book = sync_book();
    book.cli.check(q.current_cpu());
    let counter = match which {
        0 => &book.started,
        1 => &book.finished,
        2 => &book.after,
        _ => &book.simple,
    };
    // AcqRel: the master reads these counts to judge the rendezvous' phases.
    counter.fetch_add(1, Ordering::AcqRel);
}

#[test]
fn cpusync_and_shootdown_hold_with_targets_preempted_mid_work() {
    let Some(machine) = machine(4, 16) else {
        return;
    };
    let book = sync_book();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_unwind = StopOnDrop(stop.clone());
    // Cores 2 and 3 work; core 1 is a second master (cpusyncs over 0, 2, 3) between slices of
    // its own work; core 0 shoots down and runs full rendezvous over 1, 2, 3, working with
    // interrupts on while it holds them (so core 1's rendezvous catch it held, and hold it).
    let workers = start_workers(&machine, 2..4, &stop, &book.cli);
    let second_master = {
        let stop = stop.clone();
        machine
            .spawn_on(1, move |core| {
                let q = core.ipiq();
                let others = CpuSet::from_cpus([0, 2, 3]).unwrap();
                let mut syncs = 0;
                // Acquire: pairs with the test's Release when it is done.
                while !stop.load(Ordering::Acquire) {
                    // With interrupts on at the call: the rendezvous turns them off from start
                    // to finish itself (see `two_masters_leading_rendezvous_over_each_other_both_finish`).
                    let result = q.cpusync_simple(&others, sync_count, 3, 0);
                    assert_eq!(result, Ok(3));
                    syncs += 1;
                    busy(5_000, syncs);
                }
                syncs
            })
            .unwrap()
    };
    let platform_flushes = |machine: &HostMachine| -> Vec<u64> {
        (0..4)
            .map(|cpu| machine.platform().tlb_flushes(cpu).ranges)
            .collect()
    };
    let before = platform_flushes(&machine);
    let report = machine
        .run_on(0, |core| {
            let q = core.ipiq();
            let platform = q.platform();
            let book = sync_book();
            let targets = CpuSet::from_cpus([1, 2, 3]).unwrap();
            let (mut early_flush, mut early_finish, mut missing_start) = (0, 0, 0);
            let mut finish_waits = Vec::new();
            for round in 0..SYNC_ROUNDS {
                // A shootdown returns only once every other core flushed.
                // `shootdown_on` interrupts every target: a plain `shootdown` would defer the
                // flush of a core that is halted at that moment (core 1 before its task runs).
                let done = q
                    .shootdown_on(&targets, 0x40_0000 + round * 4096, 1 + round % 4, false)
                    .unwrap();
                assert_eq!(done.targets, 3);
                for cpu in 1..4 {
                    if platform.tlb_flushes(cpu).ranges < (round + 1) as u64 {
                        early_flush += 1;
                    }
                }
                // A full rendezvous: start returns with every target held, which has not run
                // its finish work; finish returns once all have.
                let work = SyncWork {
                    start: Some(Message::new(sync_count, 0, 0)),
                    finish: Some(Message::new(sync_count, 1, 0)),
                    after: Some(Message::new(sync_count, 2, 0)),
                };
                let mut t = Instant::now();
                q.cpusync(&targets, work, |_| {
                    if book.started.load(Ordering::Acquire) != 3 * (round + 1) {
                        missing_start += 1;
                    }
                    if book.finished.load(Ordering::Acquire) != 3 * round {
                        early_finish += 1;
                    }
                    // The master works (interrupts off) while it holds them.
                    busy(2_000, round as u64);
                    t = Instant::now();
                })
                .unwrap();
                finish_waits.push(t.elapsed());
                if book.finished.load(Ordering::Acquire) != 3 * (round + 1) {
                    early_finish += 1;
                }
            }
            finish_waits.sort();
            (early_flush, early_finish, missing_start, finish_waits)
        })
        .unwrap();
    stop.store(true, Ordering::Release);
    let second_syncs = second_master.join();
    stop_workers(&stop, workers);
    let (early_flush, early_finish, missing_start, finish_waits) = report;
    assert!(machine.quiesce(Duration::from_secs(10)));
    let after = platform_flushes(&machine);
    eprintln!(
        "preempt cpusync: {SYNC_ROUNDS} shootdowns and rendezvous from core 0, {second_syncs} from core 1; \
         finish wait p50 {:?} p99 {:?} max {:?}",
        finish_waits[finish_waits.len() / 2],
        finish_waits[finish_waits.len() * 99 / 100],
        finish_waits[finish_waits.len() - 1]
    );
    assert_eq!(
        early_flush, 0,
        "a shootdown returned before a target flushed"
    );
    assert_eq!(
        missing_start, 0,
        "the master's closure ran before every target entered"
    );
    assert_eq!(
        early_finish, 0,
        "finish work ran before the release, or finish returned early"
    );
    for cpu in 1..4 {
        assert_eq!(
            after[cpu] - before[cpu],
            SYNC_ROUNDS as u64,
            "flushes on cpu {cpu}"
        );
    }
    assert_eq!(book.finished.load(Ordering::Acquire), 3 * SYNC_ROUNDS);
    let deadline = Instant::now() + Duration::from_secs(5);
    while book.after.load(Ordering::Acquire) < 3 * SYNC_ROUNDS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        book.after.load(Ordering::Acquire),
        3 * SYNC_ROUNDS,
        "after work, once per target"
    );
    assert_eq!(
        book.simple.load(Ordering::Acquire),
        3 * second_syncs as usize
    );
    book.cli.assert_clean("cpusync");
    assert_preempted(
        &machine,
        1..4,
        SYNC_ROUNDS as u64 / 2,
        8,
        "preempt cpusync targets",
    );
    machine.shutdown();
}

// ----- passive and lazy messages drained by the tick, which preempts busy targets ------------

struct TickBook {
    ran: AtomicUsize,
    /// Largest send-to-run latency seen, in ns.
    worst_ns: AtomicU64,
    cli: CliBook,
}

static TICK: OnceLock<TickBook> = OnceLock::new();

fn tick_book() -> &'static TickBook {
    TICK.get_or_init(|| TickBook {
        ran: AtomicUsize::new(0),
        worst_ns: AtomicU64::new(0),
        cli: CliBook::new(4),
    })
}

/// Records when it ran against `sent_ns` (the platform clock at the send).
fn stamped(q: &Q, sent_ns: usize, _: usize) {
    let book = tick_book();
    book.cli.check(q.current_cpu());
    let latency = q.platform().now_ns().saturating_sub(sent_ns as u64);
    book.worst_ns.fetch_max(latency, Ordering::Relaxed);
    book.ran.fetch_add(1, Ordering::Release);
}

#[test]
fn passive_and_lazy_messages_reach_busy_targets_through_the_preempting_tick() {
    const ROUNDS: usize = 150;
    const PASSIVE: usize = 8;
    const LAZY: usize = 2;
    let Some(machine) = machine(4, 256) else {
        return;
    };
    let book = tick_book();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_unwind = StopOnDrop(stop.clone());
    let workers = start_workers(&machine, 1..4, &stop, &book.cli);
    let (sent, stuck) = machine
        .run_on(0, |core| {
            let q = core.ipiq();
            let book = tick_book();
            let (mut sent, mut stuck) = (0, 0);
            for _ in 0..ROUNDS {
                for target in 1..4 {
                    for _ in 0..PASSIVE {
                        let now = q.platform().now_ns() as usize;
                        q.send_passive(target, stamped, now, 0).unwrap();
                    }
                    for _ in 0..LAZY {
                        let now = q.platform().now_ns() as usize;
                        q.try_send_lazy(target, stamped, now, 0).unwrap();
                    }
                    sent += PASSIVE + LAZY;
                }
                // Wait (busy, interrupts on) until the targets' ticks have run them all.
                let deadline = Instant::now() + Duration::from_secs(5);
                while book.ran.load(Ordering::Acquire) < sent {
                    if Instant::now() > deadline {
                        stuck += 1;
                        break;
                    }
                    busy(200, sent as u64);
                }
            }
            (sent, stuck)
        })
        .unwrap();
    let ticks_drained: u64 = (1..4)
        .map(|cpu| machine.ipiq().stats(cpu).unwrap().tick_drained)
        .sum();
    stop_workers(&stop, workers);
    let sender = machine.ipiq().stats(0).unwrap();
    eprintln!(
        "preempt tick: {sent} passive and lazy messages, worst latency {:?}; sender {} passive, {} lazy, {} IPIs; \
         drained by ticks {ticks_drained}",
        Duration::from_nanos(book.worst_ns.load(Ordering::Relaxed)),
        sender.passive,
        sender.lazy,
        sender.ipis
    );
    assert_eq!(stuck, 0, "messages to busy targets not drained within 5 s");
    assert_eq!(book.ran.load(Ordering::Acquire), sent);
    assert_eq!(
        sender.ipis, 0,
        "passive sends below a quarter full and lazy sends to running cores send no IPI"
    );
    assert_eq!(
        (sender.passive, sender.lazy),
        ((ROUNDS * 3 * PASSIVE) as u64, (ROUNDS * 3 * LAZY) as u64)
    );
    // No IPI reached the targets and they never reached a safe point: only the tick, taken
    // by the handler in the middle of their work, can have run the messages.
    assert_eq!(
        ticks_drained, sent as u64,
        "every message drained by a tick"
    );
    book.cli.assert_clean("tick");
    let irqs = assert_preempted(&machine, 1..4, ROUNDS as u64, 5, "preempt tick targets");
    assert!(irqs.ticks > 0);
    machine.shutdown();
}

// ----- two masters leading rendezvous over each other --------------------------------------------

/// Counts the rendezvous each master completed.
static MASTER_SYNCS: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];

fn nothing(_: &Q, _: usize, _: usize) {}

/// Cores 0 and 1 each lead rendezvous over every other core, over and over, while cores 2 and
/// 3 work: a scoped `cpusync` with a little work inside, then a `cpusync_simple`, with
/// interrupts on between the calls. A master that took interrupts between its start and its
/// finish (as the public `cpusync_start` / `finish` pair once allowed, and `cpusync_simple`
/// did internally) could run the other master's enter message from its interrupt handler
/// through `process`, which holds it until that master releases: with both masters caught in
/// each other's rendezvous that way, each spun in its handler waiting for a release below it on
/// its own stack, and all four cores hung (4 runs in 5). Masters now keep interrupts off from
/// start to finish (`cpusync.rs`), and serve each other's enter messages from their own wait
/// loops. The test fails (it does not hang) if the masters stop making progress for 5 s.
#[test]
fn two_masters_leading_rendezvous_over_each_other_both_finish() {
    const SYNCS: usize = 5_000;
    let Some(machine) = machine(4, 16) else {
        return;
    };
    let cli: &'static CliBook = Box::leak(Box::new(CliBook::new(4)));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_unwind = StopOnDrop(stop.clone());
    let workers = start_workers(&machine, 2..4, &stop, cli);
    let masters: Vec<_> = (0..2)
        .map(|me| {
            machine
                .spawn_on(me, move |core| {
                    let q = core.ipiq();
                    let others = CpuSet::from_cpus((0..4).filter(|&c| c != me)).unwrap();
                    for i in 0..SYNCS {
                        q.cpusync(&others, SyncWork::default(), |_| busy(20_000, i as u64))
                            .unwrap();
                        assert_eq!(q.cpusync_simple(&others, nothing, 0, 0), Ok(3));
                        MASTER_SYNCS[me].fetch_add(1, Ordering::Relaxed);
                        busy(1_000, i as u64);
                    }
                })
                .unwrap()
        })
        .collect();
    let mut last = (0, Instant::now());
    loop {
        let done: usize = MASTER_SYNCS.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        if done == 2 * SYNCS {
            break;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            let stuck = [
                MASTER_SYNCS[0].load(Ordering::Relaxed),
                MASTER_SYNCS[1].load(Ordering::Relaxed),
            ];
            // The cores are stuck in their handlers: the machine cannot be stopped. Leave it
            // to the process's exit.
            std::mem::forget(workers);
            std::mem::forget(masters);
            std::mem::forget(machine);
            panic!(
                "deadlock: the masters completed {stuck:?} of {SYNCS} rendezvous each and made \
                 no progress for 5 s (each is held, spinning in its interrupt handler, in the \
                 other's rendezvous)"
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for master in masters {
        master.join();
    }
    stop_workers(&stop, workers);
    cli.assert_clean("two masters");
    machine.shutdown();
}

// ----- allocation in interrupt context, against tasks that allocate -----------------------------

static ALLOC_RUNS: AtomicUsize = AtomicUsize::new(0);

/// Allocates and frees in interrupt context (a message function).
fn allocating(_: &Q, n: usize, _: usize) {
    let v: Vec<usize> = (0..200 + n % 300).collect();
    ALLOC_RUNS.fetch_add(std::hint::black_box(v).len().min(1), Ordering::Relaxed);
}

/// Workers allocate and free all the time with interrupts on (blocks of 1.6 to 14 KiB, past
/// the allocator's lock-free per-thread caches), while message functions (and the boxed
/// closures of `send_boxed`, freed on the target) allocate from the interrupt handler.
/// `InterruptsOffAlloc` keeps the handler out of an interrupted allocation. Without it (the
/// same test in a binary with the system allocator), the handler re-entered the allocator while
/// its own thread held the allocator's lock: the target hung, and the sender's `send` returned
/// `TimedOut` after 10 s.
#[test]
fn message_functions_allocate_while_the_interrupted_tasks_allocate() {
    const MESSAGES: usize = 20_000;
    let Some(machine) = machine(3, 64) else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_unwind = StopOnDrop(stop.clone());
    let workers: Vec<_> = (1..3)
        .map(|cpu| {
            let stop = stop.clone();
            machine
                .spawn_on(cpu, move |_| {
                    let mut kept: Vec<Vec<u64>> = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Acquire) {
                        i += 1;
                        let mut v = Vec::with_capacity(200 + (i % 1500) as usize);
                        v.push(i);
                        kept.push(v);
                        if kept.len() > 64 {
                            kept.drain(..32);
                        }
                        if i.is_multiple_of(4096) {
                            yield_host_cpu();
                        }
                    }
                    kept.len() as u64
                })
                .unwrap()
        })
        .collect();
    let boxed_runs = Arc::new(AtomicUsize::new(0));
    let runs = boxed_runs.clone();
    machine
        .run_on(0, move |core| {
            let q = core.ipiq();
            for i in 0..MESSAGES {
                let target = 1 + i % 2;
                if i % 2 == 0 {
                    q.send(target, allocating, i, 0).unwrap();
                } else {
                    let runs = runs.clone();
                    q.send_boxed(target, move |_| {
                        runs.fetch_add(1, Ordering::Relaxed);
                    })
                    .unwrap();
                }
                busy(300, i as u64);
            }
        })
        .unwrap();
    assert!(
        machine.quiesce(Duration::from_secs(20)),
        "messages left undrained"
    );
    stop_workers(&stop, workers);
    assert_eq!(ALLOC_RUNS.load(Ordering::Relaxed), MESSAGES / 2);
    assert_eq!(boxed_runs.load(Ordering::Relaxed), MESSAGES / 2);
    let irqs = assert_preempted(&machine, 1..3, 150, 8, "preempt allocation");
    // Interrupts that found the workers inside the allocator waited for it to return.
    assert!(irqs.deferred > 0 && irqs.on_restore > 0, "{irqs:?}");
    machine.shutdown();
}
