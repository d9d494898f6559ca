//! Sending: the seed's `lwkt_send_ipiq*` family ([`Ipiq::send`], [`Ipiq::send_passive`],
//! [`Ipiq::try_send`], [`Ipiq::try_send_lazy`], [`Ipiq::send_batch`], [`Ipiq::send_many`]) and
//! the one queueing path they share (`enqueue`): the FIFO-full policy, the spill list for sends
//! from inside message functions (`spill.rs`), and the wake-up that follows (`wakeup.rs`).
//!
//! # Context
//! Every send disables interrupts for its duration, so it is never re-entered from an interrupt
//! on the same core halfway through. Sends may be nested inside message functions: a sender
//! whose FIFO is over half full drains its own incoming queues (which may run further message
//! functions) until the target catches up (I4), and inside a message function a send never
//! blocks at all (the spill list).

use alloc::boxed::Box;

use crate::fifo::Fifo;
use crate::irq::{IrqOff, IrqsOff};
use crate::matrix::Ipiq;
use crate::message::{IpiFn, Message};
use crate::platform::{CpuId, Platform};
use crate::status::Waiting;
use crate::sync::{fence, Ordering};
use crate::wakeup::Ipi;
use crate::watchdog::Patience;
use crate::CpuSet;
use crate::Error;
use crate::Seq;

/// How a message is queued.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `send`: IPI unless avoided; drains own queues while the FIFO is over half full.
    Active,
    /// `send_passive`: no IPI to a running target until the FIFO is a quarter full (its tick
    /// drains it); one to a halted target, whose tick may be stopped.
    Passive,
    /// `try_send`: like active, but refuses instead of draining when the FIFO is 2/3 full.
    Nowait,
    /// `try_send_lazy`: refuses as `Nowait` does; IPI only if the target is halted.
    Lazy,
}

