//! The targets file (`benches/targets.csv`): which figure must reach what, against which
//! baseline measured in the same run, and which issue asks for it.
//!
//! Columns: `figure,op,threshold,baseline,issue,target`.
//! - `figure`: `ID:METRIC`; a `*` at the end of the id matches every case whose id starts with
//!   what precedes it (one target row per match, in report order).
//! - `op`: `>=` or `<=`.
//! - `threshold`: a number or a fraction (`2/3`).
//! - `baseline`: empty for an absolute threshold; else `ID:METRIC` (the figure is divided by it),
//!   or `best(ID:METRIC ID:METRIC ...)`: the best median of those (highest rate, lowest
//!   latency). A `*` in a baseline stands for what the figure's `*` matched.
//! - `issue`: where the target comes from; `target`: what it says, in words.
//!
//! Lines starting with `#` and blank lines are skipped; the first other line is the header.

use crate::csv;
use crate::measure::{ratio, Figure, Metric, Summary};

pub const HEADER: [&str; 6] = ["figure", "op", "threshold", "baseline", "issue", "target"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    AtLeast,
    AtMost,
}

impl Op {
    pub fn symbol(self) -> &'static str {
        match self {
            Op::AtLeast => ">=",
            Op::AtMost => "<=",
        }
    }
}

/// `ID:METRIC`, the id possibly ending in `*` (figure) or holding one (baseline).
#[derive(Clone, Debug)]
pub struct Ref {
    pub id: String,
    pub metric: Metric,
}

/// One row of the targets file.
#[derive(Clone, Debug)]
pub struct Target {
    /// Line number in the file (for messages).
    pub line: usize,
    pub figure: Ref,
    pub op: Op,
    pub threshold: f64,
    /// The threshold as written (`2/3`).
    pub threshold_text: String,
    /// Empty: absolute; one: a ratio to it; several: a ratio to the best of them.
    pub baseline: Vec<Ref>,
    pub issue: String,
    pub text: String,
}

fn parse_ref(s: &str) -> Result<Ref, String> {
    let (id, metric) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not ID:METRIC"))?;
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(format!("{s:?}: bad id"));
    }
    let metric = Metric::parse(metric).ok_or_else(|| {
        let known: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        format!(
            "{s:?}: unknown metric {metric:?} (known: {})",
            known.join(", ")
        )
    })?;
    Ok(Ref {
        id: id.to_string(),
        metric,
    })
}

fn parse_threshold(s: &str) -> Result<f64, String> {
    let value = match s.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (
                a.trim().parse().map_err(|_| format!("threshold {s:?}"))?,
                b.trim().parse().map_err(|_| format!("threshold {s:?}"))?,
            );
            a / b
        }
        None => s
            .parse()
            .map_err(|_| format!("threshold {s:?} is not a number"))?,
    };
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("threshold {s:?} is not a finite number >= 0"))
    }
}

fn parse_baseline(s: &str) -> Result<Vec<Ref>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(inner) = s.strip_prefix("best(") {
        let inner = inner
            .strip_suffix(')')
            .ok_or_else(|| format!("baseline {s:?}: no closing parenthesis"))?;
        let refs = inner
            .split_whitespace()
            .map(parse_ref)
            .collect::<Result<Vec<_>, _>>()?;
        if refs.is_empty() {
            return Err(format!("baseline {s:?} names no figure"));
        }
        return Ok(refs);
    }
    Ok(vec![parse_ref(s)?])
}

fn parse_row(line: usize, fields: &[String]) -> Result<Target, String> {
    if fields.len() != HEADER.len() {
        return Err(format!(
            "{} fields, expected {}",
            fields.len(),
            HEADER.len()
        ));
    }
    let figure = parse_ref(fields[0].trim())?;
    if figure
        .id
        .strip_suffix('*')
        .unwrap_or(&figure.id)
        .contains('*')
    {
        return Err(format!("{:?}: '*' only at the end of the id", fields[0]));
    }
    let op = match fields[1].trim() {
        ">=" => Op::AtLeast,
        "<=" => Op::AtMost,
        other => return Err(format!("op {other:?} is neither >= nor <=")),
    };
    let threshold_text = fields[2].trim().to_string();
    let threshold = parse_threshold(&threshold_text)?;
    let baseline = parse_baseline(&fields[3])?;
    if baseline.iter().any(|b| b.id.contains('*')) && !figure.id.ends_with('*') {
        return Err("a '*' in the baseline needs one in the figure".to_string());
    }
    Ok(Target {
        line,
        figure,
        op,
        threshold,
        threshold_text,
        baseline,
        issue: fields[4].trim().to_string(),
        text: fields[5].trim().to_string(),
    })
}

