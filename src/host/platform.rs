//! [`HostPlatform`]: the [`Platform`] of simulated cores (IPIs as pending bits and unparks, or
//! signals in preemptive mode; fault injection; TLB flush counters).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::{self};
use std::time::{Duration, Instant};

use super::irq::{local_irq_restore, local_irq_save, CoreState, Interrupts, Place};
use super::{HostConfig, IrqDelivery, CURRENT, SPINS};
use crate::platform::{CpuId, IrqState, Platform};

/// The [`Platform`] of simulated cores.
pub struct HostPlatform {
    pub(super) epoch: Instant,
    pub(super) cores: Box<[CoreState]>,
    pub(super) drop_per_mille: u32,
    pub(super) delay_per_mille: u32,
    pub(super) delay: Duration,
    /// xorshift state for fault injection.
    pub(super) rng: AtomicU64,
    /// Late IPIs: (due, target).
    pub(super) delayed: Mutex<Vec<(Instant, CpuId)>>,
    /// Length of `delayed`, read without the lock to skip it when empty.
    pub(super) delayed_len: AtomicUsize,
    pub(super) dropped: AtomicU64,
    pub(super) delayed_total: AtomicU64,
    /// `relax` gives the OS CPU away once in `yield_mask + 1` calls (a power of two): see
    /// [`yield_mask`].
    yield_mask: u32,
}

/// How often a spinning core gives its OS CPU away, as a mask of `relax` calls. Cores that
/// outnumber the host's CPUs yield every 16 spins, so that the thread a spinner waits for gets
/// a CPU soon. Cores that each can have a CPU yield every 128: a `sched_yield` is a system
/// call, and every 16 spins (about a microsecond of ipiq's spinning) it falls inside the
/// sub-microsecond hand-offs between two spinning cores often enough to show in their median
/// (docs/results/2026-12-07-round-trip.md). Pending late IPIs are delivered every 16 spins
/// either way.
fn yield_mask(cores: usize) -> u32 {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= cpus {
        127
    } else {
        15
    }
}

/// IPI delivery figures of a host machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpiFaults {
    /// IPIs dropped by fault injection.
    pub dropped: u64,
    /// IPIs delayed by fault injection.
    pub delayed: u64,
    /// IPIs that reached a core.
    pub delivered: u64,
}

/// TLB flushes a simulated core performed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbFlushes {
    /// Ranged flush calls.
    pub ranges: u64,
    /// Pages flushed by range.
    pub pages: u64,
    /// Full flushes.
    pub full: u64,
}

impl HostPlatform {
    pub(super) fn new(config: &HostConfig) -> Self {
        Self {
            epoch: Instant::now(),
            cores: (0..config.cpus.max(1))
                .map(|_| CoreState {
                    preemptive: config.delivery == IrqDelivery::Preemptive,
                    place: AtomicU8::new(Place::SafePoint as u8),
                    ..CoreState::default()
                })
                .collect(),
            drop_per_mille: config.drop_ipi_per_mille.min(1000),
            delay_per_mille: config.delay_ipi_per_mille.min(1000),
            delay: config.ipi_delay,
            rng: AtomicU64::new(config.seed | 1),
            delayed: Mutex::new(Vec::new()),
            delayed_len: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            delayed_total: AtomicU64::new(0),
            yield_mask: yield_mask(config.cpus.max(1)),
        }
    }

    /// A number in `0..1000` from the fault generator. Context: any, the interrupt handler
    /// included (a handler's roll between the interrupted roll's load and store only repeats a
    /// number).
    pub(super) fn roll(&self) -> u32 {
        // Relaxed: the generator's state orders nothing; a lost update only repeats a number.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x % 1000) as u32
    }

    /// Raises the IPI on `target`: its pending bit, then (preemptive mode) the signal, then an
    /// unpark for a halted core. Context: any thread, the interrupt handler included; never
    /// blocks.
    pub(super) fn deliver(&self, target: CpuId) {
        let core = &self.cores[target];
        // Relaxed: a statistic.
        core.ipis_delivered.fetch_add(1, Ordering::Relaxed);
        // Release: the sender's queue stores happen before the target sees the interrupt
        // (pairs with the Acquire swap in `take_pending`).
        core.pending.store(true, Ordering::Release);
        if core.preemptive {
            core.line.kick();
        }
        if let Some(thread) = core.thread.get() {
            thread.unpark();
        }
    }

