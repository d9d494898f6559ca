//! tlb-stale: readers on the other cores keep reading a page while core 0 exchanges the frames
//! behind it (`hermit_apps::stale`, the same code ipiq-tests runs). On the ipiq kernel (feature
//! `ipiq-stats`) the swap returns only after every core flushed: any stale read fails the
//! run. On the stock-probe kernel (`probe-stats`) the swap uses stock's own map and its
//! fire-and-forget `ipi_tlb_flush`; the stale reads readers see are the finding, reported, not
//! a failure. Either way the run fails if the experiment itself did not work (no checked reads,
//! a swap refused, or the kernel's own counters show the swap did not take the expected path).
//!
//! Argument (after `--` on the kernel command line): the number of swaps (default 100, 20 with
//! more than 4 cores). Output: a `<<<report` block and one `tlb-stale:` summary line.
//!
//! `rate [SWAPS]` measures what a shootdown costs instead: SWAPS swaps (default 200) back to
//! back under one reader on the last core, first with the cores in between idle, then with them
//! spinning; per arrangement one `tlb-stale-rate:` line (swaps per second, stale reads, IPIs per
//! swap) and a `<<<report` row. Stale reads fail the run on the ipiq kernel here too.

#[cfg(not(any(feature = "ipiq-stats", feature = "probe-stats")))]
compile_error!("tlb-stale needs the ipiq kernel (ipiq-stats) or the stock-probe kernel (probe-stats)");

use hermit_apps::{pinned, stale};

use pinned::{apic_id, join};

/// `pinned::spawn_on` in the shape `stale::run` takes: a negative task id if the kernel refused.
fn spawn_on(core: usize, job: Box<dyn FnOnce() + Send>) -> i32 {
    pinned::spawn_on(core, job).unwrap_or(-1)
}

/// The kernel-side counters around the swaps and the unmap.
#[cfg(feature = "ipiq-stats")]
mod kernel {
    pub const NAME: &str = "ipiq";
    /// ipiq shootdowns so far (all cores).
    pub fn counter() -> Result<u64, String> {
        ipiq_abi::hermit::total_stats().map(|s| s.shootdowns).map_err(|e| e.to_string())
    }
    pub const COUNTER: &str = "shootdowns";
    /// IPIs ipiq has sent so far (all cores, every kind).
    pub fn ipis() -> Result<u64, String> {
        ipiq_abi::hermit::total_stats().map(|s| s.ipis).map_err(|e| e.to_string())
    }
}

#[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
mod kernel {
    pub const NAME: &str = "stock";
    unsafe extern "C" {
        /// stock-probe: [wake-up IPIs, TLB-flush IPIs] sent so far; words written or -EINVAL.
        fn sys_probe_ipi_counts(out: *mut u64, len: usize) -> i32;
    }
    /// [wake-up IPIs, TLB-flush IPIs] stock has sent so far.
    fn counts() -> Result<[u64; 2], String> {
        let mut counts = [0u64; 2];
        // SAFETY: `counts` has room for 2 u64 words.
        let written = unsafe { sys_probe_ipi_counts(counts.as_mut_ptr(), counts.len()) };
        if written != 2 {
            return Err(format!("sys_probe_ipi_counts returned {written}"));
        }
        Ok(counts)
    }
    /// TLB-flush IPIs (vector 112) stock has sent so far.
    pub fn counter() -> Result<u64, String> {
        counts().map(|c| c[1])
    }
    pub const COUNTER: &str = "TLB-flush IPIs";
    /// IPIs stock has sent so far (wake-ups and TLB flushes; one ICR write each).
    pub fn ipis() -> Result<u64, String> {
        counts().map(|c| c[0] + c[1])
    }
}

/// stock-probe only: readers on the other cores spin reading page `p`; core 0 munmaps it
/// (stock: local invlpg only, no IPI; the frame goes back to the free list). Readers go on
/// reading `p` after munmap returned, with nothing mapped there any more, until they made
/// `TARGET_READS` reads each or `WINDOW` passed: every read that completes went through a
/// stale TLB entry. It returns the old content, or, if the
/// kernel handed the freed frame to someone else meanwhile, their data (counted apart).
/// Not run on the ipiq kernel: there munmap shoots the entry down, so a reader's next read of
/// `p` faults, as it should (its munmap shootdowns are counted instead).
#[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
mod after_munmap {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const PAGE: usize = 4096;
    const READ_WRITE: u32 = 3;
    const OLD: u64 = 0xA1A1;
    /// Reads each reader makes after munmap returned (a host that deschedules a vCPU makes a
    /// time window alone say little)...
    const TARGET_READS: u64 = 1000;
    /// ...or until this much (emulated) time passed.
    const WINDOW: Duration = Duration::from_millis(100);