impl<P: Platform> Ipiq<P> {
    /// Queues `func(arg0, arg1)` to run on `target` and wakes it with an IPI unless it is already
    /// signalled or draining (the seed's `lwkt_send_ipiq3`). Returns the sequence number for
    /// [`Ipiq::wait`].
    ///
    /// Context: any, interrupts on or off, also from inside a message function. Does not block
    /// except while the FIFO is over half full: then it drains the calling core's own incoming
    /// queues until the target has taken the FIFO below a quarter (so cores that all flood each
    /// other still progress, I4). A message to the calling core runs at once, in the caller (I7).
    pub fn send(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Active)
    }

    /// Queues a message without interrupting a running target (the seed's
    /// `lwkt_send_ipiq_passive`): the target runs it at its next tick, IPI or drain. Once the
    /// FIFO is a quarter full the send becomes active, so a stream of passive messages cannot
    /// pile up unboundedly behind a sleeping core.
    ///
    /// A target halted in its idle loop ([`Ipiq::prepare_halt`]) gets one IPI instead, decided
    /// by the same store-fence-load handshake as [`Ipiq::try_send_lazy`]'s: an idle core may
    /// stop its tick, and a passive message must not wait for a tick that never comes. So the
    /// bound is one tick period for a running target and an IPI's latency for a halted one.
    pub fn send_passive(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Passive)
    }

    /// Like [`Ipiq::send`], but never drains: when the FIFO is at least 2/3 full it returns
    /// [`Error::WouldBlock`] and queues nothing (the seed's `lwkt_send_ipiq_nowait`).
    pub fn try_send(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Nowait)
    }

    /// Queues `messages` to `target` in order and wakes it once, after a single fence: the
    /// streaming form of [`Ipiq::send`], with one store-load barrier and at most one IPI per
    /// batch instead of per message. Returns the sequence number of the last message (waiting
    /// on it waits for the whole batch); an empty batch returns `Seq(0)` and sends nothing.
    /// Messages to the calling core run at once, in the caller (I7).
    ///
    /// Context and blocking as `send`: a batch may be longer than the FIFO; when the FIFO is
    /// over half full the target is signalled and the caller drains its own queues until there
    /// is room. Errors: [`Error::NoSuchCpu`] and [`Error::CpuOffline`] before anything is
    /// queued; [`Error::TimedOut`] if the FIFO stayed full (the messages already queued still
    /// run: the target is signalled).
    pub fn send_batch(&self, target: CpuId, messages: &[Message<P>]) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        if let Err(e) = self.check_cpu(me) {
            Err(e)
        } else if target == me {
            self.count(me, |c| &c.local, messages.len() as u64);
            for &message in messages {
                message.run(self, me);
            }
            Ok(Seq(0))
        } else if !self.is_online(target) {
            Err(Error::CpuOffline(target))
        } else {
            let fifo = self.fifo_to(me, target);
            let mut result = Ok(Seq(0));
            let mut fast = 0;
            for &message in messages {
                // The common case in one FIFO lookup; `enqueue` (which looks it up again) only
                // for a message that finds the FIFO over half full or a spill waiting.
                result = match self.push_fast(me, fifo, message) {
                    Some(w) => {
                        fast += 1;
                        Ok(Seq(w))
                    }
                    None => self.enqueue(
                        me,
                        target,
                        message,
                        Kind::Active,
                        false,
                        Patience::Bounded,
                        irqs,
                    ),
                };
                if result.is_err() {
                    break;
                }
            }
            self.count(me, |c| &c.sent, fast);
            if !messages.is_empty() {
                self.signal(me, target);
            }
            result
        }
    }

    /// Like [`Ipiq::try_send`], but wakes the target only if it is halted in its idle loop
    /// (between [`Ipiq::prepare_halt`] and [`Ipiq::end_halt`]); a target that is running or
    /// polling finds the message at its next drain (interrupt, reschedule, idle loop, tick). For
    /// work that a busy core need not be interrupted for, such as the scheduler's cross-core
    /// wake-ups: a core busy with another task picks them up at its next reschedule, as Hermit's
    /// own wake-up path does, and no IPI is spent on it. Never blocks: [`Error::WouldBlock`] at
    /// 2/3 full, nothing queued.
    pub fn try_send_lazy(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Lazy)
    }

    /// Sends a boxed closure (a convenience over [`Ipiq::send`]; it allocates).
    pub fn send_boxed<F>(&self, target: CpuId, f: F) -> Result<Seq, Error>
    where
        F: FnOnce(&Ipiq<P>) + Send + 'static,
    {
        type Boxed<P> = Box<dyn FnOnce(&Ipiq<P>) + Send>;
        fn trampoline<P: Platform>(ipiq: &Ipiq<P>, raw: usize, _: usize) {
            // SAFETY: `raw` came from `Box::into_raw` below and is consumed exactly once: the
            // message runs once (I2), and the send that queued it succeeded.
            let f = unsafe { Box::from_raw(raw as *mut Boxed<P>) };
            f(ipiq)
        }
        let boxed: Box<Boxed<P>> = Box::new(Box::new(f));
        let raw = Box::into_raw(boxed) as usize;
        self.send(target, trampoline::<P>, raw, 0).inspect_err(|_| {
            // SAFETY: the send failed, so nothing queued the pointer: reclaim it.
            drop(unsafe { Box::from_raw(raw as *mut Boxed<P>) });
        })
    }

    /// Sends `func(arg0, arg1)` to every online core of `set` (the seed's
    /// `lwkt_send_ipiq_mask`): queues to all targets first, then signals them after a single
    /// fence, and runs the calling core's share last, if it is in the set. Offline cores are
    /// skipped. Returns how many cores got the message.
    ///
    /// Errors: [`Error::NoSuchCpu`] if the set names a core beyond the machine (nothing is sent),
    /// [`Error::EmptySet`] if it names no online core, [`Error::TimedOut`] if a FIFO stayed full
    /// (the messages already queued still run).
    pub fn send_many(
        &self,
        set: &CpuSet,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<usize, Error> {
        if let Some(max) = set.max() {
            self.check_cpu(max)?;
        }
        let message = Message::new(func, arg0, arg1);
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        self.check_cpu(me)?;
        let include_self = set.contains(me) && self.is_online(me);
        let others = set.iter().filter(|&t| t != me && self.is_online(t));
        let (queued, result) = self.queue_to_each(me, others, message, Patience::Bounded, irqs);
        self.signal_all(me, &queued);
        let mut count = queued.len();
        if include_self && result.is_ok() {
            self.count(me, |c| &c.local, 1);
            message.run(self, me);
            count += 1;
        }
        result?;
        if count == 0 {
            return Err(Error::EmptySet);
        }
        Ok(count)
    }

    fn send_kind(&self, target: CpuId, message: Message<P>, kind: Kind) -> Result<Seq, Error> {
        self.send_with(target, message, kind, Patience::Bounded)
    }

    /// [`Ipiq::send`] and its siblings with a chosen patience for a full FIFO (the TLB
    /// shootdown's enter messages must never give up).
    pub(crate) fn send_with(
        &self,
        target: CpuId,
        message: Message<P>,
        kind: Kind,
        patience: Patience,
    ) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        if let Err(e) = self.check_cpu(me) {
            Err(e)
        } else if target == me {
            self.count(me, |c| &c.local, 1);
            message.run(self, me);
            Ok(Seq(0))
        } else if !self.is_online(target) {
            Err(Error::CpuOffline(target))
        } else {
            self.enqueue(me, target, message, kind, true, patience, irqs)
        }
    }

    /// Queues `message` on the `me -> target` FIFO and, if `signal`, wakes the target.
    /// Interrupts are disabled by the caller.
    ///
    /// Inside a message function (`running > 0`) a send never blocks: if the FIFO is full the
    /// message goes to this core's spill list for `target` and the drain loop pushes it as room
    /// appears. Blocking there would pin the function on the stack while the nested drain runs
    /// further functions that block in turn: under a flood the nesting grows without bound (a
    /// kernel stack overflow) and the outermost wait can never finish. With the spill list a
    /// send nests at most one drain deep, and cores flooding each other still progress (I4).
    // Always inlined: the fast path is a few lines and every send runs it; a call passing
    // eight arguments cost as much as the path itself.
    #[inline(always)]
    // The eighth argument is the zero-sized interrupts-off proof, which costs no register.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn enqueue(
        &self,
        me: CpuId,
        target: CpuId,
        message: Message<P>,
        kind: Kind,
        signal: bool,
        patience: Patience,
        irqs: IrqsOff<'_>,
    ) -> Result<Seq, Error> {
        let fifo = self.fifo_to(me, target);
        // The active and lazy sends' common case (lazy: the scheduler's cross-core wake-ups),
        // as `enqueue_slow` does it: nothing spilled, under half full (for a lazy send, so under
        // the 2/3 at which it is refused), pushed, then woken as its kind says.
        if matches!(kind, Kind::Active | Kind::Lazy) {
            if let Some(w) = self.push_fast(me, fifo, message) {
                self.count(me, |c| &c.sent, 1);
                self.wake_pushed(me, target, kind, signal);
                return Ok(Seq(w));
            }
        }
        self.enqueue_slow(me, target, fifo, message, kind, signal, patience, irqs)
    }

    /// Wakes `target` for a message just pushed, as a send of `kind` does unless it is passive
    /// and the FIFO leaves it to the tick (`enqueue_slow`): a lazy send only if the target is
    /// halted (counting the IPI it spared), any other an IPI unless `npoll` avoids it. Nothing
    /// when the caller asked for no signal. Context: core `me`, interrupts disabled.
    #[inline(always)]
    fn wake_pushed(&self, me: CpuId, target: CpuId, kind: Kind, signal: bool) {
        if !signal {
            return;
        }
        if kind == Kind::Lazy {
            if !self.signal_if_halted(me, target) {
                self.count(me, |c| &c.lazy, 1);
            }
        } else {
            self.signal(me, target);
        }
    }

    /// The active and lazy sends' common case, exactly what `enqueue_slow` does for it: nothing
    /// spilled on this core (so nothing for `target` waits ahead of `message`, I1) and the FIFO
    /// under half full (so no drain is due; for a lazy send, under the 2/3 at which it is
    /// refused). Pushes `message` and returns its sequence number, or `None` (nothing queued)
    /// for `enqueue_slow` to decide. Reads the sender's own lines, and the target's index only
    /// when the sender's bound of it says half full: that read renews the bound, so a sender
    /// whose target keeps up reads the target's line once per half a FIFO of sends and stays on
    /// this path (a lazy send between half and 2/3 full by a stale bound would otherwise go
    /// through `enqueue_slow`, which renews the bound only at 2/3). The caller counts the
    /// message as sent and signals.
    ///
    /// Context: core `me`, interrupts disabled by the caller; `fifo` is the `me -> target` FIFO.
    #[inline]
    fn push_fast(&self, me: CpuId, fifo: &Fifo<P>, message: Message<P>) -> Option<u64> {
        let capacity = fifo.capacity();
        // Relaxed: written and read only by this core.
        if self.cpus[me].side.spilled.load(Ordering::Relaxed) != 0
            || (fifo.used_at_most() * 2 >= capacity && fifo.used() * 2 >= capacity)
        {
            return None;
        }
        fifo.push(message)
    }

    /// [`Ipiq::enqueue`] past its fast path: spills, the FIFO-full policy, passive, lazy and
    /// nowait sends. Out of line, so the fast path keeps a small frame.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn enqueue_slow(
        &self,
        me: CpuId,
        target: CpuId,
        fifo: &Fifo<P>,
        message: Message<P>,
        kind: Kind,
        signal: bool,
        patience: Patience,
        irqs: IrqsOff<'_>,
    ) -> Result<Seq, Error> {
        let capacity = fifo.capacity();
        // Relaxed: core-local.
        let nested = self.cpus[me].own.running.load(Ordering::Relaxed) > 0;
        if self.spill_len(me, target, irqs) > 0 {
            // Earlier messages to this target still wait in the spill list: they go first (I1).
            if matches!(kind, Kind::Nowait | Kind::Lazy) {
                self.count(me, |c| &c.would_block, 1);
                return Err(Error::WouldBlock);
            }
            if nested {
                return Ok(self.spill_push(me, target, message, signal, irqs));
            }
            let mut watchdog = self.watchdog(
                me,
                Waiting::SpillRoom,
                Some(target),
                patience,
                fifo.xindex(),
            );
            while self.flush_spill(me, target, irqs) > 0 {
                self.serve_own(me, irqs);
                watchdog.check(fifo.xindex(), || core::iter::once(target))?;
                self.platform.relax();
            }
        }
        // Refuse (nowait) at 2/3 full; otherwise drain own queues once over half full.
        let nowait = matches!(kind, Kind::Nowait | Kind::Lazy);
        let over = |used: u64| {
            if nowait {
                used * 3 >= capacity * 2
            } else {
                used * 2 >= capacity
            }
        };
        loop {
            // The bound reads only our own line; the exact count (the target's line) only when
            // the bound reaches the threshold.
            if !over(fifo.used_at_most()) || !over(fifo.used()) {
                break;
            }
            if nowait {
                self.count(me, |c| &c.would_block, 1);
                return Err(Error::WouldBlock);
            }
            self.count(me, |c| &c.fifo_full, 1);
            if nested {
                if fifo.used() < capacity {
                    break;
                }
                return Ok(self.spill_push(me, target, message, signal, irqs));
            }
            // Over half full: make sure the target is coming, then serve our own queues until
            // it has taken the FIFO below a quarter (the seed's fifo-full path). Draining here
            // is what lets two cores flooding each other both progress.
            fence(Ordering::SeqCst);
            self.signal_fenced(me, target, Ipi::UnlessSignalled);
            let mut watchdog =
                self.watchdog(me, Waiting::FifoRoom, Some(target), patience, fifo.xindex());
            while fifo.used() * 4 >= capacity {
                self.serve_own(me, irqs);
                if fifo.used() * 4 < capacity {
                    break;
                }
                watchdog.check(fifo.xindex(), || core::iter::once(target))?;
                self.platform.relax();
            }
        }
        let mut used = fifo.used_at_most();
        if kind == Kind::Passive && (used + 1) * 4 >= capacity {
            used = fifo.used();
        }
        let Some(w) = fifo.push(message) else {
            // Unreachable: only this core fills the FIFO, and it checked for room above.
            return Ok(self.spill_push(me, target, message, signal, irqs));
        };
        self.count(me, |c| &c.sent, 1);
        if kind == Kind::Passive && (used + 1) * 4 < capacity {
            // No IPI to a core whose tick runs (the tick or its next drain takes the message);
            // one to a halted core or a core whose tick stopped, which nothing would drain.
            if !(signal && self.signal_if_unattended(me, target)) {
                self.count(me, |c| &c.passive, 1);
            }
        } else {
            self.wake_pushed(me, target, kind, signal);
        }
        Ok(Seq(w))
    }

    /// Queues `message` for `target` without waking it (the caller signals a batch of targets
    /// with [`Ipiq::signal_all`]). Interrupts are disabled by the caller; `target` is online.
    pub(crate) fn queue_unsignalled(
        &self,
        me: CpuId,
        target: CpuId,
        message: Message<P>,
        patience: Patience,
        irqs: IrqsOff<'_>,
    ) -> Result<(), Error> {
        self.enqueue(me, target, message, Kind::Active, false, patience, irqs)
            .map(drop)
    }

    /// Queues `message` for each core of `targets` (online, never the caller) without waking
    /// them, in order, stopping at the first that fails; returns the cores it reached, for one
    /// [`Ipiq::signal_all`], and that failure. Interrupts are disabled by the caller.
    pub(crate) fn queue_to_each(
        &self,
        me: CpuId,
        targets: impl IntoIterator<Item = CpuId>,
        message: Message<P>,
        patience: Patience,
        irqs: IrqsOff<'_>,
    ) -> (CpuSet, Result<(), Error>) {
        let mut queued = CpuSet::new();
        for target in targets {
            if let Err(e) = self.queue_unsignalled(me, target, message, patience, irqs) {
                return (queued, Err(e));
            }
            // Never fails: `target` is a core of this machine, below `CpuSet::CAPACITY`.
            let _ = queued.insert(target);
        }
        (queued, Ok(()))
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use crate::host::{HostConfig, HostMachine, HostPlatform};
    use crate::Ipiq;

    fn nop(_: &Ipiq<HostPlatform>, _: usize, _: usize) {}

    /// A sender whose target keeps up never goes on believing its FIFO half full: once the
    /// bound it keeps of the target's index says so, the send reads the real index, so sends
    /// stay on the fast path (the kernel's cross-core wake-ups are lazy sends, one per hand-off).
    #[test]
    fn a_sender_whose_target_keeps_up_keeps_a_fresh_view_of_its_fifo() {
        let machine = HostMachine::start(HostConfig::cpus(2));
        let capacity = machine.ipiq().config().fifo_slots as u64;
        for i in 0..3 * capacity {
            let bound = machine
                .run_on(0, |core| {
                    let q = core.ipiq();
                    q.try_send_lazy(1, nop, 0, 0)
                        .expect("room: the target keeps up");
                    q.fifo_between(0, 1).map(|f| f.used_at_most())
                })
                .expect("core 0");
            machine
                .run_on(1, |core| core.ipiq().process())
                .expect("core 1");
            assert_eq!(
                machine.ipiq().outstanding(),
                0,
                "the target runs each message before the next is sent"
            );
            let bound = bound.expect("the first send made the FIFO");
            assert!(
                bound * 2 <= capacity,
                "send {i}: the sender's bound says {bound} of {capacity} slots are used, \
                 with at most one queued"
            );
        }
        machine.shutdown();
    }
}