    /// Delivers the delayed IPIs that are due.
    ///
    /// Context: any thread, interrupts on or off; it takes the delayed list's lock with the
    /// caller's interrupts off (the interrupt handler may take it too, through `send_ipi`).
    pub(super) fn deliver_due(&self) {
        // Relaxed: a hint; the list itself is read under its lock.
        if self.delayed_len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let irq = local_irq_save();
        self.deliver_due_locked();
        local_irq_restore(irq);
    }

    /// [`HostPlatform::deliver_due`] with interrupts off.
    fn deliver_due_locked(&self) {
        let now = Instant::now();
        let due: Vec<CpuId> = {
            let Ok(mut list) = self.delayed.lock() else {
                return;
            };
            let mut due = Vec::new();
            list.retain(|&(at, cpu)| {
                let keep = at > now;
                if !keep {
                    due.push(cpu);
                }
                keep
            });
            self.delayed_len.store(list.len(), Ordering::Relaxed);
            due
        };
        for cpu in due {
            self.deliver(cpu);
        }
    }

    /// Takes the core's pending IPI, if any. Context: the core's own thread.
    pub(super) fn take_pending(&self, cpu: CpuId) -> bool {
        // Acquire: pairs with the Release store in `deliver`.
        self.cores[cpu].pending.swap(false, Ordering::Acquire)
    }

    /// How core `cpu` took its interrupts (preemptive mode; all zero otherwise, and for a core
    /// that does not exist).
    pub fn interrupts(&self, cpu: CpuId) -> Interrupts {
        self.cores
            .get(cpu)
            .map_or_else(Interrupts::default, |c| c.line.snapshot())
    }

    /// [`HostPlatform::interrupts`] summed over every core.
    pub fn total_interrupts(&self) -> Interrupts {
        let mut total = Interrupts::default();
        for core in self.cores.iter() {
            total += core.line.snapshot();
        }
        total
    }

    /// Whether interrupts preempt the cores ([`IrqDelivery::Preemptive`]).
    pub fn is_preemptive(&self) -> bool {
        self.cores.first().is_some_and(|c| c.preemptive)
    }

    /// The fault-injection figures so far.
    pub fn ipi_faults(&self) -> IpiFaults {
        // Relaxed: statistics, ordering nothing.
        IpiFaults {
            dropped: self.dropped.load(Ordering::Relaxed),
            delayed: self.delayed_total.load(Ordering::Relaxed),
            delivered: self
                .cores
                .iter()
                .map(|c| c.ipis_delivered.load(Ordering::Relaxed))
                .sum(),
        }
    }

    /// IPIs that reached core `cpu` (0 for a core past the count).
    pub fn ipis_delivered(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.ipis_delivered.load(Ordering::Relaxed))
    }

    /// How many [`Platform::send_ipi_many`] calls core `cpu` made (0 for a core past the count).
    pub fn multicast_calls(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.multicast_calls.load(Ordering::Relaxed))
    }

    /// How many times core `cpu`'s interrupts were re-enabled (an `irq_restore` that turned
    /// them from off to on): a test can check that an operation kept them off throughout.
    pub fn irq_enables(&self, cpu: CpuId) -> u64 {
        // Relaxed: a statistic.
        self.cores
            .get(cpu)
            .map_or(0, |c| c.irq_enables.load(Ordering::Relaxed))
    }

    /// The TLB flushes core `cpu` performed.
    pub fn tlb_flushes(&self, cpu: CpuId) -> TlbFlushes {
        self.cores
            .get(cpu)
            .map_or_else(TlbFlushes::default, |c| TlbFlushes {
                ranges: c.range_flushes.load(Ordering::Relaxed),
                pages: c.pages_flushed.load(Ordering::Relaxed),
                full: c.full_flushes.load(Ordering::Relaxed),
            })
    }
}

