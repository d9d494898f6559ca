//! Stalls: watchdogs that count time without progress and re-send only to the cores that owe
//! something, TLB shootdowns that never give up (or panic with a diagnosis past their bound),
//! cpusync masters that keep interrupts off from start to finish and release their targets
//! however their closure ends, and the per-core status that names what a core waits for.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform, Pending};
use ipiq::{Config, CpuSet, Error, Ipiq, Message, SyncWork, Waiting};

type Q = Ipiq<HostPlatform>;

fn machine(cpus: usize, config: Config) -> HostMachine {
    let mut host = HostConfig::cpus(cpus);
    host.ipiq = config;
    HostMachine::start(host)
}

fn ms(n: u64) -> u64 {
    n * 1_000_000
}

fn leak<T>(value: T) -> usize {
    Box::leak(Box::new(value)) as *const T as usize
}

fn arg<T>(word: usize) -> &'static T {
    // SAFETY (test helper): every caller passes the address of a leaked value.
    unsafe { &*(word as *const T) }
}

fn count_one(_: &Q, counter: usize, _: usize) {
    arg::<AtomicUsize>(counter).fetch_add(1, Ordering::AcqRel);
}

fn sleep_ms(_: &Q, n: usize, _: usize) {
    std::thread::sleep(Duration::from_millis(n as u64));
}

/// Occupies `cpu` for `for_ms` milliseconds from a helper thread.
fn occupy_for(machine: &HostMachine, cpu: usize, for_ms: u64) -> Pending<()> {
    let busy = Arc::new(AtomicBool::new(true));
    let task = machine.occupy(cpu, &busy).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(for_ms));
        busy.store(false, Ordering::Release);
    });
    task
}

#[test]
fn a_wait_on_a_target_that_keeps_making_progress_is_never_cut_short() {
    // 60 messages of 5 ms each: 300 ms in all, twice the timeout, but the target returns from a
    // message every 5 ms, so the wait is never 150 ms without progress (the margin is for a
    // loaded host, where a 5 ms sleep can take much longer).
    let config = Config {
        timeout_ns: ms(150),
        warn_after_ns: ms(100),
        resend_after_ns: ms(5),
        ..Config::default()
    };
    let m = machine(2, config);
    let (result, took) = m
        .run_on(0, |core| {
            let q = core.ipiq();
            let start = Instant::now();
            let mut last = ipiq::Seq(0);
            for _ in 0..60 {
                last = q.send(1, sleep_ms, 5, 0).unwrap();
            }
            (q.wait(1, last), start.elapsed())
        })
        .unwrap();
    assert_eq!(result, Ok(()), "waited {took:?}");
    assert!(
        took >= Duration::from_millis(250),
        "the work really took {took:?}"
    );
    assert_eq!(m.ipiq().stats(0).unwrap().timeouts, 0);
    m.shutdown();
}

/// IPIs delivered to core 1 by the time it ran its cpusync entry (`u64::MAX`: not yet).
static DELIVERED_AT_ENTRY: AtomicU64 = AtomicU64::new(u64::MAX);

/// A cpusync's start work: on core 1, note how many IPIs it had taken when it entered.
fn note_entry(q: &Q, _: usize, _: usize) {
    if q.current_cpu() == 1 {
        DELIVERED_AT_ENTRY.store(q.platform().ipis_delivered(1), Ordering::Release);
    }
}

#[test]
fn re_sent_ipis_go_only_to_the_targets_that_have_not_entered() {
    let config = Config {
        resend_after_ns: ms(1),
        ..Config::default()
    };
    let m = machine(3, config);
    // Core 2 takes no interrupt for 60 ms; core 1 enters as soon as the host runs it and is
    // then held.
    let task = occupy_for(&m, 2, 60);
    let platform = m.platform();
    let before = platform.ipis_delivered(2);
    let work = SyncWork {
        start: Some(Message::new(note_entry, 0, 0)),
        ..SyncWork::default()
    };
    let held = m
        .run_on(0, move |core| {
            let set = CpuSet::from_cpus([1, 2]).unwrap();
            core.ipiq().cpusync(&set, work, |sync| sync.members().len())
        })
        .unwrap();
    task.join();
    assert_eq!(held, Ok(2));
    let to_late = platform.ipis_delivered(2) - before;
    assert!(
        to_late >= 3,
        "the late core was re-signalled while it stalled ({to_late} IPIs)"
    );
    // Until core 1 entered, the master re-signalled it too (as many times as the host took to
    // run it: timing); from its entry on it is not a target of the re-sends, which went on for
    // the ~60 ms core 2 stalled.
    let at_entry = DELIVERED_AT_ENTRY.load(Ordering::Acquire);
    assert_ne!(at_entry, u64::MAX, "core 1 never ran its entry");
    let after_entry = platform.ipis_delivered(1) - at_entry;
    assert!(
        after_entry <= 1,
        "the held core got {after_entry} IPIs after it entered: at most one re-send that raced \
         with its entry should reach it"
    );
    m.shutdown();
}

