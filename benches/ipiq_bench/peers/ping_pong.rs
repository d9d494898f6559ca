//! The raw round-trip baseline: one shared flag, two spinning threads handing it back and forth;
//! and the same with the wake-up protocol's SeqCst fence after each hand-over (the round trip's
//! limit for a protocol whose sender must fence between publishing and looking at the target's
//! flag, as ipiq's `send` does).

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::spin::{Pad, Spin};

/// How often a ping-pong spinner gives its CPU away.
#[derive(Clone, Copy, Debug)]
pub enum Yield {
    /// Every 16 spins, like ipiq's host `relax` when simulated cores outnumber the host's CPUs.
    Every16,
    /// Every 1024 spins: the hardware handoff when both threads have a CPU, very slow when the
    /// scheduler puts them on one.
    Every1024,
}

/// `k` round trips in nanoseconds.
pub fn round_trips(k: usize, yielding: Yield) -> Vec<u64> {
    round_trips_with(k, yielding, false)
}

/// `k` round trips in nanoseconds; with `fenced`, each side pays a SeqCst fence after its
/// hand-over store, then reads a flag the other side never writes (the sender's side of the
/// wake-up handshake: publish, fence, look at the target's `npoll`).
pub fn round_trips_with(k: usize, yielding: Yield, fenced: bool) -> Vec<u64> {
    let polling = Arc::new(Pad(AtomicU64::new(1)));
    let p = polling.clone();
    let announce = move |polling: &AtomicU64| {
        if fenced {
            // SeqCst fence: the store-load barrier the wake-up handshake needs between the
            // hand-over store above and the look at the other side's flag below.
            fence(Ordering::SeqCst);
            // Relaxed: ordered by the fence; the flag is never written during the run.
            std::hint::black_box(polling.load(Ordering::Relaxed));
        }
    };
    let flag = Arc::new(Pad(AtomicU64::new(0)));
    let f = flag.clone();
    let wait = move |flag: &AtomicU64, value: u64| {
        let mut spin = Spin::new();
        // Acquire: pairs with the other side's Release store (the handoff carries no data,
        // but the pair is what any real request would need).
        while flag.load(Ordering::Acquire) != value {
            match yielding {
                Yield::Every16 => spin.spin(),
                Yield::Every1024 => spin.raw_spin(),
            }
        }
    };
    let ponger = thread::spawn(move || {
        for i in 0..k as u64 {
            wait(&f.0, 2 * i + 1);
            // Release: hands the turn back.
            f.0.store(2 * i + 2, Ordering::Release);
            announce(&p.0);
        }
    });
    let mut samples = Vec::with_capacity(k);
    for i in 0..k as u64 {
        let t = Instant::now();
        // Release: hands the turn over.
        flag.0.store(2 * i + 1, Ordering::Release);
        announce(&polling.0);
        wait(&flag.0, 2 * i + 2);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    ponger.join().expect("ponger");
    samples
}
