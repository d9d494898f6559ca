//! Sequence numbers and waiting: the seed's `lwkt_seq_ipiq` and `lwkt_wait_ipiq`
//! ([`Ipiq::seq`], [`Ipiq::wait`]), and the read-only progress queries [`Ipiq::outstanding`]
//! and [`Ipiq::is_done`].

use crate::fifo::Fifo;
use crate::irq::{IrqOff, IrqsOff};
use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};
use crate::status::Waiting;
use crate::sync::Ordering;
use crate::watchdog::Patience;
use crate::Error;
use crate::Seq;

impl<P: Platform> Ipiq<P> {
    /// The sequence number of the last message the calling core queued for `target` (the seed's
    /// `lwkt_seq_ipiq`).
    pub fn seq(&self, target: CpuId) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = IrqOff::new(&self.platform);
        let irqs = irq.token();
        let me = self.platform.current_cpu();
        let seq = self.check_cpu(me).map(|()| {
            let queued = self.fifo_between(me, target).map_or(0, Fifo::windex);
            Seq(queued + self.spill_len(me, target, irqs) as u64)
        });
        seq
    }

    /// Waits until `target` has run the messages the calling core queued for it up to `seq`
    /// (the seed's `lwkt_wait_ipiq`, I5), draining the calling core's own queues meanwhile.
    ///
    /// What "has run" means depends on where the wait is issued:
    /// - **From thread context** (no message function on the calling core's stack), exactly:
    ///   `target` has *returned* from every message up to `seq`, even when its message functions
    ///   nest. A nested drain on the target that runs later messages while an older one is still
    ///   on its stack does not count until that older one returns too.
    /// - **From inside a message function**, the seed's meaning: `target` has started every
    ///   message up to `seq`, and each has returned unless it is still on the target's stack
    ///   beneath a nested drain (a wait, a full FIFO, a cpusync) that ran later ones. Waiting
    ///   there for the outermost function would deadlock cycles the seed completes: two message
    ///   functions on two cores, each waiting for a message it sent to the other, each run by the
    ///   other's nested drain beneath the other's waiting function, which cannot return before
    ///   its own wait does. A message function that needs an older message's function to have
    ///   *returned* must not rely on `wait` for it.
    ///
    /// A watchdog re-sends the IPI, logs a warning, and past [`crate::Config::timeout_ns`] returns
    /// [`Error::TimedOut`] instead of hanging. A `seq` this core never issued to `target` is
    /// [`Error::InvalidSequence`]; an old one returns at once.
    ///
    /// Context: any, interrupts on or off; interrupts are disabled inside. Spins (serving the
    /// calling core's queues) until done; may be re-entered from the message functions it runs.
    pub fn wait(&self, target: CpuId, seq: Seq) -> Result<(), Error> {
        self.check_cpu(target)?;
        let irq = IrqOff::new(&self.platform);
        let me = self.platform.current_cpu();
        self.check_cpu(me)
            .and_then(|()| self.wait_inner(me, target, seq, irq.token()))
    }

    /// [`Ipiq::wait`] on core `me` (served, interrupts disabled by the caller).
    fn wait_inner(
        &self,
        me: CpuId,
        target: CpuId,
        seq: Seq,
        irqs: IrqsOff<'_>,
    ) -> Result<(), Error> {
        if target == me || seq.0 == 0 {
            return Ok(());
        }
        let Some(fifo) = self.fifo_between(me, target) else {
            return Err(Error::InvalidSequence);
        };
        // Queued or still spilled: everything this core ever accepted for `target`.
        if seq.0 > fifo.issued() {
            return Err(Error::InvalidSequence);
        }
        // Relaxed: our own nesting depth, written only by this core (interrupts are off).
        let in_message = self.cpus[me].own.running.load(Ordering::Relaxed) > 0;
        let reached = || {
            if in_message {
                fifo.xindex_in_message()
            } else {
                fifo.xindex()
            }
        };
        if reached() >= seq.0 {
            return Ok(());
        }
        let mut watchdog = self.watchdog(
            me,
            Waiting::Sequence,
            Some(target),
            Patience::Bounded,
            reached(),
        );
        while reached() < seq.0 {
            self.serve_own(me, irqs);
            if reached() >= seq.0 {
                break;
            }
            watchdog.check(reached(), || core::iter::once(target))?;
            self.platform.relax();
        }
        Ok(())
    }

    /// Messages accepted (queued in a FIFO or still in a sender's spill list) whose function
    /// has not yet returned: zero once the machine is quiet, when nothing accepted was lost.
    ///
    /// Any thread may call it, a core or not; it only reads. Per FIFO it reads the done index
    /// first and the accepted count after it: both only grow and done never passes accepted, so
    /// each term is at least the FIFO's true count at either read and at most what the FIFO
    /// ever accepted. Hence the sum never exceeds the messages ever accepted, and it is zero
    /// only if every message accepted before the call began has returned.
    pub fn outstanding(&self) -> u64 {
        let mut total = 0;
        for target in 0..self.cpus.len() {
            self.any_incoming(target, |fifo| {
                // xindex first (see `fifo.rs`): the later `issued` is never below it.
                let done = fifo.xindex();
                total += fifo.issued() - done;
                false
            });
        }
        total
    }

    /// Whether `sender -> target` has returned from everything up to `seq` (no waiting).
    pub fn is_done(&self, sender: CpuId, target: CpuId, seq: Seq) -> Result<bool, Error> {
        self.check_cpu(sender)?;
        self.check_cpu(target)?;
        Ok(sender == target
            || seq.0 == 0
            || self
                .fifo_between(sender, target)
                .is_some_and(|f| f.xindex() >= seq.0))
    }
}
