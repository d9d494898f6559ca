//! The host platform (feature `std`): OS threads stand in for cores, for tests, examples and
//! benchmarks.
//!
//! Each simulated core is a thread running a small kernel loop: it serves a pending IPI (by
//! calling [`Ipiq::process`]), runs the timer tick every [`HostConfig::tick`], runs tasks handed
//! to it with [`HostMachine::run_on`] / [`HostMachine::spawn_on`], and otherwise halts (sleeps).
//! An IPI sets the target's pending bit (its IRR bit) and unparks its thread. Each core has a
//! *virtual interrupt flag*, kept in its per-core state: [`Platform::irq_save`] clears it and
//! [`Platform::irq_restore`] puts it back, and every ipiq operation runs with it off.
//!
//! # When interrupts are taken ([`HostConfig::delivery`])
//! - [`IrqDelivery::SafePoints`] (the default): a task is kernel code with interrupts enabled
//!   only at its *safe points*: [`HostCore::interrupt_point`], [`HostCore::idle_until`], the
//!   halt of the core loop, and inside every ipiq call that spins (which drains the core's queues
//!   itself). Runs are repeatable and cheap; a task that never reaches a safe point is never
//!   interrupted.
//! - [`IrqDelivery::Preemptive`] (Linux): interrupts preempt the core wherever it is, as real
//!   ones do. An IPI, and every timer tick (sent by a timer thread of the machine), is a POSIX
//!   signal to the core's thread (`pthread_kill`, SIGURG); the handler runs [`Ipiq::process`]
//!   (or [`Ipiq::tick`]) at once when the core's virtual interrupt flag is on, with the flag off
//!   meanwhile, as an interrupt gate does; when the flag is off, the request stays pending and
//!   the `irq_restore` that turns the flag back on takes it, as `sti` does. Delayed IPIs (fault
//!   injection) are delivered by the timer thread too, so nothing waits for a core to spin. The
//!   safe points still take pending interrupts. What the handler touches, and why that is sound,
//!   is written out in the `preempt` module (`src/host/preempt.rs`); in short: two `const`
//!   thread-locals with no destructor (static TLS, no lazy initialisation), the core's atomics,
//!   and ipiq's own interrupt-context code, which is safe to enter whenever the interrupted
//!   code had interrupts on. The binary must use [`InterruptsOffAlloc`] as its global allocator
//!   (the handler may allocate, so the allocator's lock, like every lock interrupt context
//!   takes, is taken with interrupts off). [`HostPlatform::interrupts`] counts where the
//!   interrupts landed (in task code, at safe points, deferred, taken at `irq_restore`), and at
//!   how many distinct instruction addresses task code was interrupted.
//!
//! Multicasts ([`Platform::send_ipi_many`]): each target is delivered as by
//! [`Platform::send_ipi`]; the reported write count models the x86 platform's all-excluding-self
//! shorthand (a set of every core but the caller is one write) and otherwise one write per
//! target (no cluster destinations). [`HostPlatform::multicast_calls`] counts the calls.
//!
//! Fault injection: [`HostConfig::drop_ipi_per_mille`] of the IPIs vanish and
//! [`HostConfig::delay_ipi_per_mille`] arrive only after [`HostConfig::ipi_delay`]. Lost IPIs are
//! recovered by the tick and the watchdogs, as on hardware that misbehaves.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use crate::platform::{CpuId, IrqState, Platform};
use crate::sync::CachePadded;
use crate::{Config, Error, Ipiq};

#[cfg(target_os = "linux")]
mod preempt;

/// The preemptive mode needs POSIX signals as this module uses them (Linux); elsewhere asking
/// for it is an error and nothing here sends a signal.
#[cfg(not(target_os = "linux"))]
mod preempt {
    use super::{CoreState, Interrupts};

    #[derive(Default)]
    pub(super) struct IrqLine;

    impl IrqLine {
        pub(super) fn snapshot(&self) -> Interrupts {
            Interrupts::default()
        }
        pub(super) fn kick(&self) {}
        pub(super) fn retire(&self) {}
    }

