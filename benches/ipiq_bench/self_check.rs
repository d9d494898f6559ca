//! The bench's own checks of its CSV and targets-file code on known input, good and bad (the
//! smoke run, part of `make test`, runs them before measuring anything; a failure stops it).

use crate::csv;
use crate::measure::{Family, Figure, Metric, Summary};
use crate::peers::Wakeups;
use crate::targets;

/// Runs every check; the first failure is the error.
pub fn run() -> Result<(), String> {
    csv()?;
    targets_file()
}

/// [`csv::parse`] and [`csv::record`] on known input.
fn csv() -> Result<(), String> {
    let tricky = ["a", "b,c", "say \"hi\"", ""];
    let line = csv::record(&tricky);
    let back = csv::parse(&line)?;
    if back != tricky {
        return Err(format!("csv round trip: {line:?} parsed as {back:?}"));
    }
    for bad in ["\"open", "\"x\"y", "a\"b"] {
        if csv::parse(bad).is_ok() {
            return Err(format!("csv: {bad:?} was accepted"));
        }
    }
    Ok(())
}

/// [`targets::parse`] and [`targets::check`] on known good and bad rows.
fn targets_file() -> Result<(), String> {
    let head = targets::HEADER.join(",");
    let good = format!(
        "# comment\n\n{head}\nstream.ipiq.*:rate,>=,2/3,best(stream.ring:rate stream.x:rate),5,\"a, b\"\n\
         rt.ipiq.*:p99,<=,2,rt.ipiq.*:p50,5,own p50\nstream.a:wakeups,<=,0.05,,5,abs\n"
    );
    let t = targets::parse(&good)?;
    let ok = t.len() == 3
        && (t[0].threshold - 2.0 / 3.0).abs() < 1e-12
        && t[0].baseline.len() == 2
        && t[0].text == "a, b"
        && t[1].op == targets::Op::AtMost
        && t[2].baseline.is_empty();
    if !ok {
        return Err(format!("targets: good input parsed wrongly: {t:?}"));
    }
    let bad = [
        ("figure,op\n", "header"),
        (&format!("{head}\nx:rate,>,1,,5,t\n") as &str, "op"),
        (&format!("{head}\nx:speed,>=,1,,5,t\n"), "unknown metric"),
        (&format!("{head}\nx:rate,>=,fast,,5,t\n"), "threshold"),
        (&format!("{head}\nx:rate,>=,1/0,,5,t\n"), "finite"),
        (
            &format!("{head}\nx:rate,>=,1,best(y:rate,5,t\n"),
            "parenthesis",
        ),
        (&format!("{head}\nx:rate,>=,1,,5\n"), "fields"),
        (&format!("{head}\nx:rate,>=,1,*:rate,5,t\n"), "'*'"),
        (&format!("{head}\na*b:rate,>=,1,,5,t\n"), "'*'"),
        ("", "no header"),
    ];
    for (text, expect) in bad {
        match targets::parse(text) {
            Ok(t) => return Err(format!("targets: {text:?} was accepted as {t:?}")),
            Err(e) if !e.contains(expect) => {
                return Err(format!("targets: {text:?} gave {e:?}, expected {expect:?}"))
            }
            Err(_) => {}
        }
    }
    let ids = ["stream.ring", "stream.ipiq.a"];
    let t = targets::parse(&format!(
        "{head}\nstream.ipiq.*:rate,>=,1,stream.ring:rate,5,t\n"
    ))?;
    targets::check(&t, &ids)?;
    let t = targets::parse(&format!("{head}\nstream.nope:rate,>=,1,,5,t\n"))?;
    if targets::check(&t, &ids).is_ok() {
        return Err("targets: a figure naming no case passed the check".to_string());
    }
    let t = targets::parse(&format!(
        "{head}\nstream.ipiq.*:rate,>=,1,stream.rung:rate,5,t\n"
    ))?;
    if targets::check(&t, &ids).is_ok() {
        return Err("targets: a baseline naming no case passed the check".to_string());
    }
    evaluate()
}

/// [`targets::evaluate`] on made-up figures with known answers.
fn evaluate() -> Result<(), String> {
    let fig = |id: &'static str, metrics: &[(Metric, [f64; 3])]| Figure {
        family: Family::Streaming,
        id,
        label: id,
        metrics: metrics
            .iter()
            .filter_map(|(m, runs)| Some((*m, Summary::of(runs.to_vec())?)))
            .collect(),
        wakeups: Wakeups::Internal,
        samples: Vec::new(),
    };
    let figures = [
        fig("s.ipiq.a", &[(Metric::Rate, [3.0, 4.0, 5.0])]),
        fig("s.ring", &[(Metric::Rate, [8.0, 10.0, 12.0])]),
        fig("s.slow", &[(Metric::Rate, [1.0, 2.0, 3.0])]),
        fig(
            "r.ipiq.a",
            &[
                (Metric::P50, [100.0, 110.0, 120.0]),
                (Metric::P99, [150.0, 300.0, 240.0]),
            ],
        ),
        fig("r.raw1", &[(Metric::P50, [100.0, 100.0, 100.0])]),
        fig("r.raw2", &[(Metric::P50, [50.0, 60.0, 70.0])]),
    ];
    let text = format!(
        "{}\n\
         s.ipiq.*:rate,>=,2/3,best(s.ring:rate s.slow:rate),5,t\n\
         r.ipiq.*:p99,<=,2,r.ipiq.*:p50,5,t\n\
         r.ipiq.a:p50,<=,1.2,best(r.raw1:p50 r.raw2:p50),5,t\n\
         s.ipiq.a:wakeups,<=,0.05,,5,t\n\
         s.ring:rate,>=,9,,5,t\n",
        targets::HEADER.join(",")
    );
    let targets = targets::parse(&text)?;
    let out = targets::evaluate(&targets, &figures);
    let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let got: Vec<_> = out
        .iter()
        .map(|o| (o.baseline.map(|b| b.id), o.value, o.met()))
        .collect();
    type Want = (Option<&'static str>, Option<(f64, f64, f64)>, Option<bool>);
    let want: [Want; 5] = [
        // The best of two rates is the higher; different cases: ratio of medians, widest range.
        (Some("s.ring"), Some((0.4, 0.25, 0.625)), Some(false)),
        // One case's p99 over its p50: per-run ratios 1.5, 2.727.., 2.0.
        (
            Some("r.ipiq.a"),
            Some((2.0, 1.5, 300.0 / 110.0)),
            Some(true),
        ),
        // The best of two latencies is the lower.
        (
            Some("r.raw2"),
            Some((110.0 / 60.0, 100.0 / 70.0, 120.0 / 50.0)),
            Some(false),
        ),
        // A figure not measured: no verdict.
        (None, None, None),
        // Absolute: the figure's own median and range.
        (None, Some((10.0, 8.0, 12.0)), Some(true)),
    ];
    let same = got.len() == want.len()
        && got.iter().zip(&want).all(|(g, w)| {
            g.0 == w.0
                && g.2 == w.2
                && match (g.1, w.1) {
                    (Some(a), Some(b)) => near(a.0, b.0) && near(a.1, b.1) && near(a.2, b.2),
                    (None, None) => true,
                    _ => false,
                }
        });
    if same {
        Ok(())
    } else {
        Err(format!("targets: evaluate gave {got:?}, expected {want:?}"))
    }
}
