//! Host benchmarks of ipiq against its peers, all measured in the same run on the same machine
//! (`make -f bench.mk bench`; `IPIQ_BENCH_SMOKE=1` for a seconds-long pass over every case).
//!
//! Figures: (1) streaming throughput one sender -> one target; (2) send+wait round-trip latency
//! against a raw shared-flag ping-pong; (3) wake-ups per message while streaming; (4) all-to-all
//! throughput on 4 cores. Every case runs 3 times and the median is reported. Tables go to
//! stdout and, with SVG plots, to `results/` (`results/bench-report.md`; a smoke run writes to
//! `results/smoke/`; `IPIQ_BENCH_OUT=dir` writes there instead).
//!
//! Peers: crossbeam-channel bounded, `std::sync::mpsc::sync_channel`, a `Mutex<VecDeque>` with
//! thread unpark (Hermit's pattern), a Linux-style lock-free list (`llist`: Treiber push, the
//! target swaps the whole list out and reverses it) and, as the limit, a bare SPSC ring of the same
//! messages (function pointer and two words) with nothing else.

use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{IpiFn, Ipiq, Message};

type Q = Ipiq<HostPlatform>;

/// The peers' message: a function and two words, like an ipiq `Message`.
type Work = fn(usize, usize);
type Msg = (Work, usize, usize);

/// Slots of every bounded queue (ipiq's default FIFO size).
const SLOTS: usize = 256;
/// How long an idle target polls (`Ipiq::poll`) before sleeping, in the cases that say so.
const IDLE_POLL_US: u64 = 50;

// ----- the message functions -----------------------------------------------------------------

/// Adds `n` to the counter at `counter`. Only the consumer that owns the counter writes it, so a
/// plain load and store suffice (no locked RMW that would dominate the measure).
fn add(counter: usize, n: usize) {
    // SAFETY: `counter` is the address of an `AtomicU64` that outlives the run (see callers).
    let c = unsafe { &*(counter as *const AtomicU64) };
    c.store(c.load(Ordering::Relaxed) + n as u64, Ordering::Relaxed);
}

fn ipiq_add(_: &Q, counter: usize, n: usize) {
    add(counter, n);
}

fn ipiq_nop(_: &Q, _: usize, _: usize) {}

fn addr(counter: &AtomicU64) -> usize {
    counter as *const AtomicU64 as usize
}

// ----- small helpers ---------------------------------------------------------------------------

/// A cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Pad<T>(T);

/// Spin with a `pause`, giving the OS CPU away every 16 spins, exactly as the host platform's
/// `relax` does inside ipiq's own spin loops, so every spinner here is on the same footing (the
/// host has 2 CPUs and other work beside us; a spinner that never yields can hold a CPU for a
/// whole scheduler slice while the thread it waits for is queued behind it).
struct Spin(u32);

impl Spin {
    fn new() -> Self {
        Spin(0)
    }

    /// A spin that yields only every 1024 spins: the raw ping-pong baseline, so that it measures
    /// the hardware handoff rather than the scheduler whenever both threads have a CPU.
    fn raw_spin(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(1024) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }

    fn spin(&mut self) {
        self.0 = self.0.wrapping_add(1);
        if self.0.is_multiple_of(16) {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// The median of `runs` measurements, by `key`.
fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn mps(v: f64) -> String {
    format!("{:.2} M/s", v / 1e6)
}

// ----- the bare SPSC ring (the limit) ---------------------------------------------------------

struct Ring {
    head: Pad<AtomicU64>,
    tail: Pad<AtomicU64>,
    mask: u64,
    slots: Box<[UnsafeCell<MaybeUninit<Msg>>]>,
}

// SAFETY: one producer and one consumer; slots are handed over by the Release/Acquire pairs on
// `tail` (published) and `head` (freed).
unsafe impl Sync for Ring {}

impl Ring {
    fn new(slots: usize) -> Self {
        Ring {
            head: Pad::default(),
            tail: Pad::default(),
            mask: slots as u64 - 1,
            slots: (0..slots)
                .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
                .collect(),
        }
    }

    /// Producer only.
    fn push(&self, msg: Msg) {
        let t = self.tail.0.load(Ordering::Relaxed);
        let mut spin = Spin::new();
        while t - self.head.0.load(Ordering::Acquire) > self.mask {
            spin.spin();
        }
        // SAFETY: slot `t` is free (checked above, Acquire on head) and only we write it.
        unsafe { (*self.slots[(t & self.mask) as usize].get()).write(msg) };
        self.tail.0.store(t + 1, Ordering::Release);
    }

    /// Consumer only.
    fn pop(&self) -> Option<Msg> {
        let h = self.head.0.load(Ordering::Relaxed);
        if self.tail.0.load(Ordering::Acquire) == h {
            return None;
        }
        // SAFETY: slot `h` was published by the Release store of tail that we Acquired.
        let msg = unsafe { (*self.slots[(h & self.mask) as usize].get()).assume_init_read() };
        self.head.0.store(h + 1, Ordering::Release);
        Some(msg)
    }
}

// ----- the Linux-style lock-free list ------------------------------------------------------------

struct Node {
    msg: Msg,
    next: *mut Node,
}

/// A per-target llist: senders push with a CAS (Treiber stack) and wake the target only when the
/// list was empty (as `llist_add` returning true sends the IPI); the target swaps the whole list
/// out and reverses it to run in send order. Nodes are preallocated by the sender (like Linux's
/// per-CPU `call_single_data`), so no allocation is measured.
struct LList {
    head: Pad<AtomicPtr<Node>>,
    consumer: OnceLock<Thread>,
    unparks: AtomicU64,
}

// SAFETY: nodes are handed over through the atomic head; each is touched by one side at a time.
unsafe impl Sync for LList {}
// SAFETY: as above.
unsafe impl Send for LList {}

impl LList {
    fn new() -> Self {
        LList {
            head: Pad(AtomicPtr::new(ptr::null_mut())),
            consumer: OnceLock::new(),
            unparks: AtomicU64::new(0),
        }
    }

    /// Pushes `node` (which the caller owns until the consumer ran it).
    fn push(&self, node: *mut Node) {
        let mut head = self.head.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: the node is ours until the CAS publishes it.
            unsafe { (*node).next = head };
            match self.head.0.compare_exchange_weak(
                head,
                node,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        if head.is_null() {
            self.unparks.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.consumer.get() {
                t.unpark();
            }
        }
    }

    /// Takes everything, runs it in send order; returns how many ran.
    fn run_all(&self) -> usize {
        let mut p = self.head.0.swap(ptr::null_mut(), Ordering::Acquire);
        let mut rev: *mut Node = ptr::null_mut();
        while !p.is_null() {
            // SAFETY: the swap gave us the whole list; its nodes are ours now.
            unsafe {
                let next = (*p).next;
                (*p).next = rev;
                rev = p;
                p = next;
            }
        }
        let mut n = 0;
        while !rev.is_null() {
            // SAFETY: as above; the node is read before the sender could reuse it (it never does
            // within one run).
            let (msg, next) = unsafe { ((*rev).msg, (*rev).next) };
            (msg.0)(msg.1, msg.2);
            rev = next;
            n += 1;
        }
        n
    }
}

// ----- Mutex<VecDeque> + unpark (Hermit's pattern) -------------------------------------------

struct MutexInbox {
    /// The queue and whether the consumer is (about to be) parked.
    state: Mutex<(VecDeque<Msg>, bool)>,
    consumer: OnceLock<Thread>,
    unparks: AtomicU64,
}

impl MutexInbox {
    fn new() -> Self {
        MutexInbox {
            state: Mutex::new((VecDeque::new(), false)),
            consumer: OnceLock::new(),
            unparks: AtomicU64::new(0),
        }
    }

    fn send(&self, msg: Msg) {
        let wake = {
            let mut s = self.state.lock().expect("inbox lock");
            s.0.push_back(msg);
            std::mem::take(&mut s.1)
        };
        if wake {
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
}

// ----- figure 1 and 3: streaming one sender -> one target ------------------------------------

/// One streaming run: elapsed time and wake-ups (None where the peer does not expose them).
struct Run {
    elapsed: Duration,
    wakeups: Option<u64>,
}

/// How the target core of an ipiq streaming run behaves.
#[derive(Clone, Copy)]
enum Target {
    /// The kernel's idle loop (`idle_until`: drain on IPI, otherwise sleep until the next IPI or
    /// tick), first polling (`Ipiq::poll`, signalled) for the given time if it is not zero.
    Idles(Duration),
    /// A busy core calling `process()` at every safe point.
    Polls,
}

/// How the sender of an ipiq streaming run queues its messages.
#[derive(Clone, Copy)]
enum Sender {
    /// `send`, one message at a time.
    Send,
    /// `send_passive` (no fence and no IPI until the FIFO is a quarter full).
    Passive,
    /// `send_batch` of this many messages (one fence and at most one IPI per batch).
    Batch(usize),
}

/// ipiq on a 2-core HostMachine: core 0 sends `n` messages to core 1.
fn ipiq_stream(n: u64, target: Target, sender: Sender) -> Run {
    let mut config = HostConfig::cpus(2);
    if let Target::Idles(poll) = target {
        config.idle_poll = poll;
    }
    let machine = HostMachine::start(config);
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let barrier = Arc::new(Barrier::new(2));
    let (c, b) = (counter.clone(), barrier.clone());
    let target = machine
        .spawn_on(1, move |core| {
            b.wait();
            match target {
                Target::Polls => {
                    let mut spin = Spin::new();
                    while c.0.load(Ordering::Relaxed) < n {
                        if core.ipiq().process() == 0 {
                            spin.spin();
                        }
                    }
                }
                Target::Idles(_) => core.idle_until(|| c.0.load(Ordering::Relaxed) >= n),
            }
            Instant::now()
        })
        .expect("core 1");
    let at = addr(&counter.0);
    let b = barrier.clone();
    let sender = machine
        .spawn_on(0, move |core| {
            let q = core.ipiq();
            q.reset_stats();
            b.wait();
            let start = Instant::now();
            match sender {
                Sender::Send => {
                    for _ in 0..n {
                        q.send(1, ipiq_add, at, 1).expect("core 1 online");
                    }
                }
                Sender::Passive => {
                    for _ in 0..n {
                        q.send_passive(1, ipiq_add, at, 1).expect("core 1 online");
                    }
                }
                Sender::Batch(k) => {
                    let batch = vec![Message::new(ipiq_add as IpiFn<_>, at, 1); k];
                    let mut left = n as usize;
                    while left > 0 {
                        let now = left.min(k);
                        q.send_batch(1, &batch[..now]).expect("core 1 online");
                        left -= now;
                    }
                }
            }
            start
        })
        .expect("core 0");
    let start = sender.join();
    let end = target.join();
    let stats = machine.ipiq().stats(0).expect("core 0");
    assert_eq!(stats.sent, n, "ipiq sent count");
    machine.shutdown();
    Run {
        elapsed: end - start,
        wakeups: Some(stats.ipis),
    }
}

/// Runs `produce` and `consume` on two fresh threads started together; the consumer returns when
/// it has run `n` messages. Returns the time from the producer's start to the consumer's end.
fn two_threads(
    produce: impl FnOnce() + Send + 'static,
    consume: impl FnOnce() + Send + 'static,
) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let b = barrier.clone();
    let consumer = thread::spawn(move || {
        b.wait();
        consume();
        Instant::now()
    });
    let b = barrier.clone();
    let producer = thread::spawn(move || {
        b.wait();
        let start = Instant::now();
        produce();
        start
    });
    let start = producer.join().expect("producer");
    let end = consumer.join().expect("consumer");
    end - start
}

fn ring_stream(n: u64) -> Run {
    let ring = Arc::new(Ring::new(SLOTS));
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let (r, c) = (ring.clone(), counter.clone());
    let at = addr(&counter.0);
    let elapsed = two_threads(
        move || {
            for _ in 0..n {
                r.push((add, at, 1));
            }
        },
        move || {
            let mut spin = Spin::new();
            while c.0.load(Ordering::Relaxed) < n {
                match ring.pop() {
                    Some(m) => (m.0)(m.1, m.2),
                    None => spin.spin(),
                }
            }
        },
    );
    Run {
        elapsed,
        wakeups: Some(0),
    }
}

fn crossbeam_stream(n: u64) -> Run {
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(SLOTS);
    channel_stream(n, move |m| tx.send(m).expect("receiver alive"), rx)
}

fn mpsc_stream(n: u64) -> Run {
    let (tx, rx) = mpsc::sync_channel::<Msg>(SLOTS);
    channel_stream(n, move |m| tx.send(m).expect("receiver alive"), rx)
}

/// Streams `n` messages through a channel: `send` on one thread, the receiver on another.
fn channel_stream<S, R>(n: u64, mut send: S, receiver: R) -> Run
where
    S: FnMut(Msg) + Send + 'static,
    R: IntoIterator<Item = Msg> + Send + 'static,
{
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let at = addr(&counter.0);
    let c = counter.clone();
    let elapsed = two_threads(
        move || {
            for _ in 0..n {
                send((add, at, 1));
            }
        },
        move || {
            for m in receiver.into_iter().take(n as usize) {
                (m.0)(m.1, m.2);
            }
            assert_eq!(c.0.load(Ordering::Relaxed), n);
        },
    );
    Run {
        elapsed,
        wakeups: None,
    }
}

fn mutex_stream(n: u64) -> Run {
    let inbox = Arc::new(MutexInbox::new());
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let at = addr(&counter.0);
    let (i, c) = (inbox.clone(), counter.clone());
    let ready = Arc::new(Barrier::new(2));
    let r = ready.clone();
    let elapsed = two_threads(
        move || {
            r.wait();
            for _ in 0..n {
                i.send((add, at, 1));
            }
        },
        {
            let inbox = inbox.clone();
            move || {
                let _ = inbox.consumer.set(thread::current());
                ready.wait();
                while c.0.load(Ordering::Relaxed) < n {
                    match inbox.pop(true) {
                        Some(m) => (m.0)(m.1, m.2),
                        None => thread::park(),
                    }
                }
            }
        },
    );
    Run {
        elapsed,
        wakeups: Some(inbox.unparks.load(Ordering::Relaxed)),
    }
}

fn llist_stream(n: u64) -> Run {
    let list = Arc::new(LList::new());
    let counter = Arc::new(Pad(AtomicU64::new(0)));
    let at = addr(&counter.0);
    // The sender's nodes, allocated before the clock starts.
    let nodes: Vec<Node> = (0..n)
        .map(|_| Node {
            msg: (add, at, 1),
            next: ptr::null_mut(),
        })
        .collect();
    let nodes = Arc::new(NodeArena(UnsafeCell::new(nodes)));
    let (l, c, arena) = (list.clone(), counter.clone(), nodes.clone());
    let ready = Arc::new(Barrier::new(2));
    let r = ready.clone();
    let elapsed = two_threads(
        move || {
            r.wait();
            let base = arena.base();
            for i in 0..n as usize {
                // SAFETY: node i is pushed once and lives in the arena until after the run.
                l.push(unsafe { base.add(i) });
            }
        },
        {
            let list = list.clone();
            move || {
                let _ = list.consumer.set(thread::current());
                ready.wait();
                while c.0.load(Ordering::Relaxed) < n {
                    if list.run_all() == 0 {
                        thread::park();
                    }
                }
            }
        },
    );
    drop(nodes);
    Run {
        elapsed,
        wakeups: Some(list.unparks.load(Ordering::Relaxed)),
    }
}

/// The llist sender's preallocated nodes.
struct NodeArena(UnsafeCell<Vec<Node>>);

// SAFETY: the arena is only reached through raw node pointers handed over by the list.
unsafe impl Sync for NodeArena {}
// SAFETY: as above.
unsafe impl Send for NodeArena {}

impl NodeArena {
    fn base(&self) -> *mut Node {
        // SAFETY: the vector itself is never resized; only its elements are touched, by pointer.
        unsafe { (*self.0.get()).as_mut_ptr() }
    }
}

// ----- figure 2: round-trip latency ------------------------------------------------------------

/// Raw ping-pong: one shared flag, two spinning threads; `k` round trips in nanoseconds. With
/// `patient`, the spinners yield only every 1024 spins (the hardware handoff when both threads
/// have a CPU, very slow when the scheduler puts them on one); otherwise every 16, like ipiq's
/// host `relax`.
fn raw_pingpong(k: usize, patient: bool) -> Vec<u64> {
    let flag = Arc::new(Pad(AtomicU64::new(0)));
    let f = flag.clone();
    let ponger = thread::spawn(move || {
        for i in 0..k as u64 {
            let mut spin = Spin::new();
            while f.0.load(Ordering::Acquire) != 2 * i + 1 {
                if patient {
                    spin.raw_spin();
                } else {
                    spin.spin();
                }
            }
            f.0.store(2 * i + 2, Ordering::Release);
        }
    });
    let mut samples = Vec::with_capacity(k);
    for i in 0..k as u64 {
        let t = Instant::now();
        flag.0.store(2 * i + 1, Ordering::Release);
        let mut spin = Spin::new();
        while flag.0.load(Ordering::Acquire) != 2 * i + 2 {
            if patient {
                spin.raw_spin();
            } else {
                spin.spin();
            }
        }
        samples.push(t.elapsed().as_nanos() as u64);
    }
    ponger.join().expect("ponger");
    samples
}

/// ipiq `send` + `wait` from core 0 to core 1; core 1 polls (`process()` in a loop) or idles
/// (`idle_until`, woken by the IPI).
fn ipiq_roundtrip(k: usize, poll: bool) -> Vec<u64> {
    let machine = HostMachine::start(HostConfig::cpus(2));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2));
    let (s, b) = (stop.clone(), barrier.clone());
    let target = machine
        .spawn_on(1, move |core| {
            b.wait();
            if poll {
                let mut spin = Spin::new();
                while !s.load(Ordering::Relaxed) {
                    if core.ipiq().process() == 0 {
                        spin.spin();
                    }
                }
            } else {
                core.idle_until(|| s.load(Ordering::Relaxed));
            }
        })
        .expect("core 1");
    let b = barrier.clone();
    let samples = machine
        .run_on(0, move |core| {
            let q = core.ipiq();
            b.wait();
            let mut samples = Vec::with_capacity(k);
            for _ in 0..k {
                let t = Instant::now();
                let seq = q.send(1, ipiq_nop, 0, 0).expect("core 1 online");
                q.wait(1, seq).expect("core 1 answers");
                samples.push(t.elapsed().as_nanos() as u64);
            }
            samples
        })
        .expect("core 0");
    stop.store(true, Ordering::Relaxed);
    target.join();
    machine.shutdown();
    samples
}

/// crossbeam-channel request/response pair (capacity 1), blocking receive on both sides.
fn crossbeam_roundtrip(k: usize) -> Vec<u64> {
    let (req_tx, req_rx) = crossbeam_channel::bounded::<Msg>(1);
    let (resp_tx, resp_rx) = crossbeam_channel::bounded::<()>(1);
    let server = thread::spawn(move || {
        for m in req_rx.iter() {
            (m.0)(m.1, m.2);
            if resp_tx.send(()).is_err() {
                return;
            }
        }
    });
    fn nop(_: usize, _: usize) {}
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

// ----- figure 4: all-to-all ----------------------------------------------------------------------

/// Target of message `i` from core `me` of `cores`: the others, round robin.
fn peer(me: usize, i: u64, cores: usize) -> usize {
    (me + 1 + (i as usize % (cores - 1))) % cores
}

/// All-to-all on a HostMachine: each core sends `m` messages round robin to the others and drains
/// its own queues every 32 sends and at the end. Returns elapsed and IPIs.
fn ipiq_all_to_all(cores: usize, m: u64) -> Run {
    let machine = HostMachine::start(HostConfig::cpus(cores));
    let counters: Arc<Vec<Pad<AtomicU64>>> = Arc::new((0..cores).map(|_| Pad::default()).collect());
    let barrier = Arc::new(Barrier::new(cores));
    machine.ipiq().reset_stats();
    let c = counters.clone();
    let times = machine.run_on_all(move |core| {
        let q = core.ipiq();
        let me = core.cpu();
        let expect = m;
        barrier.wait();
        let start = Instant::now();
        for i in 0..m {
            let to = peer(me, i, cores);
            q.send(to, ipiq_add, addr(&c[to].0), 1).expect("online");
            if i % 32 == 31 {
                q.process();
            }
        }
        while c[me].0.load(Ordering::Relaxed) < expect {
            if q.process() == 0 {
                thread::yield_now();
            }
        }
        (start, Instant::now())
    });
    let stats = machine.ipiq().total_stats();
    machine.shutdown();
    Run {
        elapsed: span(&times),
        wakeups: Some(stats.ipis),
    }
}

fn span(times: &[(Instant, Instant)]) -> Duration {
    let start = times.iter().map(|t| t.0).min().expect("cores");
    let end = times.iter().map(|t| t.1).max().expect("cores");
    end - start
}

/// Runs `body(me)` on `cores` fresh threads started together; returns the span.
fn on_threads(cores: usize, body: impl Fn(usize) + Send + Sync + 'static) -> Duration {
    let body = Arc::new(body);
    let barrier = Arc::new(Barrier::new(cores));
    let handles: Vec<_> = (0..cores)
        .map(|me| {
            let (body, barrier) = (body.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                body(me);
                (start, Instant::now())
            })
        })
        .collect();
    let times: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .collect();
    span(&times)
}

fn crossbeam_all_to_all(cores: usize, m: u64) -> Run {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..cores)
        .map(|_| crossbeam_channel::bounded::<Msg>(SLOTS))
        .unzip();
    let counters: Arc<Vec<Pad<AtomicU64>>> = Arc::new((0..cores).map(|_| Pad::default()).collect());
    let elapsed = on_threads(cores, move |me| {
        let rx = &rxs[me];
        let drain = || {
            let mut n = 0;
            while let Ok(msg) = rx.try_recv() {
                (msg.0)(msg.1, msg.2);
                n += 1;
            }
            n
        };
        for i in 0..m {
            let to = peer(me, i, cores);
            let mut msg: Msg = (add, addr(&counters[to].0), 1);
            loop {
                match txs[to].try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(back)) => {
                        msg = back;
                        if drain() == 0 {
                            thread::yield_now();
                        }
                    }
                    Err(TrySendError::Disconnected(_)) => unreachable!("receivers live"),
                }
            }
            if i % 32 == 31 {
                drain();
            }
        }
        while counters[me].0.load(Ordering::Relaxed) < m {
            if drain() == 0 {
                thread::yield_now();
            }
        }
    });
    Run {
        elapsed,
        wakeups: None,
    }
}