    pub(super) fn install() -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "ipiq host: the preemptive mode needs Linux signals",
        ))
    }

    pub(super) fn take_on_restore(_: &CoreState) {}

    pub(super) fn take_at_safe_point(_: &CoreState) -> usize {
        0
    }
}

std::thread_local! {
    /// The simulated core this thread is, if any.
    static CURRENT: Cell<Option<CpuId>> = const { Cell::new(None) };
    /// This thread's core state (null on threads that are not cores). `const` and without a
    /// destructor, so the interrupt handler may read it (see the module docs).
    static CORE: Cell<*const CoreState> = const { Cell::new(std::ptr::null()) };
    /// The queues this core serves, for its interrupt handler (null outside core threads, and
    /// before the core first enables interrupts or after it retires). `const`, no destructor.
    static HANDLER_IPIQ: Cell<*const Ipiq<HostPlatform>> = const { Cell::new(std::ptr::null()) };
    /// Counts `relax` calls, to yield the OS CPU now and then.
    static SPINS: Cell<u32> = const { Cell::new(0) };
}

/// When a simulated core takes its interrupts (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqDelivery {
    /// Only at safe points: interrupt points, the idle loop, the halt, ipiq's spin loops.
    #[default]
    SafePoints,
    /// Wherever the core is, whenever its virtual interrupt flag is on (POSIX signals; Linux).
    Preemptive,
}

/// How to build a [`HostMachine`].
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// Simulated cores.
    pub cpus: usize,
    /// The ipiq settings.
    pub ipiq: Config,
    /// Timer tick period of each core.
    pub tick: Duration,
    /// IPIs lost, per thousand.
    pub drop_ipi_per_mille: u32,
    /// IPIs delivered late, per thousand.
    pub delay_ipi_per_mille: u32,
    /// How late a delayed IPI arrives.
    pub ipi_delay: Duration,
    /// Seed of the fault-injection generator.
    pub seed: u64,
    /// How long an idle core polls its queues (through [`Ipiq::poll`], staying signalled so
    /// senders need no IPI) before it sleeps; zero: it sleeps at once, as a core that halts.
    pub idle_poll: Duration,
    /// When cores take interrupts: at safe points only (default) or preemptively.
    pub delivery: IrqDelivery,
}

impl HostConfig {
    /// `cpus` cores, default ipiq settings, a 1 ms tick, no faults.
    pub fn cpus(cpus: usize) -> Self {
        Self {
            cpus,
            ipiq: Config::default(),
            tick: Duration::from_millis(1),
            drop_ipi_per_mille: 0,
            delay_ipi_per_mille: 0,
            ipi_delay: Duration::from_micros(200),
            seed: 0x9e37_79b9_7f4a_7c15,
            idle_poll: Duration::ZERO,
            delivery: IrqDelivery::SafePoints,
        }
    }
}

/// Where a core's thread is, for the interrupt statistics and the halt's wake-up.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Place {
    /// Running a task's code.
    Work,
    /// At a safe point: the core loop between tasks, an interrupt point, the idle loop.
    SafePoint,
    /// Halted (sleeping until an interrupt).
    Halted,
}

/// Per simulated core.
#[derive(Default)]
struct CoreState {
    /// Set (Release) by `send_ipi`, taken (Acquire swap) by the core: the IRR bit.
    pending: CachePadded<AtomicBool>,
    /// The timer's request bit (preemptive mode): set by the machine's timer thread, taken
    /// (Acquire swap) by the core.
    tick_pending: AtomicBool,
    /// The virtual interrupt flag, `true` while interrupts are off. Written only by the core's
    /// own thread: `irq_save`/`irq_restore`, and its interrupt handler, which leaves it as it
    /// found it.
    irq_off: AtomicBool,
    /// Whether the machine is preemptive (fixed at start).
    preemptive: bool,
    /// A [`Place`], written by the core's thread only.
    place: AtomicU8,
    /// The core's thread, for unparking.
    thread: OnceLock<Thread>,
    /// The core's interrupt line (preemptive mode) and its counters.
    line: preempt::IrqLine,
    /// TLB flush counters (ranged calls, pages, full flushes), for tests.
    range_flushes: AtomicU64,
    pages_flushed: AtomicU64,
    full_flushes: AtomicU64,
    /// IPIs that reached this core.
    ipis_delivered: AtomicU64,
    /// `send_ipi_many` calls this core made (one per multicast that needed an IPI).
    multicast_calls: AtomicU64,
    /// Times this core's interrupts went from disabled to enabled (`irq_restore`).
    irq_enables: AtomicU64,
}

