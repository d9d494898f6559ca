//! Cross-core work dispatch on the host platform: core 0 hands chunks of a generated corpus to
//! the other simulated cores as ipiq messages; each worker hashes its chunk and counts its words,
//! and sends the result back to core 0 as a message (a nested send from a message function).
//! The same work then runs on std threads with channels, and the two are compared.
//!
//! `cargo run --release --features std --example dispatch [cores] [corpus MiB]`

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{Ipiq, Stats};

#[path = "../hermit-app/apps/dispatch/src/workload.rs"]
mod workload;
use workload::{corpus, crunch};

type Q = Ipiq<HostPlatform>;

const CHUNK: usize = 4096;

static CORPUS: OnceLock<Vec<u8>> = OnceLock::new();
static RESULTS: OnceLock<Vec<AtomicU64>> = OnceLock::new();
static WORDS: AtomicU64 = AtomicU64::new(0);
static COLLECTED: AtomicUsize = AtomicUsize::new(0);
static DONE_BY: OnceLock<Vec<AtomicU64>> = OnceLock::new();

fn chunk_of(index: usize) -> &'static [u8] {
    let corpus = CORPUS.get().expect("corpus built before dispatch");
    &corpus[index * CHUNK..((index + 1) * CHUNK).min(corpus.len())]
}

/// Runs on a worker core: do the chunk, send the result home.
fn work(q: &Q, index: usize, home: usize) {
    let (hash, words) = crunch(chunk_of(index));
    DONE_BY.get().expect("set up")[q.current_cpu()].fetch_add(1, Ordering::Relaxed);
    WORDS.fetch_add(words, Ordering::Relaxed);
    // Results come back as messages too; from inside a message function this never blocks.
    q.send(home, collect, index, hash as usize)
        .expect("home core is online");
}

/// Runs on core 0: record a result.
fn collect(_: &Q, index: usize, hash: usize) {
    RESULTS.get().expect("set up")[index].store(hash as u64, Ordering::Relaxed);
    COLLECTED.fetch_add(1, Ordering::Release);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cpus: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(4).max(2);
    let mib: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(16)
        .max(1);
    let corpus = CORPUS.get_or_init(|| corpus(mib << 20));
    let chunks = corpus.len().div_ceil(CHUNK);
    RESULTS.get_or_init(|| (0..chunks).map(|_| AtomicU64::new(0)).collect());
    DONE_BY.get_or_init(|| (0..cpus).map(|_| AtomicU64::new(0)).collect());
    println!("dispatch: {mib} MiB corpus in {chunks} chunks of {CHUNK} bytes over {cpus} simulated cores");

    // ---- ipiq -------------------------------------------------------------------------------
    let machine = HostMachine::start(HostConfig::cpus(cpus));
    let elapsed = machine
        .run_on(0, move |core| {
            let q = core.ipiq();
            let start = Instant::now();
            for index in 0..chunks {
                let target = 1 + index % (cpus - 1);
                q.send(target, work, index, 0).expect("workers are online");
                if index % 32 == 0 {
                    core.interrupt_point();
                }
            }
            core.idle_until(|| COLLECTED.load(Ordering::Acquire) == chunks);
            start.elapsed()
        })
        .expect("core 0 exists");
    let ipiq_words = WORDS.load(Ordering::Relaxed);
    let results = RESULTS.get().expect("set up");
    let ipiq_sum = results
        .iter()
        .fold(0u64, |a, r| a.wrapping_add(r.load(Ordering::Relaxed)));

    println!();
    println!(
        "{:>4} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        "core", "chunks", "processed", "sent", "ipis", "avoided", "spilled"
    );
    let mut total = Stats::default();
    for cpu in 0..cpus {
        let s = machine.ipiq().stats(cpu).expect("core exists");
        total += s;
        let done = DONE_BY.get().expect("set up")[cpu].load(Ordering::Relaxed);
        println!(
            "{cpu:>4} {done:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
            s.processed, s.sent, s.ipis, s.avoided, s.spilled
        );
    }
    println!(
        " all {chunks:>8} {:>10} {:>8} {:>8} {:>8} {:>8}",
        total.processed, total.sent, total.ipis, total.avoided, total.spilled
    );
    let per_msg = total.ipis as f64 / total.sent.max(1) as f64;
    println!("IPIs per message: {per_msg:.3} (avoided {})", total.avoided);
    machine.shutdown();

    // ---- std threads and channels, same work ----------------------------------------------------
    let start = Instant::now();
    let (result_tx, result_rx) = mpsc::channel::<(usize, u64, u64)>();
    let workers: Vec<_> = (1..cpus)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<usize>();
            let result_tx = result_tx.clone();
            let handle = std::thread::spawn(move || {
                for index in rx {
                    let (hash, words) = crunch(chunk_of(index));
                    let _ = result_tx.send((index, hash, words));
                }
            });
            (tx, handle)
        })
        .collect();
    drop(result_tx);
    for index in 0..chunks {
        let _ = workers[index % (cpus - 1)].0.send(index);
    }
    let mut std_sum = 0u64;
    let mut std_words = 0u64;
    for _ in 0..chunks {
        let (_, hash, words) = result_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("worker result");
        std_sum = std_sum.wrapping_add(hash);
        std_words += words;
    }
    let std_elapsed = start.elapsed();
    for (tx, handle) in workers {
        drop(tx);
        let _ = handle.join();
    }

    println!();
    println!("ipiq:            {elapsed:>10.2?}  words {ipiq_words}  checksum {ipiq_sum:016x}");
    println!("threads+channel: {std_elapsed:>10.2?}  words {std_words}  checksum {std_sum:016x}");
    println!(
        "ratio (threads+channel / ipiq): {:.2}",
        std_elapsed.as_secs_f64() / elapsed.as_secs_f64().max(1e-9)
    );
    if ipiq_sum != std_sum || ipiq_words != std_words {
        eprintln!("dispatch: results differ between ipiq and threads+channels");
        std::process::exit(1);
    }
    println!("results agree");
}
