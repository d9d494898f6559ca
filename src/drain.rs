//! Draining: the loop behind the seed's `lwkt_process_ipiq` (the kernel's entry points are in
//! `hooks.rs`), which runs every queued message, polls what holds the core (`hold.rs`), pushes
//! spilled sends (`spill.rs`), and ends with the target's side of the `npoll` handshake
//! (`wakeup.rs`). Also here: the nesting depth every message function counts in
//! (`run_message_on`).
//!
//! # Context
//! Core `me` itself, interrupts disabled by the caller; message functions run with interrupts
//! disabled, on the target. The loop is re-entered from the message functions it
//! runs (a nested send into a full FIFO, a `wait`), which then continue with the next message,
//! so nothing deadlocks and per-sender order holds (I1).

use crate::irq::IrqsOff;
use crate::matrix::Ipiq;
use crate::message::Message;
use crate::percpu::PerCpu;
use crate::platform::{CpuId, Platform};
use crate::status::Waiting;
use crate::sync::{fence, Ordering};
use crate::watchdog::Patience;

/// What a drain does while its core is held in a cpusync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Keep serving the queues until every cpusync holding the core has released it (the
    /// interrupt, idle and tick paths).
    ServeWhileHeld,
    /// Poll each held cpusync once and return (nested drains inside a caller's own spin loop,
    /// which must get back to what it waits for).
    PollOnce,
}

/// How a drain ends when it finds no more work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Clear `npoll`, fence, look once more: senders IPI the core again.
    Unsignal,
    /// Leave `npoll` set: the caller drains again soon ([`Ipiq::poll`]).
    StaySignalled,
}

impl<P: Platform> Ipiq<P> {
    /// Drains the calling core `me` (interrupts disabled), ending by clearing `npoll` (see
    /// [`Ipiq::drain_as`]).
    pub(crate) fn drain(&self, me: CpuId, hold: Hold, irqs: IrqsOff<'_>) -> usize {
        self.drain_as(me, hold, Exit::Unsignal, irqs)
    }

    /// The drain loop. `npoll` is set on entry and stays set for as long as passes find work, so
    /// senders streaming into a busy core read a flag nobody writes and skip their IPIs without
    /// touching its cache line. Only when a pass ran nothing does the core stop: with
    /// [`Exit::Unsignal`] it clears `npoll`, fences (SeqCst) and looks at its queues once more
    /// (`wakeup.rs`: the `npoll` handshake), going round again if anything arrived; with
    /// [`Exit::StaySignalled`] it returns with `npoll` still set: the caller promises to drain
    /// again soon (see [`Ipiq::poll`]).
    ///
    /// Context: core `me` itself, interrupts disabled; re-entered from the message functions it
    /// runs (they may send, wait or drain), which then continue with the next message. A core
    /// `new` does not serve has no queues: 0.
    pub(crate) fn drain_as(&self, me: CpuId, hold: Hold, exit: Exit, irqs: IrqsOff<'_>) -> usize {
        let Some(cpu) = self.cpus.get(me) else {
            return 0;
        };
        let draining = cpu.diag.draining();
        // Tells senders we are draining so they may skip the IPI; the exit protocol below
        // (clear, SeqCst fence, look again) is what guarantees no message is missed.
        Self::signal_self(cpu, exit == Exit::StaySignalled);
        let mut total = 0;
        let mut spill_watchdog = None;
        let mut hold_watchdog = None;
        loop {
            let ran = self.run_incoming(me, cpu, || {});
            let held = self.poll_holds(me, irqs);
            let spilling = self.flush_spills(me, irqs);
            total += ran;
            if ran > 0 {
                cpu.diag.progressed(ran as u64);
                // Still working; `npoll` is still set unless a nested drain (inside a message
                // function) cleared it on its way out, which costs senders an IPI, never a message:
                // the exit below runs the handshake either way.
                continue;
            }
            if hold == Hold::ServeWhileHeld && held {
                // Held by a master that has not released us yet. Masters run with interrupts
                // off from start to finish (see `cpusync.rs`), so this is short unless a master
                // is stuck: then this core's own watchdog reports it (it never leaves early,
                // which would break the rendezvous its master relies on).
                let holds = cpu.diag.holds();
                let watchdog = hold_watchdog.get_or_insert_with(|| {
                    self.watchdog(me, Waiting::Release, None, Patience::Unbounded, holds)
                });
                let master = cpu.diag.last_master();
                // Unbounded: never an error.
                let _ = watchdog.check(holds, || master.into_iter());
                self.platform.relax();
                continue;
            }
            if hold == Hold::ServeWhileHeld && !spilling.is_empty() {
                // Our spilled messages wait for room in their targets' FIFOs: keep serving our
                // own queues (the targets may be waiting on us) until they are in, or until the
                // watchdog says a target is not draining (then the next drain or tick retries).
                let spilled = cpu.side.spilled.load(Ordering::Relaxed);
                let watchdog = spill_watchdog.get_or_insert_with(|| {
                    self.watchdog(me, Waiting::SpillRoom, None, Patience::Bounded, spilled)
                });
                if watchdog.check(spilled, || spilling.iter().copied()).is_ok() {
                    self.platform.relax();
                    continue;
                }
            }
            if exit == Exit::StaySignalled {
                break;
            }
            // One more look after the handshake; a message found there is run by another pass,
            // signalled again.
            Self::unsignal(cpu);
            if self.has_incoming(me) {
                // Relaxed RMW: back to draining, as on entry.
                cpu.npoll.set();
                continue;
            }
            break;
        }
        // One at a time, not as a tuple (which copied both): each ends its wait record.
        drop(spill_watchdog);
        drop(hold_watchdog);
        cpu.diag.done_draining(draining);
        self.count(me, |c| &c.processed, total as u64);
        total
    }

