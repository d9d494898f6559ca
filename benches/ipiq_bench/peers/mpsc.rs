//! The standard library's `mpsc::sync_channel(256)`.

use std::sync::mpsc::{self, Receiver, SyncSender};

use super::{run, Consumer, Msg, Producer, Wakeups, SLOTS};

/// A `sync_channel(SLOTS)` as a streaming peer's two halves.
pub fn open() -> (SyncSender<Msg>, Receiver<Msg>) {
    mpsc::sync_channel(SLOTS)
}

impl Producer for SyncSender<Msg> {
    fn send(&mut self, msg: Msg) {
        SyncSender::send(self, msg).expect("receiver alive");
    }
}

impl Consumer for Receiver<Msg> {
    fn run(&mut self, n: u64) {
        for msg in self.iter().take(n as usize) {
            run(msg);
        }
    }

    fn wakeups(&self) -> Wakeups {
        Wakeups::Internal
    }
}
