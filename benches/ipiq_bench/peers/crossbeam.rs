//! crossbeam-channel: `bounded(256)` for streaming and all-to-all, `bounded(1)` pairs for a
//! request/response round trip.

use std::thread;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{nop, run, Consumer, Inboxes, Msg, Producer, Wakeups, SLOTS};

/// A `bounded(SLOTS)` channel as a streaming peer's two halves.
pub fn open() -> (Sender<Msg>, Receiver<Msg>) {
    crossbeam_channel::bounded(SLOTS)
}

impl Producer for Sender<Msg> {
    fn send(&mut self, msg: Msg) {
        Sender::send(self, msg).expect("receiver alive");
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

/// One `bounded(SLOTS)` channel per core (all-to-all).
pub struct ChannelInboxes(Vec<(Sender<Msg>, Receiver<Msg>)>);

impl ChannelInboxes {
    pub fn new(cores: usize) -> Self {
        ChannelInboxes((0..cores).map(|_| open()).collect())
    }
}

impl Inboxes for ChannelInboxes {
    fn try_send(&self, to: usize, msg: Msg) -> Result<(), Msg> {
        match self.0[to].0.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(back)) => Err(back),
            Err(TrySendError::Disconnected(_)) => unreachable!("every receiver lives in self"),
        }
    }

    fn drain(&self, me: usize) -> usize {
        let mut n = 0;
        while let Ok(msg) = self.0[me].1.try_recv() {
            run(msg);
            n += 1;
        }
        n
    }

    fn wakeups(&self) -> Wakeups {
        Wakeups::Internal
    }
}

/// `k` request/response round trips in nanoseconds: a `bounded(1)` request channel to a server
/// thread, a `bounded(1)` response channel back, blocking receives on both sides.
pub fn request_response(k: usize) -> Vec<u64> {
    let (req_tx, req_rx) = crossbeam_channel::bounded::<Msg>(1);
    let (resp_tx, resp_rx) = crossbeam_channel::bounded::<()>(1);
    let server = thread::spawn(move || {
        for msg in req_rx.iter() {
            run(msg);
            if resp_tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut samples = Vec::with_capacity(k);
    for _ in 0..k {
        let t = Instant::now();
        req_tx.send((nop, 0, 0)).expect("server alive");
        resp_rx.recv().expect("server alive");
        samples.push(t.elapsed().as_nanos() as u64);
    }
    drop(req_tx);
    server.join().expect("server");
    samples
}
