//! Watchdogs for ipiq's spin loops (the seed's `lwkt_wait_ipiq` warning and panic, made
//! recoverable where the caller can recover, and diagnosable everywhere).
//!
//! A spin loop that waits for other cores (a `wait`, a send into a full FIFO, a cpusync master
//! gathering or releasing its targets, a held target waiting for its master) makes a
//! [`Watchdog`] and calls [`Watchdog::check`] on every pass with a *progress mark*: a number
//! that grows whenever the cores it waits on did something it waits for (a FIFO index, a count of
//! targets in). Every bound counts time **without progress**, not time since the start, so a
//! long wait on a target that keeps working is never cut short.
//!
//! The clock is read on every `CLOCK_EVERY`th check without progress, not on every pass, and
//! not when the watchdog is made: most waits end within a few passes (a round trip to a
//! polling core takes a few hundred nanoseconds), and a clock read per pass cost them more than
//! the protocol's own work on the host. A stall is therefore timed from the first clock read
//! after the last progress, at most `CLOCK_EVERY` passes late: nanoseconds to microseconds
//! against bounds of milliseconds and more.
//!
//! Past [`Config::resend_after_ns`] without progress the watchdog re-sends the IPI, but only to
//! the cores still owing something (a cpusync target that already entered spins in its hold loop
//! and needs no interrupt). Past [`Config::warn_after_ns`] it logs a warning naming what it waits
//! for and on whom, followed by every core's [`crate::CoreStatus`], and warns again each time the
//! stall doubles. Then, by [`Patience`]:
//! - [`Patience::Bounded`] (waits, sends, the general cpusync): past [`Config::timeout_ns`] the
//!   caller gets [`Error::TimedOut`]; what was accepted stays queued and still runs.
//! - [`Patience::Unbounded`] (TLB shootdown; a held cpusync target): never gives up, because the
//!   caller must not go on (a shootdown that returned early would let a frame be reused while a
//!   core may still map it). Past [`Config::stall_panic_ns`], if set, it panics with the
//!   diagnosis already logged: the kernel's choice between a hang and a crash with a report.

use crate::matrix::{Config, Ipiq};
use crate::platform::{CpuId, Platform};
use crate::status::{PreviousWait, Waiting};
use crate::Error;

/// Checks without progress between two clock reads (module docs). A power of two.
const CLOCK_EVERY: u32 = 16;

/// How long a spin loop keeps waiting for cores that make no progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// Give up with [`Error::TimedOut`] after [`Config::timeout_ns`] without progress.
    Bounded,
    /// Never give up (escalating warnings; a panic past [`Config::stall_panic_ns`] if set).
    Unbounded,
}

/// One spin loop's watchdog. Making it records, in the core's status, what the core waits for;
/// dropping it restores the previous record (waits nest).
pub(crate) struct Watchdog<'a, P: Platform> {
    ipiq: &'a Ipiq<P>,
    me: CpuId,
    waiting: Waiting,
    patience: Patience,
    previous: PreviousWait,
    /// The last progress mark seen.
    mark: u64,
    /// Checks without progress since `mark` last changed (or the wait began), wrapping.
    checks: u32,
    /// Whether `progress_at` and `resent_at` have been read from the clock since `mark` last
    /// changed (or the wait began).
    timed: bool,
    /// The first clock reading after `mark` last changed (or the wait began).
    progress_at: u64,
    /// When IPIs were last (re-)sent, or progress last seen.
    resent_at: u64,
    /// The stall length at which the next warning is due (doubles after each).
    next_warning: u64,
}

