//! Holds: what keeps a core serving its queues inside the drain loop after its queues are empty
//! (the seed's `gd_cpusyncq`: a function and a word re-queued on the core itself).
//!
//! A cpusync target that has entered its rendezvous puts a [`Holder`] on its own hold list; every
//! drain polls the list after each pass, and a drain that may wait ([`Hold::ServeWhileHeld`])
//! keeps going round until every holder has let the core go. The drain loop knows nothing of
//! what a holder is: the cpusync (`cpusync.rs`) builds one from its rendezvous state.
//!
//! [`Hold::ServeWhileHeld`]: crate::drain::Hold::ServeWhileHeld

use alloc::vec::Vec;
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

/// Holds a core can be under at once before its hold list allocates (nesting: a held core
/// serving a second master's cpusync holds two).
pub(crate) const HOLD_SLOTS: usize = 4;

/// A core's hold list, oldest hold first: the first [`HOLD_SLOTS`] entries inline, the rest in
/// a vector that allocates only when more than [`HOLD_SLOTS`] cpusyncs hold the core at once,
/// and then keeps its capacity. Nothing is refused or dropped when the inline entries are full:
/// a hold is an entry that only its master's release may end.
///
/// Invariant: the inline entries in use are a prefix (`first[..n]` are `Some`), and `more` is
/// empty unless all of `first` is in use. So the list is empty exactly when `first[0]` is
/// `None`, the one look a drain pass makes when nothing holds its core.
///
/// Inline, not a vector given room at start-up, which would be one long-lived allocation per
/// core: in the Hermit kernel each lengthens the allocator's search on every later allocation
/// (`docs/known-issues.md`).
pub(crate) struct HoldList<P: Platform> {
    /// The oldest [`HOLD_SLOTS`] holds, `Some` ones first.
    first: [Option<Holder<P>>; HOLD_SLOTS],
    /// The holds past the first [`HOLD_SLOTS`], oldest first.
    more: Vec<Holder<P>>,
}

impl<P: Platform> Default for HoldList<P> {
    /// An empty list; allocates nothing.
    fn default() -> Self {
        Self {
            first: [const { None }; HOLD_SLOTS],
            more: Vec::new(),
        }
    }
}

