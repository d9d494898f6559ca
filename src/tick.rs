//! The periodic tick on a one-shot timer: [`TickTimer`], the per-core bookkeeping that lets the
//! kernel's one-shot timer serve both its scheduler and ipiq's tick, and stop the tick while
//! nothing needs it.
//!
//! It remembers the scheduler's own deadline per core and has the kernel program the earlier of
//! it and the core's next tick, telling it which vector to use (a tick-only vector when the tick
//! comes first, so that interrupt drains passive messages without rescheduling).
//!
//! # No tick where nothing needs it
//! The tick exists for passive messages: they are queued without an IPI and wait for the
//! target's next drain, which the tick bounds. Hardware does not lose IPIs, waits re-send their
//! own (`wait.rs`), and a held cpusync target spins in its drain loop, so nothing else needs it.
//! The kernel stops a core's tick ([`TickTimer::stop`]) when `Ipiq::prepare_tick_stop` says it
//! may: at a tick that drained nothing, and when the idle loop halts. From then on a passive
//! send to that core comes with an IPI (decided with the same store; fence; load handshake as
//! the lazy sends, `wakeup.rs`) and asks for the tick again, which the core's next interrupt
//! entry grants (`Ipiq::take_tick_request`, then [`TickTimer::resume`], reprogramming the timer
//! only when the scheduler's deadline is not already earlier than the resumed tick). A core
//! that receives no passive messages, busy or idle, takes no timer interrupt but the
//! scheduler's own; under a stream of passive messages the tick runs and they cost no IPI.
//!
//! All times are in the kernel's timer unit (microseconds). Per-core fields are touched only by
//! their own core with interrupts disabled (the timer interrupt, the idle loop, the scheduler's
//! timer request), so every access is Relaxed.

use alloc::boxed::Box;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::platform::CpuId;

/// The per-core deadlines of a one-shot timer shared between the kernel's scheduler and ipiq's
/// periodic tick (all times in the kernel's timer unit, microseconds).
///
/// The scheduler keeps calling the kernel's "set one-shot timer" as before; the kernel's
/// wrapper passes the request through [`TickTimer::program`], which remembers it and returns
/// what to actually program: the earlier of the scheduler's deadline and the core's next tick,
/// and whether that is the tick (program the tick-only vector) or the scheduler's (its own
/// vector). The tick-only interrupt calls [`TickTimer::fired`] and re-programs.
///
/// Bound: while the tick runs, a passive message waits at most one tick period (plus the
/// interrupt's latency) before its target drains it; while the core's tick is stopped, a
/// passive send wakes it with an IPI instead.
pub struct TickTimer {
    /// Tick period in microseconds.
    period_us: u64,
    /// Per core, in one allocation (`CoreTick`). Only its own core writes or reads a core's
    /// entry, with interrupts disabled; Relaxed.
    cores: Box<[CoreTick]>,
}

/// One core's tick bookkeeping ([`TickTimer`]'s access rule: its own core, interrupts off).
struct CoreTick {
    /// The scheduler's requested deadline (`u64::MAX` = none).
    scheduler_deadline: AtomicU64,
    /// The next tick's time (`u64::MAX`: before `start`, and while stopped).
    next_tick: AtomicU64,
    /// The deadline of the last setting handed out (`u64::MAX`: none), which the kernel
    /// programs; `resume` leaves the timer alone when it already fires first.
    programmed: AtomicU64,
    /// Whether that setting was the tick's alone (the tick-only vector). With `programmed`,
    /// what the timer holds: `program` skips a request that would write the same thing again.
    programmed_tick_only: AtomicBool,
    /// Set while `stop` has stopped the tick and no `resume` has resumed it (a core never
    /// started is not stopped: `resume` does not start it).
    stopped: AtomicBool,
}

/// Which timer vector fired ([`TickTimer::fired`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerVector {
    /// The scheduler's own timer vector (its handler wakes tasks whose deadline passed).
    Scheduler,
    /// ipiq's tick-only vector (drains, re-arms, never reschedules).
    TickOnly,
}

