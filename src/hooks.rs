//! The kernel's hooks: what the interrupt handler, the idle loop, the timer tick and a voluntary
//! reschedule call ([`Ipiq::process`], [`Ipiq::poll`], [`Ipiq::prepare_halt`],
//! [`Ipiq::end_halt`], [`Ipiq::interrupt_entry`], [`Ipiq::tick`], [`Ipiq::pending`],
//! [`Ipiq::prepare_tick_stop`], [`Ipiq::take_tick_request`], and the idle loop's wake-up in one
//! call, [`Ipiq::end_halt_take_tick_request`]).
//!
//! Each one disables interrupts for its duration, and each that can end a halt ends it first:
//! the core stops counting as halted for lazy senders (`wakeup.rs`), and a TLB flush that a
//! shootdown deferred while the core was halted is done (`tlb.rs`) before anything else runs.
//! Nothing in the protocol calls these; they sit on top of it.

use crate::drain::Hold;
use crate::irq::IrqOff;
use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};
use crate::sync::{fence, Ordering};

impl<P: Platform> Ipiq<P> {
    /// Runs every message queued for the calling core, and keeps serving its queues while it is
    /// held in a cpusync (the seed's `lwkt_process_ipiq`). Returns how many messages ran.
    ///
    /// The kernel calls this from the ipiq interrupt handler (then sends EOI), from the idle loop
    /// before halting, and at voluntary reschedule. Context: any; interrupts are disabled inside.
    /// Re-entered from a message function (through a nested send or wait), it continues with the
    /// next message, so nothing deadlocks and per-sender order holds (I1).
    pub fn process(&self) -> usize {
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        self.end_halt_on(me);
        let Some(cpu) = self.cpus.get(me) else {
            // A core `new` does not serve has no queues.
            return 0;
        };
        // Relaxed: the core's own word (`OwnState::polled`).
        let polled = cpu.own.polled.load(Ordering::Relaxed);
        // Signalled on our own account by our polls (an idle loop turning to a task, or about to
        // halt): no sender has claimed an IPI since our last clear, so the drain's exit
        // handshake goes first and one look after it decides; a sender that finds the flag clear
        // meanwhile sends the only IPI in flight. Otherwise look first: the look before the
        // handshake is what keeps an interrupt-driven drain from clearing its sender's flag
        // before it has run the message (I3: senders in between would send more IPIs).
        if polled || !self.has_work(me, irqs) {
            // Nothing waited at the look (or we have not looked yet). Not signalled (a task
            // switch on a core that ran a task): the handshake would clear a flag that is clear
            // already, so nothing at all. Relaxed load: `npoll` is set only by this core's
            // drains and by senders that send an IPI with it; a message published after the look
            // is one whose sender finds `npoll` clear and sends that IPI (an active send), or one
            // that waits for this core's next drain (a lazy or passive send, as after a drain
            // that found nothing).
            if !polled && !cpu.npoll.is_set() {
                return 0;
            }
            // Signalled by our polls, by a sender (its IPI runs this or is on its way, and what
            // it sent was run by an earlier drain) or by an outer drain of ours: the exit
            // handshake (`Ipiq::unsignal`) and one more look; a message found there is drained
            // below, signalled again.
            Self::unsignal(cpu);
            if !self.has_work(me, irqs) {
                return 0;
            }
        }
        self.drain(me, Hold::ServeWhileHeld, irqs)
    }

    /// [`Ipiq::process`] for a core that is about to look again soon: an idle loop polling before
    /// it halts (the seed's idle spin; Linux calls it haltpoll). It runs what one pass over the
    /// queues finds (a message that arrives behind the pass waits for the next call) but leaves
    /// the core *signalled* (`npoll` set), so senders skip their IPIs while it polls and a
    /// stream of messages into a polling core costs no IPI and no write to a line senders read.
    /// A core held in a cpusync is served until released, as by `process`. Returns how many
    /// messages ran.
    ///
    /// Context: as `process`. Contract: a core that called `poll` must call `poll` or
    /// [`Ipiq::process`] again before it halts or turns to other work, and `process` (which clears
    /// the signal after a last look) before it halts; until then messages for it are run only by
    /// its own next drain. (A sender's `wait` watchdog forces an IPI past
    /// [`crate::Config::resend_after_ns`] if that contract is broken.)
    pub fn poll(&self) -> usize {
        let irq = IrqOff::new(&self.platform);
        let me = self.platform.current_cpu();
        // One pass, staying signalled (`drain.rs`). Nothing queued: nothing runs, and a core still
        // signalled from its last poll writes nothing either (only this core clears `npoll`, so
        // set stays set until our next drain; a message arriving after the look finds it set and
        // waits for that drain, as the contract above says, and as it would after a full drain
        // that found nothing). The first poll after `process` cleared the signal sets it again
        // (a Relaxed RMW, as every write to `npoll`, `wakeup.rs`); no fence is needed: a sender
        // that publishes before the set and reads `npoll` clear sends an IPI (taken when this
        // core enables interrupts), and one that reads it set leaves its message to our next
        // `poll` or `process`, as above.
        self.drain_polled(me, irq.token())
    }