    unsafe extern "C" {
        fn sys_mmap(size: usize, prot_flags: u32, ret: &mut *mut u8) -> i32;
        fn sys_munmap(ptr: *mut u8, size: usize) -> i32;
    }

    pub struct Seen {
        /// Reads of the page that completed after munmap returned.
        pub reads: u64,
        /// Of those, the old content (the freed frame).
        pub old: u64,
        /// Of those, anything else (the freed frame was reused meanwhile).
        pub other: u64,
    }

    pub fn run(me: usize, cpus: usize, spawn: super::stale::Spawn, join: &dyn Fn(i32)) -> Result<Seen, String> {
        static PHASE: AtomicU64 = AtomicU64::new(0);
        static READY: AtomicUsize = AtomicUsize::new(0);
        static STOP: AtomicBool = AtomicBool::new(false);
        static READS: AtomicU64 = AtomicU64::new(0);
        static OLD_READS: AtomicU64 = AtomicU64::new(0);
        static OTHER_READS: AtomicU64 = AtomicU64::new(0);
        static ADDR: AtomicUsize = AtomicUsize::new(0);

        let mut p: *mut u8 = std::ptr::null_mut();
        // SAFETY: sys_mmap writes the mapping's address through the reference; the write goes
        // to the fresh page it returned.
        unsafe {
            if sys_mmap(PAGE, READ_WRITE, &mut p) != 0 {
                return Err("mmap failed".into());
            }
            (p as *mut u64).write_volatile(OLD);
        }
        // Release: a reader that loads ADDR with Acquire sees the page content written above.
        ADDR.store(p as usize, Ordering::Release);
        let readers: Vec<i32> = (0..cpus)
            .filter(|&core| core != me)
            .map(|core| {
                spawn(
                    core,
                    Box::new(|| {
                        let addr = ADDR.load(Ordering::Acquire) as *const u64;
                        // SAFETY: still mapped: the writer unmaps only after every reader is READY.
                        let _ = unsafe { addr.read_volatile() };
                        // Release: pairs with the writer's Acquire wait.
                        READY.fetch_add(1, Ordering::Release);
                        // Acquire: the writer's phase changes order the reads below after them.
                        while !STOP.load(Ordering::Acquire) {
                            let phase = PHASE.load(Ordering::Acquire);
                            // SAFETY: none on a correct kernel once phase >= 1: this read of an
                            // unmapped page is the experiment (stock keeps the stale entry); on
                            // a kernel that shot it down it would fault, which is why this probe
                            // runs only on stock-probe.
                            let value = unsafe { addr.read_volatile() };
                            if phase >= 1 {
                                // Relaxed: counters read after the join.
                                READS.fetch_add(1, Ordering::Relaxed);
                                if value == OLD {
                                    OLD_READS.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    OTHER_READS.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }),
                )
            })
            .collect();
        if readers.iter().any(|&tid| tid < 0) {
            STOP.store(true, Ordering::Release);
            return Err("could not start a reader on every other core".into());
        }
        // Acquire: pairs with each reader's Release increment.
        while READY.load(Ordering::Acquire) < readers.len() {
            std::hint::spin_loop();
        }
        std::thread::sleep(Duration::from_micros(200));
        // SAFETY: our own mapping; the readers' reads after this are the experiment.
        let code = unsafe { sys_munmap(p, PAGE) };
        // Release: reads counted from here on happened after munmap returned.
        PHASE.store(1, Ordering::Release);
        let began = Instant::now();
        let target = TARGET_READS * readers.len() as u64;
        // Relaxed: only a progress estimate; the exact count is read after the join.
        while READS.load(Ordering::Relaxed) < target && began.elapsed() < WINDOW {
            std::hint::spin_loop();
        }
        // Release: readers stop reading.
        STOP.store(true, Ordering::Release);
        for tid in readers {
            join(tid);
        }
        if code != 0 {
            return Err(format!("munmap returned {code}"));
        }
        Ok(Seen {
            reads: READS.load(Ordering::Relaxed),
            old: OLD_READS.load(Ordering::Relaxed),
            other: OTHER_READS.load(Ordering::Relaxed),
        })
    }
}

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let me = apic_id();
    if std::env::args().nth(1).as_deref() == Some("rate") {
        let swaps = match std::env::args().nth(2).map(|a| a.parse::<u64>()) {
            None => 200,
            Some(Ok(n)) if (1..=stale::MAX_ROUNDS).contains(&n) => n,
            Some(_) => {
                println!("tlb-stale: error: rate takes a number of swaps 1..={}", stale::MAX_ROUNDS);
                std::process::exit(2);
            }
        };
        if cpus < 2 {
            println!("tlb-stale: error: needs at least 2 cores (the reader runs on the last)");
            std::process::exit(2);
        }
        match rate(me, cpus, swaps) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                println!("tlb-stale: FAIL: {e}");
                std::process::exit(1);
            }
        }
    }
    let rounds = match std::env::args().nth(1) {
        None => {
            if cpus > 4 {
                20
            } else {
                100
            }
        }
        Some(arg) => match arg.parse::<u64>() {
            Ok(n) if (1..=stale::MAX_ROUNDS).contains(&n) => n,
            _ => {
                println!("tlb-stale: error: swaps must be 1..={}, not '{arg}'", stale::MAX_ROUNDS);
                std::process::exit(2);
            }
        },
    };
    println!("tlb-stale: {} kernel, {cpus} cores, writer on core {me}, {rounds} swaps", kernel::NAME);
    if cpus < 2 {
        println!("tlb-stale: error: needs at least 2 cores (readers run on the others)");
        std::process::exit(2);
    }
    match run(me, cpus, rounds) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("tlb-stale: FAIL: {e}");
            std::process::exit(1);
        }
    }
}

