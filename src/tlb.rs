//! TLB shootdown: after a present mapping changed or went away, make every other online core
//! drop its stale translation before the caller goes on (and, say, frees the frame).
//!
//! Ranged `invlpg` up to [`crate::Config::shootdown_cutoff_pages`], beyond that a full flush that
//! also drops global entries.
//!
//! # Acknowledged, not held
//! A shootdown is not a rendezvous: no target waits for any other. The master writes what to
//! flush into its own per-core slot, queues one flush message to each target that may use the
//! translation (one store-load barrier for all, then at most one IPI each), flushes its own TLB
//! while theirs run, and returns once each has acknowledged. A target flushes, bumps the
//! master's acknowledgement count (Release) and goes back to what it was doing; a slow target
//! delays only the master, never the other targets. The slot is reused by the master's next
//! shootdown (it returns only after every acknowledgement is in), so nothing is allocated.
//!
//! # Halted cores are not interrupted
//! A core halted in its idle loop runs nothing, so it cannot use a translation until it wakes.
//! The master bumps such a core's *deferral count* instead of interrupting it, and the core
//! does a full flush when it wakes, before it runs anything that may touch memory:
//! [`Ipiq::end_halt`] (the idle loop, before it turns to a task) and
//! [`Ipiq::interrupt_entry`] (first thing in every interrupt handler that can end a halt;
//! [`Ipiq::process`] and [`Ipiq::tick`] call it too). The decision is the store-fence-load
//! handshake of the wake-up protocol: the master bumps the count (RMW), fences (SeqCst) and
//! looks at `halted`; the waking core clears `halted` (RMW), fences and reads the count. Either
//! the master sees the core awake and interrupts it, or the core sees the bump and flushes.
//! The loom model `a_shootdown_never_leaves_a_halted_core_with_a_stale_translation` checks it,
//! and fails when either fence is removed. A core polling in its idle loop is not halted: it
//! gets the message (without an IPI, since it is signalled) and acknowledges at once.
//!
//! A shootdown nested inside a master's own wait (a message function it ran while waiting for
//! acknowledgements, whose slot is then busy) falls back to a rendezvous whose targets flush as
//! they enter.
//!
//! # Policy: a shootdown never gives up
//! A shootdown that returned while some online core had not flushed would let the caller free
//! and reuse a frame that core may still reach through its stale translation: the very
//! use-after-free the shootdown exists to prevent. So its waits are [`Patience::Unbounded`]:
//! a slow core is waited for as long as it takes, its IPI re-sent every
//! [`crate::Config::resend_after_ns`] without progress, a warning naming the cores that have not
//! flushed (with every core's [`crate::CoreStatus`]) logged past [`crate::Config::warn_after_ns`]
//! and again each time the stall doubles, and, if [`crate::Config::stall_panic_ns`] is set, a
//! panic with that diagnosis past it (the kernel sets one: a crash with a report beats a silent
//! hang). The only errors are bad arguments, checked before anything is sent. Interrupts stay
//! off on the caller for the whole shootdown.
//!
//! [`Ipiq::shootdown_on`] runs the same shootdown on chosen cores, ranged or forced full and
//! interrupting halted cores too, for measuring the flush path (the benchmark probe in
//! `hermit-app/kernel/patches/`).

use crate::cpusync::CoreBits;
use crate::cpusync::SyncWork;
use crate::irq::{IrqOff, IrqsOff};
use crate::matrix::Ipiq;
use crate::message::Message;
use crate::platform::CpuId;
use crate::platform::Platform;
use crate::status::Waiting;
use crate::sync::{fence, AtomicBool, AtomicU64, AtomicUsize, CachePadded, Ordering};
use crate::watchdog::Patience;
use crate::CpuSet;
use crate::Error;

/// `pages` value meaning "flush everything".
const FULL: usize = usize::MAX;

/// The target side: flush `pages` pages from `start`, or everything.
fn flush<P: Platform>(ipiq: &Ipiq<P>, start: usize, pages: usize) {
    if pages == FULL {
        ipiq.platform().flush_tlb_all();
    } else {
        ipiq.platform().flush_tlb_range(start, pages);
    }
}

/// What one shootdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shootdown {
    /// Other cores that were interrupted, flushed and acknowledged.
    pub targets: usize,
    /// Other cores that were halted: not interrupted, they flush everything when they wake.
    pub deferred: usize,
    /// Whether it flushed everything (more pages than the cutoff) instead of a range.
    pub full: bool,
}

