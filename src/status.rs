//! What each core is doing, kept cheaply so that a stall can be diagnosed from one log.
//!
//! Each core keeps a few words about itself ([`CoreDiag`]): whether it is draining,
//! which cpusyncs hold it, whether it leads one, what it is waiting for and on whom, and how
//! many messages it has run (a count, not a time: successive warnings show whether it moves). Only the core itself writes them (plain Relaxed load-and-store, no RMW);
//! any core may read them for [`Ipiq::core_status`], which is a racy snapshot meant for humans
//! and for tests that wait for a state, never for the protocol's decisions (whether the core
//! polls is the protocol's own record, `OwnState::polled`, read here). Watchdogs print every
//! core's status when a wait passes its warning bound (see `watchdog.rs`).
//!
//! Cost: two stores when a drain starts and stops, one core-local add per drain pass that ran
//! messages (no clock read: a drain pass is the hot path of a polling core, and a clock read
//! there cost more than the pass's protocol work on the host), two stores when a cpusync holds
//! or releases the core, and a few when a wait goes past its first spin. Nothing per message.

use core::fmt;

use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};
use crate::sync::{AtomicU64, AtomicUsize, Ordering};

/// What a core spinning under a watchdog waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// [`Ipiq::wait`]: the target to return from a message.
    Sequence,
    /// A send: the target to make room in a full FIFO.
    FifoRoom,
    /// A send: the target to take the messages spilled for it.
    SpillRoom,
    /// A cpusync master: its targets to enter.
    CpusyncEntry,
    /// A cpusync master: its targets to run their finish work.
    CpusyncExit,
    /// A held cpusync target: its master to release it.
    Release,
    /// A TLB shootdown master: its targets to acknowledge their flush.
    ShootdownAck,
}

impl Waiting {
    const ALL: [Waiting; 7] = [
        Waiting::Sequence,
        Waiting::FifoRoom,
        Waiting::SpillRoom,
        Waiting::CpusyncEntry,
        Waiting::CpusyncExit,
        Waiting::Release,
        Waiting::ShootdownAck,
    ];

    fn code(self) -> usize {
        self as usize + 1
    }

    fn from_code(code: usize) -> Option<Self> {
        code.checked_sub(1).and_then(|i| Self::ALL.get(i).copied())
    }

    /// A short phrase for logs.
    pub fn describe(self) -> &'static str {
        match self {
            Waiting::Sequence => "a message to return",
            Waiting::FifoRoom => "room in a full FIFO",
            Waiting::SpillRoom => "spilled messages to be taken",
            Waiting::CpusyncEntry => "cpusync targets to enter",
            Waiting::CpusyncExit => "cpusync targets to finish",
            Waiting::Release => "its cpusync master to release it",
            Waiting::ShootdownAck => "TLB flush acknowledgements",
        }
    }
}

const DRAINING: usize = 1;
const LEADING: usize = 4;
/// Between `prepare_halt` returning true and `end_halt` (the core's own view: unlike the shared
/// `halted` flag, no lazy sender clears it).
const HALTING: usize = 8;

/// One core's diagnostic words. Written only by the core itself with interrupts disabled, read
/// by anyone (Relaxed everywhere: a snapshot for humans and tests, ordering nothing).
#[derive(Debug, Default)]
pub(crate) struct CoreDiag {
    /// `DRAINING | LEADING | HALTING`.
    flags: AtomicUsize,
    /// How many cpusyncs hold this core.
    holds: AtomicUsize,
    /// Master of the cpusync that held this core last, plus one (0: none yet).
    held_by: AtomicUsize,
    /// What the innermost watchdog'd wait waits for (`Waiting::code`, 0: none).
    waiting_for: AtomicUsize,
    /// The core it waits on, plus one (0: several or none).
    waiting_on: AtomicUsize,
    /// Messages run by this core's drains so far (wrapping; advisory, like every field here).
    messages_run: AtomicU64,
}

/// A flag this core set and will clear (see [`CoreDiag::set_flag`]).
#[must_use]
pub(crate) struct FlagSet(bool);