// SAFETY: each simulated core is one thread (its id thread-local), interrupts only at its
// interrupt points, which an irq_save section never reaches; other threads' calls panic.
unsafe impl Platform for HostPlatform {
    #[inline]
    fn current_cpu(&self) -> CpuId {
        match CURRENT.with(Cell::get) {
            Some(cpu) => cpu,
            // A harness bug, not bad input: ipiq calls belong on simulated cores.
            None => panic!(
                "ipiq host platform: this thread is not a simulated core (use HostMachine::run_on)"
            ),
        }
    }

    #[inline]
    fn cpu_count(&self) -> usize {
        self.cores.len()
    }

    /// Context: any thread, interrupts on or off, the interrupt handler included; never blocks
    /// except on the delayed-IPI list's lock, which every user takes with interrupts off.
    fn send_ipi(&self, target: CpuId) {
        if self.drop_per_mille > 0 && self.roll() < self.drop_per_mille {
            // Relaxed: a statistic.
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.delay_per_mille > 0 && self.roll() < self.delay_per_mille {
            // Relaxed: a statistic; the list itself is under its lock.
            self.delayed_total.fetch_add(1, Ordering::Relaxed);
            let irq = local_irq_save();
            let queued = self.delayed.lock().map(|mut list| {
                list.push((Instant::now() + self.delay, target));
                self.delayed_len.store(list.len(), Ordering::Relaxed);
            });
            local_irq_restore(irq);
            if queued.is_ok() {
                return;
            }
        }
        self.deliver(target);
    }

    /// Models the x86 platform's write count for the all-excluding-self shorthand only: a set
    /// of every core but the caller is one write, any other set one write per target (no
    /// cluster destinations). Each target is delivered as by [`Platform::send_ipi`], fault
    /// injection rolled per target. Counts the call for [`HostPlatform::multicast_calls`].
    ///
    /// Context: as [`Platform::send_ipi`].
    fn send_ipi_many(&self, targets: &crate::CpuSet) -> usize {
        let caller = CURRENT.with(Cell::get);
        if let Some(core) = caller.and_then(|cpu| self.cores.get(cpu)) {
            // Relaxed: a statistic.
            core.multicast_calls.fetch_add(1, Ordering::Relaxed);
        }
        for target in targets.iter() {
            self.send_ipi(target);
        }
        let every_other_core = caller.is_some_and(|me| {
            me < self.cores.len()
                && !targets.contains(me)
                && targets.len() + 1 == self.cores.len()
                && targets.max().is_some_and(|max| max < self.cores.len())
        });
        if every_other_core {
            1
        } else {
            targets.len()
        }
    }

    /// Context: any, the core's own interrupt handler included; never blocks. Clears the calling
    /// core's virtual interrupt flag (on a thread that is not a core it does nothing).
    #[inline]
    fn irq_save(&self) -> IrqState {
        local_irq_save()
    }

    /// Context: any. In preemptive mode, turning interrupts back on takes an interrupt that came
    /// meanwhile, here (as `sti` does).
    #[inline]
    fn irq_restore(&self, state: IrqState) {
        local_irq_restore(state);
    }

    fn relax(&self) {
        std::hint::spin_loop();
        // Simulated cores may outnumber the host's CPUs: let the others run now and then (see
        // `yield_mask`), and keep late IPIs flowing even while every core spins.
        let spins = SPINS.with(|s| {
            let n = s.get().wrapping_add(1);
            s.set(n);
            n
        });
        if spins & 15 == 0 {
            self.deliver_due();
            if spins & self.yield_mask == 0 {
                thread::yield_now();
            }
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn flush_tlb_range(&self, _start: usize, pages: usize) {
        let core = &self.cores[self.current_cpu()];
        // Relaxed: flush counters are statistics for tests, read after the shootdown returned
        // (which synchronizes through the cpusync counts).
        core.range_flushes.fetch_add(1, Ordering::Relaxed);
        core.pages_flushed
            .fetch_add(pages as u64, Ordering::Relaxed);
    }

    fn flush_tlb_all(&self) {
        // Relaxed: see `flush_tlb_range`.
        self.cores[self.current_cpu()]
            .full_flushes
            .fetch_add(1, Ordering::Relaxed);
    }
}
