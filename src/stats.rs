//! Per-core statistics (the seed's `ipiq_count`, `ipiq_fifofull`, `ipiq_avoided`,
//! `ipiq_passive`, `ipiq_cscount`, and more).
//!
//! # Switching them off
//! Counting is on by default ([`crate::Config::stats`]) and can be switched at run time with
//! [`crate::Ipiq::set_stats`]. The switch is one `AtomicBool` in the `Ipiq`, read Relaxed on
//! every send and drain path before a counter is touched (`Ipiq::count`): a policy flag that
//! orders no data, so a core may count a few events after another core switched it off (or miss
//! a few after it was switched on); statistics are advisory anyway. While off, no counter moves
//! (snapshots keep their last values) and the send and drain paths skip the counter stores, so
//! what remains is one load of a shared, rarely written flag. Counting resumes from those values
//! when it is switched back on. The guest benchmark (`hermit-app/apps/ipiq-bench`) measures
//! streaming and round trips with it on and off.

use crate::sync::{AtomicU64, Ordering};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// One core's counters. Each counter is written only by the core it belongs to (with
        /// interrupts disabled), so a plain load-and-store suffices; other cores read them
        /// Relaxed, because statistics order nothing.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( $(#[$doc])* pub(crate) $name: AtomicU64, )*
        }

        /// A copy of one core's statistics (or their sum over cores).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                // Relaxed: statistics are advisory and order nothing.
                Stats { $( $name: self.$name.load(Ordering::Relaxed), )* }
            }

            pub(crate) fn reset(&self) {
                // Relaxed: see `snapshot`.
                $( self.$name.store(0, Ordering::Relaxed); )*
            }
        }

        impl core::ops::AddAssign for Stats {
            fn add_assign(&mut self, other: Stats) {
                $( self.$name += other.$name; )*
            }
        }

        impl Stats {
            /// The names of the fields, in declaration order (for tables).
            pub const NAMES: &'static [&'static str] = &[$( stringify!($name), )*];

            /// Statistics from values in the order of [`Stats::NAMES`] (missing ones are 0,
            /// extra ones ignored): the inverse of [`Stats::values`].
            pub fn from_values(values: &[u64]) -> Self {
                let mut values = values.iter().copied();
                Stats { $( $name: values.next().unwrap_or(0), )* }
            }

            /// The values of the fields, in the order of [`Stats::NAMES`].
            pub fn values(&self) -> impl Iterator<Item = u64> {
                [$( self.$name, )*].into_iter()
            }
        }
    };
}

counters! {
    /// Messages this core queued for other cores (active, passive, nowait and lazy).
    sent,
    /// Messages sent to this core itself, which ran at once in the caller.
    local,
    /// IPIs this core sent.
    ipis,
    /// Sends that needed no IPI because the target was already signalled or draining.
    avoided,
    /// Passive messages queued without an IPI.
    passive,
    /// Sends that found the FIFO at least half full (and drained their own queues).
    fifo_full,
    /// Sends from inside a message function that found the FIFO full and went to the spill list.
    spilled,
    /// `try_send` calls refused with `WouldBlock`.
    would_block,
    /// Messages this core ran from its incoming FIFOs.
    processed,
    /// Of those, messages drained by the timer tick.
    tick_drained,
    /// Timer ticks seen.
    ticks,
    /// cpusyncs this core led.
    cpusync,
    /// cpusyncs this core took part in as a target.
    cpusync_target,
    /// TLB shootdowns this core led.
    shootdowns,
    /// Pages invalidated by those shootdowns (by range).
    shootdown_pages,
    /// Shootdowns that flushed everything instead of a range.
    full_flushes,
    /// IPIs re-sent by a watchdog (wait, full FIFO, cpusync).
    ipi_resent,
    /// Waits that returned `TimedOut`.
    timeouts,
    /// Lazy messages (`try_send_lazy`) queued without an IPI: the target was not halted.
    lazy,
    /// Targets of this core's shootdowns that were halted: no IPI, their flush deferred to
    /// their wake-up.
    shootdown_deferred,
    /// Full flushes this core did on waking because a shootdown deferred one while it halted.
    deferred_flushes,
    /// Hardware writes (ICR writes on x86) this core's multicast wake-ups took, as the
    /// platform reported them ([`crate::Platform::send_ipi_many`]): `send_many`, cpusync enter
    /// messages and TLB shootdowns. `ipis` counts the targets those writes interrupted; a
    /// unicast wake-up is one write per IPI and is counted in `ipis` only. Appended last, so
    /// [`Stats::NAMES`] and the kernel's `sys_ipiq_stats` words keep their order.
    icr_writes,
}

impl Counters {
    /// Adds `n` to `counter`. Only the owning core calls this, with interrupts disabled.
    #[inline]
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        // Relaxed load and store, not a locked RMW: the owning core is the only writer, so no
        // update is lost, and statistics order nothing.
        counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
}

#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use crate::host::{HostConfig, HostMachine, HostPlatform};
    use crate::Ipiq;

    fn nothing(_: &Ipiq<HostPlatform>, _: usize, _: usize) {}

    /// Sends `n` messages from core 0 to core 1, each waited for.
    fn send(machine: &HostMachine, n: usize) {
        machine
            .run_on(0, move |core| {
                for _ in 0..n {
                    let seq = core.ipiq().send(1, nothing, 0, 0).unwrap();
                    core.ipiq().wait(1, seq).unwrap();
                }
            })
            .unwrap();
    }

    #[test]
    fn counts_stop_while_off_and_resume_while_on() {
        let machine = HostMachine::start(HostConfig::cpus(2));
        let q = machine.ipiq();
        let counts = || {
            let (s0, s1) = (q.stats(0).unwrap(), q.stats(1).unwrap());
            (s0.sent, s1.processed)
        };
        let (sent0, processed0) = counts();
        send(&machine, 10);
        assert_eq!(counts(), (sent0 + 10, processed0 + 10));

        q.set_stats(false);
        assert!(!q.config().stats);
        let frozen = (q.stats(0).unwrap(), q.stats(1).unwrap());
        send(&machine, 25);
        assert_eq!((q.stats(0).unwrap(), q.stats(1).unwrap()), frozen);

        q.set_stats(true);
        assert!(q.config().stats);
        send(&machine, 5);
        assert_eq!(counts(), (sent0 + 15, processed0 + 15));
        machine.shutdown();
    }
}
