//! The simulated cores' interrupt state: where each core's thread is ([`Place`]), its per-core
//! state ([`CoreState`]: the IRR bit, the virtual interrupt flag, counters), the virtual flag's
//! save and restore, and [`InterruptsOffAlloc`] for preemptive binaries.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use super::{preempt, CORE};
use crate::platform::IrqState;
use crate::sync::CachePadded;

/// Where a core's thread is, for the interrupt statistics and the halt's wake-up.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Place {
    /// Running a task's code.
    Work,
    /// At a safe point: the core loop between tasks, an interrupt point, the idle loop.
    SafePoint,
    /// Halted (sleeping until an interrupt).
    Halted,
}

/// Per simulated core.
#[derive(Default)]
pub(super) struct CoreState {
    /// Set (Release) by `send_ipi`, taken (Acquire swap) by the core: the IRR bit.
    pub(super) pending: CachePadded<AtomicBool>,
    /// The timer's request bit (preemptive mode): set by the machine's timer thread, taken
    /// (Acquire swap) by the core.
    pub(super) tick_pending: AtomicBool,
    /// The virtual interrupt flag, `true` while interrupts are off. Written only by the core's
    /// own thread: `irq_save`/`irq_restore`, and its interrupt handler, which leaves it as it
    /// found it.
    pub(super) irq_off: AtomicBool,
    /// Whether the machine is preemptive (fixed at start).
    pub(super) preemptive: bool,
    /// A [`Place`], written by the core's thread only.
    pub(super) place: AtomicU8,
    /// The core's thread, for unparking.
    pub(super) thread: OnceLock<Thread>,
    /// The core's interrupt line (preemptive mode) and its counters.
    pub(super) line: preempt::IrqLine,
    /// TLB flush counters (ranged calls, pages, full flushes), for tests.
    pub(super) range_flushes: AtomicU64,
    pub(super) pages_flushed: AtomicU64,
    pub(super) full_flushes: AtomicU64,
    /// IPIs that reached this core. Every sender's `send_ipi` adds to it, so it has a line of
    /// its own: beside `irq_off`, which the core writes on every ipiq call, each IPI would take
    /// that line from the core.
    pub(super) ipis_delivered: CachePadded<AtomicU64>,
    /// `send_ipi_many` calls this core made (one per multicast that needed an IPI).
    pub(super) multicast_calls: AtomicU64,
    /// Times this core's interrupts went from disabled to enabled (`irq_restore`). Written only
    /// by the core's own thread outside its interrupt handler (see `local_irq_restore`).
    pub(super) irq_enables: AtomicU64,
}

/// Marks where a core's thread is until dropped (then back to where it was).
pub(super) struct AtPlace<'a> {
    pub(super) core: &'a CoreState,
    pub(super) previous: u8,
}

impl<'a> AtPlace<'a> {
    pub(super) fn new(core: &'a CoreState, place: Place) -> Self {
        // Relaxed: written and read only by this thread and its own signal handler; it feeds
        // statistics and a wake-up hint, never a correctness decision.
        let previous = core.place.load(Ordering::Relaxed);
        core.place.store(place as u8, Ordering::Relaxed);
        Self { core, previous }
    }
}

impl Drop for AtPlace<'_> {
    fn drop(&mut self) {
        // Relaxed: see `AtPlace::new`.
        self.core.place.store(self.previous, Ordering::Relaxed);
    }
}