/// The previous wait state, restored when a nested wait ends.
pub(crate) struct PreviousWait(usize, usize);

impl CoreDiag {
    /// Sets `flag` unless already set; the returned token clears it only if this call set it, so
    /// nested drains leave the outer one's flag alone.
    #[inline]
    fn set_flag(&self, flag: usize) -> FlagSet {
        // Relaxed load and store: only this core writes the word (module docs).
        let old = self.flags.load(Ordering::Relaxed);
        if old & flag != 0 {
            return FlagSet(false);
        }
        self.flags.store(old | flag, Ordering::Relaxed);
        FlagSet(true)
    }

    #[inline]
    fn clear_flag(&self, flag: usize, token: FlagSet) {
        if token.0 {
            // Relaxed: as in `set_flag`.
            let old = self.flags.load(Ordering::Relaxed);
            self.flags.store(old & !flag, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn draining(&self) -> FlagSet {
        self.set_flag(DRAINING)
    }

    #[inline]
    pub(crate) fn done_draining(&self, token: FlagSet) {
        self.clear_flag(DRAINING, token);
    }

    #[inline]
    pub(crate) fn halting(&self, on: bool) {
        // Relaxed: as in `set_flag`.
        let old = self.flags.load(Ordering::Relaxed);
        let new = if on { old | HALTING } else { old & !HALTING };
        if new != old {
            self.flags.store(new, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn is_halting(&self) -> bool {
        // Relaxed: own word.
        self.flags.load(Ordering::Relaxed) & HALTING != 0
    }

    pub(crate) fn leading(&self) -> FlagSet {
        self.set_flag(LEADING)
    }

    pub(crate) fn done_leading(&self, token: FlagSet) {
        self.clear_flag(LEADING, token);
    }

    /// A cpusync led by `master` now holds this core.
    pub(crate) fn held(&self, master: CpuId) {
        // Relaxed load and store: only this core writes these.
        self.holds
            .store(self.holds.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.held_by.store(master + 1, Ordering::Relaxed);
    }

    /// A cpusync released this core.
    pub(crate) fn released(&self) {
        // Relaxed load and store: only this core writes it.
        let holds = self.holds.load(Ordering::Relaxed);
        self.holds.store(holds.saturating_sub(1), Ordering::Relaxed);
    }

    /// How many cpusyncs hold this core.
    pub(crate) fn holds(&self) -> u64 {
        // Relaxed: own word.
        self.holds.load(Ordering::Relaxed) as u64
    }

    /// The master of the cpusync that held this core last.
    pub(crate) fn last_master(&self) -> Option<CpuId> {
        // Relaxed: own word.
        self.held_by.load(Ordering::Relaxed).checked_sub(1)
    }

    #[inline]
    pub(crate) fn begin_wait(&self, waiting: Waiting, on: Option<CpuId>) -> PreviousWait {
        // Relaxed loads and stores: only this core writes these.
        let previous = PreviousWait(
            self.waiting_for.load(Ordering::Relaxed),
            self.waiting_on.load(Ordering::Relaxed),
        );
        self.waiting_for.store(waiting.code(), Ordering::Relaxed);
        self.waiting_on
            .store(on.map_or(0, |c| c + 1), Ordering::Relaxed);
        previous
    }

    #[inline]
    pub(crate) fn end_wait(&self, previous: &PreviousWait) {
        // Relaxed: as in `begin_wait`.
        self.waiting_for.store(previous.0, Ordering::Relaxed);
        self.waiting_on.store(previous.1, Ordering::Relaxed);
    }

    /// A drain pass ran `n` messages.
    #[inline]
    pub(crate) fn progressed(&self, n: u64) {
        // Relaxed load and store, no RMW: only this core writes the count (module docs); a
        // figure for humans.
        let run = &self.messages_run;
        run.store(
            run.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

/// A snapshot of what one core is doing ([`Ipiq::core_status`]). Racy by nature: each field was
/// true at some moment during the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoreStatus {
    /// The core.
    pub cpu: CpuId,
    /// Brought up ([`Ipiq::cpu_online`]).
    pub online: bool,
    /// Inside a drain of its queues ([`Ipiq::process`], the tick, a wait's own drain).
    pub draining: bool,
    /// Its idle loop is polling with the wake-up signal held on its own account: a poll
    /// ([`Ipiq::poll`]) set `npoll`, and no drain has cleared it since.
    pub polling: bool,
    /// Halted in its idle loop ([`Ipiq::prepare_halt`] without [`Ipiq::end_halt`] yet; a lazy
    /// sender's wake-up also clears it).
    pub halted: bool,
    /// Message functions on its stack right now.
    pub message_depth: usize,
    /// Cpusyncs holding it.
    pub holds: usize,
    /// The master of the cpusync that held it last (meaningful while `holds > 0`).
    pub held_by: Option<CpuId>,
    /// It leads a cpusync or a shootdown.
    pub leading: bool,
    /// What its innermost watchdog'd wait waits for, and on which core if one.
    pub waiting: Option<(Waiting, Option<CpuId>)>,
    /// How many messages its drains have run so far (wrapping). A stalled core's count stays
    /// put from one watchdog warning to the next.
    pub messages_run: u64,
}

impl fmt::Display for CoreStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu {}: {}",
            self.cpu,
            if self.online { "online" } else { "offline" }
        )?;
        for (on, what) in [
            (self.draining, "draining"),
            (self.polling, "polling"),
            (self.halted, "halted"),
            (self.leading, "leading a cpusync"),
        ] {
            if on {
                write!(f, ", {what}")?;
            }
        }
        if self.message_depth > 0 {
            write!(f, ", inside {} message function(s)", self.message_depth)?;
        }
        if self.holds > 0 {
            write!(f, ", held in {} cpusync(s)", self.holds)?;
            if let Some(master) = self.held_by {
                write!(f, " (last by cpu {master})")?;
            }
        }
        if let Some((waiting, on)) = self.waiting {
            write!(f, ", waiting for {}", waiting.describe())?;
            if let Some(cpu) = on {
                write!(f, " on cpu {cpu}")?;
            }
        }
        write!(f, ", {} messages run", self.messages_run)
    }
}

impl<P: Platform> Ipiq<P> {
    /// What `cpu` is doing right now (a racy snapshot, for diagnostics and tests), or `None` for
    /// a core past the core count. Context: any; reads only, takes no lock.
    pub fn core_status(&self, cpu: CpuId) -> Option<CoreStatus> {
        let core = self.per_cpu(cpu)?;
        let diag = &core.diag;
        // Relaxed everywhere: a snapshot (module docs).
        let flags = diag.flags.load(Ordering::Relaxed);
        let waiting = Waiting::from_code(diag.waiting_for.load(Ordering::Relaxed)).map(|w| {
            let on = diag.waiting_on.load(Ordering::Relaxed);
            (w, on.checked_sub(1))
        });
        Some(CoreStatus {
            cpu,
            online: self.is_online(cpu),
            draining: flags & DRAINING != 0,
            // Relaxed: a snapshot of the core's own word.
            polling: core.own.polled.load(Ordering::Relaxed),
            halted: core.halted.is_set(),
            message_depth: core.own.running.load(Ordering::Relaxed),
            holds: diag.holds.load(Ordering::Relaxed),
            held_by: diag.held_by.load(Ordering::Relaxed).checked_sub(1),
            leading: flags & LEADING != 0,
            waiting,
            messages_run: diag.messages_run.load(Ordering::Relaxed),
        })
    }

    /// Logs every core's [`CoreStatus`] at warning level, one line each (what the watchdogs
    /// print when a wait passes its warning bound). Context: any; formats and logs only.
    pub fn log_core_states(&self) {
        for status in (0..self.cpu_count()).filter_map(|cpu| self.core_status(cpu)) {
            log::warn!("ipiq:   {status}");
        }
    }
}
