//! Application side of ipiq on Hermit: safe wrappers over the `sys_ipiq_*` syscalls that the
//! patched kernel exports (the kernel side is `hermit-app/kernel/patches/`; this module and
//! [`crate::errno`] are the whole contract).
//!
//! A message is an [`AppFn`] (`extern "C" fn(usize)`) and one word: the kernel queues its own
//! trampoline with the function pointer in the first argument word and `arg` in the second, and
//! calls `func(arg)` on the target core **in interrupt context** (interrupts disabled): the
//! function must be short and must not block, sleep, allocate through a lock that a thread may
//! hold, or print. Communicate through atomics.
//!
//! **Floating point.** The function may use everything the application target may (`f64` in
//! SSE registers, x87, and AVX where the CPU has it): the kernel's trampoline (the series' FPU
//! patch) saves the interrupted context's x87/SSE/AVX state before it and restores it exactly after
//! it, and starts it in the ABI's state (empty x87 stack, x87 control word 0x37F, MXCSR 0x1F80),
//! whatever the interrupted thread had set. Whatever state the function leaves behind (another
//! rounding mode, values on the x87 stack, dirty registers) is discarded. The kernel is
//! soft-float and saves none of this in its interrupt path, so without the trampoline's save an
//! `f64` message function corrupts the thread it interrupts (see the `ipiq` crate's
//! `arch::x86_64::xstate` for the mechanism and why it was chosen).
//!
//! **Nesting.** The function may call these wrappers (a send to its own core runs at once, nested
//! inside it; `wait` serves the queues). With the kernel's syscall-stack patch a syscall made with
//! interrupts off stays on the stack it was made on, with interrupts off; Hermit 0.11 by itself
//! moves every syscall to the top of the task's kernel stack and enables interrupts, which
//! overwrites a syscall in progress there and lets the next interrupt reuse the interrupt stack, so
//! a nested send crashed or hung the core.
//!
//! Errors come back as negative errno values and are mapped back to [`Error`]; an invalid
//! argument that names a core is [`Error::NoSuchCpu`].
//!
//! ```no_run
//! use core::sync::atomic::{AtomicUsize, Ordering};
//! static HITS: AtomicUsize = AtomicUsize::new(0);
//! extern "C" fn hit(n: usize) {
//!     HITS.fetch_add(n, Ordering::Relaxed);
//! }
//! let seq = ipiq_abi::hermit::send(1, hit, 5)?;
//! ipiq_abi::hermit::wait(1, seq)?;
//! assert_eq!(HITS.load(Ordering::Relaxed), 5);
//! # Ok::<(), ipiq_abi::Error>(())
//! ```

use crate::{CpuId, CpuSet, Error, Seq, Stats};

/// A message function as the application passes it: runs on the target core with its word.
pub type AppFn = extern "C" fn(usize);

/// The raw syscalls (see the kernel patch's `src/ipiq.rs` for their contracts).
pub mod sys {
    unsafe extern "C" {
        /// The calling core's index.
        pub fn sys_ipiq_core_id() -> usize;
        /// How many cores the queues serve.
        pub fn sys_ipiq_cpu_count() -> usize;
        /// Active send; 0 or -errno; the sequence number is stored at `seq` (may be null).
        pub fn sys_ipiq_send(core: usize, func: usize, arg: usize, seq: *mut u64) -> i32;
        /// Passive send (no IPI; drained at the target's tick or next drain).
        pub fn sys_ipiq_send_passive(core: usize, func: usize, arg: usize, seq: *mut u64) -> i32;
        /// Send that fails with -EAGAIN instead of draining when the FIFO is 2/3 full.
        pub fn sys_ipiq_try_send(core: usize, func: usize, arg: usize, seq: *mut u64) -> i32;
        /// Send to every online core of a bit map of `words` u64 words; count or -errno.
        pub fn sys_ipiq_send_many(set: *const u64, words: usize, func: usize, arg: usize) -> i32;
        /// Rendezvous of a set running `func(arg)` on each; count or -errno.
        pub fn sys_ipiq_cpusync(set: *const u64, words: usize, func: usize, arg: usize) -> i32;
        /// Last sequence number this core queued for `core`.
        pub fn sys_ipiq_seq(core: usize, seq: *mut u64) -> i32;
        /// Waits for `core` to finish every message up to `seq`.
        pub fn sys_ipiq_wait(core: usize, seq: u64) -> i32;
        /// Statistics words of `core` (negative: all cores) in `Stats::NAMES` order.
        pub fn sys_ipiq_stats(core: isize, out: *mut u64, len: usize) -> i32;
        /// Test support: swaps the frames behind two mapped 4 KiB pages (with TLB shootdowns).
        pub fn sys_ipiq_swap_pages(a: usize, b: usize) -> i32;
    }
}