/// Clears the calling core's virtual interrupt flag and returns its previous state. On a thread
/// that is not a simulated core it does nothing (and reports interrupts on).
///
/// Context: any thread, the core's own interrupt handler included; never blocks.
#[inline]
pub(super) fn local_irq_save() -> IrqState {
    let core = CORE.with(Cell::get);
    if core.is_null() {
        return IrqState(true);
    }
    // SAFETY: a non-null CORE points into the platform of the machine this thread serves, which
    // the thread keeps alive (its Arc) until after it cleared CORE.
    let core = unsafe { &*core };
    // Relaxed load and store, no RMW: only this thread writes the flag, and its handler puts
    // back what it found, so the pair cannot lose an update. The compiler fence (a signal
    // fence) keeps the critical section after the store as the handler sees it.
    let was_off = core.irq_off.load(Ordering::Relaxed);
    core.irq_off.store(true, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
    IrqState(!was_off)
}

/// Restores the calling core's virtual interrupt flag. Turning it on in preemptive mode takes a
/// request that arrived while it was off (as `sti` does), here, before returning.
///
/// Context: any thread; with `state` from the matching [`local_irq_save`] on this thread.
#[inline]
pub(super) fn local_irq_restore(state: IrqState) {
    let core = CORE.with(Cell::get);
    if core.is_null() {
        return;
    }
    // SAFETY: as in `local_irq_save`.
    let core = unsafe { &*core };
    // Compiler fences around the Relaxed store: the critical section stays before it, the
    // pending check after it (see `local_irq_save`).
    compiler_fence(Ordering::SeqCst);
    // Relaxed: only this thread writes the flag (see `local_irq_save`).
    let was_off = core.irq_off.load(Ordering::Relaxed);
    core.irq_off.store(!state.0, Ordering::Relaxed);
    if was_off && state.0 {
        // Relaxed load and store, not a locked RMW (a full barrier on x86, paid by every ipiq
        // call made with interrupts on): only this thread writes the count, and its interrupt
        // handler never does (it runs with the flag off, so its own restores never turn it
        // on), so no update is lost. A statistic, read by tests after the operation returned.
        let enables = &core.irq_enables;
        enables.store(enables.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
    if state.0 && core.preemptive {
        compiler_fence(Ordering::SeqCst);
        // Relaxed: a hint; the take itself is an Acquire swap. A request set after this load
        // comes with its own signal, which finds the flag on.
        if core.pending.load(Ordering::Relaxed) || core.tick_pending.load(Ordering::Relaxed) {
            preempt::take_on_restore(core);
        }
    }
}

/// How a simulated core took its interrupts in preemptive mode
/// ([`HostPlatform::interrupts`](super::HostPlatform::interrupts)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// Signals (IPIs and ticks) that reached the core's thread.
    pub signals: u64,
    /// Handler runs that took an IPI or a tick while the core ran task code, away from every
    /// safe point (neither inside an ipiq call nor at an interrupt point, idle loop or halt):
    /// the deliveries only preemption makes.
    pub preempted_work: u64,
    /// Handler runs that took a request at a safe point (interrupt point, idle loop, halt).
    pub at_safe_points: u64,
    /// Signals that found the core's virtual interrupt flag off: the request stayed pending.
    pub deferred: u64,
    /// Requests taken when `irq_restore` turned interrupts back on (as `sti` delivers them).
    pub on_restore: u64,
    /// Timer ticks taken.
    pub ticks: u64,
    /// Distinct instruction addresses at which the handler interrupted task code (at most 64
    /// are told apart; 0 where the target's signal context is not decoded: x86_64 Linux only).
    pub distinct_pcs: u64,
}

impl core::ops::AddAssign for Interrupts {
    fn add_assign(&mut self, other: Self) {
        self.signals += other.signals;
        self.preempted_work += other.preempted_work;
        self.at_safe_points += other.at_safe_points;
        self.deferred += other.deferred;
        self.on_restore += other.on_restore;
        self.ticks += other.ticks;
        self.distinct_pcs += other.distinct_pcs;
    }
}

/// A global allocator wrapper for preemptive host machines: turns the calling core's virtual
/// interrupt flag off around every allocation, so the interrupt handler never runs while this
/// thread is inside the allocator (the handler may allocate; interrupting the allocator's own
/// lock holder would deadlock, exactly the kernel's allocator-lock hazard). On threads that are
/// not simulated cores it only forwards. Install it in the binary that runs preemptive machines:
///
/// ```
/// use ipiq::host::InterruptsOffAlloc;
///
/// #[global_allocator]
/// static ALLOCATOR: InterruptsOffAlloc<std::alloc::System> = InterruptsOffAlloc(std::alloc::System);
/// # fn main() { let _ = vec![1, 2, 3]; }
/// ```
///
/// Context: any thread, any interrupt state. Turning interrupts back on takes a request that
/// arrived meanwhile (as `sti` does), after the inner allocator returned.
pub struct InterruptsOffAlloc<A>(pub A);

// SAFETY: every call forwards to the inner allocator with the same arguments and returns its
// result unchanged; the flag save/restore around it neither allocates nor touches the memory.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for InterruptsOffAlloc<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let irq = local_irq_save();
        // SAFETY: the caller's contract, forwarded.
        let ptr = unsafe { self.0.alloc(layout) };
        local_irq_restore(irq);
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        let irq = local_irq_save();
        // SAFETY: the caller's contract, forwarded.
        unsafe { self.0.dealloc(ptr, layout) };
        local_irq_restore(irq);
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let irq = local_irq_save();
        // SAFETY: the caller's contract, forwarded.
        let ptr = unsafe { self.0.alloc_zeroed(layout) };
        local_irq_restore(irq);
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let irq = local_irq_save();
        // SAFETY: the caller's contract, forwarded.
        let ptr = unsafe { self.0.realloc(ptr, layout, new_size) };
        local_irq_restore(irq);
        ptr
    }
}
