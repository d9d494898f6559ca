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
//! - `xindex` counts messages whose function has *returned* (for `wait`): a message is taken
//!   (`rindex` advances) before its function runs, so a nested drain of the same ring from inside
//!   that function continues with the next message, but `xindex` only moves when the outermost
//!   function from this ring returns (see [`Fifo::finish`]).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::mem::MaybeUninit;

use crate::message::Message;
use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering, UnsafeCell};
use crate::Platform;

/// A ring of `capacity` (a power of two) message slots between one sender and one target core.
///
/// Layout: the read-only fields, the sender's line (`windex`) and the target's line (`rindex`,
/// `xindex`, `depth`) never share a cache line, so a push touches the target's line only to
/// read `rindex`.
pub(crate) struct Fifo<P: Platform> {
    /// `capacity - 1`. Read-only.
    mask: u64,
    /// The slots. Read-only pointer; contents handed over by the index protocol.
    slots: Box<[UnsafeCell<MaybeUninit<Message<P>>>]>,
    /// Next slot the sender writes; published with Release after the slot is written.
    /// Written by the sender core only.
    windex: CachePadded<AtomicU64>,
    /// Everything the target core writes.
    target: CachePadded<TargetSide>,
}

/// The fields of a [`Fifo`] that only its target core writes.
struct TargetSide {
    /// Next slot the target takes; advanced (Release) once the slot's message has been copied out,
    /// which frees the slot for the sender.
    rindex: AtomicU64,
    /// Messages whose function returned (for `wait`).
    xindex: AtomicU64,
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
            windex: CachePadded(AtomicU64::new(0)),
            target: CachePadded(TargetSide {
                rindex: AtomicU64::new(0),
                xindex: AtomicU64::new(0),
                depth: AtomicUsize::new(0),
            }),
        }
    }

    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// Sender side: messages queued and not yet taken.
    #[inline]
    pub(crate) fn used(&self) -> u64 {
        // Relaxed for windex: only the sender (the caller) writes it. Acquire for rindex: the
        // target's Release store says it has copied the slot out, so the sender may overwrite it.
        self.windex.load(Ordering::Relaxed) - self.target.rindex.load(Ordering::Acquire)
    }

    /// Sender side: the write index (the sequence number of the last queued message).
    #[inline]
    pub(crate) fn windex(&self) -> u64 {
        // Acquire: callers other than the sender (wait validation) read it to compare with
        // sequence numbers the sender handed out; pairs with the Release in `push`.
        self.windex.load(Ordering::Acquire)
    }

    /// Messages whose function has returned on the target.
    #[inline]
    pub(crate) fn xindex(&self) -> u64 {
        // Acquire: pairs with the Release in `finish`, so a waiter that sees `xindex >= seq`
        // also sees every effect of the functions up to `seq`.
        self.target.xindex.load(Ordering::Acquire)
    }

    /// Sender side: queues `message` if a slot is free; returns the new write index.
    ///
    /// Must be called only by the ring's sender core, with interrupts disabled (so no nested
    /// sender on the same core interleaves).
    #[inline]
    pub(crate) fn push(&self, message: Message<P>) -> Option<u64> {
        let w = self.windex.load(Ordering::Relaxed);
        if w - self.target.rindex.load(Ordering::Acquire) > self.mask {
            return None;
        }
        self.slots[(w & self.mask) as usize].with_mut(|slot| {
            // SAFETY: slot `w` is outside `rindex..windex` (checked above, and the Acquire load of
            // rindex ordered the target's last read of it before this write), so only the sender
            // touches it until the Release store below publishes it.
            unsafe { (*slot).write(message) };
        });
        // Release: publishes the slot contents before the new index (pairs with the Acquire in
        // `take`).
        self.windex.store(w + 1, Ordering::Release);
        Some(w + 1)
    }

    /// Target side: whether a published message is waiting.
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        // Acquire: pairs with the Release in `push` (a `true` answer is followed by a `take`).
        self.windex.load(Ordering::Acquire) != self.target.rindex.load(Ordering::Relaxed)
    }

    /// Target side: takes the next message, if any, and marks its function as running.
    ///
    /// Must be called only by the ring's target core, with interrupts disabled.
    #[inline]
    pub(crate) fn take(&self) -> Option<Taken<P>> {
        // Relaxed: only this core writes rindex.
        let r = self.target.rindex.load(Ordering::Relaxed);
        // Acquire: pairs with the sender's Release store of windex, making the slot visible.
        if self.windex.load(Ordering::Acquire) == r {
            return None;
        }
        let message = self.slots[(r & self.mask) as usize].with(|slot| {
            // SAFETY: slot `r` is inside `rindex..windex`, published by the Acquire above, and the
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
    /// this ring is still running further up the stack, so `wait` never returns while an older
    /// message's function is still on the stack (invariant I5 under nesting).
    #[inline]
    pub(crate) fn finish(&self, taken: Taken<P>) {
        // Relaxed load and store: the depth is private to this core (see `take`).
        let depth = &self.target.depth;
        let now = depth.load(Ordering::Relaxed) - 1;
        depth.store(now, Ordering::Relaxed);
        let outer = now == 0;
        if outer {
            // Every function taken from this ring has returned (the outermost one just did, and
            // nested ones return before it), so all up to the current rindex are done.
            let done = self.target.rindex.load(Ordering::Relaxed);
            debug_assert!(done >= taken.index);
            // Release: publishes the functions' effects to waiters (pairs with `xindex()`).
            self.target.xindex.store(done, Ordering::Release);
        }
    }
}

impl<P: Platform> Drop for Fifo<P> {
    fn drop(&mut self) {
        // Messages are plain data (`Copy`): nothing to drop. A `send_boxed` closure still queued
        // when the whole `Ipiq` is dropped is leaked, not run (drain before dropping).
    }
}
