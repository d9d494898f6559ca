//! Streaming, one sender -> one target: throughput, and wake-ups per message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{IpiFn, Ipiq, Message};

use super::{case, Params, ThroughputCase};
use crate::measure::Run;
use crate::peers::ring::Fence;
use crate::peers::{self, add, addr, Consumer, Msg, Producer, Wakeups, SLOTS};
use crate::spin::{Pad, Spin};

/// How long an idle target polls (`Ipiq::poll`) before sleeping, in the cases that say so.
const IDLE_POLL: Duration = Duration::from_micros(50);
/// Messages per `send_batch` (ipiq and the ring fenced per batch).
const BATCH: usize = 64;

/// How the target core of an ipiq streaming run behaves.
#[derive(Clone, Copy)]
enum Target {
    /// The kernel's idle loop (`idle_until`: drain on IPI, otherwise sleep until the next IPI or
    /// tick), first polling (`Ipiq::poll`, signalled) for the given time if it is not zero.
    Idles(Duration),
    /// A busy core calling `process()` at every safe point.
    Polls,
    /// A core polling its queues with `Ipiq::poll()` (staying signalled, as the kernel's idle
    /// loop polls during its backoff): senders find `npoll` set and never touch it.
    PollsSignalled,
}

/// How the sender of a streaming run queues its messages.
#[derive(Clone, Copy)]
enum Sending {
    /// One message at a time (`send`).
    One,
    /// ipiq's `send_passive` (no fence and no IPI until the FIFO is a quarter full).
    Passive,
    /// Batches of this many messages (`send_batch`: one fence and at most one IPI per batch).
    Batch(usize),
}

/// Every streaming case, in report order.
pub fn cases(p: &Params) -> Vec<ThroughputCase> {
    let n = p.stream;
    let idles = Target::Idles(Duration::ZERO);
    let polls50 = Target::Idles(IDLE_POLL);
    vec![
        case(
            "stream.ipiq.send.idles",
            "ipiq send, target idles (drain on IPI)",
            move || ipiq_stream(n, idles, Sending::One),
        ),
        case(
            "stream.ipiq.send.polls",
            "ipiq send, target polls process()",
            move || ipiq_stream(n, Target::Polls, Sending::One),
        ),
        case(
            "stream.ipiq.send.polls-signalled",
            "ipiq send, target polls poll() (signalled)",
            move || ipiq_stream(n, Target::PollsSignalled, Sending::One),
        ),
        case("stream.ring", "bare SPSC ring (limit)", move || {
            peer_stream(n, peers::ring::open(SLOTS, Fence::None), Sending::One)
        }),
        case(
            "stream.ring.fence",
            "ring + SeqCst fence per message (send's limit)",
            move || peer_stream(n, peers::ring::open(SLOTS, Fence::PerMessage), Sending::One),
        ),
        case(
            "stream.ring.fence-batch64",
            "ring + SeqCst fence per batch of 64 (send_batch's limit)",
            move || {
                peer_stream(
                    n,
                    peers::ring::open(SLOTS, Fence::PerBatch),
                    Sending::Batch(BATCH),
                )
            },
        ),
        case(
            "stream.crossbeam",
            "crossbeam-channel bounded(256)",
            move || peer_stream(n, peers::crossbeam::open(), Sending::One),
        ),
        case("stream.mpsc", "std mpsc::sync_channel(256)", move || {
            peer_stream(n, peers::mpsc::open(), Sending::One)
        }),
        case("stream.mutex", "Mutex<VecDeque> + unpark", move || {
            peer_stream(n, peers::mutex_inbox::open(), Sending::One)
        }),
        case(
            "stream.llist",
            "llist (Treiber push, swap+reverse)",
            move || peer_stream(n, peers::llist::open(n), Sending::One),
        ),
        case(
            "stream.ipiq.send.idles-poll50",
            "ipiq send, target idles, polls 50 us first",
            move || ipiq_stream(n, polls50, Sending::One),
        ),
        case(
            "stream.ipiq.batch64.polls",
            "ipiq send_batch(64), target polls process()",
            move || ipiq_stream(n, Target::Polls, Sending::Batch(BATCH)),
        ),
        case(
            "stream.ipiq.batch64.polls-signalled",
            "ipiq send_batch(64), target polls poll() (signalled)",
            move || ipiq_stream(n, Target::PollsSignalled, Sending::Batch(BATCH)),
        ),
        case(
            "stream.ipiq.batch64.idles-poll50",
            "ipiq send_batch(64), target idles, polls 50 us first",
            move || ipiq_stream(n, polls50, Sending::Batch(BATCH)),
        ),
        case(
            "stream.ipiq.passive.idles",
            "ipiq send_passive, target idles",
            move || ipiq_stream(n, idles, Sending::Passive),
        ),
        case(
            "stream.ipiq.passive.polls",
            "ipiq send_passive, target polls",
            move || ipiq_stream(n, Target::Polls, Sending::Passive),
        ),
        case(
            "stream.ipiq.batch64.idles",
            "ipiq send_batch(64), target idles (drain on IPI)",
            move || ipiq_stream(n, idles, Sending::Batch(BATCH)),
        ),
    ]
}

