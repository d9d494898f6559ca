//! The host cost of one message on each side, without a race between the two: core 1 is held
//! in a task while core 0 queues `K` messages (one `send` each, or one `send_batch`), then core 1
//! drains them with one `process()` (or `poll()`); then empty `poll()` and `process()` calls on a
//! core with nothing queued; then single messages, each sent alone and run by one `poll()`
//! (`poll_one`, a polling target's side of a round trip), each followed by an empty `poll()`
//! (`poll_empty`) and a `process()` that finds the core still signalled and nothing queued:
//! every other message is sent to a core that holds the signal from an empty poll of its own
//! before the send (the sender skips its IPI, as in the kernel's idle loop, whose backoff
//! polls), and that `process()` is `process_signalled` (an idle loop turning to a task); the
//! rest are sent to a core whose signal is clear, so the sender sets it and sends an IPI, and
//! that `process()` is `process_after_ipi` (the reschedule before a late IPI's handler, or that
//! handler); then a last `process()` finds the core not signalled and nothing queued
//! (`process_quiet`, a task switch on a core that ran a task); then round trips to a core that
//! polls, each a `send_one` and a `wait_one` (the waiting side, its spin steps included).
//! Out-of-line functions of their own, so callgrind counts them apart. Prints nanoseconds per message (quartiles over the rounds); under
//! `valgrind --tool=callgrind` the same run gives instructions per call, which do not depend on
//! the host's load (docs/results/2026-12-07-host-cost.md).
//!
//! `cargo run --release --features std --example cost_probe [rounds]` (default 2000).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{IpiFn, Ipiq, Message, Platform};

static SINK: AtomicU64 = AtomicU64::new(0);

