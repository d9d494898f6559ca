//! One single-producer/single-consumer ring: the messages one sender core queues for one target
//! core (the seed's `lwkt_ipiq`).
//!
//! # Invariant
//! `xindex <= rindex <= windex <= rindex + capacity`, all counting up forever (64 bits never wrap
//! in practice). Slots `rindex..windex` (mod capacity) hold queued, not yet taken messages.
//! - `windex` and the slots' sequence words are written only by the sender core, `rindex` and
//!   `xindex` only by the target core.
//! - **A slot publishes itself.** Each slot carries a sequence word beside its message: the
//!   sender writes message `i` (counting from 0) into slot `i mod capacity`, then stores `i + 1`
//!   into that slot's word with Release. The target, about to take message `rindex`, loads the
//!   word of slot `rindex mod capacity` with Acquire and takes the message only if the word is
//!   `rindex + 1`. Each slot's word only grows (`i + 1`, `i + 1 + capacity`, ...) and is written
//!   once per message, so a word equal to `rindex + 1` can only be message `rindex`'s
//!   publication; anything smaller means "not yet" (the word of an earlier lap, or 0). A
//!   message then crosses from sender to target as *one* cache line, the slot's: the target
//!   never reads the sender's index on its way (in a round trip, the message's line one way and
//!   `xindex`'s line back, the raw ping-pong's two transfers).
//! - A slot is written by the sender only while it is outside `rindex..windex`; the
//!   Release/Acquire pair on `rindex` hands it back (the target has copied the message out).
//! - `windex` still counts the messages pushed, for [`Fifo::issued`] (`outstanding`, `wait`'s
//!   validation, the spill numbering), not for publication: the sender stores it *before* the
//!   slot's word, so a target that took message `i` (Acquire of the word) has seen `windex >= i +
//!   1`, and so has anyone who later Acquires an `xindex` the target stored after that.
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
//! - The sender keeps the last `rindex` it read (`rindex_seen`): a lower bound, since indices
//!   only grow, so acting on it is safe (the sender may think the ring fuller than it is), and
//!   the sender reads the target's line only when that bound says the ring may be full.
//! - The sender's line (`windex`, `spill_seq`, `rindex_seen`) is read by no one on the message
//!   path: a push stores to it without a miss, and the target's polling reads only slot lines.
//!
//! # One allocation
//! A ring is one block ([`FifoBox`]): the header ([`Fifo`]: the indices, each side on lines of
//! its own) and then its slots. In the Hermit kernel every long-lived allocation lengthens the
//! allocator's search on each later allocation, the scheduler's included
//! (`docs/known-issues.md`), and a ring lives as long as the machine.

use alloc::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use core::mem::{ManuallyDrop, MaybeUninit};
use core::ops::Deref;
use core::ptr::{self, NonNull};

use crate::message::Message;
use crate::sync::{AtomicU64, AtomicUsize, CachePadded, Ordering, UnsafeCell};
use crate::Platform;

/// A ring of `capacity` (a power of two) message slots between one sender and one target core:
/// the header of a [`FifoBox`], whose slots follow it in the same allocation.
///
/// Layout: the read-only fields, the sender's line (`windex`, `spill_seq`, `rindex_seen`), the
/// target's line (`rindex`, `xindex_nested`, `depth`) and `xindex`, which waiters poll, never
/// share a cache line, and a slot (its sequence word and message, 32 bytes) never straddles
/// one: the header's size is a multiple of its alignment (128 bytes, `CachePadded`), so the
/// slots start on a line of their own, and each is aligned to its size. A push reads neither
/// the target's line (unless the ring may be full: the sender keeps the last `rindex` it saw)
/// nor anything else the target writes; a take reads only the slot; a message's completion
/// moves only `xindex`'s line.
pub(crate) struct Fifo<P: Platform> {
    /// `capacity - 1`. Read-only.
    mask: u64,
    /// The first of the `capacity` slots, which follow this header in its allocation
    /// ([`FifoBox`]). Read-only pointer, made from the allocation's own pointer (so it may
    /// reach every slot, where one made from a reference to the header may not); contents
    /// handed over by the slots' sequence words and `rindex` (module docs).
    slots: NonNull<Slot<P>>,
    /// Everything the sender core writes.
    sender: CachePadded<SenderSide>,
    /// What the target core writes, apart from `xindex`.
    target: CachePadded<TargetSide>,
    /// Messages whose function returned (for `wait`): advanced when the outermost function from
    /// this ring returns. On a line of its own, the one waiters poll, so that the target's other
    /// writes per message (`rindex`, `depth`) do not take it away from them between its stores.
    xindex: CachePadded<AtomicU64>,
}