/// Parses the targets file's text; errors name the line.
pub fn parse(text: &str) -> Result<Vec<Target>, String> {
    let mut header = false;
    let mut targets = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = csv::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if !header {
            if fields != HEADER {
                return Err(format!(
                    "line {}: header is {fields:?}, expected {}",
                    i + 1,
                    HEADER.join(",")
                ));
            }
            header = true;
            continue;
        }
        targets.push(parse_row(i + 1, &fields).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if !header {
        return Err("no header line".to_string());
    }
    Ok(targets)
}

/// The ids `pattern` matches among `ids`, with what its `*` matched.
fn matches<'a>(pattern: &str, ids: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    match pattern.strip_suffix('*') {
        Some(prefix) => ids
            .iter()
            .filter_map(|id| id.strip_prefix(prefix).map(|rest| (*id, rest)))
            .collect(),
        None => ids
            .iter()
            .filter(|id| **id == pattern)
            .map(|id| (*id, ""))
            .collect(),
    }
}

/// Checks every target against the case ids before anything is measured: each figure pattern
/// matches a case, each baseline names one.
pub fn check(targets: &[Target], ids: &[&str]) -> Result<(), String> {
    for t in targets {
        let found = matches(&t.figure.id, ids);
        if found.is_empty() {
            return Err(format!("line {}: no case {:?}", t.line, t.figure.id));
        }
        for (_, star) in &found {
            for b in &t.baseline {
                let id = b.id.replace('*', star);
                if !ids.contains(&id.as_str()) {
                    return Err(format!("line {}: baseline {id:?} is no case", t.line));
                }
            }
        }
    }
    Ok(())
}

/// One target applied to one figure.
pub struct Outcome<'a> {
    pub target: &'a Target,
    pub figure: &'a Figure,
    /// The baseline as measured (`id` of the one used), if any.
    pub baseline: Option<&'a Figure>,
    /// Median and spread (lowest, highest) of the figure or of its ratio to the baseline;
    /// `None` if a figure was not measured (a peer that exposes no wake-up count).
    pub value: Option<(f64, f64, f64)>,
}

impl Outcome<'_> {
    /// Met, judged on the median.
    pub fn met(&self) -> Option<bool> {
        self.value.map(|(median, _, _)| match self.target.op {
            Op::AtLeast => median >= self.target.threshold,
            Op::AtMost => median <= self.target.threshold,
        })
    }
}

fn by_id<'a>(figures: &'a [Figure], id: &str) -> Option<&'a Figure> {
    figures.iter().find(|f| f.id == id)
}

/// Applies every target to the measured figures.
pub fn evaluate<'a>(targets: &'a [Target], figures: &'a [Figure]) -> Vec<Outcome<'a>> {
    let ids: Vec<&str> = figures.iter().map(|f| f.id).collect();
    let mut out = Vec::new();
    for t in targets {
        for (id, star) in matches(&t.figure.id, &ids) {
            let Some(figure) = by_id(figures, id) else {
                continue;
            };
            let value = figure.metric(t.figure.metric);
            let baselines: Vec<(&Figure, &Summary, Metric)> = t
                .baseline
                .iter()
                .filter_map(|b| {
                    let f = by_id(figures, &b.id.replace('*', star))?;
                    Some((f, f.metric(b.metric)?, b.metric))
                })
                .collect();
            let best = baselines.iter().copied().reduce(|a, b| {
                let higher = t.baseline[0].metric.higher_is_better();
                if (b.1.median > a.1.median) == higher {
                    b
                } else {
                    a
                }
            });
            let (baseline, value) = match (t.baseline.is_empty(), value, best) {
                (true, Some(v), _) => (None, Some((v.median, v.min, v.max))),
                (false, Some(_), Some((f, _, m))) if baselines.len() == t.baseline.len() => {
                    (Some(f), ratio(figure, t.figure.metric, f, m))
                }
                (false, _, best) => (best.map(|b| b.0), None),
                (true, None, _) => (None, None),
            };
            out.push(Outcome {
                target: t,
                figure,
                baseline,
                value,
            });
        }
    }
    out
}
