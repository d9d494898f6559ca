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
use crate::Stats;

macro_rules! define_counters {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// One core's counters. Each counter is written only by the core it belongs to (with
        /// interrupts disabled), so a plain load-and-store suffices; other cores read them
        /// Relaxed, because statistics order nothing.
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( $(#[$doc])* pub(crate) $name: AtomicU64, )*
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
    };
}

// The list lives in `ipiq-abi`, so the kernel's counters and the application's `Stats` are
// built from one declaration.
ipiq_abi::for_each_counter!(define_counters);

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

#[cfg(all(test, feature = "std", not(ipiq_loom)))]
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
