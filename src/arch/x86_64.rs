//! The x86_64 platform: IPIs through the local APIC's interrupt command register (x2APIC MSR,
//! xAPIC MMIO fallback), `invlpg` and CR4.PGE for TLB flushes, the interrupt flag, `pause`,
//! and the time-stamp counter.
//!
//! The kernel owns the local APIC: this module never enables, disables or reprograms it; it
//! only writes the ICR to send ipiq's vector and reads the APIC id (and, on x2APIC, the
//! read-only logical destination register) of the core it runs on.
//!
//! # Why not the `x2apic` crate's `LocalApic`
//! Its IPI entry point (`LocalApic::send_ipi`) takes `&mut self`, so every core would need its
//! own `LocalApic` behind a lock or a per-core cell; building one requires timer, error and
//! spurious vectors that belong to the kernel; and its xAPIC path writes the two ICR halves
//! without waiting for the previous IPI's delivery status. Sending one fixed IPI is two MSR or
//! MMIO writes, so this module writes the ICR itself (`wrmsr` 0x830 through the `x86_64`
//! crate, or the xAPIC page the kernel mapped, whose address it passes to
//! [`X86Platform::new`]). The crate's ICR field enums (`IpiDestMode`, `IpiAllShorthand`) are
//! what [`icr`] builds its register values from.
//!
//! # Core and APIC ids
//! Each core calls [`X86Platform::register_current`] at bring-up: it reads its own APIC id (and,
//! on x2APIC, its logical destination register) into its entry of the per-core table, which
//! senders read lock-free. Without a core-id callback, `current_cpu` searches the same table for
//! the APIC id it reads (no second map, no lock).
//!
//! # Multicast in few ICR writes
//! [`Platform::send_ipi_many`] reaches a set of cores in as few ICR writes as the APIC allows,
//! planned by [`plan_icr_writes`] (a plain function, unit-tested on the host):
//! - **every other core** the platform has (all `cpu_count` cores but the caller, all
//!   registered): one write with the all-excluding-self shorthand (ICR bits 19:18 = 11, the
//!   destination ignored), on x2APIC and xAPIC alike. The shorthand reaches every local APIC in
//!   the system but the sender's, including any the platform does not count; the
//!   [`Platform`] contract makes such cores tolerate ipiq's vector.
//! - otherwise, on **x2APIC**: one logical (cluster) write per cluster of targets. The x2APIC
//!   logical destination register is read-only and derived from the x2APIC id (cluster =
//!   id >> 4 in bits 31:16, member bit 1 << (id & 15) in bits 15:0), so a logical destination
//!   "cluster c, members m" reaches exactly the cores named in `m`; each core's LDR is read at
//!   registration (MSR 0x80D) and a core whose LDR is unknown gets a physical write. A cluster
//!   with a single target is a physical write (the same one write, on the common path).
//! - otherwise (xAPIC, whose logical mode the kernel does not program): one physical write per
//!   target.
//!
//! The planning and the register values are in [`icr`] (pure, with the field values from the
//! `x2apic` crate's `IpiAllShorthand` and `IpiDestMode`); the writes themselves stay here (see
//! "Why not the `x2apic` crate's `LocalApic`"), after one fence for the whole multicast.
//!
//! # Periodic tick
//! The timer arithmetic the kernel's one-shot timer needs to also serve as ipiq's periodic tick
//! is portable and lives in `crate::tick`; [`TickTimer`] and its types are re-exported here for
//! the kernel.
//!
//! # Extended state
//! [`xstate`] saves and restores the x87, SSE and AVX state around application message
//! functions (the kernel is soft-float and its interrupt path saves none of it); see there for
//! the mechanism and why.

use alloc::boxed::Box;
use core::arch::x86_64::{_mm_lfence, _mm_mfence};
use core::sync::atomic::{AtomicU32, Ordering};

use x86_64::instructions::{interrupts, tlb};
use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;
use x86_64::VirtAddr;

use crate::irq::IrqOff;
use crate::platform::{CpuId, IrqState, Platform};
pub use crate::tick::{TickTimer, TimerSetting, TimerVector};
use crate::CpuSet;

pub mod icr;
pub mod xstate;

use icr::{is_cluster_address, x2apic_icr, xapic_icr};
pub use icr::{plan_icr_writes, ApicDestination, IcrPlan, IcrWrite};

