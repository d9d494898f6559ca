//! The statistics layout: one list of counters ([`for_each_counter!`]) from which the kernel
//! builds its per-core counters and both sides build [`Stats`]. `sys_ipiq_stats` copies the
//! values in the list's order ([`Stats::NAMES`]), so a counter is only ever appended: a program
//! built against an older list reads the leading values it knows and ignores the rest.

/// Calls `$callback!` with the counter list: each counter's doc comment and name, in the order
/// of the syscall's words. Append new counters at the end.
#[macro_export]
macro_rules! for_each_counter {
    ($callback:ident) => {
        $callback! {
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
            /// kernel's platform reported them (`ipiq::Platform::send_ipi_many`): `send_many`,
            /// cpusync enter messages and TLB shootdowns. `ipis` counts the targets those
            /// writes interrupted; a unicast wake-up is one write per IPI, counted in
            /// `icr_unicast`. Appended last, so [`Stats::NAMES`] and the kernel's
            /// `sys_ipiq_stats` words keep their order.
            icr_writes,
            /// Hardware writes of this core's single-target IPIs (`ipiq::Platform::send_ipi`, one
            /// each): wake-ups and watchdog re-sends. With `icr_writes`, every ICR write ipiq made
            /// on this core: the wake-up part of its hypervisor bill.
            icr_unicast,

        }
    };
}

macro_rules! define_stats {
    ($( $(#[$doc:meta])* $name:ident, )*) => {
        /// A copy of one core's statistics (or their sum over cores).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl core::ops::AddAssign for Stats {
            fn add_assign(&mut self, other: Stats) {
                $( self.$name = self.$name.wrapping_add(other.$name); )*
            }
        }

        impl Stats {
            /// The names of the fields, in declaration order (the syscall's word order).
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

for_each_counter!(define_stats);

#[cfg(test)]
mod tests {
    use super::Stats;

    #[test]
    fn values_round_trip_in_name_order() {
        let values: [u64; 64] = core::array::from_fn(|i| i as u64 * 3 + 1);
        let stats = Stats::from_values(&values);
        assert!(stats
            .values()
            .eq(values[..Stats::NAMES.len()].iter().copied()));
        assert_eq!(stats.sent, 1);
        // Fewer values than counters: the rest are zero.
        let short = Stats::from_values(&values[..2]);
        assert_eq!((short.sent, short.local, short.ipis), (1, 4, 0));
    }
}
