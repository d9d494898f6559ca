//! `sched_locks`: the kernel's cross-core scheduler paths under load, with the contexts that take
//! their locks mixed on one core (hermit-app/kernel/LOCK-ORDER.md).
//!
//! On one core ("the hub") four threads run side by side:
//! - a poster: `sys_sem_post` to a semaphore whose waiters sit on the other cores, so each post
//!   wakes a task on another core from task context with interrupts enabled;
//! - a waker: `sys_futex_wake` on a word whose waiters sit on the other cores, so each wake-up
//!   is sent with interrupts disabled, under the kernel's parking-lot lock;
//! - a spawner: starts a short thread pinned to another core and joins it (the kernel's new-task
//!   path from task context, and the exit path's wake-up of the joiner);
//! - a ticker: a futex wait with a 200 us timeout in a loop, so the scheduler's timer keeps
//!   firing on the hub and preempts the other three at arbitrary points.
//!
//! Without the kernel's lock-order patch the scheduler's input table was a plain spin lock taken on
//! the first and third paths with interrupts enabled: a thread preempted while holding it left the
//! waker spinning for it with interrupts disabled on the same core, for good (the guest hangs; the
//! boot's timeout reports it). With the patch every holder has interrupts disabled and the hot path
//! takes no lock at all. Passing means: every waiter was woken and exited, every spawned thread
//! ran, and each path made progress.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::pinned;

/// The kernel's `timespec` (`tv_sec`, `tv_nsec` as in hermit-kernel's `time.rs`).
#[repr(C)]
struct Timespec {
    tv_sec: i64,
    tv_nsec: i32,
}

/// `sem_t` in the kernel: a pointer to its semaphore object.
type SemT = *const c_void;

/// Relative timeout for `sys_futex_wait` (the kernel's `futex::Flags::RELATIVE`).
const FUTEX_RELATIVE: u32 = 1;

unsafe extern "C" {
    fn sys_sem_init(sem: *mut SemT, pshared: i32, value: u32) -> i32;
    fn sys_sem_destroy(sem: *mut SemT) -> i32;
    fn sys_sem_post(sem: *mut SemT) -> i32;
    fn sys_sem_timedwait(sem: *mut SemT, ts: *const Timespec) -> i32;
    fn sys_futex_wait(address: *mut u32, expected: u32, timeout: *const Timespec, flags: u32) -> i32;
    fn sys_futex_wake(address: *mut u32, count: i32) -> i32;
}

static STOP: AtomicBool = AtomicBool::new(false);
/// The ticker's private futex word (nobody wakes it: each wait ends by its timeout).
static TICK_WORD: AtomicU32 = AtomicU32::new(0);

/// Most waiters of each kind (one per core other than the hub).
const MAX_WAITERS: usize = crate::MAX_CORES;

/// One semaphore waiter and one futex waiter per core other than the hub, each with its own
/// semaphore or futex word, so that the hub's wake-ups reach a task that is really asleep and
/// the waits do not all queue on one lock.
struct Waiter {
    sem: AtomicPtr<c_void>,
    /// Posts made to `sem` / waits on it returned.
    posts: AtomicU64,
    taken: AtomicU64,
    /// The futex word: 0 while the test runs, 1 once it ends.
    word: AtomicU32,
    /// Wake-ups that found this waiter asleep / waits that returned.
    woken: AtomicU64,
    returns: AtomicU64,
}

static WAITERS: [Waiter; MAX_WAITERS] = [const {
    Waiter {
        sem: AtomicPtr::new(std::ptr::null_mut()),
        posts: AtomicU64::new(0),
        taken: AtomicU64::new(0),
        word: AtomicU32::new(0),
        woken: AtomicU64::new(0),
        returns: AtomicU64::new(0),
    }
}; MAX_WAITERS];

static SPAWNED_RAN: AtomicU64 = AtomicU64::new(0);
static SPAWNED: AtomicU64 = AtomicU64::new(0);
static TICKS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

fn post(w: &Waiter) -> i32 {
    let mut handle = w.sem.load(Ordering::Acquire).cast_const();
    // SAFETY: `handle` is the semaphore made by `sys_sem_init` in `run`; it is destroyed only
    // after every thread that posts or waits has been joined.
    unsafe { sys_sem_post(&mut handle) }
}

