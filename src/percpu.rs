//! Per-core state: what each core owns as a target ([`PerCpu`]), and [`CoreLocal`], the cell for
//! what only the core itself may touch.

use alloc::collections::VecDeque;

use hashbrown::HashMap;

use crate::cpusync::{zero_words, CORE_WORDS};
use crate::hold::HoldList;
use crate::irq::IrqsOff;
use crate::message::Message;
use crate::platform::{CpuId, Platform};
use crate::stats::Counters;
use crate::status::CoreDiag;
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, CachePadded, UnsafeCell};
use crate::tlb::TlbState;
use crate::wakeup::WakeFlag;

/// A value only its own core touches, with interrupts disabled: reachable only with an
/// [`IrqsOff`] proof.
pub(crate) struct CoreLocal<T>(UnsafeCell<T>);

impl<T> CoreLocal<T> {
    /// Runs `f` on the value. `_irqs` proves interrupts are disabled on the calling core, so no
    /// interrupt handler on this core can reach the value meanwhile.
    ///
    /// # Safety
    /// The caller runs on the core that owns the value, and `f` does not call back into ipiq
    /// (so no second `&mut` to the value exists while `f` runs).
    pub(crate) unsafe fn with<R>(&self, _irqs: IrqsOff<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: exclusive per the function's contract.
        self.0.with_mut(|value| f(unsafe { &mut *value }))
    }
}

/// One core's state as a target (plus its counters as a sender). The fields this core writes
/// all the time (`own`, `side`, `counters`) sit on cache lines of their own, away from
/// what senders read on every send (`online`, `npoll`).
pub(crate) struct PerCpu<P: Platform> {
    /// Set by a sender that signalled this core, and by this core while it drains; cleared by this
    /// core before its final scan (`wakeup.rs`).
    pub(crate) npoll: WakeFlag,
    /// Set by this core's idle loop just before it halts ([`Ipiq::prepare_halt`]); cleared by
    /// the first lazy sender that sees it (which then wakes the core) or by the core when it stops
    /// halting ([`Ipiq::end_halt`]) (`wakeup.rs`).
    pub(crate) halted: WakeFlag,
    /// Set by this core when its periodic tick stops ([`Ipiq::prepare_tick_stop`]: nothing was
    /// queued, or it halts), cleared when the tick runs again ([`Ipiq::take_tick_request`]).
    /// While it is set a passive sender wakes the core with an IPI (`wakeup.rs`).
    pub(crate) tick_stopped: WakeFlag,
    /// Set by a passive sender that woke this core because its tick had stopped: more passive
    /// messages may follow, so the core should run its tick again. Taken by this core
    /// ([`Ipiq::take_tick_request`]).
    pub(crate) tick_wanted: WakeFlag,
    /// Bit map of the senders whose FIFO into this core exists (`Ipiq::incoming`), so a drain
    /// visits only live FIFOs (the seed's `gd_ipimask`). Bits are set (Release) by senders,
    /// never cleared. Inline, as `CoreBits` is (one allocation less per core); the first
    /// `Ipiq::sender_words` are used.
    pub(crate) senders: [AtomicU64; CORE_WORDS],
    /// Whether the core has been brought up ([`Ipiq::cpu_online`]).
    pub(crate) online: AtomicBool,
    /// Messages this core queued for a target whose FIFO was full while it ran a message
    /// function, in send order per target; pushed into the FIFO as room appears. Touched only by
    /// this core.
    pub(crate) spill: CoreLocal<HashMap<CpuId, VecDeque<Message<P>>>>,
    /// What a drain serves besides the queues (its holds, the count of its spilled messages),
    /// touched only by this core: on a line of their own, read together by `has_side_work`.
    pub(crate) side: CachePadded<SideWork<P>>,
    /// The core's own nesting depth and poll record, written and read only by the core itself
    /// (one padded line: the drain and the message path touch both, nobody else does).
    pub(crate) own: CachePadded<OwnState>,
    /// This core's statistics.
    pub(crate) counters: CachePadded<Counters>,
    /// What this core is doing, for diagnostics (`status.rs`). Written only by this core.
    pub(crate) diag: CachePadded<CoreDiag>,
    /// Deferred TLB flushes for this core and its own shootdown as a master (`tlb.rs`).
    pub(crate) tlb: TlbState,
}

