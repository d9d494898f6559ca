//! ipiq-bench: in-guest measurements through the `sys_ipiq_*` syscalls and the benchmark probes
//! of the kernel's probe patches (`sys_ipiq_bench_*`). Counts (IPIs, messages, flushing cores) are exact;
//! times are emulated time under QEMU TCG (read from the TSC), to be compared only within one run.
//!
//! 1. streaming: IPIs (ICR writes) per message, core 0 -> core 1 while core 1 idles;
//! 2. passive: IPIs for passive sends below a quarter of the FIFO (expected 0);
//! 3. round trip: send + wait to core 1 against a raw ICR ping-pong (a bare IPI on vector 125
//!    whose handler only counts; the sender spins until the count moves), p50 / p99, and each
//!    path's hypervisor bill per round trip (`hermit_apps::bill`: ICR, EOI, timer writes, halts);
//! 4. shootdown: ranged (invlpg per page) against forced full over k = 1, 4, 16, 32 pages on
//!    1..cpus-1 other cores; then each followed by the other cores re-touching a working set;
//! 5. statistics on against off: streaming throughput and round trip, interleaved rounds;
//! 6. multicast: one `send_many` to k cores against k unicast sends, each then waited for, and
//!    the ICR writes each `send_many` took (`icr_writes`: one for every other core with the
//!    all-excluding-self shorthand, one per x2APIC cluster, one per target on xAPIC);
//! 7. application messages with the FPU-state bracket (the kernel's FPU patch) against without it
//!    (its test-only switch, `sys_ipiq_bench_fpu_save`; the function here is integer-only):
//!    cost per message sent to the calling core (runs in the send) and streamed to core 1.
//!
//! Every table is printed as a report block (`<<<report title` ... `>>>report`). The probes'
//! bad-input answers are checked first. Exits 0 when every measurement ran (the figures are
//! reported, not judged), non-zero on any error or wrong count.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hermit_apps::bill::{self, Bill};
use ipiq_abi::hermit;
use ipiq_abi::{CpuSet, Stats};

/// How much each measurement does.
pub struct Scale {
    /// Label printed in the first line.
    pub name: &'static str,
    /// Streaming messages.
    pub streaming: u64,
    /// Round trips per path (ipiq and raw, alternating one by one).
    pub round_trips: usize,
    /// Shootdown calls per (pages, cores, mode), ranged and full alternating one by one, within
    /// `cell_budget_ms`.
    pub shootdowns: usize,
    /// Shootdown + re-touch iterations per (pages, mode), within `cell_budget_ms`.
    pub retouches: usize,
    /// Wall-time budget of one shootdown cell or multicast row: past it (and with at least 3
    /// samples of each mode) the cell stops early and reports how many it took. Under TCG on a
    /// few loaded host cores a rendezvous needs every vCPU thread scheduled at once, so its cost
    /// grows far faster than the core count (the full counts at 4 vCPUs took 5 minutes here).
    pub cell_budget_ms: u64,
    /// Statistics on/off rounds (each measures both settings).
    pub stats_rounds: usize,
    /// Streaming messages per setting per round.
    pub stats_streaming: u64,
    /// Round trips per setting per round.
    pub stats_round_trips: usize,
    /// Multicast rounds per target count and mode, the two modes alternating round by round.
    pub multicast_rounds: usize,
    /// FPU bracket on/off rounds (each measures both settings on both paths).
    pub fpu_rounds: usize,
    /// Application messages per setting, path and round.
    pub fpu_messages: u64,
}

/// The figures (`ipiq-bench`).
pub const FULL: Scale = Scale {
    name: "full",
    streaming: 50_000,
    round_trips: 2_000,
    shootdowns: 200,
    retouches: 100,
    cell_budget_ms: 2_000,
    stats_rounds: 10,
    stats_streaming: 10_000,
    stats_round_trips: 200,
    multicast_rounds: 500,
    fpu_rounds: 11,
    fpu_messages: 5_000,
};

/// Every path once or a few times (`ipiq-bench-smoke`, part of `make test`).
pub const SMOKE: Scale = Scale {
    name: "smoke",
    streaming: 2_000,
    round_trips: 100,
    shootdowns: 5,
    retouches: 5,
    cell_budget_ms: 300,
    stats_rounds: 2,
    stats_streaming: 1_000,
    stats_round_trips: 20,
    multicast_rounds: 10,
    fpu_rounds: 2,
    fpu_messages: 200,
};

/// Pages in the shootdown buffer; the readers' working set is all of them.
const BUFFER_PAGES: usize = 64;
/// Page counts the shootdowns name (ipiq's ranged cutoff is 32).
const SHOOTDOWN_PAGES: [usize; 4] = [1, 4, 16, 32];
const EINVAL: i32 = -22;

// ----- the benchmark probes (hermit-app/kernel/probe-patches/) ------------------------------

mod probe {
    use ipiq_abi::CpuSet;