#[test]
fn a_shootdown_outlasts_the_timeout_instead_of_returning_early() {
    let config = Config {
        timeout_ns: ms(20),
        warn_after_ns: ms(10),
        resend_after_ns: ms(2),
        ..Config::default()
    };
    let m = machine(3, config);
    // Core 2 cannot take the shootdown for 100 ms, five times the timeout.
    let task = occupy_for(&m, 2, 100);
    let (result, took) = m
        .run_on(0, |core| {
            let start = Instant::now();
            (core.ipiq().shootdown(0x40_0000, 1), start.elapsed())
        })
        .unwrap();
    task.join();
    let result = result.expect("a shootdown has no timeout");
    // Core 1 idles: it is either interrupted or, if found halted, flushes when it wakes.
    assert_eq!(result.targets + result.deferred, 2, "{result:?}");
    assert!(took >= Duration::from_millis(90), "returned after {took:?}");
    // The busy core really flushed before it returned.
    assert_eq!(m.platform().tlb_flushes(2).ranges, 1);
    assert_eq!(m.ipiq().stats(0).unwrap().timeouts, 0);
    m.shutdown();
}

#[test]
fn a_shootdown_past_its_stall_bound_panics_naming_the_core() {
    let config = Config {
        resend_after_ns: ms(2),
        warn_after_ns: ms(5),
        stall_panic_ns: Some(ms(30)),
        ..Config::default()
    };
    let m = machine(3, config);
    let busy = Arc::new(AtomicBool::new(true));
    let task = m.occupy(2, &busy).unwrap();
    let outcome = m
        .run_on(0, |core| {
            let q = core.ipiq();
            let enables = core.ipiq().platform().irq_enables(0);
            let caught = catch_unwind(AssertUnwindSafe(|| q.shootdown(0x40_0000, 1)));
            let restored = q.platform().irq_enables(0) > enables;
            let message = match caught {
                Ok(result) => format!("returned {result:?}"),
                Err(payload) => payload
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "a panic without a message".into()),
            };
            (message, restored)
        })
        .unwrap();
    busy.store(false, Ordering::Release);
    task.join();
    let (message, restored) = outcome;
    assert!(
        message.contains("stalled") && message.contains("cpus [2]"),
        "{message}"
    );
    assert!(restored, "unwinding restored the master's interrupts");
    // The late core still enters and is released (the rendezvous was dropped while unwinding).
    assert!(m.quiesce(Duration::from_secs(5)));
    assert_eq!(m.ipiq().core_status(2).unwrap().holds, 0);
    m.shutdown();
}

#[test]
fn a_cpusync_master_keeps_interrupts_off_from_start_to_finish() {
    let m = machine(3, Config::default());
    let counter = leak(AtomicUsize::new(0));
    let enables = m
        .run_on(0, move |core| {
            let q = core.ipiq();
            let p = q.platform();
            let mut enables = Vec::new();
            let before = p.irq_enables(0);
            q.cpusync_simple(&CpuSet::all(3).unwrap(), count_one, counter, 0)
                .unwrap();
            enables.push(p.irq_enables(0) - before);
            let before = p.irq_enables(0);
            q.cpusync_fastdata(&CpuSet::all(3).unwrap(), count_one, counter, 0)
                .unwrap();
            enables.push(p.irq_enables(0) - before);
            let before = p.irq_enables(0);
            q.cpusync(&CpuSet::single(1).unwrap(), SyncWork::default(), |sync| {
                sync.add(2).unwrap();
            })
            .unwrap();
            enables.push(p.irq_enables(0) - before);
            let before = p.irq_enables(0);
            q.shootdown(0x40_0000, 3).unwrap();
            enables.push(p.irq_enables(0) - before);
            enables
        })
        .unwrap();
    // Once each: when the call returns, never between gathering and releasing the targets.
    assert_eq!(enables, [1, 1, 1, 1]);
    assert!(m.quiesce(Duration::from_secs(5)));
    assert_eq!(arg::<AtomicUsize>(counter).load(Ordering::Acquire), 6);
    m.shutdown();
}

