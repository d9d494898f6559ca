//! One single-producer/single-consumer ring: the messages one sender core queues for one target
//! core (the seed's `lwkt_ipiq`).
//!
//! # Invariant
//! `xindex <= rindex <= windex <= rindex + capacity`, all counting up forever (64 bits never wrap
//! in practice). Slots `rindex..windex` (mod capacity) hold published, not yet taken messages.
//! - `windex` is written only by the sender core, `rindex` and `xindex` only by the target core.
//! - A slot is written by the sender only while it is outside `rindex..windex`, and read by the
//!   target only while it is inside; the Release/Acquire pairs on `windex` and `rindex` hand the
//!   slot from one to the other.
//! - `xindex` counts messages whose function has *returned* (for `wait` from thread context): a
//!   message is taken (`rindex` advances) before its function runs, so a nested drain of the
//!   same ring from inside that function continues with the next message, but `xindex` only
//!   moves when the outermost function from this ring returns (see [`Fifo::finish`]).
//! - `xindex_nested` is the seed's `xindex`: `rindex` as it was when the last function from this
//!   ring returned, nested or not. It is stored only when a *nested* function returns (the
//!   outermost one stores `xindex`, which is then at least as large), so the common, unnested
//!   drain stores nothing extra; [`Fifo::xindex_in_message`] reads the larger of the two. Once it
//!   reaches `seq`, every message up to `seq` has started, and each has returned unless it is
//!   still on the target's stack beneath the nested drain that ran later ones (by stack
//!   discipline, a function that started earlier and is not beneath the one that just returned
//!   has returned already). `wait` from inside a message function uses it: see `Ipiq::wait`.
//! - `spill_seq` is the sequence number the sender's last *spilled* message has (a message that
//!   found the ring full inside a message function and waits in the sender's spill list; see
//!   `send.rs`, `spill.rs`). While that list holds messages for this ring, pushes come only from it, so
//!   `windex` plus the list's length is `spill_seq`; once it is empty, `spill_seq <= windex`. Hence
//!   `max(windex, spill_seq)` ([`Fifo::issued`]) counts every message ever accepted for this
//!   ring, with one index that never goes down: moving a message from the list into the ring
//!   changes neither. `outstanding` reads `xindex` first, then `issued`: both only grow and
//!   `xindex <= issued` at any instant, so the later `issued` is at least the earlier `xindex`.
//! - Each side keeps the last index of the other side it read (`rindex_seen`, `windex_seen`):
//!   lower bounds, since indices only grow, so acting on them is safe (a sender may think the
//!   ring fuller than it is, a target emptier), and each side reads the other's cache line only
//!   when its bound runs out.
//! - The sender keeps its own copy of `windex` (`next`, always equal to it: both are written
//!   only by the sender, in `push`) beside `rindex_seen`, on a line the target never reads. A
//!   push then only *stores* to the line the target polls: loading it back cost the sender a
//!   miss per message on the host, where the target's polling reads took the line away.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use crate::message::Message;
use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering, UnsafeCell};
use crate::Platform;

/// A ring of `capacity` (a power of two) message slots between one sender and one target core.
///
/// Layout: the read-only fields, the sender's published line (`windex`, `spill_seq`), the
/// sender's private line (`next`, `rindex_seen`) and the target's line (`rindex`, `xindex`,
/// `xindex_nested`, `depth`) never share a cache line; a push reads neither the target's line
/// (unless the ring may be full: the sender keeps the last `rindex` it saw) nor its own
/// published one (it keeps `next`).
pub(crate) struct Fifo<P: Platform> {
    /// `capacity - 1`. Read-only.
    mask: u64,
    /// The slots. Read-only pointer; contents handed over by the index protocol.
    slots: Box<[UnsafeCell<MaybeUninit<Message<P>>>]>,
    /// What the sender core writes for others to read.
    sender: CachePadded<SenderSide>,
    /// What the sender core writes for itself only.
    sender_own: CachePadded<SenderOwn>,
    /// Everything the target core writes.
    target: CachePadded<TargetSide>,
}

