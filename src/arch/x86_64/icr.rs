//! ICR commands for multicast IPIs: how a set of cores is reached in as few interrupt command
//! register writes as the local APIC allows ([`plan_icr_writes`]), and the register values of
//! each write ([`IcrWrite`]). Pure: the writes themselves are [`super::X86Platform`]'s.
//!
//! The field values (destination mode, shorthand) are the `x2apic` crate's `IpiDestMode` and
//! `IpiAllShorthand`; the layout is the SDM's (Vol. 3A, "Interrupt Command Register"): vector in
//! bits 7:0, delivery mode 10:8 (fixed: 0), destination mode 11, level 14 (assert for every
//! IPI but INIT de-assert), shorthand 19:18, destination 63:32 on x2APIC (the whole 32-bit
//! field; in logical mode the cluster in its bits 31:16 and a member mask in 15:0) or 63:56 on
//! xAPIC (the high register's bits 31:24).

use x2apic::lapic::{IpiAllShorthand, IpiDestMode};

use crate::platform::CpuId;
use crate::CpuSet;

use super::ApicAccess;

/// ICR level bit (14): assert, for every fixed IPI.
const ICR_LEVEL_ASSERT: u64 = 1 << 14;
/// ICR destination mode (bit 11): the `x2apic` crate's `IpiDestMode` value.
const ICR_DESTINATION_MODE_SHIFT: u32 = 11;
/// ICR destination shorthand (bits 19:18): the `x2apic` crate's `IpiAllShorthand` value.
const ICR_SHORTHAND_SHIFT: u32 = 18;

/// How a sender addresses one core in the ICR ([`super::X86Platform::destination_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApicDestination {
    /// The core's APIC id (physical destination).
    pub apic_id: u32,
    /// The core's x2APIC logical destination register (cluster in bits 31:16, one member bit in
    /// bits 15:0), if known; `None` on xAPIC or where it could not be read.
    pub logical_id: Option<u32>,
}

/// One ICR write of a multicast, as [`plan_icr_writes`] plans it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrWrite {
    /// The all-excluding-self shorthand: every local APIC in the system but the sender's.
    AllExcludingSelf,
    /// An x2APIC logical destination: the cores of cluster `cluster` whose bits are set in
    /// `members` (bit `i`: the core with x2APIC id `cluster << 4 | i`).
    Cluster {
        /// The cluster (the x2APIC id's bits 19:4), bits 31:16 of the destination.
        cluster: u16,
        /// The member mask, bits 15:0 of the destination.
        members: u16,
    },
    /// A physical destination: the core with this APIC id.
    Physical(u32),
}

/// Whether `ldr` is an x2APIC logical destination register value: a cluster in bits 31:16 and
/// exactly one member bit in bits 15:0.
pub(super) fn is_cluster_address(ldr: u32) -> bool {
    (ldr & 0xFFFF).count_ones() == 1
}

/// Plans the ICR writes that reach every core of `targets`, sent from core `me` of a platform
/// with `cpu_count` cores whose APIC is reached through `access`; `destination` says how a core
/// is addressed (`None`: not registered, so it gets no write, as [`super::X86Platform::send_vector`]
/// does). The plan:
/// - [`IcrWrite::AllExcludingSelf`] alone, when `targets` is every core of `0..cpu_count` but
///   `me`, and every one of them is registered;
/// - otherwise, on x2APIC, one [`IcrWrite::Cluster`] per cluster holding two or more targets
///   whose logical destination is known, and [`IcrWrite::Physical`] for the rest;
/// - on xAPIC, one [`IcrWrite::Physical`] per registered target.
///
/// Each registered target is reached by exactly one write; no cluster write names a core
/// outside `targets`. The plan is an iterator: it allocates nothing and keeps a copy of the
/// set (128 bytes); a cluster costs one scan of the targets not yet planned.
///
/// ```
/// use ipiq::arch::x86_64::{plan_icr_writes, ApicAccess, ApicDestination, IcrWrite};
/// use ipiq::CpuSet;
/// // Cores 0..8 with x2APIC ids 0..8 (one cluster), core 0 sending.
/// let dest = |cpu: usize| {
///     let id = cpu as u32;
///     Some(ApicDestination { apic_id: id, logical_id: Some((id >> 4) << 16 | 1 << (id & 15)) })
/// };
/// let others = CpuSet::from_cpus(1..8).unwrap();
/// let plan: Vec<_> = plan_icr_writes(&others, 0, 8, ApicAccess::X2Apic, dest).collect();
/// assert_eq!(plan, [IcrWrite::AllExcludingSelf]);
/// let some = CpuSet::from_cpus([2, 3, 5]).unwrap();
/// let plan: Vec<_> = plan_icr_writes(&some, 0, 8, ApicAccess::X2Apic, dest).collect();
/// assert_eq!(plan, [IcrWrite::Cluster { cluster: 0, members: 0b10_1100 }]);
/// ```
///
/// Context: any; pure apart from calling `destination`.
pub fn plan_icr_writes<F>(
    targets: &CpuSet,
    me: CpuId,
    cpu_count: usize,
    access: ApicAccess,
    destination: F,
) -> IcrPlan<F>
where
    F: Fn(CpuId) -> Option<ApicDestination>,
{
    let every_other_core = me < cpu_count
        && !targets.contains(me)
        && targets.len() == cpu_count - 1
        && targets
            .iter()
            .all(|cpu| cpu < cpu_count && destination(cpu).is_some());
    IcrPlan {
        remaining: *targets,
        shorthand: every_other_core,
        clusters: access == ApicAccess::X2Apic,
        destination,
    }
}

