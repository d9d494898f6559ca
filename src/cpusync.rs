//! cpusync: a rendezvous of cores (the seed's `lwkt_cpusync_*`).
//!
//! The master sends each target a message that runs the *start* work, counts the target in and
//! holds it: the target puts a poll of the rendezvous on its own hold list (`hold.rs`), which every
//! drain visits last, so a held target keeps serving its other queues (including a second
//! master's cpusync, I6) while it spins inside [`Ipiq::process`]. When the master finishes, each
//! target runs the *finish* work, counts itself out, then runs the *after* work (the seed's
//! fastdata: it runs concurrently with the master, which does not wait for it).
//!
//! # Holding is bounded by the master
//! Held targets spin in interrupt context, so a rendezvous may last no longer than its master's
//! own work. Two rules make that structural rather than a convention:
//! - **Interrupts stay off on the master from start to finish.** Every entry point
//!   ([`Ipiq::cpusync`], [`Ipiq::cpusync_simple`], [`Ipiq::cpusync_fastdata`], the TLB
//!   shootdown) disables them once, for the whole rendezvous: the master cannot be preempted,
//!   descheduled or interrupted between gathering and releasing its targets. (It still serves
//!   its own queues while it waits for them, so masters that target each other both progress.)
//! - **A rendezvous is a scope, not a value.** [`Ipiq::cpusync`] lends the running
//!   [`CpuSync`] to a closure and finishes it when the closure returns; no caller ever owns a
//!   `CpuSync`, so none can be forgotten (`mem::forget`) or kept past its scope, and one that
//!   unwinds out of the closure releases its targets on the way (its `Drop`).
//!
//! A held target also has a watchdog of its own (`watchdog.rs`): if its master has not released
//! it within [`crate::Config::warn_after_ns`] it logs every core's status, and again each time
//! the hold doubles; it never leaves early, because the master relies on it being held.
//!
//! The rendezvous state lives in an `Arc`: the master and every target hold a reference, so
//! it stays valid however late a target leaves.

