//! The flood: every core sends to every other core through 4-slot FIFOs, message functions
//! forward messages (nested sends), and every core is also a cpusync master now and then;
//! at least 10^6 message executions, none lost, none run twice, no hang. Then the same with
//! 10% of the IPIs dropped and 10% delayed.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{Config, CpuSet, Ipiq};

type Q = Ipiq<HostPlatform>;

const CPUS: usize = 4;
const PER_CORE: usize = 126_000;
const SYNC_EVERY: usize = 5_000;

struct Book {
    /// Executions of each message id (its forwards included).
    runs: Vec<AtomicU8>,
    syncs: AtomicU64,
}

fn book(word: usize) -> &'static Book {
    // SAFETY: the address of a leaked `Book`, alive for the rest of the process.
    unsafe { &*(word as *const Book) }
}

/// `packed` = id << 8 | hops left. Runs once per hop, forwarding to the next core.
fn hop(q: &Q, book_word: usize, packed: usize) {
    let (id, hops) = (packed >> 8, packed & 0xff);
    book(book_word).runs[id].fetch_add(1, Ordering::Relaxed);
    if hops > 0 {
        let next = (q.current_cpu() + 1) % q.cpu_count();
        q.send(next, hop, book_word, (id << 8) | (hops - 1))
            .expect("a nested send to an online core is accepted");
    }
}

fn synced(_: &Q, book_word: usize, _: usize) {
    book(book_word).syncs.fetch_add(1, Ordering::Relaxed);
}

fn hops_of(id: usize) -> usize {
    id % 3
}

fn flood(drop_per_mille: u32, delay_per_mille: u32) {
    let mut config = HostConfig::cpus(CPUS);
    config.ipiq = Config {
        fifo_slots: 4,
        resend_after_ns: 100_000,
        ..Config::default()
    };
    config.drop_ipi_per_mille = drop_per_mille;
    config.delay_ipi_per_mille = delay_per_mille;
    config.ipi_delay = Duration::from_micros(100);
    let machine = HostMachine::start(config);
    let book_word = Box::leak(Box::new(Book {
        runs: (0..CPUS * PER_CORE).map(|_| AtomicU8::new(0)).collect(),
        syncs: AtomicU64::new(0),
    })) as *const Book as usize;
    let started = Instant::now();
    machine.run_on_all(move |core| {
        let q = core.ipiq();
        let me = core.cpu();
        let all = CpuSet::all(CPUS).unwrap();
        for i in 0..PER_CORE {
            let id = me * PER_CORE + i;
            let target = (me + 1 + i % (CPUS - 1)) % CPUS;
            q.send(target, hop, book_word, (id << 8) | hops_of(id))
                .unwrap();
            if i % SYNC_EVERY == SYNC_EVERY - 1 {
                assert_eq!(q.cpusync_simple(&all, synced, book_word, 0), Ok(CPUS));
            }
            if i % 64 == 0 {
                core.interrupt_point();
            }
        }
    });
    assert!(
        machine.quiesce(Duration::from_secs(60)),
        "flood did not drain: {} outstanding",
        machine.ipiq().outstanding()
    );
    let elapsed = started.elapsed();
    let book = book(book_word);
    let mut executions = 0u64;
    let mut wrong = Vec::new();
    for (id, runs) in book.runs.iter().enumerate() {
        let runs = runs.load(Ordering::Relaxed) as usize;
        executions += runs as u64;
        if runs != hops_of(id) + 1 {
            wrong.push((id, runs));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} messages lost or repeated, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert!(executions >= 1_000_000, "only {executions} executions");
    let syncs = (CPUS * (PER_CORE / SYNC_EVERY) * CPUS) as u64;
    assert_eq!(book.syncs.load(Ordering::Relaxed), syncs);
    let stats = machine.ipiq().total_stats();
    let faults = machine.platform().ipi_faults();
    eprintln!(
        "flood drop={drop_per_mille}‰ delay={delay_per_mille}‰: {executions} executions in {elapsed:?}; \
         ipis {} avoided {} fifo_full {} resent {}; faults {faults:?}",
        stats.ipis, stats.avoided, stats.fifo_full, stats.ipi_resent
    );
    if drop_per_mille > 0 {
        assert!(
            faults.dropped > 0 && faults.delayed > 0,
            "fault injection did not fire: {faults:?}"
        );
    }
    machine.shutdown();
}

#[test]
fn flood_all_to_all_with_tiny_fifos_nested_sends_and_cpusyncs() {
    flood(0, 0);
}

#[test]
fn flood_with_ten_percent_of_ipis_dropped_and_some_delayed() {
    flood(100, 100);
}
