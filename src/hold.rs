//! Holds: what keeps a core serving its queues inside the drain loop after its queues are empty
//! (the seed's `gd_cpusyncq`: a function and a word re-queued on the core itself).
//!
//! A cpusync target that has entered its rendezvous puts a [`Holder`] on its own hold list; every
//! drain polls the list after each pass, and a drain that may wait ([`Hold::ServeWhileHeld`])
//! keeps going round until every holder has let the core go. The drain loop knows nothing of
//! what a holder is: the cpusync (`cpusync.rs`) builds one from its rendezvous state.
//!
//! [`Hold::ServeWhileHeld`]: crate::drain::Hold::ServeWhileHeld

use core::fmt;

use crate::irq::{IrqOff, IrqsOff};
use crate::matrix::Ipiq;
use crate::platform::{CpuId, Platform};

/// One entry on a core's hold list: `poll(ipiq, word)` is called after every drain pass until
/// it returns `true` (the core is let go), then the entry is dropped, which calls
/// `release(word)` once.
pub(crate) struct Holder<P: Platform> {
    poll: fn(&Ipiq<P>, usize) -> bool,
    release: fn(usize),
    word: usize,
}

impl<P: Platform> Holder<P> {
    /// A hold polled with `poll(ipiq, word)` and given up with `release(word)`.
    ///
    /// # Safety
    /// `word` stays valid for `poll` (on the holding core, interrupts disabled) until `release`
    /// runs, and `release(word)` may be called exactly once, from the entry's `Drop`, on the
    /// holding core or, if the whole `Ipiq` is dropped first, from the thread dropping it.
    pub(crate) unsafe fn new(
        poll: fn(&Ipiq<P>, usize) -> bool,
        release: fn(usize),
        word: usize,
    ) -> Self {
        Self {
            poll,
            release,
            word,
        }
    }

    /// Polls the hold once; `true` once the core is let go.
    ///
    /// Context: the holding core's drain loop, interrupts disabled.
    #[inline]
    fn poll(&self, ipiq: &Ipiq<P>) -> bool {
        (self.poll)(ipiq, self.word)
    }
}

impl<P: Platform> Drop for Holder<P> {
    fn drop(&mut self) {
        (self.release)(self.word);
    }
}

impl<P: Platform> fmt::Debug for Holder<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holder").field("word", &self.word).finish()
    }
}

impl<P: Platform> Ipiq<P> {
    /// Polls the cpusyncs `me` is held in; returns whether any still holds it.
    ///
    /// Allocation-free: a held target calls this on every pass of its hold loop, with interrupts
    /// disabled. Allocating there (a fresh list per pass) made every held target take the kernel
    /// allocator's lock several times per pass: with a few held targets the passes slowed down
    /// some fifty-fold under QEMU, and a target still entering (whose `hold` push allocated)
    /// or a master allocating its next rendezvous queued behind them for milliseconds. The list
    /// is taken out while its entries are polled (a poll runs finish work, which may call into
    /// ipiq), filtered in place and put back with its capacity, so the next `hold` push does
    /// not allocate either.
    pub(crate) fn poll_holds(&self, me: CpuId, irqs: IrqsOff<'_>) -> bool {
        let holds = &self.cpus[me].holds;
        // SAFETY: our own core (interrupts are disabled: `irqs`); the closure does not call into
        // ipiq. The common case (nothing holds the core) costs one look and no store: the list
        // may share a cache line with what senders read on every send (`online`, `npoll`),
        // which a store on every drain pass would take from them.
        if unsafe { holds.with(irqs, |q| q.is_empty()) } {
            return false;
        }
        // SAFETY: as above.
        let mut list = unsafe { holds.with(irqs, core::mem::take) };
        if !list.is_empty() {
            list.retain(|entry| !entry.poll(self));
        }
        let held = !list.is_empty();
        // SAFETY: as above. Entries held by the polls themselves (none today) are kept, after
        // the older ones; otherwise the list goes back as it is, capacity and all (the empty
        // list `take` left behind never allocated).
        unsafe {
            holds.with(irqs, |q| {
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
    pub(crate) fn hold(&self, me: CpuId, entry: Holder<P>) {
        // A message function gets no proof from the drain that runs it: take one here (interrupts
        // are off already, so this only reads and restores the flag; a rendezvous entry is rare).
        let irq = IrqOff::new(&self.platform);
        // SAFETY: called on core `me` from a message function; the closure does not call into
        // ipiq.
        unsafe { self.cpus[me].holds.with(irq.token(), |q| q.push(entry)) };
    }
}
