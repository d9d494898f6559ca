//! Multicast wake-ups through one platform call (`Platform::send_ipi_many`): every target the
//! `npoll` handshake decides to interrupt is signalled exactly once, the statistics count the
//! targets (`ipis`) and the writes the platform reports (`icr_writes`). The host platform models
//! the all-excluding-self shorthand (one write for every core but the caller) and otherwise one
//! write per target.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{CpuSet, Ipiq, Stats};

type Q = Ipiq<HostPlatform>;

const CPUS: usize = 8;

/// Per core: how many times the multicast's function ran there.
static RAN: [AtomicUsize; CPUS] = [const { AtomicUsize::new(0) }; CPUS];

fn count_here(q: &Q, _: usize, _: usize) {
    RAN[q.current_cpu()].fetch_add(1, Ordering::Relaxed);
}

/// A machine whose idle cores halt at once and whose tick is too slow to drain anything during
/// a test, so an idle target's `npoll` is clear and each multicast target needs its IPI.
fn quiet_machine(cpus: usize) -> HostMachine {
    let mut config = HostConfig::cpus(cpus);
    config.tick = Duration::from_secs(60);
    HostMachine::start(config)
}

/// Waits until every accepted message has run and every core not in `busy` is halted in its idle
/// loop, so none of them is still inside a drain with `npoll` set (which would let a multicast
/// avoid it): the exact counts below need every target to want an IPI.
fn settle(machine: &HostMachine, busy: &[usize]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    if !machine.quiesce(Duration::from_secs(5)) {
        return false;
    }
    let q = machine.ipiq();
    while Instant::now() < deadline {
        let halted = (0..q.cpu_count())
            .filter(|c| !busy.contains(c))
            .all(|c| q.core_status(c).is_some_and(|s| s.halted));
        if halted {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

fn ran() -> Vec<usize> {
    RAN.iter().map(|r| r.load(Ordering::Acquire)).collect()
}

fn delta(after: Stats, before: Stats) -> (u64, u64, u64) {
    (
        after.ipis - before.ipis,
        after.avoided - before.avoided,
        after.icr_writes - before.icr_writes,
    )
}

#[test]
fn a_multicast_to_every_other_core_signals_each_target_once_through_one_platform_call() {
    let machine = quiet_machine(CPUS);
    let q = machine.ipiq().clone();
    for sender in 0..CPUS {
        assert!(settle(&machine, &[]));
        let mut others = CpuSet::all(CPUS).unwrap();
        others.remove(sender);
        let p = machine.platform();
        let delivered: Vec<u64> = (0..CPUS).map(|c| p.ipis_delivered(c)).collect();
        let calls = p.multicast_calls(sender);
        let before_ran = ran();
        let before = q.stats(sender).unwrap();
        let n = machine
            .run_on(sender, move |core| {
                core.ipiq().send_many(&others, count_here, 0, 0)
            })
            .unwrap()
            .unwrap();
        assert_eq!(n, CPUS - 1);
        assert!(machine.quiesce(Duration::from_secs(5)));
        let after = q.stats(sender).unwrap();
        assert_eq!(
            delta(after, before),
            ((CPUS - 1) as u64, 0, 1),
            "sender {sender}: (ipis, avoided, icr_writes): every target signalled, one write"
        );
        assert_eq!(p.multicast_calls(sender) - calls, 1, "sender {sender}");
        for core in 0..CPUS {
            let expected = u64::from(core != sender);
            assert_eq!(
                p.ipis_delivered(core) - delivered[core],
                expected,
                "sender {sender}: IPIs that reached core {core}"
            );
            assert_eq!(
                ran()[core] - before_ran[core],
                expected as usize,
                "sender {sender}: runs on core {core}"
            );
        }
    }
    machine.shutdown();
}

#[test]
fn a_multicast_to_a_subset_is_one_platform_call_with_a_write_per_target() {
    static SUBSET_RAN: AtomicUsize = AtomicUsize::new(0);
    fn count(_: &Q, _: usize, _: usize) {
        SUBSET_RAN.fetch_add(1, Ordering::Relaxed);
    }
    let machine = quiet_machine(CPUS);
    let q = machine.ipiq().clone();
    assert!(settle(&machine, &[]));
    let targets = CpuSet::from_cpus([1, 3, 6]).unwrap();
    let before = q.stats(0).unwrap();
    let calls = machine.platform().multicast_calls(0);
    let n = machine
        .run_on(0, move |core| core.ipiq().send_many(&targets, count, 0, 0))
        .unwrap()
        .unwrap();
    assert_eq!(n, 3);
    assert!(machine.quiesce(Duration::from_secs(5)));
    // The host models no cluster destinations: one write per target.
    assert_eq!(delta(q.stats(0).unwrap(), before), (3, 0, 3));
    assert_eq!(machine.platform().multicast_calls(0) - calls, 1);
    assert_eq!(SUBSET_RAN.load(Ordering::Acquire), 3);
    machine.shutdown();
}

#[test]
fn only_the_targets_that_need_an_ipi_reach_the_platform() {
    static ALL_RAN: AtomicUsize = AtomicUsize::new(0);
    fn count(_: &Q, _: usize, _: usize) {
        ALL_RAN.fetch_add(1, Ordering::Relaxed);
    }
    fn nothing(_: &Q, _: usize, _: usize) {}
    const CORES: usize = 4;
    let machine = quiet_machine(CORES);
    // Core 1 is busy with interrupts "off" (no safe point) and already signalled by a first
    // message, so its `npoll` is set: the multicast to every other core avoids it, and the
    // platform gets only cores 2 and 3 (not every other core: no shorthand).
    let busy = Arc::new(AtomicBool::new(true));
    let target = machine.occupy(1, &busy).unwrap();
    assert!(settle(&machine, &[1]));
    let calls = machine.platform().multicast_calls(0);
    let stats = machine
        .run_on(0, |core| {
            let q = core.ipiq();
            q.send(1, nothing, 0, 0).unwrap();
            let before = q.stats(0).unwrap();
            let n = q
                .send_many(&CpuSet::from_cpus(1..CORES).unwrap(), count, 0, 0)
                .unwrap();
            assert_eq!(n, 3);
            delta(q.stats(0).unwrap(), before)
        })
        .unwrap();
    let calls = machine.platform().multicast_calls(0) - calls;
    // Release core 1 before judging, so a failed assertion fails instead of hanging the test.
    busy.store(false, Ordering::Release);
    target.join();
    assert_eq!(stats, (2, 1, 2), "(ipis, avoided, icr_writes)");
    assert_eq!(calls, 1);
    assert!(machine.quiesce(Duration::from_secs(5)));
    assert_eq!(ALL_RAN.load(Ordering::Acquire), 3);
    machine.shutdown();
}

#[test]
fn a_cpusync_gathers_every_other_core_through_one_platform_call() {
    static SYNC_RAN: AtomicUsize = AtomicUsize::new(0);
    fn count(_: &Q, _: usize, _: usize) {
        SYNC_RAN.fetch_add(1, Ordering::Relaxed);
    }
    let machine = quiet_machine(CPUS);
    let q = machine.ipiq().clone();
    assert!(settle(&machine, &[]));
    let before = q.stats(0).unwrap();
    let calls = machine.platform().multicast_calls(0);
    let n = machine
        .run_on(0, |core| {
            core.ipiq()
                .cpusync_simple(&CpuSet::all(CPUS).unwrap(), count, 0, 0)
        })
        .unwrap()
        .unwrap();
    assert_eq!(n, CPUS);
    assert_eq!(SYNC_RAN.load(Ordering::Acquire), CPUS);
    let after = q.stats(0).unwrap();
    // The enter messages went out in one platform call, as one (modelled shorthand) write; a
    // watchdog's re-sent IPI (a slow host) would be a unicast, counted in `ipis` only.
    assert_eq!(machine.platform().multicast_calls(0) - calls, 1);
    assert_eq!(after.icr_writes - before.icr_writes, 1);
    assert!(after.ipis - before.ipis >= (CPUS - 1) as u64, "{after:?}");
    machine.shutdown();
}

#[test]
fn every_hardware_write_is_counted_once_unicast_or_multicast() {
    fn nothing(_: &Q, _: usize, _: usize) {}
    let machine = quiet_machine(CPUS);
    let q = machine.ipiq().clone();
    assert!(settle(&machine, &[]));
    let before = q.stats(0).unwrap();
    // A unicast to a halted core: one IPI, one single-target write, no multicast write.
    machine
        .run_on(0, |core| core.ipiq().send(1, nothing, 0, 0))
        .unwrap()
        .unwrap();
    assert!(settle(&machine, &[]));
    let after_unicast = q.stats(0).unwrap();
    assert_eq!(
        (
            after_unicast.ipis - before.ipis,
            after_unicast.icr_unicast - before.icr_unicast,
            after_unicast.icr_writes - before.icr_writes
        ),
        (1, 1, 0),
        "(ipis, icr_unicast, icr_writes) after a unicast"
    );
    // A multicast to every other core: one (modelled shorthand) write, no unicast write.
    machine
        .run_on(0, |core| {
            core.ipiq()
                .send_many(&CpuSet::from_cpus(1..CPUS).unwrap(), nothing, 0, 0)
        })
        .unwrap()
        .unwrap();
    assert!(machine.quiesce(Duration::from_secs(5)));
    let after = q.stats(0).unwrap();
    assert_eq!(
        (
            after.ipis - after_unicast.ipis,
            after.icr_unicast - after_unicast.icr_unicast,
            after.icr_writes - after_unicast.icr_writes
        ),
        ((CPUS - 1) as u64, 0, 1),
        "(ipis, icr_unicast, icr_writes) after a multicast"
    );
    machine.shutdown();
}
