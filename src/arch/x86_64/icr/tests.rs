//! Unit tests of the parent module.

use super::*;

/// The x2APIC logical destination the SDM derives from x2APIC id `id`.
fn ldr(id: u32) -> u32 {
    (id >> 4) << 16 | 1 << (id & 15)
}

/// A machine whose core `cpu` has x2APIC id `ids[cpu]` (`None`: not registered) and the
/// derived LDR, unless `unknown_ldr` names it.
fn machine(ids: &[Option<u32>], unknown_ldr: &[usize]) -> Vec<Option<ApicDestination>> {
    ids.iter()
        .enumerate()
        .map(|(cpu, id)| {
            id.map(|apic_id| ApicDestination {
                apic_id,
                logical_id: (!unknown_ldr.contains(&cpu)).then(|| ldr(apic_id)),
            })
        })
        .collect()
}

fn plan(
    cores: &[Option<ApicDestination>],
    me: CpuId,
    targets: &CpuSet,
    access: ApicAccess,
) -> Vec<IcrWrite> {
    plan_icr_writes(targets, me, cores.len(), access, |cpu| {
        cores.get(cpu).copied().flatten()
    })
    .collect()
}

/// Which cores each write reaches, as the APIC routes it: how many times each core is
/// interrupted (the sender never; a shorthand reaches every other registered core).
fn deliveries(cores: &[Option<ApicDestination>], me: CpuId, writes: &[IcrWrite]) -> Vec<u32> {
    let mut hits = vec![0; cores.len()];
    for write in writes {
        for (cpu, dest) in cores.iter().enumerate() {
            let Some(dest) = dest else { continue };
            let reached = match *write {
                IcrWrite::AllExcludingSelf => cpu != me,
                IcrWrite::Cluster { cluster, members } => {
                    // Routed by the hardware-derived LDR, whatever the table says.
                    let l = ldr(dest.apic_id);
                    (l >> 16) as u16 == cluster && (l as u16) & members != 0
                }
                IcrWrite::Physical(id) => id == dest.apic_id,
            };
            hits[cpu] += u32::from(reached);
        }
    }
    hits
}

/// Every registered target is reached exactly once, nothing else is reached, and there are
/// no more writes than targets.
fn check_exact(
    cores: &[Option<ApicDestination>],
    me: CpuId,
    targets: &CpuSet,
    writes: &[IcrWrite],
) {
    let hits = deliveries(cores, me, writes);
    for (cpu, dest) in cores.iter().enumerate() {
        let expected = u32::from(targets.contains(cpu) && dest.is_some());
        assert_eq!(
            hits[cpu], expected,
            "core {cpu}, targets {targets:?}, writes {writes:?}"
        );
    }
    assert!(writes.len() <= targets.len(), "{writes:?}");
}

fn distinct_clusters(cores: &[Option<ApicDestination>], targets: &CpuSet) -> usize {
    let mut clusters: Vec<u32> = targets
        .iter()
        .filter_map(|cpu| cores[cpu])
        .map(|d| d.apic_id >> 4)
        .collect();
    clusters.sort_unstable();
    clusters.dedup();
    clusters.len()
}

#[test]
fn every_other_core_is_one_shorthand_on_x2apic_and_xapic() {
    for cpus in [2, 4, 8, 16, 32] {
        let cores = machine(&(0..cpus).map(Some).collect::<Vec<_>>(), &[]);
        for me in [0, cpus as usize - 1] {
            let mut others = CpuSet::all(cpus as usize).unwrap();
            others.remove(me);
            for access in [ApicAccess::X2Apic, ApicAccess::XApic { base: 0 }] {
                let writes = plan(&cores, me, &others, access);
                assert_eq!(
                    writes,
                    [IcrWrite::AllExcludingSelf],
                    "{cpus} cores, {me} sends"
                );
                check_exact(&cores, me, &others, &writes);
            }
        }
    }
}

