//! The host platform (feature `std`): OS threads stand in for cores, for tests, examples and
//! benchmarks.
//!
//! Each simulated core is a thread running a small kernel loop: it serves a pending IPI (by
//! calling [`Ipiq::process`]), runs the timer tick every [`HostConfig::tick`], runs tasks handed
//! to it with [`HostMachine::run_on`] / [`HostMachine::spawn_on`], and otherwise halts (sleeps).
//! An IPI sets the target's pending bit (its IRR bit) and unparks its thread. Each core has a
//! *virtual interrupt flag*, kept in its per-core state: [`Platform::irq_save`](crate::Platform::irq_save) clears it and
//! [`Platform::irq_restore`](crate::Platform::irq_restore) puts it back, and every ipiq operation runs with it off.
//!
//! # When interrupts are taken ([`HostConfig::delivery`])
//! - [`IrqDelivery::SafePoints`] (the default): a task is kernel code with interrupts enabled
//!   only at its *safe points*: [`HostCore::interrupt_point`], [`HostCore::idle_until`], the
//!   halt of the core loop, and inside every ipiq call that spins (which drains the core's queues
//!   itself). Runs are repeatable and cheap; a task that never reaches a safe point is never
//!   interrupted.
//! - [`IrqDelivery::Preemptive`] (Linux): interrupts preempt the core wherever it is, as real
//!   ones do. An IPI, and every timer tick (sent by a timer thread of the machine), is a POSIX
//!   signal to the core's thread (`pthread_kill`, SIGURG); the handler runs [`Ipiq::process`]
//!   (or [`Ipiq::tick`]) at once when the core's virtual interrupt flag is on, with the flag off
//!   meanwhile, as an interrupt gate does; when the flag is off, the request stays pending and
//!   the `irq_restore` that turns the flag back on takes it, as `sti` does. Delayed IPIs (fault
//!   injection) are delivered by the timer thread too, so nothing waits for a core to spin. The
//!   safe points still take pending interrupts. What the handler touches, and why that is sound,
//!   is written out in the `preempt` module (`src/host/preempt.rs`); in short: two `const`
//!   thread-locals with no destructor (static TLS, no lazy initialisation), the core's atomics,
//!   and ipiq's own interrupt-context code, which is safe to enter whenever the interrupted
//!   code had interrupts on. The binary must use [`InterruptsOffAlloc`] as its global allocator
//!   (the handler may allocate, so the allocator's lock, like every lock interrupt context
//!   takes, is taken with interrupts off). [`HostPlatform::interrupts`] counts where the
//!   interrupts landed (in task code, at safe points, deferred, taken at `irq_restore`), and at
//!   how many distinct instruction addresses task code was interrupted.
//!
//! Multicasts ([`Platform::send_ipi_many`](crate::Platform::send_ipi_many)): each target is delivered as by
//! [`Platform::send_ipi`](crate::Platform::send_ipi); the reported write count models the x86 platform's all-excluding-self
//! shorthand (a set of every core but the caller is one write) and otherwise one write per
//! target (no cluster destinations). [`HostPlatform::multicast_calls`] counts the calls.
//!
//! Fault injection: [`HostConfig::drop_ipi_per_mille`] of the IPIs vanish and
//! [`HostConfig::delay_ipi_per_mille`] arrive only after [`HostConfig::ipi_delay`]. Lost IPIs are
//! recovered by the tick and the watchdogs, as on hardware that misbehaves.

use std::cell::Cell;
use std::time::Duration;

use crate::platform::CpuId;
use crate::{Config, Ipiq};

mod irq;
mod machine;
mod platform;
#[cfg(target_os = "linux")]
mod preempt;

use irq::{CoreState, Place};
pub use irq::{Interrupts, InterruptsOffAlloc};
pub use machine::{HostCore, HostMachine, Pending};
pub use platform::{HostPlatform, IpiFaults, TlbFlushes};

/// The preemptive mode needs POSIX signals as this module uses them (Linux); elsewhere asking
/// for it is an error and nothing here sends a signal.
#[cfg(not(target_os = "linux"))]
mod preempt {
    use super::{CoreState, Interrupts};

    #[derive(Default)]
    pub(super) struct IrqLine;

    impl IrqLine {
        pub(super) fn snapshot(&self) -> Interrupts {
            Interrupts::default()
        }
        pub(super) fn kick(&self) {}
        pub(super) fn retire(&self) {}
    }

    pub(super) fn install() -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "ipiq host: the preemptive mode needs Linux signals",
        ))
    }

    pub(super) fn take_on_restore(_: &CoreState) {}

    pub(super) fn take_at_safe_point(_: &CoreState) -> usize {
        0
    }
}

std::thread_local! {
    /// The simulated core this thread is, if any.
    static CURRENT: Cell<Option<CpuId>> = const { Cell::new(None) };
    /// This thread's core state (null on threads that are not cores). `const` and without a
    /// destructor, so the interrupt handler may read it (see the module docs).
    static CORE: Cell<*const CoreState> = const { Cell::new(std::ptr::null()) };
    /// The queues this core serves, for its interrupt handler (null outside core threads, and
    /// before the core first enables interrupts or after it retires). `const`, no destructor.
    static HANDLER_IPIQ: Cell<*const Ipiq<HostPlatform>> = const { Cell::new(std::ptr::null()) };
    /// Counts `relax` calls, to yield the OS CPU now and then.
    static SPINS: Cell<u32> = const { Cell::new(0) };
}

/// When a simulated core takes its interrupts (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IrqDelivery {
    /// Only at safe points: interrupt points, the idle loop, the halt, ipiq's spin loops.
    #[default]
    SafePoints,
    /// Wherever the core is, whenever its virtual interrupt flag is on (POSIX signals; Linux).
    Preemptive,
}

/// How to build a [`HostMachine`].
#[derive(Clone, Copy, Debug)]
pub struct HostConfig {
    /// Simulated cores.
    pub cpus: usize,
    /// The ipiq settings.
    pub ipiq: Config,
    /// Timer tick period of each core.
    pub tick: Duration,
    /// IPIs lost, per thousand.
    pub drop_ipi_per_mille: u32,
    /// IPIs delivered late, per thousand.
    pub delay_ipi_per_mille: u32,
    /// How late a delayed IPI arrives.
    pub ipi_delay: Duration,
    /// Seed of the fault-injection generator.
    pub seed: u64,
    /// How long an idle core polls its queues (through [`Ipiq::poll`], staying signalled so
    /// senders need no IPI) before it sleeps; zero: it sleeps at once, as a core that halts.
    pub idle_poll: Duration,
    /// When cores take interrupts: at safe points only (default) or preemptively.
    pub delivery: IrqDelivery,
}

impl HostConfig {
    /// `cpus` cores, default ipiq settings, a 1 ms tick, no faults.
    pub fn cpus(cpus: usize) -> Self {
        Self {
            cpus,
            ipiq: Config::default(),
            tick: Duration::from_millis(1),
            drop_ipi_per_mille: 0,
            delay_ipi_per_mille: 0,
            ipi_delay: Duration::from_micros(200),
            seed: 0x9e37_79b9_7f4a_7c15,
            idle_poll: Duration::ZERO,
            delivery: IrqDelivery::SafePoints,
        }
    }
}