/// One message slot: the message and the word that publishes it (module docs). Two share a
/// 64-byte line; aligned so that none spans two.
#[repr(C, align(32))]
struct Slot<P: Platform> {
    /// `i + 1` once message `i` (counting from 0) is in this slot; 0 before the first.
    /// Written only by the sender, with Release, after the message.
    seq: AtomicU64,
    /// The message; valid while `seq` says so and the target has not moved `rindex` past it.
    message: UnsafeCell<MaybeUninit<Message<P>>>,
}

impl<P: Platform> Slot<P> {
    /// A slot that has held no message yet.
    fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            message: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }
}

/// The fields of a [`Fifo`] that only its sender core writes.
struct SenderSide {
    /// Messages pushed so far: the next slot the sender writes. Stored before the slot's
    /// sequence word; read by counts (`issued`), not by the target's take.
    windex: AtomicU64,
    /// The sequence number of the last message the sender spilled for this ring (module docs).
    /// Written only on the spill path, never on a plain push.
    spill_seq: AtomicU64,
    /// The last `rindex` the sender read: a lower bound of the real one (rindex only grows), so
    /// `windex - rindex_seen` over-estimates how full the ring is. The sender reads the target's
    /// line only when this estimate says the ring may be too full, not on every push. Private
    /// to the sender core; atomic only so that the ring is `Sync` without unsafe.
    rindex_seen: AtomicU64,
}

/// The fields of a [`Fifo`] that only its target core writes, except `xindex` (on its own line).
struct TargetSide {
    /// Next slot the target takes; advanced (Release) once the slot's message has been copied out,
    /// which frees the slot for the sender.
    rindex: AtomicU64,
    /// `rindex` when the last *nested* function from this ring returned (module docs).
    xindex_nested: AtomicU64,
    /// How many functions from this ring are running on the target's stack right now (nesting).
    /// Private to the target core; atomic only so that the ring is `Sync` without unsafe.
    depth: AtomicUsize,
}

// SAFETY: the slots are handed between the two cores by the protocol above (the slots'
// sequence words one way, `rindex` the other); everything else is atomic, and the `slots`
// pointer is only read. `Message<P>` is plain data (a fn pointer and two words).
unsafe impl<P: Platform> Sync for Fifo<P> {}
// SAFETY: as above; a ring holds no reference to thread-local state.
unsafe impl<P: Platform> Send for Fifo<P> {}

/// An owned ring: one allocation holding the [`Fifo`] header and, after it, its slots
/// (module docs, "One allocation"). Dereferences to the header; dropping it frees both.
pub(crate) struct FifoBox<P: Platform>(NonNull<Fifo<P>>);

impl<P: Platform> FifoBox<P> {
    /// The allocation of a ring of `capacity` slots, and the offset of its first slot.
    fn layout(capacity: usize) -> (Layout, usize) {
        let slots = Layout::array::<Slot<P>>(capacity).ok();
        match slots.and_then(|slots| Layout::new::<Fifo<P>>().extend(slots).ok()) {
            Some((layout, offset)) => (layout.pad_to_align(), offset),
            // `Ipiq::new` clamps the capacity to 2^20 slots (32 MiB), far below the limit.
            None => panic!("ipiq: a FIFO of {capacity} slots is too large for one allocation"),
        }
    }