    mod sys {
        unsafe extern "C" {
            /// A bare IPI on vector 125 to `core`: 0 or -errno.
            pub fn sys_ipiq_bench_raw_ipi(core: usize) -> i32;
            /// Raw IPIs `core` has taken, stored at `out`: 0 or -errno.
            pub fn sys_ipiq_bench_raw_count(core: usize, out: *mut u64) -> i32;
            /// Shootdown on a set, ranged (`full` 0) or forced full (1): cores flushed or -errno.
            pub fn sys_ipiq_bench_shootdown(
                set: *const u64,
                words: usize,
                start: usize,
                pages: usize,
                full: usize,
            ) -> i32;
            /// Statistics on (1) or off (0): the previous setting or -errno.
            pub fn sys_ipiq_bench_set_stats(on: usize) -> i32;
            /// Test-only (a probe patch): application messages with (1) or without (0) their
            /// FPU-state bracket: the previous setting or -errno. Off, only integer-only
            /// message functions may run.
            pub fn sys_ipiq_bench_fpu_save(on: usize) -> i32;
        }
    }

    fn check(code: i32) -> Result<usize, i32> {
        usize::try_from(code).map_err(|_| code)
    }

    fn words(set: &CpuSet) -> Vec<u64> {
        let mut words = vec![0u64; set.max().map_or(0, |m| m / 64 + 1)];
        for cpu in set.iter() {
            words[cpu / 64] |= 1 << (cpu % 64);
        }
        words
    }

    pub fn raw_ipi(core: usize) -> Result<(), i32> {
        // SAFETY: a plain value; the kernel validates it.
        check(unsafe { sys::sys_ipiq_bench_raw_ipi(core) }).map(|_| ())
    }

    pub fn raw_count(core: usize) -> Result<u64, i32> {
        let mut count = 0u64;
        // SAFETY: `count` is a writable, aligned u64 for the call.
        check(unsafe { sys::sys_ipiq_bench_raw_count(core, &mut count) }).map(|_| count)
    }

    pub fn shootdown(set: &CpuSet, start: usize, pages: usize, full: usize) -> Result<usize, i32> {
        let words = words(set);
        // SAFETY: `words` holds `words.len()` readable u64s; the range is only invalidated.
        check(unsafe {
            sys::sys_ipiq_bench_shootdown(words.as_ptr(), words.len(), start, pages, full)
        })
    }

    /// The raw syscall with any `on` (for the bad-input check).
    pub fn set_stats_raw(on: usize) -> Result<bool, i32> {
        // SAFETY: a plain value; the kernel validates it.
        check(unsafe { sys::sys_ipiq_bench_set_stats(on) }).map(|was| was == 1)
    }

    pub fn set_stats(on: bool) -> Result<bool, i32> {
        set_stats_raw(usize::from(on))
    }

    /// The raw syscall with any `on` (for the bad-input check).
    pub fn set_fpu_save_raw(on: usize) -> Result<bool, i32> {
        // SAFETY: a plain value; the kernel validates it.
        check(unsafe { sys::sys_ipiq_bench_fpu_save(on) }).map(|was| was == 1)
    }

    pub fn set_fpu_save(on: bool) -> Result<bool, i32> {
        set_fpu_save_raw(usize::from(on))
    }
}

/// Turns the FPU-state bracket of application messages back on when dropped (also on an early
/// error return: with it off, a message function that uses the FPU corrupts its core).
struct FpuSaveOnGuard;

impl Drop for FpuSaveOnGuard {
    fn drop(&mut self) {
        let _ = probe::set_fpu_save(true);
    }
}

/// Turns statistics back on when dropped (also on an early error return).
struct StatsOnGuard;

impl Drop for StatsOnGuard {
    fn drop(&mut self) {
        let _ = probe::set_stats(true);
    }
}

// ----- time ------------------------------------------------------------------------------------

/// TSC ticks per microsecond, measured against the kernel's clock at start.
static TSC_PER_US: OnceLock<f64> = OnceLock::new();

fn rdtsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86_64 (Hermit runs the application in ring 0).
    unsafe { core::arch::x86_64::_rdtsc() }
}

fn calibrate() -> f64 {
    let (start, tsc) = (Instant::now(), rdtsc());
    while start.elapsed() < Duration::from_millis(50) {
        std::hint::spin_loop();
    }
    let ticks = rdtsc().wrapping_sub(tsc) as f64;
    (ticks / (start.elapsed().as_secs_f64() * 1e6)).max(1e-3)
}

/// Microseconds in `ticks` TSC ticks.
fn us(ticks: u64) -> f64 {
    ticks as f64 / TSC_PER_US.get().copied().unwrap_or(1.0)
}

/// TSC ticks in `ms` milliseconds (for spin bounds).
fn ticks_in_ms(ms: u64) -> u64 {
    (TSC_PER_US.get().copied().unwrap_or(1.0) * 1000.0 * ms as f64) as u64
}

