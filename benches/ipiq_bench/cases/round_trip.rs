//! Round trip: send a message to another core and wait until it ran; latency percentiles
//! against a raw shared-flag ping-pong and a crossbeam request/response pair.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{Ipiq, Platform};

use super::{LatencyCase, Params};
use crate::peers::crossbeam;
use crate::peers::ping_pong::{self, Yield};

/// How the target core of an ipiq round trip behaves.
#[derive(Clone, Copy)]
enum Target {
    /// A busy core calling `process()` in a loop: each call ends with the exit handshake
    /// (`npoll` cleared), so each send finds the core unsignalled and sends an IPI.
    Polls,
    /// A core polling with `poll()` (staying signalled, as the kernel's idle loop polls during
    /// its backoff): sends find `npoll` set and send no IPI.
    PollsSignalled,
    /// The idle loop (`idle_until`), woken by the IPI.
    Idles,
}

/// Every round-trip case, in report order.
pub fn cases(p: &Params) -> Vec<LatencyCase> {
    let k = p.roundtrips;
    let case = |id, label, run: Box<dyn Fn() -> Vec<u64>>| LatencyCase { id, label, run };
    vec![
        case(
            "rt.raw.yield16",
            "raw ping-pong, yield every 16 spins",
            Box::new(move || ping_pong::round_trips(k, Yield::Every16)),
        ),
        case(
            "rt.raw.yield1024",
            "raw ping-pong, yield every 1024 spins",
            Box::new(move || ping_pong::round_trips(k, Yield::Every1024)),
        ),
        case(
            "rt.raw.fence",
            "raw ping-pong + SeqCst fence per hand-over (send's limit)",
            Box::new(move || ping_pong::round_trips_with(k, Yield::Every1024, true)),
        ),
        case(
            "rt.ipiq.polls",
            "ipiq send+wait, target polls",
            Box::new(move || ipiq_round_trips(k, Target::Polls)),
        ),
        case(
            "rt.ipiq.polls-signalled",
            "ipiq send+wait, target polls poll() (signalled)",
            Box::new(move || ipiq_round_trips(k, Target::PollsSignalled)),
        ),
        case(
            "rt.ipiq.idles",
            "ipiq send+wait, target idles",
            Box::new(move || ipiq_round_trips(k, Target::Idles)),
        ),
        case(
            "rt.crossbeam",
            "crossbeam request/response",
            Box::new(move || crossbeam::request_response(k)),
        ),
    ]
}

fn ipiq_nop(_: &Ipiq<HostPlatform>, _: usize, _: usize) {}

/// ipiq `send` + `wait` from core 0 to core 1, `k` times; samples in nanoseconds.
fn ipiq_round_trips(k: usize, target: Target) -> Vec<u64> {
    let machine = HostMachine::start(HostConfig::cpus(2));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2));
    let (s, b) = (stop.clone(), barrier.clone());
    // Relaxed loads of `stop`: a flag alone, carrying no data; the join below waits for it.
    let target = machine
        .spawn_on(1, move |core| {
            b.wait();
            match target {
                // Between looks the target spins as the platform's own spin loops do (its
                // `relax`), as a kernel's polling idle loop would: the sender's `wait` spins the
                // same way.
                Target::Polls => {
                    let q = core.ipiq();
                    while !s.load(Ordering::Relaxed) {
                        if q.process() == 0 {
                            q.platform().relax();
                        }
                    }
                }
                Target::PollsSignalled => {
                    let q = core.ipiq();
                    while !s.load(Ordering::Relaxed) {
                        if q.poll() == 0 {
                            q.platform().relax();
                        }
                    }
                    // `poll`'s contract: a drain that clears the signal before leaving.
                    core.ipiq().process();
                }
                Target::Idles => core.idle_until(|| s.load(Ordering::Relaxed)),
            }
        })
        .expect("core 1");
    let b = barrier.clone();
    let samples = machine
        .run_on(0, move |core| {
            let q = core.ipiq();
            b.wait();
            let mut samples = Vec::with_capacity(k);
            for _ in 0..k {
                let t = Instant::now();
                let seq = q.send(1, ipiq_nop, 0, 0).expect("core 1 online");
                q.wait(1, seq).expect("core 1 answers");
                samples.push(t.elapsed().as_nanos() as u64);
            }
            samples
        })
        .expect("core 0");
    // Relaxed: see above.
    stop.store(true, Ordering::Relaxed);
    target.join();
    machine.shutdown();
    samples
}