/// The fields of a [`Fifo`] that only its sender core writes and others read.
struct SenderSide {
    /// Next slot the sender writes; published with Release after the slot is written.
    windex: AtomicU64,
    /// The sequence number of the last message the sender spilled for this ring (module docs).
    /// Written only on the spill path, never on a plain push.
    spill_seq: AtomicU64,
}

/// The fields of a [`Fifo`] that only its sender core reads and writes. Atomic only so that the
/// ring is `Sync` without unsafe; every access is Relaxed.
struct SenderOwn {
    /// The sender's copy of `windex` (module docs): equal to it at all times, read instead of it.
    next: AtomicU64,
    /// The last `rindex` the sender read: a lower bound of the real one (rindex only grows), so
    /// `next - rindex_seen` over-estimates how full the ring is. The sender reads the target's
    /// line only when this estimate says the ring may be too full, not on every push.
    rindex_seen: AtomicU64,
}

/// The fields of a [`Fifo`] that only its target core writes.
struct TargetSide {
    /// Next slot the target takes; advanced (Release) once the slot's message has been copied out,
    /// which frees the slot for the sender.
    rindex: AtomicU64,
    /// Messages whose function returned (for `wait`): advanced when the outermost function from
    /// this ring returns.
    xindex: AtomicU64,
    /// `rindex` when the last *nested* function from this ring returned (module docs).
    xindex_nested: AtomicU64,
    /// The last `windex` the target read: a lower bound of the real one. `take` reads the
    /// sender's line only when it has taken everything up to this. Private to the target core.
    windex_seen: AtomicU64,
    /// How many functions from this ring are running on the target's stack right now (nesting).
    /// Private to the target core; atomic only so that the ring is `Sync` without unsafe.
    depth: AtomicUsize,
}

// SAFETY: the slots are handed between the two cores by the index protocol above; everything
// else is atomic. `Message<P>` is plain data (a fn pointer and two words).
unsafe impl<P: Platform> Sync for Fifo<P> {}
// SAFETY: as above; a ring holds no reference to thread-local state.
unsafe impl<P: Platform> Send for Fifo<P> {}

/// A message taken from the ring, to be run and then reported with [`Fifo::finish`].
pub(crate) struct Taken<P: Platform> {
    pub(crate) message: Message<P>,
    /// `rindex` after this message was taken.
    index: u64,
}