// ----- helpers ---------------------------------------------------------------------------------

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn hit(_: usize) {
    // Relaxed: a count; the waits order everything the benchmark relies on.
    HITS.fetch_add(1, Ordering::Relaxed);
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

fn errno(what: &'static str) -> impl Fn(i32) -> String {
    move |e| format!("{what}: errno {e}")
}

fn delta(core: usize, before: &Stats) -> Result<Stats, String> {
    let now = hermit::stats(core).map_err(err("stats"))?;
    Ok(Stats {
        sent: now.sent - before.sent,
        ipis: now.ipis - before.ipis,
        avoided: now.avoided - before.avoided,
        passive: now.passive - before.passive,
        processed: now.processed - before.processed,
        ..Stats::default()
    })
}

fn wait_all(targets: &[usize]) -> Result<(), String> {
    for &t in targets {
        let seq = hermit::seq(t).map_err(err("seq"))?;
        hermit::wait(t, seq).map_err(|e| format!("wait for {t}: {e}"))?;
    }
    Ok(())
}

/// Value at quantile `p` of sorted samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Prints one report block: `<<<report title`, a Markdown table, free notes, `>>>report`.
fn report(title: &str, header: &[&str], rows: &[Vec<String>], notes: &[String]) {
    let mut out = format!("<<<report {title}\n| {} |\n|", header.join(" | "));
    for _ in header {
        out.push_str("---|");
    }
    out.push('\n');
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out.push_str(">>>report");
    println!("{out}");
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn f2(v: f64) -> String {
    format!("{v:.2}")
}

// ----- 0. the probes refuse bad input ------------------------------------------------------------

fn probes_refuse_bad_input(cpus: usize, page: usize) -> Result<(), String> {
    let one = CpuSet::single(1).map_err(err("set"))?;
    let past = CpuSet::single(cpus).map_err(err("set"))?;
    let cases: [(&str, Result<usize, i32>); 12] = [
        (
            "raw IPI to a core past the count",
            probe::raw_ipi(cpus).map(|_| 0),
        ),
        ("raw IPI to the calling core", probe::raw_ipi(0).map(|_| 0)),
        (
            "raw count of a core past the count",
            probe::raw_count(cpus).map(|_| 0),
        ),
        ("shootdown at address 0", probe::shootdown(&one, 0, 1, 0)),
        (
            "shootdown at an unaligned address",
            probe::shootdown(&one, page + 8, 1, 0),
        ),
        ("shootdown of 0 pages", probe::shootdown(&one, page, 0, 0)),
        (
            "shootdown of 513 pages",
            probe::shootdown(&one, page, 513, 0),
        ),
        ("shootdown with mode 2", probe::shootdown(&one, page, 1, 2)),
        (
            "shootdown at a non-canonical address",
            probe::shootdown(&one, 1 << 47, 1, 0),
        ),
        (
            "shootdown on a core past the count",
            probe::shootdown(&past, page, 1, 0),
        ),
        (
            "statistics switch set to 2",
            probe::set_stats_raw(2).map(usize::from),
        ),
        (
            "FPU-save switch set to 2",
            probe::set_fpu_save_raw(2).map(usize::from),
        ),
    ];
    for (what, result) in &cases {
        if *result != Err(EINVAL) {
            return Err(format!(
                "probe check: {what}: expected EINVAL, got {result:?}"
            ));
        }
    }
    println!(
        "probe syscalls: {} bad inputs refused with EINVAL",
        cases.len()
    );
    Ok(())
}

// ----- 1. streaming ------------------------------------------------------------------------------

/// Streams `n` messages to core 1 and waits for the last; returns emulated messages per second.
fn stream(n: u64) -> Result<f64, String> {
    let start = rdtsc();
    for i in 0..n {
        hermit::send(1, hit, i as usize).map_err(err("send"))?;
    }
    wait_all(&[1])?;
    Ok(n as f64 / (us(rdtsc() - start) / 1e6))
}

fn streaming(cpus: usize, n: u64) -> Result<(), String> {
    let before = hermit::stats(0).map_err(err("stats"))?;
    let rate = stream(n)?;
    let d = delta(0, &before)?;
    if d.sent != n {
        return Err(format!("streaming: {} messages counted, {n} sent", d.sent));
    }
    report(
        &format!("Guest streaming 0 -> 1 ({cpus} vCPUs)"),
        &[
            "messages",
            "IPIs (ICR writes)",
            "IPIs per message",
            "avoided",
            "msg/s (emulated)",
        ],
        &[vec![
            n.to_string(),
            d.ipis.to_string(),
            format!("{:.4}", d.ipis as f64 / n as f64),
            d.avoided.to_string(),
            format!("{rate:.0}"),
        ]],
        &["Target: at most 0.05 IPIs per message.".into()],
    );
    Ok(())
}

// ----- 2. passive --------------------------------------------------------------------------------

fn passive(cpus: usize) -> Result<(), String> {
    // The FIFO has 256 slots: below a quarter (64) a passive send never sends an IPI.
    let count = 32u64;
    let before = hermit::stats(0).map_err(err("stats"))?;
    // Relaxed: a count (see `hit`).
    let hits = HITS.load(Ordering::Relaxed);
    for i in 0..count {
        hermit::send_passive(1, hit, i as usize).map_err(err("send_passive"))?;
    }
    let d = delta(0, &before)?;
    let start = Instant::now();
    // Relaxed: polling a count.
    while HITS.load(Ordering::Relaxed) < hits + count && start.elapsed() < Duration::from_secs(2) {
        std::hint::spin_loop();
    }
    let took = start.elapsed();
    // Relaxed: a count.
    let ran = HITS.load(Ordering::Relaxed) - hits;
    if ran != count {
        return Err(format!("passive: {ran} of {count} ran within 2 s"));
    }
    report(
        &format!("Guest passive sends ({cpus} vCPUs)"),
        &[
            "messages",
            "IPIs",
            "counted passive",
            "drained by the tick after (ms)",
            "ran",
        ],
        &[vec![
            count.to_string(),
            d.ipis.to_string(),
            d.passive.to_string(),
            format!("{:.1}", took.as_secs_f64() * 1e3),
            ran.to_string(),
        ]],
        &["Target: 0 IPIs below a quarter full; drained within one 10 ms tick.".into()],
    );
    Ok(())
}

// ----- 3. round trip against a raw ICR ping-pong -------------------------------------------------

/// Runs `f` and adds the hypervisor bill it ran up to `total` (outside any timed region: the
/// reads are syscalls, no exits).
fn billed<T>(total: &mut Bill, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let before = bill::now()?;
    let out = f()?;
    let spent = bill::now()?.since(&before);
    total.icr += spent.icr;
    total.eoi += spent.eoi;
    total.timer += spent.timer;
    total.halt += spent.halt;
    total.other += spent.other;
    Ok(out)
}

/// A bill per round trip: exits, then ICR / EOI / timer / halt.
fn per_round_trip(bill: &Bill, n: usize) -> [String; 2] {
    let per = |v: u64| v as f64 / n.max(1) as f64;
    [
        f2(per(bill.exits())),
        format!("{} / {} / {} / {}", f2(per(bill.icr)), f2(per(bill.eoi)), f2(per(bill.timer)), f2(per(bill.halt))),
    ]
}

/// One ipiq send + wait to core 1, in TSC ticks.
fn ipiq_round_trip(i: usize) -> Result<u64, String> {
    let start = rdtsc();
    let seq = hermit::send(1, hit, i).map_err(err("send"))?;
    hermit::wait(1, seq).map_err(err("wait"))?;
    Ok(rdtsc() - start)
}

/// One raw IPI to core 1 and a spin until its count moves, in TSC ticks.
fn raw_round_trip(limit: u64) -> Result<u64, String> {
    let before = probe::raw_count(1).map_err(errno("raw count"))?;
    let start = rdtsc();
    probe::raw_ipi(1).map_err(errno("raw IPI"))?;
    while probe::raw_count(1).map_err(errno("raw count"))? == before {
        if rdtsc() - start > limit {
            return Err("raw IPI: core 1 did not take it within 1 s".into());
        }
        std::hint::spin_loop();
    }
    Ok(rdtsc() - start)
}

fn summary(name: &str, samples: &mut [u64]) -> (Vec<String>, f64) {
    samples.sort_unstable();
    let (p50, p99) = (us(percentile(samples, 0.5)), us(percentile(samples, 0.99)));
    let row = vec![
        name.to_string(),
        samples.len().to_string(),
        f1(p50),
        f1(p99),
        f2(p99 / p50.max(1e-9)),
    ];
    (row, p50)
}

fn round_trip(cpus: usize, scale: &Scale) -> Result<(), String> {
    let limit = ticks_in_ms(1000);
    let raw_before = probe::raw_count(1).map_err(errno("raw count"))?;
    let (mut ipiq, mut raw) = (Vec::new(), Vec::new());
    let (mut ipiq_bill, mut raw_bill) = (Bill::default(), Bill::default());
    // One of each per step, the order alternating, so host noise hits both paths alike.
    for i in 0..scale.round_trips {
        if i % 2 == 0 {
            ipiq.push(billed(&mut ipiq_bill, || ipiq_round_trip(i))?);
            raw.push(billed(&mut raw_bill, || raw_round_trip(limit))?);
        } else {
            raw.push(billed(&mut raw_bill, || raw_round_trip(limit))?);
            ipiq.push(billed(&mut ipiq_bill, || ipiq_round_trip(i))?);
        }
    }
    // The probe writes the raw IPI's ICR itself, outside ipiq's statistics: one write each.
    raw_bill.icr += raw.len() as u64;
    let taken = probe::raw_count(1).map_err(errno("raw count"))? - raw_before;
    if taken != raw.len() as u64 {
        return Err(format!("raw IPIs: {taken} taken, {} sent", raw.len()));
    }
    let (mut ipiq_row, ipiq_p50) = summary("ipiq send + wait", &mut ipiq);
    let (mut raw_row, raw_p50) = summary("raw ICR ping-pong (vector 125)", &mut raw);
    ipiq_row.extend(per_round_trip(&ipiq_bill, ipiq.len()));
    raw_row.extend(per_round_trip(&raw_bill, raw.len()));
    report(
        &format!("Guest round trip 0 -> 1 -> 0 against a raw ICR ping-pong ({cpus} vCPUs)"),
        &["path", "samples", "p50 (us)", "p99 (us)", "p99/p50", "exits per round trip", "ICR / EOI / timer / halt"],
        &[ipiq_row, raw_row],
        &[format!(
            "ipiq p50 / raw p50 = {:.2} (target: at most 1.2). The two paths alternate sample by sample; raw IPIs taken: {taken} of {}.",
            ipiq_p50 / raw_p50.max(1e-9),
            raw.len()
        )],
    );
    Ok(())
}

// ----- 4. ranged against full shootdown -----------------------------------------------------------

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; 4096]);