    /// A ring with `capacity` slots; `capacity` is a power of two, at least 2. Aborts through
    /// the allocator's error handler when memory is short, as `Box::new` does.
    pub(crate) fn new(capacity: usize) -> Self {
        debug_assert!(capacity.is_power_of_two() && capacity >= 2);
        let (layout, offset) = Self::layout(capacity);
        // SAFETY: the layout is not zero-sized (the header is not).
        let Some(block) = NonNull::new(unsafe { alloc(layout) }) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `offset` lies within the block (`Layout::extend` put `capacity` slots there),
        // so the pointer stays in bounds of the allocation it came from.
        let slots = unsafe { block.add(offset) }.cast::<Slot<P>>();
        for i in 0..capacity {
            // SAFETY: slot `i` lies within the block, aligned for a slot (`extend` aligned the
            // array), and is written once, before anything refers to it.
            unsafe { slots.add(i).write(Slot::new()) };
        }
        let header = block.cast::<Fifo<P>>();
        let fifo = Fifo {
            mask: capacity as u64 - 1,
            slots,
            sender: CachePadded(SenderSide {
                windex: AtomicU64::new(0),
                spill_seq: AtomicU64::new(0),
                rindex_seen: AtomicU64::new(0),
            }),
            target: CachePadded(TargetSide {
                rindex: AtomicU64::new(0),
                xindex_nested: AtomicU64::new(0),
                depth: AtomicUsize::new(0),
            }),
            xindex: CachePadded(AtomicU64::new(0)),
        };
        // SAFETY: the header goes at the block's start, which is aligned for it (the layout's
        // alignment is at least the header's), and is written once, before anything refers to
        // it.
        unsafe { header.write(fifo) };
        Self(header)
    }

    /// Gives up ownership: the pointer goes to [`FifoBox::from_raw`] to be freed.
    pub(crate) fn into_raw(self) -> *mut Fifo<P> {
        ManuallyDrop::new(self).0.as_ptr()
    }

    /// Takes back a ring given up with [`FifoBox::into_raw`].
    ///
    /// # Safety
    /// `fifo` came from `into_raw`, is taken back once, and nothing refers to the ring any more
    /// (it is freed when the box drops).
    pub(crate) unsafe fn from_raw(fifo: *mut Fifo<P>) -> Self {
        // SAFETY: `into_raw` gave out a non-null pointer (the caller's contract).
        Self(unsafe { NonNull::new_unchecked(fifo) })
    }
}

impl<P: Platform> Deref for FifoBox<P> {
    type Target = Fifo<P>;

    #[inline]
    fn deref(&self) -> &Fifo<P> {
        // SAFETY: the header was written in `new` and lives until `drop`, which needs `&mut self`.
        unsafe { self.0.as_ref() }
    }
}

impl<P: Platform> Drop for FifoBox<P> {
    /// Frees the header and the slots. Messages are plain data (`Copy`): nothing in a slot is
    /// dropped. A `send_boxed` closure still queued when the whole `Ipiq` is dropped is leaked,
    /// not run (drain before dropping).
    fn drop(&mut self) {
        let capacity = self.capacity() as usize;
        let slots = self.slots.as_ptr();
        let (layout, _) = Self::layout(capacity);
        let header = self.0.as_ptr();
        // SAFETY: this box owns the block and nothing refers to the ring any more (`&mut self`;
        // `from_raw`'s contract). The slots and the header were initialised in `new`, each is
        // dropped once (which ends loom's tracking of their atomics; nothing else to do), then
        // the block is freed with the layout it was allocated with (`capacity` is the header's,
        // set from the same `capacity` in `new`).
        unsafe {
            ptr::drop_in_place(ptr::slice_from_raw_parts_mut(slots, capacity));
            ptr::drop_in_place(header);
            dealloc(header.cast(), layout);
        }
    }
}

/// A message taken from the ring, to be run and then reported with [`Fifo::finish`].
pub(crate) struct Taken<P: Platform> {
    pub(crate) message: Message<P>,
    /// `rindex` after this message was taken.
    index: u64,
}

impl<P: Platform> Fifo<P> {
    #[inline]
    pub(crate) fn capacity(&self) -> u64 {
        self.mask + 1
    }