impl<P: Platform> Fifo<P> {
    /// A ring with `capacity` slots; `capacity` is a power of two, at least 2.
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        let slots: Vec<_> = (0..capacity)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect();
        Self {
            mask: capacity as u64 - 1,
            slots: slots.into_boxed_slice(),
            sender: CachePadded(SenderSide {
                windex: AtomicU64::new(0),
                spill_seq: AtomicU64::new(0),
            }),
            sender_own: CachePadded(SenderOwn {
                next: AtomicU64::new(0),
                rindex_seen: AtomicU64::new(0),
            }),
            target: CachePadded(TargetSide {
                rindex: AtomicU64::new(0),
                xindex: AtomicU64::new(0),
                xindex_nested: AtomicU64::new(0),
                windex_seen: AtomicU64::new(0),
                depth: AtomicUsize::new(0),
            }),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Sender side: messages queued and not yet taken (exact: reads the target's `rindex`).
    #[inline]
    pub(crate) fn used(&self) -> u64 {
        // Relaxed: `next` is the sender's own (the caller's).
        self.sender_own.next.load(Ordering::Relaxed) - self.refresh_rindex()
    }

    /// Sender side: an upper bound of [`Fifo::used`] that does not touch the target's cache line
    /// (from the last `rindex` the sender read). Callers compare it with a threshold and call
    /// `used` only when the bound reaches it.
    #[inline]
    pub(crate) fn used_at_most(&self) -> u64 {
        // Relaxed: both fields are the sender's own (the caller's).
        let own = &self.sender_own;
        own.next.load(Ordering::Relaxed) - own.rindex_seen.load(Ordering::Relaxed)
    }

    /// Sender side: reads the target's `rindex` and remembers it; returns it.
    #[inline]
    fn refresh_rindex(&self) -> u64 {
        // Acquire: the target's Release store says it has copied the slots below it out, so the
        // sender may overwrite them.
        let r = self.target.rindex.load(Ordering::Acquire);
        // Relaxed: private to the sender core.
        self.sender_own.rindex_seen.store(r, Ordering::Relaxed);
        r
    }

    /// Sender side: the write index (the sequence number of the last queued message).
    #[inline]
    pub(crate) fn windex(&self) -> u64 {
        // Acquire: callers other than the sender (wait validation) read it to compare with
        // sequence numbers the sender handed out; pairs with the Release in `push`.
        self.sender.windex.load(Ordering::Acquire)
    }

    /// Messages whose function has returned on the target (none of them still on its stack).
    #[inline]
    pub(crate) fn xindex(&self) -> u64 {
        // Acquire: pairs with the Release in `finish`, so a waiter that sees `xindex >= seq`
        // also sees every effect of the functions up to `seq`.
        self.target.xindex.load(Ordering::Acquire)
    }

    /// The seed's `xindex`, for a `wait` from inside a message function: `rindex` when the
    /// last function from this ring returned, nested or not (module docs).
    #[inline]
    pub(crate) fn xindex_in_message(&self) -> u64 {
        // Acquire, both: pair with the Release stores in `finish`, so a waiter that sees a value
        // >= seq also sees the effects of the function whose return stored it and of every
        // function from this ring that returned before it.
        let nested = self.target.xindex_nested.load(Ordering::Acquire);
        self.target.xindex.load(Ordering::Acquire).max(nested)
    }

    /// Every message ever accepted for this ring, queued in it or still in the sender's spill
    /// list: `max(windex, spill_seq)` (module docs). Any core may call it; it never decreases.
    #[inline]
    pub(crate) fn issued(&self) -> u64 {
        // Relaxed: the ordering outstanding() needs comes from its Acquire load of `xindex`
        // first. The target read (Acquire) a windex >= that xindex before it stored it
        // (Release), so that read happens before this load, which by coherence returns the same
        // windex or a later one: `issued() >= xindex` read earlier. Nothing is read through it.
        let w = self.sender.windex.load(Ordering::Relaxed);
        // Relaxed: a count that publishes nothing. A caller whose call happens after a spill
        // sees at least its value (coherence); a racing spill may be missed, as any message
        // accepted after the read began may be.
        w.max(self.sender.spill_seq.load(Ordering::Relaxed))
    }

    /// Sender side: a message for this ring went to the sender's spill list and will have
    /// sequence number `seq` once pushed.
    ///
    /// Must be called only by the ring's sender core, with interrupts disabled.
    #[inline]
    pub(crate) fn note_spilled(&self, seq: u64) {
        // Relaxed: only the sender writes it; readers only count with it (see `issued`).
        self.sender.spill_seq.store(seq, Ordering::Relaxed);
    }

    /// Sender side: queues `message` if a slot is free; returns the new write index.
    ///
    /// Must be called only by the ring's sender core, with interrupts disabled (so no nested
    /// sender on the same core interleaves).
    #[inline]
    pub(crate) fn push(&self, message: Message<P>) -> Option<u64> {
        // Relaxed: `next` (equal to windex) and rindex_seen are the sender's own (the caller's).
        let w = self.sender_own.next.load(Ordering::Relaxed);
        if w - self.sender_own.rindex_seen.load(Ordering::Relaxed) > self.mask
            && w - self.refresh_rindex() > self.mask
        {
            return None;
        }
        self.slots[(w & self.mask) as usize].with_mut(|slot| {
            // SAFETY: slot `w` is outside `rindex..windex` (checked above against a value of
            // rindex this core read with Acquire, now or at an earlier push: rindex only grows, so
            // the slot was freed then, and that Acquire ordered the target's last read of it
            // before this write), so only the sender touches it until the Release store below
            // publishes it.
            unsafe { (*slot).write(message) };
        });
        // Release: publishes the slot contents before the new index (pairs with the Acquire in
        // `take`).
        self.sender.windex.store(w + 1, Ordering::Release);
        // Relaxed: the sender's own copy (module docs).
        self.sender_own.next.store(w + 1, Ordering::Relaxed);
        Some(w + 1)
    }

    /// Target side: whether a published message is waiting.
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        // Acquire: pairs with the Release in `push` (a `true` answer is followed by a `take`).
        self.sender.windex.load(Ordering::Acquire) != self.target.rindex.load(Ordering::Relaxed)
    }

    /// Target side: takes the next message, if any, and marks its function as running.
    ///
    /// Must be called only by the ring's target core, with interrupts disabled.
    #[inline]
    pub(crate) fn take(&self) -> Option<Taken<P>> {
        // Relaxed: only this core writes rindex.
        let r = self.target.rindex.load(Ordering::Relaxed);
        // Relaxed: private to this core.
        if self.target.windex_seen.load(Ordering::Relaxed) == r {
            // Acquire: pairs with the sender's Release store of windex, making the slots below
            // it visible.
            let w = self.sender.windex.load(Ordering::Acquire);
            if w == r {
                return None;
            }
            // Relaxed: private to this core.
            self.target.windex_seen.store(w, Ordering::Relaxed);
        }
        let message = self.slots[(r & self.mask) as usize].with(|slot| {
            // SAFETY: slot `r` is inside `rindex..windex`: published by a Release store of windex
            // that this core Acquired (now, or when it read `windex_seen` > r earlier), and the
            // sender does not write it until rindex moves past it.
            unsafe { (*slot).assume_init_read() }
        });
        // Relaxed load and store, no locked RMW: the depth is private to this core, which runs
        // this with interrupts disabled.
        let depth = &self.target.depth;
        depth.store(depth.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // Release: the slot was copied out above; this frees it for the sender (pairs with the
        // sender's Acquire load of rindex).
        self.target.rindex.store(r + 1, Ordering::Release);
        Some(Taken {
            message,
            index: r + 1,
        })
    }

    /// Target side: the function of `taken` returned. Advances `xindex` once no function from
    /// this ring is still running further up the stack, so a `wait` from thread context never
    /// returns while an older message's function is still on the stack (invariant I5 under
    /// nesting). A nested function's return stores the seed's index, `xindex_nested`, instead.
    ///
    /// Must be called only by the ring's target core, with interrupts disabled.
    #[inline]
    pub(crate) fn finish(&self, taken: Taken<P>) {
        // Relaxed load and store: the depth is private to this core (see `take`).
        let depth = &self.target.depth;
        let now = depth.load(Ordering::Relaxed) - 1;
        depth.store(now, Ordering::Relaxed);
        // Relaxed: only this core writes rindex.
        let done = self.target.rindex.load(Ordering::Relaxed);
        debug_assert!(done >= taken.index);
        if now == 0 {
            // Every function taken from this ring has returned (the outermost one just did, and
            // nested ones return before it), so all up to the current rindex are done.
            // Release: publishes the functions' effects to waiters (pairs with `xindex()`).
            self.target.xindex.store(done, Ordering::Release);
        } else {
            // An outer function from this ring is still on the stack: only the seed's index
            // moves. Release: publishes the effects of this function and of those that returned
            // before it to message-context waiters (pairs with `xindex_in_message`).
            self.target.xindex_nested.store(done, Ordering::Release);
        }
    }
}

impl<P: Platform> Drop for Fifo<P> {
    fn drop(&mut self) {
        // Messages are plain data (`Copy`): nothing to drop. A `send_boxed` closure still queued
        // when the whole `Ipiq` is dropped is leaked, not run (drain before dropping).
    }
}