    /// The timer-tick hook: drains everything, passive messages included, and counts it.
    pub fn tick(&self) -> usize {
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        self.end_halt_on(me);
        self.count(me, |c| &c.ticks, 1);
        let n = self.drain(me, Hold::ServeWhileHeld, irqs);
        self.count(me, |c| &c.tick_drained, n as u64);
        n
    }

    /// Whether anything waits for the calling core: a message in one of its queues, a cpusync
    /// it is held in, or a spilled message of its own (for the idle loop's last check before
    /// halting).
    ///
    /// Context: any; interrupts are disabled inside, so the answer is about the core it was
    /// asked on (the caller keeps them disabled if it must act on that answer before a message
    /// can arrive: the idle loop calls it with interrupts off). Does not block; re-entrant.
    pub fn pending(&self) -> bool {
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        // Interrupts are disabled above, so neither a migration nor an interrupt handler's
        // ipiq call can come between the core's id and the look.
        let me = self.platform.current_cpu();
        self.has_work(me, irqs)
    }

    /// The idle loop's last step before it halts (after [`Ipiq::process`]; interrupts disabled inside):
    /// marks the core halted for lazy senders ([`Ipiq::try_send_lazy`]), fences (SeqCst), and
    /// looks at its queues once more. Returns whether the core may halt; `false` means a message
    /// arrived (the mark is taken back): drain again instead. After the halt, or when the loop
    /// turns to a task instead, it calls [`Ipiq::end_halt`].
    pub fn prepare_halt(&self) -> bool {
        // Interrupts off inside, whatever the caller promised: an interrupt between marking the
        // halt window and setting `halted` would end the window (`interrupt_entry`) and leave
        // `halted` set on a running core, whose TLB flushes shootdowns would then defer.
        let _irq = IrqOff::new(&self.platform);
        let me = self.platform.current_cpu();
        let Some(cpu) = self.cpus.get(me) else {
            // A core `new` does not serve: nothing can arrive for it.
            return true;
        };
        let halted = &cpu.halted;
        cpu.diag.halting(true);
        // Relaxed RMW, then the SeqCst fence: the target's side of the handshake in
        // `signal_if_halted` (every write to `halted` is an RMW, as for `npoll`).
        halted.set();
        fence(Ordering::SeqCst);
        if self.has_incoming(me) {
            // Not halting after all: end the halt window as a wake-up would (clearing `halted`
            // by RMW, and doing a TLB flush a shootdown deferred meanwhile).
            self.end_halt_on(me);
            return false;
        }
        true
    }

    /// The calling core's periodic tick is about to stop (a tick that drained nothing, or the
    /// idle loop about to halt): returns whether it may. The tick exists for passive messages
    /// (and, while a cpusync holds the core or its own spilled messages wait, as a drain that
    /// comes back). This sets `tick_stopped`, fences and looks at the core's queues, its holds
    /// and its spill list once more: the tick's side of the handshake in passive sends
    /// (`wakeup.rs`). If anything is there the mark is taken back and the tick must keep
    /// running; otherwise a passive message sent from here on comes with an IPI (which asks for
    /// the tick again: [`Ipiq::take_tick_request`]).
    ///
    /// Context: the timer interrupt or the idle loop, on the core itself; interrupts are
    /// disabled inside (the caller keeps them disabled until it has stopped the timer).
    pub fn prepare_tick_stop(&self) -> bool {
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        let Some(cpu) = self.cpus.get(me) else {
            return true;
        };
        // Relaxed RMW, then the SeqCst fence: the mirror image of the passive sender's
        // "publish; fence; load `tick_stopped`".
        cpu.tick_stopped.set();
        fence(Ordering::SeqCst);
        if self.has_work(me, irqs) {
            cpu.tick_stopped.clear();
            return false;
        }
        true
    }

