//! TLB shootdown on cpusync: after a present mapping changed or went away, make every other
//! online core drop its stale translation before the caller goes on (and, say, frees the frame).
//!
//! Ranged `invlpg` up to [`crate::Config::shootdown_cutoff_pages`], beyond that a full flush that
//! also drops global entries. The targets flush as they enter the rendezvous; the caller flushes
//! its own TLB while they do, and returns only once every target has flushed.

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
        self.shootdown_inner(start, pages_arg, pages)
    }

    /// Flushes every TLB entry, global ones included, on every online core, and returns once all
    /// have done so.
    pub fn shootdown_all(&self) -> Result<Shootdown, Error> {
        self.shootdown_inner(0, FULL, 0)
    }

    fn shootdown_inner(
        &self,
        start: usize,
        pages_arg: usize,
        pages: usize,
    ) -> Result<Shootdown, Error> {
        let me = self.current_cpu();
        let irq = self.platform().irq_save();
        let mut others = self.online_set();
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
