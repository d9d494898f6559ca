//! Wake-ups: the `npoll` handshake that decides whether a send costs an IPI, and the `halted`
//! handshake that lets lazy senders and TLB shootdowns leave a halted core alone.
//!
//! # The `npoll` handshake
//! Each core has one `npoll` flag. A sender publishes its message (the slot's sequence word), then (after a
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
//! # The `tick_stopped` handshake
//! The tick exists for passive messages. A core stops it ([`Ipiq::prepare_tick_stop`]: at a
//! tick that drained nothing, or before it halts) by setting `tick_stopped`, fencing and looking
//! at its queues once more; a passive sender publishes, fences and looks at `tick_stopped` (and
//! `halted`). Either the core sees the message and keeps its tick, or the sender sees the mark
//! and sends the IPI, setting `tick_wanted` first so the core runs its tick again
//! ([`Ipiq::take_tick_request`]): the passive messages that follow ride the tick, not IPIs.
//!
//! # Why every write is a read-modify-write
//! Every such flag is written only through [`WakeFlag`]'s `set` and `clear`, which swap. RMWs on
//! one location form a single chain in which each reads the last value: a target's clear can
//! never be ordered before a sender's set that it did not see, which the proofs above assume
//! (loom, like C11, orders a plain store against RMWs it did not observe more loosely).

use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};
use crate::sync::{fence, AtomicBool, CachePadded, Ordering};
use crate::CpuSet;

/// Whether a wake-up may be avoided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ipi {
    /// Skip the IPI when `npoll` says the target is already signalled or draining.
    UnlessSignalled,
    /// Send it whatever `npoll` says (a watchdog's re-send: the last one may have been lost).
    Always,
}