/// What the kernel should program after [`TickTimer::program`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerSetting {
    /// Absolute deadline (µs), or `None` to mask the timer.
    pub deadline: Option<u64>,
    /// Whether the deadline is the tick's alone (use the tick-only vector).
    pub tick_only: bool,
}

impl TickTimer {
    /// Bookkeeping for `cpu_count` cores with a tick every `period_us` microseconds (at least 1;
    /// 0 disables the tick).
    pub fn new(cpu_count: usize, period_us: u64) -> Self {
        Self {
            period_us,
            cores: (0..cpu_count.max(1))
                .map(|_| CoreTick {
                    scheduler_deadline: AtomicU64::new(u64::MAX),
                    next_tick: AtomicU64::new(u64::MAX),
                    programmed: AtomicU64::new(u64::MAX),
                    programmed_tick_only: AtomicBool::new(false),
                    stopped: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    /// The tick period in microseconds (0: no tick).
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// Starts the tick on `cpu` (at bring-up): the first tick is one period from `now`.
    pub fn start(&self, cpu: CpuId, now: u64) -> TimerSetting {
        if let (Some(core), true) = (self.cores.get(cpu), self.period_us > 0) {
            // Relaxed: core-local (see the field docs).
            core.next_tick
                .store(now.saturating_add(self.period_us), Ordering::Relaxed);
        }
        self.setting(cpu)
    }

    /// The scheduler asked core `cpu` for a one-shot timer at `deadline` (`None`: no timer).
    /// Returns what to program, or `None` when the timer already holds exactly that (the same
    /// deadline on the same vector, not yet fired: a fired timer's interrupt has gone through
    /// [`TickTimer::fired`], whose setting the kernel programmed): the scheduler asks again at
    /// every task switch, mostly for what is armed already, and each timer write costs a VM
    /// exit under a hypervisor without APIC virtualization.
    ///
    /// Context: the kernel's timer request, interrupts disabled, on core `cpu`.
    pub fn program(&self, cpu: CpuId, deadline: Option<u64>) -> Option<TimerSetting> {
        if let Some(core) = self.cores.get(cpu) {
            // Relaxed: core-local.
            core.scheduler_deadline
                .store(deadline.unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        self.changed_setting(cpu)
    }

    /// A timer vector fired on `cpu` at `now`: advances the next tick past `now`, runs `tick`
    /// (ipiq's tick: [`crate::Ipiq::tick`]) if one was due, and returns what to program next.
    ///
    /// The setting is computed **after** `tick` ran: a message drained by the tick may itself
    /// arm the scheduler's timer ([`TickTimer::program`], e.g. a wake-up with a deadline), and a
    /// setting computed before the drain would overwrite that deadline until the following tick.
    ///
    /// With [`TimerVector::Scheduler`] a scheduler deadline that has passed is forgotten (the
    /// scheduler's handler, which runs next, re-arms what it still needs). With
    /// [`TimerVector::TickOnly`] it is kept: the setting then re-arms the scheduler's vector at
    /// once (a deadline in the past fires immediately), because only the scheduler's handler
    /// wakes the tasks whose time has come; forgetting it there would lose that wake-up.
    ///
    /// Context: the timer interrupt handler, interrupts disabled, on core `cpu`.
    pub fn fired(
        &self,
        cpu: CpuId,
        now: u64,
        vector: TimerVector,
        tick: impl FnOnce(),
    ) -> TimerSetting {
        if self.advance(cpu, now, vector) {
            tick();
        }
        self.setting(cpu)
    }

    /// Core `cpu` needs no tick (after `Ipiq::prepare_tick_stop` said so: at a tick that
    /// drained nothing, or before the idle loop halts): the tick stops until
    /// [`TickTimer::resume`]. Returns what to program (the scheduler's deadline alone, or a
    /// masked timer), or `None` when the timer already holds that (the tick had stopped before:
    /// an idle loop halting again).
    ///
    /// Context: the timer interrupt or the idle loop, interrupts disabled, on core `cpu`.
    pub fn stop(&self, cpu: CpuId) -> Option<TimerSetting> {
        if let Some(core) = self.cores.get(cpu) {
            // Relaxed: core-local.
            if self.period_us > 0 && core.next_tick.load(Ordering::Relaxed) != u64::MAX {
                core.next_tick.store(u64::MAX, Ordering::Relaxed);
                core.stopped.store(true, Ordering::Relaxed);
            }
        }
        self.changed_setting(cpu)
    }

    /// Core `cpu` needs its tick again at `now` (a passive sender asked,
    /// `Ipiq::take_tick_request`): the tick resumes, its next one a period from `now`. Returns
    /// a setting to program only when the timer must change: not when the tick was running
    /// anyway, nor when the programmed deadline (the scheduler's) already comes first (its
    /// interrupt then programs the tick through [`TickTimer::fired`]).
    ///
    /// Context: an interrupt handler or the idle loop, interrupts disabled, on core `cpu`.
    pub fn resume(&self, cpu: CpuId, now: u64) -> Option<TimerSetting> {
        let core = self.cores.get(cpu)?;
        // Relaxed: core-local.
        if !core.stopped.swap(false, Ordering::Relaxed) {
            return None;
        }
        let tick = now.saturating_add(self.period_us);
        core.next_tick.store(tick, Ordering::Relaxed);
        if core.programmed.load(Ordering::Relaxed) <= tick {
            return None;
        }
        Some(self.setting(cpu))
    }

    /// Whether core `cpu`'s tick is stopped (nothing needs it, or it was never started).
    pub fn is_stopped(&self, cpu: CpuId) -> bool {
        // Relaxed: core-local.
        self.period_us == 0
            || self
                .cores
                .get(cpu)
                .is_none_or(|c| c.next_tick.load(Ordering::Relaxed) == u64::MAX)
    }

    /// Advances the next tick past `now` and forgets a passed scheduler deadline (scheduler
    /// vector only); returns whether a tick is due.
    fn advance(&self, cpu: CpuId, now: u64, vector: TimerVector) -> bool {
        let Some(core) = self.cores.get(cpu) else {
            return false;
        };
        let mut due = false;
        let next = &core.next_tick;
        // Relaxed: core-local.
        let tick = next.load(Ordering::Relaxed);
        if tick <= now {
            // The periods missed since that tick (none without a tick: period 0). Skip them
            // rather than firing a burst.
            if let Some(missed) = (now - tick).checked_div(self.period_us) {
                due = true;
                let following = tick.saturating_add((missed + 1).saturating_mul(self.period_us));
                next.store(following, Ordering::Relaxed);
            }
        }
        if vector == TimerVector::Scheduler {
            let slot = &core.scheduler_deadline;
            // Relaxed: core-local.
            if slot.load(Ordering::Relaxed) <= now {
                slot.store(u64::MAX, Ordering::Relaxed);
            }
        }
        due
    }

    /// What core `cpu`'s timer should hold now: the earlier of the scheduler's deadline and
    /// the next tick.
    fn wanted(&self, cpu: CpuId) -> TimerSetting {
        let core = self.cores.get(cpu);
        // Relaxed: core-local.
        let scheduler = core.map_or(u64::MAX, |c| c.scheduler_deadline.load(Ordering::Relaxed));
        let tick = match core {
            Some(c) if self.period_us > 0 => c.next_tick.load(Ordering::Relaxed),
            _ => u64::MAX,
        };
        let deadline = scheduler.min(tick);
        TimerSetting {
            deadline: (deadline != u64::MAX).then_some(deadline),
            tick_only: tick < scheduler,
        }
    }

    /// [`TickTimer::setting`] when it differs from what the timer holds (the last setting handed
    /// out, not yet fired: a fired timer's handler has programmed [`TickTimer::fired`]'s
    /// setting since), else `None`.
    fn changed_setting(&self, cpu: CpuId) -> Option<TimerSetting> {
        let Some(core) = self.cores.get(cpu) else {
            return Some(self.setting(cpu));
        };
        // Relaxed: core-local.
        let held = (
            core.programmed.load(Ordering::Relaxed),
            core.programmed_tick_only.load(Ordering::Relaxed),
        );
        let wanted = self.wanted(cpu);
        if (wanted.deadline.unwrap_or(u64::MAX), wanted.tick_only) == held {
            return None;
        }
        Some(self.setting(cpu))
    }

    /// [`TickTimer::wanted`], recorded as what the timer holds: the caller programs it.
    fn setting(&self, cpu: CpuId) -> TimerSetting {
        let setting = self.wanted(cpu);
        if let Some(core) = self.cores.get(cpu) {
            // Relaxed: core-local.
            core.programmed
                .store(setting.deadline.unwrap_or(u64::MAX), Ordering::Relaxed);
            core.programmed_tick_only
                .store(setting.tick_only, Ordering::Relaxed);
        }
        setting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_timer_takes_the_earlier_deadline() {
        let timer = TickTimer::new(2, 10_000);
        assert_eq!(
            timer.start(1, 0),
            TimerSetting {
                deadline: Some(10_000),
                tick_only: true
            }
        );
        assert_eq!(
            timer.program(1, Some(5_000)),
            Some(TimerSetting {
                deadline: Some(5_000),
                tick_only: false
            })
        );
        assert_eq!(
            timer.program(1, None),
            Some(TimerSetting {
                deadline: Some(10_000),
                tick_only: true
            })
        );
        // A late interrupt skips missed ticks.
        let mut due = false;
        let next = timer.fired(1, 35_000, TimerVector::Scheduler, || due = true);
        assert!(due);
        assert_eq!(
            next,
            TimerSetting {
                deadline: Some(40_000),
                tick_only: true
            }
        );
        // The scheduler's deadline fires first: no tick due, the deadline is forgotten.
        timer.program(1, Some(36_000));
        let next = timer.fired(1, 36_000, TimerVector::Scheduler, || panic!("no tick due"));
        assert_eq!(next.deadline, Some(40_000));
        // Out-of-range cores and a disabled tick do not panic.
        assert_eq!(timer.program(7, Some(1)).map(|s| s.deadline), Some(None));
        let off = TickTimer::new(1, 0);
        assert_eq!(off.start(0, 5).deadline, None);
        off.fired(0, 5, TimerVector::Scheduler, || panic!("the tick is off"));
    }

    #[test]
    fn a_deadline_armed_by_a_message_the_tick_drained_is_programmed() {
        let timer = TickTimer::new(1, 10_000);
        timer.start(0, 0);
        // The tick fires at 10_000; one of the messages it drains wakes a task with a deadline
        // (the scheduler arms its timer from inside the drain) at 12_000, before the next tick.
        for vector in [TimerVector::TickOnly, TimerVector::Scheduler] {
            timer.program(0, None);
            let now = if vector == TimerVector::TickOnly {
                10_000
            } else {
                20_000
            };
            let next = timer.fired(0, now, vector, || {
                timer.program(0, Some(now + 2_000));
            });
            assert_eq!(
                next,
                TimerSetting {
                    deadline: Some(now + 2_000),
                    tick_only: false
                },
                "{vector:?}: the deadline armed during the drain is what gets programmed"
            );
        }
    }

    #[test]
    fn a_tick_never_swallows_a_passed_scheduler_deadline() {
        let timer = TickTimer::new(1, 10_000);
        timer.start(0, 0);
        // The scheduler wants 10_500; the tick (10_000) fires first but its handler runs late,
        // at 11_000, when the scheduler's deadline has passed too.
        timer.program(0, Some(10_500));
        let mut due = false;
        let next = timer.fired(0, 11_000, TimerVector::TickOnly, || due = true);
        assert!(due);
        assert_eq!(
            next,
            TimerSetting {
                deadline: Some(10_500),
                tick_only: false
            },
            "the scheduler's vector is re-armed at once"
        );
        // Its handler runs and forgets the deadline; the tick goes on.
        let next = timer.fired(0, 11_001, TimerVector::Scheduler, || panic!("no tick due"));
        assert_eq!(
            next,
            TimerSetting {
                deadline: Some(20_000),
                tick_only: true
            }
        );
    }

    #[test]
    fn a_stopped_tick_takes_no_interrupt_and_resumes_on_request() {
        let timer = TickTimer::new(1, 10_000);
        timer.start(0, 0);
        // Stopped with no scheduler deadline: nothing to program at all.
        assert_eq!(
            timer.stop(0),
            Some(TimerSetting {
                deadline: None,
                tick_only: false
            })
        );
        assert!(timer.is_stopped(0));
        // Stopping again (an idle loop halting again) writes nothing.
        assert_eq!(timer.stop(0), None);
        // A scheduler interrupt while stopped (a sleep ends) runs no tick and programs no tick.
        timer.program(0, Some(50_000));
        let next = timer.fired(0, 50_000, TimerVector::Scheduler, || {
            panic!("stopped: no tick")
        });
        assert_eq!(next.deadline, None);
        // Asked for at 50_000: the tick resumes a period later and must be programmed.
        assert_eq!(
            timer.resume(0, 50_000),
            Some(TimerSetting {
                deadline: Some(60_000),
                tick_only: true
            })
        );
        assert!(!timer.is_stopped(0));
        // Resuming again while it runs changes nothing.
        assert_eq!(timer.resume(0, 51_000), None);
        let mut due = false;
        timer.fired(0, 60_000, TimerVector::TickOnly, || due = true);
        assert!(due, "the resumed tick fires");
    }

    #[test]
    fn waking_before_a_scheduler_deadline_leaves_the_timer_alone() {
        let timer = TickTimer::new(1, 10_000);
        timer.start(0, 0);
        // A sleeping task's deadline at 3_000 is programmed; the core idles with it.
        timer.program(0, Some(3_000));
        // The scheduler's 3_000 is what the timer holds already: nothing to write.
        assert_eq!(timer.stop(0), None);
        // Asked for the tick early, at 1_000: the programmed deadline (3_000) comes before the
        // resumed tick (11_000), so nothing is reprogrammed; that interrupt brings the tick back.
        assert_eq!(timer.resume(0, 1_000), None);
        let next = timer.fired(0, 3_000, TimerVector::Scheduler, || {
            panic!("no tick due yet")
        });
        assert_eq!(
            next,
            TimerSetting {
                deadline: Some(11_000),
                tick_only: true
            }
        );
        // A disabled tick never stops or resumes, and waking never starts a tick that was never
        // started (an interrupt on a core before its bring-up finished).
        let off = TickTimer::new(1, 0);
        off.stop(0);
        assert_eq!(off.resume(0, 5), None);
        let unstarted = TickTimer::new(1, 10_000);
        unstarted.stop(0);
        assert_eq!(unstarted.resume(0, 5), None);
        assert!(unstarted.is_stopped(0));
    }

    #[test]
    fn a_request_for_what_the_timer_holds_writes_nothing() {
        let timer = TickTimer::new(1, 10_000);
        timer.start(0, 0);
        // The scheduler asks at every task switch, mostly for what is armed: the tick alone.
        assert_eq!(timer.program(0, None), None);
        assert_eq!(
            timer.program(0, Some(20_000)),
            None,
            "the tick (10_000) still comes first"
        );
        // A deadline before the tick changes the timer, once.
        let sooner = Some(TimerSetting {
            deadline: Some(4_000),
            tick_only: false,
        });
        assert_eq!(timer.program(0, Some(4_000)), sooner);
        assert_eq!(timer.program(0, Some(4_000)), None);
        // Dropping it brings the tick back, on its own vector.
        assert_eq!(
            timer.program(0, None),
            Some(TimerSetting {
                deadline: Some(10_000),
                tick_only: true
            })
        );
        // The same deadline on the other vector is a change: the tick-only vector would not wake
        // the scheduler's task.
        assert_eq!(
            timer.program(0, Some(10_000)),
            Some(TimerSetting {
                deadline: Some(10_000),
                tick_only: false
            })
        );
        // Once the timer fired, the handler programs the next setting; a request for it after
        // that writes nothing, a different one does.
        let next = timer.fired(0, 10_000, TimerVector::Scheduler, || {});
        assert_eq!(next.deadline, Some(20_000));
        assert_eq!(timer.program(0, None), None);
        assert_eq!(
            timer.program(0, Some(15_000)).map(|s| s.deadline),
            Some(Some(15_000))
        );
        // An idle core's masked timer stays masked without a write.
        let idle = TickTimer::new(1, 10_000);
        idle.start(0, 0);
        assert_eq!(idle.stop(0).map(|s| s.deadline), Some(None));
        assert_eq!(idle.program(0, None), None);
    }
}