/// x2APIC Interrupt Command Register (one 64-bit MSR: destination in bits 63:32).
const X2APIC_ICR: u32 = 0x830;
/// x2APIC id register.
const X2APIC_ID: u32 = 0x802;
/// x2APIC logical destination register (read-only in x2APIC mode).
const X2APIC_LDR: u32 = 0x80D;
/// xAPIC register offsets in the APIC's MMIO page.
const XAPIC_ID: usize = 0x20;
const XAPIC_ICR_LOW: usize = 0x300;
const XAPIC_ICR_HIGH: usize = 0x310;
/// ICR bit: delivery status (xAPIC only, read-only).
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
/// Table value for a core whose APIC id is not known yet.
const NO_APIC_ID: u32 = u32::MAX;
/// Table value for a core whose logical destination is not known (a real x2APIC LDR has
/// exactly one member bit, so it is never 0).
const NO_LOGICAL_ID: u32 = 0;
/// Ranged flushes of more pages than this flush everything instead (the protocol cuts off
/// much earlier; this only bounds the loop for callers of the platform itself).
const MAX_INVLPG_PAGES: usize = 512;
const PAGE_SIZE: usize = 4096;

/// How the local APIC is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicAccess {
    /// x2APIC mode: registers are MSRs.
    X2Apic,
    /// xAPIC mode: registers are in the 4 KiB page the kernel mapped at this virtual address
    /// (uncached, writable).
    XApic {
        /// Virtual address of the local APIC's register page.
        base: usize,
    },
}

/// The ipiq [`Platform`] of an x86_64 machine with a local APIC.
pub struct X86Platform {
    /// Number of cores (fixed).
    cpu_count: usize,
    /// How the APIC is reached (the same on every core: the kernel enables x2APIC on all or none).
    access: ApicAccess,
    /// ipiq's interrupt vector.
    vector: u8,
    /// TSC ticks per microsecond (the kernel's measured CPU frequency in MHz), at least 1.
    tsc_mhz: u64,
    /// The kernel's "which core am I" (per-core data through GS); `None`: read the APIC id.
    current_cpu: Option<fn() -> CpuId>,
    /// Core id → how its APIC is addressed. One entry per core, both ids side by side, so the
    /// table is one allocation (in the Hermit kernel every long-lived allocation lengthens the
    /// allocator's search on each later allocation, `docs/known-issues.md`); also searched for
    /// the reverse lookup ([`X86Platform::cpu_of_apic_id`]).
    cores: Box<[CoreApic]>,
}

/// One core's APIC addressing, written once at its bring-up ([`X86Platform::register_current`]).
struct CoreApic {
    /// The APIC id, `NO_APIC_ID` until the core registered. Written once (Release), read by
    /// senders (Acquire), so a sender that sees an id also sees the core online in ipiq's own
    /// tables, which the kernel marks after registering.
    apic_id: AtomicU32,
    /// The x2APIC logical destination register (MSR 0x80D), `NO_LOGICAL_ID` until the core
    /// registered, on xAPIC, or if the value read was not a valid cluster address. Written once
    /// (Relaxed) before `apic_id` (Release), read Relaxed after an Acquire load of `apic_id`: a
    /// sender that sees the APIC id sees the LDR.
    logical_id: AtomicU32,
}

impl X86Platform {
    /// A platform for `cpu_count` cores sending `vector`, reaching the APIC through `access`,
    /// with a TSC running at `tsc_mhz` MHz. `current_cpu` is the kernel's cheap "current core"
    /// (recommended: the fallback reads the APIC id and searches the per-core table for it).
    ///
    /// # Safety
    /// The APIC is in the mode `access` names, and an `XApic` base is the kernel's uncached,
    /// writable mapping of the local APIC page. `current_cpu` returns the calling core's own
    /// index, unique among the cores and unchanged while interrupts are disabled; without it,
    /// every core calls [`X86Platform::register_current`] before it calls into ipiq (an
    /// unregistered core reads as core 0). This is what the [`Platform`] contract needs here.
    pub unsafe fn new(
        cpu_count: usize,
        access: ApicAccess,
        vector: u8,
        tsc_mhz: u64,
        current_cpu: Option<fn() -> CpuId>,
    ) -> Self {
        let cpu_count = cpu_count.max(1);
        Self {
            cpu_count,
            access,
            vector,
            tsc_mhz: tsc_mhz.max(1),
            current_cpu,
            cores: (0..cpu_count)
                .map(|_| CoreApic {
                    apic_id: AtomicU32::new(NO_APIC_ID),
                    logical_id: AtomicU32::new(NO_LOGICAL_ID),
                })
                .collect(),
        }
    }