/// The shootdown's cost: swaps back to back under a reader on the last core, the cores in
/// between idle, then spinning.
fn rate(me: usize, cpus: usize, swaps: u64) -> Result<(), String> {
    println!("<<<report Shootdown cost: swaps back to back under a reader on the last core, {} kernel, {cpus} vCPUs", kernel::NAME);
    println!("| kernel | vCPUs | other cores | swaps | swaps/s | stale reads | checked reads | IPIs per swap |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    let mut lines = Vec::new();
    for busy in [false, true] {
        let plan = stale::Plan { all_read: false, busy, gap: None, between_reads: stale::BetweenReads::Spin };
        let ipis_before = kernel::ipis()?;
        let (out, pages) = stale::run_plan(me, cpus, swaps, plan, &spawn_on, &join)?;
        let ipis = kernel::ipis()? - ipis_before;
        pages.unmap()?;
        let others = if cpus < 3 { "none" } else if busy { "busy" } else { "idle" };
        let secs = out.elapsed.as_secs_f64();
        let per_sec = out.rounds as f64 / secs.max(1e-9);
        let ipis_per_swap = ipis as f64 / out.rounds as f64;
        println!(
            "| {} | {cpus} | {others} | {} | {per_sec:.0} | {} | {} | {ipis_per_swap:.2} |",
            kernel::NAME,
            out.rounds,
            out.stale,
            out.checks
        );
        lines.push(format!(
            "tlb-stale-rate: kernel={} smp={cpus} others={others} swaps={} secs={secs:.6} swaps_per_s={per_sec:.1} stale={} checked={} ipis_per_swap={ipis_per_swap:.3} readers_killed={}",
            kernel::NAME,
            out.rounds,
            out.stale,
            out.checks,
            out.readers - out.readers_finished
        ));
        if let Some(bill) = out.bill {
            let what = format!("app=shootdown kernel={} smp={cpus} case={others} unit=swap", kernel::NAME);
            lines.push(bill.line(&what, out.rounds));
        }
        if cfg!(feature = "ipiq-stats") && (out.stale != 0 || out.readers_finished != out.readers) {
            println!(">>>report");
            return Err(format!(
                "{} stale reads of {} on the ipiq kernel, {} of {} readers killed by a page fault",
                out.stale,
                out.checks,
                out.readers - out.readers_finished,
                out.readers
            ));
        }
        if cpus < 3 {
            // With two cores there is nobody in between: one arrangement.
            break;
        }
    }
    println!(">>>report");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

fn run(me: usize, cpus: usize, rounds: u64) -> Result<(), String> {
    stale::swap_rejects_bad_input()?;
    println!("tlb-stale: sys_ipiq_swap_pages refuses bad input with -EINVAL");
    let before = kernel::counter()?;
    let (out, pages) = stale::run(me, cpus, rounds, &spawn_on, &join)?;
    let after_swaps = kernel::counter()?;
    pages.unmap()?;
    let after_unmap = kernel::counter()?;
    let swap_count = after_swaps - before;
    let unmap_count = after_unmap - after_swaps;
    #[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
    let seen = after_munmap::run(me, cpus, &spawn_on, &join)?;
    // Reads of an unmapped page after munmap returned: (reads, old content, other), stock only.
    #[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
    let (late, late_old, late_other) = (seen.reads.to_string(), seen.old.to_string(), seen.other.to_string());
    #[cfg(feature = "ipiq-stats")]
    let (late, late_old, late_other) = ("-".to_string(), "-".to_string(), "-".to_string());

    println!("<<<report Stale TLB after a remap: {} kernel, {cpus} vCPUs", kernel::NAME);
    println!("| kernel | vCPUs | swaps | readers | checked reads | stale reads | swaps followed by a stale read | most stale reads after one swap | {} in swaps | {} in munmap | reads of a page after its munmap returned (until 1000 per reader or 100 ms) | of them old content | of them other data |", kernel::COUNTER, kernel::COUNTER);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {cpus} | {} | {} | {} | {} | {} | {} | {swap_count} | {unmap_count} | {late} | {late_old} | {late_other} |",
        kernel::NAME,
        out.rounds,
        out.readers,
        out.checks,
        out.stale,
        out.stale_rounds,
        out.max_stale_in_round
    );
    println!(">>>report");
    println!(
        "tlb-stale: kernel={} smp={cpus} swaps={} readers={} checked={} stale={} stale_swaps={} max_stale_per_swap={} swap_flushes={swap_count} munmap_flushes={unmap_count} late_reads={late} late_old={late_old} late_other={late_other}",
        kernel::NAME,
        out.rounds,
        out.readers,
        out.checks,
        out.stale,
        out.stale_rounds,
        out.max_stale_in_round
    );

    if out.checks == 0 {
        return Err("readers never made a checked read".into());
    }
    let late_note = format!("{late} reads of an unmapped page completed after munmap returned ({late_old} old content, {late_other} other data; readers ran until each made 1000 or 100 ms passed)");
    check_kernel(&out, cpus, swap_count, unmap_count, &late_note)
}

/// The ipiq kernel: no stale read, and each swap's two maps each shot down (unmap too).
#[cfg(feature = "ipiq-stats")]
fn check_kernel(out: &stale::Outcome, _cpus: usize, swap_count: u64, unmap_count: u64, _late: &str) -> Result<(), String> {
    if out.readers_finished != out.readers {
        return Err(format!("{} of {} readers were killed by a page fault during the swaps", out.readers - out.readers_finished, out.readers));
    }
    if out.stale != 0 {
        return Err(format!("{} stale reads of {} on the ipiq kernel", out.stale, out.checks));
    }
    if swap_count < 2 * out.rounds {
        return Err(format!("{swap_count} shootdowns for {} swaps", out.rounds));
    }
    if unmap_count < 1 {
        return Err("munmap did not shoot down".into());
    }
    println!("tlb-stale: PASS: 0 stale reads of {} (acknowledged shootdown)", out.checks);
    Ok(())
}

/// stock-probe: the swaps must have gone through stock's map over a present entry, which sends
/// one TLB-flush IPI to every other core per map (two maps per swap); the stale reads are the
/// finding and are only reported.
#[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
fn check_kernel(out: &stale::Outcome, cpus: usize, swap_count: u64, unmap_count: u64, late: &str) -> Result<(), String> {
    let expected = 2 * out.rounds * (cpus as u64 - 1);
    if swap_count < expected {
        return Err(format!("{swap_count} TLB-flush IPIs for {} swaps on {cpus} cores (expected {expected})", out.rounds));
    }
    println!(
        "tlb-stale: REPORT: stock kernel: {} stale reads of {} checked ({} of {} swaps followed by one); {} of {} readers killed by a page fault during the swaps; munmap sent {unmap_count} TLB-flush IPIs; {late}",
        out.stale,
        out.checks,
        out.stale_rounds,
        out.rounds,
        out.readers - out.readers_finished,
        out.readers
    );
    Ok(())
}
