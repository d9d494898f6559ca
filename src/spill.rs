//! Spill lists: where a send from inside a message function goes when its FIFO is full.
//!
//! Blocking there would pin the function on the stack while a nested drain runs further
//! functions that block in turn: under a flood the nesting grows without bound (a kernel stack
//! overflow) and the outermost wait can never finish. So such a send appends to its core's spill
//! list for that target (kept per target, in send order), and the drain loop pushes the list
//! into the FIFO as room appears. A later send to the same target queues behind the list, so
//! per-sender order holds (I1). Every list is touched only by its own core with interrupts
//! disabled (`CoreLocal`); other cores count spilled messages through the FIFO's `spill_seq`.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::irq::IrqsOff;
use crate::matrix::Ipiq;
use crate::message::Message;
use crate::platform::{CpuId, Platform};
use crate::sync::Ordering;
use crate::Seq;

impl<P: Platform> Ipiq<P> {
    /// Messages `me` holds in its spill list for `target`.
    pub(crate) fn spill_len(&self, me: CpuId, target: CpuId, irqs: IrqsOff<'_>) -> usize {
        // Relaxed: core-local; the map is looked at only when something is spilled.
        if self.cpus[me].side.spilled.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // SAFETY: our own core (interrupts are disabled: `irqs`); the closure does not call
        // into ipiq.
        unsafe {
            self.cpus[me]
                .spill
                .with(irqs, |spill| spill.get(&target).map_or(0, VecDeque::len))
        }
    }

    /// Appends `message` to `me`'s spill list for `target`; returns the sequence number it will
    /// have once pushed (the FIFO's write index plus its place in the list).
    pub(crate) fn spill_push(
        &self,
        me: CpuId,
        target: CpuId,
        message: Message<P>,
        signal: bool,
        irqs: IrqsOff<'_>,
    ) -> Seq {
        // SAFETY: as in `spill_len`.
        let place = unsafe {
            self.cpus[me].spill.with(irqs, |spill| {
                let list = spill.entry(target).or_default();
                list.push_back(message);
                list.len()
            })
        };
        let spilled = &self.cpus[me].side.spilled;
        // Relaxed load and store: only this core writes it (see `spilled`).
        spilled.store(spilled.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.count(me, |c| &c.sent, 1);
        self.count(me, |c| &c.spilled, 1);
        if signal {
            // The FIFO is full: make sure the target is draining it.
            self.signal(me, target);
        }
        let fifo = self.fifo_to(me, target);
        let seq = fifo.windex() + place as u64;
        fifo.note_spilled(seq);
        Seq(seq)
    }

    /// Pushes what fits of `me`'s spill list for `target` into the FIFO; returns how many
    /// messages are still spilled for that target.
    pub(crate) fn flush_spill(&self, me: CpuId, target: CpuId, irqs: IrqsOff<'_>) -> usize {
        let fifo = self.fifo_to(me, target);
        // SAFETY: as in `spill_len`; `Fifo::push` does not call into ipiq.
        let (pushed, left) = unsafe {
            self.cpus[me].spill.with(irqs, |spill| {
                let Some(list) = spill.get_mut(&target) else {
                    return (0, 0);
                };
                let mut pushed = 0u64;
                while let Some(&message) = list.front() {
                    if fifo.push(message).is_none() {
                        break;
                    }
                    list.pop_front();
                    pushed += 1;
                }
                let left = list.len();
                if left == 0 {
                    spill.remove(&target);
                }
                (pushed, left)
            })
        };
        if pushed > 0 {
            let spilled = &self.cpus[me].side.spilled;
            // Relaxed load and store: only this core writes it.
            spilled.store(spilled.load(Ordering::Relaxed) - pushed, Ordering::Relaxed);
            self.signal(me, target);
        }
        left
    }

    /// Flushes every spill list of `me`; returns the targets that still have spilled messages.
    pub(crate) fn flush_spills(&self, me: CpuId, irqs: IrqsOff<'_>) -> Vec<CpuId> {
        // Relaxed: core-local.
        if self.cpus[me].side.spilled.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        // SAFETY: as in `spill_len`.
        let targets: Vec<CpuId> = unsafe {
            self.cpus[me]
                .spill
                .with(irqs, |spill| spill.keys().copied().collect())
        };
        targets
            .into_iter()
            .filter(|&t| self.flush_spill(me, t, irqs) > 0)
            .collect()
    }
}
