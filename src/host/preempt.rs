//! The host platform's preemptive mode ([`super::IrqDelivery::Preemptive`]): IPIs and timer
//! ticks are POSIX signals sent to the target core's thread, whose handler takes them wherever
//! the thread is, as a real interrupt does, whenever the core's virtual interrupt flag is on.
//!
//! # The interrupt line
//! A request (the `pending` IPI bit, or the `tick_pending` timer bit of the core's state) is set
//! first, then the thread is kicked with `pthread_kill(thread, SIGURG)`. SIGURG is ignored by
//! default and used by nothing else in a test process (Go's runtime picks it for its
//! preemption signal for the same reasons); standard signals merge while one is pending, as
//! IRR bits do. A kick never reaches a thread that has exited: every kick counts itself in
//! flight, the thread marks itself exited before it leaves and waits until no kick is in flight
//! (see [`IrqLine`]).
//!
//! # The handler: what it touches, and why that is sound
//! The handler runs on the interrupted thread, between two of its instructions. It reads:
//! - two thread-locals, the core's state and its [`Ipiq`]: `const`-initialised `Cell`s of raw
//!   pointers, which need no destructor, so std keeps them in the thread's static TLS block with
//!   no lazy initialisation, registration or state check (std's `thread_local!` docs: the
//!   `const` form of a type that needs no drop "does not need to track any additional state");
//!   a load from them is a plain memory read. They are set before the core first enables
//!   interrupts and cleared (after the signal is blocked) before the thread lets go of its
//!   reference to the machine, so a non-null pointer is live;
//! - the core's atomics (flags and counters): lock-free atomics are async-signal-safe;
//! - `errno`, which it saves and restores (the handler makes system calls: `pthread_kill`,
//!   futex wake-ups in `unpark`, `clock_gettime`).
//!
//! If the virtual interrupt flag is off it only counts and returns: the request stays pending
//! and `irq_restore` to "on" takes it, as `sti` does. If the flag is on, the interrupted code
//! was not inside any ipiq operation on this core (each runs with interrupts off), so the
//! per-core state [`Ipiq::process`] and [`Ipiq::tick`] use (FIFO read sides, spill and hold
//! lists, nesting depth, counters) is not halfway through an update: the kernel's own argument
//! for running them from its interrupt handler. What they reach beyond that:
//! - the allocator (first FIFO of a pair, spill lists, message functions that allocate). Sound
//!   only if the interrupted code was not inside the allocator, which the preemptive tests
//!   guarantee with [`InterruptsOffAlloc`](super::InterruptsOffAlloc) as their global
//!   allocator: it turns the virtual interrupt flag off around every allocation (the kernel's
//!   rule: a lock that interrupt context takes is taken with interrupts off). An allocator lock
//!   held by *another* thread is only waited for, as a spinning kernel core waits for another
//!   core's lock;
//! - the platform: `pthread_kill` (async-signal-safe by POSIX), `Thread::unpark` (an atomic
//!   swap and a futex wake), `Instant::now` (`clock_gettime`), `sched_yield`, and the lock of
//!   the delayed-IPI list, which every user takes with interrupts off, so the interrupted code
//!   never holds it;
//! - the message functions: they run in interrupt context and must follow its rules (no lock
//!   that the interrupted code may hold: take such locks with interrupts off).
//!
//! A panic in interrupt context aborts the process (the handler is `extern "C"`, which does not
//! unwind; the `irq_restore` path aborts on purpose), as a panic there halts the kernel.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;

use super::{CoreState, HostPlatform, Interrupts, Place, CORE, HANDLER_IPIQ};
use crate::Ipiq;

/// The signal that carries interrupts.
const SIGNAL: libc::c_int = libc::SIGURG;

/// Distinct interrupted instruction addresses remembered per core.
const PC_SLOTS: usize = 64;