impl<P: Platform> Ipiq<P> {
    /// A watchdog for core `me` waiting for `waiting` on `on` (if one core), with `mark` the
    /// progress mark now. Context: interrupts disabled, on core `me`.
    pub(crate) fn watchdog(
        &self,
        me: CpuId,
        waiting: Waiting,
        on: Option<CpuId>,
        patience: Patience,
        mark: u64,
    ) -> Watchdog<'_, P> {
        let previous = self.diag(me).begin_wait(waiting, on);
        Watchdog {
            ipiq: self,
            me,
            waiting,
            patience,
            previous,
            mark,
            checks: 0,
            timed: false,
            progress_at: 0,
            resent_at: 0,
            next_warning: self.config().warn_after_ns,
        }
    }
}

impl<P: Platform> Watchdog<'_, P> {
    /// One step of the spin loop: `mark` is the progress mark now, `owing` lists the cores that
    /// still owe something (they get the re-sent IPIs and are named in warnings). Returns
    /// [`Error::TimedOut`] only under [`Patience::Bounded`].
    ///
    /// Context: interrupts disabled, on the watchdog's core. Panics only under
    /// [`Patience::Unbounded`] with [`Config::stall_panic_ns`] set, after logging the diagnosis.
    pub(crate) fn check<I>(&mut self, mark: u64, owing: impl Fn() -> I) -> Result<(), Error>
    where
        I: Iterator<Item = CpuId>,
    {
        let ipiq = self.ipiq;
        if mark != self.mark {
            self.mark = mark;
            self.checks = 0;
            self.timed = false;
            return Ok(());
        }
        self.checks = self.checks.wrapping_add(1);
        // A mask, not `is_multiple_of`: the kernel's toolchain predates it.
        if self.checks & (CLOCK_EVERY - 1) != 0 {
            return Ok(());
        }
        let now = ipiq.platform().now_ns();
        if !self.timed {
            // The stall (if it is one) is timed from here.
            self.timed = true;
            self.progress_at = now;
            self.resent_at = now;
            self.next_warning = ipiq.config().warn_after_ns;
            return Ok(());
        }
        let config: Config = ipiq.config();
        let stalled = now.saturating_sub(self.progress_at);
        let me = self.me;
        if self.patience == Patience::Bounded && stalled >= config.timeout_ns {
            log::error!(
                "ipiq: cpu {me} gave up waiting for {} from cpus [{}] after {stalled} ns without progress",
                self.waiting.describe(),
                List(&owing)
            );
            ipiq.log_core_states();
            ipiq.count(me, |c| &c.timeouts, 1);
            return Err(Error::TimedOut);
        }
        if stalled >= self.next_warning {
            self.next_warning = self.next_warning.saturating_mul(2).max(1);
            log::warn!(
                "ipiq: cpu {me} waiting for {} from cpus [{}]: {stalled} ns without progress",
                self.waiting.describe(),
                List(&owing)
            );
            ipiq.log_core_states();
        }
        if let (Patience::Unbounded, Some(bound)) = (self.patience, config.stall_panic_ns) {
            if stalled >= bound {
                ipiq.log_core_states();
                panic!(
                    "ipiq: cpu {me} stalled {stalled} ns waiting for {} from cpus [{}] (core states logged above)",
                    self.waiting.describe(),
                    List(&owing)
                );
            }
        }
        // A held target waits for its master's release, which no IPI speeds up.
        if self.waiting != Waiting::Release
            && now.saturating_sub(self.resent_at) >= config.resend_after_ns
        {
            self.resent_at = now;
            for target in owing().filter(|&t| t != me) {
                ipiq.count(me, |c| &c.ipi_resent, 1);
                ipiq.resignal(me, target);
            }
        }
        Ok(())
    }
}

impl<P: Platform> Drop for Watchdog<'_, P> {
    fn drop(&mut self) {
        self.ipiq.diag(self.me).end_wait(&self.previous);
    }
}

/// Formats the cores an iterator yields as `1, 2, 3`.
struct List<'a, F>(&'a F);

impl<I: Iterator<Item = CpuId>, F: Fn() -> I> core::fmt::Display for List<'_, F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, cpu) in (self.0)().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{cpu}")?;
        }
        Ok(())
    }
}
