//! Loom models of the wake-up handshake (FIFO + npoll, 2 cores; also with a polling idle loop,
//! with a lazy send against a halting core, and an interrupt's drain against a second sender), of FIFO-full progress (2 cores, 2-slot FIFOs),
//! of cpusync (3 cores), of the kernel's idle loop against a lazy and an active sender
//! (3 cores), of a passive send against a core stopping its tick, of a TLB shootdown against a
//! halting core, and of `outstanding()` read beside a sender and a drain (also spilled).
//!
//! Run with `RUSTFLAGS="--cfg ipiq_loom" cargo test --release --features loom --test loom` (`make loom`).
//! `LOOM_MAX_PREEMPTIONS` overrides each model's preemption bound (1 to 3; 0 for cpusync).
#![cfg(ipiq_loom)]

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
    /// TLB flushes (ranged or full) each core did.
    flushes: Vec<AtomicUsize>,
    /// The thread of each core, for unparking (a plain std mutex: loom does not model it, and
    /// it guards only thread handles).
    threads: std::sync::Mutex<Vec<Option<thread::Thread>>>,
}

impl LoomPlatform {
    fn new(cpus: usize) -> Self {
        Self {
            pending: (0..cpus).map(|_| AtomicBool::new(false)).collect(),
            ipis: AtomicUsize::new(0),
            flushes: (0..cpus).map(|_| AtomicUsize::new(0)).collect(),
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

/// Cores that run [`idle`] on threads of their own until [`IdleCores::stop`].
struct IdleCores {
    stop: Arc<AtomicBool>,
    cores: Vec<(CpuId, thread::JoinHandle<()>)>,
}

/// Starts `cpus` as idle cores of `q`.
fn idle_cores(q: &Arc<Q>, cpus: impl IntoIterator<Item = CpuId>) -> IdleCores {
    let stop = Arc::new(AtomicBool::new(false));
    let cores = cpus
        .into_iter()
        .map(|cpu| {
            let (q, stop) = (q.clone(), stop.clone());
            let thread = thread::spawn(move || {
                q.platform().become_cpu(cpu);
                idle(&q, cpu, &stop);
            });
            (cpu, thread)
        })
        .collect();
    IdleCores { stop, cores }
}

impl IdleCores {
    /// Tells the cores to stop, wakes each with an IPI and waits for them.
    fn stop(self, q: &Q) {
        self.stop.store(true, Ordering::Release);
        for &(cpu, _) in &self.cores {
            q.platform().send_ipi(cpu);
        }
        for (_, thread) in self.cores {
            thread.join().unwrap();
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
    fn flush_tlb_range(&self, _: usize, _: usize) {
        // Relaxed: read back only by the same core.
        self.flushes[self.current_cpu()].fetch_add(1, Ordering::Relaxed);
    }
    fn flush_tlb_all(&self) {
        // Relaxed: as above.
        self.flushes[self.current_cpu()].fetch_add(1, Ordering::Relaxed);
    }
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
/// last look) as it must before halting: a core whose own poll set the flag runs that exit
/// handshake before any look (`OwnState::polled`). Afterwards either every message ran or an IPI is
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

/// The message [`interrupt_drain_keeps_its_senders_signal_until_it_ran_the_message`] sends
/// first: when it runs, no second IPI has been claimed (I3).
fn first_of_two(q: &Q, counter: usize, _: usize) {
    assert_eq!(
        q.platform().ipis.load(Ordering::Relaxed),
        1,
        "a second IPI was claimed before the drain ran the message the first was sent for"
    );
    inc(q, counter, 0);
}

/// An interrupt-driven drain against a second sender (I3): core 1 sends (its `npoll` claim and
/// IPI), then core 0 takes the IPI and runs `process` while core 2 sends. The flag core 0 finds
/// set is core 1's, not its own polls' (`OwnState::polled`), so `process` looks before it clears
/// it: core 2 claims a second IPI only after core 0's drain has run core 1's message. Fails when
/// `process` runs the exit handshake before its first look on such a core (core 2 finds the
/// flag clear in between). Both messages run exactly once.
#[test]
fn interrupt_drain_keeps_its_senders_signal_until_it_ran_the_message() {
    builder(3).check(|| {
        let q = new_ipiq(3, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        CPU.with(|c| c.set(1));
        q.send(0, first_of_two, counter, 0).unwrap();
        assert_eq!(q.platform().ipis.load(Ordering::Relaxed), 1);
        let second = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(2));
                q.send(0, inc, counter, 0).unwrap();
            })
        };
        CPU.with(|c| c.set(0));
        // The IPI's handler.
        assert!(q.platform().pending[0].swap(false, Ordering::Acquire));
        q.process();
        second.join().unwrap();
        if q.platform().pending[0].swap(false, Ordering::Acquire) {
            q.process();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 2);
        drop(ran);
    });
}

/// A lazy send (IPI only to a halted core) against a core about to halt: core 0 drains, then
/// marks itself halted and looks once more (`prepare_halt`), while core 1 sends lazily. Either
/// core 0 sees the message and does not halt, or core 1 sees the mark and sends the IPI.
#[test]
fn lazy_send_never_strands_a_message_behind_a_halt() {
    quiet_send_against(Quiet::LazyVsHalt);
}

/// The same with a passive send: a halted core's tick is stopped (nothing would drain a passive
/// message left behind the halt), so a passive send to a halted core must send the one IPI a
/// passive send may cost.
#[test]
fn passive_send_never_strands_a_message_behind_a_tickless_halt() {
    quiet_send_against(Quiet::PassiveVsHalt);
}

/// A passive send against a core stopping its tick (a tick that drained nothing): the target
/// marks `tick_stopped`, fences and looks once more (`prepare_tick_stop`); the sender publishes,
/// fences and looks at the mark. Either the target sees the message and keeps its tick, or the
/// sender sends the IPI, and then it has also asked for the tick again.
#[test]
fn passive_send_never_strands_a_message_behind_a_stopped_tick() {
    quiet_send_against(Quiet::PassiveVsTickStop);
}

/// What core 1 sends and what core 0 does meanwhile in [`quiet_send_against`].
#[derive(Clone, Copy, Debug, PartialEq)]
enum Quiet {
    /// A lazy send against `prepare_halt`.
    LazyVsHalt,
    /// A passive send against `prepare_halt`.
    PassiveVsHalt,
    /// A passive send against `prepare_tick_stop`.
    PassiveVsTickStop,
}

/// Core 1 sends to core 0 while core 0 drains and then marks itself (halted, or its tick
/// stopped) with the look that makes the mark race-free. Either core 0 sees the message and
/// takes the mark back, or core 1 sees the mark and sends the IPI; a passive send's IPI also
/// asks for the tick.
fn quiet_send_against(quiet: Quiet) {
    builder(3).check(move || {
        let q = new_ipiq(2, 8);
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        let sender = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(1));
                if quiet == Quiet::LazyVsHalt {
                    q.try_send_lazy(0, inc, counter, 0).unwrap();
                } else {
                    q.send_passive(0, inc, counter, 0).unwrap();
                }
            })
        };
        CPU.with(|c| c.set(0));
        q.process();
        let marked = if quiet == Quiet::PassiveVsTickStop {
            q.prepare_tick_stop()
        } else {
            q.prepare_halt()
        };
        sender.join().unwrap();
        let done = ran.load(Ordering::Relaxed);
        let pending = q.platform().pending[0].load(Ordering::Acquire);
        assert!(
            done == 1 || pending || !marked,
            "message stranded behind the mark ({quiet:?}): ran {done}, no IPI, core marked"
        );
        if quiet != Quiet::LazyVsHalt {
            assert!(
                !pending || q.take_tick_request(),
                "a passive send's IPI without a tick request"
            );
        }
        // Whatever woke it (the IPI, or the look that took the mark back), core 0 drains.
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
        let target = idle_cores(&q, [0]);
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
        target.stop(&q);
        assert_eq!(ran.load(Ordering::Relaxed), 4);
    });
}

