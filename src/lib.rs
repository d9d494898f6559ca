//! # ipiq: inter-processor message queues for the Hermit unikernel
//!
//! Any core can ask another core, or a set of cores, to run a function, cheaply and in order;
//! a core can gather a set of cores into a rendezvous (*cpusync*) to act in lockstep, which the
//! kernel uses for TLB shootdown. This is a port of DragonFly BSD's LWKT IPI queues
//! (`sys/kern/lwkt_ipiq.c`), with the improvements DragonFly made later (per-target `npoll`,
//! passive sends that turn active, nested-send deadlock avoidance) and a few of its own
//! (core sets of up to 1024 cores, recoverable watchdogs, exact `wait` under nesting).
//!
//! ## Architecture
//! - [`Platform`] is the only door to the hardware: current core, core count, IPI (to one core,
//!   or to a set in as few hardware writes as the platform can), interrupt save/restore, relax,
//!   time, TLB flushes. It is an `unsafe trait`: the protocol's memory
//!   safety rests on its contract (one execution context per core id, `current_cpu` stable and
//!   no re-entry while interrupts are disabled), and every public operation disables interrupts
//!   itself, so safe code cannot break that contract from the caller's side. The protocol is
//!   `#![no_std]` + `alloc` and generic over it. The kernel's implementation is
//!   [`arch::x86_64`] (x2APIC with an xAPIC fallback; [`arch::x86_64::xstate`] saves the
//!   x87/SSE/AVX state around application message functions);
//!   [`host`] (feature `std`) simulates cores with threads for tests, examples and benchmarks.
//! - [`Ipiq`] holds the queue matrix: for every (sender, target) pair that has talked, one
//!   single-producer/single-consumer FIFO of [`Message`]s (a function and two words), allocated
//!   on first use, so an idle pair costs one pointer.
//! - One concept per module, each an `impl Ipiq` of its own, calls going one way (the table is
//!   in `ARCHITECTURE.md`): `matrix` (the struct, lookups), `percpu`, `send`, `spill`, `wakeup`
//!   (the `npoll` and `halted` handshakes), `drain`, `hold`, `wait`, `cpusync`, `tlb`, `hooks`
//!   (the kernel's entry points) and [`tick`] (the one-shot timer shared with the scheduler).
//! - What applications and the kernel's syscalls share ([`Error`] and its errno, [`CpuSet`],
//!   [`Seq`], [`Stats`]) comes from the `ipiq-abi` crate, which applications link instead of
//!   this one (it also wraps the `sys_ipiq_*` syscalls).
//! - Where it departs from the seed: per-target `npoll` (at most one IPI in flight per target,
//!   none while it drains or polls, and the target writes it only when it starts or stops);
//!   each FIFO side caches the other's index, so a send touches only its own cache line until
//!   the ring may be half full; sends from inside a message function never block (a full FIFO
//!   spills to a per-core, per-target ordered list that the drain loop pushes as room appears,
//!   so nesting stays one drain deep under any flood); `wait` from thread context stays exact
//!   when message functions nest; watchdogs return [`Error::TimedOut`] instead of panicking.
//! - Operations, seed name in brackets: [`Ipiq::send`] (`lwkt_send_ipiq`),
//!   [`Ipiq::send_passive`] (`_passive`), [`Ipiq::try_send`] (`_nowait`),
//!   [`Ipiq::try_send_lazy`] (an IPI only to a halted core), [`Ipiq::send_many`]
//!   (`_mask`, any [`CpuSet`]: a `Copy` bit map of up to [`CpuSet::CAPACITY`] cores), [`Ipiq::send_batch`] (many messages to one target, one fence),
//!   [`Ipiq::seq`] / [`Ipiq::wait`] (`lwkt_seq_ipiq` / `lwkt_wait_ipiq`), [`Ipiq::process`]
//!   (`lwkt_process_ipiq`, the interrupt, idle and reschedule hook), [`Ipiq::poll`] (an idle
//!   loop polling before it halts, staying signalled), [`Ipiq::tick`] (the timer hook), the
//!   cpusync family ([`Ipiq::cpusync_simple`], [`Ipiq::cpusync_fastdata`], and the scoped
//!   [`Ipiq::cpusync`] / [`Ipiq::cpusync_release`] with [`CpuSync::add`]: the master runs with
//!   interrupts off from start to finish, and no caller ever owns a rendezvous it could forget),
//!   [`Ipiq::shootdown`] (TLB shootdown on cpusync, which never gives up),
//!   per-core [`Stats`] (switchable at run time with [`Ipiq::set_stats`]: one flag read
//!   Relaxed on the send and drain paths, see the `stats` module), the IPI-avoidance switch
//!   [`Ipiq::set_ipi_avoidance`], and [`Ipiq::shootdown_on`] (ranged or forced-full shootdown
//!   on chosen cores, for measurements), and [`Ipiq::core_status`] / [`Ipiq::log_core_states`]
//!   (what each core is doing: draining, polling, halted, held by whom, leading, waiting for
//!   what, messages run so far), which every watchdog prints when a wait passes its warning bound.
//!
//! ## Invariants (each checked by a test in `tests/`)
//! - **I1 order**: messages from core A to core B run on B in the order A sent them.
//! - **I2 exactly once**: an accepted message runs once; none is lost when an IPI is lost, a
//!   FIFO fills or a core was idle.
//! - **I3 few IPIs**: while a target has not yet started draining, further senders send no IPI.
//! - **I4 progress**: cores that all send to each other with full FIFOs still make progress.
//! - **I5** [`Ipiq::wait`] from thread context returns only after the target returned from
//!   every message up to the sequence number (also when message functions nest). From inside a
//!   message function it has the seed's meaning: every message up to the sequence number has
//!   started, and each has returned unless it is still on the target's stack beneath a nested
//!   drain; so two message functions on two cores that wait for each other's messages both
//!   complete instead of stalling until [`Error::TimedOut`].
//! - **I6 cpusync**: start returns once every target is held; targets run their finish work
//!   before (fastdata: with) the master's finish; a held core can serve a second master.
//! - **I7** a message to the current core runs at once, in the caller.
//!
//! ## Errors and stalls
//! Nothing panics on bad input: an unknown core is [`Error::NoSuchCpu`] (so is a core id a
//! [`CpuSet`] cannot hold, and a core past [`CpuSet::CAPACITY`] on a platform with more cores
//! than that, see [`Ipiq::new`]), a full FIFO on [`Ipiq::try_send`] is [`Error::WouldBlock`].
//! Every spin loop has a watchdog that counts time *without progress* (a target that keeps
//! working is never cut short): it re-sends the IPI to the cores that still owe something, logs
//! every core's [`CoreStatus`] past [`Config::warn_after_ns`] and again each time the stall
//! doubles, and then follows its [`Patience`]: waits, sends and the general cpusync give up
//! with [`Error::TimedOut`] past [`Config::timeout_ns`] (what was accepted still runs); a TLB
//! shootdown never gives up, since returning early would let a frame be reused while a core may
//! still map it, and panics with the diagnosis only past [`Config::stall_panic_ns`] if the
//! kernel sets one.
//!
//! ## Example (host platform)
//! ```
//! # #[cfg(feature = "std")] {
//! use ipiq::host::{HostConfig, HostMachine, HostPlatform};
//! use ipiq::{CpuSet, Ipiq};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! static RAN: AtomicUsize = AtomicUsize::new(0);
//! fn work(_: &Ipiq<HostPlatform>, _: usize, _: usize) {
//!     RAN.fetch_add(1, Ordering::Relaxed);
//! }
//!
//! let machine = HostMachine::start(HostConfig::cpus(4));
//! let sent = machine
//!     .run_on(0, |core| core.ipiq().cpusync_simple(&CpuSet::all(4).unwrap(), work, 0, 0))
//!     .unwrap()
//!     .unwrap();
//! assert_eq!(sent, 4);
//! assert_eq!(RAN.load(Ordering::Relaxed), 4);
//! machine.shutdown();
//! # }
//! ```

#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

pub mod arch;
mod cpusync;
mod drain;
mod fifo;
mod hold;
mod hooks;
mod irq;
mod matrix;
mod message;
mod percpu;
mod platform;
mod send;
mod spill;
mod stats;
mod status;
mod sync;
pub mod tick;
mod tlb;
mod wait;
mod wakeup;
mod watchdog;

#[cfg(all(feature = "std", not(ipiq_loom)))]
pub mod host;

pub use cpusync::{CpuSync, SyncWork};
pub use ipiq_abi::{CpuSet, Error, Seq, Stats};
pub use matrix::{Config, Ipiq};
pub use message::{IpiFn, Message};
pub use platform::{CpuId, IrqState, Platform};
pub use status::{CoreStatus, Waiting};
pub use sync::CachePadded;
pub use tlb::Shootdown;
pub use watchdog::Patience;