fn ipiq_add(_: &Ipiq<HostPlatform>, counter: usize, n: usize) {
    add(counter, n);
}

/// ipiq on a 2-core HostMachine: core 0 sends `n` messages to core 1.
fn ipiq_stream(n: u64, target: Target, sending: Sending) -> Run {
    let mut config = HostConfig::cpus(2);
    if let Target::Idles(poll) = target {
        config.idle_poll = poll;
    }
    let machine = HostMachine::start(config);
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let barrier = Arc::new(Barrier::new(2));
    let (c, b) = (counter.clone(), barrier.clone());
    // Relaxed loads of the counter: only core 1 writes it, in the function it runs.
    let target = machine
        .spawn_on(1, move |core| {
            b.wait();
            match target {
                Target::Polls => {
                    let mut spin = Spin::new();
                    while c.0.load(Ordering::Relaxed) < n {
                        if core.ipiq().process() == 0 {
                            spin.spin();
                        }
                    }
                }
                Target::PollsSignalled => {
                    let mut spin = Spin::new();
                    while c.0.load(Ordering::Relaxed) < n {
                        if core.ipiq().poll() == 0 {
                            spin.spin();
                        }
                    }
                    // `poll`'s contract: a drain that clears the signal before leaving.
                    core.ipiq().process();
                }
                Target::Idles(_) => core.idle_until(|| c.0.load(Ordering::Relaxed) >= n),
            }
            Instant::now()
        })
        .expect("core 1");
    let at = addr(&counter.0);
    let b = barrier.clone();
    let sender = machine
        .spawn_on(0, move |core| {
            let q = core.ipiq();
            q.reset_stats();
            b.wait();
            let start = Instant::now();
            match sending {
                Sending::One => {
                    for _ in 0..n {
                        q.send(1, ipiq_add, at, 1).expect("core 1 online");
                    }
                }
                Sending::Passive => {
                    for _ in 0..n {
                        q.send_passive(1, ipiq_add, at, 1).expect("core 1 online");
                    }
                }
                Sending::Batch(k) => {
                    let batch = vec![Message::new(ipiq_add as IpiFn<_>, at, 1); k];
                    let mut left = n as usize;
                    while left > 0 {
                        let now = left.min(k);
                        q.send_batch(1, &batch[..now]).expect("core 1 online");
                        left -= now;
                    }
                }
            }
            start
        })
        .expect("core 0");
    let start = sender.join();
    let end = target.join();
    let stats = machine.ipiq().stats(0).expect("core 0");
    assert_eq!(stats.sent, n, "ipiq sent count");
    machine.shutdown();
    Run {
        elapsed: end - start,
        wakeups: Wakeups::Counted(stats.ipis),
    }
}

/// A peer queue: the producer sends `n` messages (one at a time or in batches) on one fresh
/// thread, the consumer runs them on another; the time from the producer's start to the
/// consumer's end.
fn peer_stream<P: Producer, C: Consumer>(
    n: u64,
    (mut producer, mut consumer): (P, C),
    sending: Sending,
) -> Run {
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let msg: Msg = (add, addr(&counter.0), 1);
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let target = thread::spawn(move || {
        consumer.register();
        b.wait();
        consumer.run(n);
        (Instant::now(), consumer)
    });
    let sender = thread::spawn(move || {
        barrier.wait();
        let start = Instant::now();
        match sending {
            Sending::Batch(k) => {
                let batch = vec![msg; k];
                let mut left = n as usize;
                while left > 0 {
                    let now = left.min(k);
                    producer.send_batch(&batch[..now]);
                    left -= now;
                }
            }
            Sending::One | Sending::Passive => {
                for _ in 0..n {
                    producer.send(msg);
                }
            }
        }
        start
    });
    let start = sender.join().expect("producer");
    let (end, consumer) = target.join().expect("consumer");
    // Relaxed: the join ordered the consumer's writes before this read.
    assert_eq!(
        counter.0.load(Ordering::Relaxed),
        n,
        "every message ran once"
    );
    Run {
        elapsed: end - start,
        wakeups: consumer.wakeups(),
    }
}
