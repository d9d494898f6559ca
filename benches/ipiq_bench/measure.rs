//! The measurement core: every case runs a number of times; each figure keeps every run's value
//! and is summarised by its median and its spread (min and max over the runs).

use std::time::Duration;

use crate::peers::Wakeups;

/// One timed run of a throughput case.
pub struct Run {
    pub elapsed: Duration,
    pub wakeups: Wakeups,
}

/// A figure's value over the runs of one case.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Every run's value, in run order.
    pub runs: Vec<f64>,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `runs`; `None` if there are none.
    pub fn of(runs: Vec<f64>) -> Option<Summary> {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            n if n % 2 == 1 => sorted[n / 2],
            n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            runs,
        })
    }
}

/// What a figure measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Messages per second.
    Rate,
    /// Wake-ups (IPIs, unparks) per message.
    WakeupsPerMsg,
    /// Latency percentiles, nanoseconds.
    P50,
    P99,
    P999,
}

impl Metric {
    pub const ALL: [Metric; 5] = [
        Metric::Rate,
        Metric::WakeupsPerMsg,
        Metric::P50,
        Metric::P99,
        Metric::P999,
    ];

    /// The name the data files and the targets file use.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Rate => "rate",
            Metric::WakeupsPerMsg => "wakeups",
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::P999 => "p999",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Rate => "msg/s",
            Metric::WakeupsPerMsg => "per msg",
            _ => "ns",
        }
    }

    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether a larger value is better (for "the best of several baselines").
    pub fn higher_is_better(self) -> bool {
        self == Metric::Rate
    }

    /// `value` the way the report prints this metric.
    pub fn show(self, value: f64) -> String {
        match self {
            Metric::Rate => format!("{:.2}", value / 1e6),
            Metric::WakeupsPerMsg => format!("{value:.4}"),
            _ => format!("{value:.0}"),
        }
    }

    /// The unit of [`Metric::show`]'s text.
    pub fn shown_unit(self) -> &'static str {
        match self {
            Metric::Rate => "M msg/s",
            other => other.unit(),
        }
    }
}

/// The benchmark families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Streaming,
    RoundTrip,
    AllToAll,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Streaming => "streaming",
            Family::RoundTrip => "round-trip",
            Family::AllToAll => "all-to-all",
        }
    }
}

/// One measured row: a case of one family, with its figures.
pub struct Figure {
    pub family: Family,
    /// Stable id, used by the targets file and the data files.
    pub id: &'static str,
    pub label: &'static str,
    pub metrics: Vec<(Metric, Summary)>,
    /// How the case reported wake-ups (a figure only when every run counted them).
    pub wakeups: Wakeups,
    /// Latency cases: the sorted samples of the run whose p50 is the median, for the plot.
    pub samples: Vec<u64>,
}

impl Figure {
    pub fn metric(&self, metric: Metric) -> Option<&Summary> {
        self.metrics
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, s)| s)
    }
}

/// The ratio of `a`'s metric `am` to `b`'s `bm`: `(median, lowest, highest)`. Two metrics of
/// one case come from the same runs, so they are paired: the median and range of the per-run
/// ratios. Runs of different cases are not paired (they ran at different times), so the ratio
/// of the medians, and as its spread the widest the runs allow (lowest over highest, highest
/// over lowest). `None` if either metric was not measured.
pub fn ratio(a: &Figure, am: Metric, b: &Figure, bm: Metric) -> Option<(f64, f64, f64)> {
    let (x, y) = (a.metric(am)?, b.metric(bm)?);
    if a.id == b.id && x.runs.len() == y.runs.len() {
        let per_run = x.runs.iter().zip(&y.runs).map(|(x, y)| x / y).collect();
        let s = Summary::of(per_run)?;
        return Some((s.median, s.min, s.max));
    }
    Some((x.median / y.median, x.min / y.max, x.max / y.min))
}

/// Runs a throughput case `runs` times; `msgs` messages per run.
pub fn throughput(
    family: Family,
    id: &'static str,
    label: &'static str,
    runs: usize,
    msgs: u64,
    case: &dyn Fn() -> Run,
) -> Figure {
    let mut rates = Vec::with_capacity(runs);
    let mut wakes = Vec::with_capacity(runs);
    let mut kind = Wakeups::Internal;
    for _ in 0..runs {
        let run = case();
        rates.push(msgs as f64 / run.elapsed.as_secs_f64());
        if let Wakeups::Counted(w) = run.wakeups {
            wakes.push(w as f64 / msgs as f64);
        }
        kind = run.wakeups;
    }
    let mut metrics = Vec::new();
    if let Some(rate) = Summary::of(rates) {
        eprintln!("  {label:<52} {:>8} M/s", Metric::Rate.show(rate.median));
        metrics.push((Metric::Rate, rate));
    }
    if wakes.len() == runs {
        if let Some(w) = Summary::of(wakes) {
            metrics.push((Metric::WakeupsPerMsg, w));
        }
    }
    Figure {
        family,
        id,
        label,
        metrics,
        wakeups: kind,
        samples: Vec::new(),
    }
}

/// The `p`th percentile (0..=100) of `sorted` samples; 0 if there are none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs a latency case `runs` times; each run returns its samples in nanoseconds.
pub fn latency(
    id: &'static str,
    label: &'static str,
    runs: usize,
    case: &dyn Fn() -> Vec<u64>,
) -> Figure {
    let mut all: Vec<Vec<u64>> = (0..runs)
        .map(|_| {
            let mut s = case();
            s.sort_unstable();
            s
        })
        .collect();
    let metrics: Vec<(Metric, Summary)> = [
        (Metric::P50, 50.0),
        (Metric::P99, 99.0),
        (Metric::P999, 99.9),
    ]
    .into_iter()
    .filter_map(|(m, p)| {
        Summary::of(all.iter().map(|s| percentile(s, p) as f64).collect()).map(|s| (m, s))
    })
    .collect();
    // The samples of the run with the median p50 (the upper one of an even count).
    all.sort_by_key(|s| percentile(s, 50.0));
    let samples = if all.is_empty() {
        Vec::new()
    } else {
        all.swap_remove(all.len() / 2)
    };
    let figure = Figure {
        family: Family::RoundTrip,
        id,
        label,
        metrics,
        wakeups: Wakeups::Internal,
        samples,
    };
    if let (Some(p50), Some(p99)) = (figure.metric(Metric::P50), figure.metric(Metric::P99)) {
        eprintln!(
            "  {label:<52} p50 {:>8.0} ns  p99 {:>8.0} ns",
            p50.median, p99.median
        );
    }
    figure
}
