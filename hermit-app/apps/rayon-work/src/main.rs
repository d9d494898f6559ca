//! rayon-work: code no one here wrote, on the patched and the stock Hermit kernel.
//!
//! Two workloads built on the rayon crate (unmodified from the registry), each run first
//! sequentially (the baseline) and then with rayon, on the same input:
//!
//! 1. sort: `sort_unstable` against `par_sort_unstable` of a seeded pseudo-random `Vec<u32>`
//!    (10^7 elements); both results must be sorted, carry the input's multiset fingerprint, and
//!    be equal;
//! 2. stencil: Jacobi relaxation of Laplace's equation on an n x n grid (1024 x 1024, hot top
//!    edge, the other edges cold), a fixed number of sweeps, rows split with `par_chunks_mut`;
//!    the parallel grid must equal the sequential one bit for bit, and the sequential one must
//!    obey what the exact iteration guarantees (every value in [0, 1], exact left-right mirror
//!    symmetry, never increasing down a column).
//!
//! Arguments (after `--` on the kernel command line, e.g. QEMU `-append "-- smoke"`):
//! `smoke` (10^5 elements, 128 x 128 grid, 10 sweeps), `sort=N`, `grid=N`, `iters=N`.
//!
//! With the cargo feature `ipiq-stats` (only linkable against the patched kernel) the ipiq
//! statistics delta of each run is reported (messages, IPIs, IPIs avoided); otherwise "n/a".
//! With `ipiq-stats` or `probe-stats` (the stock-probe kernel) each parallel run's hypervisor
//! bill is printed too (`bill:` lines, `hermit_apps::bill`).
//! Times are emulated time under QEMU TCG. Exits 1 if any result is wrong, 2 on a bad argument.

use std::time::Instant;

use hermit_apps::bill::{self, Bill};
use rayon::prelude::*;
use rayon::ThreadPool;

struct Config {
    sort_len: usize,
    grid: usize,
    iters: usize,
}

impl Config {
    const FULL: Config = Config {
        sort_len: 10_000_000,
        grid: 1024,
        iters: 10,
    };
    const SMOKE: Config = Config {
        sort_len: 100_000,
        grid: 128,
        iters: 10,
    };

    fn from_args(args: &[String]) -> Result<Config, String> {
        let mut config = Config::FULL;
        for arg in args {
            if arg == "smoke" {
                config = Config::SMOKE;
                continue;
            }
            let (key, value) = arg
                .split_once('=')
                .ok_or_else(|| format!("unknown argument '{arg}' (expected smoke, sort=N, grid=N or iters=N)"))?;
            let value: usize = value
                .parse()
                .map_err(|_| format!("argument '{arg}': '{value}' is not a non-negative integer"))?;
            match key {
                "sort" if (1..=1 << 28).contains(&value) => config.sort_len = value,
                "grid" if (3..=8192).contains(&value) => config.grid = value,
                "iters" if (1..=100_000).contains(&value) => config.iters = value,
                "sort" | "grid" | "iters" => {
                    return Err(format!(
                        "argument '{arg}' out of range (sort 1..=2^28, grid 3..=8192, iters 1..=100000)"
                    ))
                }
                _ => return Err(format!("unknown argument '{arg}'")),
            }
        }
        Ok(config)
    }
}

/// ipiq's counters summed over every core, where the kernel has them.
#[derive(Clone, Copy)]
struct IpiCounts {
    messages: u64,
    ipis: u64,
    avoided: u64,
}

#[cfg(feature = "ipiq-stats")]
fn ipi_counts() -> Result<Option<IpiCounts>, String> {
    let s = ipiq_abi::hermit::total_stats().map_err(|e| format!("ipiq stats: {e}"))?;
    Ok(Some(IpiCounts {
        messages: s.sent,
        ipis: s.ipis,
        avoided: s.avoided,
    }))
}

#[cfg(not(feature = "ipiq-stats"))]
fn ipi_counts() -> Result<Option<IpiCounts>, String> {
    Ok(None)
}

