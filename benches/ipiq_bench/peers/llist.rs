//! A Linux-style lock-free list (`llist`): senders push with a CAS (Treiber stack) and wake the
//! target only when the list was empty (as `llist_add` returning true sends the IPI); the target
//! swaps the whole list out and reverses it to run in send order. Nodes are preallocated by the
//! sender (like Linux's per-CPU `call_single_data`), so no allocation is measured.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};

use super::{nop, run, Consumer, Msg, Producer, Wakeups};
use crate::spin::Pad;

struct Node {
    msg: Msg,
    next: *mut Node,
}

struct LList {
    /// The newest pushed node (null: empty); CAS by senders, swapped out by the target.
    head: Pad<AtomicPtr<Node>>,
    /// The target's thread, set once by the target before the sender starts.
    consumer: OnceLock<Thread>,
    /// Unparks issued by senders (statistic).
    unparks: AtomicU64,
}

/// The sender's preallocated nodes; shared by both halves so that it outlives both threads.
struct NodeArena(UnsafeCell<Vec<Node>>);

// SAFETY: a node is touched by one side at a time: the sender until its CAS publishes it, the
// target after its swap took it; the arena's vector itself is never resized.
unsafe impl Sync for NodeArena {}
// SAFETY: as above.
unsafe impl Send for NodeArena {}
// SAFETY: the list holds only node pointers, handed over through the atomic `head`.
unsafe impl Sync for LList {}
// SAFETY: as above.
unsafe impl Send for LList {}

/// A list with room for `n` messages (each node is pushed once) and its two halves.
pub fn open(n: u64) -> (ListProducer, ListConsumer) {
    let list = Arc::new(LList {
        head: Pad(AtomicPtr::new(ptr::null_mut())),
        consumer: OnceLock::new(),
        unparks: AtomicU64::new(0),
    });
    let nodes: Vec<Node> = (0..n)
        .map(|_| Node {
            msg: (nop, 0, 0),
            next: ptr::null_mut(),
        })
        .collect();
    let arena = Arc::new(NodeArena(UnsafeCell::new(nodes)));
    // SAFETY: no other reference to the vector exists yet; it is never resized after this.
    let base = unsafe { (*arena.0.get()).as_mut_ptr() };
    (
        ListProducer {
            list: list.clone(),
            _arena: arena.clone(),
            base,
            nodes: n as usize,
            next: 0,
        },
        ListConsumer {
            list,
            _arena: arena,
        },
    )
}

pub struct ListProducer {
    list: Arc<LList>,
    /// Keeps the nodes alive; reached only through `base`.
    _arena: Arc<NodeArena>,
    /// The arena's first node.
    base: *mut Node,
    /// The arena's node count.
    nodes: usize,
    /// The next unused node.
    next: usize,
}

// SAFETY: `base` points into the arena this producer keeps alive; see `NodeArena`.
unsafe impl Send for ListProducer {}

impl Producer for ListProducer {
    /// Pushes the next preallocated node carrying `msg`.
    fn send(&mut self, msg: Msg) {
        assert!(self.next < self.nodes, "llist: more sends than nodes");
        // SAFETY: `next` is within the arena (checked above), which outlives this producer.
        let node = unsafe { self.base.add(self.next) };
        self.next += 1;
        // SAFETY: this node was never pushed, so it is ours until the CAS publishes it.
        unsafe { (*node).msg = msg };
        // Relaxed: only a starting guess for the CAS; the CAS re-reads it.
        let mut head = self.list.head.0.load(Ordering::Relaxed);
        loop {
            // SAFETY: as above.
            unsafe { (*node).next = head };
            // Release on success: publishes the node's fields with it. Relaxed on failure: we
            // only retry with the value seen.
            match self.list.head.0.compare_exchange_weak(
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
            // Relaxed: a statistic, read after the threads are joined.
            self.list.unparks.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = self.list.consumer.get() {
                t.unpark();
            }
        }
    }
}

pub struct ListConsumer {
    list: Arc<LList>,
    _arena: Arc<NodeArena>,
}

impl ListConsumer {
    /// Takes everything, runs it in send order; returns how many ran.
    fn run_all(&self) -> u64 {
        // Acquire: pairs with the senders' Release CAS (the nodes' fields are visible).
        let mut p = self.list.head.0.swap(ptr::null_mut(), Ordering::Acquire);
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
            // SAFETY: as above; a node is pushed only once, so the sender never reuses it.
            let (msg, next) = unsafe { ((*rev).msg, (*rev).next) };
            run(msg);
            rev = next;
            n += 1;
        }
        n
    }
}

impl Consumer for ListConsumer {
    fn register(&mut self) {
        let _ = self.list.consumer.set(thread::current());
    }

    fn run(&mut self, n: u64) {
        let mut done = 0;
        while done < n {
            match self.run_all() {
                0 => thread::park(),
                k => done += k,
            }
        }
    }

    fn wakeups(&self) -> Wakeups {
        // Relaxed: read after both threads were joined.
        Wakeups::Counted(self.list.unparks.load(Ordering::Relaxed))
    }
}
