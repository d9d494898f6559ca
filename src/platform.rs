//! The [`Platform`] trait: the only door from the protocol to the hardware.
//!
//! The protocol never touches an MSR, an APIC register or the interrupt flag itself; it asks its
//! platform. The trait is `unsafe` to implement: the protocol's memory safety rests on what an
//! implementation promises about cores and interrupts (see [`Platform`]'s `# Safety`). The kernel implements this trait over the local APIC ([`crate::arch::x86_64`]),
//! the host implementation ([`crate::host`], feature `std`) over OS threads, and the loom tests
//! over loom's model threads.

pub use ipiq_abi::CpuId;

/// The saved interrupt state returned by [`Platform::irq_save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqState(pub bool);

/// What the protocol needs from the machine it runs on.
///
/// # Safety
/// ipiq's memory safety rests on this contract: each FIFO has one producer and one consumer
/// with no lock between them, and each core's private state (spill and hold lists, nesting
/// depths) is used through `&mut` without a lock, both on the strength of "only this core, with
/// interrupts disabled". An implementation that breaks a point below can cause data races, which
/// are undefined behaviour, not merely lost or late messages.
/// - **`current_cpu` is stable while interrupts are disabled**: between an `irq_save` and the
///   matching `irq_restore`, every call returns the same core (no preemption, no migration).
/// - **One context per core**: code running between `irq_save` and `irq_restore` on core `c`
///   (as `current_cpu` reports it) never runs concurrently or interleaved with other code that
///   `current_cpu` also reports as `c`, other than the code it calls itself. Two threads may
///   never both be core `c` at once.
/// - **`irq_save` excludes re-entry**: once it returns, until the matching `irq_restore`,
///   nothing else runs on that core (no interrupt handler, no other task), so no ipiq call can
///   interrupt another halfway on the same core. `irq_save` / `irq_restore` pairs nest: each
///   `irq_restore` puts back the state its `irq_save` returned.
/// - `cpu_count` is fixed for the platform's lifetime. (A `current_cpu` at or past it, or past
///   [`crate::CpuSet::CAPACITY`], is a core ipiq does not serve: refused, not unsound.)
/// - `flush_tlb_range` / `flush_tlb_all` really invalidate the calling core's translations
///   before they return: the kernel reuses or remaps memory once a shootdown returns.
///
/// # Contract
/// What the protocol's progress, not its memory safety, relies on:
/// - `send_ipi` must eventually make the target call [`crate::Ipiq::process`] (from its interrupt
///   handler, or at its next safe point), unless the IPI is lost; the protocol recovers lost IPIs
///   through the timer tick and its watchdogs, so a platform may lose some, but each lost IPI
///   delays messages until the target's next tick.
/// - `send_ipi` is called after the message is published; the implementation must order the
///   queue stores before the hardware write (on x2APIC, the ICR write is an MSR write, which is
///   not serializing: the implementation fences first).
/// - `send_ipi_many` must do for each core of its set what `send_ipi` does for one (the same
///   eventual [`crate::Ipiq::process`], the same ordering of the queue stores before the
///   hardware writes), and return how many hardware writes it made. It may reach the set with
///   fewer writes than cores (a broadcast shorthand, a logical destination naming a group), and
///   such a write may reach more cores than the set: a shorthand or group write is allowed only
///   where every core it can reach either is in the set or tolerates the vector. **A core not
///   registered with ipiq (not brought up yet, or one the platform does not count) must tolerate
///   ipiq's vector**: taking it and finding nothing queued, or ignoring it, is harmless. A core
///   of the set that is reached twice takes one spurious drain, which is harmless too.
/// - `now_ns` is monotonic (watchdogs only; a clock that stops disables them).
pub unsafe trait Platform: Sync + Send + 'static {
    /// The core the caller runs on.
    fn current_cpu(&self) -> CpuId;

    /// How many cores the machine has (online or not). Fixed for the platform's lifetime.
    fn cpu_count(&self) -> usize;

    /// Sends the ipiq wake-up interrupt to `target` (never the calling core).
    ///
    /// Context: any, interrupts on or off (the protocol calls it with them off); never blocks.
    fn send_ipi(&self, target: CpuId);

    /// Sends the ipiq wake-up interrupt to every core of `targets` (never the calling core) and
    /// returns how many hardware writes (ICR writes on x86) that took. A multicast calls it once
    /// for all the targets it decided to interrupt (`Ipiq::send_many`, the cpusync enter
    /// messages, TLB shootdowns), so a platform can batch them: the x86_64 platform uses the
    /// all-excluding-self shorthand and x2APIC cluster destinations where they fit (see the
    /// contract above for which cores those may reach).
    ///
    /// The default sends one [`Platform::send_ipi`] per target and returns the number of
    /// targets.
    ///
    /// Context: as [`Platform::send_ipi`]; the protocol calls it with interrupts off, after the
    /// one SeqCst fence that follows publishing the messages.
    fn send_ipi_many(&self, targets: &crate::CpuSet) -> usize {
        let mut writes = 0;
        for target in targets.iter() {
            self.send_ipi(target);
            writes += 1;
        }
        writes
    }

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