fn mutex_all_to_all(cores: usize, m: u64) -> Run {
    let inboxes: Arc<Vec<MutexInbox>> = Arc::new((0..cores).map(|_| MutexInbox::new()).collect());
    let counters: Arc<Vec<Pad<AtomicU64>>> = Arc::new((0..cores).map(|_| Pad::default()).collect());
    let ib = inboxes.clone();
    let elapsed = on_threads(cores, move |me| {
        let drain = || {
            let mut n = 0;
            while let Some(msg) = ib[me].pop(false) {
                (msg.0)(msg.1, msg.2);
                n += 1;
            }
            n
        };
        for i in 0..m {
            let to = peer(me, i, cores);
            ib[to].send((add, addr(&counters[to].0), 1));
            if i % 32 == 31 {
                drain();
            }
        }
        while counters[me].0.load(Ordering::Relaxed) < m {
            if drain() == 0 {
                thread::yield_now();
            }
        }
    });
    Run {
        elapsed,
        wakeups: Some(
            inboxes
                .iter()
                .map(|i| i.unparks.load(Ordering::Relaxed))
                .sum(),
        ),
    }
}

// ----- the driver -------------------------------------------------------------------------------

struct Params {
    smoke: bool,
    runs: usize,
    stream: u64,
    roundtrips: usize,
    a2a_cores: usize,
    a2a_per_core: u64,
}