/// What only the core itself writes and reads on its message and drain paths ([`PerCpu::own`]).
pub(crate) struct OwnState {
    /// How many message functions are running on this core's stack (nesting depth). Touched
    /// only by this core; atomic only so that the type is `Sync` without unsafe.
    pub(crate) running: AtomicUsize,
    /// Whether `npoll` is set on this core's own account, by its polls: set when a poll
    /// ([`Ipiq::poll`], `drain_polled`, or the general drain it falls back to) finds `npoll`
    /// clear and sets it itself (its swap read clear), cleared whenever the core clears `npoll`
    /// (`Ipiq::unsignal`). While it holds, no sender has claimed an IPI since the core's last
    /// clear: a sender claims one only by setting a clear `npoll` (`wakeup.rs`; a watchdog's
    /// re-send is the exception, and assumes the last IPI lost). So [`Ipiq::process`] may run
    /// the exit handshake before it looks at the queues: a sender that finds the flag clear in
    /// between sends the only IPI in flight. A flag a sender set (an interrupt-driven drain)
    /// must instead stay set until the drain has run what it finds (I3), so `process` looks
    /// first there. Written and read only by this core with interrupts disabled (Relaxed;
    /// atomic only so that the type is `Sync` without unsafe); `Ipiq::core_status` reports it
    /// as `polling`.
    pub(crate) polled: AtomicBool,
}

/// The work a core's drain has besides its queues, touched only by the core itself: one padded
/// line pair (128 bytes: the hold list 120, the count 8), so the inline hold list takes the
/// count's padding and `PerCpu` does not grow.
pub(crate) struct SideWork<P: Platform> {
    /// What holds this core (the cpusyncs it is held in), polled at the end of each drain (the
    /// seed's cpusync requeue FIFO, `hold.rs`): inline room for a few, no allocation unless
    /// more hold the core at once.
    pub(crate) holds: CoreLocal<HoldList<P>>,
    /// How many messages `spill` holds (Relaxed: written and read only by this core; other
    /// cores count spilled messages through each FIFO's `spill_seq`, see `Ipiq::outstanding`).
    pub(crate) spilled: AtomicU64,
}

impl<P: Platform> PerCpu<P> {
    /// A core's state on a machine of `ncpu` cores: offline, no FIFO yet.
    pub(crate) fn new(ncpu: usize) -> Self {
        Self {
            npoll: WakeFlag::new(),
            halted: WakeFlag::new(),
            tick_stopped: WakeFlag::new(),
            tick_wanted: WakeFlag::new(),
            senders: zero_words(),
            online: AtomicBool::new(false),
            spill: CoreLocal(UnsafeCell::new(HashMap::new())),
            side: CachePadded(SideWork {
                // Inline room for a few nested rendezvous: a target entering a cpusync
                // (interrupts off, possibly while another core holds the allocator's lock to
                // lead that very cpusync) then never allocates, and an idle core keeps no
                // allocation for it.
                holds: CoreLocal(UnsafeCell::new(HoldList::default())),
                spilled: AtomicU64::new(0),
            }),
            own: CachePadded(OwnState {
                running: AtomicUsize::new(0),
                polled: AtomicBool::new(false),
            }),
            counters: CachePadded(Counters::default()),
            diag: CachePadded(CoreDiag::default()),
            tlb: TlbState::new(ncpu),
        }
    }
}

#[cfg(all(test, feature = "std", not(ipiq_loom)))]
mod tests {
    use super::*;
    use crate::host::HostPlatform;

    /// The hold list and the spilled count fill one padded line pair, no more.
    #[test]
    fn side_work_fits_one_line_pair() {
        assert_eq!(
            core::mem::size_of::<CachePadded<SideWork<HostPlatform>>>(),
            128
        );
    }
}