    /// The slot message `index` (counting from 0) goes into.
    #[inline]
    fn slot(&self, index: u64) -> &Slot<P> {
        let i = (index & self.mask) as usize;
        // SAFETY: `mask` is the capacity less one (read-only, set in `FifoBox::new` with a
        // power-of-two capacity), so slot `i <= mask` is one of the `capacity` slots initialised
        // there, which live as long as the header (`self`). `slots` was made from the
        // allocation's pointer, so it reaches them. Unchecked indexing, as the slots are not a
        // slice: this sits on every take and every empty poll.
        unsafe { self.slots.add(i).as_ref() }
    }

    /// Sender side: messages queued and not yet taken (exact: reads the target's `rindex`).
    ///
    /// Must be called only by the ring's sender core.
    #[inline]
    pub(crate) fn used(&self) -> u64 {
        // Relaxed: `windex` is written only by the sender, which is the caller.
        self.sender.windex.load(Ordering::Relaxed) - self.refresh_rindex()
    }

    /// Sender side: an upper bound of [`Fifo::used`] that does not touch the target's cache line
    /// (from the last `rindex` the sender read). Callers compare it with a threshold and call
    /// `used` only when the bound reaches it.
    ///
    /// Must be called only by the ring's sender core.
    #[inline]
    pub(crate) fn used_at_most(&self) -> u64 {
        // Relaxed: both fields are written only by the sender, which is the caller.
        let sender = &self.sender;
        sender.windex.load(Ordering::Relaxed) - sender.rindex_seen.load(Ordering::Relaxed)
    }

    /// Sender side: reads the target's `rindex` and remembers it; returns it.
    #[inline]
    fn refresh_rindex(&self) -> u64 {
        // Acquire: the target's Release store says it has copied the slots below it out, so the
        // sender may overwrite them.
        let r = self.target.rindex.load(Ordering::Acquire);
        // Relaxed: private to the sender core.
        self.sender.rindex_seen.store(r, Ordering::Relaxed);
        r
    }

    /// The write index: messages pushed so far, the sequence number of the last one queued.
    /// Any core may call it; on the sender core it is exact.
    #[inline]
    pub(crate) fn windex(&self) -> u64 {
        // Relaxed: a count that publishes nothing (the slots publish themselves). The sender
        // reads its own stores; another core's reading is a lower bound, and `issued` explains
        // why it is never below an `xindex` Acquired before it.
        self.sender.windex.load(Ordering::Relaxed)
    }

    /// Messages whose function has returned on the target (none of them still on its stack).
    #[inline]
    pub(crate) fn xindex(&self) -> u64 {
        // Acquire: pairs with the Release in `finish`, so a waiter that sees `xindex >= seq`
        // also sees every effect of the functions up to `seq`.
        self.xindex.load(Ordering::Acquire)
    }

    /// The seed's `xindex`, for a `wait` from inside a message function: `rindex` when the
    /// last function from this ring returned, nested or not (module docs).
    #[inline]
    pub(crate) fn xindex_in_message(&self) -> u64 {
        // Acquire, both: pair with the Release stores in `finish`, so a waiter that sees a value
        // >= seq also sees the effects of the function whose return stored it and of every
        // function from this ring that returned before it.
        let nested = self.target.xindex_nested.load(Ordering::Acquire);
        self.xindex.load(Ordering::Acquire).max(nested)
    }

    /// Every message ever accepted for this ring, queued in it or still in the sender's spill
    /// list: `max(windex, spill_seq)` (module docs). Any core may call it; it never decreases.
    #[inline]
    pub(crate) fn issued(&self) -> u64 {
        // Relaxed: the ordering outstanding() needs comes from its Acquire load of `xindex`
        // first. The target stored that xindex (Release) after taking every message below it,
        // each take an Acquire of a slot word the sender stored after `windex >= xindex`
        // (module docs). So that windex store happens before this load, which by coherence
        // returns it or a later one: `issued() >= xindex` read earlier. Nothing is read
        // through it.
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
        let sender = &self.sender;
        // Relaxed: windex and rindex_seen are written only by this core (the sender).
        let w = sender.windex.load(Ordering::Relaxed);
        if w - sender.rindex_seen.load(Ordering::Relaxed) > self.mask
            && w - self.refresh_rindex() > self.mask
        {
            return None;
        }
        let slot = self.slot(w);
        slot.message.with_mut(|cell| {
            // SAFETY: message `w` is outside `rindex..windex` (checked above against a value of
            // rindex this core read with Acquire, now or at an earlier push: rindex only grows,
            // so the slot was freed then, and that Acquire ordered the target's last read of it
            // before this write). The target reads this slot only once its word says `w + 1`,
            // which the store below publishes; until then only the sender touches it.
            unsafe { (*cell).write(message) };
        });
        // Relaxed: a count, not the publication (module docs). Stored before the slot's word,
        // whose Release orders it before any take of this message.
        sender.windex.store(w + 1, Ordering::Relaxed);
        // Release: publishes the slot's message (and the windex store above) to the target's
        // Acquire load of this word in `take` / `has_pending`.
        slot.seq.store(w + 1, Ordering::Release);
        Some(w + 1)
    }

