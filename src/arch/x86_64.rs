//! The x86_64 platform: IPIs through the local APIC's interrupt command register (x2APIC MSR,
//! xAPIC MMIO fallback), `invlpg` and CR4.PGE for TLB flushes, the interrupt flag, `pause`,
//! and the time-stamp counter.
//!
//! The kernel owns the local APIC: this module never enables, disables or reprograms it; it
//! only writes the ICR to send ipiq's vector and reads the APIC id of the core it runs on.
//!
//! # Why not the `x2apic` crate's `LocalApic`
//! Its IPI entry point (`LocalApic::send_ipi`) takes `&mut self`, so every core would need its
//! own `LocalApic` behind a lock or a per-core cell; building one requires timer, error and
//! spurious vectors that belong to the kernel; and its xAPIC path writes the two ICR halves
//! without waiting for the previous IPI's delivery status. Sending one fixed IPI is two MSR or
//! MMIO writes, so this module writes the ICR itself (`wrmsr` 0x830 through the `x86_64`
//! crate, or the xAPIC page the kernel mapped, whose address it passes to
//! [`X86Platform::new`]).
//!
//! # Core and APIC ids
//! Each core calls [`X86Platform::register_current`] at bring-up: it reads its own APIC id and
//! fills the core-id → APIC-id table (read lock-free by senders) and the APIC-id → core map (a
//! `hashbrown` map behind an interrupt-safe lock, used when no core-id callback is given).
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
use core::arch::x86_64::_mm_mfence;
use core::sync::atomic::{AtomicU32, Ordering};

use hashbrown::HashMap;
use hermit_sync::InterruptSpinMutex;
use x86_64::instructions::{interrupts, tlb};
use x86_64::registers::control::{Cr3, Cr4, Cr4Flags};
use x86_64::registers::model_specific::Msr;
use x86_64::VirtAddr;

use crate::platform::{CpuId, IrqState, Platform};
pub use crate::tick::{TickTimer, TimerSetting, TimerVector};

pub mod xstate;

/// x2APIC Interrupt Command Register (one 64-bit MSR: destination in bits 63:32).
const X2APIC_ICR: u32 = 0x830;
/// x2APIC id register.
const X2APIC_ID: u32 = 0x802;
/// xAPIC register offsets in the APIC's MMIO page.
const XAPIC_ID: usize = 0x20;
const XAPIC_ICR_LOW: usize = 0x300;
const XAPIC_ICR_HIGH: usize = 0x310;
/// ICR bits: delivery status (xAPIC only, read-only) and level assert.
const ICR_DELIVERY_PENDING: u32 = 1 << 12;
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
/// Table value for a core whose APIC id is not known yet.
const NO_APIC_ID: u32 = u32::MAX;
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
    /// Core id → APIC id, `NO_APIC_ID` until the core registered. Written once per core at its
    /// bring-up (Release), read by senders (Acquire), so a sender that sees an id also sees the
    /// core online in ipiq's own tables, which the kernel marks after registering.
    apic_ids: Box<[AtomicU32]>,
    /// APIC id → core id, for `current_cpu` without a kernel callback. Interrupt-safe lock:
    /// it is read from interrupt context.
    cores_by_apic_id: InterruptSpinMutex<HashMap<u32, CpuId>>,
}

impl X86Platform {
    /// A platform for `cpu_count` cores sending `vector`, reaching the APIC through `access`,
    /// with a TSC running at `tsc_mhz` MHz. `current_cpu` is the kernel's cheap "current core"
    /// (recommended: the fallback reads the APIC id and looks it up under a lock).
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
            apic_ids: (0..cpu_count).map(|_| AtomicU32::new(NO_APIC_ID)).collect(),
            cores_by_apic_id: InterruptSpinMutex::new(HashMap::new()),
        }
    }

    /// Records that the calling core is core `cpu` and reads its APIC id. Called by each core at
    /// bring-up, before the kernel marks it online in ipiq. Returns the APIC id, or `None` if
    /// `cpu` is out of range.
    pub fn register_current(&self, cpu: CpuId) -> Option<u32> {
        let slot = self.apic_ids.get(cpu)?;
        let apic_id = self.read_apic_id();
        // Release: pairs with the Acquire in `apic_id_of`.
        slot.store(apic_id, Ordering::Release);
        self.cores_by_apic_id.lock().insert(apic_id, cpu);
        Some(apic_id)
    }

    /// The APIC id of core `cpu`, once it has registered.
    pub fn apic_id_of(&self, cpu: CpuId) -> Option<u32> {
        // Acquire: pairs with the Release in `register_current`.
        let id = self.apic_ids.get(cpu)?.load(Ordering::Acquire);
        (id != NO_APIC_ID).then_some(id)
    }

    /// The core with APIC id `apic_id`, if it registered.
    pub fn cpu_of_apic_id(&self, apic_id: u32) -> Option<CpuId> {
        self.cores_by_apic_id.lock().get(&apic_id).copied()
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
        let enabled = interrupts::are_enabled();
        interrupts::disable();
        self.write_icr(apic_id, vector);
        if enabled {
            interrupts::enable();
        }
        true
    }

    /// Writes a fixed, physical-destination, edge-triggered IPI of `vector` for `apic_id`.
    /// Interrupts must be disabled (the xAPIC write is two stores plus a wait).
    fn write_icr(&self, apic_id: u32, vector: u8) {
        match self.access {
            ApicAccess::X2Apic => {
                let value = (u64::from(apic_id) << 32) | ICR_LEVEL_ASSERT | u64::from(vector);
                // The WRMSR to the x2APIC ICR is not serializing: without a fence the IPI may
                // reach the target before the queue stores that precede it are visible there.
                // SAFETY: mfence has no preconditions (SSE2 is part of x86_64).
                unsafe { _mm_mfence() };
                // SAFETY: x2APIC mode is on (see `read_apic_id`); a fixed IPI to a registered
                // APIC id only makes that core take `vector`, whose handler the kernel installed.
                unsafe { Msr::new(X2APIC_ICR).write(value) };
            }
            ApicAccess::XApic { base } => {
                let low = (base + XAPIC_ICR_LOW) as *mut u32;
                let high = (base + XAPIC_ICR_HIGH) as *mut u32;
                // No fence needed: the APIC page is uncacheable and x86 keeps stores in program
                // order (TSO), so the queue stores are visible before the ICR store issues.
                // SAFETY: both registers lie in the kernel's APIC mapping (constructor contract);
                // interrupts are off, so no other ICR write on this core interleaves; waiting for
                // the delivery status to clear before a new command is what the SDM requires.
                unsafe {
                    while core::ptr::read_volatile(low) & ICR_DELIVERY_PENDING != 0 {
                        core::hint::spin_loop();
                    }
                    core::ptr::write_volatile(high, apic_id << 24);
                    core::ptr::write_volatile(low, ICR_LEVEL_ASSERT as u32 | u32::from(vector));
                }
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

    fn send_ipi(&self, target: CpuId) {
        // A core not brought up yet has nothing to interrupt: its messages stay queued and run
        // when it drains (the protocol refuses unicasts to offline cores anyway).
        self.send_vector(target, self.vector);
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
        let enabled = interrupts::are_enabled();
        interrupts::disable();
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
        if enabled {
            interrupts::enable();
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
        platform.apic_ids[0].store(0, Ordering::Release);
        assert_eq!(platform.apic_id_of(0), Some(0));
        assert!(!platform.send_vector(0, 14));
        assert!(!platform.send_vector(0, 31));
    }
}