    /// The target's side of the `npoll` handshake (`wakeup.rs`) before its last look at its
    /// queues: a Relaxed RMW clear, then the SeqCst fence, our store-load barrier against a
    /// sender's "publish; fence; load `npoll`". The caller looks next, and drains (signalled
    /// again) whatever it finds. The core no longer holds the flag from its polls
    /// (`OwnState::polled`). Core `cpu`'s own, interrupts disabled (also in interrupt context).
    #[inline]
    pub(crate) fn unsignal(cpu: &PerCpu<P>) {
        // Relaxed: the core's own word, read only by the core (and by diagnostics).
        cpu.own.polled.store(false, Ordering::Relaxed);
        cpu.npoll.clear();
        fence(Ordering::SeqCst);
    }

    /// A drain's entry: sets the core's own `npoll`, and for a poll (`by_poll`) records that the
    /// core holds it on its own account (`OwnState::polled`) when its swap found it clear (one
    /// that found it set lost the race to a sender, whose IPI is on its way). Relaxed RMW, and
    /// only when the flag is clear: a core that stayed signalled (`poll`) and drains again does
    /// not dirty the line its senders read. Every write to `npoll` is a read-modify-write, so
    /// all of them form one chain that each reads the last: a clear can never be ordered before
    /// a sender's set that it did not see. Core `cpu`'s own, interrupts disabled (also in
    /// interrupt context).
    #[inline]
    fn signal_self(cpu: &PerCpu<P>, by_poll: bool) {
        if !cpu.npoll.is_set() && !cpu.npoll.set() && by_poll {
            // Relaxed: the core's own word, read only by the core (and by diagnostics).
            cpu.own.polled.store(true, Ordering::Relaxed);
        }
    }

    /// One pass over core `me`'s incoming FIFOs (`cpu` is its state): each FIFO that holds
    /// messages is emptied, its messages run in order ([`Ipiq::run_message_on`], with the state
    /// the caller looked up);
    /// `first` is called once, before the first message runs, if any does. Returns how many
    /// ran. Context: core `me`, interrupts disabled; re-entered from the message functions it
    /// runs (a nested pass continues where the outer one stands in each FIFO: `take` moves
    /// `rindex` before the function runs).
    #[inline]
    fn run_incoming(&self, me: CpuId, cpu: &PerCpu<P>, mut first: impl FnMut()) -> usize {
        let mut ran = 0;
        self.any_incoming(me, |fifo| {
            while let Some(taken) = fifo.take() {
                if ran == 0 {
                    first();
                }
                self.run_message_on(cpu, taken.message);
                fifo.finish(taken);
                ran += 1;
            }
            false
        });
        ran
    }