#[test]
fn no_shorthand_unless_every_other_core_is_a_registered_target() {
    // 16 cores, core 9 not registered: the set of every other core is planned per cluster
    // (x2APIC) or per core (xAPIC), and core 9 gets nothing.
    let mut ids: Vec<Option<u32>> = (0..16).map(Some).collect();
    ids[9] = None;
    let cores = machine(&ids, &[]);
    let mut others = CpuSet::all(16).unwrap();
    others.remove(0);
    let writes = plan(&cores, 0, &others, ApicAccess::X2Apic);
    let members = (0xFFFF & !(1 << 0) & !(1 << 9)) as u16;
    assert_eq!(
        writes,
        [IcrWrite::Cluster {
            cluster: 0,
            members
        }]
    );
    check_exact(&cores, 0, &others, &writes);
    let writes = plan(&cores, 0, &others, ApicAccess::XApic { base: 0 });
    assert_eq!(writes.len(), 14);
    check_exact(&cores, 0, &others, &writes);

    // All registered, but one other core left out of the set, or the sender in it.
    let cores = machine(&(0..16).map(Some).collect::<Vec<_>>(), &[]);
    let mut most = others;
    most.remove(5);
    let writes = plan(&cores, 0, &most, ApicAccess::XApic { base: 0 });
    assert_eq!(writes.len(), 14, "{writes:?}");
    check_exact(&cores, 0, &most, &writes);
    let all = CpuSet::all(16).unwrap();
    assert!(!plan(&cores, 0, &all, ApicAccess::X2Apic).contains(&IcrWrite::AllExcludingSelf));
}

#[test]
fn thirty_two_cores_minus_some_are_one_write_per_cluster() {
    let cores = machine(&(0..32).map(Some).collect::<Vec<_>>(), &[]);
    let mut targets = CpuSet::all(32).unwrap();
    targets.remove(0);
    targets.remove(17);
    let writes = plan(&cores, 0, &targets, ApicAccess::X2Apic);
    assert_eq!(
        writes,
        [
            IcrWrite::Cluster {
                cluster: 0,
                members: 0xFFFE
            },
            IcrWrite::Cluster {
                cluster: 1,
                members: 0xFFFD
            },
        ]
    );
    check_exact(&cores, 0, &targets, &writes);
    let writes = plan(&cores, 0, &targets, ApicAccess::XApic { base: 0 });
    assert_eq!(writes.len(), 30);
    assert!(writes.iter().all(|w| matches!(w, IcrWrite::Physical(_))));
    check_exact(&cores, 0, &targets, &writes);
}

#[test]
fn sparse_sets_and_apic_ids_that_are_not_the_core_ids() {
    // 32 cores numbered as firmware often does with two threads per core: cores 0..16 are the
    // first threads (even ids from 0x100), cores 16..32 the second ones (odd ids). A
    // cluster's members are interleaved with another cluster's in core order.
    let ids: Vec<Option<u32>> = (0..32u32)
        .map(|cpu| {
            Some(
                0x100
                    + if cpu < 16 {
                        2 * cpu
                    } else {
                        2 * (cpu - 16) + 1
                    },
            )
        })
        .collect();
    let cores = machine(&ids, &[]);
    let targets = CpuSet::from_cpus([1, 2, 9, 17, 18, 31]).unwrap();
    let writes = plan(&cores, 0, &targets, ApicAccess::X2Apic);
    check_exact(&cores, 0, &targets, &writes);
    // Cores 1, 2, 17, 18 are ids 0x102, 0x104, 0x103, 0x105 (cluster 0x10); 9 and 31 are
    // 0x112 and 0x11F (cluster 0x11).
    assert_eq!(
        writes,
        [
            IcrWrite::Cluster {
                cluster: 0x10,
                members: 0b11_1100
            },
            IcrWrite::Cluster {
                cluster: 0x11,
                members: 1 << 2 | 1 << 15
            },
        ]
    );
    // A target alone in its cluster is a physical write.
    let single = CpuSet::from_cpus([3, 9]).unwrap();
    assert_eq!(
        plan(&cores, 0, &single, ApicAccess::X2Apic),
        [IcrWrite::Physical(0x106), IcrWrite::Physical(0x112)]
    );
    // Ids far apart: every target its own cluster, each a physical write.
    let far: Vec<Option<u32>> = (0..16u32).map(|cpu| Some(cpu * 0x40 + 3)).collect();
    let cores = machine(&far, &[]);
    let targets = CpuSet::from_cpus([1, 4, 15]).unwrap();
    let writes = plan(&cores, 0, &targets, ApicAccess::X2Apic);
    assert_eq!(
        writes,
        [
            IcrWrite::Physical(0x43),
            IcrWrite::Physical(0x103),
            IcrWrite::Physical(0x3C3)
        ]
    );
    check_exact(&cores, 0, &targets, &writes);
}