fn add(_: &Ipiq<HostPlatform>, _: usize, n: usize) {
    // Relaxed load and store: only core 1 runs this.
    SINK.store(SINK.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
}

fn nop(_: &Ipiq<HostPlatform>, _: usize, _: usize) {}

/// A `poll()` with one message queued (counted apart by callgrind).
#[inline(never)]
fn poll_one(q: &Ipiq<HostPlatform>) -> usize {
    q.poll()
}

/// A `poll()` with nothing queued, right after `poll_one` (counted apart by callgrind; its
/// different result keeps the linker from folding the two functions into one).
#[inline(never)]
fn poll_empty(q: &Ipiq<HostPlatform>) -> bool {
    q.poll() == 0
}

/// A `process()` on a core still signalled by its polls, with nothing queued: an idle loop
/// turning to a task (counted apart by callgrind).
#[inline(never)]
fn process_signalled(q: &Ipiq<HostPlatform>) -> usize {
    q.process() + 1
}

/// A `send` to a core its polls keep signalled (no IPI): a round trip's sending side (counted
/// apart by callgrind).
#[inline(never)]
fn send_one(q: &Ipiq<HostPlatform>) -> ipiq::Seq {
    q.send(1, nop, 0, 0).unwrap()
}

/// A `wait` for a message a polling core runs: a round trip's waiting side, its spin included
/// (counted apart by callgrind, with the calls it makes per spin).
#[inline(never)]
fn wait_one(q: &Ipiq<HostPlatform>, seq: ipiq::Seq) {
    q.wait(1, seq).unwrap()
}

/// A `process()` on a core that is not signalled, with nothing queued: a task switch on a core
/// that ran a task (counted apart by callgrind; its result differs from the other two).
#[inline(never)]
fn process_quiet(q: &Ipiq<HostPlatform>) -> usize {
    q.process() + 3
}

/// A `process()` on a core signalled by a sender (which sent an IPI), whose message a poll
/// already ran, with nothing queued (counted apart by callgrind; its different result keeps the
/// linker from folding it into `process_signalled`).
#[inline(never)]
fn process_after_ipi(q: &Ipiq<HostPlatform>) -> usize {
    q.process() + 2
}

/// Single messages for the `poll_one` phase.
const SINGLES: u64 = 1000;

/// Messages per round (under half of the default 256-slot FIFO: no drain while sending).
const K: usize = 100;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let machine = HostMachine::start(HostConfig::cpus(2));
    let mut send_ns = Vec::new();
    let mut batch_ns = Vec::new();
    let mut drain_ns = Vec::new();
    let mut poll_ns = Vec::new();
    for round in 0..rounds {
        let go = Arc::new(AtomicBool::new(false));
        let g = go.clone();
        let started = Arc::new(AtomicBool::new(false));
        let st = started.clone();
        let poll = round % 2 == 1;
        let target = machine
            .spawn_on(1, move |core| {
                // Release/Acquire: the start and go hand-shakes order nothing but themselves;
                // the pair is what keeps core 1 in its task (no drain) while core 0 sends.
                st.store(true, Ordering::Release);
                while !g.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                let t = Instant::now();
                let n = if poll {
                    let n = core.ipiq().poll();
                    core.ipiq().process();
                    n
                } else {
                    core.ipiq().process()
                };
                (t.elapsed().as_nanos() as f64 / n as f64, n)
            })
            .unwrap();
        // Acquire: pairs with the task's Release (it runs, so core 1 drains nothing meanwhile).
        while !started.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let batch = round % 4 >= 2;
        let s = machine
            .run_on(0, move |core| {
                let q = core.ipiq();
                let t = Instant::now();
                if batch {
                    let b = [Message::new(add as IpiFn<_>, 0, 1); K];
                    q.send_batch(1, &b).unwrap();
                } else {
                    for _ in 0..K {
                        q.send(1, add, 0, 1).unwrap();
                    }
                }
                t.elapsed().as_nanos() as f64 / K as f64
            })
            .unwrap();
        // Release: pairs with the task's Acquire wait.
        go.store(true, Ordering::Release);
        let (d, n) = target.join();
        assert_eq!(n, K);
        if batch {
            batch_ns.push(s)
        } else {
            send_ns.push(s)
        }
        if poll {
            poll_ns.push(d)
        } else {
            drain_ns.push(d)
        }
    }
    let (ep, eq) = machine
        .run_on(1, |core| {
            let q = core.ipiq();
            let t = Instant::now();
            for _ in 0..10_000 {
                q.poll();
            }
            let p = t.elapsed().as_nanos() as f64 / 1e4;
            q.process();
            let t = Instant::now();
            for _ in 0..10_000 {
                q.process();
            }
            (p, t.elapsed().as_nanos() as f64 / 1e4)
        })
        .unwrap();
    println!("empty poll ns {ep:.1}, empty process ns {eq:.1}");
    // Single messages: core 1 (in a task, so only its polls drain) sets `step` to 1 once it runs;
    // then core 0 sends one message and bumps `step` to even, and core 1 polls it, polls once
    // more, processes, and bumps `step` to odd (for every other message after an empty poll
    // that signals it before the send). Release/Acquire on `step`: the hand-shake orders the
    // two cores' turns, nothing else.
    let step = Arc::new(AtomicU64::new(0));
    let st = step.clone();
    let target = machine
        .spawn_on(1, move |core| {
            let q = core.ipiq();
            let (mut one_ns, mut ran) = (Vec::new(), 0);
            q.poll();
            st.store(1, Ordering::Release);
            for i in 0..SINGLES {
                while st.load(Ordering::Acquire) != 2 * i + 2 {
                    std::thread::yield_now();
                }
                let t = Instant::now();
                ran += poll_one(q);
                one_ns.push(t.elapsed().as_nanos() as f64);
                assert!(poll_empty(q), "nothing was queued for the second poll");
                let own = i % 2 == 0;
                let processed = if own {
                    process_signalled(q) - 1
                } else {
                    process_after_ipi(q) - 2
                };
                assert_eq!(processed, 0, "nothing was queued for the process");
                assert_eq!(
                    process_quiet(q) - 3,
                    0,
                    "nothing was queued for the last process"
                );
                if !own {
                    // The next message comes to a core signalled by its own (empty) poll.
                    q.poll();
                }
                st.store(2 * i + 3, Ordering::Release);
            }
            q.process();
            (one_ns, ran)
        })
        .unwrap();
    machine
        .run_on(0, move |core| {
            for i in 0..SINGLES {
                while step.load(Ordering::Acquire) != 2 * i + 1 {
                    std::thread::yield_now();
                }
                send_one(core.ipiq());
                step.store(2 * i + 2, Ordering::Release);
            }
        })
        .unwrap();
    let (mut one_ns, ran) = target.join();
    assert_eq!(
        ran, SINGLES as usize,
        "each single message ran in its poll_one"
    );
    // Round trips: core 1 polls until told to stop; core 0 sends and waits, `SINGLES` times.
    let stop = Arc::new(AtomicBool::new(false));
    let sp = stop.clone();
    let target = machine
        .spawn_on(1, move |core| {
            // Relaxed: a flag alone; the join orders what follows.
            while !sp.load(Ordering::Relaxed) {
                if core.ipiq().poll() == 0 {
                    core.ipiq().platform().relax();
                }
            }
            core.ipiq().process();
        })
        .unwrap();
    let mut rt_ns = machine
        .run_on(0, move |core| {
            let q = core.ipiq();
            (0..SINGLES)
                .map(|_| {
                    let t = Instant::now();
                    wait_one(q, send_one(q));
                    t.elapsed().as_nanos() as f64
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    target.join();
    machine.shutdown();
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 4], v[v.len() / 2], v[3 * v.len() / 4])
    };
    println!("send        ns/msg, quartiles {:.1?}", med(&mut send_ns));
    println!("send_batch  ns/msg, quartiles {:.1?}", med(&mut batch_ns));
    println!("process()   ns/msg, quartiles {:.1?}", med(&mut drain_ns));
    println!("poll()      ns/msg, quartiles {:.1?}", med(&mut poll_ns));
    println!("poll_one    ns/msg, quartiles {:.1?}", med(&mut one_ns));
    println!("round trip  ns,     quartiles {:.1?}", med(&mut rt_ns));
}