/// The readers' working set: one read per page of the buffer (runs on each target in the
/// cpusync, interrupts off; only reads memory that lives for the whole run).
extern "C" fn retouch(buffer: usize) {
    let mut sum = 0u8;
    for page in 0..BUFFER_PAGES {
        // SAFETY: `buffer` is the address of the leaked `[Page; BUFFER_PAGES]` (`shootdowns`),
        // never freed; every offset is inside it.
        sum = sum
            .wrapping_add(unsafe { core::ptr::read_volatile((buffer + page * 4096) as *const u8) });
    }
    core::hint::black_box(sum);
}

/// TSC ticks of one probe shootdown (then, with `retouch_after`, the other cores re-touching
/// their working set), checking that it reached `others` cores.
fn time_shootdown(
    set: &CpuSet,
    others: usize,
    buffer: usize,
    pages: usize,
    full: usize,
    retouch_after: bool,
) -> Result<u64, String> {
    let start = rdtsc();
    let flushed = probe::shootdown(set, buffer, pages, full).map_err(errno("shootdown"))?;
    if retouch_after {
        hermit::cpusync(set, retouch, buffer).map_err(err("cpusync"))?;
    }
    let took = rdtsc() - start;
    if flushed != others {
        return Err(format!(
            "shootdown: {flushed} cores flushed, {others} asked"
        ));
    }
    Ok(took)
}

