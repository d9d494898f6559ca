//! [`Ipiq`]: the queue matrix of one machine (one [`Fifo`] for every sender/target pair that has
//! talked, allocated on first use), its settings ([`Config`]), which cores are online, and the
//! lookups every other part uses.
//!
//! The operations live with their concept, each in an `impl Ipiq` block of its own file:
//! `send.rs` and `spill.rs` (queueing), `wakeup.rs` (the `npoll` and `halted` handshakes),
//! `drain.rs` and `hold.rs` (running queued messages), `wait.rs` (sequence numbers),
//! `cpusync.rs` (rendezvous), `tlb.rs` (shootdowns), `watchdog.rs` and `status.rs` (stalls).
//! Per-core state is in `percpu.rs`.
//!
//! # Context
//! Every operation disables interrupts for its duration (through the platform), so it is never
//! re-entered from an interrupt on the same core halfway through; message functions run with
//! interrupts disabled. Operations may be nested from inside message functions: a message function
//! may send, and a sender whose FIFO is full drains its own incoming queues (which may run further
//! message functions) until the target catches up (I4).

use alloc::boxed::Box;
use core::ptr;

use crate::fifo::{Fifo, FifoBox};
use crate::percpu::PerCpu;
use crate::platform::{CpuId, Platform};
use crate::stats::Counters;
use crate::status::CoreDiag;
use crate::sync::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use crate::Error;
use crate::{CpuSet, Stats};

/// Settings fixed when the [`Ipiq`] is built (two of them can be switched later).
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Slots per sender/target FIFO, a power of two, at least 2 (the seed's `MAXCPUFIFO`, 256).
    pub fifo_slots: usize,
    /// Skip the IPI when the target is already signalled or draining (the seed's
    /// `ipiq_optimized`). Can be switched with [`Ipiq::set_ipi_avoidance`].
    pub ipi_avoidance: bool,
    /// Keep per-core statistics. Can be switched with [`Ipiq::set_stats`].
    pub stats: bool,
    /// Watchdogs re-send the IPI after this long without progress (nanoseconds).
    pub resend_after_ns: u64,
    /// Watchdogs log a warning after this long without progress.
    pub warn_after_ns: u64,
    /// Watchdogs give up with [`Error::TimedOut`] after this long without progress (waits,
    /// sends and the general cpusync: [`crate::Patience::Bounded`]).
    pub timeout_ns: u64,
    /// Waits that must not give up ([`crate::Patience::Unbounded`]: TLB shootdowns, held cpusync
    /// targets) panic after this long without progress, having logged every core's status;
    /// `None` (the default) waits for ever, warning each time the stall doubles.
    pub stall_panic_ns: Option<u64>,
    /// TLB shootdowns of more pages than this flush everything instead.
    pub shootdown_cutoff_pages: usize,
}

impl Config {
    /// The defaults, as a constant (for `static` and `const` settings such as a kernel's).
    pub const DEFAULT: Config = Config {
        fifo_slots: 256,
        ipi_avoidance: true,
        stats: true,
        resend_after_ns: 10_000_000,
        warn_after_ns: 1_000_000_000,
        timeout_ns: 10_000_000_000,
        stall_panic_ns: None,
        shootdown_cutoff_pages: 32,
    };
}

