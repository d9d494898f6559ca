//! The bare SPSC ring (the limit for one sender and one target) and the ring plus the wake-up
//! fence (the limit the protocol allows).
//!
//! Invariant: `tail - head` is the number of published, not yet taken messages, between 0 and
//! the slot count; slots `head..tail` (mod slots) hold them. Only the producer writes `tail`,
//! only the consumer writes `head`.
//!
//! Any queue whose target may sleep needs a Dekker handshake between "I published a message"
//! and "I am about to sleep": the sender publishes, issues a SeqCst fence, then reads the
//! target's flag; the target clears its flag, fences, then looks at the queue once more. ipiq's
//! `npoll` handshake is that (`send`: one fence per message, `send_batch`: one per batch). The
//! fenced ring pays exactly that and nothing else: after the fence it reads a `polling` flag
//! that the target set before the run and never writes again, and counts (as a wake-up it would
//! need to send) every read that found it clear. So [`Fence::PerMessage`] is the limit for
//! `send` and [`Fence::PerBatch`] for `send_batch`.

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use super::{run, Consumer, Msg, Producer, Wakeups};
use crate::spin::{Pad, Spin};

/// Where the producer pays the wake-up protocol's SeqCst fence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Never: the bare ring.
    None,
    /// After every message (`send`'s cost).
    PerMessage,
    /// Once after every batch (`send_batch`'s cost; a single `send` is a batch of one).
    PerBatch,
}

struct Ring {
    /// Next slot the consumer takes; written by the consumer only.
    head: Pad<AtomicU64>,
    /// Next slot the producer fills; written by the producer only.
    tail: Pad<AtomicU64>,
    /// The target's "I am polling, no wake-up needed" flag (ipiq's `npoll`); set by the
    /// consumer before the run, read by a fenced producer after its fence.
    polling: Pad<AtomicBool>,
    /// Fenced reads that found `polling` clear (wake-ups the protocol would send); producer
    /// only.
    wakeups_needed: AtomicU64,
    /// Slot count minus one (the count is a power of two).
    mask: u64,
    slots: Box<[UnsafeCell<MaybeUninit<Msg>>]>,
}

// SAFETY: one producer and one consumer (the halves are not Clone); a slot is handed from
// producer to consumer by the Release store / Acquire load of `tail`, and back by the Release
// store / Acquire load of `head`, so no slot is ever accessed by both at once.
unsafe impl Sync for Ring {}

impl Ring {
    fn push(&self, msg: Msg) {
        // Relaxed: only this thread writes `tail`.
        let t = self.tail.0.load(Ordering::Relaxed);
        let mut spin = Spin::new();
        // Acquire: the consumer's Release store of `head` follows its read of the slot, so
        // the slot is free once we see the new `head`.
        while t - self.head.0.load(Ordering::Acquire) > self.mask {
            spin.spin();
        }
        // SAFETY: slot `t` is free (checked above) and only the producer writes slots.
        unsafe { (*self.slots[(t & self.mask) as usize].get()).write(msg) };
        // Release: publishes the slot's contents with the new tail.
        self.tail.0.store(t + 1, Ordering::Release);
    }

    fn pop(&self) -> Option<Msg> {
        // Relaxed: only this thread writes `head`.
        let h = self.head.0.load(Ordering::Relaxed);
        // Acquire: pairs with the producer's Release store of `tail` (the slot is written).
        if self.tail.0.load(Ordering::Acquire) == h {
            return None;
        }
        // SAFETY: slot `h` was published by the Release store of `tail` acquired above, and the
        // producer does not touch it again until `head` passes it.
        let msg = unsafe { (*self.slots[(h & self.mask) as usize].get()).assume_init_read() };
        // Release: the slot was read before the producer may reuse it.
        self.head.0.store(h + 1, Ordering::Release);
        Some(msg)
    }
}

/// A ring of `slots` (a power of two) and its two halves; `fence` says where the producer pays
/// the wake-up fence.
pub fn open(slots: usize, fence: Fence) -> (RingProducer, RingConsumer) {
    assert!(slots.is_power_of_two(), "ring slots must be a power of two");
    let ring = Arc::new(Ring {
        head: Pad::default(),
        tail: Pad::default(),
        polling: Pad::default(),
        wakeups_needed: AtomicU64::new(0),
        mask: slots as u64 - 1,
        slots: (0..slots)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
    });
    (
        RingProducer {
            ring: ring.clone(),
            fence,
        },
        RingConsumer { ring, fence },
    )
}

pub struct RingProducer {
    ring: Arc<Ring>,
    fence: Fence,
}

impl RingProducer {
    /// The wake-up handshake's sender side: fence, then look whether the target needs waking.
    fn announce(&self) {
        // SeqCst fence: orders our Release store of `tail` before the load of `polling` below
        // (store-load order, which Release/Acquire alone do not give); with the target's
        // "clear flag, fence, re-check tail" either it sees our message or we see its flag
        // clear. This is the fence ipiq's wake-up protocol needs.
        fence(Ordering::SeqCst);
        // Relaxed: the fence above orders it; the flag carries no data.
        if !self.ring.polling.0.load(Ordering::Relaxed) {
            // Relaxed: a statistic, read after the threads are joined.
            self.ring.wakeups_needed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Producer for RingProducer {
    fn send(&mut self, msg: Msg) {
        self.ring.push(msg);
        if self.fence != Fence::None {
            self.announce();
        }
    }

    fn send_batch(&mut self, batch: &[Msg]) {
        for &msg in batch {
            self.ring.push(msg);
            if self.fence == Fence::PerMessage {
                self.announce();
            }
        }
        if self.fence == Fence::PerBatch {
            self.announce();
        }
    }
}

pub struct RingConsumer {
    ring: Arc<Ring>,
    fence: Fence,
}

impl Consumer for RingConsumer {
    fn register(&mut self) {
        // Relaxed: the case's start barrier orders it before the producer's first read.
        self.ring.polling.0.store(true, Ordering::Relaxed);
    }

    fn run(&mut self, n: u64) {
        let mut spin = Spin::new();
        let mut done = 0;
        while done < n {
            match self.ring.pop() {
                Some(msg) => {
                    run(msg);
                    done += 1;
                }
                None => spin.spin(),
            }
        }
    }

    fn wakeups(&self) -> Wakeups {
        match self.fence {
            Fence::None => Wakeups::Never,
            // Relaxed: read after the producer's thread was joined.
            _ => Wakeups::Counted(self.ring.wakeups_needed.load(Ordering::Relaxed)),
        }
    }
}