impl<P: Platform> HoldList<P> {
    /// Whether nothing holds the core: one load.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.first[0].is_none()
    }

    /// How many holds the list has.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.first.iter().filter(|entry| entry.is_some()).count() + self.more.len()
    }

    /// Adds `entry` after the others: into the first free inline entry, or, with all of them in
    /// use, onto `more` (which allocates the first time it grows).
    pub(crate) fn push(&mut self, entry: Holder<P>) {
        match self.first.iter_mut().find(|slot| slot.is_none()) {
            // `more` is empty while an inline entry is free (the invariant): order is kept.
            Some(slot) => *slot = Some(entry),
            None => self.more.push(entry),
        }
    }

    /// Keeps the holds for which `keep` returns `true`, in their order; the others are dropped
    /// (which releases them). `more` keeps its capacity.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Holder<P>) -> bool) {
        let mut kept = 0;
        for i in 0..HOLD_SLOTS {
            let Some(entry) = self.first[i].take() else {
                break;
            };
            if keep(&entry) {
                self.first[kept] = Some(entry);
                kept += 1;
            }
        }
        self.more.retain(keep);
        // Refill the inline entries the dropped holds left, from the front of `more`.
        let moved = (HOLD_SLOTS - kept).min(self.more.len());
        for (slot, entry) in self.first[kept..].iter_mut().zip(self.more.drain(..moved)) {
            *slot = Some(entry);
        }
    }

    /// Moves every hold of `newer` after this list's own.
    pub(crate) fn append(&mut self, newer: HoldList<P>) {
        let HoldList { first, more } = newer;
        for entry in first.into_iter().flatten().chain(more) {
            self.push(entry);
        }
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
    /// ipiq), filtered in place and put back as it is (its overflow vector's capacity too), so
    /// the next `hold` push does not allocate either.
    pub(crate) fn poll_holds(&self, me: CpuId, irqs: IrqsOff<'_>) -> bool {
        let holds = &self.cpus[me].side.holds;
        // SAFETY: our own core (interrupts are disabled: `irqs`); the closure does not call into
        // ipiq. The common case (nothing holds the core) costs one look and no store.
        if unsafe { holds.with(irqs, |q| q.is_empty()) } {
            return false;
        }
        // The empty list `take` leaves behind allocates nothing.
        // SAFETY: as above.
        let mut list = unsafe { holds.with(irqs, core::mem::take) };
        list.retain(|entry| !entry.poll(self));
        let held = !list.is_empty();
        // SAFETY: as above. The list goes back as it is; entries held by the polls themselves
        // (none today) are kept, after the older ones.
        unsafe {
            holds.with(irqs, |q| {
                let newer = core::mem::replace(q, list);
                if !newer.is_empty() {
                    q.append(newer);
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
        unsafe {
            self.cpus[me]
                .side
                .holds
                .with(irq.token(), |q| q.push(entry))
        };
    }
}

#[cfg(all(test, feature = "std", not(ipiq_loom)))]
mod tests {
    use super::*;
    use crate::host::HostPlatform;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Releases per word (each test uses words of its own).
    static RELEASED: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

    fn never(_: &Ipiq<HostPlatform>, _: usize) -> bool {
        false
    }

    fn release(word: usize) {
        // Relaxed: a test counter, read after the drops on the same thread.
        RELEASED[word].fetch_add(1, Ordering::Relaxed);
    }

    fn holder(word: usize) -> Holder<HostPlatform> {
        // SAFETY: the word is a plain index; `never` and `release` read nothing through it.
        unsafe { Holder::new(never, release, word) }
    }

    fn words(list: &HoldList<HostPlatform>) -> Vec<usize> {
        let first = list.first.iter().flatten();
        first.chain(list.more.iter()).map(|h| h.word).collect()
    }

    fn released(word: usize) -> usize {
        // Relaxed: see `release`.
        RELEASED[word].load(Ordering::Relaxed)
    }

    /// More holds than inline entries: none refused or lost, order kept; the ones a retain
    /// drops are released once each and the rest move up into the inline entries.
    #[test]
    fn holds_past_the_inline_entries_are_kept_in_order() {
        let mut list = HoldList::default();
        assert!(list.is_empty());
        for word in 0..HOLD_SLOTS + 2 {
            list.push(holder(word));
        }
        assert_eq!(list.len(), HOLD_SLOTS + 2);
        assert_eq!(words(&list), [0, 1, 2, 3, 4, 5]);
        list.retain(|h| h.word % 2 == 1);
        assert_eq!(words(&list), [1, 3, 5]);
        assert!(list.more.is_empty() && list.first[HOLD_SLOTS - 1].is_none());
        assert_eq!((0..6).map(released).collect::<Vec<_>>(), [1, 0, 1, 0, 1, 0]);
        let mut newer = HoldList::default();
        newer.push(holder(6));
        newer.push(holder(7));
        list.append(newer);
        assert_eq!(words(&list), [1, 3, 5, 6, 7]);
        list.retain(|_| false);
        assert!(list.is_empty());
        assert_eq!(list.len(), 0);
        assert_eq!((0..8).map(released).collect::<Vec<_>>(), [1; 8]);
    }

    /// An empty list and one within the inline entries allocate nothing.
    #[test]
    fn a_few_holds_allocate_nothing() {
        let mut list = HoldList::default();
        for word in 8..8 + HOLD_SLOTS {
            list.push(holder(word));
        }
        assert_eq!(list.more.capacity(), 0);
        assert!(!list.is_empty());
        list.retain(|h| h.word != 8);
        assert_eq!(words(&list), [9, 10, 11]);
        drop(list);
        assert_eq!((8..12).map(released).collect::<Vec<_>>(), [1; 4]);
    }
}
