//! cpusync: a rendezvous of cores (the seed's `lwkt_cpusync_*`).
//!
//! The master sends each target a message that runs the *start* work, counts the target in and
//! holds it: the target re-queues a poll of the rendezvous on its own requeue list, which every
//! drain visits last, so a held target keeps serving its other queues (including a second
//! master's cpusync, I6) while it spins inside [`Ipiq::process`]. When the master finishes, each
//! target runs the *finish* work, counts itself out, then runs the *after* work (the seed's
//! fastdata: it runs concurrently with the master, which does not wait for it).
//!
//! The rendezvous state lives in an `Arc`: the master and every target hold a reference, so
//! it stays valid however late a target leaves.

use crate::error::Error;
use crate::matrix::Ipiq;
use crate::message::{IpiFn, Message};
use crate::platform::{CpuId, Platform};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering};
use crate::CpuSet;

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

/// The shared state of one rendezvous.
struct SyncState<P: Platform> {
    work: SyncWork<P>,
    /// Targets that ran `start` and are held. Incremented (Release) by targets, read (Acquire)
    /// by the master, so the start work's effects are visible once `start` returns.
    entered: AtomicUsize,
    /// Set (Release) by the master's finish; read (Acquire) by held targets, so the finish work
    /// sees everything the master did inside the rendezvous.
    released: AtomicBool,
    /// Targets that ran `finish`. Incremented (Release) by targets, read (Acquire) by the master.
    left: AtomicUsize,
}

/// A cpusync poll waiting on a core's requeue list (the seed's `lwkt_cpusync_remote2`
/// re-queueing itself).
pub(crate) struct Requeued<P: Platform> {
    state: Arc<SyncState<P>>,
}

impl<P: Platform> Requeued<P> {
    /// Runs the finish side once the master released the rendezvous; returns `true` when done
    /// (the entry is dropped), `false` while still held.
    pub(crate) fn poll(&self, ipiq: &Ipiq<P>) -> bool {
        // Acquire: pairs with the master's Release in `release`.
        if !self.state.released.load(Ordering::Acquire) {
            return false;
        }
        let me = ipiq.current_cpu();
        if let Some(finish) = self.state.work.finish {
            finish.run(ipiq, me);
        }
        // Release: the finish work's effects before the count the master waits on.
        self.state.left.fetch_add(1, Ordering::Release);
        if let Some(after) = self.state.work.after {
            after.run(ipiq, me);
        }
        true
    }
}

/// The message a target receives: run the start work, count in, hold (`lwkt_cpusync_remote1`).
fn enter<P: Platform>(ipiq: &Ipiq<P>, raw: usize, _: usize) {
    // SAFETY: `raw` is a reference the master made with `Arc::into_raw` for this one message, and
    // each message runs exactly once; it is consumed here.
    let state = unsafe { Arc::from_raw(raw as *const SyncState<P>) };
    let me = ipiq.current_cpu();
    if let Some(start) = state.work.start {
        start.run(ipiq, me);
    }
    ipiq.count(me, |c| &c.cpusync_target, 1);
    // Release: the start work's effects before the count the master waits on.
    state.entered.fetch_add(1, Ordering::Release);
    ipiq.requeue(me, Requeued { state });
}

/// A running cpusync, led by the core that started it. Finish it with [`CpuSync::finish`];
/// dropping it releases the targets without waiting for them.
pub struct CpuSync<'a, P: Platform> {
    ipiq: &'a Ipiq<P>,
    state: Arc<SyncState<P>>,
    /// The targets (never the master).
    members: CpuSet,
    master: CpuId,
    released: bool,
}

impl<P: Platform> core::fmt::Debug for CpuSync<'_, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuSync")
            .field("master", &self.master)
            .field("members", &self.members)
            .finish()
    }
}