/// Checks that message `arg` is the next one expected, then expects the one after it.
fn in_order(_: &Q, expected: usize, arg: usize) {
    // SAFETY: kept alive by the model's Arc for the whole model run.
    let expected = unsafe { &*(expected as *const AtomicUsize) };
    // Relaxed: only core 0 runs this function.
    let want = expected.load(Ordering::Relaxed);
    assert_eq!(arg, want, "message {arg} ran when message {want} was next");
    expected.store(want + 1, Ordering::Relaxed);
}

/// Sends messages 0, 1 and 2 to core 0, checked there by `in_order`: a message function, so a
/// full FIFO does not make it wait (the third goes to the spill list).
fn send_three_in_order(q: &Q, expected: usize, _: usize) {
    for i in 0..3 {
        q.send(0, in_order, expected, i).unwrap();
    }
}

/// The slots publish themselves (`fifo.rs`): core 1 sends three messages through a 2-slot FIFO
/// from a message function, so the ring fills and the third waits in the spill list until core 0
/// (draining on its IPIs) frees slot 0, which it then reuses after one lap. Every message runs
/// once and in order, `wait` returns only after all of them, and loom's cell tracking finds no
/// slot that both cores touch without the sequence word's or `rindex`'s hand-over ordering
/// them.
#[test]
fn slots_reused_after_a_lap_hand_over_each_message_once_in_order() {
    builder(2).check(|| {
        let q = new_ipiq(2, 2);
        // Statistics off: their counters are atomics too, and this model is large enough.
        q.set_stats(false);
        let next = Arc::new(AtomicUsize::new(0));
        let expected = &*next as *const AtomicUsize as usize;
        let target = idle_cores(&q, [0]);
        q.platform().become_cpu(1);
        // A send to the calling core runs at once, as a message function.
        q.send(1, send_three_in_order, expected, 0).unwrap();
        let seq = q.seq(0).unwrap();
        assert_eq!(seq.0, 3);
        // Pushes the spilled message as room appears, then waits for all three to return.
        q.wait(0, seq).unwrap();
        // Relaxed: the wait's Acquire of `xindex` ordered every function's effects before this.
        assert_eq!(next.load(Ordering::Relaxed), 3);
        target.stop(&q);
        assert_eq!(q.outstanding(), 0);
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
        let targets = idle_cores(&q, 1..3);
        q.platform().become_cpu(0);
        let work = SyncWork {
            start: Some(Message::new(inc, s, 0)),
            finish: Some(Message::new(inc, f, 0)),
            after: Some(Message::new(inc, f, 0)),
        };
        // Release without waiting (the master must not spin beside the held targets in loom).
        q.cpusync_release(&CpuSet::all(3).unwrap(), work, |_| {
            // The closure runs once both targets ran the start work and are held.
            assert_eq!(started.load(Ordering::Relaxed), 2);
            assert_eq!(
                finished.load(Ordering::Relaxed),
                0,
                "held targets have not finished"
            );
        })
        .unwrap();
        targets.stop(&q);
        assert_eq!(
            finished.load(Ordering::Relaxed),
            4,
            "finish and after work, once per target"
        );
    });
}