/// One core's interrupt line: its thread's id and the in-flight protocol that keeps kicks off
/// an exited thread, plus the counters of how the core took its interrupts.
pub(super) struct IrqLine {
    /// The core thread's `pthread_t` (set once, before any kick can be sent).
    thread: OnceLock<libc::pthread_t>,
    /// Kicks between their check of `exited` and the end of their `pthread_kill`.
    in_flight: AtomicUsize,
    /// Set by the core thread as it leaves; no kick starts after it sees this.
    exited: AtomicBool,
    /// Signals that reached the handler.
    signals: AtomicU64,
    /// Handler runs that took a request while the thread was running task code.
    preempted_work: AtomicU64,
    /// Handler runs that took a request at a safe point (interrupt point, idle loop, halt).
    at_safe_points: AtomicU64,
    /// Signals that found the virtual interrupt flag off.
    deferred: AtomicU64,
    /// Requests taken by `irq_restore` turning interrupts back on.
    on_restore: AtomicU64,
    /// Timer ticks taken (any path).
    ticks: AtomicU64,
    /// Distinct instruction addresses at which the handler interrupted task code (0: free).
    pcs: [AtomicUsize; PC_SLOTS],
}

impl Default for IrqLine {
    fn default() -> Self {
        Self {
            thread: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            exited: AtomicBool::new(false),
            signals: AtomicU64::new(0),
            preempted_work: AtomicU64::new(0),
            at_safe_points: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            on_restore: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            pcs: std::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }
}

impl IrqLine {
    /// Records the core thread's id (from its spawner, before the core goes online).
    pub(super) fn set_thread(&self, thread: libc::pthread_t) {
        let _ = self.thread.set(thread);
    }

    /// The counters so far.
    pub(super) fn snapshot(&self) -> Interrupts {
        // Relaxed: statistics.
        Interrupts {
            signals: self.signals.load(Ordering::Relaxed),
            preempted_work: self.preempted_work.load(Ordering::Relaxed),
            at_safe_points: self.at_safe_points.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            on_restore: self.on_restore.load(Ordering::Relaxed),
            ticks: self.ticks.load(Ordering::Relaxed),
            distinct_pcs: self
                .pcs
                .iter()
                .filter(|pc| pc.load(Ordering::Relaxed) != 0)
                .count() as u64,
        }
    }

    /// Raises the interrupt on the core's thread (after the caller set the request bit).
    ///
    /// Context: any thread, interrupts on or off, also a signal handler (only async-signal-safe
    /// calls). Never blocks.
    pub(super) fn kick(&self) {
        let Some(&thread) = self.thread.get() else {
            return;
        };
        // SeqCst increment and load, against `retire`'s SeqCst store and load: a Dekker pair, so
        // either this kick sees `exited` and sends nothing, or `retire` sees it in flight and
        // waits for it; `pthread_kill` never gets the id of a thread that has exited.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if !self.exited.load(Ordering::SeqCst) {
            // SAFETY: `thread` is the id of a live thread (the protocol above), and SIGNAL has
            // our handler installed (`install` ran before any core started).
            unsafe { libc::pthread_kill(thread, SIGNAL) };
        }
        // Release: the kill is done before `retire` may let the thread go.
        self.in_flight.fetch_sub(1, Ordering::Release);
    }

    /// The core thread leaves: no kick reaches it after this returns. Called by the core thread
    /// itself, last, with interrupts off.
    pub(super) fn retire(&self) {
        // SeqCst: see `kick`.
        self.exited.store(true, Ordering::SeqCst);
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            std::hint::spin_loop();
        }
        block_signal();
    }

    /// Remembers `pc` among the distinct addresses task code was interrupted at. Context: the
    /// core's own signal handler, the only writer of the table.
    fn record_pc(&self, pc: usize) {
        if pc == 0 {
            return;
        }
        let start = (pc.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize) >> 32) % PC_SLOTS;
        for i in 0..PC_SLOTS {
            let slot = &self.pcs[(start + i) % PC_SLOTS];
            // Relaxed: a statistic written only by this core's handler.
            match slot.load(Ordering::Relaxed) {
                0 => {
                    slot.store(pc, Ordering::Relaxed);
                    return;
                }
                seen if seen == pc => return,
                _ => {}
            }
        }
    }
}

