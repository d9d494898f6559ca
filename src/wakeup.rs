//! Wake-ups: the `npoll` handshake that decides whether a send costs an IPI, and the `halted`
//! handshake that lets lazy senders and TLB shootdowns leave a halted core alone.
//!
//! # The `npoll` handshake
//! Each core has one `npoll` flag. A sender publishes its message (`windex`), then (after a
//! SeqCst fence) tests the target's `npoll`: if it was clear the sender sets it and sends the IPI,
//! otherwise the IPI is *avoided*, because the target is already signalled or draining. The target
//! sets `npoll` when it starts draining, and before it stops it clears `npoll`, fences (SeqCst) and
//! scans every queue once more. Both sides run "store; SeqCst fence; load", so at least one of them
//! sees the other's store: either the target's last scan finds the message, or the sender finds
//! `npoll` clear and sends an IPI. Hence any number of senders cause at most one IPI in flight per
//! target (I3) and no message is left behind (I2). The loom models in `tests/loom.rs` check this.
//! The target writes `npoll` only when it starts or stops (`drain.rs`): while its passes find
//! work, and while an idle loop polls through [`Ipiq::poll`], the flag stays set and senders
//! streaming into it only read a line nobody writes.
//!
//! # The `halted` handshake
//! The idle loop's last step before `hlt` ([`Ipiq::prepare_halt`]) sets `halted`, fences and
//! looks at its queues once more; a lazy sender ([`Ipiq::try_send_lazy`]) publishes, fences and
//! takes `halted` (an RMW, so one sender wakes a halt). Either the core sees the message and
//! does not halt, or the sender sees the halt and sends the IPI. A TLB shootdown runs the same
//! handshake against a deferral count (`tlb.rs`): a halted core gets no IPI and flushes in
//! [`Ipiq::end_halt`] / [`Ipiq::interrupt_entry`] before it runs anything.
//!
//! # Why every write is a read-modify-write
//! Both flags are written only through [`WakeFlag`]'s `set` and `clear`, which swap. RMWs on
//! one location form a single chain in which each reads the last value: a target's clear can
//! never be ordered before a sender's set that it did not see, which the proofs above assume
//! (loom, like C11, orders a plain store against RMWs it did not observe more loosely).

use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};
use crate::sync::{fence, AtomicBool, CachePadded, Ordering};
use crate::CpuSet;

/// A wake-up flag (`npoll` or `halted`) on a cache line pair of its own. Reads are Relaxed loads;
/// writes are Relaxed swaps only (see the module docs): the ordering the handshakes need comes
/// from the SeqCst fences each side runs between its publishing store and its look at the other
/// side, never from the flag's own accesses.
#[derive(Debug, Default)]
pub(crate) struct WakeFlag(CachePadded<AtomicBool>);

impl WakeFlag {
    /// A clear flag.
    pub(crate) fn new() -> Self {
        Self(CachePadded(AtomicBool::new(false)))
    }

    /// Whether the flag is set. Relaxed: see the type's docs.
    #[inline]
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the flag (an RMW); returns whether it was already set. Relaxed: see the type's docs.
    #[inline]
    pub(crate) fn set(&self) -> bool {
        self.0.swap(true, Ordering::Relaxed)
    }

    /// Clears the flag (an RMW); returns whether it was set. Relaxed: see the type's docs.
    #[inline]
    pub(crate) fn clear(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

impl<P: Platform> Ipiq<P> {
    /// Wakes `target` after a message was published: IPI unless `npoll` says it is already
    /// signalled or draining.
    #[inline]
    pub(crate) fn signal(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: the store-load barrier between our `windex` store and our `npoll` load
        // (see the module docs; the target runs the mirror image).
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, false);
    }

    /// Wakes `target` after a lazy or passive message was published, only if it is halted:
    /// the same store; SeqCst fence; load handshake as `npoll`'s, against the target's
    /// `prepare_halt` (which sets `halted`, fences, then looks at its queues), so either the
    /// target sees the message and does not halt, or we see `halted` and wake it. Returns
    /// whether it sent the IPI. A halted core may have stopped its tick (the kernel's idle
    /// loop does), so this is also what keeps a passive message from waiting for a tick that
    /// never comes.
    ///
    /// Context: a send, interrupts disabled by the caller.
    pub(crate) fn signal_if_halted(&self, me: CpuId, target: CpuId) -> bool {
        // SeqCst fence: the store-load barrier between our `windex` store and our `halted` load.
        fence(Ordering::SeqCst);
        let halted = &self.cpus[target].halted;
        // Relaxed load, then swap: ordering comes from the fence above; the swap makes one
        // sender the one that wakes this halt (the seed's and Hermit's "take the halt state").
        let wake = halted.is_set() && halted.clear();
        if wake {
            self.signal_fenced(me, target, false);
        }
        wake
    }

    /// [`Ipiq::signal`] after the caller's fence. `force` sends the IPI whatever `npoll` says
    /// (watchdogs: the previous IPI may have been lost).
    pub(crate) fn signal_fenced(&self, me: CpuId, target: CpuId, force: bool) {
        let npoll = &self.cpus[target].npoll;
        // Relaxed load, then swap only if clear: ordering comes from the caller's SeqCst fence.
        // Reading `true` is safe to act on: whoever set it either sends an IPI after setting it or
        // is the target itself, which scans again after clearing it.
        let avoid =
            self.ipi_avoidance.load(Ordering::Relaxed) && !force && (npoll.is_set() || npoll.set());
        if avoid {
            self.count(me, |c| &c.avoided, 1);
        } else {
            // Relaxed: as above; set (by RMW, see `drain`) so later senders skip their IPI.
            npoll.set();
            self.count(me, |c| &c.ipis, 1);
            self.platform.send_ipi(target);
        }
    }

    /// Wakes every core of `targets` after messages were published to them: one store-load
    /// barrier for all (see `signal`), then an IPI to each that is not already signalled or
    /// draining. Interrupts are disabled by the caller.
    pub(crate) fn signal_all(&self, me: CpuId, targets: &CpuSet) {
        if targets.is_empty() {
            return;
        }
        // SeqCst fence: as in `signal`, once for all targets.
        fence(Ordering::SeqCst);
        for target in targets.iter() {
            self.signal_fenced(me, target, false);
        }
    }

    /// A watchdog's re-sent IPI: the previous one may have been lost, so it goes out whatever
    /// `npoll` says. Interrupts are disabled by the caller.
    pub(crate) fn resignal(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: as in `signal`, between what we published and the IPI.
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, true);
    }
}