/// A wake-up flag (`npoll`, `halted`, `tick_stopped`, `tick_wanted`) on a cache line pair of its
/// own. Reads are Relaxed loads; writes are Relaxed swaps only (see the module docs): the
/// ordering the handshakes need comes from the SeqCst fences each side runs between its
/// publishing store and its look at the other side, never from the flag's own accesses.
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
        // SeqCst fence: the store-load barrier between our message's publication (the slot's word) and our `npoll` load
        // (see the module docs; the target runs the mirror image).
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, Ipi::UnlessSignalled);
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
        // SeqCst fence: the store-load barrier between our message's publication (the slot's word) and our `halted` load.
        fence(Ordering::SeqCst);
        let halted = &self.cpus[target].halted;
        // Relaxed load, then swap: ordering comes from the fence above; the swap makes one
        // sender the one that wakes this halt (the seed's and Hermit's "take the halt state").
        let wake = halted.is_set() && halted.clear();
        if wake {
            self.signal_fenced(me, target, Ipi::UnlessSignalled);
        }
        wake
    }

    /// Wakes `target` after a passive message was published, only if nothing else would drain
    /// it: the target is halted (as [`Ipiq::signal_if_halted`]) or its tick has stopped
    /// (`tick_stopped`, set by the target's [`Ipiq::prepare_tick_stop`], which then fences and
    /// looks at its queues: the same store; SeqCst fence; load handshake, so either the target
    /// sees the message and keeps its tick, or we see the flag and send the IPI). Then the
    /// target is also asked to run its tick again (`tick_wanted`): more passive messages may
    /// follow, and they should ride the tick, not IPIs. Returns whether it woke the target (an
    /// IPI, or one avoided because the target is already signalled or draining).
    ///
    /// Context: a passive send, interrupts disabled by the caller.
    pub(crate) fn signal_if_unattended(&self, me: CpuId, target: CpuId) -> bool {
        // SeqCst fence: the store-load barrier between our message's publication (the slot's word) and our loads of
        // `halted` and `tick_stopped`.
        fence(Ordering::SeqCst);
        let cpu = &self.cpus[target];
        // Relaxed loads, and RMWs where we act: ordering comes from the fence above. Taking
        // `halted` makes one sender the one that wakes the halt.
        let halted = cpu.halted.is_set() && cpu.halted.clear();
        if !halted && !cpu.tick_stopped.is_set() {
            return false;
        }
        // Relaxed RMW before the IPI: a request the target misses leaves its tick stopped, and
        // the next passive send asks again; the message itself is drained by the IPI's drain.
        cpu.tick_wanted.set();
        self.signal_fenced(me, target, Ipi::UnlessSignalled);
        true
    }

    /// [`Ipiq::signal`] after the caller's fence: an IPI unless `when` allows avoiding it and
    /// `npoll` says the target is already signalled or draining.
    pub(crate) fn signal_fenced(&self, me: CpuId, target: CpuId, when: Ipi) {
        if self.claim_ipi(me, target, when) {
            self.count(me, |c| &c.ipis, 1);
            self.count(me, |c| &c.icr_unicast, 1);
            self.platform.send_ipi(target);
        }
    }

    /// The sender's side of the `npoll` handshake for one target, after the caller's SeqCst
    /// fence, without sending: `true` if `target` needs an IPI (its `npoll` was clear, avoidance
    /// is off, or `when` is [`Ipi::Always`]), in which case `npoll` is now set and the caller
    /// sends it; `false` (counted as avoided) if it is already signalled or draining.
    ///
    /// Context: interrupts disabled, after the caller's SeqCst fence.
    fn claim_ipi(&self, me: CpuId, target: CpuId, when: Ipi) -> bool {
        let npoll = &self.cpus[target].npoll;
        if self.ipi_avoidance.load(Ordering::Relaxed) && when == Ipi::UnlessSignalled {
            // Relaxed load, then swap only if clear: ordering comes from the caller's SeqCst
            // fence. Reading `true` is safe to act on: whoever set it either sends an IPI after
            // setting it or is the target itself, which scans again after clearing it. A swap
            // that finds it clear has set it: ours is the IPI (one RMW, not a second `set`).
            if npoll.is_set() || npoll.set() {
                self.count(me, |c| &c.avoided, 1);
                return false;
            }
            return true;
        }
        // Relaxed RMW: as above; set so later senders skip their IPI. Every `npoll` claimed is
        // set before the IPI goes out: a target that wakes early finds the flag set and clears
        // it only after its last scan.
        npoll.set();
        true
    }

    /// Wakes every core of `targets` after messages were published to them: one store-load barrier for all (see `signal`), then the `npoll` handshake for each
    /// target, and one [`Platform::send_ipi_many`] for the targets that need an IPI, so the
    /// platform can reach them in as few hardware writes as it can (on x86_64, one ICR write for
    /// every other core, one per x2APIC cluster otherwise). `ipis` counts those targets,
    /// `icr_writes` the writes the platform reports.
    ///
    /// Context: interrupts disabled by the caller (`send_many`, cpusync, shootdowns); thread or
    /// interrupt context, including from inside a message function; never blocks.
    pub(crate) fn signal_all(&self, me: CpuId, targets: &CpuSet) {
        if targets.is_empty() {
            return;
        }
        // SeqCst fence: as in `signal`, once for all targets.
        fence(Ordering::SeqCst);
        let mut interrupt = CpuSet::new();
        for target in targets
            .iter()
            .filter(|&t| self.claim_ipi(me, t, Ipi::UnlessSignalled))
        {
            // Never fails: `target` came from a `CpuSet`.
            let _ = interrupt.insert(target);
        }
        if interrupt.is_empty() {
            return;
        }
        self.count(me, |c| &c.ipis, interrupt.len() as u64);
        let writes = self.platform.send_ipi_many(&interrupt);
        self.count(me, |c| &c.icr_writes, writes as u64);
    }

    /// A watchdog's re-sent IPI: the previous one may have been lost, so it goes out whatever
    /// `npoll` says. Interrupts are disabled by the caller.
    pub(crate) fn resignal(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: as in `signal`, between what we published and the IPI.
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, Ipi::Always);
    }
}
