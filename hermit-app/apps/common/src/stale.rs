//! The stale-TLB experiment, shared by `tlb-stale` (ipiq and stock-probe kernels) and
//! `ipiq-tests` (ipiq kernel), so both run the same logic.
//!
//! Two pages `a` and `b` hold 0xA and 0xB. Readers on every other core spin reading `a`. The
//! writer (the caller's core) exchanges the frames behind `a` and `b` with
//! `sys_ipiq_swap_pages` (two maps over present entries), then publishes the new expected value
//! and bumps an epoch. The epoch works like a seqlock: odd while a swap is under way, even once
//! the swap call has returned. A reader's read counts only if the epoch was the same even value
//! before and after it; such a read that returns the old frame's value is stale: the reader's
//! core still translated `a` through a TLB entry the swap should have shot down before
//! returning. The writer leaves `GAP` between swaps, so readers keep reading each mapping.
//!
//! [`run_plan`] runs the same loop with other arrangements ([`Plan`]): one reader on the last
//! core while the cores in between idle or spin, and swaps back to back, for the cost of a
//! shootdown (swaps per second) rather than its correctness alone.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::Thread;
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const READ_WRITE: u32 = 3;
/// Most swaps one run may do (the per-swap counters are a fixed array).
pub const MAX_ROUNDS: u64 = 1000;
/// Time between two swaps, readers reading the current mapping.
const GAP: Duration = Duration::from_micros(200);

unsafe extern "C" {
    fn sys_mmap(size: usize, prot_flags: u32, ret: &mut *mut u8) -> i32;
    fn sys_munmap(ptr: *mut u8, size: usize) -> i32;
    /// Exchanges the frames behind two mapped 4 KiB pages (ipiq kernel: with an acknowledged
    /// shootdown; stock-probe: with stock's own flushing). 0 or a negative errno.
    fn sys_ipiq_swap_pages(a: usize, b: usize) -> i32;
}

/// Who does what on the cores other than the writer's, and how fast the writer swaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// A reader on every other core (`true`), or on the last core only.
    pub all_read: bool,
    /// The cores that do not read spin in a pinned thread (`true`) or idle (`false`).
    pub busy: bool,
    /// Time between two swaps (`None`: back to back).
    pub gap: Option<Duration>,
    /// What a reader does between two reads.
    pub between_reads: BetweenReads,
}

/// What a reader does between two reads: keep its core busy, or let it halt and be woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetweenReads {
    /// Nothing: the reader spins, its core never idles.
    Spin,
    /// Sleeps this long: its core halts (shootdowns defer its flush) and the scheduler's timer
    /// wakes it.
    Sleep(Duration),
    /// Parks until the writer unparks every reader after each swap: its core halts, and the
    /// cross-core wake-up (a scheduler message, an IPI to a halted core) wakes it.
    Park,
}

/// The stale-TLB check: readers everywhere, a gap between swaps.
pub const CHECK: Plan = Plan { all_read: true, busy: false, gap: Some(GAP), between_reads: BetweenReads::Spin };

/// What the readers saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub rounds: u64,
    pub readers: usize,
    /// Cores that spun (busy) while the swaps ran.
    pub spinners: usize,
    /// Time from the first swap to the last swap's return (gaps included).
    pub elapsed: Duration,
    /// The hypervisor bill from the first swap until every reader and spinner has stopped, where
    /// the kernel has the event probe.
    pub bill: Option<crate::bill::Bill>,
    /// Reads inside a stable epoch (after a swap returned, before the next began).
    pub checks: u64,
    /// Of those, reads that returned the old frame's value.
    pub stale: u64,
    /// Swaps after which at least one stale read happened.
    pub stale_rounds: u64,
    /// Most stale reads after a single swap.
    pub max_stale_in_round: u64,
    /// Readers that ran until the writer stopped them. One missing was killed (the kernel ends a
    /// task that takes a page fault): its page was not mapped for a moment during a swap.
    pub readers_finished: usize,
}