impl<P: Platform> Ipiq<P> {
    /// Invalidates `pages` 4 KiB pages from `start` (page-aligned down) on every online core,
    /// and returns once all of them have done so. `pages == 0` does nothing.
    ///
    /// Context: call after the page-table change, not from a message function; interrupts are
    /// disabled inside for the whole call. Never returns before every online core has flushed
    /// (module docs: it waits without bound, or panics past [`crate::Config::stall_panic_ns`]).
    /// Errors: [`Error::CpuOffline`] only if a core went offline during the call (it cannot use
    /// the translation while offline).
    pub fn shootdown(&self, start: usize, pages: usize) -> Result<Shootdown, Error> {
        if pages == 0 {
            return Ok(Shootdown {
                targets: 0,
                deferred: 0,
                full: false,
            });
        }
        let full = pages > self.config().shootdown_cutoff_pages;
        let start = start & !0xfff;
        let pages_arg = if full { FULL } else { pages };
        self.shootdown_inner(None, start, pages_arg, pages, Halted::Defer)
    }

    /// Flushes every TLB entry, global ones included, on every online core, and returns once all
    /// have done so.
    pub fn shootdown_all(&self) -> Result<Shootdown, Error> {
        self.shootdown_inner(None, 0, FULL, 0, Halted::Defer)
    }

    /// A shootdown on chosen cores, ranged or forced full: for measurements (ranged against
    /// full, over a given number of cores), not for keeping TLBs coherent, which needs every
    /// core ([`Ipiq::shootdown`]).
    ///
    /// Invalidates `pages` pages from `start` (page-aligned down) on the online cores of
    /// `targets` (the caller is skipped, and flushes locally) and returns once they have. With
    /// `force_full` every core involved flushes everything instead (the path
    /// [`Ipiq::shootdown`] takes past [`crate::Config::shootdown_cutoff_pages`]); without it a
    /// count past the cutoff is also full, as there. `pages == 0` without `force_full` does
    /// nothing; an empty `targets` flushes only the caller.
    ///
    /// Errors: [`Error::NoSuchCpu`] if `targets` names a core past the core count (nothing
    /// flushed); otherwise as [`Ipiq::shootdown`], whose never-give-up policy it shares.
    pub fn shootdown_on(
        &self,
        targets: &crate::CpuSet,
        start: usize,
        pages: usize,
        force_full: bool,
    ) -> Result<Shootdown, Error> {
        if let Some(max) = targets.max() {
            self.check_cpu(max)?;
        }
        if pages == 0 && !force_full {
            return Ok(Shootdown {
                targets: 0,
                deferred: 0,
                full: false,
            });
        }
        let full = force_full || pages > self.config().shootdown_cutoff_pages;
        let start = start & !0xfff;
        let pages_arg = if full { FULL } else { pages };
        self.shootdown_inner(Some(targets), start, pages_arg, pages, Halted::Interrupt)
    }

    /// `targets`: `None` for every online core.
    fn shootdown_inner(
        &self,
        targets: Option<&CpuSet>,
        start: usize,
        pages_arg: usize,
        pages: usize,
        halted: Halted,
    ) -> Result<Shootdown, Error> {
        let irq = IrqOff::new(self.platform());
        let me = self.current_cpu();
        // A core `new` does not serve (past `CpuSet::CAPACITY`) has no slot: it cannot lead.
        let slot = &self.per_cpu(me).ok_or(Error::NoSuchCpu(me))?.tlb.slot;
        let mut others = match targets {
            Some(set) => *set,
            None => self.online_set(),
        };
        others.remove(me);
        let full = pages_arg == FULL;
        self.count(me, |c| &c.shootdowns, 1);
        if full {
            self.count(me, |c| &c.full_flushes, 1);
        } else {
            self.count(me, |c| &c.shootdown_pages, pages as u64);
        }
        // Relaxed: our own slot.
        if slot.busy.load(Ordering::Relaxed) {
            // A shootdown from inside our own shootdown's wait (a message function we ran while
            // waiting for acknowledgements): the slot is taken, so take the rendezvous path.
            return self.shootdown_by_cpusync(&others, start, pages_arg, full, irq.token());
        }
        slot.busy.store(true, Ordering::Relaxed);
        let result = self.shootdown_acked(me, slot, &others, start, pages_arg, halted, irq.token());
        slot.busy.store(false, Ordering::Relaxed);
        result.map(|(targets, deferred)| Shootdown {
            targets,
            deferred,
            full,
        })
    }