impl<P: Platform> Ipiq<P> {
    /// Starts a cpusync over the online cores of `set` other than the caller (the seed's
    /// `lwkt_cpusync_start`); returns once every target has run `work.start` and is held.
    ///
    /// Context: any, not from a message function of a target being held by this same cpusync.
    /// While waiting it serves the caller's own queues, so two masters targeting each other both
    /// progress (I4, I6). Errors: [`Error::NoSuchCpu`] for a core beyond the machine,
    /// [`Error::EmptySet`] for an empty set, [`Error::TimedOut`] if a target never entered (the
    /// ones that did are released).
    pub fn cpusync_start(&self, set: &CpuSet, work: SyncWork<P>) -> Result<CpuSync<'_, P>, Error> {
        if let Some(max) = set.max() {
            self.check_cpu(max)?;
        }
        if set.is_empty() {
            return Err(Error::EmptySet);
        }
        self.cpusync_start_overlapped(set, work, || {})
    }

    fn cpusync_begin(&self, work: SyncWork<P>) -> CpuSync<'_, P> {
        let master = self.current_cpu();
        self.count(master, |c| &c.cpusync, 1);
        CpuSync {
            ipiq: self,
            state: Arc::new(SyncState {
                work,
                entered: AtomicUsize::new(0),
                released: AtomicBool::new(false),
                left: AtomicUsize::new(0),
            }),
            members: CpuSet::new(),
            master,
            released: false,
        }
    }

    /// Runs `func(arg0, arg1)` on every online core of `set` in lockstep (the seed's
    /// `lwkt_cpusync_simple`): all targets are gathered, then each runs it as its finish work,
    /// and the caller runs it too if it is in the set; returns after all have run it, with how
    /// many cores did.
    pub fn cpusync_simple(
        &self,
        set: &CpuSet,
        func: IpiFn<P>,
        arg0: usize,
        arg1: usize,
    ) -> Result<usize, Error> {
        let message = Message::new(func, arg0, arg1);
        self.cpusync_with_master(
            set,
            SyncWork {
                finish: Some(message),
                ..SyncWork::default()
            },
            message,
            true,
        )
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
        self.cpusync_with_master(
            set,
            SyncWork {
                after: Some(message),
                ..SyncWork::default()
            },
            message,
            false,
        )
    }

    fn cpusync_with_master(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        message: Message<P>,
        wait: bool,
    ) -> Result<usize, Error> {
        let sync = self.cpusync_start(set, work)?;
        let count = sync.members.len();
        let me = sync.master;
        let irq = self.platform().irq_save();
        let ran_here = set.contains(me);
        if ran_here {
            message.run(self, me);
        }
        self.platform().irq_restore(irq);
        if wait {
            sync.finish()?;
        } else {
            sync.release();
        }
        Ok(count + usize::from(ran_here))
    }

    /// Starts a cpusync whose targets run `start` as they enter, and gives the caller `overlap`
    /// to run while they do; returns once all have entered (used by the TLB shootdown to overlap
    /// the local flush with the remote ones).
    pub(crate) fn cpusync_start_overlapped(
        &self,
        set: &CpuSet,
        work: SyncWork<P>,
        overlap: impl FnOnce(),
    ) -> Result<CpuSync<'_, P>, Error> {
        let mut sync = self.cpusync_begin(work);
        let master = sync.master;
        let irq = self.platform().irq_save();
        let result = (|| {
            let mut first_error = None;
            for target in set.iter().filter(|&t| t != master && self.is_online(t)) {
                if let Err(e) = sync.send_enter(target) {
                    first_error = Some(e);
                    break;
                }
            }
            overlap();
            if let Some(e) = first_error {
                return Err(e);
            }
            sync.wait_entered()
        })();
        self.platform().irq_restore(irq);
        result.map(|()| sync)
    }
}

impl<P: Platform> CpuSync<'_, P> {
    /// The targets held (not counting the master).
    pub fn members(&self) -> &CpuSet {
        &self.members
    }

    /// Adds `cpu` to the running cpusync (the seed's `lwkt_cpusync_add`); returns once it has run
    /// the start work and is held. Adding an offline core is [`Error::CpuOffline`], the master or
    /// a member [`Error::AlreadyInSync`].
    pub fn add(&mut self, cpu: CpuId) -> Result<(), Error> {
        self.ipiq.check_cpu(cpu)?;
        if cpu == self.master || self.members.contains(cpu) {
            return Err(Error::AlreadyInSync(cpu));
        }
        if !self.ipiq.is_online(cpu) {
            return Err(Error::CpuOffline(cpu));
        }
        let irq = self.ipiq.platform().irq_save();
        let result = self.send_enter(cpu).and_then(|()| self.wait_entered());
        self.ipiq.platform().irq_restore(irq);
        result
    }

    /// Releases the targets and returns once each has run its finish work (the seed's
    /// `lwkt_cpusync_finish`). [`Error::TimedOut`] if one never counts out.
    pub fn finish(mut self) -> Result<(), Error> {
        self.release_now();
        let ipiq = self.ipiq;
        let irq = ipiq.platform().irq_save();
        let me = ipiq.current_cpu();
        let targets: alloc::vec::Vec<CpuId> = self.members.iter().collect();
        let want = self.members.len();
        let mut watchdog = ipiq.watchdog();
        let result = loop {
            // Acquire: pairs with the targets' Release increments; their finish work is visible.
            if self.state.left.load(Ordering::Acquire) >= want {
                break Ok(());
            }
            ipiq.drain(me, false);
            if let Err(e) = ipiq.check_watchdog(&mut watchdog, me, &targets) {
                break Err(e);
            }
            ipiq.platform().relax();
        };
        ipiq.platform().irq_restore(irq);
        result
    }

    /// Releases the targets without waiting for them to count out.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if !self.released {
            self.released = true;
            // Release: everything the master did inside the rendezvous happens before the
            // targets' finish work (pairs with the Acquire in `Requeued::poll`).
            self.state.released.store(true, Ordering::Release);
        }
    }

    /// Sends the enter message to `target`; interrupts are disabled by the caller.
    fn send_enter(&mut self, target: CpuId) -> Result<(), Error> {
        let raw = Arc::into_raw(self.state.clone()) as usize;
        match self.ipiq.send(target, enter::<P>, raw, 0) {
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

    /// Waits until every member is held; interrupts are disabled by the caller.
    fn wait_entered(&mut self) -> Result<(), Error> {
        let ipiq = self.ipiq;
        let me = ipiq.current_cpu();
        let want = self.members.len();
        let targets: alloc::vec::Vec<CpuId> = self.members.iter().collect();
        let mut watchdog = ipiq.watchdog();
        loop {
            // Acquire: pairs with the targets' Release increments; their start work is visible.
            if self.state.entered.load(Ordering::Acquire) >= want {
                return Ok(());
            }
            ipiq.drain(me, false);
            ipiq.check_watchdog(&mut watchdog, me, &targets)?;
            ipiq.platform().relax();
        }
    }
}

impl<P: Platform> Drop for CpuSync<'_, P> {
    fn drop(&mut self) {
        // A cpusync dropped without finish (or after an error) must not hold its targets forever.
        self.release_now();
    }
}