    /// Records that the calling core is core `cpu` and reads its APIC id and, on x2APIC, its
    /// logical destination register (for cluster-mode multicasts). Called by each core at
    /// bring-up, before the kernel marks it online in ipiq. Returns the APIC id, or `None` if
    /// `cpu` is out of range.
    ///
    /// Context: the core's bring-up, interrupts disabled, on the core being registered.
    pub fn register_current(&self, cpu: CpuId) -> Option<u32> {
        let entry = self.cores.get(cpu)?;
        let apic_id = self.read_apic_id();
        if let Some(ldr) = self.read_logical_id() {
            // Relaxed: published by the Release store of the APIC id below.
            entry.logical_id.store(ldr, Ordering::Relaxed);
        }
        // Release: pairs with the Acquire in `apic_id_of` and `cpu_of_apic_id` (and publishes
        // the LDR above).
        entry.apic_id.store(apic_id, Ordering::Release);
        Some(apic_id)
    }

    /// The APIC id of core `cpu`, once it has registered.
    pub fn apic_id_of(&self, cpu: CpuId) -> Option<u32> {
        // Acquire: pairs with the Release in `register_current`.
        let id = self.cores.get(cpu)?.apic_id.load(Ordering::Acquire);
        (id != NO_APIC_ID).then_some(id)
    }

    /// How core `cpu` is addressed in an ICR, once it has registered: its APIC id and, on
    /// x2APIC, its logical destination (LDR) if it was read and valid.
    pub fn destination_of(&self, cpu: CpuId) -> Option<ApicDestination> {
        let apic_id = self.apic_id_of(cpu)?;
        // Relaxed: ordered by the Acquire load in `apic_id_of` (see the field docs).
        let ldr = self.cores.get(cpu)?.logical_id.load(Ordering::Relaxed);
        Some(ApicDestination {
            apic_id,
            logical_id: (ldr != NO_LOGICAL_ID).then_some(ldr),
        })
    }

    /// The calling core's x2APIC logical destination register, if the APIC is in x2APIC mode
    /// and the value is a cluster address (exactly one member bit, as the SDM derives it).
    fn read_logical_id(&self) -> Option<u32> {
        match self.access {
            ApicAccess::X2Apic => {
                // SAFETY: x2APIC mode is on (what `X2Apic` states), so the LDR MSR exists and is
                // readable; reading it has no side effects.
                let ldr = unsafe { Msr::new(X2APIC_LDR).read() as u32 };
                is_cluster_address(ldr).then_some(ldr)
            }
            ApicAccess::XApic { .. } => None,
        }
    }

    /// The core with APIC id `apic_id`, if it registered (the lowest-numbered one, should two
    /// have registered the same id).
    ///
    /// A search of the per-core table (one load per core, no lock, no allocation): it serves
    /// only `current_cpu` on a platform built without the kernel's callback.
    /// Context: any, interrupt context included.
    pub fn cpu_of_apic_id(&self, apic_id: u32) -> Option<CpuId> {
        if apic_id == NO_APIC_ID {
            return None;
        }
        // Acquire: pairs with the Release in `register_current`, as in `apic_id_of`.
        self.cores
            .iter()
            .position(|entry| entry.apic_id.load(Ordering::Acquire) == apic_id)
    }

    /// The APIC access mode in use.
    pub fn access(&self) -> ApicAccess {
        self.access
    }

    /// ipiq's interrupt vector.
    pub fn vector(&self) -> u8 {
        self.vector
    }

    /// The calling core's APIC id, read from the hardware.
    pub fn read_apic_id(&self) -> u32 {
        match self.access {
            ApicAccess::X2Apic => {
                // SAFETY: the kernel enabled x2APIC mode (that is what `X2Apic` states), so the
                // x2APIC id MSR exists; reading it has no side effects.
                unsafe { Msr::new(X2APIC_ID).read() as u32 }
            }
            ApicAccess::XApic { base } => {
                // SAFETY: `base` is the kernel's mapping of the local APIC page (constructor
                // contract); the id register is a naturally aligned 32-bit register in it.
                let raw = unsafe { core::ptr::read_volatile((base + XAPIC_ID) as *const u32) };
                raw >> 24
            }
        }
    }