    /// [`Ipiq::poll`]'s drain: one pass over the queues that leaves the core signalled, in
    /// which the look that finds a message is the one that runs it. The drain's rules hold:
    /// `npoll` is set before any message runs (as on entering a drain), the core counts as
    /// draining while messages run, and they are counted. A core held in a cpusync or holding
    /// spilled messages, before the pass or after it (a cpusync's message, a nested send into a
    /// full FIFO), goes through [`Ipiq::drain_as`], which serves them. Messages that arrive
    /// during the pass, in a FIFO it has passed, wait for the next `poll`, as the poll contract
    /// says.
    ///
    /// The general loop looks before it drains and ends only after a pass that ran nothing;
    /// here one pass is the look, the drain and the last pass, so a polling core's path from
    /// finding a message to publishing its completion is only that (the empty pass the loop
    /// would make next is the next `poll`).
    ///
    /// Context: core `me` itself, interrupts disabled; may run message functions.
    pub(crate) fn drain_polled(&self, me: CpuId, irqs: IrqsOff<'_>) -> usize {
        let Some(cpu) = self.cpus.get(me) else {
            return 0;
        };
        if Self::has_side_work(cpu, irqs) {
            return self.drain_as(me, Hold::ServeWhileHeld, Exit::StaySignalled, irqs);
        }
        // As on entering a drain (`drain_as`).
        Self::signal_self(cpu, true);
        // The draining flag only around messages: an empty poll writes nothing.
        let mut draining = None;
        let ran = self.run_incoming(me, cpu, || draining = Some(cpu.diag.draining()));
        let Some(draining) = draining else {
            return 0;
        };
        cpu.diag.done_draining(draining);
        cpu.diag.progressed(ran as u64);
        self.count(me, |c| &c.processed, ran as u64);
        if Self::has_side_work(cpu, irqs) {
            return ran + self.drain_as(me, Hold::ServeWhileHeld, Exit::StaySignalled, irqs);
        }
        ran
    }

    /// Whether anything waits for core `me`'s drain: a message in one of its queues, a cpusync
    /// it is held in, or a spilled message of its own. Reads only (the holds and spill count are
    /// the core's own; the queues' next slots are the senders' to write). Context: core `me`,
    /// interrupts disabled; false for a core `new` does not serve.
    #[inline]
    pub(crate) fn has_work(&self, me: CpuId, irqs: IrqsOff<'_>) -> bool {
        self.cpus
            .get(me)
            .is_some_and(|cpu| self.has_incoming(me) || Self::has_side_work(cpu, irqs))
    }

    /// Whether a drain of core `cpu` (the caller's own) has work besides its queues: a cpusync
    /// it is held in, or a spilled message of its own. Reads only the core's own state.
    /// Context: the core itself, interrupts disabled (also in interrupt context).
    #[inline]
    fn has_side_work(cpu: &PerCpu<P>, irqs: IrqsOff<'_>) -> bool {
        // Relaxed: written only by this core.
        cpu.side.spilled.load(Ordering::Relaxed) > 0
            // SAFETY: our own core (interrupts are disabled: `irqs`), and the closure does not
            // call back into ipiq.
            || unsafe { cpu.side.holds.with(irqs, |q| !q.is_empty()) }
    }

    /// One step of a spinning caller's service of its own queues (a `wait`, a send waiting for
    /// room, a shootdown waiting for acknowledgements): a [`Hold::PollOnce`] drain, but only
    /// when [`Ipiq::has_work`] says there is something to do. An idle step then costs a few
    /// loads instead of a drain's two RMWs on `npoll` and its SeqCst fence. Skipping the drain
    /// leaves `npoll` as it was: clear (senders IPI us, and the next step finds their messages
    /// anyway), or set by a sender that sent an IPI after setting it, or by an outer drain of
    /// ours that runs the exit handshake itself (`wakeup.rs`); no message waits on the skip.
    ///
    /// Context: core `me`, interrupts disabled; may run message functions.
    #[inline]
    pub(crate) fn serve_own(&self, me: CpuId, irqs: IrqsOff<'_>) {
        if self.has_work(me, irqs) {
            self.drain(me, Hold::PollOnce, irqs);
        }
    }

    /// Runs `message` on the calling core, whose state is `cpu`, counted in the core's nesting
    /// depth while it runs, so that sends from inside it never block (`spill.rs`) and `wait`
    /// knows it is inside a message function. Context: that core, interrupts disabled (also in
    /// interrupt context).
    #[inline]
    pub(crate) fn run_message_on(&self, cpu: &PerCpu<P>, message: Message<P>) {
        // Relaxed loads and stores, no locked RMW: the core-local nesting depth, interrupts off.
        let running = &cpu.own.running;
        running.store(running.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        (message.func)(self, message.arg0, message.arg1);
        running.store(running.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }
}
