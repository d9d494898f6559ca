//! Defects found by review, each with a test that failed before its fix (issue 9, item 6):
//! `outstanding` read order (it wrapped around), `pending` outside an interrupt-disabled
//! section, `CpuSet` with huge core ids (a multi-exabyte allocation aborted the process), and
//! `wait` cycles between message functions on two cores (both stalled until `TimedOut`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{Config, CpuId, CpuSet, Error, Ipiq, IrqState, Platform, Seq, SyncWork};

type Q = Ipiq<HostPlatform>;

/// Reads a `&'static T` smuggled through a message word.
fn arg<T>(word: usize) -> &'static T {
    // SAFETY (test helper): every caller passes the address of a leaked value.
    unsafe { &*(word as *const T) }
}

fn leak<T>(value: T) -> usize {
    Box::leak(Box::new(value)) as *const T as usize
}

// ----- outstanding() -------------------------------------------------------------------------------

struct Flow {
    /// Messages sent (first hop and replies), counted before each send.
    sent: AtomicU64,
    /// Message functions run.
    ran: AtomicU64,
}

/// Counts, and on the first hop replies to core 1 (a nested send: through a 4-slot FIFO into a
/// busy sender this spills now and then).
fn forward(q: &Q, flow: usize, hop: usize) {
    let flow: &Flow = arg(flow);
    flow.ran.fetch_add(1, Ordering::Relaxed);
    if hop == 0 {
        flow.sent.fetch_add(1, Ordering::Relaxed);
        q.send(1, forward, flow as *const Flow as usize, 1).unwrap();
    }
}