struct Throughput {
    name: &'static str,
    rate: f64,
    wakeups_per_msg: Option<f64>,
    all_rates: Vec<f64>,
}

fn throughput(name: &'static str, runs: usize, msgs: u64, case: impl Fn() -> Run) -> Throughput {
    let mut rates = Vec::new();
    let mut wakes = Vec::new();
    for _ in 0..runs {
        let run = case();
        rates.push(msgs as f64 / run.elapsed.as_secs_f64());
        if let Some(w) = run.wakeups {
            wakes.push(w as f64 / msgs as f64);
        }
    }
    let t = Throughput {
        name,
        rate: median(rates.clone()),
        wakeups_per_msg: (!wakes.is_empty()).then(|| median(wakes)),
        all_rates: rates,
    };
    eprintln!("  {:<44} {:>12}", name, mps(t.rate));
    t
}

struct Latency {
    name: &'static str,
    p50: f64,
    p99: f64,
    p999: f64,
    /// The samples (sorted) of the run with the median p50, for the plot.
    samples: Vec<u64>,
}

fn latency(name: &'static str, runs: usize, case: impl Fn() -> Vec<u64>) -> Latency {
    let mut all = Vec::new();
    for _ in 0..runs {
        let mut s = case();
        s.sort_unstable();
        all.push(s);
    }
    let p50 = median(all.iter().map(|s| percentile(s, 50.0) as f64).collect());
    let p99 = median(all.iter().map(|s| percentile(s, 99.0) as f64).collect());
    let p999 = median(all.iter().map(|s| percentile(s, 99.9) as f64).collect());
    let samples = median_by(all, |s| percentile(s, 50.0) as f64);
    eprintln!("  {name:<44} p50 {p50:>8.0} ns  p99 {p99:>8.0} ns");
    Latency {
        name,
        p50,
        p99,
        p999,
        samples,
    }
}