fn ipi_delta(before: Option<IpiCounts>) -> Result<Option<IpiCounts>, String> {
    Ok(match (before, ipi_counts()?) {
        (Some(b), Some(a)) => Some(IpiCounts {
            messages: a.messages - b.messages,
            ipis: a.ipis - b.ipis,
            avoided: a.avoided - b.avoided,
        }),
        _ => None,
    })
}

/// The APIC id of the running core (the core index under QEMU, as the cores app checks).
fn apic_id() -> u32 {
    // SAFETY: CPUID leaf 1 exists on every x86_64 CPU and has no side effects.
    #[allow(unused_unsafe)]
    let leaf = unsafe { core::arch::x86_64::__cpuid(1) };
    leaf.ebx >> 24
}

/// Runs `f` in `pool` when one was built, else in rayon's global pool.
fn in_pool<R: Send>(pool: Option<&ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// One measured workload: sequential and parallel times, counters, verdict.
struct Outcome {
    name: &'static str,
    size: String,
    seq_ms: f64,
    par_ms: f64,
    seq_ipis: Option<IpiCounts>,
    par_ipis: Option<IpiCounts>,
    /// The parallel run's hypervisor bill, where the kernel has the event probe.
    par_bill: Option<Bill>,
    problems: Vec<String>,
}

/// The bill since `before` (`None` on a kernel without the event probe).
fn bill_since(before: Option<Bill>) -> Option<Bill> {
    Some(bill::now().ok()?.since(&before?))
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1e3
}

// ---- sort ----

/// splitmix64: a seeded, well-mixed sequence (the input) and a bijective mixer (the fingerprint).
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_u32s(len: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            (mix64(state) >> 32) as u32
        })
        .collect()
}

/// An order-independent fingerprint of a multiset of u32: length, sum and sum of mixed values
/// (a sort that loses, duplicates or alters an element changes it with overwhelming probability).
#[derive(PartialEq, Eq, Debug)]
struct Fingerprint(usize, u64, u64);

fn fingerprint(v: &[u32]) -> Fingerprint {
    let (sum, mixed) = v.iter().fold((0u64, 0u64), |(s, m), &x| {
        (s.wrapping_add(u64::from(x)), m.wrapping_add(mix64(u64::from(x))))
    });
    Fingerprint(v.len(), sum, mixed)
}

fn check_sorted(label: &str, v: &[u32], want: &Fingerprint, problems: &mut Vec<String>) {
    if let Some(i) = v.windows(2).position(|w| w[0] > w[1]) {
        problems.push(format!("{label}: not sorted at index {i} ({} > {})", v[i], v[i + 1]));
    }
    let got = fingerprint(v);
    if &got != want {
        problems.push(format!(
            "{label}: fingerprint {got:?} differs from the input's {want:?}"
        ));
    }
}

fn sort_workload(pool: Option<&ThreadPool>, len: usize) -> Result<Outcome, String> {
    let input = random_u32s(len, 0x5eed_0000_2a2a_0001);
    let want = fingerprint(&input);
    let mut problems = Vec::new();

    let mut seq = input.clone();
    let before = ipi_counts()?;
    let start = Instant::now();
    seq.sort_unstable();
    let seq_ms = ms(start);
    let seq_ipis = ipi_delta(before)?;
    check_sorted("sequential sort", &seq, &want, &mut problems);

    let mut par = input;
    let before = ipi_counts()?;
    let bill_before = bill::now().ok();
    let start = Instant::now();
    in_pool(pool, || par.par_sort_unstable());
    let par_ms = ms(start);
    let par_bill = bill_since(bill_before);
    let par_ipis = ipi_delta(before)?;
    check_sorted("par_sort_unstable", &par, &want, &mut problems);
    if par != seq {
        problems.push("par_sort_unstable and sort_unstable results differ".into());
    }
    Ok(Outcome {
        name: "sort",
        size: format!("{len} u32"),
        seq_ms,
        par_ms,
        seq_ipis,
        par_ipis,
        par_bill,
        problems,
    })
}

// ---- Jacobi stencil ----

/// A grid with the top edge at 1 and every other cell (the other edges and the interior) at 0.
fn initial_grid(n: usize) -> Vec<f64> {
    let mut g = vec![0.0; n * n];
    g[..n].fill(1.0);
    g
}