impl Default for Config {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The inter-processor message queues of one machine.
///
/// ```
/// # #[cfg(feature = "std")] {
/// use ipiq::host::{HostConfig, HostMachine};
/// use ipiq::{Ipiq, host::HostPlatform};
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// static HITS: AtomicUsize = AtomicUsize::new(0);
/// fn hit(_: &Ipiq<HostPlatform>, n: usize, _: usize) {
///     HITS.fetch_add(n, Ordering::Relaxed);
/// }
///
/// let machine = HostMachine::start(HostConfig::cpus(2));
/// machine.run_on(0, |core| {
///     let ipiq = core.ipiq();
///     let seq = ipiq.send(1, hit, 5, 0).unwrap();
///     ipiq.wait(1, seq).unwrap();
/// }).unwrap();
/// assert_eq!(HITS.load(Ordering::Relaxed), 5);
/// machine.shutdown();
/// # }
/// ```
pub struct Ipiq<P: Platform> {
    pub(crate) platform: P,
    /// Each core's state, indexed by `CpuId`.
    pub(crate) cpus: Box<[PerCpu<P>]>,
    /// The FIFO from each sender into each target, null until that sender first talks to that
    /// target: row `target`, column `sender` ([`Ipiq::incoming`]). One allocation for all cores
    /// (a row per core would be one long-lived allocation each). Written once (Release) by the
    /// sender, read (Acquire) by the target and the sender.
    incoming: Box<[AtomicPtr<Fifo<P>>]>,
    /// Words of each core's `senders` map in use: enough for `cpus`.
    sender_words: usize,
    pub(crate) config: Config,
    /// [`Config::ipi_avoidance`], switchable. Relaxed: a policy switch orders nothing.
    pub(crate) ipi_avoidance: AtomicBool,
    /// [`Config::stats`], switchable. Relaxed: a policy switch orders nothing.
    stats_enabled: AtomicBool,
}

// SAFETY: every shared field is atomic; the `CoreLocal` hold and spill lists are touched only by their
// own core with interrupts disabled (see `CoreLocal::with`), and FIFO slots are handed over by
// the protocol in `fifo.rs`.
unsafe impl<P: Platform> Sync for Ipiq<P> {}
// SAFETY: as above; nothing refers to the creating thread.
unsafe impl<P: Platform> Send for Ipiq<P> {}

impl<P: Platform> Ipiq<P> {
    /// Builds the queues for `platform.cpu_count()` cores, none online yet except through
    /// [`Ipiq::cpu_online`]. A `fifo_slots` that is not a power of two is rounded up (minimum 2).
    ///
    /// At most [`CpuSet::CAPACITY`] cores are served: a platform with more logs an error and
    /// the queues serve cores `0..CpuSet::CAPACITY` ([`Ipiq::cpu_count`] says how many). The
    /// others are [`Error::NoSuchCpu`] as targets, and an operation called *on* one of them
    /// does nothing: sends, `seq`, `wait` and cpusyncs return `NoSuchCpu(that core)`, drains
    /// run nothing, [`Ipiq::pending`] is `false`.
    pub fn new(platform: P, config: Config) -> Self {
        let wanted = platform.cpu_count().max(1);
        let ncpu = wanted.min(CpuSet::CAPACITY);
        if ncpu < wanted {
            log::error!(
                "ipiq: the platform has {wanted} cores, ipiq serves {ncpu} (CpuSet::CAPACITY); \
                 cores {ncpu}.. cannot send or be sent to"
            );
        }
        let config = Config {
            fifo_slots: config.fifo_slots.clamp(2, 1 << 20).next_power_of_two(),
            ..config
        };
        let cpus = (0..ncpu).map(|_| PerCpu::new(ncpu)).collect();
        Self {
            platform,
            cpus,
            incoming: (0..ncpu * ncpu)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            sender_words: ncpu.div_ceil(64),
            ipi_avoidance: AtomicBool::new(config.ipi_avoidance),
            stats_enabled: AtomicBool::new(config.stats),
            config,
        }
    }

    /// The platform this instance runs on.
    #[inline]
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The settings in force.
    pub fn config(&self) -> Config {
        Config {
            ipi_avoidance: self.ipi_avoidance.load(Ordering::Relaxed),
            stats: self.stats_enabled.load(Ordering::Relaxed),
            ..self.config
        }
    }

    /// How many cores the queues serve.
    #[inline]
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// The calling core, as the platform numbers it (at or past [`Ipiq::cpu_count`] only on a
    /// platform with more cores than [`CpuSet::CAPACITY`], see [`Ipiq::new`]).
    #[inline]
    pub fn current_cpu(&self) -> CpuId {
        self.platform.current_cpu()
    }

    /// Marks `cpu` as brought up: it may now be sent to. The kernel calls this from the core's
    /// bring-up path once it can take the ipiq interrupt.
    pub fn cpu_online(&self, cpu: CpuId) -> Result<(), Error> {
        self.check_cpu(cpu)?;
        // Release: whatever the core set up before going online is visible to senders that see it
        // online (Acquire in `is_online`).
        self.cpus[cpu].online.store(true, Ordering::Release);
        Ok(())
    }