fn fmt_wakes(w: Option<f64>) -> String {
    w.map_or_else(|| "n/a (internal)".to_string(), |w| format!("{w:.4}"))
}

fn throughput_table(rows: &[Throughput], against: &[(&str, f64)]) -> String {
    let mut t = String::from("| case | median | runs (M msg/s) | wake-ups / msg |");
    for (name, _) in against {
        let _ = write!(t, " vs {name} |");
    }
    t.push_str("\n|---|---:|---|---:|");
    for _ in against {
        t.push_str("---:|");
    }
    t.push('\n');
    for r in rows {
        let runs: Vec<String> = r
            .all_rates
            .iter()
            .map(|v| format!("{:.2}", v / 1e6))
            .collect();
        let _ = write!(
            t,
            "| {} | {} | {} | {} |",
            r.name,
            mps(r.rate),
            runs.join(" / "),
            fmt_wakes(r.wakeups_per_msg)
        );
        for (_, base) in against {
            let _ = write!(t, " {:.2}x |", r.rate / base);
        }
        t.push('\n');
    }
    t
}

fn latency_table(rows: &[Latency], raw_p50: f64) -> String {
    let mut t = String::from(
        "| case | p50 (ns) | p99 (ns) | p99.9 (ns) | p50 / best raw p50 | p99 / p50 |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.2}x |",
            r.name,
            r.p50,
            r.p99,
            r.p999,
            r.p50 / raw_p50,
            r.p99 / r.p50
        );
    }
    t
}