/// Row `i` of the next iterate from `old`: edges are copied, interior cells get the mean of their
/// four neighbours. Shared by the sequential and the parallel sweep.
fn relax_row(old: &[f64], row: &mut [f64], i: usize, n: usize) {
    let c = i * n;
    if i == 0 || i == n - 1 {
        row.copy_from_slice(&old[c..c + n]);
        return;
    }
    let (up, mid, down) = (&old[c - n..c], &old[c..c + n], &old[c + n..c + 2 * n]);
    row[0] = mid[0];
    row[n - 1] = mid[n - 1];
    for j in 1..n - 1 {
        row[j] = 0.25 * ((up[j] + down[j]) + (mid[j - 1] + mid[j + 1]));
    }
}

fn jacobi_seq(n: usize, iters: usize) -> Vec<f64> {
    let (mut a, mut b) = (initial_grid(n), initial_grid(n));
    for _ in 0..iters {
        b.chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| relax_row(&a, row, i, n));
        std::mem::swap(&mut a, &mut b);
    }
    a
}

fn jacobi_par(n: usize, iters: usize) -> Vec<f64> {
    let (mut a, mut b) = (initial_grid(n), initial_grid(n));
    for _ in 0..iters {
        let old = &a;
        b.par_chunks_mut(n)
            .enumerate()
            .for_each(|(i, row)| relax_row(old, row, i, n));
        std::mem::swap(&mut a, &mut b);
    }
    a
}

/// What the exact Jacobi iterate guarantees for this boundary (and IEEE rounding preserves, as
/// it is monotone and the mirrored sums add the same two values): values in [0, 1], exact
/// left-right symmetry, never increasing from one row to the next, and heat reached row 1.
fn check_grid(g: &[f64], n: usize, problems: &mut Vec<String>) {
    if let Some(k) = g.iter().position(|v| !(0.0..=1.0).contains(v)) {
        problems.push(format!(
            "stencil: cell ({}, {}) = {} outside [0, 1]",
            k / n,
            k % n,
            g[k]
        ));
    }
    'mirror: for i in 0..n {
        for j in 0..n / 2 {
            if g[i * n + j] != g[i * n + n - 1 - j] {
                problems.push(format!("stencil: row {i} not mirror-symmetric at column {j}"));
                break 'mirror;
            }
        }
    }
    'rows: for i in 0..n - 1 {
        for j in 0..n {
            if g[i * n + j] < g[(i + 1) * n + j] {
                problems.push(format!("stencil: column {j} increases from row {i} to row {}", i + 1));
                break 'rows;
            }
        }
    }
    if n > 2 && g[n + n / 2] <= 0.0 {
        problems.push("stencil: no heat reached row 1".into());
    }
}

fn stencil_workload(pool: Option<&ThreadPool>, n: usize, iters: usize) -> Result<Outcome, String> {
    let mut problems = Vec::new();
    let before = ipi_counts()?;
    let start = Instant::now();
    let seq = jacobi_seq(n, iters);
    let seq_ms = ms(start);
    let seq_ipis = ipi_delta(before)?;
    check_grid(&seq, n, &mut problems);

    let before = ipi_counts()?;
    let bill_before = bill::now().ok();
    let start = Instant::now();
    let par = in_pool(pool, || jacobi_par(n, iters));
    let par_ms = ms(start);
    let par_bill = bill_since(bill_before);
    let par_ipis = ipi_delta(before)?;
    if let Some(k) = seq.iter().zip(&par).position(|(a, b)| a.to_bits() != b.to_bits()) {
        problems.push(format!(
            "stencil: parallel grid differs from the sequential one at ({}, {}): {} vs {}",
            k / n,
            k % n,
            par[k],
            seq[k]
        ));
    }
    let sum: f64 = seq.iter().sum();
    println!(
        "stencil: {n}x{n}, {iters} sweeps, sum of cells {sum:.6}, centre {:.6e}",
        seq[(n / 2) * n + n / 2]
    );
    Ok(Outcome {
        name: "stencil",
        size: format!("{n}x{n} f64, {iters} sweeps"),
        seq_ms,
        par_ms,
        seq_ipis,
        par_ipis,
        par_bill,
        problems,
    })
}