    /// Marks `cpu` as stopped: multicasts and cpusyncs skip it, unicasts are refused. Messages
    /// already queued stay queued and run if the core drains again.
    pub fn cpu_offline(&self, cpu: CpuId) -> Result<(), Error> {
        self.check_cpu(cpu)?;
        // Release: pairs with the Acquire in `is_online` (policy only).
        self.cpus[cpu].online.store(false, Ordering::Release);
        Ok(())
    }

    /// Whether `cpu` exists and is online.
    pub fn is_online(&self, cpu: CpuId) -> bool {
        // Acquire: pairs with the Release in `cpu_online`.
        self.cpus
            .get(cpu)
            .is_some_and(|c| c.online.load(Ordering::Acquire))
    }

    /// The online cores.
    pub fn online_set(&self) -> CpuSet {
        let mut set = CpuSet::new();
        for cpu in (0..self.cpu_count()).filter(|&c| self.is_online(c)) {
            // Never fails: `new` serves at most `CpuSet::CAPACITY` cores.
            let _ = set.insert(cpu);
        }
        set
    }

    /// Turns IPI avoidance on or off (the seed's `ipiq_optimized`). With it off every send of an
    /// active message sends an IPI.
    pub fn set_ipi_avoidance(&self, on: bool) {
        // Relaxed: a policy switch; it orders no data.
        self.ipi_avoidance.store(on, Ordering::Relaxed);
    }

    /// Turns statistics on or off.
    pub fn set_stats(&self, on: bool) {
        // Relaxed: a policy switch; it orders no data.
        self.stats_enabled.store(on, Ordering::Relaxed);
    }

    /// A copy of `cpu`'s statistics.
    pub fn stats(&self, cpu: CpuId) -> Result<Stats, Error> {
        self.check_cpu(cpu)?;
        Ok(self.cpus[cpu].counters.snapshot())
    }

    /// The sum of every core's statistics.
    pub fn total_stats(&self) -> Stats {
        let mut total = Stats::default();
        for cpu in self.cpus.iter() {
            total += cpu.counters.snapshot();
        }
        total
    }

    /// Zeroes every core's statistics (advisory: counts racing with it may survive).
    pub fn reset_stats(&self) {
        for cpu in self.cpus.iter() {
            cpu.counters.reset();
        }
    }

    /// The entry for the FIFO from `sender` into `target` (both below `cpu_count`).
    #[inline]
    fn incoming(&self, sender: CpuId, target: CpuId) -> &AtomicPtr<Fifo<P>> {
        &self.incoming[target * self.cpus.len() + sender]
    }

    /// The FIFO from `me` to `target`, allocated on first use (an idle pair costs a pointer).
    #[inline]
    pub(crate) fn fifo_to(&self, me: CpuId, target: CpuId) -> &Fifo<P> {
        // Acquire: pairs with the Release store in `new_fifo` (by this same core earlier,
        // or—after a migration—by the task's previous core, which is still the same sender
        // index).
        let mut fifo = self.incoming(me, target).load(Ordering::Acquire);
        if fifo.is_null() {
            fifo = self.new_fifo(me, target);
        }
        // SAFETY: non-null pointers in `incoming` come from `FifoBox::into_raw` and are freed
        // only in `Drop`, which has `&mut self`.
        unsafe { &*fifo }
    }

    /// `fifo_to`'s first use of a pair: allocates the FIFO (one block: `fifo.rs`) and publishes
    /// it. Out of line: once per pair.
    #[cold]
    #[inline(never)]
    fn new_fifo(&self, me: CpuId, target: CpuId) -> *mut Fifo<P> {
        let fifo = FifoBox::new(self.config.fifo_slots).into_raw();
        // Release: the FIFO's initialised contents before the pointer. Only core `me` writes
        // this slot, with interrupts disabled, so no other writer races with this store.
        self.incoming(me, target).store(fifo, Ordering::Release);
        // Release: the pointer before the bit; the target reads the bit with Acquire.
        self.cpus[target].senders[me / 64].fetch_or(1 << (me % 64), Ordering::Release);
        fifo
    }

