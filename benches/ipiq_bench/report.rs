//! The Markdown report (`bench-report.md`) and the tables also printed on stdout. Every figure
//! is printed as its median with its spread over the runs, `median (min–max)`; a ratio of two
//! figures with its spread as [`ratio`] computes it.

use std::fmt::Write as _;

use crate::measure::{ratio, Figure, Metric, Summary};
use crate::peers::Wakeups;
use crate::targets::Outcome;

/// `median (min–max)` of `s`, printed as `metric` is.
pub fn spread(metric: Metric, s: &Summary) -> String {
    format!(
        "{} ({}–{})",
        metric.show(s.median),
        metric.show(s.min),
        metric.show(s.max)
    )
}

/// A ratio with its spread: `0.85x (0.78–0.92)`.
pub fn ratio_text((median, lo, hi): (f64, f64, f64)) -> String {
    format!("{median:.2}x ({lo:.2}–{hi:.2})")
}

fn or_na(s: Option<String>) -> String {
    s.unwrap_or_else(|| "n/a".to_string())
}

fn wakeups(f: &Figure) -> String {
    match (f.wakeups, f.metric(Metric::WakeupsPerMsg)) {
        (Wakeups::Counted(_), Some(s)) => spread(Metric::WakeupsPerMsg, s),
        (Wakeups::Never, _) => "0 (never sleeps)".to_string(),
        _ => "n/a (internal)".to_string(),
    }
}

/// Throughput rows, with a ratio column for each of `against`.
pub fn throughput_table(rows: &[&Figure], against: &[(&str, &Figure)]) -> String {
    let mut t = String::from("| case | M msg/s, median (min–max) | wake-ups / msg |");
    for (name, _) in against {
        let _ = write!(t, " vs {name} |");
    }
    t.push_str("\n|---|---:|---:|");
    for _ in against {
        t.push_str("---:|");
    }
    t.push('\n');
    for r in rows {
        let rate = r.metric(Metric::Rate).map(|s| spread(Metric::Rate, s));
        let _ = write!(t, "| {} | {} | {} |", r.label, or_na(rate), wakeups(r));
        for (_, base) in against {
            let _ = write!(
                t,
                " {} |",
                or_na(ratio(r, Metric::Rate, base, Metric::Rate).map(ratio_text))
            );
        }
        t.push('\n');
    }
    t
}

/// Latency rows; `raw` is the raw ping-pong with the lower median p50, if one ran
/// (`IPIQ_BENCH_CASES` may leave both out).
pub fn latency_table(rows: &[&Figure], raw: Option<&Figure>) -> String {
    let mut t = String::from(
        "| case | p50 (ns) | p99 (ns) | p99.9 (ns) | p50 / best raw p50 | p99 / p50 |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let p = |m: Metric| or_na(r.metric(m).map(|s| spread(m, s)));
        let own = ratio(r, Metric::P99, r, Metric::P50);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} |",
            r.label,
            p(Metric::P50),
            p(Metric::P99),
            p(Metric::P999),
            or_na(
                raw.and_then(|raw| ratio(r, Metric::P50, raw, Metric::P50))
                    .map(ratio_text)
            ),
            or_na(own.map(ratio_text)),
        );
    }
    t
}

/// Every target applied, with its measured value, spread and verdict.
pub fn targets_table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "| issue | target | case | measured, median (spread) | threshold | verdict |\n\
         |---|---|---|---:|---|---|\n",
    );
    for o in outcomes {
        let metric = o.target.figure.metric;
        let measured = match (o.value, &o.target.baseline.is_empty()) {
            (Some((m, lo, hi)), true) => format!(
                "{} ({}–{}) {}",
                metric.show(m),
                metric.show(lo),
                metric.show(hi),
                metric.shown_unit()
            ),
            (Some(v), false) => {
                let base = o.baseline.map_or("?", |b| b.label);
                format!("{} of {base}", ratio_text(v))
            }
            (None, _) => "not measured".to_string(),
        };
        let threshold = if o.target.baseline.is_empty() {
            format!("{} {}", o.target.op.symbol(), o.target.threshold_text)
        } else {
            format!("{} {}x", o.target.op.symbol(), o.target.threshold_text)
        };
        let verdict = match o.met() {
            Some(true) => "**met**",
            Some(false) => "**not met**",
            None => "n/a",
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {measured} | {threshold} | {verdict} |",
            o.target.issue, o.target.text, o.figure.label
        );
    }
    let met = outcomes.iter().filter(|o| o.met() == Some(true)).count();
    let missed = outcomes.iter().filter(|o| o.met() == Some(false)).count();
    let _ = writeln!(
        t,
        "\n{met} met, {missed} not met, {} not measured (verdicts on the median).",
        outcomes.len() - met - missed
    );
    t
}