/// p50 (us) of up to `calls` ranged and as many full shootdowns, alternating one by one so that
/// host noise hits both alike, within `budget`; also how many of each it took.
fn ranged_and_full(
    set: &CpuSet,
    others: usize,
    buffer: usize,
    pages: usize,
    (calls, budget): (usize, Duration),
    retouch_after: bool,
) -> Result<(f64, f64, usize), String> {
    let (mut ranged, mut full) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    let start = Instant::now();
    for i in 0..calls {
        for mode in [i % 2, 1 - i % 2] {
            let took = time_shootdown(set, others, buffer, pages, mode, retouch_after)?;
            if mode == 0 {
                ranged.push(took)
            } else {
                full.push(took)
            }
        }
        if i >= 2 && start.elapsed() > budget {
            break;
        }
    }
    ranged.sort_unstable();
    full.sort_unstable();
    Ok((
        us(percentile(&ranged, 0.5)),
        us(percentile(&full, 0.5)),
        ranged.len(),
    ))
}

fn shootdowns(cpus: usize, scale: &Scale, buffer: usize) -> Result<(), String> {
    let budget = Duration::from_millis(scale.cell_budget_ms);
    let before = hermit::stats(0).map_err(err("stats"))?;
    let (mut rows, mut lowest, mut taken) = (Vec::new(), None::<f64>, 0);
    for &pages in &SHOOTDOWN_PAGES {
        for others in 1..cpus {
            let set = CpuSet::from_cpus(1..=others).map_err(err("set"))?;
            let (ranged, full, samples) = ranged_and_full(
                &set,
                others,
                buffer,
                pages,
                (scale.shootdowns, budget),
                false,
            )?;
            let ratio = full / ranged.max(1e-9);
            lowest = Some(lowest.map_or(ratio, |l| l.min(ratio)));
            taken += samples as u64;
            rows.push(vec![
                pages.to_string(),
                others.to_string(),
                samples.to_string(),
                f1(ranged),
                f1(full),
                f2(ratio),
            ]);
        }
    }
    let after = hermit::stats(0).map_err(err("stats"))?;
    let full_counted = after.full_flushes - before.full_flushes;
    let ranged_counted = after.shootdowns - before.shootdowns - full_counted;
    report(
        &format!("Guest TLB shootdown: ranged against full, send and wait for all ({cpus} vCPUs)"),
        &["pages", "other cores", "samples of each", "ranged p50 (us)", "full p50 (us)", "full/ranged"],
        &rows,
        &[format!(
            "Target: full/ranged at least 1.3. Lowest here: {}. Up to {} calls of each mode per cell, alternating, within {} ms per cell; core 0 counted {ranged_counted} ranged and {full_counted} full shootdowns ({taken} of each made).",
            lowest.map_or("-".into(), f2),
            scale.shootdowns,
            scale.cell_budget_ms,
        )],
    );

    // With the other cores re-touching their working set after each shootdown.
    let others = cpus - 1;
    let set = CpuSet::from_cpus(1..cpus).map_err(err("set"))?;
    let mut rows = Vec::new();
    for &pages in &SHOOTDOWN_PAGES {
        let (ranged, full, samples) =
            ranged_and_full(&set, others, buffer, pages, (scale.retouches, budget), true)?;
        rows.push(vec![
            pages.to_string(),
            samples.to_string(),
            f1(ranged),
            f1(full),
            f2(full / ranged.max(1e-9)),
        ]);
    }
    report(
        &format!("Guest TLB shootdown then {others} cores re-touch {BUFFER_PAGES} pages ({cpus} vCPUs)"),
        &["pages", "samples of each", "ranged + re-touch p50 (us)", "full + re-touch p50 (us)", "full/ranged"],
        &rows,
        &[format!(
            "Each sample: one shootdown on cores 1..={}, then a cpusync in which each of them reads one byte of each of the {BUFFER_PAGES} buffer pages; up to {} samples of each mode, alternating, within {} ms per row.",
            cpus - 1,
            scale.retouches,
            scale.cell_budget_ms
        )],
    );
    Ok(())
}

