//! The raw round-trip baseline: one shared flag, two spinning threads handing it back and forth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use crate::spin::{Pad, Spin};

/// How often a ping-pong spinner gives its CPU away.
#[derive(Clone, Copy, Debug)]
pub enum Yield {
    /// Every 16 spins, like ipiq's host `relax` (the same footing as ipiq's waiters).
    Every16,
    /// Every 1024 spins: the hardware handoff when both threads have a CPU, very slow when the
    /// scheduler puts them on one.
    Every1024,
}

/// `k` round trips in nanoseconds.
pub fn round_trips(k: usize, yielding: Yield) -> Vec<u64> {
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
        }
    });
    let mut samples = Vec::with_capacity(k);
    for i in 0..k as u64 {
        let t = Instant::now();
        // Release: hands the turn over.
        flag.0.store(2 * i + 1, Ordering::Release);
        wait(&flag.0, 2 * i + 2);
        samples.push(t.elapsed().as_nanos() as u64);
    }
    ponger.join().expect("ponger");
    samples
}