/// Blocks the interrupt signal on the calling thread (a retiring core).
fn block_signal() {
    // SAFETY: `set` is a local sigset_t initialised by sigemptyset before use; pthread_sigmask
    // only changes the calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, SIGNAL);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, core::ptr::null_mut());
    }
}

/// Installs the handler, once per process. Fails if another handler already owns the signal.
pub(super) fn install() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            // SAFETY: `action` and `old` are plain C structs, zeroed then filled in; the handler
            // has the SA_SIGINFO signature and only does what the module docs list.
            unsafe {
                let mut action: libc::sigaction = core::mem::zeroed();
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    on_signal;
                action.sa_sigaction = handler as libc::sighandler_t;
                action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = core::mem::zeroed();
                if libc::sigaction(SIGNAL, &action, &mut old) != 0 {
                    return Err(format!(
                        "ipiq host: sigaction(SIGURG) failed: {}",
                        io::Error::last_os_error()
                    ));
                }
                if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
                    // Someone else's handler: put it back and refuse.
                    libc::sigaction(SIGNAL, &old, core::ptr::null_mut());
                    return Err(
                        "ipiq host: SIGURG already has a handler; the preemptive mode needs it"
                            .to_string(),
                    );
                }
            }
            Ok(())
        })
        .clone()
        .map_err(io::Error::other)
}