/// A TLB shootdown against a core running the kernel's idle loop (drain, `prepare_halt`, halt,
/// `end_halt`, interrupts entering through `interrupt_entry`): whether the master finds the core
/// awake (and interrupts it, waiting for its acknowledgement) or halted (and defers its flush to
/// its wake-up, with no IPI), the core never uses memory through its old translation once the
/// shootdown has returned. "Using memory" is modelled where the kernel would: right after the
/// halt ends and at the start of an interrupt handler's work; "the shootdown has returned" is the
/// master's `freed` flag (the frame handed back to the allocator), read with Acquire.
#[test]
fn a_shootdown_never_leaves_a_halted_core_with_a_stale_translation() {
    // How many explored executions took each path (plain std atomics: outside the model).
    static PATHS: [std::sync::atomic::AtomicUsize; 2] =
        [const { std::sync::atomic::AtomicUsize::new(0) }; 2];
    builder(2).check(|| {
        let q = new_ipiq(2, 4);
        let freed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let core = {
            let (q, freed, stop) = (q.clone(), freed.clone(), stop.clone());
            thread::spawn(move || {
                q.platform().become_cpu(1);
                let use_memory = |q: &Q| {
                    if freed.load(Ordering::Acquire) {
                        assert!(
                            q.platform().flushes[1].load(Ordering::Relaxed) > 0,
                            "core 1 used a translation the shootdown had removed"
                        );
                    }
                };
                loop {
                    if q.platform().pending[1].swap(false, Ordering::Acquire) {
                        // An interrupt handler: the entry hook first, then its work.
                        q.interrupt_entry();
                        use_memory(&q);
                        q.process();
                        continue;
                    }
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    q.process();
                    if q.prepare_halt() {
                        if !q.platform().pending[1].load(Ordering::Acquire) {
                            thread::park();
                        }
                        q.end_halt();
                        use_memory(&q);
                    }
                }
            })
        };
        // A wake-up that is not the master's (the core's tick ending a halt), racing with the
        // master's decision; it gives the master no ordering with the core.
        let tick = {
            let q = q.clone();
            thread::spawn(move || {
                if let Some(t) = q.platform().threads.lock().unwrap()[1].as_ref() {
                    t.unpark();
                }
            })
        };
        q.platform().become_cpu(0);
        let done = q.shootdown(0x1000, 1).unwrap();
        assert_eq!(done.targets + done.deferred, 1);
        PATHS[done.deferred].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        freed.store(true, Ordering::Release);
        // Some later interrupt (a tick, a device) wakes the core, if it halted.
        stop.store(true, Ordering::Release);
        q.platform().send_ipi(1);
        core.join().unwrap();
        tick.join().unwrap();
    });
    let [interrupted, deferred] =
        [0, 1].map(|i| PATHS[i].load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        interrupted > 0 && deferred > 0,
        "both paths explored: {interrupted} interrupted, {deferred} deferred"
    );
}

