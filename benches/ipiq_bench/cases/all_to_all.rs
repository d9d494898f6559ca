//! All-to-all: every core sends round robin to every other and drains its own inbox every 32
//! sends and at the end; throughput over all cores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::Ipiq;

use super::{case, Params, ThroughputCase};
use crate::measure::Run;
use crate::peers::crossbeam::ChannelInboxes;
use crate::peers::mutex_inbox::MutexInboxes;
use crate::peers::{add, addr, Inboxes, Msg, Wakeups};
use crate::spin::Pad;

/// Every all-to-all case, in report order.
pub fn cases(p: &Params) -> Vec<ThroughputCase> {
    let (cores, m) = (p.a2a_cores, p.a2a_per_core);
    vec![
        case("a2a.ipiq", "ipiq (HostMachine, 4 cores)", move || {
            ipiq_all_to_all(cores, m)
        }),
        case(
            "a2a.crossbeam",
            "crossbeam-channel bounded(256)",
            move || peer_all_to_all(cores, m, ChannelInboxes::new(cores)),
        ),
        case("a2a.mutex", "Mutex<VecDeque>", move || {
            peer_all_to_all(cores, m, MutexInboxes::new(cores))
        }),
    ]
}

/// Target of message `i` from core `me` of `cores`: the others, round robin.
fn peer(me: usize, i: u64, cores: usize) -> usize {
    (me + 1 + (i as usize % (cores - 1))) % cores
}

/// One counter per core, written only by that core (in the functions it runs).
fn counters(cores: usize) -> Arc<Vec<Pad<AtomicU64>>> {
    Arc::new((0..cores).map(|_| Pad::default()).collect())
}

fn ipiq_add(_: &Ipiq<HostPlatform>, counter: usize, n: usize) {
    add(counter, n);
}

/// ipiq on a HostMachine of `cores`: each sends `m` messages.
fn ipiq_all_to_all(cores: usize, m: u64) -> Run {
    let machine = HostMachine::start(HostConfig::cpus(cores));
    let counters = counters(cores);
    let barrier = Arc::new(Barrier::new(cores));
    machine.ipiq().reset_stats();
    let c = counters.clone();
    let times = machine.run_on_all(move |core| {
        let q = core.ipiq();
        let me = core.cpu();
        barrier.wait();
        let start = Instant::now();
        for i in 0..m {
            let to = peer(me, i, cores);
            q.send(to, ipiq_add, addr(&c[to].0), 1).expect("online");
            if i % 32 == 31 {
                q.process();
            }
        }
        // Relaxed: this core's own counter, written only by this core.
        while c[me].0.load(Ordering::Relaxed) < m {
            if q.process() == 0 {
                thread::yield_now();
            }
        }
        (start, Instant::now())
    });
    let stats = machine.ipiq().total_stats();
    machine.shutdown();
    Run {
        elapsed: span(&times),
        wakeups: Wakeups::Counted(stats.ipis),
    }
}

/// A peer's inboxes on `cores` fresh threads, each sending `m` messages; a full inbox makes the
/// sender drain its own (so no two cores wait on each other) and retry.
fn peer_all_to_all(cores: usize, m: u64, inboxes: impl Inboxes) -> Run {
    let inboxes = Arc::new(inboxes);
    let counters = counters(cores);
    let barrier = Arc::new(Barrier::new(cores));
    let handles: Vec<_> = (0..cores)
        .map(|me| {
            let (inboxes, counters, barrier) = (inboxes.clone(), counters.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for i in 0..m {
                    let to = peer(me, i, cores);
                    let mut msg: Msg = (add, addr(&counters[to].0), 1);
                    while let Err(back) = inboxes.try_send(to, msg) {
                        msg = back;
                        if inboxes.drain(me) == 0 {
                            thread::yield_now();
                        }
                    }
                    if i % 32 == 31 {
                        inboxes.drain(me);
                    }
                }
                // Relaxed: this core's own counter, written only by this thread.
                while counters[me].0.load(Ordering::Relaxed) < m {
                    if inboxes.drain(me) == 0 {
                        thread::yield_now();
                    }
                }
                (start, Instant::now())
            })
        })
        .collect();
    let times: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    Run {
        elapsed: span(&times),
        wakeups: inboxes.wakeups(),
    }
}

/// From the first core's start to the last core's end.
fn span(times: &[(Instant, Instant)]) -> Duration {
    let start = times.iter().map(|t| t.0).min().expect("cores");
    let end = times.iter().map(|t| t.1).max().expect("cores");
    end - start
}
