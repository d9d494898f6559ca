//! Waiting on a shared line: a cache line of its own, and the spin every waiter here uses.

use std::thread;

/// A cache line of its own (128 bytes: two lines, against the adjacent-line prefetcher).
#[repr(align(128))]
#[derive(Default)]
pub struct Pad<T>(pub T);

/// Spin with a `pause`, giving the OS CPU away every 16 spins, so the streaming targets and the
/// rings they are compared with are on the same footing (the host has few CPUs and other work
/// beside us; a spinner that never yields can hold a CPU for a whole scheduler slice while the
/// thread it waits for is queued behind it). ipiq's own spin loops use the host platform's
/// `relax`, which yields every 16 spins only while its simulated cores outnumber the host's
/// CPUs (every 128 otherwise); the round trips' targets spin with it too.
pub struct Spin(u32);

impl Spin {
    pub fn new() -> Self {
        Spin(0)
    }

    /// One spin of an ordinary waiter: yields every 16th time.
    pub fn spin(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(16) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    /// A spin that yields only every 1024 spins: the patient raw ping-pong baseline, so that it
    /// measures the hardware handoff rather than the scheduler whenever both threads have a CPU.
    pub fn raw_spin(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(1024) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}