// ---- report ----

fn counts(c: Option<IpiCounts>) -> [String; 3] {
    match c {
        Some(c) => [c.messages.to_string(), c.ipis.to_string(), c.avoided.to_string()],
        None => ["n/a".into(), "n/a".into(), "n/a".into()],
    }
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::from_args(&args)?;
    let kernel = if cfg!(feature = "ipiq-stats") {
        "patched"
    } else {
        "stock"
    };

    let vcpus = std::thread::available_parallelism()
        .map_err(|e| format!("available_parallelism: {e}"))?
        .get();
    let global_threads = rayon::current_num_threads();
    let pool = if global_threads == vcpus {
        None
    } else {
        println!("rayon-work: rayon's global pool has {global_threads} threads, not {vcpus}: using a pool of {vcpus}");
        Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(vcpus)
                .build()
                .map_err(|e| format!("thread pool: {e}"))?,
        )
    };
    let threads = in_pool(pool.as_ref(), rayon::current_num_threads);
    // Starts every worker, and tells where the kernel placed them (Hermit does not migrate).
    let mut cores = in_pool(pool.as_ref(), || rayon::broadcast(|_| apic_id()));
    cores.sort_unstable();
    let mut distinct = cores.clone();
    distinct.dedup();
    let cores_list = cores.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    println!(
        "rayon-work: kernel {kernel}, vCPUs {vcpus}, rayon threads {threads}, pool {}, worker cores {cores_list}",
        if pool.is_some() { "built" } else { "global" }
    );

    let outcomes = [
        sort_workload(pool.as_ref(), config.sort_len)?,
        stencil_workload(pool.as_ref(), config.grid, config.iters)?,
    ];

    println!("<<<report rayon-work: {kernel} kernel, {vcpus} vCPUs");
    println!(
        "rayon 1.11.0, {threads} threads ({} pool), workers on cores {cores_list} ({} distinct); times are emulated (QEMU TCG) ms; counts are ipiq's, summed over cores{}",
        if pool.is_some() { "built" } else { "global" },
        distinct.len(),
        if kernel == "stock" { " (stock kernel: no counter, n/a)" } else { "" }
    );
    println!();
    println!("| workload | size | sequential ms | parallel ms | speedup | messages | IPIs | avoided | seq. run IPIs | check |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let mut ok = true;
    for o in &outcomes {
        let [messages, ipis, avoided] = counts(o.par_ipis);
        let seq_ipis = counts(o.seq_ipis)[1].clone();
        let verdict = if o.problems.is_empty() { "ok" } else { "WRONG" };
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.2} | {messages} | {ipis} | {avoided} | {seq_ipis} | {verdict} |",
            o.name,
            o.size,
            o.seq_ms,
            o.par_ms,
            o.seq_ms / o.par_ms.max(1e-9)
        );
        ok &= o.problems.is_empty();
    }
    println!(">>>report");
    for o in &outcomes {
        let [messages, ipis, avoided] = counts(o.par_ipis);
        // One machine-readable line per workload, for the rayon table
        // (xtask/src/report/rayon.rs, and scripts/rayon-summary.sh on bare machines).
        println!(
            "rayon-result workload={} kernel={kernel} vcpus={vcpus} threads={threads} seq_ms={:.1} par_ms={:.1} messages={messages} ipis={ipis} avoided={avoided} check={}",
            o.name,
            o.seq_ms,
            o.par_ms,
            if o.problems.is_empty() { "ok" } else { "wrong" }
        );
        if let Some(b) = o.par_bill {
            let who = if kernel == "patched" { "ipiq" } else { "stock" };
            println!("{}", b.line(&format!("app=rayon kernel={who} smp={vcpus} case={} unit=run", o.name), 1));
        }
        for p in &o.problems {
            println!("rayon-work: WRONG: {p}");
        }
    }
    Ok(ok)
}

fn main() {
    match run() {
        Ok(true) => println!("rayon-work: all results correct"),
        Ok(false) => {
            println!("rayon-work: FAILED: a result is wrong");
            std::process::exit(1);
        }
        Err(e) => {
            println!("rayon-work: error: {e}");
            std::process::exit(2);
        }
    }
}