/// The signal handler: an interrupt arrived on this thread.
///
/// Context: interrupt context, on any thread (it does nothing on one that is not a core);
/// never re-entered by its own signal (blocked while it runs), and it takes requests only with
/// the virtual flag off, so neither `irq_restore` nor a safe point re-enters it either.
extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: errno is thread-local; saved here and restored below so the interrupted code
    // never sees it change.
    let errno = unsafe { *libc::__errno_location() };
    let core = CORE.with(Cell::get);
    let ipiq = HANDLER_IPIQ.with(Cell::get);
    if !core.is_null() && !ipiq.is_null() {
        // SAFETY: both pointers are live while set (module docs: set before interrupts are
        // first enabled, cleared after the signal is blocked and before the thread drops its
        // reference to the machine).
        let (core, ipiq) = unsafe { (&*core, &*ipiq) };
        let line = &core.line;
        // Relaxed: statistics.
        line.signals.fetch_add(1, Ordering::Relaxed);
        // Relaxed: written only by this thread (and by this handler, which restores it); the
        // interrupted code's compiler fences keep its critical sections inside the flag.
        if core.irq_off.load(Ordering::Relaxed) {
            line.deferred.fetch_add(1, Ordering::Relaxed);
        } else {
            // Relaxed: `place` is a per-thread statistic and a halt hint.
            let place = core.place.load(Ordering::Relaxed);
            if take_interrupts(core, ipiq).is_some() {
                if place == Place::Work as u8 {
                    line.preempted_work.fetch_add(1, Ordering::Relaxed);
                    line.record_pc(interrupted_pc(context));
                } else {
                    line.at_safe_points.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The instruction address the signal interrupted.
#[cfg(all(target_env = "gnu", target_arch = "x86_64"))]
fn interrupted_pc(context: *mut libc::c_void) -> usize {
    if context.is_null() {
        return 0;
    }
    // SAFETY: with SA_SIGINFO the kernel passes a valid ucontext_t as the third argument.
    unsafe {
        (*(context as *const libc::ucontext_t)).uc_mcontext.gregs[libc::REG_RIP as usize] as usize
    }
}

/// The instruction address the signal interrupted (not decoded on this target).
#[cfg(not(all(target_env = "gnu", target_arch = "x86_64")))]
fn interrupted_pc(_: *mut libc::c_void) -> usize {
    0
}

/// `irq_restore` turned interrupts on and found a request: take it now, as `sti` does.
///
/// Context: the core's own thread, its virtual interrupt flag just turned on (inside an ipiq
/// call's `irq_restore`, or the allocator wrapper's); the work it runs is interrupt context.
pub(super) fn take_on_restore(core: &CoreState) {
    let ipiq = HANDLER_IPIQ.with(Cell::get);
    if ipiq.is_null() {
        return;
    }
    // SAFETY: as in `on_signal`; this is the core's own thread.
    let ipiq = unsafe { &*ipiq };
    // Unwinding out of here could leave the allocator wrapper or an ipiq call mid-way: a panic
    // in interrupt context aborts.
    let guard = AbortOnUnwind;
    if take_interrupts(core, ipiq).is_some() {
        // Relaxed: a statistic.
        core.line.on_restore.fetch_add(1, Ordering::Relaxed);
    }
    core::mem::forget(guard);
}

/// A safe point (`HostCore::interrupt_point`, interrupts on) takes what is pending; returns the
/// messages run.
pub(super) fn take_at_safe_point(core: &CoreState) -> usize {
    let ipiq = HANDLER_IPIQ.with(Cell::get);
    if ipiq.is_null() {
        return 0;
    }
    // SAFETY: as in `on_signal`; this is the core's own thread.
    let ipiq = unsafe { &*ipiq };
    match take_interrupts(core, ipiq) {
        Some(ran) => {
            // Relaxed: a statistic.
            core.line.at_safe_points.fetch_add(1, Ordering::Relaxed);
            ran
        }
        None => 0,
    }
}

/// Takes the core's requests (IPI, tick) with the virtual interrupt flag off, as an interrupt
/// gate does, until none is left; returns the messages run, or `None` if there was no request.
/// Context: the core's own thread, interrupt flag on (handler, `irq_restore`, safe point); not
/// re-entered (the flag is off inside, so neither the handler nor `irq_restore` takes again).
fn take_interrupts(core: &CoreState, ipiq: &Ipiq<HostPlatform>) -> Option<usize> {
    let mut took = false;
    let mut ran = 0;
    loop {
        // Relaxed store, compiler fence: interrupts off before the work, on this thread.
        core.irq_off.store(true, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        // Acquire: pairs with the Release store of the request (the sender's queue stores, the
        // timer's tick request).
        if core.pending.swap(false, Ordering::Acquire) {
            took = true;
            ran += ipiq.process();
        }
        if core.tick_pending.swap(false, Ordering::Acquire) {
            took = true;
            // Relaxed: a statistic.
            core.line.ticks.fetch_add(1, Ordering::Relaxed);
            ran += ipiq.tick();
        }
        compiler_fence(Ordering::SeqCst);
        core.irq_off.store(false, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        // Relaxed: a request set meanwhile was also kicked; this only saves the round trip.
        if !core.pending.load(Ordering::Relaxed) && !core.tick_pending.load(Ordering::Relaxed) {
            break;
        }
    }
    // A halted core's `hlt` ends with the interrupt: end its park.
    // Relaxed: a per-thread hint (a missed wake-up only lengthens the bounded park).
    if took && core.place.load(Ordering::Relaxed) == Place::Halted as u8 {
        if let Some(thread) = core.thread.get() {
            unpark_self(thread);
        }
    }
    took.then_some(ran)
}

/// `Thread::unpark` on the calling thread's own handle (an atomic swap and a futex wake, both
/// async-signal-safe).
fn unpark_self(thread: &Thread) {
    thread.unpark();
}

/// Aborts the process if dropped while unwinding.
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        eprintln!("ipiq host: a panic in interrupt context (preemptive mode); aborting");
        std::process::abort();
    }
}