use crate::drain::Hold;
use crate::hold::Holder;
use crate::irq::{IrqOff, IrqsOff};
use crate::matrix::Ipiq;
use crate::message::{IpiFn, Message};
use crate::platform::{CpuId, Platform};
use crate::send::Kind;
use crate::status::{FlagSet, Waiting};
use crate::sync::{Arc, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use crate::watchdog::Patience;
use crate::CpuSet;
use crate::Error;

/// What the targets of a cpusync run, and when.
pub struct SyncWork<P: Platform> {
    /// Run by each target as it enters, before the master's `start` returns.
    pub start: Option<Message<P>>,
    /// Run by each target when released, before the master's `finish` returns.
    pub finish: Option<Message<P>>,
    /// Run by each target after it has counted out: concurrently with the master's `finish`,
    /// which does not wait for it (fastdata). It must use only its two argument words.
    pub after: Option<Message<P>>,
}

impl<P: Platform> Default for SyncWork<P> {
    fn default() -> Self {
        Self {
            start: None,
            finish: None,
            after: None,
        }
    }
}

/// A bit map of cores, set by the cores themselves (which target has entered or left), read by
/// the master's watchdog to know whom it still waits for. Relaxed: the counts below carry the
/// ordering; the bits only steer re-sent IPIs and name cores in warnings.
///
/// The words are inline (room for every core ipiq serves), not a separate allocation: each
/// core's shootdown slot holds one for the machine's lifetime, and in the Hermit kernel every
/// long-lived allocation lengthens the allocator's search on each later allocation
/// (`docs/results/2026-12-07-wakeup-repeatable.md`).
pub(crate) struct CoreBits {
    words: [AtomicU64; CORE_WORDS],
    /// Words in use: enough for the machine's cores.
    used: usize,
}

/// Words in a bit map of every core ipiq serves. Loom models run a few cores, and each atomic
/// is a tracked object there: one word.
#[cfg(not(ipiq_loom))]
pub(crate) const CORE_WORDS: usize = CpuSet::CAPACITY / 64;
#[cfg(ipiq_loom)]
pub(crate) const CORE_WORDS: usize = 1;

/// A fresh array of `CORE_WORDS` zero words.
pub(crate) fn zero_words() -> [AtomicU64; CORE_WORDS] {
    core::array::from_fn(|_| AtomicU64::new(0))
}

impl CoreBits {
    pub(crate) fn new(cpus: usize) -> Self {
        Self {
            words: zero_words(),
            used: cpus.div_ceil(64).min(CORE_WORDS),
        }
    }

    /// Clears every bit (the owner, before reusing the map).
    pub(crate) fn clear(&self) {
        for word in &self.words[..self.used] {
            // Relaxed: see the type's docs; published to readers by whatever hands them the work.
            word.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn set(&self, cpu: CpuId) {
        if let Some(word) = self.words[..self.used].get(cpu / 64) {
            // Relaxed: see the type's docs.
            word.fetch_or(1 << (cpu % 64), Ordering::Relaxed);
        }
    }

    pub(crate) fn contains(&self, cpu: CpuId) -> bool {
        // Relaxed: see the type's docs.
        self.words[..self.used]
            .get(cpu / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (cpu % 64)) != 0)
    }
}

/// The shared state of one rendezvous.
struct SyncState<P: Platform> {
    work: SyncWork<P>,
    master: CpuId,
    /// Targets that ran `start` and are held. Incremented (Release) by targets, read (Acquire)
    /// by the master, so the start work's effects are visible once `start` returns.
    entered: AtomicUsize,
    /// Which targets have entered (for the master's watchdog).
    entered_bits: CoreBits,
    /// Set (Release) by the master's finish; read (Acquire) by held targets, so the finish work
    /// sees everything the master did inside the rendezvous.
    released: AtomicBool,
    /// Targets that ran `finish`. Incremented (Release) by targets, read (Acquire) by the master.
    left: AtomicUsize,
    /// Which targets have left (for the master's watchdog).
    left_bits: CoreBits,
}

/// A held target's poll of its rendezvous, on the target's hold list (`hold.rs`; the seed's
/// `lwkt_cpusync_remote2` re-queueing itself). `word` is an `Arc<SyncState<P>>` reference owned
/// by the hold (see `enter`). Runs the finish side once the master released the rendezvous;
/// returns `true` when done (the hold is then dropped), `false` while still held.
///
/// Context: the held target's drain loop, interrupts disabled.
fn poll_hold<P: Platform>(ipiq: &Ipiq<P>, word: usize) -> bool {
    // SAFETY: the hold owns a reference to the state (`Holder::new`'s contract, see `enter`), so
    // it is alive until `release_hold` runs, which is after the last poll.
    let state = unsafe { &*(word as *const SyncState<P>) };
    // Acquire: pairs with the master's Release in `release_now`.
    if !state.released.load(Ordering::Acquire) {
        return false;
    }
    let me = ipiq.current_cpu();
    if let Some(finish) = state.work.finish {
        finish.run(ipiq, me);
    }
    state.left_bits.set(me);
    // Release: the finish work's effects before the count the master waits on.
    state.left.fetch_add(1, Ordering::Release);
    ipiq.diag(me).released();
    if let Some(after) = state.work.after {
        after.run(ipiq, me);
    }
    true
}

/// Gives up a hold's reference to its rendezvous state. Context: the held target, interrupts
/// disabled (or the thread dropping the whole `Ipiq`).
fn release_hold<P: Platform>(word: usize) {
    // SAFETY: `word` came from `Arc::into_raw` in `enter` and the hold releases it once.
    drop(unsafe { Arc::from_raw(word as *const SyncState<P>) });
}

/// The message a target receives: run the start work, count in, hold (`lwkt_cpusync_remote1`).
/// Context: a message function (interrupts disabled, on the target).
fn enter<P: Platform>(ipiq: &Ipiq<P>, raw: usize, _: usize) {
    // SAFETY: `raw` is a reference the master made with `Arc::into_raw` for this one message, and
    // each message runs exactly once; it is consumed here.
    let state = unsafe { Arc::from_raw(raw as *const SyncState<P>) };
    let me = ipiq.current_cpu();
    if let Some(start) = state.work.start {
        start.run(ipiq, me);
    }
    ipiq.count(me, |c| &c.cpusync_target, 1);
    ipiq.diag(me).held(state.master);
    state.entered_bits.set(me);
    // Release: the start work's effects before the count the master waits on.
    state.entered.fetch_add(1, Ordering::Release);
    let word = Arc::into_raw(state) as usize;
    // SAFETY: the hold owns the reference `into_raw` just gave up: it stays valid for
    // `poll_hold` until `release_hold` frees it, once, when the hold is dropped.
    let holder = unsafe { Holder::new(poll_hold::<P>, release_hold::<P>, word) };
    ipiq.hold(me, holder);
}

/// A running cpusync, lent by [`Ipiq::cpusync`] to the master's closure. Its targets are held
/// until the closure returns; [`CpuSync::add`] gathers more.
pub struct CpuSync<'a, P: Platform> {
    ipiq: &'a Ipiq<P>,
    state: Arc<SyncState<P>>,
    /// The targets (never the master).
    members: CpuSet,
    master: CpuId,
    released: bool,
    /// The master's "leading a cpusync" status flag, cleared on drop.
    leading: Option<FlagSet>,
}

impl<P: Platform> core::fmt::Debug for CpuSync<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuSync")
            .field("master", &self.master)
            .field("members", &self.members)
            .finish()
    }
}