// ----- the kernel's idle loop against a lazy and an active sender --------------------------------

/// The idle core, the lazy sender and the active sender of `idle_loop_model`.
const IDLE_CPU: CpuId = 0;
const LAZY_CPU: CpuId = 1;
const ACTIVE_CPU: CpuId = 2;

/// [`LoomPlatform`]'s model of IPIs (an RMW on the target's pending flag, then an unpark), plus
/// the idle core's *halt windows*, for one check: an IPI from the lazy sender must be explained
/// by a halt, that is by a window (from just before the idle core's `prepare_halt` to just after
/// its `end_halt`) that was open at some moment after the lazy send began. A window that closed
/// before the send began explains nothing: the core was running again.
struct IdleLoopPlatform {
    pending: Vec<AtomicBool>,
    /// The idle core's thread, for unparking (a plain std mutex, as in `LoomPlatform`).
    idle_thread: std::sync::Mutex<Option<thread::Thread>>,
    /// Window events so far: incremented (RMW) as the idle core opens a window and again as it
    /// closes it, so it is odd while one is open. Read with RMWs (the latest value, not an
    /// older one loom may hand a plain load).
    halt_window: AtomicUsize,
    /// `halt_window` as the lazy sender read it just before its send.
    lazy_start: AtomicUsize,
    /// IPIs from the lazy sender, and those of them that found the idle core outside its halt
    /// window.
    lazy_ipis: AtomicUsize,
    lazy_ipis_to_running: AtomicUsize,
}