    /// Whether a passive sender asked the calling core, whose tick had stopped, to run it again
    /// (it sent a passive message, and more may follow). If so the request is taken and the
    /// core counts as ticking from here (`tick_stopped` cleared): the caller starts the tick at
    /// once, before interrupts are enabled. Context: the kernel's interrupt entry, on the core
    /// itself (the idle loop's wake-up takes it with the halt's end:
    /// [`Ipiq::end_halt_take_tick_request`]); interrupts are disabled inside; one load when
    /// nothing was asked.
    pub fn take_tick_request(&self) -> bool {
        let _irq = IrqOff::new(&self.platform);
        self.take_tick_request_on(self.platform.current_cpu())
    }

    /// The core stopped halting (or decided not to halt after [`Ipiq::prepare_halt`]): lazy
    /// senders stop waking it, and a TLB flush that a shootdown deferred while it was halted is
    /// done now, before the core can touch memory through a stale translation (see `tlb.rs`).
    /// Context: the core's own, any time; interrupts are disabled inside; one load when the
    /// core is not in a halt.
    pub fn end_halt(&self) {
        let _irq = IrqOff::new(&self.platform);
        self.end_halt_on(self.platform.current_cpu());
    }

    /// The first thing an interrupt handler that can run while the core halts does (ipiq's
    /// vector, the tick, the scheduler's timer, device interrupts): if the interrupt ended a
    /// halt, the halt ends here ([`Ipiq::end_halt`]), so a deferred TLB flush is done before the
    /// handler runs anything that may touch memory. [`Ipiq::process`] and [`Ipiq::tick`] call it
    /// themselves. Context: interrupt handlers, interrupts disabled; one load when not halted.
    #[inline]
    pub fn interrupt_entry(&self) {
        let _irq = IrqOff::new(&self.platform);
        self.end_halt_on(self.platform.current_cpu());
    }

    /// The idle loop's wake-up in one call: [`Ipiq::end_halt`], then [`Ipiq::take_tick_request`],
    /// under one interrupt-disabled section and one look at the core's id. If a passive sender
    /// asked for the tick, the request is taken and `start_tick` runs, interrupts still disabled,
    /// so the tick starts before they are enabled again, as `take_tick_request` asks of its
    /// caller. Returns whether the tick was asked for.
    ///
    /// The halt ends first (a TLB flush a shootdown deferred while the core halted is done before
    /// `start_tick` or anything after runs), exactly as the two calls in that order. Context: the
    /// idle loop on the core itself, after its halt or when it turns to a task instead; not
    /// interrupt context (interrupt handlers use [`Ipiq::interrupt_entry`]); interrupts on or off
    /// on entry, disabled inside. One load each for the halt and the request when neither is there.
    pub fn end_halt_take_tick_request(&self, start_tick: impl FnOnce()) -> bool {
        let _irq = IrqOff::new(&self.platform);
        let me = self.platform.current_cpu();
        self.end_halt_on(me);
        let asked = self.take_tick_request_on(me);
        if asked {
            start_tick();
        }
        asked
    }

    /// `take_tick_request` on core `me`, interrupts disabled. A core `new` does not serve: no
    /// request.
    fn take_tick_request_on(&self, me: CpuId) -> bool {
        let Some(cpu) = self.cpus.get(me) else {
            return false;
        };
        // Relaxed: a request is a hint (a missed one only leaves the tick stopped, and passive
        // sends keep coming with IPIs); RMWs as for every wake-up flag.
        if !(cpu.tick_wanted.is_set() && cpu.tick_wanted.clear()) {
            return false;
        }
        cpu.tick_stopped.clear();
        true
    }

    /// `end_halt` on core `me`, interrupts disabled. A core `new` does not serve: nothing.
    pub(crate) fn end_halt_on(&self, me: CpuId) {
        let Some(cpu) = self.cpus.get(me) else {
            return;
        };
        if !cpu.diag.is_halting() {
            return;
        }
        cpu.diag.halting(false);
        // Relaxed RMW, always (a lazy sender may have cleared the flag already: our own write is
        // what the handshake needs), then the SeqCst fence: our side of the deferral handshake
        // against a shootdown's "bump the deferral count; fence; load `halted`" (`tlb.rs`).
        cpu.halted.clear();
        fence(Ordering::SeqCst);
        self.honour_deferred_flush(me);
    }
}
