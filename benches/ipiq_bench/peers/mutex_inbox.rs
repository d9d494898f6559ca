//! `Mutex<VecDeque>` plus thread unpark: Hermit's own pattern for handing work to another core.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};

use super::{run, Consumer, Inboxes, Msg, Producer, Wakeups};

pub struct MutexInbox {
    /// The queue and whether the consumer is (about to be) parked.
    state: Mutex<(VecDeque<Msg>, bool)>,
    /// The consumer's thread, set once by the consumer before the sender starts.
    consumer: OnceLock<Thread>,
    /// Unparks issued by senders (statistic).
    unparks: AtomicU64,
}

impl MutexInbox {
    pub fn new() -> Self {
        MutexInbox {
            state: Mutex::new((VecDeque::new(), false)),
            consumer: OnceLock::new(),
            unparks: AtomicU64::new(0),
        }
    }

    /// Queues `msg`; unparks the consumer if it said it was going to sleep.
    fn send(&self, msg: Msg) {
        let wake = {
            let mut s = self.state.lock().expect("inbox lock");
            s.0.push_back(msg);
            std::mem::take(&mut s.1)
        };
        if wake {
            // Relaxed: a statistic, read after the threads are joined.
            self.unparks.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.consumer.get() {
                t.unpark();
            }
        }
    }

    /// Pops one message; with `sleepy`, marks the consumer as parking when empty.
    fn pop(&self, sleepy: bool) -> Option<Msg> {
        let mut s = self.state.lock().expect("inbox lock");
        let msg = s.0.pop_front();
        if msg.is_none() && sleepy {
            s.1 = true;
        }
        msg
    }

    fn unparks(&self) -> u64 {
        // Relaxed: read after the threads were joined.
        self.unparks.load(Ordering::Relaxed)
    }
}

/// One inbox, as a streaming peer's two halves.
pub fn open() -> (InboxProducer, InboxConsumer) {
    let inbox = Arc::new(MutexInbox::new());
    (InboxProducer(inbox.clone()), InboxConsumer(inbox))
}

pub struct InboxProducer(Arc<MutexInbox>);

impl Producer for InboxProducer {
    fn send(&mut self, msg: Msg) {
        self.0.send(msg);
    }
}

pub struct InboxConsumer(Arc<MutexInbox>);

impl Consumer for InboxConsumer {
    fn register(&mut self) {
        let _ = self.0.consumer.set(thread::current());
    }

    fn run(&mut self, n: u64) {
        let mut done = 0;
        while done < n {
            match self.0.pop(true) {
                Some(msg) => {
                    run(msg);
                    done += 1;
                }
                None => thread::park(),
            }
        }
    }

    fn wakeups(&self) -> Wakeups {
        Wakeups::Counted(self.0.unparks())
    }
}

/// One unbounded inbox per core (all-to-all); cores drain their own between sends and never
/// park, so no unpark is due (the count shows it).
pub struct MutexInboxes(Vec<MutexInbox>);

impl MutexInboxes {
    pub fn new(cores: usize) -> Self {
        MutexInboxes((0..cores).map(|_| MutexInbox::new()).collect())
    }
}

impl Inboxes for MutexInboxes {
    fn try_send(&self, to: usize, msg: Msg) -> Result<(), Msg> {
        self.0[to].send(msg);
        Ok(())
    }

    fn drain(&self, me: usize) -> usize {
        let mut n = 0;
        while let Some(msg) = self.0[me].pop(false) {
            run(msg);
            n += 1;
        }
        n
    }

    fn wakeups(&self) -> Wakeups {
        Wakeups::Counted(self.0.iter().map(MutexInbox::unparks).sum())
    }
}