/// The ICR writes of one multicast, from [`plan_icr_writes`].
pub struct IcrPlan<F> {
    /// Targets not planned yet.
    remaining: CpuSet,
    /// The next write is the all-excluding-self shorthand, which covers every target.
    shorthand: bool,
    /// Logical (cluster) destinations may be used (x2APIC).
    clusters: bool,
    /// How a core is addressed.
    destination: F,
}

impl<F> Iterator for IcrPlan<F>
where
    F: Fn(CpuId) -> Option<ApicDestination>,
{
    type Item = IcrWrite;

    fn next(&mut self) -> Option<IcrWrite> {
        if self.shorthand {
            self.shorthand = false;
            self.remaining = CpuSet::new();
            return Some(IcrWrite::AllExcludingSelf);
        }
        loop {
            let first = self.remaining.iter().next()?;
            self.remaining.remove(first);
            // Not registered: nothing to interrupt (its messages run when it drains).
            let Some(target) = (self.destination)(first) else {
                continue;
            };
            let ldr = match target.logical_id {
                Some(ldr) if self.clusters && is_cluster_address(ldr) => ldr,
                _ => return Some(IcrWrite::Physical(target.apic_id)),
            };
            let cluster = (ldr >> 16) as u16;
            let mut members = ldr as u16;
            let rest = self.remaining;
            for other in rest.iter() {
                let joins = (self.destination)(other)
                    .and_then(|d| d.logical_id)
                    .filter(|&l| is_cluster_address(l) && (l >> 16) as u16 == cluster);
                if let Some(l) = joins {
                    members |= l as u16;
                    self.remaining.remove(other);
                }
            }
            return Some(if members.count_ones() == 1 {
                IcrWrite::Physical(target.apic_id)
            } else {
                IcrWrite::Cluster { cluster, members }
            });
        }
    }
}

/// The x2APIC ICR value (MSR 0x830, destination in bits 63:32) of a fixed, edge-triggered IPI
/// of `vector` to `destination`.
pub(super) fn x2apic_icr(destination: IcrWrite, vector: u8) -> u64 {
    let fixed = ICR_LEVEL_ASSERT | u64::from(vector);
    match destination {
        IcrWrite::AllExcludingSelf => {
            fixed | (IpiAllShorthand::AllExcludingSelf as u64) << ICR_SHORTHAND_SHIFT
        }
        IcrWrite::Cluster { cluster, members } => {
            let logical = (u64::from(cluster) << 16) | u64::from(members);
            fixed | (IpiDestMode::Logical as u64) << ICR_DESTINATION_MODE_SHIFT | logical << 32
        }
        IcrWrite::Physical(apic_id) => {
            fixed
                | (IpiDestMode::Physical as u64) << ICR_DESTINATION_MODE_SHIFT
                | u64::from(apic_id) << 32
        }
    }
}

/// The xAPIC ICR values (high register, then low: writing the low one sends) of a fixed,
/// edge-triggered IPI of `vector` to `destination`; `None` for a cluster destination, which
/// xAPIC mode does not have here.
pub(super) fn xapic_icr(destination: IcrWrite, vector: u8) -> Option<(u32, u32)> {
    let fixed = ICR_LEVEL_ASSERT as u32 | u32::from(vector);
    match destination {
        IcrWrite::AllExcludingSelf => Some((
            0,
            fixed | (IpiAllShorthand::AllExcludingSelf as u32) << ICR_SHORTHAND_SHIFT,
        )),
        IcrWrite::Cluster { .. } => None,
        IcrWrite::Physical(apic_id) => Some((
            apic_id << 24,
            fixed | (IpiDestMode::Physical as u32) << ICR_DESTINATION_MODE_SHIFT,
        )),
    }
}

#[cfg(test)]
mod tests;