// ----- SVG -----------------------------------------------------------------------------------------

const COLORS: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A horizontal bar chart of throughputs (M msg/s).
fn bar_svg(title: &str, rows: &[Throughput]) -> String {
    let (left, bar_h, gap, width) = (300.0, 22.0, 8.0, 860.0);
    let plot_w = width - left - 110.0;
    let height = 50.0 + rows.len() as f64 * (bar_h + gap) + 30.0;
    let max = rows.iter().map(|r| r.rate).fold(1.0, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        esc(title)
    );
    for (i, r) in rows.iter().enumerate() {
        let y = 40.0 + i as f64 * (bar_h + gap);
        let w = (r.rate / max * plot_w).max(1.0);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n\
             <rect x=\"{left}\" y=\"{y}\" width=\"{w:.1}\" height=\"{bar_h}\" fill=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{}\">{:.2} M/s</text>\n",
            left - 8.0,
            y + 15.0,
            esc(r.name),
            COLORS[i % COLORS.len()],
            left + w + 6.0,
            y + 15.0,
            r.rate / 1e6
        );
    }
    let axis_y = 40.0 + rows.len() as f64 * (bar_h + gap);
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"black\"/>\n\
         <text x=\"{left}\" y=\"{}\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.1} M msg/s</text>\n</svg>",
        left + plot_w,
        axis_y + 16.0,
        left + plot_w,
        axis_y + 16.0,
        max / 1e6
    );
    s
}