fn sem_wait(w: &Waiter) -> i32 {
    let mut handle = w.sem.load(Ordering::Acquire).cast_const();
    // SAFETY: as in `post`; a null timeout waits without a bound.
    unsafe { sys_sem_timedwait(&mut handle, std::ptr::null()) }
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<&Timespec>) -> i32 {
    let (ts, flags) = match timeout {
        Some(ts) => (ts as *const Timespec, FUTEX_RELATIVE),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `word` is a live static; `ts` is null or points to a live timespec.
    unsafe { sys_futex_wait(word.as_ptr(), expected, ts, flags) }
}

fn futex_wake(word: &AtomicU32, count: i32) -> i32 {
    // SAFETY: `word` is a live static (the kernel uses only its address).
    unsafe { sys_futex_wake(word.as_ptr(), count) }
}

fn error_if(bad: bool) {
    if bad {
        ERRORS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the stress for `budget` with the hub on core 1 and waiters on every other core.
pub fn run(cpus: usize, budget: Duration) -> Result<String, String> {
    if cpus < 2 {
        return Ok("SKIPPED (not applicable on 1 core: there is no cross-core scheduler path)".into());
    }
    let hub = 1;
    let others: Vec<usize> = (0..cpus).filter(|&c| c != hub).collect();
    let n = others.len();

    for w in &WAITERS[..n] {
        let mut handle: SemT = std::ptr::null();
        // SAFETY: `handle` is a valid place for the kernel to store the new semaphore's pointer.
        let rc = unsafe { sys_sem_init(&mut handle, 0, 0) };
        if rc != 0 || handle.is_null() {
            return Err(format!("sys_sem_init returned {rc}"));
        }
        w.sem.store(handle.cast_mut(), Ordering::Release);
    }

    let spawn = |core: usize, job: Box<dyn FnOnce() + Send>| pinned::spawn_on(core, job).map_err(|e| e.to_string());
    let mut waiters = Vec::new();
    for (i, &core) in others.iter().enumerate() {
        let w = &WAITERS[i];
        // The semaphore waiter: each wait blocks (count 0) until the poster's post wakes it.
        waiters.push(spawn(
            core,
            Box::new(move || {
                while !STOP.load(Ordering::Acquire) {
                    error_if(sem_wait(w) != 0);
                    w.taken.fetch_add(1, Ordering::Release);
                }
            }),
        )?);
        // The futex waiter: sleeps while its word is 0.
        waiters.push(spawn(
            core,
            Box::new(move || {
                while !STOP.load(Ordering::Acquire) {
                    let rc = futex_wait(&w.word, 0, None);
                    // 0: woken; -EAGAIN (-11): the word changed before it slept.
                    error_if(rc != 0 && rc != -11);
                    w.returns.fetch_add(1, Ordering::Release);
                }
            }),
        )?);
    }
    let deadline = Instant::now() + budget;
    let hub_threads = vec![
        // The ticker: its timed waits keep the scheduler's timer firing on the hub, which
        // preempts the other threads there at arbitrary points.
        spawn(
            hub,
            Box::new(|| {
                let timeout = Timespec { tv_sec: 0, tv_nsec: 200_000 };
                while !STOP.load(Ordering::Acquire) {
                    // -ETIMEDOUT (-110) is the expected end of each wait.
                    error_if(futex_wait(&TICK_WORD, 0, Some(&timeout)) != -110);
                    TICKS.fetch_add(1, Ordering::Relaxed);
                }
            }),
        )?,
        // The poster: posts to a waiter that has taken every earlier post (so it is asleep or
        // about to be), from task context with interrupts enabled.
        spawn(
            hub,
            Box::new(move || {
                while !STOP.load(Ordering::Acquire) {
                    for w in &WAITERS[..n] {
                        if w.taken.load(Ordering::Acquire) == w.posts.load(Ordering::Relaxed) {
                            w.posts.fetch_add(1, Ordering::Relaxed);
                            error_if(post(w) != 0);
                        }
                    }
                    // Hermit switches between tasks of one priority only when one blocks, yields
                    // or a timed wait's deadline fires: without this the ticker, once ready
                    // behind a thread that never yields, would never run (and re-arm) again.
                    std::thread::yield_now();
                }
            }),
        )?,
        // The waker: wakes a futex waiter that returned from every earlier wake-up, under the
        // parking-lot lock with interrupts disabled.
        spawn(
            hub,
            Box::new(move || {
                while !STOP.load(Ordering::Acquire) {
                    for w in &WAITERS[..n] {
                        if w.returns.load(Ordering::Acquire) == w.woken.load(Ordering::Relaxed) {
                            let woken = futex_wake(&w.word, 1);
                            error_if(woken < 0);
                            w.woken.fetch_add(woken.max(0) as u64, Ordering::Relaxed);
                        }
                    }
                    std::thread::yield_now();
                }
            }),
        )?,
    ];
    // The spawner: short threads pinned to the other cores, each joined (new-task path in task
    // context with interrupts enabled; the exit path wakes the joiner on the hub).
    let spawner = {
        let others = others.clone();
        spawn(
            hub,
            Box::new(move || {
                let mut next = 0;
                while Instant::now() < deadline {
                    let core = others[next % others.len()];
                    next += 1;
                    match pinned::spawn_on(core, || {
                        SPAWNED_RAN.fetch_add(1, Ordering::Relaxed);
                    }) {
                        Ok(tid) => {
                            SPAWNED.fetch_add(1, Ordering::Relaxed);
                            pinned::join(tid);
                        }
                        Err(_) => error_if(true),
                    }
                }
                STOP.store(true, Ordering::Release);
            }),
        )?
    };
    pinned::join(spawner);
    for tid in hub_threads {
        pinned::join(tid);
    }
    // Release the waiters: one more post each, and every word set so no futex wait sleeps.
    for w in &WAITERS[..n] {
        error_if(post(w) != 0);
        w.word.store(1, Ordering::Release);
        futex_wake(&w.word, i32::MAX);
    }
    for tid in waiters {
        pinned::join(tid);
    }
    for w in &WAITERS[..n] {
        let mut handle = w.sem.load(Ordering::Acquire).cast_const();
        // SAFETY: every thread that used the semaphore has been joined.
        unsafe { sys_sem_destroy(&mut handle) };
    }

    let sum = |f: fn(&Waiter) -> u64| WAITERS[..n].iter().map(f).sum::<u64>();
    let posts = sum(|w| w.posts.load(Ordering::Relaxed));
    let taken = sum(|w| w.taken.load(Ordering::Relaxed));
    let woken = sum(|w| w.woken.load(Ordering::Relaxed));
    let returns = sum(|w| w.returns.load(Ordering::Relaxed));
    let spawned = SPAWNED.load(Ordering::Relaxed);
    let ran = SPAWNED_RAN.load(Ordering::Relaxed);
    let ticks = TICKS.load(Ordering::Relaxed);
    let errors = ERRORS.load(Ordering::Relaxed);
    let n = n as u64;
    crate::ensure(errors == 0, || format!("{errors} syscalls returned an unexpected value"))?;
    crate::ensure(ran == spawned && spawned > 0, || format!("{spawned} threads spawned, {ran} ran"))?;
    // Each post is taken by one wait (a lost wake-up would have left its waiter asleep, and the
    // join above hanging); the final post per waiter ends a wait that began before the stop.
    crate::ensure(posts > 0 && taken >= posts && taken <= posts + n, || {
        format!("{posts} posts (+{n} to end), {taken} taken")
    })?;
    crate::ensure(woken > 0 && returns >= woken, || format!("{woken} futex wake-ups, {returns} waits returned"))?;
    crate::ensure(ticks > 0, || "the ticker never timed out".into())?;
    Ok(format!(
        "hub core {hub}, waiters on {n} other core{}, {:.1} s: {posts} semaphore posts, {woken} futex wake-ups, {spawned} thread{} spawned and joined, {ticks} timer wake-ups on the hub",
        if n == 1 { "" } else { "s" },
        budget.as_secs_f64(),
        if spawned == 1 { "" } else { "s" }
    ))
}