    /// The acknowledged shootdown (module docs); returns (targets interrupted, targets whose
    /// flush was deferred). Interrupts disabled by the caller; `slot` is ours and marked busy.
    // The eighth argument is the zero-sized interrupts-off proof, which costs no register.
    #[allow(clippy::too_many_arguments)]
    fn shootdown_acked(
        &self,
        me: CpuId,
        slot: &Slot,
        others: &CpuSet,
        start: usize,
        pages_arg: usize,
        halted: Halted,
        irqs: IrqsOff<'_>,
    ) -> Result<(usize, usize), Error> {
        // Relaxed stores: the targets read the slot only in the flush message queued below, and
        // the FIFO's Release publish of that message orders these stores before it.
        slot.start.store(start, Ordering::Relaxed);
        slot.pages.store(pages_arg, Ordering::Relaxed);
        slot.acked.store(0, Ordering::Relaxed);
        slot.acked_bits.clear();
        let online = |t: &CpuId| self.is_online(*t);
        // Cores that look halted are asked to flush when they wake instead: bump their deferral
        // count (RMW), then one SeqCst fence, then look at `halted` again. The mirror image runs
        // in `end_halt` (clear `halted` by RMW; fence; read the count), so either we see the
        // core awake and interrupt it, or it sees the bump and flushes before it runs anything.
        let mut deferrable = CpuSet::new();
        if halted == Halted::Defer {
            for target in others.iter().filter(online) {
                let core = self.per_cpu(target).ok_or(Error::NoSuchCpu(target))?;
                // Relaxed: a hint; the decision is taken after the fence below.
                if core.halted.is_set() {
                    // Relaxed RMW: ordered by the fence that follows.
                    core.tlb.deferred.fetch_add(1, Ordering::Relaxed);
                    // Cannot fail: `target` came out of a set of the same capacity.
                    let _ = deferrable.insert(target);
                }
            }
            if !deferrable.is_empty() {
                fence(Ordering::SeqCst);
            }
        }
        // Relaxed: ordered by the fence above (see there).
        let still_halted =
            |t: CpuId| deferrable.contains(t) && self.per_cpu(t).is_some_and(|c| c.halted.is_set());
        let mut deferred = 0;
        let awake = others.iter().filter(online).filter(|&t| {
            let halted = still_halted(t);
            deferred += usize::from(halted);
            !halted
        });
        let message = Message::new(flush_and_ack::<P>, me, 0);
        let (sent, queued) = self.queue_to_each(me, awake, message, Patience::Unbounded, irqs);
        self.count(me, |c| &c.shootdown_deferred, deferred as u64);
        // One store-load barrier, then at most one IPI per target that is not already draining.
        self.signal_all(me, &sent);
        // Our own flush overlaps the remote ones.
        flush(self, start, pages_arg);
        let want = sent.len();
        let acked = || slot.acked.load(Ordering::Acquire) as u64;
        let mut watchdog = self.watchdog(
            me,
            Waiting::ShootdownAck,
            None,
            Patience::Unbounded,
            acked(),
        );
        // Acquire: pairs with each target's Release increment after its flush.
        while slot.acked.load(Ordering::Acquire) < want {
            self.serve_own(me, irqs);
            // Unbounded: never an error.
            let _ = watchdog.check(acked(), || {
                sent.iter().filter(|&t| !slot.acked_bits.contains(t))
            });
            self.platform().relax();
        }
        queued.map(|()| (want, deferred))
    }

    /// The shootdown as a rendezvous whose targets flush as they enter (used when this core's
    /// slot is busy: a shootdown nested inside its own shootdown's wait).
    fn shootdown_by_cpusync(
        &self,
        others: &CpuSet,
        start: usize,
        pages_arg: usize,
        full: bool,
        irqs: IrqsOff<'_>,
    ) -> Result<Shootdown, Error> {
        let work = SyncWork {
            start: Some(Message::new(flush::<P>, start, pages_arg)),
            ..SyncWork::default()
        };
        let sync = self.cpusync_gather(
            others,
            work,
            Patience::Unbounded,
            || flush(self, start, pages_arg),
            irqs,
        )?;
        let targets = sync.members().len();
        // Every target has flushed (its start work); let them go without waiting.
        sync.release();
        Ok(Shootdown {
            targets,
            deferred: 0,
            full,
        })
    }

    /// Does the full flush a shootdown deferred while core `me` was halted, if one is pending.
    /// Context: interrupts disabled, on core `me`, after `end_halt`'s fence.
    pub(crate) fn honour_deferred_flush(&self, me: CpuId) {
        let Some(core) = self.per_cpu(me) else {
            return;
        };
        // Relaxed: ordered by the caller's SeqCst fence (the handshake in `shootdown_acked`).
        let wanted = core.tlb.deferred.load(Ordering::Relaxed);
        // Relaxed: our own word.
        if wanted != core.tlb.honoured.load(Ordering::Relaxed) {
            self.platform().flush_tlb_all();
            core.tlb.honoured.store(wanted, Ordering::Relaxed);
            self.count(me, |c| &c.deferred_flushes, 1);
        }
    }
}

