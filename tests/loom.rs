//! Loom models of the wake-up handshake (FIFO + npoll, 2 cores; also with a polling idle loop
//! and with a lazy send against a halting core), of FIFO-full progress (2 cores, 2-slot FIFOs),
//! of cpusync (3 cores), and of `outstanding()` read beside a sender and a drain (also spilled).
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test --release --test loom` (`make loom`).
//! `LOOM_MAX_PREEMPTIONS` overrides each model's preemption bound (1 to 3; 0 for cpusync).
#![cfg(loom)]

use std::cell::Cell;

use ipiq::{Config, CpuId, CpuSet, Ipiq, IrqState, Message, Platform, SyncWork};
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

loom::thread_local! {
    static CPU: Cell<CpuId> = Cell::new(0);
}

/// Loom threads as cores; an IPI sets the target's pending flag (the IRR bit) and unparks the
/// core, which idles parked (like `hlt`) rather than spinning: loom always resumes the
/// lowest-numbered of several spinning threads, so a model may have only one core spinning.
struct LoomPlatform {
    pending: Vec<AtomicBool>,
    ipis: AtomicUsize,
    /// The thread of each core, for unparking (a plain std mutex: loom does not model it, and
    /// it guards only thread handles).
    threads: std::sync::Mutex<Vec<Option<thread::Thread>>>,
}

impl LoomPlatform {
    fn new(cpus: usize) -> Self {
        Self {
            pending: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            ipis: AtomicUsize::new(0),
            threads: std::sync::Mutex::new((0..cpus).map(|_| None).collect()),
        }
    }

    /// Makes the calling thread core `cpu`.
    fn become_cpu(&self, cpu: CpuId) {
        CPU.with(|c| c.set(cpu));
        self.threads.lock().unwrap()[cpu] = Some(thread::current());
    }
}

/// The idle loop of core `cpu`: take IPIs (and drain) until `stop` holds; park in between.
fn idle(q: &Q, cpu: CpuId, stop: &AtomicBool) {
    loop {
        if q.platform().pending[cpu].swap(false, Ordering::Acquire) {
            q.process();
        } else if stop.load(Ordering::Acquire) {
            return;
        } else {
            thread::park();
        }
    }
}

// SAFETY: each model thread is one core (its id thread-local) and the model has no interrupts.
unsafe impl Platform for LoomPlatform {
    fn current_cpu(&self) -> CpuId {
        CPU.with(Cell::get)
    }
    fn cpu_count(&self) -> usize {
        self.pending.len()
    }
    fn send_ipi(&self, target: CpuId) {
        self.ipis.fetch_add(1, Ordering::Relaxed);
        // An RMW rather than a store: the core takes the flag with an RMW too, and loom orders
        // a plain store against an RMW it did not see only loosely (it would let the core's
        // take read an older value than C11 allows).
        self.pending[target].swap(true, Ordering::Release);
        if let Some(t) = self.threads.lock().unwrap()[target].as_ref() {
            t.unpark();
        }
    }
    fn irq_save(&self) -> IrqState {
        IrqState(true)
    }
    fn irq_restore(&self, _: IrqState) {}
    fn relax(&self) {
        thread::yield_now();
    }
    fn now_ns(&self) -> u64 {
        0 // watchdogs never fire in the model
    }
    fn flush_tlb_range(&self, _: usize, _: usize) {}
    fn flush_tlb_all(&self) {}
}

type Q = Ipiq<LoomPlatform>;

fn inc(_: &Q, counter: usize, _: usize) {
    // SAFETY: the counter is kept alive by the model's Arc for the whole model run.
    let counter = unsafe { &*(counter as *const AtomicUsize) };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn new_ipiq(cpus: usize, slots: usize) -> Arc<Q> {
    let q = Arc::new(Ipiq::new(
        LoomPlatform::new(cpus),
        Config {
            fifo_slots: slots,
            ..Config::default()
        },
    ));
    for cpu in 0..cpus {
        q.cpu_online(cpu).unwrap();
    }
    q
}

fn builder(default_preemptions: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    // Spin loops (wait, cpusync) make long paths.
    b.max_branches = b.max_branches.max(20_000);
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(default_preemptions);
    }
    b
}

/// The npoll handshake: core 1 publishes two messages while core 0 drains concurrently (as if
/// an earlier IPI or the idle loop ran it); with `poll_first`, core 0 is an idle loop that polls
/// (staying signalled, so the sender may skip its IPI) and then runs `process` (clear, fence,
/// last look) as it must before halting. Afterwards either every message ran or an IPI is
/// pending for core 0: no lost wake-up.
fn handshake_model(poll_first: bool) {
    builder(3).check(move || {
        let q = new_ipiq(2, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let sender = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(1));
                q.send(0, inc, counter, 0).unwrap();
                q.send(0, inc, counter, 0).unwrap();
            })
        };
        CPU.with(|c| c.set(0));
        if poll_first {
            q.poll();
        }
        q.process();
        sender.join().unwrap();
        let done = ran.load(Ordering::Relaxed);
        let pending = q.platform().pending[0].load(Ordering::Acquire);
        assert!(
            done == 2 || pending,
            "message stranded: ran {done}, no IPI pending; sender {:?}; target {:?}",
            q.stats(1).unwrap(),
            q.stats(0).unwrap()
        );
        // At most one IPI in flight was needed for two messages (I3), unless the first was
        // already consumed by the drain.
        assert!(q.platform().ipis.load(Ordering::Relaxed) <= 2);
        // Deliver the pending IPI: everything runs exactly once.
        if pending {
            q.process();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        drop(ran);
    });
}

#[test]
fn npoll_handshake_never_loses_a_wakeup() {
    handshake_model(false);
}

#[test]
fn polling_target_then_process_never_loses_a_wakeup() {
    handshake_model(true);
}

/// A lazy send (IPI only to a halted core) against a core about to halt: core 0 drains, then
/// marks itself halted and looks once more (`prepare_halt`), while core 1 sends lazily. Either
/// core 0 sees the message and does not halt, or core 1 sees the mark and sends the IPI.
#[test]
fn lazy_send_never_strands_a_message_behind_a_halt() {
    builder(3).check(|| {
        let q = new_ipiq(2, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let sender = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(1));
                q.try_send_lazy(0, inc, counter, 0).unwrap();
            })
        };
        CPU.with(|c| c.set(0));
        q.process();
        let halts = q.prepare_halt();
        sender.join().unwrap();
        let done = ran.load(Ordering::Relaxed);
        let pending = q.platform().pending[0].load(Ordering::Acquire);
        assert!(
            done == 1 || pending || !halts,
            "message stranded behind a halt: ran {done}, no IPI, core halted"
        );
        // Whatever woke it (the IPI, or the look that stopped the halt), core 0 drains.
        q.end_halt();
        q.process();
        assert_eq!(ran.load(Ordering::Relaxed), 1);
        drop(ran);
    });
}

/// A target that never drains receives one IPI for any number of messages (I3).
#[test]
fn busy_target_gets_one_ipi() {
    builder(3).check(|| {
        let q = new_ipiq(3, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let senders: Vec<_> = (1..3)
            .map(|cpu| {
                let q = q.clone();
                thread::spawn(move || {
                    CPU.with(|c| c.set(cpu));
                    q.send(0, inc, counter, 0).unwrap();
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(q.platform().ipis.load(Ordering::Relaxed), 1);
        CPU.with(|c| c.set(0));
        q.process();
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    });
}

/// FIFO-full progress (I4) through 2-slot FIFOs in both directions: core 1 sends to core 0,
/// whose functions reply to core 1 with nested sends. Core 1's second send finds its FIFO half
/// full and drains its own incoming queue (the replies) until core 0 has taken it; everything
/// runs exactly once. (The spill path, where two cores spin at once, is left to the host flood
/// test: loom always resumes the lowest-numbered of several spinning threads.)
#[test]
fn full_fifos_in_both_directions_progress() {
    builder(2).check(|| {
        let q = new_ipiq(2, 2);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let target = {
            let (q, stop) = (q.clone(), stop.clone());
            thread::spawn(move || {
                q.platform().become_cpu(0);
                idle(&q, 0, &stop);
            })
        };
        q.platform().become_cpu(1);
        for _ in 0..2 {
            q.send(0, reply, counter, 0).unwrap();
        }
        let seq = q.seq(0).unwrap();
        q.wait(0, seq).unwrap();
        // The replies (nested sends from core 0) reach us too.
        while ran.load(Ordering::Relaxed) < 4 {
            q.process();
            thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        q.platform().send_ipi(0);
        target.join().unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    });
}

/// Counts, then sends `inc` back to core 1 (a nested send from a message function).
fn reply(q: &Q, counter: usize, _: usize) {
    inc(q, counter, 0);
    q.send(1, inc, counter, 0).unwrap();
}

/// cpusync over 3 cores: the master (core 0, the only spinning core) gathers both targets,
/// which run the start work and are held; it releases them, and each runs its finish and
/// after work exactly once.
#[test]
fn cpusync_three_cores() {
    // No preemptions: held targets spin beside the master, and loom resumes the lowest-numbered
    // of several spinning threads, so one preemption already makes some paths unbounded. The
    // memory-order exploration of every load still runs.
    builder(0).check(|| {
        let q = new_ipiq(3, 4);
        let started = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let (s, f) = (
            &*started as *const AtomicUsize as usize,
            &*finished as *const AtomicUsize as usize,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let targets: Vec<_> = (1..3)
            .map(|cpu| {
                let (q, stop) = (q.clone(), stop.clone());
                thread::spawn(move || {
                    q.platform().become_cpu(cpu);
                    idle(&q, cpu, &stop);
                })
            })
            .collect();
        q.platform().become_cpu(0);
        let work = SyncWork {
            start: Some(Message::new(inc, s, 0)),
            finish: Some(Message::new(inc, f, 0)),
            after: Some(Message::new(inc, f, 0)),
        };
        let sync = q.cpusync_start(&CpuSet::all(3).unwrap(), work).unwrap();
        // start returns once both targets ran the start work and are held.
        assert_eq!(started.load(Ordering::Relaxed), 2);
        assert_eq!(
            finished.load(Ordering::Relaxed),
            0,
            "held targets have not finished"
        );
        // Release without waiting (the master must not spin beside the held targets in loom).
        sync.release();
        stop.store(true, Ordering::Release);
        q.platform().send_ipi(1);
        q.platform().send_ipi(2);
        for t in targets {
            t.join().unwrap();
        }
        assert_eq!(
            finished.load(Ordering::Relaxed),
            4,
            "finish and after work, once per target"
        );
    });
}

/// `outstanding()` read from a third thread while core 1 sends to core 0 and core 0 drains:
/// every reading is at most what was sent, and zero once everything ran. (Reading a FIFO's
/// write index before its done index lets the target take and finish messages in between, and
/// the difference wraps around.)
#[test]
fn outstanding_never_exceeds_what_was_sent() {
    builder(2).check(|| {
        let q = new_ipiq(2, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let sender = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(1));
                q.send(0, inc, counter, 0).unwrap();
                q.send(0, inc, counter, 0).unwrap();
            })
        };
        // The observer is no core: `outstanding` reads shared counters only.
        let observer = {
            let q = q.clone();
            thread::spawn(move || q.outstanding())
        };
        CPU.with(|c| c.set(0));
        q.process();
        let seen = observer.join().unwrap();
        sender.join().unwrap();
        assert!(seen <= 2, "outstanding() read {seen} with 2 messages sent");
        q.process();
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        assert_eq!(q.outstanding(), 0);
        drop(ran);
    });
}

/// Counts sends that returned, for `outstanding_counts_spilled_messages`.
fn send_three_to_core_0(q: &Q, counter: usize, accepted: usize) {
    // SAFETY: kept alive by the model's Arc for the whole model run.
    let accepted = unsafe { &*(accepted as *const AtomicUsize) };
    for _ in 0..3 {
        q.send(0, inc, counter, 0).unwrap();
        accepted.fetch_add(1, Ordering::Release);
    }
}

/// Spilled messages are counted too, exactly: core 1 runs a message function (a local send)
/// that sends three messages to core 0 through a 2-slot FIFO, so the third goes to core 1's
/// spill list; core 1 then drains, pushing it into the FIFO as core 0 (idle, woken by IPIs)
/// makes room. A third thread reads `outstanding()` meanwhile: at most 3, and never 0 while a
/// message that was accepted before the reading began has not run.
#[test]
fn outstanding_counts_spilled_messages() {
    // One preemption (~10 s here; two take minutes): it already finds the double count of a
    // spilled message that a per-core spill counter read beside the FIFO indices gives.
    builder(1).check(|| {
        let q = new_ipiq(2, 2);
        // Statistics off: their counters are atomics too, and this model is large enough.
        q.set_stats(false);
        let ran = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (counter, acc) = (
            &*ran as *const AtomicUsize as usize,
            &*accepted as *const AtomicUsize as usize,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let target = {
            let (q, stop) = (q.clone(), stop.clone());
            thread::spawn(move || {
                q.platform().become_cpu(0);
                idle(&q, 0, &stop);
            })
        };
        let observer = {
            let (q, ran, accepted) = (q.clone(), ran.clone(), accepted.clone());
            thread::spawn(move || {
                // Acquire: pairs with the Release count after each accepted send.
                let before = accepted.load(Ordering::Acquire);
                let seen = q.outstanding();
                let done = ran.load(Ordering::Relaxed);
                (before, seen, done)
            })
        };
        q.platform().become_cpu(1);
        q.send(1, send_three_to_core_0, counter, acc).unwrap();
        // Push the spilled message as room appears (process holds until the spill is in).
        q.process();
        let (before, seen, done) = observer.join().unwrap();
        assert!(seen <= 3, "outstanding() read {seen} with 3 messages sent");
        assert!(
            seen > 0 || done >= before,
            "outstanding() read 0 while {before} were accepted and only {done} had run"
        );
        while ran.load(Ordering::Relaxed) < 3 {
            thread::yield_now();
        }
        stop.store(true, Ordering::Release);
        q.platform().send_ipi(0);
        target.join().unwrap();
        assert_eq!(ran.load(Ordering::Relaxed), 3);
        assert_eq!(q.outstanding(), 0);
    });
}