    /// Sends a bare fixed IPI of `vector` to core `target` through the same ICR code as ipiq's
    /// own IPIs, so the kernel keeps one ICR writer (the benchmark probe's raw ping-pong uses
    /// it). Returns whether it was sent: nothing is sent, and `false` returned, when `target`
    /// is out of range or has not registered, or when `vector` is below 32 (exception vectors,
    /// which the APIC refuses as fixed IPIs). The caller must have installed a handler for
    /// `vector` on every core that can receive it.
    pub fn send_vector(&self, target: CpuId, vector: u8) -> bool {
        if vector < 32 {
            return false;
        }
        let Some(apic_id) = self.apic_id_of(target) else {
            return false;
        };
        let _irq = IrqOff::new(self);
        self.write_icr(apic_id, vector);
        true
    }

    /// Writes a fixed, physical-destination, edge-triggered IPI of `vector` for `apic_id`.
    ///
    /// Context: interrupts disabled (the xAPIC write is two stores plus a wait).
    fn write_icr(&self, apic_id: u32, vector: u8) {
        self.fence_before_icr();
        self.write_icr_unfenced(IcrWrite::Physical(apic_id), vector);
    }

    /// Orders every earlier store (the queue stores a multicast published) before the ICR
    /// writes that follow, on x2APIC, where the write is a WRMSR that is not serializing: the
    /// SDM (the x2APIC chapter, "a WRMSR to an APIC register may complete before all preceding
    /// stores are globally visible") prescribes MFENCE; LFENCE (or a serializing instruction)
    /// before it; without it the IPI may reach a target before the message is visible there.
    /// On xAPIC nothing is needed: the APIC page is uncacheable and x86 keeps stores in program
    /// order (TSO), so the queue stores are visible before the ICR store issues.
    ///
    /// Context: any.
    #[inline]
    fn fence_before_icr(&self) {
        if self.access == ApicAccess::X2Apic {
            // SAFETY: mfence and lfence have no preconditions (SSE2 is part of x86_64).
            unsafe {
                _mm_mfence();
                _mm_lfence();
            }
        }
    }

    /// Writes one fixed, edge-triggered IPI of `vector` to `destination`, after the caller's
    /// [`X86Platform::fence_before_icr`]. Returns whether it wrote (an [`IcrWrite::Cluster`] is
    /// never written on xAPIC, whose logical mode the kernel does not program;
    /// [`plan_icr_writes`] never plans one there).
    ///
    /// Context: interrupts disabled (the xAPIC write is two stores plus a wait, which must not
    /// interleave with another ICR write on this core).
    fn write_icr_unfenced(&self, destination: IcrWrite, vector: u8) -> bool {
        match self.access {
            ApicAccess::X2Apic => {
                let value = x2apic_icr(destination, vector);
                // SAFETY: x2APIC mode is on (see `read_apic_id`); a fixed IPI of `vector` only
                // makes the cores it reaches take `vector`, whose handler the kernel installed
                // on every core; cores outside the set that a shorthand reaches tolerate it (the
                // `Platform` contract), and a cluster write names only registered targets.
                unsafe { Msr::new(X2APIC_ICR).write(value) };
                true
            }
            ApicAccess::XApic { base } => {
                let Some((high_value, low_value)) = xapic_icr(destination, vector) else {
                    return false;
                };
                let low = (base + XAPIC_ICR_LOW) as *mut u32;
                let high = (base + XAPIC_ICR_HIGH) as *mut u32;
                // SAFETY: both registers lie in the kernel's APIC mapping (constructor contract);
                // interrupts are off, so no other ICR write on this core interleaves; waiting for
                // the delivery status to clear before a new command is what the SDM requires.
                unsafe {
                    while core::ptr::read_volatile(low) & ICR_DELIVERY_PENDING != 0 {
                        core::hint::spin_loop();
                    }
                    core::ptr::write_volatile(high, high_value);
                    core::ptr::write_volatile(low, low_value);
                }
                true
            }
        }
    }
}

// SAFETY: `new`'s contract gives unique, stable core ids; `irq_save` is `cli` on this core.
unsafe impl Platform for X86Platform {
    #[inline]
    fn current_cpu(&self) -> CpuId {
        if let Some(current) = self.current_cpu {
            return current();
        }
        // No callback: ask the APIC. Unknown ids map to core 0 (only before registration).
        let apic_id = self.read_apic_id();
        self.cpu_of_apic_id(apic_id).unwrap_or(0)
    }

    #[inline]
    fn cpu_count(&self) -> usize {
        self.cpu_count
    }