#[test]
fn a_core_whose_ldr_is_unknown_gets_a_physical_write() {
    let cores = machine(&(0..16).map(Some).collect::<Vec<_>>(), &[3]);
    let targets = CpuSet::from_cpus([2, 3, 4]).unwrap();
    let writes = plan(&cores, 0, &targets, ApicAccess::X2Apic);
    assert_eq!(
        writes,
        [
            IcrWrite::Cluster {
                cluster: 0,
                members: 0b1_0100
            },
            IcrWrite::Physical(3)
        ]
    );
    check_exact(&cores, 0, &targets, &writes);
    // An LDR value that is no cluster address (no or several member bits) is not used.
    assert!(!is_cluster_address(0) && !is_cluster_address(0x0001_0003));
    assert!(is_cluster_address(ldr(0x1F)));
}

#[test]
fn random_sets_reach_each_target_once_in_one_write_per_cluster() {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..300 {
        let cpus = 2 + (next() % 200) as usize;
        // Distinct ids, shuffled, some unregistered, some with unknown LDRs.
        let mut ids: Vec<u32> = (0..cpus as u32)
            .map(|i| i * (1 + (round % 3)) + 7)
            .collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, (next() % (i as u64 + 1)) as usize);
        }
        let ids: Vec<Option<u32>> = ids
            .into_iter()
            .map(|id| (next() % 20 != 0).then_some(id))
            .collect();
        let unknown: Vec<usize> = (0..cpus).filter(|_| next() % 30 == 0).collect();
        let cores = machine(&ids, &unknown);
        let me = (next() % cpus as u64) as usize;
        let mut targets = CpuSet::new();
        for cpu in (0..cpus).filter(|&c| c != me && next() % 3 != 0) {
            targets.insert(cpu).unwrap();
        }
        let writes = plan(&cores, me, &targets, ApicAccess::X2Apic);
        check_exact(&cores, me, &targets, &writes);
        let clustered = writes
            .iter()
            .filter(|w| matches!(w, IcrWrite::Cluster { .. }))
            .count();
        assert!(
            clustered <= distinct_clusters(&cores, &targets),
            "round {round}"
        );
        if unknown.is_empty() {
            assert!(
                writes.len() <= distinct_clusters(&cores, &targets),
                "round {round}: {writes:?}"
            );
        }
        let writes = plan(&cores, me, &targets, ApicAccess::XApic { base: 0 });
        check_exact(&cores, me, &targets, &writes);
    }
}

#[test]
fn icr_values_follow_the_sdm_layout() {
    // Fixed delivery, level assert (bit 14), vector 122.
    let base = 1 << 14 | 122;
    assert_eq!(
        x2apic_icr(IcrWrite::AllExcludingSelf, 122),
        0b11 << 18 | base
    );
    assert_eq!(
        x2apic_icr(
            IcrWrite::Cluster {
                cluster: 0x12,
                members: 0x8001
            },
            122
        ),
        0x0012_8001 << 32 | 1 << 11 | base
    );
    assert_eq!(
        x2apic_icr(IcrWrite::Physical(0x1234), 122),
        0x1234 << 32 | base
    );
    assert_eq!(
        xapic_icr(IcrWrite::AllExcludingSelf, 122),
        Some((0, 0b11 << 18 | base as u32))
    );
    assert_eq!(
        xapic_icr(IcrWrite::Physical(7), 122),
        Some((7 << 24, base as u32))
    );
    assert_eq!(
        xapic_icr(
            IcrWrite::Cluster {
                cluster: 0,
                members: 3
            },
            122
        ),
        None
    );
}
