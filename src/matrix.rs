//! [`Ipiq`]: the queue matrix (one [`Fifo`] for every sender/target pair that has talked) and
//! the seed's send, process, wait and sequence operations.
//!
//! # Wake-up protocol (`npoll`)
//! Each core has one `npoll` flag. A sender publishes its message (`windex`), then (after a
//! SeqCst fence) tests the target's `npoll`: if it was clear the sender sets it and sends the IPI,
//! otherwise the IPI is *avoided*, because the target is already signalled or draining. The target
//! sets `npoll` when it starts draining, and before it stops it clears `npoll`, fences (SeqCst) and
//! scans every queue once more. Both sides run "store; SeqCst fence; load", so at least one of them
//! sees the other's store: either the target's last scan finds the message, or the sender finds
//! `npoll` clear and sends an IPI. Hence any number of senders cause at most one IPI in flight per
//! target (I3) and no message is left behind (I2). The loom model in `tests/loom.rs` checks this.
//! The target writes `npoll` only when it starts or stops: while its passes find work, and while
//! an idle loop polls through [`Ipiq::poll`], the flag stays set and senders streaming into it
//! only read a line nobody writes.
//!
//! # Context
//! Every operation disables interrupts for its duration (through the platform), so it is never
//! re-entered from an interrupt on the same core halfway through; message functions run with
//! interrupts disabled. Operations may be nested from inside message functions: a message function
//! may send, and a sender whose FIFO is full drains its own incoming queues (which may run further
//! message functions) until the target catches up (I4).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::ptr;

use hashbrown::HashMap;

use crate::cpusync::Requeued;
use crate::error::Error;
use crate::fifo::Fifo;
use crate::irq::IrqOff;
use crate::message::{IpiFn, Message};
use crate::platform::{CpuId, Platform};
use crate::stats::{Counters, Stats};
use crate::status::{CoreDiag, Waiting};
use crate::sync::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, CachePadded, Ordering, UnsafeCell,
};
use crate::tlb::TlbState;
use crate::watchdog::Patience;
use crate::CpuSet;

/// A sequence number on one sender/target FIFO, returned by a send; [`Ipiq::wait`] waits until
/// the target has returned from every message up to it. `Seq(0)` is "nothing to wait for" (the
/// sequence number of a message that already ran, such as one sent to the current core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

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

/// How a message is queued.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `send`: IPI unless avoided; drains own queues while the FIFO is over half full.
    Active,
    /// `send_passive`: no IPI until the FIFO is a quarter full; drained by the target's tick.
    Passive,
    /// `try_send`: like active, but refuses instead of draining when the FIFO is 2/3 full.
    Nowait,
    /// `try_send_lazy`: refuses as `Nowait` does; IPI only if the target is halted.
    Lazy,
}

/// What a drain does while its core is held in a cpusync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// Keep serving the queues until every cpusync holding the core has released it (the
    /// interrupt, idle and tick paths).
    ServeWhileHeld,
    /// Poll each held cpusync once and return (nested drains inside a caller's own spin loop,
    /// which must get back to what it waits for).
    PollOnce,
}

/// How a drain ends when it finds no more work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Clear `npoll`, fence, look once more: senders IPI the core again.
    Unsignal,
    /// Leave `npoll` set: the caller drains again soon ([`Ipiq::poll`]).
    StaySignalled,
}

/// cpusyncs a core can be held in at once before its requeue list allocates (nesting: a held
/// core serving a second master's cpusync holds two).
const REQUEUE_SLOTS: usize = 4;

/// A value only its own core touches, with interrupts disabled.
struct CoreLocal<T>(UnsafeCell<T>);

impl<T> CoreLocal<T> {
    /// Runs `f` on the value.
    ///
    /// # Safety
    /// The caller runs on the core that owns the value, with interrupts disabled, and `f` does not
    /// call back into ipiq (so no second `&mut` to the value exists while `f` runs).
    unsafe fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: exclusive per the function's contract.
        self.0.with_mut(|value| f(unsafe { &mut *value }))
    }
}

/// One core's state as a target (plus its counters as a sender). The fields this core writes
/// all the time (`running`, `spilled`, `counters`) sit on cache lines of their own, away from
/// what senders read on every send (`online`, `incoming`, `npoll`).
pub(crate) struct PerCpu<P: Platform> {
    /// Set by a sender that signalled this core, and by this core while it drains; cleared by this
    /// core before its final scan. See the module docs.
    npoll: CachePadded<AtomicBool>,
    /// Set by this core's idle loop just before it halts ([`Ipiq::prepare_halt`]); cleared by
    /// the first lazy sender that sees it (which then wakes the core) or by the core when it stops
    /// halting ([`Ipiq::end_halt`]). Every write is an RMW, as for `npoll`.
    pub(crate) halted: CachePadded<AtomicBool>,
    /// The FIFO from each sender, null until that sender first talks to this core. Written once
    /// (Release) by the sender, read (Acquire) by this core and the sender.
    incoming: Box<[AtomicPtr<Fifo<P>>]>,
    /// Bit map of the senders whose `incoming` entry is set, so a drain visits only live FIFOs
    /// (the seed's `gd_ipimask`). Bits are set (Release) by senders, never cleared.
    senders: Box<[AtomicU64]>,
    /// Whether the core has been brought up ([`Ipiq::cpu_online`]).
    online: AtomicBool,
    /// cpusyncs this core is held in, polled at the end of each drain (the seed's cpusync
    /// requeue FIFO). Touched only by this core.
    requeue: CoreLocal<Vec<Requeued<P>>>,
    /// Messages this core queued for a target whose FIFO was full while it ran a message
    /// function, in send order per target; pushed into the FIFO as room appears. Touched only by
    /// this core.
    spill: CoreLocal<HashMap<CpuId, VecDeque<Message<P>>>>,
    /// How many messages `spill` holds (Relaxed: written and read only by this core; other
    /// cores count spilled messages through each FIFO's `spill_seq`, see `Ipiq::outstanding`).
    spilled: CachePadded<AtomicU64>,
    /// How many message functions are running on this core's stack (nesting depth). Touched
    /// only by this core; atomic only so that the type is `Sync` without unsafe.
    pub(crate) running: CachePadded<AtomicUsize>,
    /// This core's statistics.
    counters: CachePadded<Counters>,
    /// What this core is doing, for diagnostics (`status.rs`). Written only by this core.
    pub(crate) diag: CachePadded<CoreDiag>,
    /// Deferred TLB flushes for this core and its own shootdown as a master (`tlb.rs`).
    pub(crate) tlb: TlbState,
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
    platform: P,
    cpus: Box<[PerCpu<P>]>,
    config: Config,
    /// [`Config::ipi_avoidance`], switchable. Relaxed: a policy switch orders nothing.
    ipi_avoidance: AtomicBool,
    /// [`Config::stats`], switchable. Relaxed: a policy switch orders nothing.
    stats_enabled: AtomicBool,
}