// ----- 5. statistics on against off ----------------------------------------------------------------

/// One setting's run in one round: streaming msg/s, and the round-trip samples appended to
/// `samples`.
fn stats_round(on: bool, scale: &Scale, samples: &mut Vec<u64>) -> Result<f64, String> {
    probe::set_stats(on).map_err(errno("set stats"))?;
    let frozen = (
        hermit::stats(0).map_err(err("stats"))?,
        hermit::stats(1).map_err(err("stats"))?,
    );
    let rate = stream(scale.stats_streaming)?;
    for i in 0..scale.stats_round_trips {
        samples.push(ipiq_round_trip(i)?);
    }
    if !on {
        // The switching core's own counts and its target's stop exactly (the switch is ordered
        // before the messages by program order and the FIFO's release/acquire).
        let now = (
            hermit::stats(0).map_err(err("stats"))?,
            hermit::stats(1).map_err(err("stats"))?,
        );
        if (now.0.sent, now.1.processed) != (frozen.0.sent, frozen.1.processed) {
            return Err("statistics moved while switched off".into());
        }
    }
    Ok(rate)
}

fn stats_on_off(cpus: usize, scale: &Scale) -> Result<(), String> {
    let _guard = StatsOnGuard;
    let was = probe::set_stats(true).map_err(errno("set stats"))?;
    if !was {
        return Err("statistics were off at start".into());
    }
    let before = hermit::stats(0).map_err(err("stats"))?;
    let (mut on_rates, mut off_rates) = (Vec::new(), Vec::new());
    let (mut on_rts, mut off_rts) = (Vec::new(), Vec::new());
    for round in 0..scale.stats_rounds {
        // Alternate which setting goes first.
        for on in [round % 2 == 0, round % 2 == 1] {
            if on {
                on_rates.push(stats_round(true, scale, &mut on_rts)?);
            } else {
                off_rates.push(stats_round(false, scale, &mut off_rts)?);
            }
        }
    }
    probe::set_stats(true).map_err(errno("set stats"))?;
    let counted = hermit::stats(0).map_err(err("stats"))?.sent - before.sent;
    let per_round = scale.stats_streaming + scale.stats_round_trips as u64;
    let expected = per_round * scale.stats_rounds as u64;
    if counted != expected {
        return Err(format!(
            "statistics on: {counted} sends counted, {expected} made with them on"
        ));
    }
    on_rts.sort_unstable();
    off_rts.sort_unstable();
    let (on_rate, on_p50) = (median(&mut on_rates), us(percentile(&on_rts, 0.5)));
    let (off_rate, off_p50) = (median(&mut off_rates), us(percentile(&off_rts, 0.5)));
    report(
        &format!("Guest statistics on against off ({cpus} vCPUs)"),
        &["statistics", "streaming msg/s (median of rounds)", "round trip p50 (us)"],
        &[
            vec!["on".into(), format!("{on_rate:.0}"), f1(on_p50)],
            vec!["off".into(), format!("{off_rate:.0}"), f1(off_p50)],
        ],
        &[format!(
            "off against on: streaming {:+.1}%, round trip p50 {:+.1}% (target: at most 1% apart). {} interleaved rounds, each {} messages streamed and {} round trips per setting; sends counted with statistics on: {counted} of {expected}, with them off: 0.",
            (off_rate / on_rate.max(1e-9) - 1.0) * 100.0,
            (off_p50 / on_p50.max(1e-9) - 1.0) * 100.0,
            scale.stats_rounds,
            scale.stats_streaming,
            scale.stats_round_trips
        )],
    );
    Ok(())
}

// ----- 6. multicast ---------------------------------------------------------------------------------

/// What one `send_many` round cost: TSC ticks (send and waits), the targets it interrupted
/// (the others were avoided: already signalled or draining) and the ICR writes that took.
struct MulticastRound {
    ticks: u64,
    interrupted: u64,
    icr_writes: u64,
}

/// One `send_many` to `set` and a wait for each target, from core 0; the statistics are read
/// outside the timed part.
fn multicast_round(set: &CpuSet, targets: &[usize], i: usize) -> Result<MulticastRound, String> {
    let before = hermit::stats(0).map_err(err("stats"))?;
    let start = rdtsc();
    let n = hermit::send_many(set, hit, i).map_err(err("send_many"))?;
    wait_all(targets)?;
    let took = rdtsc() - start;
    let after = hermit::stats(0).map_err(err("stats"))?;
    if n != targets.len() {
        return Err(format!(
            "send_many reached {n} cores, {} asked",
            targets.len()
        ));
    }
    Ok(MulticastRound {
        ticks: took,
        interrupted: (targets.len() as u64).saturating_sub(after.avoided - before.avoided),
        icr_writes: after.icr_writes - before.icr_writes,
    })
}

/// One unicast to each target and a wait for each, in TSC ticks.
fn unicast_round(targets: &[usize], i: usize) -> Result<u64, String> {
    let start = rdtsc();
    for &t in targets {
        hermit::send(t, hit, i).map_err(err("send"))?;
    }
    wait_all(targets)?;
    Ok(rdtsc() - start)
}

