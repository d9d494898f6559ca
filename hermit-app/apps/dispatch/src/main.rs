//! dispatch: cross-core work dispatch through ipiq inside a Hermit image.
//!
//! Core 0 hands the chunks of a generated corpus to the other cores as ipiq messages; each
//! message hashes its chunk and counts its words on the target core (in interrupt context: it
//! only computes and stores atomics), and core 0 waits for every target's last sequence number.
//! Then the same work runs on std threads pinned to the same cores, fed through channels, and
//! the two are compared. Exits 0 only if both computed the same results.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ipiq_abi::hermit;
use ipiq_abi::Stats;

use hermit_apps::pinned;
mod workload;
use pinned::{apic_id, join, spawn_on};
use workload::{corpus, crunch};

const MAX_CORES: usize = 64;
const CHUNK: usize = 4096;
const CORPUS_BYTES: usize = 4 << 20;

static CORPUS: OnceLock<Vec<u8>> = OnceLock::new();
static RESULTS: OnceLock<Vec<AtomicU64>> = OnceLock::new();
static WORDS: AtomicU64 = AtomicU64::new(0);
static DONE_BY: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

fn chunk_of(index: usize) -> &'static [u8] {
    let corpus = CORPUS.get().map_or(&[][..], Vec::as_slice);
    let start = (index * CHUNK).min(corpus.len());
    &corpus[start..(start + CHUNK).min(corpus.len())]
}

/// The ipiq message: runs on the target core, in interrupt context.
extern "C" fn work(index: usize) {
    let (hash, words) = crunch(chunk_of(index));
    if let Some(slot) = RESULTS.get().and_then(|r| r.get(index)) {
        slot.store(hash, Ordering::Relaxed);
    }
    WORDS.fetch_add(words, Ordering::Relaxed);
    if let Some(done) = DONE_BY.get(apic_id()) {
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Dispatches every chunk from the calling core (0) to `workers` and waits for all of them.
fn dispatch(chunks: usize, workers: &[usize]) -> Result<Duration, String> {
    let start = Instant::now();
    for index in 0..chunks {
        let target = workers[index % workers.len()];
        hermit::send(target, work, index).map_err(|e| format!("send to core {target}: {e}"))?;
    }
    for &target in workers {
        let seq = hermit::seq(target).map_err(|e| format!("seq of core {target}: {e}"))?;
        hermit::wait(target, seq).map_err(|e| format!("wait for core {target}: {e}"))?;
    }
    Ok(start.elapsed())
}

/// The same work on std threads pinned to `workers`, fed through channels.
fn threads_and_channels(chunks: usize, workers: &[usize]) -> Result<(Duration, u64, u64), String> {
    let start = Instant::now();
    let (result_tx, result_rx) = mpsc::channel::<(u64, u64)>();
    let mut feeds = Vec::new();
    let mut tids = Vec::new();
    for &core in workers {
        let (tx, rx) = mpsc::channel::<usize>();
        let result_tx = result_tx.clone();
        let tid = spawn_on(core, move || {
            for index in rx {
                if result_tx.send(crunch(chunk_of(index))).is_err() {
                    return;
                }
            }
        })?;
        feeds.push(tx);
        tids.push(tid);
    }
    drop(result_tx);
    for index in 0..chunks {
        feeds[index % feeds.len()]
            .send(index)
            .map_err(|_| "a worker thread stopped".to_string())?;
    }
    drop(feeds);
    let (mut sum, mut words) = (0u64, 0u64);
    for _ in 0..chunks {
        let (hash, w) = result_rx.recv().map_err(|_| "a worker thread stopped".to_string())?;
        sum = sum.wrapping_add(hash);
        words += w;
    }
    let took = start.elapsed();
    for tid in tids {
        join(tid);
    }
    Ok((took, sum, words))
}

fn run() -> Result<(), String> {
    let cpus = hermit::cpu_count().clamp(1, MAX_CORES);
    let here = hermit::core_id();
    if here != 0 {
        return Err(format!("dispatch must start on core 0, runs on {here}"));
    }
    let corpus = CORPUS.get_or_init(|| corpus(CORPUS_BYTES));
    let chunks = corpus.len().div_ceil(CHUNK);
    RESULTS.get_or_init(|| (0..chunks).map(|_| AtomicU64::new(0)).collect());
    let workers: Vec<usize> = if cpus > 1 { (1..cpus).collect() } else { vec![0] };
    println!(
        "dispatch: {} KiB corpus, {chunks} chunks of {CHUNK} bytes, core 0 -> cores {workers:?}",
        CORPUS_BYTES >> 10
    );

    let before: Vec<Stats> = (0..cpus).map(|c| hermit::stats(c).unwrap_or_default()).collect();
    let ipiq_time = dispatch(chunks, &workers)?;
    let ipiq_words = WORDS.load(Ordering::Relaxed);
    let ipiq_sum = RESULTS
        .get()
        .map_or(0, |r| r.iter().fold(0u64, |a, v| a.wrapping_add(v.load(Ordering::Relaxed))));

    println!();
    println!("{:>4} {:>7} {:>9} {:>7} {:>6} {:>8}", "core", "chunks", "processed", "sent", "ipis", "avoided");
    let mut total = Stats::default();
    for (cpu, before) in before.iter().enumerate() {
        let now = hermit::stats(cpu).map_err(|e| format!("stats of core {cpu}: {e}"))?;
        let d = Stats {
            processed: now.processed - before.processed,
            sent: now.sent - before.sent,
            ipis: now.ipis - before.ipis,
            avoided: now.avoided - before.avoided,
            ..Stats::default()
        };
        total += d;
        println!(
            "{cpu:>4} {:>7} {:>9} {:>7} {:>6} {:>8}",
            DONE_BY[cpu].load(Ordering::Relaxed),
            d.processed,
            d.sent,
            d.ipis,
            d.avoided
        );
    }
    println!(
        " all {chunks:>7} {:>9} {:>7} {:>6} {:>8}",
        total.processed, total.sent, total.ipis, total.avoided
    );
    println!(
        "IPIs per message: {:.3}",
        total.ipis as f64 / total.sent.max(1) as f64
    );

    let (std_time, std_sum, std_words) = threads_and_channels(chunks, &workers)?;
    println!();
    println!("ipiq messages:        {:>9.2} ms  words {ipiq_words}  checksum {ipiq_sum:016x}", ipiq_time.as_secs_f64() * 1e3);
    println!("std threads+channels: {:>9.2} ms  words {std_words}  checksum {std_sum:016x}", std_time.as_secs_f64() * 1e3);
    println!(
        "ratio (threads+channels / ipiq): {:.2}",
        std_time.as_secs_f64() / ipiq_time.as_secs_f64().max(1e-9)
    );
    if ipiq_sum != std_sum || ipiq_words != std_words {
        return Err("ipiq and threads+channels computed different results".into());
    }
    println!("dispatch: results agree");
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        println!("dispatch: FAILED: {e}");
        std::process::exit(1);
    }
}