/// The two test pages, still mapped; `unmap` them when done (callers measure around it).
pub struct Pages {
    a: *mut u8,
    b: *mut u8,
}

impl Pages {
    pub fn unmap(self) -> Result<(), String> {
        // SAFETY: both are this test's own mappings and no reader runs any more.
        let (ra, rb) = unsafe { (sys_munmap(self.a, PAGE), sys_munmap(self.b, PAGE)) };
        if ra != 0 || rb != 0 {
            return Err(format!("munmap failed ({ra}, {rb})"));
        }
        Ok(())
    }
}

/// `sys_ipiq_swap_pages` must refuse bad input with -EINVAL (-22) and change nothing: the same
/// page twice, an unaligned address, an unmapped page, a non-canonical address.
pub fn swap_rejects_bad_input() -> Result<(), String> {
    const EINVAL: i32 = -22;
    let mut p: *mut u8 = std::ptr::null_mut();
    // SAFETY: sys_mmap writes the mapping's address through the reference.
    if unsafe { sys_mmap(PAGE, READ_WRITE, &mut p) } != 0 {
        return Err("mmap failed".into());
    }
    // A page that was mapped and is not any more (virtual address 0 is no such page: Hermit maps it).
    let mut gone: *mut u8 = std::ptr::null_mut();
    // SAFETY: as above; then our own mapping is unmapped again, nothing reads it.
    if unsafe { sys_mmap(PAGE, READ_WRITE, &mut gone) } != 0 || unsafe { sys_munmap(gone, PAGE) } != 0 {
        return Err("mmap/munmap failed".into());
    }
    let (p, gone) = (p as usize, gone as usize);
    // SAFETY: `p` is our fresh page.
    unsafe { (p as *mut u64).write_volatile(0x5A) };
    let cases = [("the same page twice", p, p), ("unaligned", p + 8, p), ("unmapped", p, gone), ("non-canonical", p, 1 << 63)];
    let mut wrong = Vec::new();
    for (what, a, b) in cases {
        // SAFETY: every case is refused before anything is mapped (what this checks).
        let code = unsafe { sys_ipiq_swap_pages(a, b) };
        if code != EINVAL {
            wrong.push(format!("{what}: {code}"));
        }
    }
    // SAFETY: `p` is still our page (the refused swaps changed nothing; checked here).
    let kept = unsafe { (p as *const u64).read_volatile() } == 0x5A;
    // SAFETY: our own mapping.
    unsafe { sys_munmap(p as *mut u8, PAGE) };
    if !wrong.is_empty() || !kept {
        return Err(format!("sys_ipiq_swap_pages accepted bad input: {} (page kept: {kept})", wrong.join(", ")));
    }
    Ok(())
}

/// Starts `job` on core `core` (pinned) and returns a handle for `join`.
pub type Spawn<'a> = &'a dyn Fn(usize, Box<dyn FnOnce() + Send>) -> i32;

/// Runs `rounds` swaps on the calling core `me` under one reader on each other core of `cpus`.
/// Errors are setup failures (mmap, a swap refused, too many rounds), not stale reads.
pub fn run(me: usize, cpus: usize, rounds: u64, spawn: Spawn, join: &dyn Fn(i32)) -> Result<(Outcome, Pages), String> {
    run_plan(me, cpus, rounds, CHECK, spawn, join)
}