#[test]
fn a_master_whose_closure_panics_still_releases_its_targets() {
    let m = machine(3, Config::default());
    let finished = leak(AtomicUsize::new(0));
    let caught = m
        .run_on(0, move |core| {
            let work = SyncWork {
                finish: Some(Message::new(count_one, finished, 0)),
                ..SyncWork::default()
            };
            let set = CpuSet::from_cpus([1, 2]).unwrap();
            catch_unwind(AssertUnwindSafe(|| {
                core.ipiq()
                    .cpusync(&set, work, |_| panic!("the master's work failed"))
            }))
            .is_err()
        })
        .unwrap();
    assert!(caught);
    let deadline = Instant::now() + Duration::from_secs(5);
    while arg::<AtomicUsize>(finished).load(Ordering::Acquire) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        arg::<AtomicUsize>(finished).load(Ordering::Acquire),
        2,
        "both targets were released and ran their finish work"
    );
    for cpu in 1..3 {
        assert_eq!(m.ipiq().core_status(cpu).unwrap().holds, 0, "cpu {cpu}");
    }
    m.shutdown();
}

#[test]
fn core_status_names_who_holds_whom_and_what_each_waits_for() {
    let m = machine(3, Config::default());
    let q = m.ipiq().clone();
    let (inside, go) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (i, g) = (inside.clone(), go.clone());
    let master = m
        .spawn_on(0, move |core| {
            core.ipiq()
                .cpusync(&CpuSet::single(1).unwrap(), SyncWork::default(), |_| {
                    i.store(true, Ordering::Release);
                    while !g.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                })
                .unwrap();
        })
        .unwrap();
    while !inside.load(Ordering::Acquire) {
        std::thread::yield_now();
    }
    // The held target's own watchdog records what it waits for.
    let deadline = Instant::now() + Duration::from_secs(5);
    let held = loop {
        let status = q.core_status(1).unwrap();
        if status.waiting.is_some() || Instant::now() > deadline {
            break status;
        }
        std::thread::yield_now();
    };
    let leader = q.core_status(0).unwrap();
    go.store(true, Ordering::Release);
    master.join();
    assert_eq!(
        (held.holds, held.held_by, held.waiting, held.draining),
        (1, Some(0), Some((Waiting::Release, None)), true),
        "{held}"
    );
    assert!(
        held.to_string()
            .contains("held in 1 cpusync(s) (last by cpu 0), waiting for its cpusync master"),
        "{held}"
    );
    assert!(leader.leading, "{leader}");
    assert!(m.quiesce(Duration::from_secs(5)));
    let (after, leader) = (q.core_status(1).unwrap(), q.core_status(0).unwrap());
    assert_eq!((after.holds, after.waiting), (0, None), "{after}");
    assert!(!leader.leading, "{leader}");
    assert_eq!(
        q.core_status(3),
        None,
        "a core past the count has no status"
    );
    m.shutdown();
}

#[test]
fn a_bounded_cpusync_still_times_out_on_a_target_that_never_enters() {
    let config = Config {
        timeout_ns: ms(30),
        warn_after_ns: ms(10),
        resend_after_ns: ms(2),
        ..Config::default()
    };
    let m = machine(2, config);
    let busy = Arc::new(AtomicBool::new(true));
    let task = m.occupy(1, &busy).unwrap();
    let result = m
        .run_on(0, |core| {
            core.ipiq()
                .cpusync(&CpuSet::single(1).unwrap(), SyncWork::default(), |_| ())
        })
        .unwrap();
    busy.store(false, Ordering::Release);
    task.join();
    assert_eq!(result, Err(Error::TimedOut));
    // The late target enters after all, finds the rendezvous released, and leaves.
    assert!(m.quiesce(Duration::from_secs(5)));
    assert_eq!(m.ipiq().core_status(1).unwrap().holds, 0);
    m.shutdown();
}