fn multicast(cpus: usize, rounds: usize, budget: Duration) -> Result<(), String> {
    let mut rows = Vec::new();
    let mut at_max = None;
    for k in 1..cpus {
        let targets: Vec<usize> = (1..=k).collect();
        let set = CpuSet::from_cpus(targets.iter().copied()).map_err(err("set"))?;
        let (mut many, mut uni) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
        let (mut interrupted, mut writes) = (0u64, 0u64);
        let (mut full, mut writes_full) = (0u64, 0u64);
        let mut record = |round: MulticastRound| {
            interrupted += round.interrupted;
            writes += round.icr_writes;
            if round.interrupted == k as u64 {
                full += 1;
                writes_full += round.icr_writes;
            }
            round.ticks
        };
        let start = Instant::now();
        for i in 0..rounds {
            if i >= 6 && start.elapsed() > budget {
                break;
            }
            if i % 2 == 0 {
                many.push(record(multicast_round(&set, &targets, i)?));
                uni.push(unicast_round(&targets, i)?);
            } else {
                uni.push(unicast_round(&targets, i)?);
                many.push(record(multicast_round(&set, &targets, i)?));
            }
        }
        let per = |sum: u64, n: u64| {
            if n == 0 {
                "-".to_string()
            } else {
                f2(sum as f64 / n as f64)
            }
        };
        let (interrupted, writes) = (
            per(interrupted, many.len() as u64),
            per(writes, many.len() as u64),
        );
        let writes_full = format!("{} ({full})", per(writes_full, full));
        many.sort_unstable();
        uni.sort_unstable();
        let samples = many.len();
        let (many, uni) = (us(percentile(&many, 0.5)), us(percentile(&uni, 0.5)));
        let ratio = many / uni.max(1e-9);
        at_max = Some(ratio);
        rows.push(vec![
            k.to_string(),
            samples.to_string(),
            f1(many),
            f1(uni),
            f2(ratio),
            interrupted,
            writes,
            writes_full,
        ]);
    }
    let mode = if x2apic_mode() { "x2APIC" } else { "xAPIC" };
    report(
        &format!("Guest multicast against unicast ({cpus} vCPUs, {mode})"),
        &[
            "targets",
            "rounds of each",
            "send_many + wait p50 (us)",
            "k unicasts + wait p50 (us)",
            "send_many/unicast",
            "targets interrupted per send_many",
            "ICR writes per send_many",
            "ICR writes per send_many that interrupted all (rounds)",
        ],
        &rows,
        &[
            format!(
                "Up to {rounds} rounds of each per row, alternating, within {} ms per row. Ratio at {} targets: {} (target: at most 1.5 at 8 vCPUs).",
                budget.as_millis(),
                cpus - 1,
                at_max.map_or("-".into(), f2)
            ),
            "Targets are cores 1..=k, sent from core 0: k = every other core is one ICR write (all-excluding-self shorthand) when all need an IPI; fewer targets are one write per x2APIC cluster (one core alone is a physical write), or one per target on xAPIC. Targets already signalled or draining need no IPI (avoided). k unicasts take one ICR write per IPI.".into(),
        ],
    );
    Ok(())
}

/// Whether the kernel drives the local APIC in x2APIC mode: it does whenever the CPU has one
/// (CPUID.1:ECX bit 21).
fn x2apic_mode() -> bool {
    // SAFETY: CPUID exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { std::arch::x86_64::__cpuid(1) };
    leaf1.ecx & (1 << 21) != 0
}

// ----- 7. application messages: FPU-state bracket on against off ---------------------------------

/// `n` application messages (`hit`, integer-only) with the bracket `on`, to the calling core
/// (`local`: each runs at once, inside its send) or streamed to core 1 and waited for; TSC ticks
/// per message.
fn fpu_round(on: bool, local: bool, n: u64) -> Result<f64, String> {
    probe::set_fpu_save(on).map_err(errno("fpu save"))?;
    let target = if local { 0 } else { 1 };
    let start = rdtsc();
    for i in 0..n {
        hermit::send(target, hit, i as usize).map_err(err("send"))?;
    }
    if !local {
        wait_all(&[1])?;
    }
    let ticks = rdtsc() - start;
    probe::set_fpu_save(true).map_err(errno("fpu save"))?;
    Ok(ticks as f64 / n as f64)
}