fn check(code: i32, einval: Error) -> Result<usize, Error> {
    usize::try_from(code).map_err(|_| Error::from_errno(code, einval))
}

/// The core the calling thread runs on (Hermit does not migrate tasks).
pub fn core_id() -> CpuId {
    // SAFETY: no arguments; the kernel reads its per-core data.
    unsafe { sys::sys_ipiq_core_id() }
}

/// How many cores the kernel's queues serve.
pub fn cpu_count() -> usize {
    // SAFETY: no arguments.
    unsafe { sys::sys_ipiq_cpu_count() }
}

type RawSend = unsafe extern "C" fn(usize, usize, usize, *mut u64) -> i32;

fn send_raw(raw: RawSend, core: CpuId, func: AppFn, arg: usize) -> Result<Seq, Error> {
    let mut seq = 0u64;
    // SAFETY: `func` is a valid function pointer; `seq` is a writable u64 for the call.
    let code = unsafe { raw(core, func as usize, arg, &mut seq) };
    check(code, Error::NoSuchCpu(core)).map(|_| Seq(seq))
}

/// Runs `func(arg)` on `core`, waking it with an IPI unless it is already signalled or draining
/// (on the calling core: at once). Returns the sequence number for [`wait`].
pub fn send(core: CpuId, func: AppFn, arg: usize) -> Result<Seq, Error> {
    send_raw(sys::sys_ipiq_send, core, func, arg)
}

/// Queues `func(arg)` for `core` without an IPI: it runs at the target's next tick (every
/// 10 ms) or drain.
pub fn send_passive(core: CpuId, func: AppFn, arg: usize) -> Result<Seq, Error> {
    send_raw(sys::sys_ipiq_send_passive, core, func, arg)
}

/// Like [`send`], but [`Error::WouldBlock`] instead of waiting when the FIFO is 2/3 full.
pub fn try_send(core: CpuId, func: AppFn, arg: usize) -> Result<Seq, Error> {
    send_raw(sys::sys_ipiq_try_send, core, func, arg)
}

/// Runs `func(arg)` on every online core of `set`; returns how many got it.
pub fn send_many(set: &CpuSet, func: AppFn, arg: usize) -> Result<usize, Error> {
    let words = set.words();
    // SAFETY: `words` holds `words.len()` readable u64s; `func` is a valid function pointer.
    let code = unsafe { sys::sys_ipiq_send_many(words.as_ptr(), words.len(), func as usize, arg) };
    check(code, set.max().map_or(Error::EmptySet, Error::NoSuchCpu))
}

/// Gathers the cores of `set` in a rendezvous where each runs `func(arg)`; returns once all
/// have, with how many did.
pub fn cpusync(set: &CpuSet, func: AppFn, arg: usize) -> Result<usize, Error> {
    let words = set.words();
    // SAFETY: as in `send_many`.
    let code = unsafe { sys::sys_ipiq_cpusync(words.as_ptr(), words.len(), func as usize, arg) };
    check(code, set.max().map_or(Error::EmptySet, Error::NoSuchCpu))
}

/// The sequence number of the last message the calling core queued for `core`.
pub fn seq(core: CpuId) -> Result<Seq, Error> {
    let mut seq = 0u64;
    // SAFETY: `seq` is a writable u64 for the call.
    let code = unsafe { sys::sys_ipiq_seq(core, &mut seq) };
    check(code, Error::NoSuchCpu(core)).map(|_| Seq(seq))
}

/// Waits until `core` has run every message the calling core queued for it up to `seq`.
/// A `seq` never issued is [`Error::InvalidSequence`].
pub fn wait(core: CpuId, seq: Seq) -> Result<(), Error> {
    // SAFETY: plain values.
    let code = unsafe { sys::sys_ipiq_wait(core, seq.0) };
    let einval = if core < cpu_count() {
        Error::InvalidSequence
    } else {
        Error::NoSuchCpu(core)
    };
    check(code, einval).map(|_| ())
}

fn stats_raw(core: isize, einval: Error) -> Result<Stats, Error> {
    let mut values = [0u64; 64];
    // SAFETY: `values` has room for `values.len()` u64s.
    let code = unsafe { sys::sys_ipiq_stats(core, values.as_mut_ptr(), values.len()) };
    let n = check(code, einval)?;
    Ok(Stats::from_values(&values[..n.min(values.len())]))
}

/// Core `core`'s statistics.
pub fn stats(core: CpuId) -> Result<Stats, Error> {
    let raw = isize::try_from(core).map_err(|_| Error::NoSuchCpu(core))?;
    stats_raw(raw, Error::NoSuchCpu(core))
}

/// The sum of every core's statistics.
pub fn total_stats() -> Result<Stats, Error> {
    stats_raw(-1, Error::EmptySet)
}
