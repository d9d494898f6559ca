//! Bad input gets a clear error, never a panic or a hang, and nothing accepted is lost.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipiq::host::{HostConfig, HostMachine, HostPlatform};
use ipiq::{Config, CpuSet, Error, Ipiq, Message, Seq, SyncWork};

type Q = Ipiq<HostPlatform>;

static RAN: AtomicUsize = AtomicUsize::new(0);
fn count(_: &Q, _: usize, _: usize) {
    RAN.fetch_add(1, Ordering::Relaxed);
}
fn nothing(_: &Q, _: usize, _: usize) {}

fn machine(cpus: usize, slots: usize, timeout: Duration) -> HostMachine {
    let mut config = HostConfig::cpus(cpus);
    config.ipiq = Config {
        fifo_slots: slots,
        resend_after_ns: 1_000_000,
        warn_after_ns: timeout.as_nanos() as u64 / 2,
        timeout_ns: timeout.as_nanos() as u64,
        ..Config::default()
    };
    HostMachine::start(config)
}

#[test]
fn unknown_cores_are_errors() {
    let m = machine(2, 16, Duration::from_secs(5));
    m.run_on(0, |core| {
        let q = core.ipiq();
        assert_eq!(q.send(2, nothing, 0, 0), Err(Error::NoSuchCpu(2)));
        assert_eq!(
            q.send_passive(usize::MAX, nothing, 0, 0),
            Err(Error::NoSuchCpu(usize::MAX))
        );
        assert_eq!(q.try_send(7, nothing, 0, 0), Err(Error::NoSuchCpu(7)));
        assert_eq!(
            q.send_batch(2, &[Message::new(nothing, 0, 0)]),
            Err(Error::NoSuchCpu(2))
        );
        assert_eq!(q.seq(9), Err(Error::NoSuchCpu(9)));
        assert_eq!(q.wait(9, Seq(1)), Err(Error::NoSuchCpu(9)));
        assert_eq!(q.stats(3).map(|_| ()), Err(Error::NoSuchCpu(3)));
        assert_eq!(q.cpu_online(5), Err(Error::NoSuchCpu(5)));
        assert_eq!(q.is_done(0, 4, Seq(1)), Err(Error::NoSuchCpu(4)));
        // A set naming a core beyond the machine sends nothing at all.
        let before = q.stats(0).unwrap().sent;
        assert_eq!(
            q.send_many(&CpuSet::from_cpus([1, 64]).unwrap(), nothing, 0, 0),
            Err(Error::NoSuchCpu(64))
        );
        assert_eq!(q.stats(0).unwrap().sent, before);
        assert_eq!(
            q.cpusync(
                &CpuSet::from_cpus([1, 300]).unwrap(),
                SyncWork::default(),
                |_| ()
            ),
            Err(Error::NoSuchCpu(300))
        );
        assert_eq!(
            q.cpusync_simple(&CpuSet::single(2).unwrap(), nothing, 0, 0),
            Err(Error::NoSuchCpu(2))
        );
    })
    .unwrap();
    assert_eq!(m.run_on(5, |_| ()).err(), Some(Error::NoSuchCpu(5)));
    m.shutdown();
}

#[test]
fn empty_sets_are_errors() {
    let m = machine(3, 16, Duration::from_secs(5));
    m.run_on(0, |core| {
        let q = core.ipiq();
        assert_eq!(
            q.send_many(&CpuSet::new(), nothing, 0, 0),
            Err(Error::EmptySet)
        );
        assert_eq!(
            q.cpusync_simple(&CpuSet::new(), nothing, 0, 0),
            Err(Error::EmptySet)
        );
        assert_eq!(
            q.cpusync(&CpuSet::new(), SyncWork::default(), |_| ()),
            Err(Error::EmptySet)
        );
        q.cpu_offline(1).unwrap();
        q.cpu_offline(2).unwrap();
        // Only offline cores: nothing to send to.
        assert_eq!(
            q.send_many(&CpuSet::from_cpus([1, 2]).unwrap(), nothing, 0, 0),
            Err(Error::EmptySet)
        );
        assert_eq!(q.send(1, nothing, 0, 0), Err(Error::CpuOffline(1)));
        q.cpu_online(1).unwrap();
        q.cpu_online(2).unwrap();
        q.cpusync(&CpuSet::single(1).unwrap(), SyncWork::default(), |sync| {
            assert_eq!(sync.add(0), Err(Error::AlreadyInSync(0)), "the master");
            assert_eq!(sync.add(1), Err(Error::AlreadyInSync(1)));
            assert_eq!(sync.add(3), Err(Error::NoSuchCpu(3)));
        })
        .unwrap();
    })
    .unwrap();
    m.shutdown();
}