/// Latency distributions: latency (log scale) against percentile, one line per case.
fn latency_svg(rows: &[Latency]) -> String {
    let (w, h, l, r, t, b) = (860.0, 460.0, 70.0, 220.0, 40.0, 50.0);
    let (pw, ph) = (w - l - r, h - t - b);
    let lo = rows
        .iter()
        .filter_map(|x| x.samples.first())
        .copied()
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let hi = rows
        .iter()
        .map(|x| percentile(&x.samples, 99.9))
        .max()
        .unwrap_or(2)
        .max(2) as f64;
    let (llo, lhi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let y_of = |ns: f64| t + ph - (ns.max(1.0).log10() - llo) / (lhi - llo) * ph;
    let x_of = |p: f64| l + p / 100.0 * pw;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Round-trip latency distribution (percentile 0-99.9, log scale)</text>\n\
         <rect x=\"{l}\" y=\"{t}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"black\"/>\n"
    );
    let mut decade = llo;
    while decade <= lhi {
        let y = y_of(10f64.powf(decade));
        let label = match decade as i32 {
            d if d < 3 => format!("{} ns", 10f64.powi(d)),
            d if d < 6 => format!("{} us", 10f64.powi(d - 3)),
            d => format!("{} ms", 10f64.powi(d - 6)),
        };
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>",
            l + pw,
            l - 6.0,
            y + 4.0
        );
        decade += 1.0;
    }
    for p in [0.0, 25.0, 50.0, 75.0, 90.0, 99.0] {
        let x = x_of(p);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{t}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">p{p}</text>",
            t + ph,
            t + ph + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>",
        l + pw / 2.0,
        h - 10.0
    );
    for (i, row) in rows.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        let steps = 400;
        for k in 0..=steps {
            let p = 99.9 * k as f64 / steps as f64;
            let _ = write!(
                points,
                "{:.1},{:.1} ",
                x_of(p),
                y_of(percentile(&row.samples, p) as f64)
            );
        }
        let ly = t + 14.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{points}\"/>\n\
             <line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{color}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            l + pw + 10.0,
            l + pw + 28.0,
            l + pw + 32.0,
            ly + 4.0,
            esc(row.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

// ----- main ----------------------------------------------------------------------------------------

/// `/proc/loadavg`'s first three fields, if readable.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".to_string())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

fn main() {
    let smoke = std::env::var_os("IPIQ_BENCH_SMOKE").is_some_and(|v| !v.is_empty() && v != "0");
    let p = if smoke {
        Params {
            smoke,
            runs: 3,
            stream: 20_000,
            roundtrips: 500,
            a2a_cores: 4,
            a2a_per_core: 5_000,
        }
    } else {
        Params {
            smoke,
            runs: 3,
            stream: 2_000_000,
            roundtrips: 20_000,
            a2a_cores: 4,
            a2a_per_core: 500_000,
        }
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = loadavg();
    let began = Instant::now();
    eprintln!(
        "ipiq bench{}: {} host CPUs, {} runs per case (median), {} messages streaming, {} round trips, {} x {} all-to-all",
        if p.smoke { " (smoke)" } else { "" },
        cpus,
        p.runs,
        p.stream,
        p.roundtrips,
        p.a2a_cores,
        p.a2a_per_core
    );

    // (1) + (3) streaming
    eprintln!("streaming, 1 sender -> 1 target:");
    let n = p.stream;
    let stream = vec![
        throughput("ipiq send, target idles (drain on IPI)", p.runs, n, || {
            ipiq_stream(n, Target::Idles(Duration::ZERO), Sender::Send)
        }),
        throughput("ipiq send, target polls process()", p.runs, n, || {
            ipiq_stream(n, Target::Polls, Sender::Send)
        }),
        throughput("bare SPSC ring (limit)", p.runs, n, || ring_stream(n)),
        throughput("crossbeam-channel bounded(256)", p.runs, n, || {
            crossbeam_stream(n)
        }),
        throughput("std mpsc::sync_channel(256)", p.runs, n, || mpsc_stream(n)),
        throughput("Mutex<VecDeque> + unpark", p.runs, n, || mutex_stream(n)),
        throughput("llist (Treiber push, swap+reverse)", p.runs, n, || {
            llist_stream(n)
        }),
    ];
    let crossbeam = stream[3].rate;
    let ring = stream[2].rate;
    let mut stream = stream;
    let idle_poll = Duration::from_micros(IDLE_POLL_US);
    let more: [(&'static str, Target, Sender); 6] = [
        (
            "ipiq send, target idles, polls 50 us first",
            Target::Idles(idle_poll),
            Sender::Send,
        ),
        (
            "ipiq send_batch(64), target polls process()",
            Target::Polls,
            Sender::Batch(64),
        ),
        (
            "ipiq send_batch(64), target idles, polls 50 us first",
            Target::Idles(idle_poll),
            Sender::Batch(64),
        ),
        (
            "ipiq send_passive, target idles",
            Target::Idles(Duration::ZERO),
            Sender::Passive,
        ),
        (
            "ipiq send_passive, target polls",
            Target::Polls,
            Sender::Passive,
        ),
        (
            "ipiq send_batch(64), target idles (drain on IPI)",
            Target::Idles(Duration::ZERO),
            Sender::Batch(64),
        ),
    ];
    for (name, target, sender) in more {
        stream.push(throughput(name, p.runs, n, move || {
            ipiq_stream(n, target, sender)
        }));
    }

    // (2) latency
    eprintln!("round trip:");
    let k = p.roundtrips;
    let lat = vec![
        latency("raw ping-pong, yield every 16 spins", p.runs, || {
            raw_pingpong(k, false)
        }),
        latency("raw ping-pong, yield every 1024 spins", p.runs, || {
            raw_pingpong(k, true)
        }),
        latency("ipiq send+wait, target polls", p.runs, || {
            ipiq_roundtrip(k, true)
        }),
        latency("ipiq send+wait, target idles", p.runs, || {
            ipiq_roundtrip(k, false)
        }),
        latency("crossbeam request/response", p.runs, || {
            crossbeam_roundtrip(k)
        }),
    ];
    // The targets compare against the better of the two raw baselines.
    let raw_p50 = lat[0].p50.min(lat[1].p50);

    // (4) all-to-all
    let (cores, m) = (p.a2a_cores, p.a2a_per_core);
    let total = cores as u64 * m;
    eprintln!("all-to-all, {cores} cores:");
    let a2a = vec![
        throughput("ipiq (HostMachine, 4 cores)", p.runs, total, || {
            ipiq_all_to_all(cores, m)
        }),
        throughput("crossbeam-channel bounded(256)", p.runs, total, || {
            crossbeam_all_to_all(cores, m)
        }),
        throughput("Mutex<VecDeque>", p.runs, total, || {
            mutex_all_to_all(cores, m)
        }),
    ];

    // Tables
    let t1 = throughput_table(&stream, &[("crossbeam", crossbeam), ("ring", ring)]);
    let t2 = latency_table(&lat, raw_p50);
    let t4 = throughput_table(&a2a, &[("crossbeam", a2a[1].rate)]);

    // Targets
    let mut targets =
        String::from("| target | ipiq case | measured | verdict |\n|---|---|---:|---|\n");
    for row in stream.iter().filter(|r| r.name.starts_with("ipiq")) {
        let x = row.rate / crossbeam;
        let _ = writeln!(
            targets,
            "| streaming >= 5x crossbeam bounded | {} | {x:.2}x | {} |",
            row.name,
            verdict(x >= 5.0)
        );
        let y = row.rate / ring;
        let _ = writeln!(
            targets,
            "| streaming >= 2/3 of bare ring | {} | {y:.2}x | {} |",
            row.name,
            verdict(y >= 2.0 / 3.0)
        );
        let w = row.wakeups_per_msg.unwrap_or(f64::NAN);
        let _ = writeln!(
            targets,
            "| <= 0.05 wake-ups per message streaming | {} | {w:.4} | {} |",
            row.name,
            verdict(w <= 0.05)
        );
    }
    for row in &lat[2..4] {
        let x = row.p50 / raw_p50;
        let _ = writeln!(
            targets,
            "| round-trip p50 <= 1.2x raw ping-pong | {} | {x:.2}x | {} |",
            row.name,
            verdict(x <= 1.2)
        );
        let y = row.p99 / row.p50;
        let _ = writeln!(
            targets,
            "| round-trip p99 <= 2x its p50 | {} | {y:.2}x | {} |",
            row.name,
            verdict(y <= 2.0)
        );
    }

    println!();
    println!(
        "## Streaming, 1 sender -> 1 target ({n} messages, median of {} runs)\n",
        p.runs
    );
    println!("{t1}");
    println!(
        "## Round trip ({k} round trips, median of {} runs)\n",
        p.runs
    );
    println!("{t2}");
    println!(
        "## All-to-all, {cores} cores ({m} messages per core, median of {} runs)\n",
        p.runs
    );
    println!("{t4}");
    println!("## Targets (issue 5)\n");
    println!("{targets}");

    // Report
    // A smoke run writes beside, not over, the last full report.
    // IPIQ_BENCH_OUT names another folder (a binary run away from its checkout).
    let mut dir = std::env::var_os("IPIQ_BENCH_OUT").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("results"),
        std::path::PathBuf::from,
    );
    if p.smoke {
        dir.push("smoke");
    }
    let _ = std::fs::create_dir_all(&dir);
    let files = [
        (
            "bench-streaming.svg",
            bar_svg(
                "Streaming throughput, 1 sender -> 1 target (M msg/s)",
                &stream,
            ),
        ),
        (
            "bench-all-to-all.svg",
            bar_svg(
                &format!("All-to-all throughput, {cores} cores (M msg/s)"),
                &a2a,
            ),
        ),
        ("bench-latency.svg", latency_svg(&lat)),
    ];
    for (name, svg) in &files {
        if let Err(e) = std::fs::write(dir.join(name), svg) {
            eprintln!("ipiq bench: cannot write {name}: {e}");
        }
    }
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# ipiq host benchmarks{}\n",
        if p.smoke {
            " (smoke run: tiny counts, figures meaningless)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        report,
        "Host: {cpus} CPUs (`available_parallelism`); every case {} times, median reported; \
         all peers measured in this same run. Wall time {:.1} s. Load average (1/5/15 min) before: \
         {load_before}, after: {}. Spinning waiters everywhere (ipiq's host `relax`, the ring, the \
         ping-pong) give the CPU away every 16 spins, so two busy threads on a shared host are \
         measured on the same footing.\n",
        p.runs,
        began.elapsed().as_secs_f64(),
        loadavg()
    );
    let _ = writeln!(
        report,
        "ipiq modes: *target idles* is the kernel's idle loop (`HostCore::idle_until`: drain on an \
         IPI, otherwise sleep until the next IPI or tick, an IPI being an unpark); *target polls* is a \
         busy core calling `Ipiq::process()` at every safe point. `send_passive` queues without a \
         fence or IPI until the FIFO is a quarter full. FIFOs have the default 256 slots; every \
         bounded peer has 256 slots too.\n"
    );
    let _ = writeln!(report, "## Streaming, 1 sender -> 1 target ({n} messages)\n\n{t1}\n![streaming](bench-streaming.svg)\n");
    let _ = writeln!(
        report,
        "Wake-ups: ipiq counts IPIs (`Stats::ipis`) per message; Mutex<VecDeque> and llist count the \
         unparks they issue; the bare ring never sleeps; crossbeam and mpsc wake internally and do not \
         expose a count.\n"
    );
    let _ = writeln!(
        report,
        "## Round-trip latency ({k} round trips)\n\n{t2}\n![latency](bench-latency.svg)\n"
    );
    let _ = writeln!(report, "## All-to-all, {cores} cores ({m} messages per core)\n\n{t4}\n![all-to-all](bench-all-to-all.svg)\n");
    let _ = writeln!(report, "## Targets (issue 5)\n\n{targets}");
    let _ = writeln!(
        report,
        "Reading these figures: the runs column shows the spread. On a 2-CPU host shared with other \
         work, the two threads of a case sometimes get a CPU each and sometimes share one (then \
         every handoff is a yield), so a figure can swing several-fold between runs and between \
         invocations; the patient raw ping-pong shows the two regimes most clearly (p50 about \
         200 ns with a CPU each, tens of microseconds sharing one). Compare cases within one report."
    );
    let path = dir.join("bench-report.md");
    match std::fs::write(&path, report) {
        Ok(()) => println!("report: {} (plots beside it)", path.display()),
        Err(e) => eprintln!("ipiq bench: cannot write {}: {e}", path.display()),
    }
    eprintln!("ipiq bench: done in {:.1} s", began.elapsed().as_secs_f64());
}