/// How a scoped rendezvous ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Release the targets and wait until each ran its finish work.
    WaitForFinish,
    /// Release the targets and return at once (fastdata).
    Release,
}

impl<P: Platform> Ipiq<P> {
    /// Gathers the online cores of `set` other than the caller in a rendezvous, runs `lead` on
    /// the caller while they are held, then releases them and returns once each has run
    /// `work.finish` (the seed's `lwkt_cpusync_start`, `_add` through [`CpuSync::add`], and
    /// `_finish`). Every target runs `work.start` before `lead` begins.
    ///
    /// Context: any, not from a message function of a target this rendezvous would hold.
    /// Interrupts are disabled on the caller for the whole call (see the module docs): `lead`
    /// must not block or sleep, and should be short, since every target spins until it returns.
    /// While waiting for its targets the caller serves its own queues, so two masters targeting
    /// each other both progress (I4, I6).
    ///
    /// Errors: [`Error::NoSuchCpu`] for a core beyond the machine, [`Error::EmptySet`] for an
    /// empty set (`lead` does not run); [`Error::TimedOut`] if a target never entered (the ones
    /// that did are released, `lead` does not run) or never finished (`lead` ran; its result is
    /// dropped).
    ///
    /// ```
    /// # #[cfg(feature = "std")] {
    /// use ipiq::host::{HostConfig, HostMachine};
    /// use ipiq::{CpuSet, SyncWork};
    ///
    /// let machine = HostMachine::start(HostConfig::cpus(3));
    /// let held = machine
    ///     .run_on(0, |core| {
    ///         let set = CpuSet::from_cpus([1, 2]).unwrap();
    ///         core.ipiq()
    ///             .cpusync(&set, SyncWork::default(), |sync| sync.members().len())
    ///             .unwrap()
    ///     })
    ///     .unwrap();
    /// assert_eq!(held, 2);
    /// machine.shutdown();
    /// # }
    /// ```
    pub fn cpusync<R>(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        lead: impl FnOnce(&mut CpuSync<'_, P>) -> R,
    ) -> Result<R, Error> {
        self.cpusync_scoped(set, work, End::WaitForFinish, lead)
    }

    /// Like [`Ipiq::cpusync`], but releases the targets when `lead` returns without waiting for
    /// them to run `work.finish` and `work.after` (the seed's fastdata ending): what they run
    /// then must use only its argument words. Context and errors as [`Ipiq::cpusync`] (no
    /// [`Error::TimedOut`] after `lead`).
    pub fn cpusync_release<R>(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        lead: impl FnOnce(&mut CpuSync<'_, P>) -> R,
    ) -> Result<R, Error> {
        self.cpusync_scoped(set, work, End::Release, lead)
    }

    fn cpusync_scoped<R>(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        end: End,
        lead: impl FnOnce(&mut CpuSync<'_, P>) -> R,
    ) -> Result<R, Error> {
        if let Some(max) = set.max() {
            self.check_cpu(max)?;
        }
        if set.is_empty() {
            return Err(Error::EmptySet);
        }
        let irq = IrqOff::new(self.platform());
        let mut sync = self.cpusync_gather(set, work, Patience::Bounded, || {}, irq.token())?;
        let result = lead(&mut sync);
        match end {
            End::WaitForFinish => sync.finish_inner(irq.token())?,
            End::Release => sync.release_now(),
        }
        Ok(result)
    }

    /// Runs `func(arg0, arg1)` on every online core of `set` in lockstep (the seed's
    /// `lwkt_cpusync_simple`): all targets are gathered, then each runs it as its finish work,
    /// and the caller runs it too if it is in the set; returns after all have run it, with how
    /// many cores did. Context and errors as [`Ipiq::cpusync`].
    pub fn cpusync_simple(
        &self,
        set: &CpuSet,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<usize, Error> {
        let message = Message::new(func, arg0, arg1);
        let work = SyncWork {
            finish: Some(message),
            ..SyncWork::default()
        };
        self.cpusync_with_master(set, work, message, End::WaitForFinish)
    }

    /// Like [`Ipiq::cpusync_simple`], but the targets run the function after counting out, while
    /// the caller goes on (the seed's `lwkt_cpusync_fastdata`): it must use only its argument
    /// words, never the caller's stack.
    pub fn cpusync_fastdata(
        &self,
        set: &CpuSet,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<usize, Error> {
        let message = Message::new(func, arg0, arg1);
        let work = SyncWork {
            after: Some(message),
            ..SyncWork::default()
        };
        self.cpusync_with_master(set, work, message, End::Release)
    }

    fn cpusync_with_master(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        message: Message<P>,
        end: End,
    ) -> Result<usize, Error> {
        self.cpusync_scoped(set, work, end, |sync| {
            let me = sync.master;
            let ran_here = set.contains(me);
            if ran_here {
                message.run(self, me);
            }
            sync.members.len() + usize::from(ran_here)
        })
    }

    /// Sends the enter message to the online cores of `set` other than the caller, gives the
    /// caller `overlap` to run while they enter (the TLB shootdown's local flush), and returns
    /// once all have entered, with `patience` for the ones that are slow.
    ///
    /// Context: interrupts disabled by the caller, for as long as the returned `CpuSync` lives.
    pub(crate) fn cpusync_gather(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        patience: Patience,
        overlap: impl FnOnce(),
        irqs: IrqsOff<'_>,
    ) -> Result<CpuSync<'_, P>, Error> {
        let master = self.current_cpu();
        // A core `new` does not serve (past `CpuSet::CAPACITY`) cannot lead: it has no state.
        self.per_cpu(master).ok_or(Error::NoSuchCpu(master))?;
        self.count(master, |c| &c.cpusync, 1);
        let mut sync = CpuSync {
            ipiq: self,
            state: Arc::new(SyncState {
                work,
                master,
                entered: AtomicUsize::new(0),
                entered_bits: CoreBits::new(self.cpu_count()),
                released: AtomicBool::new(false),
                left: AtomicUsize::new(0),
                left_bits: CoreBits::new(self.cpu_count()),
            }),
            members: CpuSet::new(),
            master,
            released: false,
            leading: Some(self.diag(master).leading()),
        };
        let mut first_error = None;
        for target in set.iter().filter(|&t| t != master && self.is_online(t)) {
            if let Err(e) = sync.queue_enter(target, patience, irqs) {
                first_error = Some(e);
                break;
            }
        }
        // One fence and one platform call for every target queued (as `send_many`): the enter
        // messages reach them in as few IPI writes as the platform allows.
        self.signal_all(master, &sync.members);
        overlap();
        if let Some(e) = first_error {
            return Err(e);
        }
        sync.wait_entered(patience, irqs)?;
        Ok(sync)
    }
}

impl<P: Platform> CpuSync<'_, P> {
    /// The targets held (not counting the master).
    pub fn members(&self) -> &CpuSet {
        &self.members
    }

    /// The core leading the rendezvous (the caller of [`Ipiq::cpusync`]).
    pub fn master(&self) -> CpuId {
        self.master
    }

    /// Adds `cpu` to the running cpusync (the seed's `lwkt_cpusync_add`); returns once it has run
    /// the start work and is held. Adding an offline core is [`Error::CpuOffline`], the master or
    /// a member [`Error::AlreadyInSync`], a core past the machine [`Error::NoSuchCpu`];
    /// [`Error::TimedOut`] if it never enters (the rendezvous goes on without it).
    pub fn add(&mut self, cpu: CpuId) -> Result<(), Error> {
        self.ipiq.check_cpu(cpu)?;
        if cpu == self.master || self.members.contains(cpu) {
            return Err(Error::AlreadyInSync(cpu));
        }
        if !self.ipiq.is_online(cpu) {
            return Err(Error::CpuOffline(cpu));
        }
        // Interrupts are already off for the whole rendezvous (module docs); nesting a guard
        // costs nothing and keeps this method sound on its own.
        let irq = IrqOff::new(self.ipiq.platform());
        self.send_enter(cpu, Patience::Bounded)?;
        self.wait_entered(Patience::Bounded, irq.token())
    }

    /// Releases the targets and waits until each has run its finish work.
    /// Context: the master, interrupts disabled.
    fn finish_inner(mut self, irqs: IrqsOff<'_>) -> Result<(), Error> {
        self.release_now();
        let ipiq = self.ipiq;
        let me = ipiq.current_cpu();
        let want = self.members.len();
        let state = &self.state;
        let left = || state.left.load(Ordering::Acquire) as u64;
        let mut watchdog = ipiq.watchdog(me, Waiting::CpusyncExit, None, Patience::Bounded, left());
        loop {
            // Acquire: pairs with the targets' Release increments; their finish work is visible.
            if state.left.load(Ordering::Acquire) >= want {
                return Ok(());
            }
            ipiq.drain(me, Hold::PollOnce, irqs);
            watchdog.check(left(), || {
                self.members
                    .iter()
                    .filter(|&t| !state.left_bits.contains(t))
            })?;
            ipiq.platform().relax();
        }
    }

    /// Lets the targets go without waiting for them to count out (they have already done what
    /// the caller needed, e.g. flushed their TLBs as they entered).
    pub(crate) fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            // Release: everything the master did inside the rendezvous happens before the
            // targets' finish work (pairs with the Acquire in `poll_hold`).
            self.state.released.store(true, Ordering::Release);
        }
    }

    /// Sends the enter message to `target`; interrupts are disabled by the caller.
    fn send_enter(&mut self, target: CpuId, patience: Patience) -> Result<(), Error> {
        let raw = Arc::into_raw(self.state.clone()) as usize;
        let message = Message::new(enter::<P>, raw, 0);
        match self.ipiq.send_with(target, message, Kind::Active, patience) {
            Ok(_) => {
                let _ = self.members.insert(target); // never fails: `send` took `target`
                Ok(())
            }
            Err(e) => {
                // SAFETY: the send failed, so no message owns this reference: take it back.
                drop(unsafe { Arc::from_raw(raw as *const SyncState<P>) });
                Err(e)
            }
        }
    }

    /// Queues the enter message for `target` without waking it (the caller wakes every
    /// target at once with `Ipiq::signal_all`); `target` is online and not the master.
    ///
    /// Context: interrupts disabled by the caller (the master's, for the whole rendezvous).
    fn queue_enter(
        &mut self,
        target: CpuId,
        patience: Patience,
        irqs: IrqsOff<'_>,
    ) -> Result<(), Error> {
        let raw = Arc::into_raw(self.state.clone()) as usize;
        let message = Message::new(enter::<P>, raw, 0);
        match self
            .ipiq
            .queue_unsignalled(self.master, target, message, patience, irqs)
        {
            Ok(()) => {
                let _ = self.members.insert(target); // never fails: `target` came from a set
                Ok(())
            }
            Err(e) => {
                // SAFETY: the queueing failed, so no message owns this reference: take it back.
                drop(unsafe { Arc::from_raw(raw as *const SyncState<P>) });
                Err(e)
            }
        }
    }

    /// Waits until every member is held; interrupts are disabled by the caller. Re-sent IPIs go
    /// only to members that have not entered yet (the others spin in their hold loops).
    fn wait_entered(&mut self, patience: Patience, irqs: IrqsOff<'_>) -> Result<(), Error> {
        let ipiq = self.ipiq;
        let me = ipiq.current_cpu();
        let want = self.members.len();
        let state = &self.state;
        let entered = || state.entered.load(Ordering::Acquire) as u64;
        let mut watchdog = ipiq.watchdog(me, Waiting::CpusyncEntry, None, patience, entered());
        loop {
            // Acquire: pairs with the targets' Release increments; their start work is visible.
            if state.entered.load(Ordering::Acquire) >= want {
                return Ok(());
            }
            ipiq.drain(me, Hold::PollOnce, irqs);
            let members = &self.members;
            watchdog.check(entered(), || {
                members.iter().filter(|&t| !state.entered_bits.contains(t))
            })?;
            ipiq.platform().relax();
        }
    }
}

impl<P: Platform> Drop for CpuSync<'_, P> {
    fn drop(&mut self) {
        // A rendezvous that ends early (an error, or a panic unwinding out of the master's
        // closure) must not hold its targets for ever.
        self.release_now();
        if let Some(token) = self.leading.take() {
            self.ipiq.diag(self.master).done_leading(token);
        }
    }
}