/// One core streams messages to another, whose functions reply through tiny FIFOs (so both
/// drain, nest and spill), while a thread that is no core reads `outstanding()` as fast as it
/// can. Every reading must be at most what was ever sent: reading `windex` before `xindex`
/// lets the target take and finish messages in between, and the difference wraps around.
#[test]
fn outstanding_never_exceeds_what_was_sent() {
    const MESSAGES: u64 = 50_000;
    let mut config = HostConfig::cpus(2);
    config.ipiq = Config {
        fifo_slots: 4,
        resend_after_ns: 200_000,
        ..Config::default()
    };
    let machine = HostMachine::start(config);
    let flow = leak(Flow {
        sent: AtomicU64::new(0),
        ran: AtomicU64::new(0),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let observer = {
        let (q, stop) = (machine.ipiq().clone(), stop.clone());
        thread::spawn(move || {
            let (mut readings, mut worst) = (0u64, 0u64);
            while !stop.load(Ordering::Acquire) {
                worst = worst.max(q.outstanding());
                readings += 1;
            }
            (readings, worst)
        })
    };
    machine
        .run_on(1, move |core| {
            let q = core.ipiq();
            let flow_ref: &Flow = arg(flow);
            for _ in 0..MESSAGES {
                flow_ref.sent.fetch_add(1, Ordering::Relaxed);
                q.send(0, forward, flow, 0).unwrap();
            }
        })
        .unwrap();
    assert!(machine.quiesce(Duration::from_secs(10)), "drains");
    stop.store(true, Ordering::Release);
    let (readings, worst) = observer.join().unwrap();
    let flow: &Flow = arg(flow);
    let sent = flow.sent.load(Ordering::Relaxed);
    assert_eq!(sent, 2 * MESSAGES);
    assert_eq!(flow.ran.load(Ordering::Relaxed), sent, "exactly once");
    assert_eq!(machine.ipiq().outstanding(), 0);
    println!("outstanding: {readings} readings, worst {worst}, {sent} sent");
    assert!(
        worst <= sent,
        "outstanding() read {worst} with only {sent} messages ever sent ({readings} readings)"
    );
    assert!(readings > 1_000, "the observer ran alongside ({readings})");
    let stats = machine.ipiq().total_stats();
    println!("spilled {} of {} sends", stats.spilled, stats.sent);
    machine.shutdown();
}

// ----- pending() -----------------------------------------------------------------------------------

std::thread_local! {
    static TRACK_CPU: Cell<CpuId> = const { Cell::new(0) };
    static TRACK_IRQ_OFF: Cell<bool> = const { Cell::new(false) };
}

/// A platform of one thread per core that counts every `current_cpu` call made while
/// interrupts are enabled: an ipiq operation that asks for its core outside an
/// interrupt-disabled section may be migrated or re-entered between the answer and its use of
/// that core's private state.
struct Tracking {
    cpus: usize,
    unprotected: AtomicUsize,
}

// SAFETY: the test drives it from one thread, one core at a time; no interrupts exist.
unsafe impl Platform for Tracking {
    fn current_cpu(&self) -> CpuId {
        if !TRACK_IRQ_OFF.with(Cell::get) {
            self.unprotected.fetch_add(1, Ordering::Relaxed);
        }
        TRACK_CPU.with(Cell::get)
    }
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    fn send_ipi(&self, _: CpuId) {}
    fn irq_save(&self) -> IrqState {
        IrqState(!TRACK_IRQ_OFF.with(|off| off.replace(true)))
    }
    fn irq_restore(&self, state: IrqState) {
        TRACK_IRQ_OFF.with(|off| off.set(!state.0));
    }
    fn relax(&self) {
        std::hint::spin_loop();
    }
    fn now_ns(&self) -> u64 {
        0
    }
    fn flush_tlb_range(&self, _: usize, _: usize) {}
    fn flush_tlb_all(&self) {}
}

fn tracked_nothing(_: &Ipiq<Tracking>, _: usize, _: usize) {}

/// Every safe operation that touches the calling core's state does so with interrupts
/// disabled, whatever the caller's interrupt state: called here with interrupts enabled, none
/// may ask for its core outside an `irq_save` section.
#[test]
fn per_core_operations_disable_interrupts_themselves() {
    let q = Ipiq::new(
        Tracking {
            cpus: 2,
            unprotected: AtomicUsize::new(0),
        },
        Config::default(),
    );
    q.cpu_online(0).unwrap();
    q.cpu_online(1).unwrap();
    TRACK_CPU.with(|c| c.set(0));
    let unprotected = || q.platform().unprotected.load(Ordering::Relaxed);
    let seq = q.send(1, tracked_nothing, 0, 0).unwrap();
    assert_eq!(unprotected(), 0, "send");
    assert!(!q.pending(), "nothing queued for core 0");
    assert_eq!(unprotected(), 0, "pending");
    assert_eq!(q.seq(1).unwrap(), seq);
    assert_eq!(q.process(), 0);
    assert_eq!(q.tick(), 0);
    assert_eq!(unprotected(), 0, "seq, process, tick");
    // Core 1 takes the message; its pending() sees it first.
    TRACK_CPU.with(|c| c.set(1));
    assert!(q.pending());
    assert_eq!(q.poll(), 1);
    assert!(!q.pending());
    q.process();
    assert_eq!(unprotected(), 0, "pending, poll and process on core 1");
    TRACK_CPU.with(|c| c.set(0));
    assert_eq!(q.wait(1, seq), Ok(()));
    assert_eq!(unprotected(), 0, "wait");
}

// ----- wait inside message context ---------------------------------------------------------------

struct Cycle {
    /// Message functions that have entered `ask_back` (both must, before either sends).
    entered: AtomicUsize,
    /// What each core's `wait` returned, and how long it took (ns): 0 not yet, 1 Ok, 2 Err.
    outcome: [AtomicUsize; 2],
    took_ns: [AtomicU64; 2],
    /// Set by `answer` on each core.
    answered: [AtomicBool; 2],
}

fn answer(q: &Q, cycle: usize, _: usize) {
    let cycle: &Cycle = arg(cycle);
    cycle.answered[q.current_cpu()].store(true, Ordering::Release);
}

/// A message function that sends `answer` back to the core it came from and waits for it,
/// once the other core's `ask_back` is running too: each waits, inside a message function, for
/// a message queued behind the other's still running one.
fn ask_back(q: &Q, cycle: usize, from: usize) {
    let cycle_ref: &Cycle = arg(cycle);
    let me = q.current_cpu();
    cycle_ref.entered.fetch_add(1, Ordering::AcqRel);
    let until = Instant::now() + Duration::from_secs(5);
    while cycle_ref.entered.load(Ordering::Acquire) < 2 && Instant::now() < until {
        std::hint::spin_loop();
    }
    let start = Instant::now();
    let result = q
        .send(from, answer, cycle, 0)
        .and_then(|seq| q.wait(from, seq));
    cycle_ref.took_ns[me].store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    // 1: returned Ok after the target ran the message waited for; 2: an error; 3: Ok too
    // early (no panic here: this runs on a simulated core, inside its drain).
    let outcome = match result {
        Ok(()) if cycle_ref.answered[from].load(Ordering::Acquire) => 1,
        Ok(()) => 3,
        Err(_) => 2,
    };
    cycle_ref.outcome[me].store(outcome, Ordering::Release);
}

/// Two message functions on two cores, each waiting for a message it sent to the other: the
/// message each waits for runs on the other core inside that core's own waiting function (a
/// nested drain), so with "wait for the outermost function to return" neither wait could end
/// before the other. Inside message context `wait` has the seed's meaning, and both complete.
#[test]
fn waits_from_message_functions_on_two_cores_do_not_stall_each_other() {
    let mut config = HostConfig::cpus(2);
    config.ipiq = Config {
        resend_after_ns: 200_000,
        warn_after_ns: 500_000_000,
        timeout_ns: 1_000_000_000,
        ..Config::default()
    };
    let machine = HostMachine::start(config);
    let cycle = leak(Cycle {
        entered: AtomicUsize::new(0),
        outcome: [AtomicUsize::new(0), AtomicUsize::new(0)],
        took_ns: [AtomicU64::new(0), AtomicU64::new(0)],
        answered: [AtomicBool::new(false), AtomicBool::new(false)],
    });
    let start = Instant::now();
    // Both cores send before either can take the other's message (a task takes no interrupt
    // until it returns): otherwise the first `ask_back` could run, and spin, on a core whose
    // own send has not happened yet.
    let both = Arc::new(Barrier::new(2));
    let sends: Vec<_> = (0..2)
        .map(|cpu| {
            let both = both.clone();
            machine
                .spawn_on(cpu, move |core| {
                    both.wait();
                    core.ipiq().send(1 - cpu, ask_back, cycle, cpu).unwrap();
                })
                .unwrap()
        })
        .collect();
    for send in sends {
        send.join();
    }
    let cycle_ref: &Cycle = arg(cycle);
    let deadline = Instant::now() + Duration::from_secs(20);
    while cycle_ref
        .outcome
        .iter()
        .any(|o| o.load(Ordering::Acquire) == 0)
        && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(1));
    }
    let outcome: Vec<_> = cycle_ref
        .outcome
        .iter()
        .map(|o| o.load(Ordering::Acquire))
        .collect();
    let took: Vec<_> = cycle_ref
        .took_ns
        .iter()
        .map(|t| Duration::from_nanos(t.load(Ordering::Relaxed)))
        .collect();
    println!(
        "outcomes {outcome:?} (1 Ok, 2 Err, 3 Ok too early), waits took {took:?}, all in {:?}",
        start.elapsed()
    );
    assert_eq!(
        outcome,
        [1, 1],
        "both waits returned Ok once answered (2: an error, TimedOut), took {took:?}"
    );
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(500)),
        "quickly, not by a watchdog: {took:?}"
    );
    assert!(cycle_ref.answered.iter().all(|a| a.load(Ordering::Acquire)));
    assert!(machine.quiesce(Duration::from_secs(5)));
    machine.shutdown();
}

