//! spin: a guest that never exits. The main thread (core 0) and a thread pinned to core 1 each
//! loop forever in `spin_on_purpose`, so `make qemu-debug APP=spin SMP=2` times out and its
//! backtraces must name that function on both vCPUs (`make qemu-debug-test` checks it).

use std::sync::atomic::{AtomicU64, Ordering};

use hermit_apps::pinned;

/// Laps per core, so the loops have an effect the compiler must keep.
static LAPS: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Spins forever on the calling core (never inlined: the backtraces must show this name).
#[inline(never)]
fn spin_on_purpose(slot: usize) -> ! {
    loop {
        LAPS[slot].fetch_add(1, Ordering::Relaxed);
        std::hint::spin_loop();
    }
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("spin: spinning on purpose in spin_on_purpose on core 0{}", if cores > 1 { " and core 1" } else { "" });
    if cores > 1 {
        if let Err(e) = pinned::spawn_on(1, || spin_on_purpose(1)) {
            println!("spin: {e}");
            std::process::exit(1);
        }
    }
    spin_on_purpose(0)
}