/// [`run`] with another arrangement of readers, spinners and gaps ([`Plan`]).
pub fn run_plan(me: usize, cpus: usize, rounds: u64, plan: Plan, spawn: Spawn, join: &dyn Fn(i32)) -> Result<(Outcome, Pages), String> {
    static EPOCH: AtomicU64 = AtomicU64::new(0);
    static EXPECT: AtomicU64 = AtomicU64::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    static READY: AtomicUsize = AtomicUsize::new(0);
    static FINISHED: AtomicUsize = AtomicUsize::new(0);
    /// The readers' threads, for the writer's unparks (`BetweenReads::Park`).
    static PARKED: Mutex<Vec<Thread>> = Mutex::new(Vec::new());
    static ADDR: AtomicUsize = AtomicUsize::new(0);
    static STALE_BY_ROUND: [AtomicU64; MAX_ROUNDS as usize + 1] = [const { AtomicU64::new(0) }; MAX_ROUNDS as usize + 1];

    if rounds == 0 || rounds > MAX_ROUNDS {
        return Err(format!("rounds must be 1..={MAX_ROUNDS}, not {rounds}"));
    }
    let mut a: *mut u8 = std::ptr::null_mut();
    let mut b: *mut u8 = std::ptr::null_mut();
    // SAFETY: sys_mmap writes the mapping's address through the reference; the writes go to
    // the fresh pages it returned.
    unsafe {
        if sys_mmap(PAGE, READ_WRITE, &mut a) != 0 || sys_mmap(PAGE, READ_WRITE, &mut b) != 0 {
            return Err("mmap failed".into());
        }
        (a as *mut u64).write_volatile(0xA);
        (b as *mut u64).write_volatile(0xB);
    }
    // Relaxed for the resets: the readers are started after them (spawn publishes them).
    EPOCH.store(0, Ordering::Relaxed);
    EXPECT.store(0xA, Ordering::Relaxed);
    STOP.store(false, Ordering::Relaxed);
    READY.store(0, Ordering::Relaxed);
    FINISHED.store(0, Ordering::Relaxed);
    CHECKS.store(0, Ordering::Relaxed);
    // Only parked readers need it: the other arrangements take no lock in the timed loop.
    let unpark_readers = || {
        if plan.between_reads != BetweenReads::Park {
            return;
        }
        if let Ok(threads) = PARKED.lock() {
            threads.iter().for_each(Thread::unpark);
        }
    };
    if let Ok(mut threads) = PARKED.lock() {
        threads.clear();
    }
    for counter in &STALE_BY_ROUND {
        counter.store(0, Ordering::Relaxed);
    }
    // Release: a reader that loads ADDR with Acquire also sees the page contents written above.
    ADDR.store(a as usize, Ordering::Release);

    let others: Vec<usize> = (0..cpus).filter(|&core| core != me).collect();
    let last = others.last().copied();
    let (reading, rest): (Vec<usize>, Vec<usize>) = others.iter().partition(|&&core| plan.all_read || Some(core) == last);
    let spinning: Vec<usize> = if plan.busy { rest } else { Vec::new() };
    let spinners: Vec<i32> = spinning
        .iter()
        .map(|&core| {
            spawn(
                core,
                Box::new(|| {
                    // Release: pairs with the writer's Acquire wait, as the readers'.
                    READY.fetch_add(1, Ordering::Release);
                    // Acquire: as the readers' loop.
                    while !STOP.load(Ordering::Acquire) {
                        std::hint::spin_loop();
                    }
                }),
            )
        })
        .collect();
    let readers: Vec<i32> = reading
        .iter()
        .map(|&core| {
            spawn(
                core,
                Box::new(move || {
                    let addr = ADDR.load(Ordering::Acquire) as *const u64;
                    if plan.between_reads == BetweenReads::Park {
                        if let Ok(mut threads) = PARKED.lock() {
                            threads.push(std::thread::current());
                        }
                    }
                    // Release: pairs with the writer's Acquire wait for every reader.
                    READY.fetch_add(1, Ordering::Release);
                    // Acquire: after STOP the writer unmaps; no read may move past the check.
                    while !STOP.load(Ordering::Acquire) {
                        // Acquire: EXPECT (published before the even epoch with Release) and the
                        // read below cannot move before this load.
                        let s1 = EPOCH.load(Ordering::Acquire);
                        let expect = EXPECT.load(Ordering::Acquire);
                        // SAFETY: `a` stays mapped (to one of the two frames) until STOP.
                        let value = unsafe { addr.read_volatile() };
                        // The read completes before the epoch is read again (seqlock reader).
                        fence(Ordering::Acquire);
                        let s2 = EPOCH.load(Ordering::Relaxed);
                        if s1 == s2 && s1 % 2 == 0 {
                            // Relaxed: counters, read after the readers are joined.
                            CHECKS.fetch_add(1, Ordering::Relaxed);
                            if value != expect {
                                let round = ((s1 / 2) as usize).min(MAX_ROUNDS as usize);
                                STALE_BY_ROUND[round].fetch_add(1, Ordering::Relaxed);
                            }
                        } else {
                            // A swap was under way: read again before idling, so every wake-up
                            // yields a checked read.
                            continue;
                        }
                        match plan.between_reads {
                            BetweenReads::Spin => {}
                            BetweenReads::Sleep(nap) => std::thread::sleep(nap),
                            BetweenReads::Park => std::thread::park(),
                        }
                    }
                    // Relaxed: read after the readers are joined.
                    FINISHED.fetch_add(1, Ordering::Relaxed);
                }),
            )
        })
        .collect();
    if readers.iter().chain(&spinners).any(|&tid| tid < 0) {
        // Let any thread that did start finish at once.
        STOP.store(true, Ordering::Release);
        return Err("could not start a reader or spinner on every core it needs".into());
    }
    // Acquire: pairs with each reader's and spinner's Release increment.
    while READY.load(Ordering::Acquire) < readers.len() + spinners.len() {
        std::hint::spin_loop();
    }
    let mut error = None;
    let bill_before = crate::bill::now().ok();
    let start = Instant::now();
    for _ in 0..rounds {
        // AcqRel: the odd epoch is visible before the swap touches the page tables.
        EPOCH.fetch_add(1, Ordering::AcqRel);
        // SAFETY: both pages are this test's own mappings.
        let code = unsafe { sys_ipiq_swap_pages(a as usize, b as usize) };
        if code != 0 {
            error = Some(format!("sys_ipiq_swap_pages failed ({code})"));
            break;
        }
        // Relaxed load: only this thread writes EXPECT.
        let next = if EXPECT.load(Ordering::Relaxed) == 0xA { 0xB } else { 0xA };
        // Release: a reader that sees the new even epoch sees the new expected value.
        EXPECT.store(next, Ordering::Release);
        // AcqRel: the even epoch is published only after the swap call returned.
        EPOCH.fetch_add(1, Ordering::AcqRel);
        unpark_readers();
        if let Some(gap) = plan.gap {
            std::thread::sleep(gap);
        }
    }
    let elapsed = start.elapsed();
    // Release: the readers' final reads happen before the unmap the caller does next.
    STOP.store(true, Ordering::Release);
    unpark_readers();
    let (reader_count, spinner_count) = (readers.len(), spinners.len());
    for tid in readers.into_iter().chain(spinners) {
        join(tid);
    }
    // Read once every reader has stopped: a fire-and-forget flush IPI is taken (and its EOI
    // written) whenever its target next runs, which may be after the last swap returned.
    let bill = crate::bill::now().ok().zip(bill_before).map(|(after, before)| after.since(&before));
    let pages = Pages { a, b };
    if let Some(e) = error {
        let _ = pages.unmap();
        return Err(e);
    }
    let by_round: Vec<u64> = STALE_BY_ROUND.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let outcome = Outcome {
        rounds,
        readers: reader_count,
        spinners: spinner_count,
        elapsed,
        bill,
        checks: CHECKS.load(Ordering::Relaxed),
        stale: by_round.iter().sum(),
        stale_rounds: by_round.iter().filter(|&&n| n > 0).count() as u64,
        max_stale_in_round: by_round.iter().copied().max().unwrap_or(0),
        readers_finished: FINISHED.load(Ordering::Relaxed),
    };
    Ok((outcome, pages))
}