    /// The FIFO from `sender` to `target`, if they have talked.
    pub(crate) fn fifo_between(&self, sender: CpuId, target: CpuId) -> Option<&Fifo<P>> {
        // Acquire: pairs with the Release in `fifo_to`.
        let fifo = self.incoming(sender, target).load(Ordering::Acquire);
        // SAFETY: see `fifo_to`.
        (!fifo.is_null()).then(|| unsafe { &*fifo })
    }

    /// Calls `f` with every FIFO into `me` (sender order), until `f` returns `true`; returns
    /// whether one did.
    ///
    /// Every drain pass, every empty poll and every spin of a waiter walks these, so it is one
    /// loop over the sender bits and `me`'s row of pointers: as an iterator chain with a
    /// bounds-checked lookup of `me` per sender, a look at one FIFO took four times the
    /// instructions on the host. `f` may run message functions that drain again (a nested walk
    /// reads the same bits). Context: the walk only reads, so any thread may make it
    /// (`outstanding` does); taking from the FIFOs in `f` is for core `me` (their target), with
    /// interrupts disabled.
    #[inline]
    pub(crate) fn any_incoming(&self, me: CpuId, mut f: impl FnMut(&Fifo<P>) -> bool) -> bool {
        let cpu = &self.cpus[me];
        let row = me * self.cpus.len();
        // The words in use as one slice (`new` never makes more than the inline words hold; a
        // longer count would read none rather than panic): the loop then keeps fewer counters
        // than `take` beside `enumerate` did, each one kept on the stack across `f`'s calls.
        for (w, word) in cpu
            .senders
            .get(..self.sender_words)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            // Acquire: pairs with the Release `fetch_or` in `new_fifo`, so the pointer stored
            // before the bit is seen below.
            let mut bits = word.load(Ordering::Acquire);
            while bits != 0 {
                let sender = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                // Acquire: as in `fifo_between`.
                let fifo = self.incoming[row + sender].load(Ordering::Acquire);
                // SAFETY: see `fifo_to` (a set bit follows a non-null pointer; checked anyway).
                if !fifo.is_null() && f(unsafe { &*fifo }) {
                    return true;
                }
            }
        }
        false
    }

    /// Whether any FIFO into `me` holds a published message not yet taken. Context: core `me`,
    /// interrupts disabled.
    #[inline]
    pub(crate) fn has_incoming(&self, me: CpuId) -> bool {
        self.any_incoming(me, Fifo::has_pending)
    }

    /// Core `cpu`'s state, if it exists.
    #[inline]
    pub(crate) fn per_cpu(&self, cpu: CpuId) -> Option<&PerCpu<P>> {
        self.cpus.get(cpu)
    }

    /// Core `me`'s diagnostic words (`me` must be a valid core: the caller's own).
    #[inline]
    pub(crate) fn diag(&self, me: CpuId) -> &CoreDiag {
        &self.cpus[me].diag
    }

    #[inline]
    pub(crate) fn check_cpu(&self, cpu: CpuId) -> Result<(), Error> {
        if cpu < self.cpus.len() {
            Ok(())
        } else {
            Err(Error::NoSuchCpu(cpu))
        }
    }

    /// Adds `n` to one of `me`'s counters, if statistics are on.
    #[inline]
    pub(crate) fn count(&self, me: CpuId, counter: impl FnOnce(&Counters) -> &AtomicU64, n: u64) {
        // Relaxed: a policy switch.
        if self.stats_enabled.load(Ordering::Relaxed) {
            // A core `new` does not serve has no counters.
            if let Some(cpu) = self.cpus.get(me) {
                Counters::add(counter(&cpu.counters), n);
            }
        }
    }
}

impl<P: Platform> Drop for Ipiq<P> {
    fn drop(&mut self) {
        for slot in self.incoming.iter() {
            let fifo = slot.load(Ordering::Relaxed);
            if !fifo.is_null() {
                // SAFETY: from `FifoBox::into_raw` in `new_fifo`, taken back once (this drop);
                // `&mut self` means no core uses it any more.
                drop(unsafe { FifoBox::from_raw(fifo) });
            }
        }
    }
}
