//! The [`Platform`] trait: the only door from the protocol to the hardware.
//!
//! The protocol never touches an MSR, an APIC register or the interrupt flag itself; it asks its
//! platform. The kernel implements this trait over the local APIC ([`crate::arch::x86_64`]),
//! the host implementation ([`crate::host`], feature `std`) over OS threads, and the loom tests
//! over loom's model threads.

/// A core's index: `0..Platform::cpu_count()`. The boot core is 0.
pub type CpuId = usize;

/// The saved interrupt state returned by [`Platform::irq_save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqState(pub bool);

/// What the protocol needs from the machine it runs on.
///
/// # Contract
/// - `current_cpu` must be stable between an `irq_save` and the matching `irq_restore`: with
///   interrupts disabled the caller cannot be preempted or migrated. Every ipiq operation that
///   touches per-core state runs inside such a section.
/// - `send_ipi` must eventually make the target call [`crate::Ipiq::process`] (from its interrupt
///   handler, or at its next safe point), unless the IPI is lost; the protocol recovers lost IPIs
///   through the timer tick and its watchdogs, so a platform may lose some, but each lost IPI
///   delays messages until the target's next tick.
/// - `send_ipi` is called after the message is published; the implementation must order the
///   queue stores before the hardware write (on x2APIC, the ICR write is an MSR write, which is
///   not serializing: the implementation fences first).
pub trait Platform: Sync + Send + 'static {
    /// The core the caller runs on.
    fn current_cpu(&self) -> CpuId;

    /// How many cores the machine has (online or not). Fixed for the platform's lifetime.
    fn cpu_count(&self) -> usize;

    /// Sends the ipiq wake-up interrupt to `target` (never the calling core).
    fn send_ipi(&self, target: CpuId);

    /// Disables interrupts on the calling core and returns the previous state.
    fn irq_save(&self) -> IrqState;

    /// Restores the interrupt state saved by [`Platform::irq_save`].
    fn irq_restore(&self, state: IrqState);

    /// Called in every spin loop of the protocol (the `pause` instruction on x86).
    fn relax(&self);

    /// A monotonic clock in nanoseconds, used only for watchdogs (never for ordering).
    fn now_ns(&self) -> u64;

    /// Invalidates the calling core's TLB entries for `pages` 4 KiB pages from `start`.
    fn flush_tlb_range(&self, start: usize, pages: usize);

    /// Invalidates every TLB entry of the calling core, global ones included.
    fn flush_tlb_all(&self);
}
