//! The peers ipiq is measured against, each behind the small interface the cases drive.
//!
//! Every peer carries the same message as an ipiq `Message`: a function and two words. A peer
//! for streaming is a [`Producer`] and a [`Consumer`] (one sender thread, one target thread); a
//! peer for all-to-all is a set of [`Inboxes`], one per core; round-trip peers are functions
//! returning their samples.

pub mod crossbeam;
pub mod llist;
pub mod mpsc;
pub mod mutex_inbox;
pub mod ping_pong;
pub mod ring;

use std::sync::atomic::{AtomicU64, Ordering};

/// The peers' message function, like an ipiq `IpiFn` without the queue argument.
pub type Work = fn(usize, usize);
/// The peers' message: a function and two words, like an ipiq `Message`.
pub type Msg = (Work, usize, usize);

/// Slots of every bounded queue (ipiq's default FIFO size).
pub const SLOTS: usize = 256;

/// Adds `n` to the counter at `counter`. Only the consumer that owns the counter writes it, so a
/// plain load and store suffice (no locked RMW that would dominate the measure).
pub fn add(counter: usize, n: usize) {
    // SAFETY: `counter` is the address of an `AtomicU64` that outlives the run: every case
    // keeps its counters alive until both threads have been joined.
    let c = unsafe { &*(counter as *const AtomicU64) };
    // Relaxed: only this consumer writes the counter; the case's final check reads it after
    // joining the thread (the join orders it).
    c.store(c.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
}

/// A message function that does nothing (round trips).
pub fn nop(_: usize, _: usize) {}

/// The address of `counter`, as a message word for [`add`].
pub fn addr(counter: &AtomicU64) -> usize {
    counter as *const AtomicU64 as usize
}

/// Runs a message.
pub fn run(msg: Msg) {
    (msg.0)(msg.1, msg.2)
}

/// What a peer tells about waking its consumer.
#[derive(Clone, Copy, Debug)]
pub enum Wakeups {
    /// It counted this many (unparks issued, IPIs sent, wake-ups a fence found were needed).
    Counted(u64),
    /// Its consumer spins and never sleeps: there is no wake-up to count.
    Never,
    /// It wakes its consumer inside the library and exposes no count.
    Internal,
}

/// The sending half of a one-way peer queue; lives on the sender's thread.
pub trait Producer: Send + 'static {
    /// Queues one message, waiting while the queue is full.
    fn send(&mut self, msg: Msg);

    /// Queues a batch in order. Peers without a batch operation send one at a time.
    fn send_batch(&mut self, batch: &[Msg]) {
        for &msg in batch {
            self.send(msg);
        }
    }
}

/// The receiving half; lives on the target's thread.
pub trait Consumer: Send + 'static {
    /// Called on the target's thread before the sender starts (a peer that unparks its
    /// consumer learns its thread here).
    fn register(&mut self) {}

    /// Runs messages, in order, until `n` have run, sleeping or spinning the peer's way when
    /// the queue is empty.
    fn run(&mut self, n: u64);

    /// The wake-ups of the run; called after both threads were joined.
    fn wakeups(&self) -> Wakeups;
}

/// One inbox per core, any core sending to any other (all-to-all).
pub trait Inboxes: Send + Sync + 'static {
    /// Queues `msg` for core `to`; gives it back if that inbox is full.
    fn try_send(&self, to: usize, msg: Msg) -> Result<(), Msg>;

    /// Runs everything queued for core `me`; returns how many ran.
    fn drain(&self, me: usize) -> usize;

    /// The wake-ups of the run; called after every thread was joined.
    fn wakeups(&self) -> Wakeups;
}