// ----- CpuSet and platforms with more cores than a set holds --------------------------------------

/// Core ids a set cannot hold are errors: `CpuSet::single(usize::MAX)` used to grow its bit map
/// to the id and abort the process ("memory allocation of 2305843009213693952 bytes failed").
#[test]
fn core_ids_a_set_cannot_hold_are_errors() {
    let cap = CpuSet::CAPACITY;
    assert_eq!(cap, 1024);
    assert_eq!(
        CpuSet::single(usize::MAX),
        Err(Error::NoSuchCpu(usize::MAX))
    );
    assert_eq!(CpuSet::single(cap), Err(Error::NoSuchCpu(cap)));
    let mut set = CpuSet::single(cap - 1).unwrap();
    assert_eq!(
        set.insert(usize::MAX / 2),
        Err(Error::NoSuchCpu(usize::MAX / 2))
    );
    assert_eq!(set.iter().collect::<Vec<_>>(), [cap - 1], "unchanged");
    assert_eq!(
        CpuSet::from_cpus([0, 1, usize::MAX]),
        Err(Error::NoSuchCpu(usize::MAX))
    );
    assert_eq!(CpuSet::all(usize::MAX), Err(Error::NoSuchCpu(cap)));
    assert!(!set.contains(usize::MAX) && !set.remove(usize::MAX));
    // The error reads well and maps to EINVAL for the kernel's syscalls.
    assert_eq!(
        Error::NoSuchCpu(usize::MAX).to_string(),
        format!("no such cpu: {}", usize::MAX)
    );
    assert_eq!(Error::NoSuchCpu(cap).errno(), -22);
}