#[test]
fn sequence_numbers_never_issued_are_errors_and_old_ones_return_at_once() {
    let m = machine(2, 16, Duration::from_secs(5));
    m.run_on(0, |core| {
        let q = core.ipiq();
        // Never talked to core 1.
        assert_eq!(q.wait(1, Seq(1)), Err(Error::InvalidSequence));
        assert_eq!(q.seq(1), Ok(Seq(0)));
        assert_eq!(q.wait(1, Seq(0)), Ok(()));
        let s1 = q.send(1, nothing, 0, 0).unwrap();
        let s2 = q.send(1, nothing, 0, 0).unwrap();
        assert!(s2 > s1);
        assert_eq!(
            q.wait(1, Seq(s2.0 + 1)),
            Err(Error::InvalidSequence),
            "from the future"
        );
        assert_eq!(q.wait(1, s2), Ok(()));
        assert_eq!(q.wait(1, s1), Ok(()), "stale: already done");
        assert_eq!(q.is_done(0, 1, s2), Ok(true));
    })
    .unwrap();
    m.shutdown();
}

#[test]
fn a_target_that_never_drains_times_out_and_loses_nothing() {
    let m = machine(2, 4, Duration::from_millis(100));
    let block = Arc::new(AtomicBool::new(true));
    let block2 = block.clone();
    // Whatever happens below, release core 1 so that the machine can stop.
    struct Release(Arc<AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _release = Release(block.clone());
    // Core 1 runs with interrupts "off" until released.
    let stuck = m
        .spawn_on(1, move |_| {
            while block2.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
        })
        .unwrap();
    let before = RAN.load(Ordering::Relaxed);
    let (accepted, last, wait_err, full_err, nowait_err, sync_err, took) = m
        .run_on(0, |core| {
            let q = core.ipiq();
            let start = Instant::now();
            let mut accepted = 0;
            let mut last = Seq(0);
            // Fill the FIFO (4 slots) until the sender is told no.
            let full_err = loop {
                match q.send(1, count, 0, 0) {
                    Ok(seq) => {
                        accepted += 1;
                        last = seq;
                    }
                    Err(e) => break e,
                }
            };
            // try_send queues until the FIFO is 2/3 full, then refuses without waiting.
            let nowait_err = loop {
                match q.try_send(1, count, 0, 0) {
                    Ok(seq) => {
                        accepted += 1;
                        last = seq;
                    }
                    Err(e) => break e,
                }
            };
            let wait_err = q.wait(1, last).unwrap_err();
            let sync_err = q
                .cpusync_simple(&CpuSet::all(2).unwrap(), nothing, 0, 0)
                .unwrap_err();
            (
                accepted,
                last,
                wait_err,
                full_err,
                nowait_err,
                sync_err,
                start.elapsed(),
            )
        })
        .unwrap();
    assert_eq!(full_err, Error::TimedOut);
    assert_eq!(nowait_err, Error::WouldBlock);
    assert_eq!(wait_err, Error::TimedOut);
    assert_eq!(sync_err, Error::TimedOut);
    assert!(took < Duration::from_secs(5), "bounded: {took:?}");
    assert!(accepted >= 2);
    assert!(m.ipiq().stats(0).unwrap().timeouts >= 3);
    assert!(
        m.ipiq().stats(0).unwrap().ipi_resent > 0,
        "the watchdog re-sent the IPI"
    );
    // Release core 1: everything accepted runs.
    block.store(false, Ordering::Release);
    stuck.join();
    assert!(m.quiesce(Duration::from_secs(5)));
    assert_eq!(RAN.load(Ordering::Relaxed) - before, accepted);
    m.run_on(0, move |core| assert_eq!(core.ipiq().wait(1, last), Ok(())))
        .unwrap();
    m.shutdown();
}

#[test]
fn odd_fifo_sizes_are_rounded_to_a_power_of_two() {
    let m = machine(2, 5, Duration::from_secs(5));
    assert_eq!(m.ipiq().config().fifo_slots, 8);
    m.shutdown();
    let m = machine(2, 0, Duration::from_secs(5));
    assert_eq!(m.ipiq().config().fifo_slots, 2);
    m.shutdown();
}

#[test]
fn errors_read_well_and_map_to_errno() {
    assert_eq!(Error::NoSuchCpu(9).to_string(), "no such cpu: 9");
    assert_eq!(Error::WouldBlock.errno(), -11);
    assert_eq!(Error::TimedOut.errno(), -110);
}