fn fpu_cost(cpus: usize, scale: &Scale) -> Result<(), String> {
    let _guard = FpuSaveOnGuard;
    let was = probe::set_fpu_save(true).map_err(errno("fpu save"))?;
    if !was {
        return Err("the FPU-state bracket was off at start".into());
    }
    // Relaxed: a count; the sends and waits order it.
    let hits = HITS.load(Ordering::Relaxed);
    // [path][setting]: ticks per message, one sample per round.
    let mut samples: [[Vec<f64>; 2]; 2] = Default::default();
    for round in 0..scale.fpu_rounds {
        // Alternate which setting goes first.
        for on in [round % 2 == 0, round % 2 == 1] {
            for (path, local) in [(0, true), (1, false)] {
                samples[path][usize::from(on)].push(fpu_round(on, local, scale.fpu_messages)?);
            }
        }
    }
    // Relaxed: a count (see above).
    let ran = HITS.load(Ordering::Relaxed) - hits;
    let expected = scale.fpu_rounds as u64 * 4 * scale.fpu_messages;
    if ran != expected {
        return Err(format!("fpu cost: {ran} messages ran, {expected} sent"));
    }
    let ns = |ticks: f64| us(1) * 1e3 * ticks;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for (path, name) in [
        (0, "to the calling core (runs in the send)"),
        (1, "streamed 0 -> 1, then waited for"),
    ] {
        let [off, on] = &mut samples[path];
        let spread = |v: &[f64]| {
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{:.0}-{:.0}", ns(lo), ns(hi))
        };
        let (on_spread, off_spread) = (spread(on), spread(off));
        let (on_med, off_med) = (ns(median(on)), ns(median(off)));
        rows.push(vec![
            name.into(),
            format!("{on_med:.0}"),
            on_spread,
            format!("{off_med:.0}"),
            off_spread,
            format!("{:+.0}", on_med - off_med),
        ]);
        notes.push(format!(
            "{name}: the bracket adds {:+.1}% to a message.",
            (on_med / off_med.max(1e-9) - 1.0) * 100.0
        ));
    }
    notes.push(format!(
        "Medians over {} interleaved rounds of {} messages per setting and path (min-max across rounds); emulated time. The bracket: CR0.TS read (and cleared/set if it was set), fxsave64 or xsave64, fninit, ldmxcsr, the call, fxrstor64 or xrstor64. Kernel messages never take it.",
        scale.fpu_rounds, scale.fpu_messages
    ));
    report(
        &format!("Guest application message cost, FPU state saved against not ({cpus} vCPUs)"),
        &[
            "path",
            "with save: ns/msg (median)",
            "with save: min-max",
            "without: ns/msg (median)",
            "without: min-max",
            "save costs ns/msg",
        ],
        &rows,
        &notes,
    );
    Ok(())
}

// ----- driver -------------------------------------------------------------------------------------

fn run(scale: &Scale) -> Result<(), String> {
    let cpus = hermit::cpu_count();
    if hermit::core_id() != 0 {
        return Err("must start on core 0".into());
    }
    println!("ipiq-bench ({}): {cpus} cores", scale.name);
    if cpus < 2 {
        println!("ipiq-bench: needs at least 2 cores; nothing measured");
        return Ok(());
    }
    let tsc_per_us = *TSC_PER_US.get_or_init(calibrate);
    println!(
        "ipiq-bench: TSC {tsc_per_us:.0} ticks/us (against the kernel clock); times are emulated"
    );
    // The shootdown buffer, mapped and touched; it lives for the whole run.
    let buffer: &'static mut [Page] = Vec::leak(vec![Page([1; 4096]); BUFFER_PAGES]);
    let buffer = buffer.as_ptr() as usize;
    probes_refuse_bad_input(cpus, buffer)?;

    // An argument (after `--` on the kernel command line) names the sections to run, separated
    // by commas (streaming, passive, round-trip, shootdown, statistics, multicast, fpu); none:
    // all of them.
    let only: Option<Vec<String>> = std::env::args()
        .nth(1)
        .map(|a| a.split(',').map(str::to_owned).collect());
    let timed = |name: &str, section: &dyn Fn() -> Result<(), String>| -> Result<(), String> {
        let key = name.split_whitespace().next().unwrap_or(name);
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == key)) {
            return Ok(());
        }
        let start = Instant::now();
        section()?;
        println!(
            "ipiq-bench: {name} took {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    };
    timed("streaming", &|| streaming(cpus, scale.streaming))?;
    timed("passive", &|| passive(cpus))?;
    timed("round-trip", &|| round_trip(cpus, scale))?;
    timed("shootdown", &|| shootdowns(cpus, scale, buffer))?;
    timed("statistics on/off", &|| stats_on_off(cpus, scale))?;
    timed("multicast", &|| {
        multicast(
            cpus,
            scale.multicast_rounds,
            Duration::from_millis(scale.cell_budget_ms),
        )
    })?;
    timed(
        "fpu (application message cost, FPU state saved or not)",
        &|| fpu_cost(cpus, scale),
    )?;
    let total = hermit::total_stats().map_err(err("stats"))?;
    report(
        &format!("Guest ipiq totals over the run ({cpus} vCPUs)"),
        &[
            "messages",
            "IPIs",
            "avoided",
            "passive",
            "shootdowns",
            "full flushes",
            "multicast ICR writes",
        ],
        &[vec![
            total.sent.to_string(),
            total.ipis.to_string(),
            total.avoided.to_string(),
            total.passive.to_string(),
            total.shootdowns.to_string(),
            total.full_flushes.to_string(),
            total.icr_writes.to_string(),
        ]],
        &["Counted with statistics on (the on/off section's off phases are not in these).".into()],
    );
    println!("ipiq-bench: done");
    Ok(())
}

/// Runs every measurement at `scale`; exits 1 on any error.
pub fn main(scale: &Scale) {
    if let Err(e) = run(scale) {
        println!("ipiq-bench: FAILED: {e}");
        std::process::exit(1);
    }
}
