//! The report generator: the applications' machine-readable result lines parsed into typed
//! records once, and every table rendered from those records as a Markdown `<<<report TITLE`
//! ... `>>>report` block (the blocks that `results/report.md` gathers).
//!
//! Result lines, one module each: `bill: app=A kernel=ipiq|stock smp=N case=C unit=U n=UNITS
//! icr=.. eoi=.. timer=.. halt=.. other=.. exits=..` (bill.rs: hermit_apps::bill, every app on
//! both kernels); `wakeup: kernel=… smp=… primitive=…` and ipiq-bench's headline ratios
//! (wakeup.rs); `tlb-stale: kernel=…` and `tlb-stale-rate: …` (tlb.rs); `rayon-result …` and
//! the kernel's interrupt counters (rayon.rs). gather.rs copies every `<<<report` block of a
//! set of logs into one Markdown file (`results/report.md` with the host report).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::util;

mod bill;
mod gather;
mod rayon;
mod tlb;
mod wakeup;

pub use bill::*;
pub use gather::*;
pub use rayon::*;
pub use tlb::*;
pub use wakeup::*;

/// The `key=value` words of a result line (words without `=` are skipped).
pub fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// A field of a result line as a number; an error naming the field and the line otherwise.
fn number(f: &BTreeMap<&str, &str>, key: &str, line: &str) -> std::result::Result<f64, String> {
    f.get(key)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("no number {key}= in '{line}'"))
}

fn text(f: &BTreeMap<&str, &str>, key: &str, line: &str) -> std::result::Result<String, String> {
    f.get(key)
        .map(|v| v.to_string())
        .ok_or_else(|| format!("no {key}= in '{line}'"))
}

/// A log's lines that start with `prefix`, the prefix removed.
pub fn lines_after<'a>(log: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> {
    log.lines().filter_map(move |l| l.strip_prefix(prefix))
}

/// One `<<<report TITLE` block: the lines between the markers.
pub struct Block {
    pub title: String,
    pub lines: Vec<String>,
}

impl Block {
    pub fn new(title: impl Into<String>) -> Block {
        Block {
            title: title.into(),
            lines: Vec::new(),
        }
    }

    pub fn line(&mut self, line: impl Into<String>) {
        self.lines.push(line.into());
    }

    /// A Markdown table row from its cells.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        let cells: Vec<&str> = cells.iter().map(AsRef::as_ref).collect();
        self.lines.push(format!("| {} |", cells.join(" | ")));
    }

    pub fn render(&self) -> String {
        let mut s = format!("<<<report {}\n", self.title);
        for l in &self.lines {
            let _ = writeln!(s, "{l}");
        }
        s.push_str(">>>report\n");
        s
    }
}

/// The median of a list (the mean of the middle two for an even count); None when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// C's `%.{prec}g`: `prec` significant digits, trailing zeros dropped, an exponent below 1e-4 or
/// from 10^prec on.
pub fn fmt_g(v: f64, prec: usize) -> String {
    let prec = prec.max(1);
    if v == 0.0 {
        return "0".into();
    }
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{:.*e}", prec - 1, v);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: &str| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s.to_string()
        }
    };
    if exp < -4 || exp >= prec as i32 {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mantissa), exp.abs())
    } else {
        let decimals = (prec as i32 - 1 - exp).max(0) as usize;
        trim(&format!("{v:.decimals$}"))
    }
}

/// A log read for a report; a clear error (exit 2) when the file is missing.
pub fn read(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Err(Error::usage(format!(
            "report: {} does not exist (no boot wrote it)",
            path.display()
        )));
    }
    Ok(util::read_log(path))
}

// ---------------------------------------------------------------------------------------------
// Numbers as the logs print them.

/// A figure from a log: its value and the text it was printed as (tables show that text).
#[derive(Clone, Debug, PartialEq)]
pub struct Num {
    pub value: f64,
    pub text: String,
}

impl Num {
    pub fn parse(text: &str) -> Option<Num> {
        let value = text.parse::<f64>().ok().filter(|v| v.is_finite())?;
        Some(Num {
            value,
            text: text.to_string(),
        })
    }

    /// A computed figure, printed as awk prints a number: an integer as one, otherwise `%.6g`.
    pub fn computed(value: f64) -> Num {
        let text = if value.fract() == 0.0 && value.abs() < 1e15 {
            format!("{value:.0}")
        } else {
            fmt_g(value, 6)
        };
        Num { value, text }
    }
}

/// The median of printed figures: the middle one as printed, or the mean of the middle two.
pub fn median_num(values: &[Num]) -> Option<Num> {
    let mut v: Vec<&Num> = values.iter().collect();
    v.sort_by(|a, b| a.value.total_cmp(&b.value));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2].clone()),
        _ => Some(Num::computed((v[n / 2 - 1].value + v[n / 2].value) / 2.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g_format_matches_c() {
        for (v, want) in [
            (0.0226, "0.0226"),
            (1.2, "1.2"),
            (1.234, "1.23"),
            (3.0949, "3.09"),
            (0.005994, "0.00599"),
            (1234.0, "1.23e+03"),
            (0.00001234, "1.23e-05"),
            (999.6, "1e+03"),
            (100.0, "100"),
            (0.0, "0"),
        ] {
            assert_eq!(fmt_g(v, 3), want, "{v}");
        }
    }

    #[test]
    fn wakeup_and_shootdown_tables() {
        let w = |kernel: &str, rate: &str, ipis: &str| {
            format!("wakeup: kernel={kernel} smp=2 primitive=park/unpark rounds=100 rt_per_s={rate} p50_us=10.0 p99_us=20.0 ipis={ipis} messages=1\n[0][Wakeup]: 3\n")
        };
        let boots = [
            WakeupBoot::parse("patched", &w("ipiq", "3000", "1")),
            WakeupBoot::parse("stock-probe", &w("stock", "1000", "200")),
        ]
        .map(|b| b.unwrap_or_else(|e| panic!("{e}")));
        let (t, rows) = wakeup_table(&boots, &[2], 1);
        assert_eq!(rows.len(), 1);
        assert!(t.contains("| 2 | park | 100 | 3000 | 1000 | 3x | 10.0 / 20.0 | 10.0 / 20.0 | 1x | 0.010 | 2.000 | 3 | 3 | no (p50 1x) |"), "{t}");
        assert!(t.contains("- 2 vCPUs park: no (p50 1x)"));

        let rate = |s: &str| {
            ShootdownRate::parse(&format!("kernel=x smp=2 others=none swaps=10 swaps_per_s={s} stale=0 checked=5 ipis_per_swap=2.0")).unwrap_or_else(|e| panic!("{e}"))
        };
        let results = [
            (2, true, rate("40")),
            (2, true, rate("60")),
            (2, false, rate("100")),
        ];
        let t = shootdown_table(&results, &[2], 10, 2, "m");
        assert!(t.contains("| 2 | none | 50 (40-60) | 100 (100-100) | 0.5x | 2 | 2.0 | 0 / 10 | 0 / 5 | 0 / 0 |"), "{t}");
        assert!(t.contains("ipiq/stock 0.5x (target >= 0.35x, 0 stale, no reader killed): met"));
        assert!(ShootdownRate::parse("others=sideways").is_err());
    }
}