fn tracked_count(_: &Ipiq<Tracking>, counter: usize, _: usize) {
    arg::<AtomicUsize>(counter).fetch_add(1, Ordering::Relaxed);
}

/// A platform with more cores than a `CpuSet` holds (here `usize::MAX` of them) is served up
/// to the capacity: nothing aborts or panics, the cores beyond are `NoSuchCpu` as targets, and
/// calls made on one of them are refused or do nothing.
#[test]
fn a_platform_with_more_cores_than_a_set_holds_is_served_up_to_the_capacity() {
    let cap = CpuSet::CAPACITY;
    let q = Ipiq::new(
        Tracking {
            cpus: usize::MAX,
            unprotected: AtomicUsize::new(0),
        },
        Config::default(),
    );
    assert_eq!(q.cpu_count(), cap);
    for cpu in [0, 1, cap - 1] {
        q.cpu_online(cpu).unwrap();
    }
    assert_eq!(q.cpu_online(cap), Err(Error::NoSuchCpu(cap)));
    assert_eq!(q.online_set(), CpuSet::from_cpus([0, 1, cap - 1]).unwrap());
    let ran = leak(AtomicUsize::new(0));
    // A served core reaches the last served core, not one past it.
    TRACK_CPU.with(|c| c.set(0));
    assert_eq!(
        q.send(cap, tracked_count, ran, 0),
        Err(Error::NoSuchCpu(cap))
    );
    let seq = q.send(cap - 1, tracked_count, ran, 0).unwrap();
    TRACK_CPU.with(|c| c.set(cap - 1));
    assert_eq!(q.process(), 1);
    TRACK_CPU.with(|c| c.set(0));
    assert_eq!(q.wait(cap - 1, seq), Ok(()));
    // Calls on a core past the capacity: refused with its id, or nothing to do.
    let beyond = cap + 7;
    TRACK_CPU.with(|c| c.set(beyond));
    assert_eq!(
        q.send(0, tracked_count, ran, 0),
        Err(Error::NoSuchCpu(beyond))
    );
    assert_eq!(
        q.send_many(&CpuSet::from_cpus([0, 1]).unwrap(), tracked_count, ran, 0),
        Err(Error::NoSuchCpu(beyond))
    );
    assert_eq!(q.seq(0), Err(Error::NoSuchCpu(beyond)));
    assert_eq!(q.wait(0, Seq(1)), Err(Error::NoSuchCpu(beyond)));
    assert_eq!(
        q.cpusync_simple(&CpuSet::single(1).unwrap(), tracked_count, ran, 0),
        Err(Error::NoSuchCpu(beyond))
    );
    assert_eq!(
        q.cpusync(&CpuSet::single(1).unwrap(), SyncWork::default(), |_| ()),
        Err(Error::NoSuchCpu(beyond))
    );
    assert_eq!(
        q.shootdown(0x40_0000, 1).map(|_| ()),
        Err(Error::NoSuchCpu(beyond))
    );
    assert_eq!(q.process(), 0);
    assert_eq!(q.poll(), 0);
    assert_eq!(q.tick(), 0);
    assert!(!q.pending());
    assert!(q.prepare_halt());
    q.end_halt();
    assert_eq!(
        arg::<AtomicUsize>(ran).load(Ordering::Relaxed),
        1,
        "only the served send ran"
    );
    assert_eq!(q.outstanding(), 0);
}