/// Marks where a core's thread is until dropped (then back to where it was).
struct AtPlace<'a> {
    core: &'a CoreState,
    previous: u8,
}

impl<'a> AtPlace<'a> {
    fn new(core: &'a CoreState, place: Place) -> Self {
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
fn local_irq_save() -> IrqState {
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
fn local_irq_restore(state: IrqState) {
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
        // Relaxed: a statistic, read by tests after the operation returned.
        core.irq_enables.fetch_add(1, Ordering::Relaxed);
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
/// ([`HostPlatform::interrupts`]).
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

/// The [`Platform`] of simulated cores.
pub struct HostPlatform {
    epoch: Instant,
    cores: Box<[CoreState]>,
    drop_per_mille: u32,
    delay_per_mille: u32,
    delay: Duration,
    /// xorshift state for fault injection.
    rng: AtomicU64,
    /// Late IPIs: (due, target).
    delayed: Mutex<Vec<(Instant, CpuId)>>,
    /// Length of `delayed`, read without the lock to skip it when empty.
    delayed_len: AtomicUsize,
    dropped: AtomicU64,
    delayed_total: AtomicU64,
}

/// IPI delivery figures of a host machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpiFaults {
    /// IPIs dropped by fault injection.
    pub dropped: u64,
    /// IPIs delayed by fault injection.
    pub delayed: u64,
    /// IPIs that reached a core.
    pub delivered: u64,
}

/// TLB flushes a simulated core performed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbFlushes {
    /// Ranged flush calls.
    pub ranges: u64,
    /// Pages flushed by range.
    pub pages: u64,
    /// Full flushes.
    pub full: u64,
}

impl HostPlatform {
    fn new(config: &HostConfig) -> Self {
        Self {
            epoch: Instant::now(),
            cores: (0..config.cpus.max(1))
                .map(|_| CoreState {
                    preemptive: config.delivery == IrqDelivery::Preemptive,
                    place: AtomicU8::new(Place::SafePoint as u8),
                    ..CoreState::default()
                })
                .collect(),
            drop_per_mille: config.drop_ipi_per_mille.min(1000),
            delay_per_mille: config.delay_ipi_per_mille.min(1000),
            delay: config.ipi_delay,
            rng: AtomicU64::new(config.seed | 1),
            delayed: Mutex::new(Vec::new()),
            delayed_len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            delayed_total: AtomicU64::new(0),
        }
    }

    /// A number in `0..1000` from the fault generator. Context: any, the interrupt handler
    /// included (a handler's roll between the interrupted roll's load and store only repeats a
    /// number).
    fn roll(&self) -> u32 {
        // Relaxed: the generator's state orders nothing; a lost update only repeats a number.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1000) as u32
    }

    /// Raises the IPI on `target`: its pending bit, then (preemptive mode) the signal, then an
    /// unpark for a halted core. Context: any thread, the interrupt handler included; never
    /// blocks.
    fn deliver(&self, target: CpuId) {
        let core = &self.cores[target];
        // Relaxed: a statistic.
        core.ipis_delivered.fetch_add(1, Ordering::Relaxed);
        // Release: the sender's queue stores happen before the target sees the interrupt
        // (pairs with the Acquire swap in `take_pending`).
        core.pending.store(true, Ordering::Release);
        if core.preemptive {
            core.line.kick();
        }
        if let Some(thread) = core.thread.get() {
            thread.unpark();
        }
    }

    /// Delivers the delayed IPIs that are due.
    ///
    /// Context: any thread, interrupts on or off; it takes the delayed list's lock with the
    /// caller's interrupts off (the interrupt handler may take it too, through `send_ipi`).
    fn deliver_due(&self) {
        // Relaxed: a hint; the list itself is read under its lock.
        if self.delayed_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let irq = local_irq_save();
        self.deliver_due_locked();
        local_irq_restore(irq);
    }

    /// [`HostPlatform::deliver_due`] with interrupts off.
    fn deliver_due_locked(&self) {
        let now = Instant::now();
        let due: Vec<CpuId> = {
            let Ok(mut list) = self.delayed.lock() else {
                return;
            };
            let mut due = Vec::new();
            list.retain(|&(at, cpu)| {
                let keep = at > now;
                if !keep {
                    due.push(cpu);
                }
                keep
            });
            self.delayed_len.store(list.len(), Ordering::Relaxed);
            due
        };
        for cpu in due {
            self.deliver(cpu);
        }
    }

    /// Takes the core's pending IPI, if any. Context: the core's own thread.
    fn take_pending(&self, cpu: CpuId) -> bool {
        // Acquire: pairs with the Release store in `deliver`.
        self.cores[cpu].pending.swap(false, Ordering::Acquire)
    }

    /// How core `cpu` took its interrupts (preemptive mode; all zero otherwise, and for a core
    /// that does not exist).
    pub fn interrupts(&self, cpu: CpuId) -> Interrupts {
        self.cores
            .get(cpu)
            .map_or_else(Interrupts::default, |c| c.line.snapshot())
    }

    /// [`HostPlatform::interrupts`] summed over every core.
    pub fn total_interrupts(&self) -> Interrupts {
        let mut total = Interrupts::default();
        for core in self.cores.iter() {
            total += core.line.snapshot();
        }
        total
    }

    /// Whether interrupts preempt the cores ([`IrqDelivery::Preemptive`]).
    pub fn is_preemptive(&self) -> bool {
        self.cores.first().is_some_and(|c| c.preemptive)
    }

    /// The fault-injection figures so far.
    pub fn ipi_faults(&self) -> IpiFaults {
        // Relaxed: statistics, ordering nothing.
        IpiFaults {
            dropped: self.dropped.load(Ordering::Relaxed),
            delayed: self.delayed_total.load(Ordering::Relaxed),
            delivered: self
                .cores
                .iter()
                .map(|c| c.ipis_delivered.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// IPIs that reached core `cpu` (0 for a core past the count).
    pub fn ipis_delivered(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.ipis_delivered.load(Ordering::Relaxed))
    }

    /// How many [`Platform::send_ipi_many`] calls core `cpu` made (0 for a core past the count).
    pub fn multicast_calls(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.multicast_calls.load(Ordering::Relaxed))
    }

    /// How many times core `cpu`'s interrupts were re-enabled (an `irq_restore` that turned
    /// them from off to on): a test can check that an operation kept them off throughout.
    pub fn irq_enables(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.irq_enables.load(Ordering::Relaxed))
    }

    /// The TLB flushes core `cpu` performed.
    pub fn tlb_flushes(&self, cpu: CpuId) -> TlbFlushes {
        self.cores
            .get(cpu)
            .map_or_else(TlbFlushes::default, |c| TlbFlushes {
                ranges: c.range_flushes.load(Ordering::Relaxed),
                pages: c.pages_flushed.load(Ordering::Relaxed),
                full: c.full_flushes.load(Ordering::Relaxed),
            })
    }
}

// SAFETY: each simulated core is one thread (its id thread-local), interrupts only at its
// interrupt points, which an irq_save section never reaches; other threads' calls panic.
unsafe impl Platform for HostPlatform {
    fn current_cpu(&self) -> CpuId {
        match CURRENT.with(Cell::get) {
            Some(cpu) => cpu,
            // A harness bug, not bad input: ipiq calls belong on simulated cores.
            None => panic!(
                "ipiq host platform: this thread is not a simulated core (use HostMachine::run_on)"
            ),
        }
    }

    fn cpu_count(&self) -> usize {
        self.cores.len()
    }

    /// Context: any thread, interrupts on or off, the interrupt handler included; never blocks
    /// except on the delayed-IPI list's lock, which every user takes with interrupts off.
    fn send_ipi(&self, target: CpuId) {
        if self.drop_per_mille > 0 && self.roll() < self.drop_per_mille {
            // Relaxed: a statistic.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.delay_per_mille > 0 && self.roll() < self.delay_per_mille {
            // Relaxed: a statistic; the list itself is under its lock.
            self.delayed_total.fetch_add(1, Ordering::Relaxed);
            let irq = local_irq_save();
            let queued = self.delayed.lock().map(|mut list| {
                list.push((Instant::now() + self.delay, target));
                self.delayed_len.store(list.len(), Ordering::Relaxed);
            });
            local_irq_restore(irq);
            if queued.is_ok() {
                return;
            }
        }
        self.deliver(target);
    }

    /// Models the x86 platform's write count for the all-excluding-self shorthand only: a set
    /// of every core but the caller is one write, any other set one write per target (no
    /// cluster destinations). Each target is delivered as by [`Platform::send_ipi`], fault
    /// injection rolled per target. Counts the call for [`HostPlatform::multicast_calls`].
    ///
    /// Context: as [`Platform::send_ipi`].
    fn send_ipi_many(&self, targets: &crate::CpuSet) -> usize {
        let caller = CURRENT.with(Cell::get);
        if let Some(core) = caller.and_then(|cpu| self.cores.get(cpu)) {
            // Relaxed: a statistic.
            core.multicast_calls.fetch_add(1, Ordering::Relaxed);
        }
        for target in targets.iter() {
            self.send_ipi(target);
        }
        let every_other_core = caller.is_some_and(|me| {
            me < self.cores.len()
                && !targets.contains(me)
                && targets.len() + 1 == self.cores.len()
                && targets.max().is_some_and(|max| max < self.cores.len())
        });
        if every_other_core {
            1
        } else {
            targets.len()
        }
    }

    /// Context: any, the core's own interrupt handler included; never blocks. Clears the calling
    /// core's virtual interrupt flag (on a thread that is not a core it does nothing).
    fn irq_save(&self) -> IrqState {
        local_irq_save()
    }

    /// Context: any. In preemptive mode, turning interrupts back on takes an interrupt that came
    /// meanwhile, here (as `sti` does).
    fn irq_restore(&self, state: IrqState) {
        local_irq_restore(state);
    }

    fn relax(&self) {
        std::hint::spin_loop();
        // Simulated cores may outnumber the host's CPUs: let the others run now and then, and
        // keep late IPIs flowing even while every core spins.
        let spins = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if spins & 15 == 0 {
            self.deliver_due();
            thread::yield_now();
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn flush_tlb_range(&self, _start: usize, pages: usize) {
        let core = &self.cores[self.current_cpu()];
        // Relaxed: flush counters are statistics for tests, read after the shootdown returned
        // (which synchronizes through the cpusync counts).
        core.range_flushes.fetch_add(1, Ordering::Relaxed);
        core.pages_flushed
            .fetch_add(pages as u64, Ordering::Relaxed);
    }

    fn flush_tlb_all(&self) {
        // Relaxed: see `flush_tlb_range`.
        self.cores[self.current_cpu()]
            .full_flushes
            .fetch_add(1, Ordering::Relaxed);
    }
}

type Task = Box<dyn FnOnce(&HostCore<'_>) + Send>;

/// A simulated core, as seen by a task running on it.
pub struct HostCore<'a> {
    cpu: CpuId,
    ipiq: &'a Ipiq<HostPlatform>,
    tick: Duration,
    next_tick: Cell<Instant>,
    idle_poll: Duration,
}

impl HostCore<'_> {
    /// This core's index.
    pub fn cpu(&self) -> CpuId {
        self.cpu
    }

    /// The machine's queues.
    pub fn ipiq(&self) -> &Ipiq<HostPlatform> {
        self.ipiq
    }

    fn state(&self) -> &CoreState {
        &self.ipiq.platform().cores[self.cpu]
    }

    /// Takes interrupts: serves a pending IPI and a due timer tick. Returns the messages run.
    /// Does nothing while the core's interrupts are off. In preemptive mode interrupts also
    /// arrive on their own; this takes whatever is pending (ticks come from the timer thread).
    pub fn interrupt_point(&self) -> usize {
        let state = self.state();
        // Relaxed: the core's own flag, read by its own thread.
        if state.irq_off.load(Ordering::Relaxed) {
            return 0;
        }
        let _at = AtPlace::new(state, Place::SafePoint);
        if state.preemptive {
            return preempt::take_at_safe_point(state);
        }
        let platform = self.ipiq.platform();
        platform.deliver_due();
        let mut ran = 0;
        if platform.take_pending(self.cpu) {
            ran += self.ipiq.process();
        }
        let now = Instant::now();
        if now >= self.next_tick.get() {
            self.next_tick.set(now + self.tick);
            ran += self.ipiq.tick();
        }
        ran
    }

    /// Idles (taking interrupts, sleeping between them) until `done()` holds. With
    /// [`HostConfig::idle_poll`], the core first polls its queues that long (signalled: senders
    /// skip the IPI) and sleeps only when nothing came in that time.
    pub fn idle_until(&self, mut done: impl FnMut() -> bool) {
        let _at = AtPlace::new(self.state(), Place::SafePoint);
        loop {
            self.interrupt_point();
            if done() {
                return;
            }
            if !self.idle_poll.is_zero() {
                let mut until = Instant::now() + self.idle_poll;
                loop {
                    self.interrupt_point();
                    if self.ipiq.poll() > 0 {
                        until = Instant::now() + self.idle_poll;
                    }
                    if done() || Instant::now() >= until {
                        break;
                    }
                    std::hint::spin_loop();
                }
                // `poll`'s contract: `process` clears the signal after a last look before the
                // core turns to other work or sleeps.
                self.ipiq.process();
                if done() {
                    return;
                }
            }
            self.halt();
        }
    }

    /// As the kernel's idle loop halts: with interrupts off, mark the core halted for lazy
    /// senders and look once more; then `sti; hlt`: sleep until an IPI, a task or the tick; or
    /// drain at once if a message came in meanwhile.
    fn halt(&self) {
        let platform = self.ipiq.platform();
        let irq = platform.irq_save();
        if self.ipiq.prepare_halt() {
            let at = AtPlace::new(self.state(), Place::Halted);
            // `sti`: an interrupt that came meanwhile is taken here, and ends the halt at once
            // (the IPI's unpark, or the handler's, leaves park's token set).
            platform.irq_restore(irq);
            self.sleep();
            drop(at);
            self.ipiq.end_halt();
        } else {
            platform.irq_restore(irq);
            self.ipiq.process();
        }
    }

    /// Sleeps until an IPI, a task or the next tick. Race-free: an unpark that comes between
    /// the last check and the park makes the park return at once (park's token).
    fn sleep(&self) {
        let wait = if self.state().preemptive {
            // The timer thread's tick interrupts the park (its handler unparks a halted core).
            Duration::from_micros(500)
        } else {
            self.next_tick
                .get()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_micros(500))
        };
        if !wait.is_zero() {
            thread::park_timeout(wait);
        }
    }
}

/// A handle to a task's result.
pub struct Pending<R> {
    result: mpsc::Receiver<std::thread::Result<R>>,
}

impl<R> Pending<R> {
    /// Waits for the task; a task that panicked re-raises its panic here.
    pub fn join(self) -> R {
        match self.result.recv() {
            Ok(Ok(value)) => value,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => panic!("ipiq host: the core running this task stopped"),
        }
    }
}

/// A machine of simulated cores sharing one [`Ipiq`].
pub struct HostMachine {
    ipiq: Arc<Ipiq<HostPlatform>>,
    inboxes: Vec<mpsc::Sender<Task>>,
    threads: Vec<JoinHandle<()>>,
    /// The timer thread (preemptive mode): ticks and late IPIs as interrupts.
    timer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl HostMachine {
    /// Starts `config.cpus` core threads, each online and idle.
    ///
    /// # Panics
    /// If [`HostMachine::try_start`] fails (a thread cannot be spawned, or the preemptive mode
    /// is not available): a harness that cannot start cannot test anything.
    pub fn start(config: HostConfig) -> Self {
        Self::try_start(config).unwrap_or_else(|e| panic!("ipiq host: starting a machine: {e}"))
    }

    /// Starts `config.cpus` core threads, each online and idle; in preemptive mode also installs
    /// the interrupt signal's handler (once per process) and starts the timer thread. Errors: a
    /// thread could not be spawned, the preemptive mode is not supported on this OS
    /// (`ErrorKind::Unsupported`), or another handler owns its signal.
    pub fn try_start(config: HostConfig) -> io::Result<Self> {
        let preemptive = config.delivery == IrqDelivery::Preemptive;
        if preemptive {
            preempt::install()?;
        }
        let ipiq = Arc::new(Ipiq::new(HostPlatform::new(&config), config.ipiq));
        let stop = Arc::new(AtomicBool::new(false));
        // Built up in place, so that an error below stops the threads already started (Drop).
        let mut machine = Self {
            ipiq: ipiq.clone(),
            inboxes: Vec::new(),
            threads: Vec::new(),
            timer: None,
            stop: stop.clone(),
        };
        for cpu in 0..ipiq.cpu_count() {
            let (tx, rx) = mpsc::channel::<Task>();
            let core_ipiq = ipiq.clone();
            let stop = stop.clone();
            let (tick, idle_poll) = (config.tick, config.idle_poll);
            let handle = thread::Builder::new()
                .name(format!("cpu{cpu}"))
                .spawn(move || core_loop(cpu, &core_ipiq, &rx, &stop, tick, idle_poll))?;
            let state = &ipiq.platform().cores[cpu];
            // Registered here too, so unparks (and kicks) work before the thread has started.
            let _ = state.thread.set(handle.thread().clone());
            #[cfg(target_os = "linux")]
            {
                use std::os::unix::thread::JoinHandleExt;
                state.line.set_thread(handle.as_pthread_t());
            }
            machine.inboxes.push(tx);
            machine.threads.push(handle);
        }
        // Every core must be online before a task sends to it.
        for cpu in 0..ipiq.cpu_count() {
            let _ = ipiq.cpu_online(cpu);
        }
        if preemptive {
            let timer_ipiq = ipiq.clone();
            let tick = config.tick;
            machine.timer = Some(
                thread::Builder::new()
                    .name("timer".into())
                    .spawn(move || timer_loop(&timer_ipiq, &stop, tick))?,
            );
        }
        Ok(machine)
    }

    /// The machine's queues.
    pub fn ipiq(&self) -> &Arc<Ipiq<HostPlatform>> {
        &self.ipiq
    }

    /// The machine's platform.
    pub fn platform(&self) -> &HostPlatform {
        self.ipiq.platform()
    }

    /// Runs `task` on core `cpu` and returns a handle to its result.
    pub fn spawn_on<R, F>(&self, cpu: CpuId, task: F) -> Result<Pending<R>, Error>
    where
        R: Send + 'static,
        F: FnOnce(&HostCore<'_>) -> R + Send + 'static,
    {
        let inbox = self.inboxes.get(cpu).ok_or(Error::NoSuchCpu(cpu))?;
        let (tx, rx) = mpsc::channel();
        let task: Task = Box::new(move |core| {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(core)));
            let _ = tx.send(result);
        });
        inbox.send(task).map_err(|_| Error::CpuOffline(cpu))?;
        if let Some(thread) = self.ipiq.platform().cores[cpu].thread.get() {
            thread.unpark();
        }
        Ok(Pending { result: rx })
    }

    /// Runs `task` on core `cpu` and waits for its result.
    pub fn run_on<R, F>(&self, cpu: CpuId, task: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&HostCore<'_>) -> R + Send + 'static,
    {
        Ok(self.spawn_on(cpu, task)?.join())
    }

    /// Runs `task` on every core at once and returns the results in core order.
    pub fn run_on_all<R, F>(&self, task: F) -> Vec<R>
    where
        R: Send + 'static,
        F: Fn(&HostCore<'_>) -> R + Send + Sync + 'static,
    {
        let task = Arc::new(task);
        let pending: Vec<_> = (0..self.ipiq.cpu_count())
            .map(|cpu| {
                let task = task.clone();
                self.spawn_on(cpu, move |core| task(core))
                    .expect("every core of a running machine takes tasks")
            })
            .collect();
        pending.into_iter().map(Pending::join).collect()
    }

    /// Waits until every accepted message has run (bounded by `timeout`); returns whether it did.
    pub fn quiesce(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.ipiq.outstanding() == 0 {
                return true;
            }
            for core in self.ipiq.platform().cores.iter() {
                if let Some(thread) = core.thread.get() {
                    thread.unpark();
                }
            }
            thread::sleep(Duration::from_micros(200));
        }
        self.ipiq.outstanding() == 0
    }

    /// Drains every queue (up to 10 s), stops the cores and returns the queues.
    pub fn shutdown(mut self) -> Arc<Ipiq<HostPlatform>> {
        self.quiesce(Duration::from_secs(10));
        self.stop_threads();
        self.ipiq.clone()
    }

    fn stop_threads(&mut self) {
        // Release: pairs with the cores' Acquire load; nothing else is ordered by it.
        self.stop.store(true, Ordering::Release);
        // The timer first: after it, only cores kick cores, and each core waits for the kicks
        // in flight to it before it leaves (`IrqLine::retire`).
        if let Some(timer) = self.timer.take() {
            timer.thread().unpark();
            let _ = timer.join();
        }
        self.inboxes.clear();
        for handle in self.threads.drain(..) {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}

impl Drop for HostMachine {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

fn core_loop(
    cpu: CpuId,
    ipiq: &Ipiq<HostPlatform>,
    inbox: &mpsc::Receiver<Task>,
    stop: &AtomicBool,
    tick: Duration,
    idle_poll: Duration,
) {
    let state = &ipiq.platform().cores[cpu];
    CURRENT.with(|c| c.set(Some(cpu)));
    // Before anything turns interrupts on: from here the handler finds the core.
    CORE.with(|c| c.set(state));
    HANDLER_IPIQ.with(|c| c.set(ipiq));
    let core = HostCore {
        cpu,
        ipiq,
        tick,
        next_tick: Cell::new(Instant::now() + tick),
        idle_poll,
    };
    loop {
        core.interrupt_point();
        match inbox.try_recv() {
            Ok(task) => {
                let _at = AtPlace::new(state, Place::Work);
                task(&core);
                continue;
            }
            Err(mpsc::TryRecvError::Disconnected) | Err(mpsc::TryRecvError::Empty) => {}
        }
        // Acquire: pairs with the Release in `stop_threads`.
        if stop.load(Ordering::Acquire) {
            core.interrupt_point();
            ipiq.process();
            break;
        }
        core.halt();
    }
    // Leaving: interrupts off for good, no kick reaches this thread after `retire`, and the
    // handler's pointers are cleared before the caller drops the thread's reference to the
    // machine.
    let _ = local_irq_save();
    state.line.retire();
    HANDLER_IPIQ.with(|c| c.set(std::ptr::null()));
    CORE.with(|c| c.set(std::ptr::null()));
}

/// The machine's timer (preemptive mode): every `tick` it raises the tick request of each core
/// and kicks it; between ticks it delivers late IPIs as they fall due. Stops when `stop` is set
/// (and it is unparked).
fn timer_loop(ipiq: &Ipiq<HostPlatform>, stop: &AtomicBool, tick: Duration) {
    let platform = ipiq.platform();
    let period = tick.max(Duration::from_micros(50));
    // Late IPIs are due `ipi_delay` after their send: look a few times per delay.
    let late_poll = (platform.delay / 4).clamp(Duration::from_micros(20), period);
    let mut next_tick = Instant::now() + period;
    // Acquire: pairs with the Release in `stop_threads`.
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + period;
            for core in platform.cores.iter() {
                // Relaxed: a tick publishes nothing; the core's Acquire swap takes it.
                core.tick_pending.store(true, Ordering::Relaxed);
                core.line.kick();
            }
        }
        platform.deliver_due();
        let mut wait = next_tick.saturating_duration_since(Instant::now());
        if platform.delay_per_mille > 0 {
            wait = wait.min(late_poll);
        }
        thread::park_timeout(wait);
    }
}
