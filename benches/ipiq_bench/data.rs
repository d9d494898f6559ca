//! The figures as data: CSV files beside the report, one table each.
//!
//! - `bench-meta.csv` (`key,value`): counts, host CPUs, load averages, wall time.
//! - `bench-figures.csv`: one row per figure and metric, its median, min and max over the runs.
//! - `bench-runs.csv`: every run's value of every figure (the data behind the medians).
//! - `bench-latency.csv`: the latency distribution of each round-trip case's median run,
//!   at the percentiles the plot draws.
//! - `bench-targets.csv`: every target applied, with its measured median and spread (a ratio to
//!   the baseline where it has one) and its verdict.

use std::fs;
use std::path::Path;

use crate::csv::record;
use crate::measure::{percentile, Figure};
use crate::targets::Outcome;

/// Percentiles written to `bench-latency.csv`.
const PERCENTILES: [f64; 12] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0,
];

fn write(dir: &Path, name: &str, header: &[&str], rows: Vec<Vec<String>>) -> Result<(), String> {
    let mut text = record(header);
    text.push('\n');
    for row in rows {
        text.push_str(&record(&row));
        text.push('\n');
    }
    let path = dir.join(name);
    fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn num(v: f64) -> String {
    format!("{v}")
}

/// Writes every data file into `dir`.
pub fn write_all(
    dir: &Path,
    meta: &[(&str, String)],
    figures: &[Figure],
    outcomes: &[Outcome],
) -> Result<(), String> {
    write(
        dir,
        "bench-meta.csv",
        &["key", "value"],
        meta.iter()
            .map(|(k, v)| vec![k.to_string(), v.clone()])
            .collect(),
    )?;
    let mut summary = Vec::new();
    let mut runs = Vec::new();
    for f in figures {
        for (m, s) in &f.metrics {
            summary.push(vec![
                f.family.name().to_string(),
                f.id.to_string(),
                f.label.to_string(),
                m.name().to_string(),
                m.unit().to_string(),
                num(s.median),
                num(s.min),
                num(s.max),
                s.runs.len().to_string(),
            ]);
            for (i, v) in s.runs.iter().enumerate() {
                runs.push(vec![
                    f.id.to_string(),
                    m.name().to_string(),
                    m.unit().to_string(),
                    (i + 1).to_string(),
                    num(*v),
                ]);
            }
        }
    }
    write(
        dir,
        "bench-figures.csv",
        &[
            "family", "figure", "label", "metric", "unit", "median", "min", "max", "runs",
        ],
        summary,
    )?;
    write(
        dir,
        "bench-runs.csv",
        &["figure", "metric", "unit", "run", "value"],
        runs,
    )?;
    let latency = figures
        .iter()
        .filter(|f| !f.samples.is_empty())
        .flat_map(|f| {
            PERCENTILES.iter().map(move |&p| {
                vec![
                    f.id.to_string(),
                    num(p),
                    percentile(&f.samples, p).to_string(),
                ]
            })
        })
        .collect();
    write(
        dir,
        "bench-latency.csv",
        &["figure", "percentile", "ns"],
        latency,
    )?;
    let targets = outcomes
        .iter()
        .map(|o| {
            let t = o.target;
            let (median, min, max) = o.value.map_or(
                (String::new(), String::new(), String::new()),
                |(a, b, c)| (num(a), num(b), num(c)),
            );
            let baseline = o.baseline.map_or("", |b| b.id);
            let unit = if t.baseline.is_empty() {
                t.figure.metric.unit()
            } else {
                "x baseline"
            };
            let met = match o.met() {
                Some(true) => "met",
                Some(false) => "not met",
                None => "not measured",
            };
            vec![
                t.issue.clone(),
                t.text.clone(),
                o.figure.id.to_string(),
                t.figure.metric.name().to_string(),
                t.op.symbol().to_string(),
                num(t.threshold),
                baseline.to_string(),
                median,
                min,
                max,
                unit.to_string(),
                met.to_string(),
            ]
        })
        .collect();
    write(
        dir,
        "bench-targets.csv",
        &[
            "issue",
            "target",
            "figure",
            "metric",
            "op",
            "threshold",
            "baseline",
            "median",
            "min",
            "max",
            "unit",
            "verdict",
        ],
        targets,
    )
}