    /// Target side: whether a published message is waiting.
    ///
    /// Must be called only by the ring's target core.
    #[inline]
    pub(crate) fn has_pending(&self) -> bool {
        // Relaxed: only this core (the target) writes rindex.
        let r = self.target.rindex.load(Ordering::Relaxed);
        // Acquire: pairs with the Release in `push` (a `true` answer is followed by a `take`).
        // The word is `r + 1` exactly when message `r` is published (module docs).
        self.slot(r).seq.load(Ordering::Acquire) == r + 1
    }

    /// Target side: takes the next message, if any, and marks its function as running.
    ///
    /// Must be called only by the ring's target core, with interrupts disabled.
    #[inline]
    pub(crate) fn take(&self) -> Option<Taken<P>> {
        // Relaxed: only this core writes rindex.
        let r = self.target.rindex.load(Ordering::Relaxed);
        let slot = self.slot(r);
        // Acquire: pairs with the sender's Release store of this word in `push`, making the
        // message beside it visible.
        if slot.seq.load(Ordering::Acquire) != r + 1 {
            return None;
        }
        let message = slot.message.with(|cell| {
            // SAFETY: the word says message `r` is in the slot, published by the sender's
            // Release store that this core just Acquired, and the sender does not write the slot
            // again until rindex moves past `r`.
            unsafe { (*cell).assume_init_read() }
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
            self.xindex.store(done, Ordering::Release);
        } else {
            // An outer function from this ring is still on the stack: only the seed's index
            // moves. Release: publishes the effects of this function and of those that returned
            // before it to message-context waiters (pairs with `xindex_in_message`).
            self.target.xindex_nested.store(done, Ordering::Release);
        }
    }
}

#[cfg(all(test, feature = "std", not(ipiq_loom)))]
mod tests {
    use super::*;
    use crate::host::HostPlatform;

    /// The layout the module docs rely on: two slots per 64-byte line, none across two lines,
    /// none on a line of the header, and `xindex` on a line apart from the target's other
    /// fields.
    #[test]
    fn slots_pair_up_within_a_line_and_xindex_has_its_own() {
        assert_eq!(core::mem::size_of::<Slot<HostPlatform>>(), 32);
        assert_eq!(core::mem::align_of::<Slot<HostPlatform>>(), 32);
        let fifo = FifoBox::<HostPlatform>::new(4);
        let line = |p: *const u8| p as usize / 64;
        let header = &*fifo as *const Fifo<HostPlatform> as *const u8;
        let header_end = header.wrapping_add(core::mem::size_of::<Fifo<HostPlatform>>() - 1);
        for i in 0..4 {
            let slot = fifo.slot(i) as *const Slot<HostPlatform> as *const u8;
            assert_eq!(line(slot), line(slot.wrapping_add(31)), "slot {i}");
            assert!(line(slot) > line(header_end), "slot {i}");
        }
        let x = &fifo.xindex.0 as *const AtomicU64 as *const u8;
        let r = &fifo.target.rindex as *const AtomicU64 as *const u8;
        let d = &fifo.target.depth as *const AtomicUsize as *const u8;
        assert_ne!(line(x), line(r));
        assert_ne!(line(x), line(d));
        let w = &fifo.sender.windex as *const AtomicU64 as *const u8;
        assert_ne!(line(w), line(r));
        assert_ne!(line(w), line(x));
    }
}