// SAFETY: as for `LoomPlatform`: one model thread per core, its id thread-local, no interrupts.
unsafe impl Platform for IdleLoopPlatform {
    fn current_cpu(&self) -> CpuId {
        CPU.with(Cell::get)
    }
    fn cpu_count(&self) -> usize {
        self.pending.len()
    }
    fn send_ipi(&self, target: CpuId) {
        if self.current_cpu() == LAZY_CPU {
            self.lazy_ipis.fetch_add(1, Ordering::Relaxed);
            let start = self.lazy_start.fetch_add(0, Ordering::SeqCst);
            let now = self.halt_window.fetch_add(0, Ordering::SeqCst);
            // Open when the send began, or opened since.
            let explained = start % 2 == 1 || now > start;
            if target != IDLE_CPU || !explained {
                self.lazy_ipis_to_running.fetch_add(1, Ordering::Relaxed);
            }
        }
        // An RMW rather than a store, as in `LoomPlatform::send_ipi`.
        self.pending[target].swap(true, Ordering::Release);
        if target == IDLE_CPU {
            if let Some(t) = self.idle_thread.lock().unwrap().as_ref() {
                t.unpark();
            }
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

type IdleQ = Ipiq<IdleLoopPlatform>;

fn idle_inc(_: &IdleQ, counter: usize, _: usize) {
    // SAFETY: the counter is kept alive by the model's Arc for the whole model run.
    let counter = unsafe { &*(counter as *const AtomicUsize) };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The idle core's interrupt handler, when interrupts are on: an IPI that is pending is taken
/// (ipiq's vector runs `process`).
fn take_ipi(q: &IdleQ) {
    if q.platform().pending[IDLE_CPU].swap(false, Ordering::Acquire) {
        q.process();
    }
}

/// The kernel's idle loop (the idle-loop patch, `scheduler::run` with `ipiq::idle_drain`), on
/// core 0, until `want` messages ran. With interrupts off: during the backoff it polls (`poll`,
/// staying signalled) and then enables interrupts and snoozes; once the backoff is over it runs
/// `process`, then `pending() || !prepare_halt()`: with nothing pending it halts (`sti; hlt`,
/// parked until an IPI, whose handler runs `process`) and calls `end_halt`; otherwise it calls
/// `end_halt` and reschedules (whose hook drains again). The backoff is one poll here.
fn kernel_idle_loop(q: &IdleQ, ran: &AtomicUsize, want: usize) {
    let mut backoff_done = false;
    while ran.load(Ordering::Relaxed) < want {
        if !backoff_done {
            q.poll();
            // `sti; snooze`: an IPI that came is taken now.
            take_ipi(q);
            backoff_done = true;
            continue;
        }
        q.process();
        q.platform().halt_window.fetch_add(1, Ordering::SeqCst);
        let work = q.pending() || !q.prepare_halt();
        if !work && ran.load(Ordering::Relaxed) == want {
            // Everything ran (this core ran it): the model ends instead of halting for good.
            q.end_halt();
            q.platform().halt_window.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if !work {
            // `sti; hlt`: until an IPI; its handler drains.
            while !q.platform().pending[IDLE_CPU].swap(false, Ordering::Acquire) {
                thread::park();
            }
            q.process();
            q.end_halt();
        } else {
            q.end_halt();
            // `sti; reschedule`: the reschedule hook drains, an IPI that came is taken.
            take_ipi(q);
            q.process();
        }
        q.platform().halt_window.fetch_add(1, Ordering::SeqCst);
        backoff_done = false;
    }
}

/// The kernel's idle loop (`kernel_idle_loop`: poll during the backoff, then `process`,
/// `prepare_halt`, halt, `end_halt`) against a lazy sender (`try_send_lazy`, core 1) and an
/// active one (`send`, core 2), one message each. No message is stranded behind a halt: if one
/// were, the idle core would park with nobody left to wake it, which loom reports as a
/// deadlock. The lazy sender sends an IPI only to a halted core (inside its halt window). Both
/// messages run exactly once.
///
/// The model fails when the protocol is weakened: without `prepare_halt`'s last look, without
/// its fence, or without the lazy sender's fence in `signal_if_halted`, loom finds the idle core
/// parked with the lazy message stranded (a deadlock); a lazy send that signals by `npoll` like
/// an active one, or an `end_halt` that leaves the mark set, fails the halt-window check. (The
/// drain exit's own look and fence are not needed on this path: `prepare_halt`'s look covers
/// the active sender's message too. The handshake models above check them.)
#[test]
fn idle_loop_against_a_lazy_and_an_active_sender() {
    idle_loop_model(false);
}

/// The same idle loop against a passive sender (`send_passive`, core 1) and an active one: the
/// kernel stops an idle core's tick while it halts, so a passive message left behind the halt
/// would wait for ever. Passive sends wake only a halted core, through the lazy handshake.
#[test]
fn idle_loop_against_a_passive_and_an_active_sender() {
    idle_loop_model(true);
}

/// `kernel_idle_loop` on core 0 against core 1 sending lazily (or passively) and core 2 actively.
fn idle_loop_model(passive: bool) {
    builder(2).check(move || {
        let q = Arc::new(Ipiq::new(
            IdleLoopPlatform {
                pending: (0..3).map(|_| AtomicBool::new(false)).collect(),
                idle_thread: std::sync::Mutex::new(None),
                halt_window: AtomicUsize::new(0),
                lazy_start: AtomicUsize::new(0),
                lazy_ipis: AtomicUsize::new(0),
                lazy_ipis_to_running: AtomicUsize::new(0),
            },
            Config {
                fifo_slots: 8,
                ..Config::default()
            },
        ));
        for cpu in 0..3 {
            q.cpu_online(cpu).unwrap();
        }
        let ran = Arc::new(AtomicUsize::new(0));
        let counter = &*ran as *const AtomicUsize as usize;
        // The idle core is a thread of its own: only it is ever unparked (loom lets an unpark
        // meant for a park end a `join` instead).
        let idle = {
            let (q, ran) = (q.clone(), ran.clone());
            thread::spawn(move || {
                CPU.with(|c| c.set(IDLE_CPU));
                *q.platform().idle_thread.lock().unwrap() = Some(thread::current());
                kernel_idle_loop(&q, &ran, 2);
            })
        };
        let lazy = {
            let q = q.clone();
            thread::spawn(move || {
                CPU.with(|c| c.set(LAZY_CPU));
                let platform = q.platform();
                let start = platform.halt_window.fetch_add(0, Ordering::SeqCst);
                platform.lazy_start.swap(start, Ordering::SeqCst);
                if passive {
                    q.send_passive(IDLE_CPU, idle_inc, counter, 0).unwrap();
                } else {
                    q.try_send_lazy(IDLE_CPU, idle_inc, counter, 0).unwrap();
                }
            })
        };
        CPU.with(|c| c.set(ACTIVE_CPU));
        q.send(IDLE_CPU, idle_inc, counter, 0).unwrap();
        lazy.join().unwrap();
        idle.join().unwrap();
        let platform = q.platform();
        assert_eq!(
            platform.lazy_ipis_to_running.load(Ordering::Relaxed),
            0,
            "the lazy sender interrupted a core that was not halted ({} lazy IPIs)",
            platform.lazy_ipis.load(Ordering::Relaxed)
        );
        // Whatever is still pending runs now (as core 0): nothing ran twice.
        CPU.with(|c| c.set(IDLE_CPU));
        take_ipi(&q);
        q.process();
        assert_eq!(ran.load(Ordering::Relaxed), 2, "each message exactly once");
        drop(ran);
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
        let target = idle_cores(&q, [0]);
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
        target.stop(&q);
        assert_eq!(ran.load(Ordering::Relaxed), 3);
        assert_eq!(q.outstanding(), 0);
    });
}
