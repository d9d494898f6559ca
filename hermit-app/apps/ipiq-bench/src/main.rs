//! ipiq-bench: in-guest measurements through the `sys_ipiq_*` syscalls. Counts (IPIs, messages)
//! are exact; times are emulated time under QEMU TCG, to be compared only within one run.
//!
//! 1. streaming: IPIs (ICR writes) per message, core 0 -> core 1 while core 1 idles;
//! 2. passive: IPIs for passive sends below a quarter of the FIFO (expected 0);
//! 3. round trip: send + wait to core 1, p50 / p99;
//! 4. multicast: one `send_many` to k cores against k unicast sends, each then waited for.
//!
//! Exits 0 when every measurement ran (the figures are reported, not judged).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipiq::hermit;
use ipiq::{CpuSet, Stats};

static HITS: AtomicU64 = AtomicU64::new(0);

extern "C" fn hit(_: usize) {
    HITS.fetch_add(1, Ordering::Relaxed);
}

fn delta(core: usize, before: &Stats) -> Result<Stats, String> {
    let now = hermit::stats(core).map_err(|e| format!("stats: {e}"))?;
    Ok(Stats {
        sent: now.sent - before.sent,
        ipis: now.ipis - before.ipis,
        avoided: now.avoided - before.avoided,
        passive: now.passive - before.passive,
        ..Stats::default()
    })
}

fn wait_all(targets: &[usize]) -> Result<(), String> {
    for &t in targets {
        let seq = hermit::seq(t).map_err(|e| format!("seq: {e}"))?;
        hermit::wait(t, seq).map_err(|e| format!("wait for {t}: {e}"))?;
    }
    Ok(())
}

fn streaming(n: u64) -> Result<(), String> {
    let before = hermit::stats(0).map_err(|e| format!("stats: {e}"))?;
    let start = Instant::now();
    for i in 0..n {
        hermit::send(1, hit, i as usize).map_err(|e| format!("send: {e}"))?;
    }
    wait_all(&[1])?;
    let took = start.elapsed();
    let d = delta(0, &before)?;
    println!(
        "streaming 0 -> 1: {n} messages, {} IPIs ({:.4} per message, {} avoided), {:.0} msg/s emulated",
        d.ipis,
        d.ipis as f64 / n as f64,
        d.avoided,
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}

fn passive() -> Result<(), String> {
    // The FIFO has 256 slots: below a quarter (64) a passive send never sends an IPI.
    let count = 32;
    let before = hermit::stats(0).map_err(|e| format!("stats: {e}"))?;
    let hits = HITS.load(Ordering::Relaxed);
    for i in 0..count {
        hermit::send_passive(1, hit, i).map_err(|e| format!("send_passive: {e}"))?;
    }
    let d = delta(0, &before)?;
    let start = Instant::now();
    while HITS.load(Ordering::Relaxed) < hits + count as u64 && start.elapsed() < Duration::from_secs(2) {
        std::hint::spin_loop();
    }
    let drained = HITS.load(Ordering::Relaxed) - hits;
    println!(
        "passive: {count} messages below a quarter full: {} IPIs, {} counted passive; drained by the tick in {:.1} ms ({drained} ran)",
        d.ipis,
        d.passive,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn round_trip(n: usize) -> Result<(), String> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let seq = hermit::send(1, hit, i).map_err(|e| format!("send: {e}"))?;
        hermit::wait(1, seq).map_err(|e| format!("wait: {e}"))?;
        times.push(start.elapsed());
    }
    times.sort();
    let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "round trip 0 -> 1 -> 0: {n} send+wait, p50 {:.1} us, p99 {:.1} us (p99/p50 {:.2}) emulated",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        p99.as_secs_f64() / p50.as_secs_f64().max(1e-12)
    );
    Ok(())
}

fn multicast(cpus: usize, rounds: usize) -> Result<(), String> {
    println!("multicast: {rounds} rounds each, emulated us per round (send + wait for all)");
    println!("{:>8} {:>12} {:>12} {:>8}", "targets", "send_many", "unicast", "ratio");
    for k in 1..cpus {
        let targets: Vec<usize> = (1..=k).collect();
        let set: CpuSet = targets.iter().copied().collect();
        let start = Instant::now();
        for i in 0..rounds {
            hermit::send_many(&set, hit, i).map_err(|e| format!("send_many: {e}"))?;
            wait_all(&targets)?;
        }
        let many = start.elapsed() / rounds as u32;
        let start = Instant::now();
        for i in 0..rounds {
            for &t in &targets {
                hermit::send(t, hit, i).map_err(|e| format!("send: {e}"))?;
            }
            wait_all(&targets)?;
        }
        let uni = start.elapsed() / rounds as u32;
        println!(
            "{k:>8} {:>12.1} {:>12.1} {:>8.2}",
            many.as_secs_f64() * 1e6,
            uni.as_secs_f64() * 1e6,
            many.as_secs_f64() / uni.as_secs_f64().max(1e-12)
        );
    }
    Ok(())
}

fn run() -> Result<(), String> {
    let cpus = hermit::cpu_count();
    if hermit::core_id() != 0 {
        return Err("must start on core 0".into());
    }
    println!("ipiq-bench: {cpus} cores");
    if cpus < 2 {
        println!("ipiq-bench: needs at least 2 cores; nothing measured");
        return Ok(());
    }
    streaming(50_000)?;
    passive()?;
    round_trip(2_000)?;
    multicast(cpus, 500)?;
    let total = hermit::total_stats().map_err(|e| format!("stats: {e}"))?;
    println!(
        "total: messages {} IPIs {} avoided {} passive {}",
        total.sent, total.ipis, total.avoided, total.passive
    );
    println!("ipiq-bench: done");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        println!("ipiq-bench: FAILED: {e}");
        std::process::exit(1);
    }
}
