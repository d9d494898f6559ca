//! The benchmark families: what is measured, with what counts, against which peers.
//!
//! Each family lists its cases (stable id, label, how to run one repeat) without running them,
//! so the driver can check the targets file against the ids before it measures anything.

pub mod all_to_all;
pub mod round_trip;
pub mod streaming;

use crate::measure::Run;

/// The counts of one benchmark invocation.
pub struct Params {
    /// Tiny counts: every case runs, the figures mean nothing.
    pub smoke: bool,
    /// Repeats of every case.
    pub runs: usize,
    /// Messages per streaming run.
    pub stream: u64,
    /// Round trips per latency run.
    pub roundtrips: usize,
    /// Cores of the all-to-all runs.
    pub a2a_cores: usize,
    /// Messages each core sends per all-to-all run.
    pub a2a_per_core: u64,
}

impl Params {
    pub fn new(smoke: bool) -> Params {
        if smoke {
            Params {
                smoke,
                runs: 3,
                stream: 20_000,
                roundtrips: 500,
                a2a_cores: 4,
                a2a_per_core: 5_000,
            }
        } else {
            Params {
                smoke,
                runs: 3,
                stream: 2_000_000,
                roundtrips: 20_000,
                a2a_cores: 4,
                a2a_per_core: 500_000,
            }
        }
    }
}

/// A throughput case: one call is one timed run.
pub struct ThroughputCase {
    pub id: &'static str,
    pub label: &'static str,
    pub run: Box<dyn Fn() -> Run>,
}

/// A latency case: one call is one run, returning its samples in nanoseconds.
pub struct LatencyCase {
    pub id: &'static str,
    pub label: &'static str,
    pub run: Box<dyn Fn() -> Vec<u64>>,
}

fn case(id: &'static str, label: &'static str, run: impl Fn() -> Run + 'static) -> ThroughputCase {
    ThroughputCase {
        id,
        label,
        run: Box::new(run),
    }
}