/// Whether a shootdown may defer the flush of a halted core to its wake-up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Halted {
    /// Yes (keeping TLBs coherent: [`Ipiq::shootdown`]).
    Defer,
    /// No, interrupt every target (measuring the flush path: [`Ipiq::shootdown_on`]).
    Interrupt,
}

/// One core's TLB bookkeeping.
pub(crate) struct TlbState {
    /// Flushes deferred to this core's wake-up: bumped (RMW) by masters that found it halted.
    deferred: CachePadded<AtomicU64>,
    /// The `deferred` value this core last honoured with a full flush. Only this core writes it.
    honoured: AtomicU64,
    /// This core's own shootdown, as a master.
    slot: CachePadded<Slot>,
}

impl TlbState {
    pub(crate) fn new(cpus: usize) -> Self {
        Self {
            deferred: CachePadded(AtomicU64::new(0)),
            honoured: AtomicU64::new(0),
            slot: CachePadded(Slot {
                start: AtomicUsize::new(0),
                pages: AtomicUsize::new(0),
                acked: AtomicUsize::new(0),
                acked_bits: CoreBits::new(cpus),
                busy: AtomicBool::new(false),
            }),
        }
    }
}

/// What a master's targets flush, and their acknowledgements. One per core, reused by each of its
/// shootdowns (a master runs one at a time, interrupts off, and returns only once every target it
/// sent to has acknowledged, so no late acknowledgement reaches the next one): no allocation.
struct Slot {
    /// First page address. Written by the master before it queues the flush messages.
    start: AtomicUsize,
    /// Page count, or `FULL`. As `start`.
    pages: AtomicUsize,
    /// Targets that flushed. Reset by the master; incremented (Release) by targets.
    acked: AtomicUsize,
    /// Which targets flushed (names the late ones in warnings).
    acked_bits: CoreBits,
    /// The master is inside a shootdown using this slot. Only the master touches it.
    busy: AtomicBool,
}

/// The target side of an acknowledged shootdown: flush what master `master`'s slot names, then
/// acknowledge. Context: a message function (interrupts disabled, on the target).
fn flush_and_ack<P: Platform>(ipiq: &Ipiq<P>, master: usize, _: usize) {
    let Some(slot) = ipiq.per_cpu(master).map(|c| &c.tlb.slot) else {
        return;
    };
    // Relaxed: published by the FIFO's Release/Acquire hand-over of this message.
    let (start, pages) = (
        slot.start.load(Ordering::Relaxed),
        slot.pages.load(Ordering::Relaxed),
    );
    flush(ipiq, start, pages);
    slot.acked_bits.set(ipiq.current_cpu());
    // Release: our flush happens before the master sees the count (pairs with its Acquire).
    slot.acked.fetch_add(1, Ordering::Release);
}

#[cfg(all(test, feature = "std", not(ipiq_loom)))]
mod tests {
    use super::Shootdown;
    use crate::host::{HostConfig, HostMachine};
    use crate::{CpuSet, Error};

    #[test]
    fn shootdown_on_reaches_only_the_chosen_cores_ranged_or_forced_full() {
        let machine = HostMachine::start(HostConfig::cpus(4));
        let results = machine
            .run_on(0, |core| {
                let q = core.ipiq();
                // The caller (0) is in the set: it is skipped as a target and flushes locally.
                let set = CpuSet::from_cpus([0, 2]).unwrap();
                [
                    q.shootdown_on(&set, 0x40_0000, 4, false),
                    q.shootdown_on(&set, 0x40_0000, 4, true),
                    q.shootdown_on(&CpuSet::new(), 0x40_0000, 0, false),
                    q.shootdown_on(&CpuSet::single(9).unwrap(), 0x40_0000, 1, false),
                ]
            })
            .unwrap();
        assert_eq!(
            results,
            [
                Ok(Shootdown {
                    targets: 1,
                    deferred: 0,
                    full: false
                }),
                Ok(Shootdown {
                    targets: 1,
                    deferred: 0,
                    full: true
                }),
                Ok(Shootdown {
                    targets: 0,
                    deferred: 0,
                    full: false
                }),
                Err(Error::NoSuchCpu(9)),
            ]
        );
        for cpu in 0..4 {
            let f = machine.platform().tlb_flushes(cpu);
            let expected = if cpu == 0 || cpu == 2 {
                (1, 4, 1)
            } else {
                (0, 0, 0)
            };
            assert_eq!((f.ranges, f.pages, f.full), expected, "cpu {cpu}");
        }
        let stats = machine.ipiq().stats(0).unwrap();
        assert_eq!(
            (stats.shootdowns, stats.shootdown_pages, stats.full_flushes),
            (2, 4, 1)
        );
        machine.shutdown();
    }
}