/// What the report says about its run.
pub struct Run<'a> {
    pub smoke: bool,
    pub cpus: usize,
    pub runs: usize,
    pub wall_s: f64,
    pub load_before: &'a str,
    pub load_after: &'a str,
    pub stream_msgs: u64,
    pub round_trips: usize,
    pub cores: usize,
    pub per_core: u64,
    /// The targets file, as the report names it.
    pub targets_file: &'a str,
}

/// The tables the report holds.
pub struct Tables {
    pub streaming: String,
    pub latency: String,
    pub all_to_all: String,
    pub targets: String,
}

/// The whole Markdown report.
pub fn document(run: &Run, t: &Tables) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# ipiq host benchmarks{}\n",
        if run.smoke {
            " (smoke run: tiny counts, figures meaningless)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        r,
        "Host: {} CPUs (`available_parallelism`); every case {} times, each figure the median \
         with the spread over the runs as (min–max); all peers measured in this same run. Wall \
         time {:.1} s. Load average (1/5/15 min) before: {}, after: {}. Spinning waiters \
         give the CPU away now and then: the rings and the streaming targets every 16 spins; \
         ipiq's host `relax` (its own waits, and the round-trip targets between their looks) \
         every 128 while the simulated cores fit the host's CPUs, as here, every 16 otherwise; \
         the raw ping-pong every 16 or every 1024, and round trips are compared with the \
         better of the two. The \
         figures as data: `bench-figures.csv` (medians and spreads), `bench-runs.csv` (every \
         run), `bench-latency.csv`, `bench-targets.csv`, `bench-meta.csv`, beside this file.\n",
        run.cpus, run.runs, run.wall_s, run.load_before, run.load_after
    );
    let _ = writeln!(
        r,
        "ipiq modes: *target idles* is the kernel's idle loop (`HostCore::idle_until`: drain on an \
         IPI, otherwise sleep until the next IPI or tick, an IPI being an unpark); *target polls* \
         is a busy core calling `Ipiq::process()` at every safe point. `send_passive` queues \
         without a fence or IPI until the FIFO is a quarter full. FIFOs have the default 256 \
         slots; every bounded peer has 256 slots too. The fenced rings are the limit the wake-up \
         protocol allows: the bare ring plus one SeqCst fence and one read of the target's \
         polling flag per message (what `send` must pay) or per batch of 64 (`send_batch`).\n"
    );
    let _ = writeln!(
        r,
        "## Streaming, 1 sender -> 1 target ({} messages)\n\n{}\n![streaming](bench-streaming.svg)\n",
        run.stream_msgs, t.streaming
    );
    let _ = writeln!(
        r,
        "Wake-ups: ipiq counts IPIs (`Stats::ipis`) per message; Mutex<VecDeque> and llist count \
         the unparks they issue; the fenced rings count the fenced reads that found the target \
         not polling (wake-ups they would have to send); the bare ring never sleeps; crossbeam \
         and mpsc wake internally and do not expose a count.\n"
    );
    let _ = writeln!(
        r,
        "## Round-trip latency ({} round trips)\n\n{}\n![latency](bench-latency.svg)\n",
        run.round_trips, t.latency
    );
    let _ = writeln!(
        r,
        "## All-to-all, {} cores ({} messages per core)\n\n{}\n![all-to-all](bench-all-to-all.svg)\n",
        run.cores, run.per_core, t.all_to_all
    );
    let _ = writeln!(
        r,
        "## Targets\n\nFrom `{}`: each a figure of this run, alone or as a ratio to a baseline \
         of this same run. A ratio of two cases is the ratio of their medians, its spread the \
         widest the runs allow (lowest over highest, highest over lowest); a ratio of two \
         figures of one case (p99 over p50) is the median and range of the per-run ratios.\n\n{}",
        run.targets_file, t.targets
    );
    let _ = writeln!(
        r,
        "Reading these figures: on a 2-CPU host shared with other work, the two threads of a case \
         sometimes get a CPU each and sometimes share one (then every handoff is a yield), so a \
         figure can swing several-fold between runs and between invocations (the spreads show \
         it); the patient raw ping-pong shows the two regimes most clearly (p50 about 200 ns \
         with a CPU each, tens of microseconds sharing one). Compare cases within one report."
    );
    r
}