    /// Context: any, interrupts on or off; never blocks (the xAPIC path waits for the previous
    /// command's delivery status).
    fn send_ipi(&self, target: CpuId) {
        // A core not brought up yet has nothing to interrupt: its messages stay queued and run
        // when it drains (the protocol refuses unicasts to offline cores anyway).
        self.send_vector(target, self.vector);
    }

    /// One all-excluding-self shorthand for every other core, one logical write per x2APIC
    /// cluster otherwise, physical writes for the rest ([`plan_icr_writes`]); returns the
    /// number of ICR writes. Unregistered targets get nothing (as in `send_ipi`).
    ///
    /// Context: any, interrupts on or off (they are off while the ICR is written); never blocks.
    fn send_ipi_many(&self, targets: &CpuSet) -> usize {
        let _irq = IrqOff::new(self);
        // With interrupts off, `current_cpu` is stable (the constructor's contract).
        let plan = plan_icr_writes(
            targets,
            self.current_cpu(),
            self.cpu_count,
            self.access,
            |cpu| self.destination_of(cpu),
        );
        let mut writes = 0;
        for destination in plan {
            if writes == 0 {
                // Once, before the first write: the writes after it stay in program order.
                self.fence_before_icr();
            }
            if self.write_icr_unfenced(destination, self.vector) {
                writes += 1;
            }
        }
        writes
    }

    #[inline]
    fn irq_save(&self) -> IrqState {
        let enabled = interrupts::are_enabled();
        interrupts::disable();
        IrqState(enabled)
    }

    #[inline]
    fn irq_restore(&self, state: IrqState) {
        if state.0 {
            interrupts::enable();
        }
    }

    #[inline]
    fn relax(&self) {
        core::hint::spin_loop(); // `pause`
    }

    #[inline]
    fn now_ns(&self) -> u64 {
        // SAFETY: rdtsc has no preconditions on x86_64.
        let tsc = unsafe { core::arch::x86_64::_rdtsc() };
        (u128::from(tsc) * 1000 / u128::from(self.tsc_mhz)) as u64
    }

    fn flush_tlb_range(&self, start: usize, pages: usize) {
        if pages > MAX_INVLPG_PAGES {
            self.flush_tlb_all();
            return;
        }
        let start = start & !(PAGE_SIZE - 1);
        for page in 0..pages {
            let Some(address) = page
                .checked_mul(PAGE_SIZE)
                .and_then(|o| start.checked_add(o))
            else {
                break;
            };
            // A non-canonical address cannot be mapped, so no TLB entry can exist for it.
            if let Ok(address) = VirtAddr::try_new(address as u64) {
                tlb::flush(address);
            }
        }
    }

    fn flush_tlb_all(&self) {
        let _irq = IrqOff::new(self);
        let cr4 = Cr4::read();
        if cr4.contains(Cr4Flags::PAGE_GLOBAL) {
            // Clearing CR4.PGE invalidates every TLB entry, global ones included (SDM 4.10.4.1);
            // setting it again restores global pages.
            // SAFETY: only PGE changes; paging stays on and the page tables stay the same.
            unsafe {
                Cr4::write(cr4 - Cr4Flags::PAGE_GLOBAL);
                Cr4::write(cr4);
            }
        } else {
            // Without PGE no entry is global: a CR3 reload drops them all.
            let (frame, flags) = Cr3::read_raw();
            // SAFETY: writes back the value just read.
            unsafe { Cr3::write_raw(frame, flags) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_vector_refuses_what_it_cannot_send_without_touching_the_apic() {
        // SAFETY: nothing here reaches the APIC (the test is about that) or runs ipiq.
        let platform = unsafe { X86Platform::new(2, ApicAccess::X2Apic, 122, 1000, Some(|| 0)) };
        // No core registered yet, a core past the count, an exception vector: nothing is sent
        // (reaching the ICR here, on the host, would fault).
        assert!(!platform.send_vector(1, 125));
        assert!(!platform.send_vector(9, 125));
        // Core 0 registered (as `register_current` would, without reading the APIC): an
        // exception vector is still refused before the ICR.
        // Release: as in `register_current`, which this stands in for.
        platform.cores[0].apic_id.store(0, Ordering::Release);
        assert_eq!(platform.apic_id_of(0), Some(0));
        assert_eq!(platform.cpu_of_apic_id(0), Some(0));
        assert_eq!(platform.cpu_of_apic_id(1), None);
        assert_eq!(platform.cpu_of_apic_id(NO_APIC_ID), None);
        assert!(!platform.send_vector(0, 14));
        assert!(!platform.send_vector(0, 31));
    }
}