// SAFETY: every shared field is atomic; the `CoreLocal` requeue lists are touched only by their
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
        let words = ncpu.div_ceil(64);
        let cpus = (0..ncpu)
            .map(|_| PerCpu {
                npoll: CachePadded(AtomicBool::new(false)),
                halted: CachePadded(AtomicBool::new(false)),
                incoming: (0..ncpu).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
                senders: (0..words).map(|_| AtomicU64::new(0)).collect(),
                online: AtomicBool::new(false),
                // Room for a few nested rendezvous from the start: a target entering a cpusync
                // (interrupts off, possibly while another core holds the allocator's lock to
                // lead that very cpusync) then never allocates.
                requeue: CoreLocal(UnsafeCell::new(Vec::with_capacity(REQUEUE_SLOTS))),
                spill: CoreLocal(UnsafeCell::new(HashMap::new())),
                spilled: CachePadded(AtomicU64::new(0)),
                running: CachePadded(AtomicUsize::new(0)),
                counters: CachePadded(Counters::default()),
                diag: CachePadded(CoreDiag::default()),
                tlb: TlbState::new(ncpu),
            })
            .collect();
        Self {
            platform,
            cpus,
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

    // ----- sending -----------------------------------------------------------------------------

    /// Queues `func(arg0, arg1)` to run on `target` and wakes it with an IPI unless it is already
    /// signalled or draining (the seed's `lwkt_send_ipiq3`). Returns the sequence number for
    /// [`Ipiq::wait`].
    ///
    /// Context: any, interrupts on or off, also from inside a message function. Does not block
    /// except while the FIFO is over half full: then it drains the calling core's own incoming
    /// queues until the target has taken the FIFO below a quarter (so cores that all flood each
    /// other still progress, I4). A message to the calling core runs at once, in the caller (I7).
    pub fn send(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Active)
    }

    /// Queues a message without sending an IPI (the seed's `lwkt_send_ipiq_passive`): the target
    /// runs it at its next tick, IPI or drain. Once the FIFO is a quarter full the send becomes
    /// active, so a stream of passive messages cannot pile up unboundedly behind a sleeping core.
    pub fn send_passive(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Passive)
    }

    /// Like [`Ipiq::send`], but never drains: when the FIFO is at least 2/3 full it returns
    /// [`Error::WouldBlock`] and queues nothing (the seed's `lwkt_send_ipiq_nowait`).
    pub fn try_send(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Nowait)
    }

    /// Queues `messages` to `target` in order and wakes it once, after a single fence: the
    /// streaming form of [`Ipiq::send`], with one store-load barrier and at most one IPI per
    /// batch instead of per message. Returns the sequence number of the last message (waiting
    /// on it waits for the whole batch); an empty batch returns `Seq(0)` and sends nothing.
    /// Messages to the calling core run at once, in the caller (I7).
    ///
    /// Context and blocking as `send`: a batch may be longer than the FIFO; when the FIFO is
    /// over half full the target is signalled and the caller drains its own queues until there
    /// is room. Errors: [`Error::NoSuchCpu`] and [`Error::CpuOffline`] before anything is
    /// queued; [`Error::TimedOut`] if the FIFO stayed full (the messages already queued still
    /// run: the target is signalled).
    pub fn send_batch(&self, target: CpuId, messages: &[Message<P>]) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let result = if let Err(e) = self.check_cpu(me) {
            Err(e)
        } else if target == me {
            self.count(me, |c| &c.local, messages.len() as u64);
            for &message in messages {
                message.run(self, me);
            }
            Ok(Seq(0))
        } else if !self.is_online(target) {
            Err(Error::CpuOffline(target))
        } else {
            let mut result = Ok(Seq(0));
            for &message in messages {
                result = self.enqueue(me, target, message, Kind::Active, false, Patience::Bounded);
                if result.is_err() {
                    break;
                }
            }
            if !messages.is_empty() {
                self.signal(me, target);
            }
            result
        };
        self.platform.irq_restore(irq);
        result
    }

    /// Like [`Ipiq::try_send`], but wakes the target only if it is halted in its idle loop
    /// (between [`Ipiq::prepare_halt`] and [`Ipiq::end_halt`]); a target that is running or
    /// polling finds the message at its next drain (interrupt, reschedule, idle loop, tick). For
    /// work that a busy core need not be interrupted for, such as the scheduler's cross-core
    /// wake-ups: a core busy with another task picks them up at its next reschedule, as Hermit's
    /// own wake-up path does, and no IPI is spent on it. Never blocks: [`Error::WouldBlock`] at
    /// 2/3 full, nothing queued.
    pub fn try_send_lazy(
        &self,
        target: CpuId,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<Seq, Error> {
        self.send_kind(target, Message::new(func, arg0, arg1), Kind::Lazy)
    }

    /// Sends a boxed closure (a convenience over [`Ipiq::send`]; it allocates).
    pub fn send_boxed<F>(&self, target: CpuId, f: F) -> Result<Seq, Error>
    where
        F: FnOnce(&Ipiq<P>) + Send + 'static,
    {
        type Boxed<P> = Box<dyn FnOnce(&Ipiq<P>) + Send>;
        fn trampoline<P: Platform>(ipiq: &Ipiq<P>, raw: usize, _: usize) {
            // SAFETY: `raw` came from `Box::into_raw` below and is consumed exactly once: the
            // message runs once (I2), and the send that queued it succeeded.
            let f = unsafe { Box::from_raw(raw as *mut Boxed<P>) };
            f(ipiq)
        }
        let boxed: Box<Boxed<P>> = Box::new(Box::new(f));
        let raw = Box::into_raw(boxed) as usize;
        self.send(target, trampoline::<P>, raw, 0).inspect_err(|_| {
            // SAFETY: the send failed, so nothing queued the pointer: reclaim it.
            drop(unsafe { Box::from_raw(raw as *mut Boxed<P>) });
        })
    }

    /// Sends `func(arg0, arg1)` to every online core of `set` (the seed's
    /// `lwkt_send_ipiq_mask`): queues to all targets first, then signals them after a single
    /// fence, and runs the calling core's share last, if it is in the set. Offline cores are
    /// skipped. Returns how many cores got the message.
    ///
    /// Errors: [`Error::NoSuchCpu`] if the set names a core beyond the machine (nothing is sent),
    /// [`Error::EmptySet`] if it names no online core, [`Error::TimedOut`] if a FIFO stayed full
    /// (the messages already queued still run).
    pub fn send_many(
        &self,
        set: &CpuSet,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<usize, Error> {
        if let Some(max) = set.max() {
            self.check_cpu(max)?;
        }
        let message = Message::new(func, arg0, arg1);
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        if let Err(e) = self.check_cpu(me) {
            self.platform.irq_restore(irq);
            return Err(e);
        }
        let mut queued = CpuSet::new();
        let mut result = Ok(());
        let mut include_self = false;
        for target in set.iter().filter(|&t| self.is_online(t)) {
            if target == me {
                include_self = true;
                continue;
            }
            match self.enqueue(me, target, message, Kind::Active, false, Patience::Bounded) {
                Ok(_) => {
                    // Never fails: `target` came from a `CpuSet`.
                    let _ = queued.insert(target);
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.signal_all(me, &queued);
        let mut count = queued.len();
        if include_self && result.is_ok() {
            self.count(me, |c| &c.local, 1);
            message.run(self, me);
            count += 1;
        }
        self.platform.irq_restore(irq);
        result?;
        if count == 0 {
            return Err(Error::EmptySet);
        }
        Ok(count)
    }

    fn send_kind(&self, target: CpuId, message: Message<P>, kind: Kind) -> Result<Seq, Error> {
        self.send_with(target, message, kind, Patience::Bounded)
    }

    /// [`Ipiq::send`] and its siblings with a chosen patience for a full FIFO (the TLB
    /// shootdown's enter messages must never give up).
    pub(crate) fn send_with(
        &self,
        target: CpuId,
        message: Message<P>,
        kind: Kind,
        patience: Patience,
    ) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let result = if let Err(e) = self.check_cpu(me) {
            Err(e)
        } else if target == me {
            self.count(me, |c| &c.local, 1);
            message.run(self, me);
            Ok(Seq(0))
        } else if !self.is_online(target) {
            Err(Error::CpuOffline(target))
        } else {
            self.enqueue(me, target, message, kind, true, patience)
        };
        self.platform.irq_restore(irq);
        result
    }

    /// Queues `message` on the `me -> target` FIFO and, if `signal`, wakes the target.
    /// Interrupts are disabled by the caller.
    ///
    /// Inside a message function (`running > 0`) a send never blocks: if the FIFO is full the
    /// message goes to this core's spill list for `target` and the drain loop pushes it as room
    /// appears. Blocking there would pin the function on the stack while the nested drain runs
    /// further functions that block in turn: under a flood the nesting grows without bound (a
    /// kernel stack overflow) and the outermost wait can never finish. With the spill list a
    /// send nests at most one drain deep, and cores flooding each other still progress (I4).
    fn enqueue(
        &self,
        me: CpuId,
        target: CpuId,
        message: Message<P>,
        kind: Kind,
        signal: bool,
        patience: Patience,
    ) -> Result<Seq, Error> {
        let fifo = self.fifo_to(me, target);
        let capacity = fifo.capacity();
        // Relaxed: core-local.
        let nested = self.cpus[me].running.load(Ordering::Relaxed) > 0;
        if self.spill_len(me, target) > 0 {
            // Earlier messages to this target still wait in the spill list: they go first (I1).
            if matches!(kind, Kind::Nowait | Kind::Lazy) {
                self.count(me, |c| &c.would_block, 1);
                return Err(Error::WouldBlock);
            }
            if nested {
                return Ok(self.spill_push(me, target, message, signal));
            }
            let mut watchdog = self.watchdog(
                me,
                Waiting::SpillRoom,
                Some(target),
                patience,
                fifo.xindex(),
            );
            while self.flush_spill(me, target) > 0 {
                self.drain(me, Hold::PollOnce);
                watchdog.check(fifo.xindex(), || core::iter::once(target))?;
                self.platform.relax();
            }
        }
        // Refuse (nowait) at 2/3 full; otherwise drain own queues once over half full.
        let nowait = matches!(kind, Kind::Nowait | Kind::Lazy);
        let over = |used: u64| {
            if nowait {
                used * 3 >= capacity * 2
            } else {
                used * 2 >= capacity
            }
        };
        loop {
            // The bound reads only our own line; the exact count (the target's line) only when
            // the bound reaches the threshold.
            if !over(fifo.used_at_most()) || !over(fifo.used()) {
                break;
            }
            if nowait {
                self.count(me, |c| &c.would_block, 1);
                return Err(Error::WouldBlock);
            }
            self.count(me, |c| &c.fifo_full, 1);
            if nested {
                if fifo.used() < capacity {
                    break;
                }
                return Ok(self.spill_push(me, target, message, signal));
            }
            // Over half full: make sure the target is coming, then serve our own queues until
            // it has taken the FIFO below a quarter (the seed's fifo-full path). Draining here
            // is what lets two cores flooding each other both progress.
            fence(Ordering::SeqCst);
            self.signal_fenced(me, target, false);
            let mut watchdog =
                self.watchdog(me, Waiting::FifoRoom, Some(target), patience, fifo.xindex());
            while fifo.used() * 4 >= capacity {
                self.drain(me, Hold::PollOnce);
                if fifo.used() * 4 < capacity {
                    break;
                }
                watchdog.check(fifo.xindex(), || core::iter::once(target))?;
                self.platform.relax();
            }
        }
        let mut used = fifo.used_at_most();
        if kind == Kind::Passive && (used + 1) * 4 >= capacity {
            used = fifo.used();
        }
        let Some(w) = fifo.push(message) else {
            // Unreachable: only this core fills the FIFO, and it checked for room above.
            return Ok(self.spill_push(me, target, message, signal));
        };
        self.count(me, |c| &c.sent, 1);
        if kind == Kind::Passive && (used + 1) * 4 < capacity {
            self.count(me, |c| &c.passive, 1);
        } else if kind == Kind::Lazy && signal {
            self.signal_if_halted(me, target);
        } else if signal {
            self.signal(me, target);
        }
        Ok(Seq(w))
    }

    /// Messages `me` holds in its spill list for `target`.
    fn spill_len(&self, me: CpuId, target: CpuId) -> usize {
        // Relaxed: core-local; the map is looked at only when something is spilled.
        if self.cpus[me].spilled.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        // SAFETY: our own core, interrupts disabled by the caller; the closure does not call
        // into ipiq.
        unsafe {
            self.cpus[me]
                .spill
                .with(|spill| spill.get(&target).map_or(0, VecDeque::len))
        }
    }

    /// Appends `message` to `me`'s spill list for `target`; returns the sequence number it will
    /// have once pushed (the FIFO's write index plus its place in the list).
    fn spill_push(&self, me: CpuId, target: CpuId, message: Message<P>, signal: bool) -> Seq {
        // SAFETY: as in `spill_len`.
        let place = unsafe {
            self.cpus[me].spill.with(|spill| {
                let list = spill.entry(target).or_default();
                list.push_back(message);
                list.len()
            })
        };
        let spilled = &self.cpus[me].spilled;
        // Relaxed load and store: only this core writes it (see `spilled`).
        spilled.store(spilled.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.count(me, |c| &c.sent, 1);
        self.count(me, |c| &c.spilled, 1);
        if signal {
            // The FIFO is full: make sure the target is draining it.
            self.signal(me, target);
        }
        let fifo = self.fifo_to(me, target);
        let seq = fifo.windex() + place as u64;
        fifo.note_spilled(seq);
        Seq(seq)
    }

    /// Pushes what fits of `me`'s spill list for `target` into the FIFO; returns how many
    /// messages are still spilled for that target.
    fn flush_spill(&self, me: CpuId, target: CpuId) -> usize {
        let fifo = self.fifo_to(me, target);
        // SAFETY: as in `spill_len`; `Fifo::push` does not call into ipiq.
        let (pushed, left) = unsafe {
            self.cpus[me].spill.with(|spill| {
                let Some(list) = spill.get_mut(&target) else {
                    return (0, 0);
                };
                let mut pushed = 0u64;
                while let Some(&message) = list.front() {
                    if fifo.push(message).is_none() {
                        break;
                    }
                    list.pop_front();
                    pushed += 1;
                }
                let left = list.len();
                if left == 0 {
                    spill.remove(&target);
                }
                (pushed, left)
            })
        };
        if pushed > 0 {
            let spilled = &self.cpus[me].spilled;
            // Relaxed load and store: only this core writes it.
            spilled.store(spilled.load(Ordering::Relaxed) - pushed, Ordering::Relaxed);
            self.signal(me, target);
        }
        left
    }

    /// Flushes every spill list of `me`; returns the targets that still have spilled messages.
    fn flush_spills(&self, me: CpuId) -> Vec<CpuId> {
        // Relaxed: core-local.
        if self.cpus[me].spilled.load(Ordering::Relaxed) == 0 {
            return Vec::new();
        }
        // SAFETY: as in `spill_len`.
        let targets: Vec<CpuId> = unsafe {
            self.cpus[me]
                .spill
                .with(|spill| spill.keys().copied().collect())
        };
        targets
            .into_iter()
            .filter(|&t| self.flush_spill(me, t) > 0)
            .collect()
    }

    /// Marks a message function as running on `me` (called around every message).
    #[inline]
    pub(crate) fn enter_message(&self, me: CpuId) {
        // A core `new` does not serve keeps no depth (it can run only its own local messages).
        if let Some(cpu) = self.cpus.get(me) {
            // Relaxed load and store, no locked RMW: core-local nesting depth, interrupts off.
            let running = &cpu.running;
            running.store(running.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
    }

    /// The message function entered last on `me` returned.
    #[inline]
    pub(crate) fn exit_message(&self, me: CpuId) {
        if let Some(cpu) = self.cpus.get(me) {
            // Relaxed load and store: core-local nesting depth (see `enter_message`).
            let running = &cpu.running;
            running.store(running.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
        }
    }

    /// Wakes `target` after a message was published: IPI unless `npoll` says it is already
    /// signalled or draining.
    #[inline]
    fn signal(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: the store-load barrier between our `windex` store and our `npoll` load
        // (see the module docs; the target runs the mirror image).
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, false);
    }

    /// Wakes `target` after a lazy message was published, only if it is halted: the same
    /// store; SeqCst fence; load handshake as `npoll`'s, against the target's `prepare_halt`
    /// (which sets `halted`, fences, then looks at its queues), so either the target sees the
    /// message and does not halt, or we see `halted` and wake it.
    fn signal_if_halted(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: the store-load barrier between our `windex` store and our `halted` load.
        fence(Ordering::SeqCst);
        let halted = &self.cpus[target].halted;
        // Relaxed load, then swap: ordering comes from the fence above; the swap makes one
        // sender the one that wakes this halt (the seed's and Hermit's "take the halt state").
        if halted.load(Ordering::Relaxed) && halted.swap(false, Ordering::Relaxed) {
            self.signal_fenced(me, target, false);
        } else {
            self.count(me, |c| &c.lazy, 1);
        }
    }

    /// [`Ipiq::signal`] after the caller's fence. `force` sends the IPI whatever `npoll` says
    /// (watchdogs: the previous IPI may have been lost).
    fn signal_fenced(&self, me: CpuId, target: CpuId, force: bool) {
        let npoll = &self.cpus[target].npoll;
        // Relaxed load, then swap only if clear: ordering comes from the caller's SeqCst fence.
        // Reading `true` is safe to act on: whoever set it either sends an IPI after setting it or
        // is the target itself, which scans again after clearing it.
        let avoid = self.ipi_avoidance.load(Ordering::Relaxed)
            && !force
            && (npoll.load(Ordering::Relaxed) || npoll.swap(true, Ordering::Relaxed));
        if avoid {
            self.count(me, |c| &c.avoided, 1);
        } else {
            // Relaxed: as above; set (by RMW, see `drain`) so later senders skip their IPI.
            npoll.swap(true, Ordering::Relaxed);
            self.count(me, |c| &c.ipis, 1);
            self.platform.send_ipi(target);
        }
    }

    /// Queues `message` for `target` without waking it (the caller signals a batch of targets
    /// with [`Ipiq::signal_all`]). Interrupts are disabled by the caller; `target` is online.
    pub(crate) fn queue_unsignalled(
        &self,
        me: CpuId,
        target: CpuId,
        message: Message<P>,
        patience: Patience,
    ) -> Result<(), Error> {
        self.enqueue(me, target, message, Kind::Active, false, patience)
            .map(drop)
    }

    /// Wakes every core of `targets` after messages were published to them: one store-load
    /// barrier for all (see `signal`), then the `npoll` handshake for each target (as
    /// `signal_fenced`), and one [`Platform::send_ipi_many`] for the targets that need an IPI,
    /// so the platform can reach them in as few hardware writes as it can (on x86_64, one ICR
    /// write for every other core, one per x2APIC cluster otherwise). `ipis` counts those
    /// targets, `icr_writes` the writes the platform reports.
    ///
    /// Context: interrupts disabled by the caller (`send_many`, cpusync, shootdowns); thread or
    /// interrupt context, including from inside a message function; never blocks.
    pub(crate) fn signal_all(&self, me: CpuId, targets: &CpuSet) {
        if targets.is_empty() {
            return;
        }
        // SeqCst fence: as in `signal`, once for all targets.
        fence(Ordering::SeqCst);
        let mut interrupt = CpuSet::new();
        for target in targets.iter().filter(|&t| self.claim_ipi(me, t)) {
            // Never fails: `target` came from a `CpuSet`.
            let _ = interrupt.insert(target);
        }
        if interrupt.is_empty() {
            return;
        }
        self.count(me, |c| &c.ipis, interrupt.len() as u64);
        // Every `npoll` claimed above is set before the IPIs go out, as in `signal_fenced`:
        // a target that wakes early finds the flag set and clears it only after its last scan.
        let writes = self.platform.send_ipi_many(&interrupt);
        self.count(me, |c| &c.icr_writes, writes as u64);
    }

    /// The `npoll` handshake of [`Ipiq::signal_fenced`] (unforced) for one target of
    /// [`Ipiq::signal_all`], without sending: `true` if `target` needs an IPI (its `npoll` was
    /// clear, or avoidance is off), in which case `npoll` is now set and the caller sends it;
    /// `false` (counted as avoided) if it is already signalled or draining.
    ///
    /// Context: interrupts disabled, after the caller's SeqCst fence.
    fn claim_ipi(&self, me: CpuId, target: CpuId) -> bool {
        let npoll = &self.cpus[target].npoll;
        // Relaxed load, then swap only if clear: ordering comes from the caller's SeqCst fence,
        // exactly as in `signal_fenced`. Reading `true` is safe to act on: whoever set it either
        // sends an IPI after setting it or is the target itself, which scans again after
        // clearing it.
        let avoid = self.ipi_avoidance.load(Ordering::Relaxed)
            && (npoll.load(Ordering::Relaxed) || npoll.swap(true, Ordering::Relaxed));
        if avoid {
            self.count(me, |c| &c.avoided, 1);
            return false;
        }
        // Relaxed: as above; set (by RMW, see `drain`) so later senders skip their IPI.
        npoll.swap(true, Ordering::Relaxed);
        true
    }

    /// A watchdog's re-sent IPI: the previous one may have been lost, so it goes out whatever
    /// `npoll` says. Interrupts are disabled by the caller.
    pub(crate) fn resignal(&self, me: CpuId, target: CpuId) {
        // SeqCst fence: as in `signal`, between what we published and the IPI.
        fence(Ordering::SeqCst);
        self.signal_fenced(me, target, true);
    }

    /// The FIFO from `me` to `target`, allocated on first use (an idle pair costs a pointer).
    fn fifo_to(&self, me: CpuId, target: CpuId) -> &Fifo<P> {
        let slot = &self.cpus[target].incoming[me];
        // Acquire: pairs with the Release store below (by this same core earlier, or—after a
        // migration—by the task's previous core, which is still the same sender index).
        let mut fifo = slot.load(Ordering::Acquire);
        if fifo.is_null() {
            fifo = Box::into_raw(Box::new(Fifo::new(self.config.fifo_slots)));
            // Release: the FIFO's initialised contents before the pointer. Only core `me` writes
            // this slot, with interrupts disabled, so no other writer races with this store.
            slot.store(fifo, Ordering::Release);
            // Release: the pointer before the bit; the target reads the bit with Acquire.
            self.cpus[target].senders[me / 64].fetch_or(1 << (me % 64), Ordering::Release);
        }
        // SAFETY: non-null pointers in `incoming` come from `Box::into_raw` and are freed only in
        // `Drop`, which has `&mut self`.
        unsafe { &*fifo }
    }

    /// The FIFO from `sender` to `target`, if they have talked.
    fn fifo_between(&self, sender: CpuId, target: CpuId) -> Option<&Fifo<P>> {
        // Acquire: pairs with the Release in `fifo_to`.
        let fifo = self.cpus[target].incoming[sender].load(Ordering::Acquire);
        // SAFETY: see `fifo_to`.
        (!fifo.is_null()).then(|| unsafe { &*fifo })
    }

    // ----- sequence numbers and waiting --------------------------------------------------------

    /// The sequence number of the last message the calling core queued for `target` (the seed's
    /// `lwkt_seq_ipiq`).
    pub fn seq(&self, target: CpuId) -> Result<Seq, Error> {
        self.check_cpu(target)?;
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let seq = self.check_cpu(me).map(|()| {
            let queued = self.fifo_between(me, target).map_or(0, Fifo::windex);
            Seq(queued + self.spill_len(me, target) as u64)
        });
        self.platform.irq_restore(irq);
        seq
    }

    /// Waits until `target` has run the messages the calling core queued for it up to `seq`
    /// (the seed's `lwkt_wait_ipiq`, I5), draining the calling core's own queues meanwhile.
    ///
    /// What "has run" means depends on where the wait is issued:
    /// - **From thread context** (no message function on the calling core's stack), exactly:
    ///   `target` has *returned* from every message up to `seq`, even when its message functions
    ///   nest. A nested drain on the target that runs later messages while an older one is still
    ///   on its stack does not count until that older one returns too.
    /// - **From inside a message function**, the seed's meaning: `target` has started every
    ///   message up to `seq`, and each has returned unless it is still on the target's stack
    ///   beneath a nested drain (a wait, a full FIFO, a cpusync) that ran later ones. Waiting
    ///   there for the outermost function would deadlock cycles the seed completes: two message
    ///   functions on two cores, each waiting for a message it sent to the other, each run by the
    ///   other's nested drain beneath the other's waiting function, which cannot return before
    ///   its own wait does. A message function that needs an older message's function to have
    ///   *returned* must not rely on `wait` for it.
    ///
    /// A watchdog re-sends the IPI, logs a warning, and past [`Config::timeout_ns`] returns
    /// [`Error::TimedOut`] instead of hanging. A `seq` this core never issued to `target` is
    /// [`Error::InvalidSequence`]; an old one returns at once.
    ///
    /// Context: any, interrupts on or off; interrupts are disabled inside. Spins (serving the
    /// calling core's queues) until done; may be re-entered from the message functions it runs.
    pub fn wait(&self, target: CpuId, seq: Seq) -> Result<(), Error> {
        self.check_cpu(target)?;
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let result = self
            .check_cpu(me)
            .and_then(|()| self.wait_inner(me, target, seq));
        self.platform.irq_restore(irq);
        result
    }

    /// [`Ipiq::wait`] on core `me` (served, interrupts disabled by the caller).
    fn wait_inner(&self, me: CpuId, target: CpuId, seq: Seq) -> Result<(), Error> {
        if target == me || seq.0 == 0 {
            return Ok(());
        }
        let Some(fifo) = self.fifo_between(me, target) else {
            return Err(Error::InvalidSequence);
        };
        // Queued or still spilled: everything this core ever accepted for `target`.
        if seq.0 > fifo.issued() {
            return Err(Error::InvalidSequence);
        }
        // Relaxed: our own nesting depth, written only by this core (interrupts are off).
        let in_message = self.cpus[me].running.load(Ordering::Relaxed) > 0;
        let reached = || {
            if in_message {
                fifo.xindex_in_message()
            } else {
                fifo.xindex()
            }
        };
        if reached() >= seq.0 {
            return Ok(());
        }
        let mut watchdog = self.watchdog(
            me,
            Waiting::Sequence,
            Some(target),
            Patience::Bounded,
            reached(),
        );
        while reached() < seq.0 {
            self.drain(me, Hold::PollOnce);
            if reached() >= seq.0 {
                break;
            }
            watchdog.check(reached(), || core::iter::once(target))?;
            self.platform.relax();
        }
        Ok(())
    }

    /// Messages accepted (queued in a FIFO or still in a sender's spill list) whose function
    /// has not yet returned: zero once the machine is quiet, when nothing accepted was lost.
    ///
    /// Any thread may call it, a core or not; it only reads. Per FIFO it reads the done index
    /// first and the accepted count after it: both only grow and done never passes accepted, so
    /// each term is at least the FIFO's true count at either read and at most what the FIFO
    /// ever accepted. Hence the sum never exceeds the messages ever accepted, and it is zero
    /// only if every message accepted before the call began has returned.
    pub fn outstanding(&self) -> u64 {
        let mut total = 0;
        for target in 0..self.cpus.len() {
            for sender in self.senders_of(target) {
                if let Some(fifo) = self.fifo_between(sender, target) {
                    // xindex first (see `fifo.rs`): the later `issued` is never below it.
                    let done = fifo.xindex();
                    total += fifo.issued() - done;
                }
            }
        }
        total
    }

    /// Whether `sender -> target` has returned from everything up to `seq` (no waiting).
    pub fn is_done(&self, sender: CpuId, target: CpuId, seq: Seq) -> Result<bool, Error> {
        self.check_cpu(sender)?;
        self.check_cpu(target)?;
        Ok(sender == target
            || seq.0 == 0
            || self
                .fifo_between(sender, target)
                .is_some_and(|f| f.xindex() >= seq.0))
    }

    // ----- draining ------------------------------------------------------------------------------

    /// Runs every message queued for the calling core, and keeps serving its queues while it is
    /// held in a cpusync (the seed's `lwkt_process_ipiq`). Returns how many messages ran.
    ///
    /// The kernel calls this from the ipiq interrupt handler (then sends EOI), from the idle loop
    /// before halting, and at voluntary reschedule. Context: any; interrupts are disabled inside.
    /// Re-entered from a message function (through a nested send or wait), it continues with the
    /// next message, so nothing deadlocks and per-sender order holds (I1).
    pub fn process(&self) -> usize {
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        self.end_halt_on(me);
        let n = self.drain(me, Hold::ServeWhileHeld);
        self.platform.irq_restore(irq);
        n
    }

    /// [`Ipiq::process`] for a core that is about to look again soon: an idle loop polling before
    /// it halts (the seed's idle spin; Linux calls it haltpoll). It runs everything queued but
    /// leaves the core *signalled* (`npoll` set), so senders skip their IPIs while it polls and
    /// a stream of messages into a polling core costs no IPI and no write to a line senders read.
    ///
    /// Context: as `process`. Contract: a core that called `poll` must call `poll` or
    /// [`Ipiq::process`] again before it halts or turns to other work, and `process` (which clears
    /// the signal after a last look) before it halts; until then messages for it are run only by
    /// its own next drain. (A sender's `wait` watchdog forces an IPI past
    /// [`Config::resend_after_ns`] if that contract is broken.)
    pub fn poll(&self) -> usize {
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let n = self.drain_as(me, Hold::ServeWhileHeld, Exit::StaySignalled);
        self.platform.irq_restore(irq);
        n
    }

    /// The idle loop's last step before it halts (after [`Ipiq::process`]; interrupts disabled inside):
    /// marks the core halted for lazy senders ([`Ipiq::try_send_lazy`]), fences (SeqCst), and
    /// looks at its queues once more. Returns whether the core may halt; `false` means a message
    /// arrived (the mark is taken back): drain again instead. After the halt, or when the loop
    /// turns to a task instead, it calls [`Ipiq::end_halt`].
    pub fn prepare_halt(&self) -> bool {
        // Interrupts off inside, whatever the caller promised: an interrupt between marking the
        // halt window and setting `halted` would end the window (`interrupt_entry`) and leave
        // `halted` set on a running core, whose TLB flushes shootdowns would then defer.
        let _irq = IrqOff::new(&self.platform);
        let me = self.platform.current_cpu();
        let Some(cpu) = self.cpus.get(me) else {
            // A core `new` does not serve: nothing can arrive for it.
            return true;
        };
        let halted = &cpu.halted;
        cpu.diag.halting(true);
        // Relaxed RMW, then the SeqCst fence: the target's side of the handshake in
        // `signal_if_halted` (every write to `halted` is an RMW, as for `npoll`).
        halted.swap(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.has_incoming(me) {
            // Not halting after all: end the halt window as a wake-up would (clearing `halted`
            // by RMW, and doing a TLB flush a shootdown deferred meanwhile).
            self.end_halt_on(me);
            return false;
        }
        true
    }

    /// The core stopped halting (or decided not to halt after [`Ipiq::prepare_halt`]): lazy
    /// senders stop waking it, and a TLB flush that a shootdown deferred while it was halted is
    /// done now, before the core can touch memory through a stale translation (see `tlb.rs`).
    /// Context: the core's own, any time; interrupts are disabled inside; one load when the
    /// core is not in a halt.
    pub fn end_halt(&self) {
        let _irq = IrqOff::new(&self.platform);
        self.end_halt_on(self.platform.current_cpu());
    }

    /// The first thing an interrupt handler that can run while the core halts does (ipiq's
    /// vector, the tick, the scheduler's timer, device interrupts): if the interrupt ended a
    /// halt, the halt ends here ([`Ipiq::end_halt`]), so a deferred TLB flush is done before the
    /// handler runs anything that may touch memory. [`Ipiq::process`] and [`Ipiq::tick`] call it
    /// themselves. Context: interrupt handlers, interrupts disabled; one load when not halted.
    #[inline]
    pub fn interrupt_entry(&self) {
        let _irq = IrqOff::new(&self.platform);
        self.end_halt_on(self.platform.current_cpu());
    }

    /// `end_halt` on core `me`, interrupts disabled. A core `new` does not serve: nothing.
    fn end_halt_on(&self, me: CpuId) {
        let Some(cpu) = self.cpus.get(me) else {
            return;
        };
        if !cpu.diag.is_halting() {
            return;
        }
        cpu.diag.halting(false);
        // Relaxed RMW, always (a lazy sender may have cleared the flag already: our own write is
        // what the handshake needs), then the SeqCst fence: our side of the deferral handshake
        // against a shootdown's "bump the deferral count; fence; load `halted`" (`tlb.rs`).
        cpu.halted.swap(false, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.honour_deferred_flush(me);
    }

    /// The timer-tick hook: drains everything, passive messages included, and counts it.
    pub fn tick(&self) -> usize {
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        self.end_halt_on(me);
        self.count(me, |c| &c.ticks, 1);
        let n = self.drain(me, Hold::ServeWhileHeld);
        self.count(me, |c| &c.tick_drained, n as u64);
        self.platform.irq_restore(irq);
        n
    }

    /// Whether anything waits for the calling core: a message in one of its queues, a cpusync
    /// it is held in, or a spilled message of its own (for the idle loop's last check before
    /// halting).
    ///
    /// Context: any; interrupts are disabled inside, so the answer is about the core it was
    /// asked on (the caller keeps them disabled if it must act on that answer before a message
    /// can arrive: the idle loop calls it with interrupts off). Does not block; re-entrant.
    pub fn pending(&self) -> bool {
        let irq = self.platform.irq_save();
        let me = self.platform.current_cpu();
        let pending = self.cpus.get(me).is_some_and(|cpu| {
            self.has_incoming(me)
                // SAFETY: our own core (interrupts are disabled above, so neither a migration nor
                // an interrupt handler's ipiq call can come between), and the closure does not
                // call back into ipiq.
                || unsafe { cpu.requeue.with(|q| !q.is_empty()) }
                // Relaxed: written only by this core.
                || cpu.spilled.load(Ordering::Relaxed) > 0
        });
        self.platform.irq_restore(irq);
        pending
    }

    fn senders_of(&self, me: CpuId) -> impl Iterator<Item = CpuId> + '_ {
        self.cpus[me]
            .senders
            .iter()
            .enumerate()
            .flat_map(|(i, word)| {
                // Acquire: pairs with the Release `fetch_or` in `fifo_to`.
                let mut bits = word.load(Ordering::Acquire);
                core::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(i * 64 + bit)
                })
            })
    }

    /// Drains the calling core `me` (interrupts disabled), ending by clearing `npoll` (see
    /// [`Ipiq::drain_as`]).
    pub(crate) fn drain(&self, me: CpuId, hold: Hold) -> usize {
        self.drain_as(me, hold, Exit::Unsignal)
    }

    /// The drain loop. `npoll` is set on entry and stays set for as long as passes find work, so
    /// senders streaming into a busy core read a flag nobody writes and skip their IPIs without
    /// touching its cache line. Only when a pass ran nothing does the core stop: with
    /// [`Exit::Unsignal`] it clears `npoll`, fences (SeqCst) and looks at its queues once more
    /// (the module docs' handshake), going round again if anything arrived; with
    /// [`Exit::StaySignalled`] it returns with `npoll` still set: the caller promises to drain
    /// again soon (see [`Ipiq::poll`]).
    ///
    /// Context: core `me` itself, interrupts disabled; re-entered from the message functions it
    /// runs (they may send, wait or drain), which then continue with the next message. A core
    /// `new` does not serve has no queues: 0.
    fn drain_as(&self, me: CpuId, hold: Hold, exit: Exit) -> usize {
        let Some(cpu) = self.cpus.get(me) else {
            return 0;
        };
        let draining = cpu.diag.draining();
        cpu.diag.polling(exit == Exit::StaySignalled);
        // Relaxed: tells senders we are draining so they may skip the IPI; the exit protocol
        // below (clear, SeqCst fence, look again) is what guarantees no message is missed. Every
        // write to `npoll` is a read-modify-write, so all of them form one chain that each reads
        // the last: a clear can never be ordered before a sender's set that it did not see.
        // Only the loaded-false case writes: a core that stayed signalled (`poll`) and drains
        // again does not dirty the line its senders read.
        if !cpu.npoll.load(Ordering::Relaxed) {
            cpu.npoll.swap(true, Ordering::Relaxed);
        }
        let mut total = 0;
        let mut spill_watchdog = None;
        let mut hold_watchdog = None;
        loop {
            let mut ran = 0;
            for sender in self.senders_of(me) {
                if let Some(fifo) = self.fifo_between(sender, me) {
                    while let Some(taken) = fifo.take() {
                        taken.message.run(self, me);
                        fifo.finish(taken);
                        ran += 1;
                    }
                }
            }
            let held = self.poll_requeued(me);
            let spilling = self.flush_spills(me);
            total += ran;
            if ran > 0 {
                cpu.diag.progressed(self.platform.now_ns());
                // Still working; `npoll` is still set unless a nested drain (inside a message
                // function) cleared it on its way out, which costs senders an IPI, never a message:
                // the exit below runs the handshake either way.
                continue;
            }
            if hold == Hold::ServeWhileHeld && held {
                // Held by a master that has not released us yet. Masters run with interrupts
                // off from start to finish (see `cpusync.rs`), so this is short unless a master
                // is stuck: then this core's own watchdog reports it (it never leaves early,
                // which would break the rendezvous its master relies on).
                let holds = cpu.diag.holds();
                let watchdog = hold_watchdog.get_or_insert_with(|| {
                    self.watchdog(me, Waiting::Release, None, Patience::Unbounded, holds)
                });
                let master = cpu.diag.last_master();
                // Unbounded: never an error.
                let _ = watchdog.check(holds, || master.into_iter());
                self.platform.relax();
                continue;
            }
            if hold == Hold::ServeWhileHeld && !spilling.is_empty() {
                // Our spilled messages wait for room in their targets' FIFOs: keep serving our
                // own queues (the targets may be waiting on us) until they are in, or until the
                // watchdog says a target is not draining (then the next drain or tick retries).
                let spilled = cpu.spilled.load(Ordering::Relaxed);
                let watchdog = spill_watchdog.get_or_insert_with(|| {
                    self.watchdog(me, Waiting::SpillRoom, None, Patience::Bounded, spilled)
                });
                if watchdog.check(spilled, || spilling.iter().copied()).is_ok() {
                    self.platform.relax();
                    continue;
                }
            }
            if exit == Exit::StaySignalled {
                break;
            }
            // Relaxed RMW, then the SeqCst fence: our store-load barrier (module docs). Then one
            // more look; a message found there is run by another pass, signalled again.
            cpu.npoll.swap(false, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if self.has_incoming(me) {
                // Relaxed RMW: back to draining, as on entry.
                cpu.npoll.swap(true, Ordering::Relaxed);
                continue;
            }
            break;
        }
        drop((spill_watchdog, hold_watchdog));
        cpu.diag.done_draining(draining);
        self.count(me, |c| &c.processed, total as u64);
        total
    }

    /// Whether any FIFO into `me` holds a published message not yet taken.
    fn has_incoming(&self, me: CpuId) -> bool {
        self.senders_of(me)
            .any(|s| self.fifo_between(s, me).is_some_and(Fifo::has_pending))
    }

    /// Polls the cpusyncs `me` is held in; returns whether any still holds it.
    ///
    /// Allocation-free: a held target calls this on every pass of its hold loop, with interrupts
    /// disabled. Allocating there (a fresh list per pass) made every held target take the kernel
    /// allocator's lock several times per pass: with a few held targets the passes slowed down
    /// some fifty-fold under QEMU, and a target still entering (whose `requeue` push allocated)
    /// or a master allocating its next rendezvous queued behind them for milliseconds. The list
    /// is taken out while its entries are polled (a poll runs finish work, which may call into
    /// ipiq), filtered in place and put back with its capacity, so the next `requeue` push does
    /// not allocate either.
    fn poll_requeued(&self, me: CpuId) -> bool {
        let requeue = &self.cpus[me].requeue;
        // SAFETY: our own core, interrupts disabled; the closure does not call into ipiq.
        let mut list = unsafe { requeue.with(core::mem::take) };
        if !list.is_empty() {
            list.retain(|entry| !entry.poll(self));
        }
        let held = !list.is_empty();
        // SAFETY: as above. Entries requeued by the polls themselves (none today) are kept, after
        // the older ones; otherwise the list goes back as it is, capacity and all (the empty
        // list `take` left behind never allocated).
        unsafe {
            requeue.with(|q| {
                if q.is_empty() {
                    core::mem::swap(q, &mut list);
                } else {
                    let newer = core::mem::replace(q, list);
                    q.extend(newer);
                }
            })
        };
        held
    }

    /// Holds `me` in a cpusync (called by the cpusync's remote entry on the target).
    pub(crate) fn requeue(&self, me: CpuId, entry: Requeued<P>) {
        // SAFETY: called on core `me` from a message function (interrupts disabled); the closure
        // does not call into ipiq.
        unsafe { self.cpus[me].requeue.with(|q| q.push(entry)) };
    }

    // ----- helpers ---------------------------------------------------------------------------------

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
        for cpu in self.cpus.iter() {
            for slot in cpu.incoming.iter() {
                let fifo = slot.load(Ordering::Relaxed);
                if !fifo.is_null() {
                    // SAFETY: allocated by `Box::into_raw` in `fifo_to`; `&mut self` means no core
                    // uses it any more.
                    drop(unsafe { Box::from_raw(fifo) });
                }
            }
        }
    }
}
