//! wakeup: a cross-core wake-up ping-pong between two threads pinned to different cores, each
//! hand-off waking a task blocked on the other core, through blocking std primitives:
//! - `condvar`: one `Mutex<State>` and one `Condvar`; each side bumps a counter and notifies,
//!   then waits for the other side's bump;
//! - `park`: an atomic counter and `thread::park` / `Thread::unpark`.
//!
//! Per primitive: round trips per second (emulated time under QEMU TCG: compare kernels, not
//! absolute values), p50 and p99 of one round trip, and the IPIs the kernel sent during the run:
//! on the ipiq kernel (feature `ipiq-stats`) ipiq's IPIs and messages from its statistics
//! syscall; on the stock-probe kernel (`probe-stats`) the wake-up (121) and TLB-flush (112)
//! IPIs stock sent, from the probe's counters; with neither feature (plain stock) n/a.
//! The same source builds for every kernel; only the feature picks the counters. With either
//! feature each primitive's hypervisor bill is printed too (`bill:` lines per hand-off, two per
//! round trip; `hermit_apps::bill`).
//!
//! Argument (after `--` on the kernel command line): round trips per primitive (default 2000).
//! Output: one `<<<report` block and one `wakeup:` line per primitive; exits 0 only if every
//! hand-off arrived (the partner counted exactly as many as were sent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

const DEFAULT_ROUNDS: u64 = 2_000;
/// Round trips run before measuring (the partner's stack and the scheduler's paths are warm).
const WARMUP: u64 = 100;

use hermit_apps::bill::{self, Bill};
use hermit_apps::pinned;

use pinned::{apic_id, join, spawn_on};

/// IPIs (and, on the ipiq kernel, messages) the kernel has sent so far.
#[derive(Clone, Copy)]
struct Counts {
    ipis: Option<u64>,
    messages: Option<u64>,
}

#[cfg(feature = "ipiq-stats")]
mod kernel {
    pub const NAME: &str = "ipiq";
    pub const IPIS: &str = "ipiq IPIs (122)";
    pub fn counts() -> super::Counts {
        let stats = ipiq_abi::hermit::total_stats().ok();
        super::Counts { ipis: stats.map(|s| s.ipis), messages: stats.map(|s| s.sent) }
    }
}

#[cfg(all(feature = "probe-stats", not(feature = "ipiq-stats")))]
mod kernel {
    pub const NAME: &str = "stock";
    pub const IPIS: &str = "stock IPIs (121 + 112)";
    unsafe extern "C" {
        /// stock-probe: [wake-up IPIs, TLB-flush IPIs] sent so far; words written or -EINVAL.
        fn sys_probe_ipi_counts(out: *mut u64, len: usize) -> i32;
    }
    pub fn counts() -> super::Counts {
        let mut counts = [0u64; 2];
        // SAFETY: `counts` has room for 2 u64 words.
        let written = unsafe { sys_probe_ipi_counts(counts.as_mut_ptr(), counts.len()) };
        super::Counts { ipis: (written == 2).then(|| counts[0] + counts[1]), messages: None }
    }
}

#[cfg(not(any(feature = "ipiq-stats", feature = "probe-stats")))]
mod kernel {
    pub const NAME: &str = "stock-no-counters";
    pub const IPIS: &str = "IPIs";
    pub fn counts() -> super::Counts {
        super::Counts { ipis: None, messages: None }
    }
}

struct Result1 {
    primitive: &'static str,
    rounds: u64,
    took: Duration,
    samples: Vec<u64>,
    ipis: Option<u64>,
    messages: Option<u64>,
    /// The measured round trips' hypervisor bill, where the kernel has the event probe.
    bill: Option<Bill>,
}

