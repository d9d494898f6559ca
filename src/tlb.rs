//! TLB shootdown on cpusync: after a present mapping changed or went away, make every other
//! online core drop its stale translation before the caller goes on (and, say, frees the frame).
//!
//! Ranged `invlpg` up to [`crate::Config::shootdown_cutoff_pages`], beyond that a full flush that
//! also drops global entries. The targets flush as they enter the rendezvous; the caller flushes
//! its own TLB while they do, and returns only once every target has flushed.
//!
//! [`Ipiq::shootdown_on`] runs the same rendezvous on chosen cores, ranged or forced full, for
//! measuring one against the other (the benchmark probe in `hermit-app/kernel/patches/`).

use crate::cpusync::SyncWork;
use crate::error::Error;
use crate::matrix::Ipiq;
use crate::message::Message;
use crate::platform::Platform;

/// `pages` value meaning "flush everything".
const FULL: usize = usize::MAX;

/// The target side: flush `pages` pages from `start`, or everything.
fn flush<P: Platform>(ipiq: &Ipiq<P>, start: usize, pages: usize) {
    if pages == FULL {
        ipiq.platform().flush_tlb_all();
    } else {
        ipiq.platform().flush_tlb_range(start, pages);
    }
}

/// What one shootdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shootdown {
    /// Other cores that flushed.
    pub targets: usize,
    /// Whether it flushed everything (more pages than the cutoff) instead of a range.
    pub full: bool,
}

impl<P: Platform> Ipiq<P> {
    /// Invalidates `pages` 4 KiB pages from `start` (page-aligned down) on every online core,
    /// and returns once all of them have done so. `pages == 0` does nothing.
    ///
    /// Context: call after the page-table change, not from a message function. Errors: as
    /// [`Ipiq::cpusync_start`] ([`Error::TimedOut`] if a core never answers; the cores that did
    /// answer have flushed, and the local TLB is always flushed).
    pub fn shootdown(&self, start: usize, pages: usize) -> Result<Shootdown, Error> {
        if pages == 0 {
            return Ok(Shootdown {
                targets: 0,
                full: false,
            });
        }
        let full = pages > self.config().shootdown_cutoff_pages;
        let start = start & !0xfff;
        let pages_arg = if full { FULL } else { pages };
        self.shootdown_inner(None, start, pages_arg, pages)
    }

    /// Flushes every TLB entry, global ones included, on every online core, and returns once all
    /// have done so.
    pub fn shootdown_all(&self) -> Result<Shootdown, Error> {
        self.shootdown_inner(None, 0, FULL, 0)
    }

    /// A shootdown on chosen cores, ranged or forced full: for measurements (ranged against
    /// full, over a given number of cores), not for keeping TLBs coherent, which needs every
    /// core ([`Ipiq::shootdown`]).
    ///
    /// Invalidates `pages` pages from `start` (page-aligned down) on the online cores of
    /// `targets` (the caller is skipped, and flushes locally) and returns once they have. With
    /// `force_full` every core involved flushes everything instead (the path
    /// [`Ipiq::shootdown`] takes past [`crate::Config::shootdown_cutoff_pages`]); without it a
    /// count past the cutoff is also full, as there. `pages == 0` without `force_full` does
    /// nothing; an empty `targets` flushes only the caller.
    ///
    /// Errors: [`Error::NoSuchCpu`] if `targets` names a core past the core count (nothing
    /// flushed); otherwise as [`Ipiq::shootdown`].
    pub fn shootdown_on(
        &self,
        targets: &crate::CpuSet,
        start: usize,
        pages: usize,
        force_full: bool,
    ) -> Result<Shootdown, Error> {
        if let Some(max) = targets.max() {
            self.check_cpu(max)?;
        }
        if pages == 0 && !force_full {
            return Ok(Shootdown {
                targets: 0,
                full: false,
            });
        }
        let full = force_full || pages > self.config().shootdown_cutoff_pages;
        let start = start & !0xfff;
        let pages_arg = if full { FULL } else { pages };
        self.shootdown_inner(Some(targets), start, pages_arg, pages)
    }

    /// `targets`: `None` for every online core.
    fn shootdown_inner(
        &self,
        targets: Option<&crate::CpuSet>,
        start: usize,
        pages_arg: usize,
        pages: usize,
    ) -> Result<Shootdown, Error> {
        let me = self.current_cpu();
        let irq = self.platform().irq_save();
        let mut others = match targets {
            // Offline cores are skipped by the cpusync itself.
            Some(set) => *set,
            None => self.online_set(),
        };
        others.remove(me);
        let work = SyncWork {
            start: Some(Message::new(flush::<P>, start, pages_arg)),
            ..SyncWork::default()
        };
        let result = self.cpusync_start_overlapped(&others, work, || flush(self, start, pages_arg));
        let full = pages_arg == FULL;
        self.count(me, |c| &c.shootdowns, 1);
        if full {
            self.count(me, |c| &c.full_flushes, 1);
        } else {
            self.count(me, |c| &c.shootdown_pages, pages as u64);
        }
        let result = result.map(|sync| {
            let targets = sync.members().len();
            // Every target has flushed (its start work); let them go without waiting.
            sync.release();
            Shootdown { targets, full }
        });
        self.platform().irq_restore(irq);
        result
    }
}

#[cfg(all(test, feature = "std", not(loom)))]
mod tests {
    use super::Shootdown;
    use crate::host::{HostConfig, HostMachine};
    use crate::{CpuSet, Error};

    #[test]
    fn shootdown_on_reaches_only_the_chosen_cores_ranged_or_forced_full() {
        let machine = HostMachine::start(HostConfig::cpus(4));
        let results = machine
            .run_on(0, |core| {
                let q = core.ipiq();
                // The caller (0) is in the set: it is skipped as a target and flushes locally.
                let set = CpuSet::from_cpus([0, 2]).unwrap();
                [
                    q.shootdown_on(&set, 0x40_0000, 4, false),
                    q.shootdown_on(&set, 0x40_0000, 4, true),
                    q.shootdown_on(&CpuSet::new(), 0x40_0000, 0, false),
                    q.shootdown_on(&CpuSet::single(9).unwrap(), 0x40_0000, 1, false),
                ]
            })
            .unwrap();
        assert_eq!(
            results,
            [
                Ok(Shootdown {
                    targets: 1,
                    full: false
                }),
                Ok(Shootdown {
                    targets: 1,
                    full: true
                }),
                Ok(Shootdown {
                    targets: 0,
                    full: false
                }),
                Err(Error::NoSuchCpu(9)),
            ]
        );
        for cpu in 0..4 {
            let f = machine.platform().tlb_flushes(cpu);
            let expected = if cpu == 0 || cpu == 2 {
                (1, 4, 1)
            } else {
                (0, 0, 0)
            };
            assert_eq!((f.ranges, f.pages, f.full), expected, "cpu {cpu}");
        }
        let stats = machine.ipiq().stats(0).unwrap();
        assert_eq!(
            (stats.shootdowns, stats.shootdown_pages, stats.full_flushes),
            (2, 4, 1)
        );
        machine.shutdown();
    }
}
