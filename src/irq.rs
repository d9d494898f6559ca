//! [`IrqOff`]: an interrupts-off section as a value.
//!
//! Every ipiq operation that touches per-core state runs with interrupts disabled on its core, so
//! that an interrupt cannot re-enter it halfway through and the core cannot be preempted or
//! migrated under it. The guard disables them when made and restores the previous state when
//! dropped (also when the section unwinds), so a save can never be left unpaired.

use core::marker::PhantomData;

use crate::platform::{IrqState, Platform};

/// Interrupts are disabled on the calling core for as long as this guard lives; dropping it
/// restores the state found when it was made.
///
/// Context: any; guards nest (an inner guard finds interrupts off and leaves them off).
pub(crate) struct IrqOff<'a, P: Platform> {
    platform: &'a P,
    saved: IrqState,
}

impl<'a, P: Platform> IrqOff<'a, P> {
    /// Disables interrupts on the calling core.
    #[inline]
    pub(crate) fn new(platform: &'a P) -> Self {
        Self {
            saved: platform.irq_save(),
            platform,
        }
    }

    /// Proof, for as long as this guard is borrowed, that interrupts are disabled here.
    #[inline]
    pub(crate) fn token(&self) -> IrqsOff<'_> {
        IrqsOff(PhantomData)
    }
}

/// Proof that interrupts are disabled on the calling core: made only from a live [`IrqOff`]
/// guard ([`IrqOff::token`]) and valid only while that guard is borrowed, so it cannot outlive
/// the section. What only an interrupts-off section may touch (`percpu::CoreLocal`) asks for
/// one, and every function on the way down from the guard passes it on. Zero-sized: passing it
/// costs nothing at run time.
#[derive(Clone, Copy)]
pub(crate) struct IrqsOff<'a>(PhantomData<&'a ()>);

impl<P: Platform> Drop for IrqOff<'_, P> {
    #[inline]
    fn drop(&mut self) {
        self.platform.irq_restore(self.saved);
    }
}