/// Runs `rounds` measured round trips (after `WARMUP`) with `ping` doing one round trip.
fn measure(primitive: &'static str, rounds: u64, mut ping: impl FnMut()) -> Result1 {
    for _ in 0..WARMUP {
        ping();
    }
    let mut samples = Vec::with_capacity(rounds as usize);
    let before = kernel::counts();
    let bill_before = bill::now().ok();
    let began = Instant::now();
    for _ in 0..rounds {
        let t0 = Instant::now();
        ping();
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    let took = began.elapsed();
    let bill = bill::now().ok().zip(bill_before).map(|(after, before)| after.since(&before));
    let after = kernel::counts();
    let delta = |a: Option<u64>, b: Option<u64>| Some(b? - a?);
    Result1 {
        primitive,
        rounds,
        took,
        samples,
        ipis: delta(before.ipis, after.ipis),
        messages: delta(before.messages, after.messages),
        bill,
    }
}

#[derive(Default)]
struct State {
    /// Odd: the partner's turn; even: the main thread's.
    n: u64,
    stop: bool,
}

/// Mutex + Condvar ping-pong between the caller and a thread pinned to `partner`.
fn condvar(partner: usize, rounds: u64) -> Result<Result1, String> {
    let pair = Arc::new((Mutex::new(State::default()), Condvar::new()));
    let theirs = Arc::clone(&pair);
    let tid = spawn_on(
        partner,
        Box::new(move || {
            let (lock, cv) = &*theirs;
            let mut state = lock.lock().unwrap();
            loop {
                while state.n % 2 == 0 && !state.stop {
                    state = cv.wait(state).unwrap();
                }
                if state.stop {
                    break;
                }
                state.n += 1;
                cv.notify_one();
            }
        }),
    )?;
    let (lock, cv) = &*pair;
    let result = measure("Mutex+Condvar", rounds, || {
        let mut state = lock.lock().unwrap();
        state.n += 1;
        cv.notify_one();
        while state.n % 2 == 1 {
            state = cv.wait(state).unwrap();
        }
    });
    let n = {
        let mut state = lock.lock().unwrap();
        state.stop = true;
        cv.notify_one();
        state.n
    };
    join(tid);
    let expected = 2 * (WARMUP + rounds);
    if n != expected {
        return Err(format!("condvar: counter {n}, expected {expected}"));
    }
    Ok(result)
}

/// park/unpark ping-pong between the caller and a thread pinned to `partner`.
fn park(partner: usize, rounds: u64) -> Result<Result1, String> {
    const STOP: u64 = u64::MAX;
    static N: AtomicU64 = AtomicU64::new(0);
    static PARTNER_HANDOFFS: AtomicU64 = AtomicU64::new(0);
    // Relaxed: reset before the partner starts (its spawn publishes these stores).
    N.store(0, Ordering::Relaxed);
    PARTNER_HANDOFFS.store(0, Ordering::Relaxed);
    let main = thread::current();
    let (tx, rx) = mpsc::channel::<Thread>();
    let tid = spawn_on(
        partner,
        Box::new(move || {
            let _ = tx.send(thread::current());
            loop {
                // Acquire: pairs with the main thread's Release store of its turn.
                let n = N.load(Ordering::Acquire);
                if n == STOP {
                    break;
                }
                if n % 2 == 1 {
                    // Relaxed: a counter read after the join.
                    PARTNER_HANDOFFS.fetch_add(1, Ordering::Relaxed);
                    // Release: the main thread's Acquire load sees our turn complete.
                    N.store(n + 1, Ordering::Release);
                    main.unpark();
                } else {
                    thread::park();
                }
            }
        }),
    )?;
    let theirs = rx.recv().map_err(|_| "park: partner did not start".to_string())?;
    let mut turn = 0u64;
    let result = measure("park/unpark", rounds, || {
        turn += 2;
        // Release: the partner's Acquire load sees the turn handed over.
        N.store(turn - 1, Ordering::Release);
        theirs.unpark();
        // Acquire: pairs with the partner's Release store.
        while N.load(Ordering::Acquire) != turn {
            thread::park();
        }
    });
    // Release: the partner's Acquire load sees the stop.
    N.store(STOP, Ordering::Release);
    theirs.unpark();
    join(tid);
    let handoffs = PARTNER_HANDOFFS.load(Ordering::Relaxed);
    if handoffs != WARMUP + rounds {
        return Err(format!("park: partner handled {handoffs} hand-offs, expected {}", WARMUP + rounds));
    }
    Ok(result)
}

fn percentile(sorted: &[u64], p: usize) -> f64 {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i] as f64 / 1e3
}

fn opt(v: Option<u64>) -> String {
    v.map_or("n/a".into(), |v| v.to_string())
}

fn main() {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let me = apic_id();
    let rounds = match std::env::args().nth(1) {
        None => DEFAULT_ROUNDS,
        Some(arg) => match arg.parse::<u64>() {
            Ok(n) if (1..=10_000_000).contains(&n) => n,
            _ => {
                println!("wakeup: error: round trips must be 1..=10000000, not '{arg}'");
                std::process::exit(2);
            }
        },
    };
    if cpus < 2 {
        println!("wakeup: error: needs at least 2 cores");
        std::process::exit(2);
    }
    let partner = if me == 0 { 1 } else { 0 };
    println!("wakeup: {} kernel, {cpus} cores, ping-pong core {me} <-> core {partner}, {rounds} round trips per primitive", kernel::NAME);
    let mut results = Vec::new();
    for run in [condvar as fn(usize, u64) -> Result<Result1, String>, park] {
        match run(partner, rounds) {
            Ok(r) => results.push(r),
            Err(e) => {
                println!("wakeup: FAIL: {e}");
                std::process::exit(1);
            }
        }
    }
    println!("<<<report Wake-up ping-pong, core {me} <-> core {partner}: {} kernel, {cpus} vCPUs", kernel::NAME);
    println!("| primitive | round trips | round trips/s | p50 us | p99 us | {} | per round trip | ipiq messages |", kernel::IPIS);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &mut results {
        r.samples.sort_unstable();
        let rate = r.rounds as f64 / r.took.as_secs_f64();
        let (p50, p99) = (percentile(&r.samples, 50), percentile(&r.samples, 99));
        let per = r.ipis.map_or("n/a".into(), |i| format!("{:.2}", i as f64 / r.rounds as f64));
        println!(
            "| {} | {} | {rate:.0} | {p50:.1} | {p99:.1} | {} | {per} | {} |",
            r.primitive,
            r.rounds,
            opt(r.ipis),
            opt(r.messages)
        );
    }
    println!(">>>report");
    for r in &results {
        let rate = r.rounds as f64 / r.took.as_secs_f64();
        println!(
            "wakeup: kernel={} smp={cpus} primitive={} rounds={} rt_per_s={rate:.0} p50_us={:.1} p99_us={:.1} ipis={} messages={}",
            kernel::NAME,
            r.primitive,
            r.rounds,
            percentile(&r.samples, 50),
            percentile(&r.samples, 99),
            opt(r.ipis),
            opt(r.messages)
        );
        if let Some(b) = r.bill {
            let case = if r.primitive.starts_with("Mutex") { "condvar" } else { "park" };
            let what = format!("app=wakeup kernel={} smp={cpus} case={case} unit=hand-off", kernel::NAME);
            println!("{}", b.line(&what, 2 * r.rounds));
        }
    }
    println!("wakeup: ok, every hand-off arrived");
}
