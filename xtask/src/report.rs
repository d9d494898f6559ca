//! The report generator: the applications' machine-readable result lines parsed into typed
//! records once, and every table rendered from those records as a Markdown `<<<report TITLE`
//! ... `>>>report` block (the blocks that `results/report.md` gathers).
//!
//! Result lines: `bill: app=A kernel=ipiq|stock smp=N case=C unit=U n=UNITS icr=.. eoi=..
//! timer=.. halt=.. other=.. exits=..` (hermit_apps::bill, every app on both kernels).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::util;

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
// The hypervisor bill.

/// Which kernel printed a bill line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BillKernel {
    Ipiq,
    Stock,
}

/// One `bill:` line: the events that cost a VM exit, over `n` units of an experiment case.
#[derive(Clone, Debug, PartialEq)]
pub struct Bill {
    pub app: String,
    pub kernel: BillKernel,
    pub smp: u32,
    pub case: String,
    pub unit: String,
    pub n: f64,
    pub icr: f64,
    pub eoi: f64,
    pub timer: f64,
    pub halt: f64,
    pub exits: f64,
}

impl Bill {
    /// Parses the part after `bill: `.
    pub fn parse(line: &str) -> std::result::Result<Bill, String> {
        let f = fields(line);
        let kernel = match f.get("kernel").copied() {
            Some("ipiq") => BillKernel::Ipiq,
            Some("stock") => BillKernel::Stock,
            other => {
                return Err(format!(
                    "kernel={} in '{line}' (ipiq or stock)",
                    other.unwrap_or("")
                ))
            }
        };
        let n = number(&f, "n", line)?;
        if n <= 0.0 {
            return Err(format!("n= must be positive in '{line}'"));
        }
        Ok(Bill {
            app: text(&f, "app", line)?,
            kernel,
            smp: number(&f, "smp", line)? as u32,
            case: text(&f, "case", line)?,
            unit: text(&f, "unit", line)?,
            n,
            icr: number(&f, "icr", line)?,
            eoi: number(&f, "eoi", line)?,
            timer: number(&f, "timer", line)?,
            halt: number(&f, "halt", line)?,
            exits: number(&f, "exits", line)?,
        })
    }

    /// Events per unit, as the table shows them: exits, ICR, EOI, timer, halt (each rounded to
    /// four decimals before the medians, so repeated boots compare as printed).
    fn per_unit(&self) -> [f64; 5] {
        [self.exits, self.icr, self.eoi, self.timer, self.halt]
            .map(|c| (c / self.n * 1e4).round() / 1e4)
    }
}

/// Every bill line of a log.
pub fn bills(log: &str) -> std::result::Result<Vec<Bill>, String> {
    lines_after(log, "bill: ").map(Bill::parse).collect()
}

/// A bill figure: no decimals from 100, two from 1, three below.
fn fmt_bill(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The bill table and the problems found (a log without bill lines, a row without one kernel);
/// any problem fails the report.
pub struct Rendered {
    pub text: String,
    pub problems: Vec<String>,
}

/// The hypervisor bill side by side: per experiment, vCPU count and case, the events per unit on
/// each kernel (exits, then ICR / EOI / timer / halt writes), the ipiq/stock ratio of exits, and
/// issue 12's targets where one applies (rayon at 4 and 8 vCPUs: at most 0.7x stock's; a wake-up
/// hand-off: at most stock's). A figure seen in several logs (repeated boots) is their median.
pub fn bill_table(logs: &[(PathBuf, String)]) -> Rendered {
    type Key = (String, u32, String, String);
    let mut order: Vec<Key> = Vec::new();
    let mut values: BTreeMap<(Key, BillKernel), Vec<[f64; 5]>> = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, log) in logs {
        match bills(log) {
            Err(e) => problems.push(format!("{}: bad bill line: {e}", path.display())),
            Ok(b) if b.is_empty() => problems.push(format!("no bill line in {}", path.display())),
            Ok(b) => {
                for bill in b {
                    let key = (
                        bill.app.clone(),
                        bill.smp,
                        bill.case.clone(),
                        bill.unit.clone(),
                    );
                    if !order.contains(&key) {
                        order.push(key.clone());
                    }
                    values
                        .entry((key, bill.kernel))
                        .or_default()
                        .push(bill.per_unit());
                }
            }
        }
    }
    let medians = |key: &Key, kernel| -> Option<[f64; 5]> {
        let runs = values.get(&(key.clone(), kernel))?;
        let mut out = [0.0; 5];
        for (i, o) in out.iter_mut().enumerate() {
            *o = median(&runs.iter().map(|r| r[i]).collect::<Vec<_>>())?;
        }
        Some(out)
    };
    let mut b = Block::new("Hypervisor bill: events that cost a VM exit under KVM without APIC virtualization, ipiq kernel against stock");
    b.line("Counted in both kernels by the same probe (kernel/event-probe-patches) and, on the ipiq kernel, ipiq's own ICR");
    b.line("writes: ICR writes (IPIs), EOI writes (one per interrupt taken), timer programming, halts. Per unit: a wake-up");
    b.line("hand-off, a page swap under a reader (shootdown), one parallel rayon run. Split: ICR / EOI / timer / halt.");
    b.line("| experiment | vCPUs | case | unit | ipiq exits | ipiq split | stock exits | stock split | ipiq / stock | target |");
    b.line("|---|---:|---|---|---:|---|---:|---|---:|---|");
    for key in &order {
        let (app, smp, case, unit) = key;
        let ipiq = medians(key, BillKernel::Ipiq);
        let stock = medians(key, BillKernel::Stock);
        let cells = |m: Option<[f64; 5]>| match m {
            None => ["n/a".to_string(), "n/a".to_string()],
            Some(m) => [
                fmt_bill(m[0]),
                m[1..]
                    .iter()
                    .map(|&v| fmt_bill(v))
                    .collect::<Vec<_>>()
                    .join(" / "),
            ],
        };
        let (ratio, target) = match (ipiq, stock) {
            (Some(a), Some(b)) => {
                let (a, b) = (a[0], b[0]);
                let ratio = if b > 0.0 {
                    format!("{}x", fmt_g(a / b, 3))
                } else if a > 0.0 {
                    "inf".into()
                } else {
                    "1x".into()
                };
                let limit = match (app.as_str(), smp) {
                    ("rayon", 4 | 8) => Some("0.7"),
                    ("wakeup", _) => Some("1"),
                    _ => None,
                };
                let target = limit.map_or(String::new(), |l| {
                    let met = a <= l.parse::<f64>().unwrap_or(0.0) * b;
                    format!("{} (<= {l}x)", if met { "met" } else { "not met" })
                });
                (ratio, target)
            }
            _ => {
                problems.push(format!(
                    "{app} {smp} vCPUs {case}: a kernel has no bill line"
                ));
                ("n/a".into(), String::new())
            }
        };
        let [ie, is] = cells(ipiq);
        let [se, ss] = cells(stock);
        b.row(&[
            app.as_str(),
            &smp.to_string(),
            case,
            unit,
            &ie,
            &is,
            &se,
            &ss,
            &ratio,
            &target,
        ]);
    }
    Rendered {
        text: b.render(),
        problems,
    }
}

/// Reads the logs and prints the bill table; fails (exit 1) on any problem, after the table.
pub fn print_bill(paths: &[PathBuf]) -> Result<String> {
    if paths.is_empty() {
        return Err(Error::usage("report bill: name at least one log"));
    }
    let logs = paths
        .iter()
        .map(|p| Ok((p.clone(), read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let r = bill_table(&logs);
    print!("{}", r.text);
    finish(r)
}

/// A rendered report's text if it had no problems; otherwise each problem on stderr and exit 1.
pub fn finish(r: Rendered) -> Result<String> {
    if r.problems.is_empty() {
        return Ok(r.text);
    }
    for p in &r.problems {
        eprintln!("error: {p}");
    }
    Err(Error::exit(1))
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

// ---------------------------------------------------------------------------------------------
// The wake-up ping-pong.

/// The two blocking primitives the wakeup app hands the turn through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Primitive {
    Condvar,
    Park,
}

impl Primitive {
    pub const ALL: [Primitive; 2] = [Primitive::Condvar, Primitive::Park];

    pub fn name(self) -> &'static str {
        match self {
            Primitive::Condvar => "condvar",
            Primitive::Park => "park",
        }
    }
}

/// One `wakeup: kernel=… smp=… primitive=… rounds=… rt_per_s=… p50_us=… p99_us=… ipis=…` line.
#[derive(Clone, Debug, PartialEq)]
pub struct Wakeup {
    pub kernel: String,
    pub smp: u32,
    pub primitive: Primitive,
    pub rounds: String,
    pub rate: Num,
    pub p50: Num,
    pub p99: Num,
    pub ipis: Num,
}

impl Wakeup {
    /// Parses the part after `wakeup: ` (a line starting `kernel=`).
    pub fn parse(line: &str) -> std::result::Result<Wakeup, String> {
        let f = fields(line);
        let num = |key: &str| {
            f.get(key)
                .and_then(|v| Num::parse(v))
                .ok_or_else(|| format!("no number {key}= in '{line}'"))
        };
        let primitive = match f.get("primitive").copied() {
            Some("Mutex+Condvar") => Primitive::Condvar,
            Some("park/unpark") => Primitive::Park,
            other => {
                return Err(format!(
                    "primitive={} in '{line}' (Mutex+Condvar or park/unpark)",
                    other.unwrap_or("")
                ))
            }
        };
        Ok(Wakeup {
            kernel: text(&f, "kernel", line)?,
            smp: number(&f, "smp", line)? as u32,
            primitive,
            rounds: text(&f, "rounds", line)?,
            rate: num("rt_per_s")?,
            p50: num("p50_us")?,
            p99: num("p99_us")?,
            ipis: num("ipis")?,
        })
    }
}

/// A wakeup boot's result lines and the wake-up IPIs (vector 121) its cores received over the
/// whole boot (the kernel's `[core][Wakeup]: n` interrupt counts at shutdown).
#[derive(Clone, Debug)]
pub struct WakeupBoot {
    /// `patched` or `stock-probe`.
    pub kernel: String,
    pub results: Vec<Wakeup>,
    pub received_121: u64,
}

impl WakeupBoot {
    pub fn parse(kernel: &str, log: &str) -> std::result::Result<WakeupBoot, String> {
        let results = lines_after(log, "wakeup: ")
            .filter(|l| l.starts_with("kernel="))
            .map(Wakeup::parse)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let received_121 = log
            .lines()
            .filter(|l| l.contains("][Wakeup]: "))
            .filter_map(|l| l.rsplit_once(": ").and_then(|(_, n)| n.parse::<u64>().ok()))
            .sum();
        Ok(WakeupBoot {
            kernel: kernel.to_string(),
            results,
            received_121,
        })
    }
}

/// One row of the wake-up table: a vCPU count and primitive with both kernels' medians.
#[derive(Clone, Debug)]
pub struct WakeupRow {
    pub smp: u32,
    pub primitive: Primitive,
    /// ipiq / stock round trips per second and stock p50 / ipiq p50, as printed (`%.3g`).
    pub ratio: String,
    pub speed_up: String,
}

#[derive(Default)]
struct WakeupFigures {
    rate: Vec<Num>,
    p50: Vec<Num>,
    p99: Vec<Num>,
    ipis: Vec<Num>,
    w121: Vec<Num>,
    rounds: String,
}

/// The wake-up table (ipiq kernel against stock, side by side, with the target) from
/// the boots that passed, rows in the order of `smps`; each figure the median over the boots.
pub fn wakeup_table(boots: &[WakeupBoot], smps: &[u32], repeats: u32) -> (String, Vec<WakeupRow>) {
    let mut figures: BTreeMap<(u32, Primitive, bool), WakeupFigures> = BTreeMap::new();
    for boot in boots {
        let patched = boot.kernel == "patched";
        for w in &boot.results {
            let f = figures.entry((w.smp, w.primitive, patched)).or_default();
            f.rate.push(w.rate.clone());
            f.p50.push(w.p50.clone());
            f.p99.push(w.p99.clone());
            f.ipis.push(w.ipis.clone());
            f.w121.push(Num::computed(boot.received_121 as f64));
            f.rounds = w.rounds.clone();
        }
    }
    let mut b =
        Block::new("Cross-core wake-up ping-pong: ipiq kernel against stock (QEMU TCG, x2APIC)");
    b.line("Two threads pinned to cores 0 and 1 hand a turn back and forth through blocking std primitives;");
    b.line("every hand-off wakes a task blocked on the other core. Rates and latencies are emulated time");
    b.line("(compare the two kernels, not absolute values). IPIs sent during the measured round trips:");
    b.line("ipiq's own (vector 122) on the ipiq kernel, wake-up (121) + TLB-flush (112) on stock.");
    b.line("121 rcvd: wake-up IPIs received over the whole boot (kernel's interrupt counts at shutdown).");
    b.line(format!("Each figure is the median of {repeats} boot(s) per kernel and vCPU count, the kernels alternating."));
    b.line("p50 speed-up: stock p50 / ipiq p50 (the median round trip is the figure host preemption disturbs least).");
    b.line("| vCPUs | primitive | round trips | ipiq rt/s | stock rt/s | ipiq/stock rt/s | ipiq p50/p99 us | stock p50/p99 us | p50 speed-up | ipiq IPIs/rt | stock IPIs/rt | ipiq 121 rcvd | stock 121 rcvd | target met |");
    b.line("|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---|");
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    for &smp in smps {
        for p in Primitive::ALL {
            let (Some(a), Some(s)) = (figures.get(&(smp, p, true)), figures.get(&(smp, p, false)))
            else {
                continue;
            };
            let m = |v: &Vec<Num>| median_num(v).unwrap_or_else(|| Num::computed(0.0));
            let (ra, rb, pa, pb, ia, ib) = (
                m(&a.rate),
                m(&s.rate),
                m(&a.p50),
                m(&s.p50),
                m(&a.ipis),
                m(&s.ipis),
            );
            let n = a.rounds.parse::<f64>().unwrap_or(f64::NAN);
            let ratio = ra.value / rb.value;
            let speed = pb.value / pa.value;
            let fewer = ia.value < ib.value;
            let mut why = Vec::new();
            if ratio < 1.2 {
                why.push(format!("rt/s {}x", fmt_g(ratio, 3)));
            }
            if speed < 1.2 {
                why.push(format!("p50 {}x", fmt_g(speed, 3)));
            }
            if !fewer {
                why.push("IPIs not fewer".to_string());
            }
            let met = if why.is_empty() {
                "yes".to_string()
            } else {
                format!("no ({})", why.join(", "))
            };
            let row = WakeupRow {
                smp,
                primitive: p,
                ratio: fmt_g(ratio, 3),
                speed_up: fmt_g(speed, 3),
            };
            b.row(&[
                smp.to_string(),
                p.name().to_string(),
                a.rounds.clone(),
                ra.text.clone(),
                rb.text.clone(),
                format!("{}x", row.ratio),
                format!("{} / {}", pa.text, m(&a.p99).text),
                format!("{} / {}", pb.text, m(&s.p99).text),
                format!("{}x", row.speed_up),
                format!("{:.3}", ia.value / n),
                format!("{:.3}", ib.value / n),
                m(&a.w121).text,
                m(&s.w121).text,
                met.clone(),
            ]);
            verdicts.push(format!("- {smp} vCPUs {}: {met}", p.name()));
            rows.push(row);
        }
    }
    b.line("Target (issue 5): ipiq kernel at least 1.2x faster than stock (round trips/s and p50), with fewer IPIs.");
    for v in verdicts {
        b.line(v);
    }
    (b.render(), rows)
}

// ---------------------------------------------------------------------------------------------
// The spread of the headline ratios across runs.

/// The headline ipiq-bench ratios of one `round-trip,statistics` boot: ipiq p50 / raw ICR p50
/// (as printed), and statistics off against on for streaming and the round trip (in percent).
#[derive(Clone, Debug, PartialEq)]
pub struct BenchHeadline {
    pub round_trip: String,
    pub stats_streaming_pct: f64,
    pub stats_round_trip_pct: f64,
}

impl BenchHeadline {
    pub fn parse(log: &str) -> Option<BenchHeadline> {
        let round_trip = lines_after(log, "ipiq p50 / raw p50 = ")
            .next()
            .map(|rest| {
                rest.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect::<String>()
            })?;
        let stats = lines_after(log, "off against on: streaming ").next()?;
        let (streaming, rest) = stats.split_once("%, round trip p50 ")?;
        let (round_trip_pct, _) = rest.split_once('%')?;
        Some(BenchHeadline {
            round_trip: Some(round_trip).filter(|s| !s.is_empty())?,
            stats_streaming_pct: streaming.parse().ok()?,
            stats_round_trip_pct: round_trip_pct.parse().ok()?,
        })
    }
}

/// Named figures, one value per run, names in first-seen order.
#[derive(Default)]
pub struct Spread {
    names: Vec<String>,
    values: BTreeMap<String, Vec<Num>>,
}

impl Spread {
    pub fn add(&mut self, name: impl Into<String>, text: &str) {
        let name = name.into();
        let value = Num::parse(text).unwrap_or(Num {
            value: 0.0,
            text: text.to_string(),
        });
        if !self.values.contains_key(&name) {
            self.names.push(name.clone());
        }
        self.values.entry(name).or_default().push(value);
    }

    /// The table: each figure's runs, their median (`%.3g`) and spread ((max - min) / median).
    pub fn table(&self, title: &str, intro: &[String], columns: &[String]) -> String {
        let mut b = Block::new(title);
        for l in intro {
            b.line(l.clone());
        }
        b.line(format!(
            "| figure |{} median | spread |",
            columns
                .iter()
                .map(|c| format!(" {c} |"))
                .collect::<String>()
        ));
        b.line(format!("|---|{}---:|---:|", "---:|".repeat(columns.len())));
        for name in &self.names {
            let runs = &self.values[name];
            let cells: String = runs.iter().map(|v| format!(" {} |", v.text)).collect();
            let med = median_num(runs).map_or(0.0, |m| m.value);
            let (lo, hi) = runs
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v.value), hi.max(v.value))
                });
            let spread = if med != 0.0 {
                (hi - lo) / med * 100.0
            } else {
                0.0
            };
            b.line(format!(
                "| {name} |{cells} {} | {spread:.1}% |",
                fmt_g(med, 3)
            ));
        }
        b.render()
    }
}

// ---------------------------------------------------------------------------------------------
// The stale-TLB experiment.

/// One `tlb-stale: kernel=K smp=N swaps=S readers=R checked=C stale=X stale_swaps=Y
/// max_stale_per_swap=M swap_flushes=F munmap_flushes=U late_reads=L ...` line. The figures stay
/// as printed: some are `-` where they do not apply (late reads on the ipiq kernel); a field
/// the line lacks stays empty in the table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlbStale {
    pub kernel: String,
    pub smp: String,
    pub swaps: String,
    pub checked: String,
    pub stale: String,
    pub stale_swaps: String,
    pub max_stale_per_swap: String,
    pub swap_flushes: String,
    pub munmap_flushes: String,
    pub late_reads: String,
}

impl TlbStale {
    /// Parses the part after `tlb-stale: `.
    pub fn parse(line: &str) -> TlbStale {
        let f = fields(line);
        let t = |key: &str| f.get(key).map(|v| v.to_string()).unwrap_or_default();
        TlbStale {
            kernel: t("kernel"),
            smp: t("smp"),
            swaps: t("swaps"),
            checked: t("checked"),
            stale: t("stale"),
            stale_swaps: t("stale_swaps"),
            max_stale_per_swap: t("max_stale_per_swap"),
            swap_flushes: t("swap_flushes"),
            munmap_flushes: t("munmap_flushes"),
            late_reads: t("late_reads"),
        }
    }
}

/// The stale-TLB table: one row per boot with a result line, with the APIC mode it ran under.
pub fn tlb_stale_table(results: &[(TlbStale, crate::checks::ApicMode)]) -> String {
    let mut b = Block::new("Stale TLB reads after a remap: ipiq kernel against stock");
    b.line("Readers on the other cores spin reading page a while core 0 swaps the frames behind a and b");
    b.line("(sys_ipiq_swap_pages: two maps over present entries). A read counts if it happened after a swap");
    b.line("call returned (epoch published) and before the next began; stale = it returned the old frame.");
    b.line("Flushes: ipiq shootdowns (ipiq kernel) or TLB-flush IPIs sent, vector 112 (stock).");
    b.line("After munmap (stock only): reads of a page other cores were reading, completed after munmap");
    b.line("returned (readers ran until each made 1000 or 100 ms passed): the page is unmapped, so each went through a stale");
    b.line("TLB entry (on the ipiq kernel munmap shoots it down and such a read would fault: not attempted).");
    b.line("| kernel | vCPUs | APIC | swaps | checked reads | stale reads | swaps followed by a stale read | most after one swap | flushes in swaps | flushes in munmap | reads after munmap |");
    b.line("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (t, mode) in results {
        b.row(&[
            t.kernel.as_str(),
            &t.smp,
            &mode.to_string(),
            &t.swaps,
            &t.checked,
            &t.stale,
            &t.stale_swaps,
            &t.max_stale_per_swap,
            &t.swap_flushes,
            &t.munmap_flushes,
            &t.late_reads,
        ]);
    }
    b.render()
}

// ---------------------------------------------------------------------------------------------
// The shootdown's cost.

/// Whether the cores between the writer and the reader idle or spin (none at 2 vCPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Others {
    None,
    Idle,
    Busy,
}

impl Others {
    pub const ALL: [Others; 3] = [Others::None, Others::Idle, Others::Busy];

    pub fn name(self) -> &'static str {
        match self {
            Others::None => "none",
            Others::Idle => "idle",
            Others::Busy => "busy",
        }
    }
}

/// One `tlb-stale-rate: kernel=… smp=… others=… swaps=… swaps_per_s=… stale=… checked=…
/// ipis_per_swap=… readers_killed=…` line.
#[derive(Clone, Debug, PartialEq)]
pub struct ShootdownRate {
    pub others: Others,
    pub swaps_per_s: Num,
    pub ipis_per_swap: Num,
    pub stale: u64,
    pub checked: u64,
    pub readers_killed: u64,
}

impl ShootdownRate {
    /// Parses the part after `tlb-stale-rate: `.
    pub fn parse(line: &str) -> std::result::Result<ShootdownRate, String> {
        let f = fields(line);
        let num = |key: &str| {
            f.get(key)
                .and_then(|v| Num::parse(v))
                .ok_or_else(|| format!("no number {key}= in '{line}'"))
        };
        let count = |key: &str| {
            f.get(key)
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("no count {key}= in '{line}'"))
        };
        let others = match f.get("others").copied() {
            Some("none") => Others::None,
            Some("idle") => Others::Idle,
            Some("busy") => Others::Busy,
            other => {
                return Err(format!(
                    "others={} in '{line}' (none, idle or busy)",
                    other.unwrap_or("")
                ))
            }
        };
        Ok(ShootdownRate {
            others,
            swaps_per_s: num("swaps_per_s")?,
            ipis_per_swap: num("ipis_per_swap")?,
            stale: count("stale")?,
            checked: count("checked")?,
            readers_killed: match f.get("readers_killed") {
                None => 0,
                Some(_) => count("readers_killed")?,
            },
        })
    }
}

#[derive(Default)]
struct ShootdownFigures {
    rate: Vec<Num>,
    ipis: Vec<Num>,
    stale: u64,
    checked: u64,
    killed: u64,
}

/// The shootdown table: per vCPU count and other cores' state, median swaps per second (min-max)
/// on each kernel, their ratio, IPIs per swap, stale reads and killed readers summed over the
/// boots, and issue 10's targets (4 vCPUs, idle: at least 0.25x stock; 2 vCPUs: at least 0.35x;
/// no stale read and no reader killed on the ipiq kernel). `results`: (vCPUs, ipiq kernel?, line).
pub fn shootdown_table(
    results: &[(u32, bool, ShootdownRate)],
    smps: &[u32],
    swaps: u32,
    repeats: u32,
    model: &str,
) -> String {
    let mut figures: BTreeMap<(u32, Others, bool), ShootdownFigures> = BTreeMap::new();
    for (smp, ipiq, r) in results {
        let f = figures.entry((*smp, r.others, *ipiq)).or_default();
        f.rate.push(r.swaps_per_s.clone());
        f.ipis.push(r.ipis_per_swap.clone());
        f.stale += r.stale;
        f.checked += r.checked;
        f.killed += r.readers_killed;
    }
    let mut b = Block::new(format!(
        "TLB shootdown cost: ipiq kernel against stock (QEMU TCG, {model})"
    ));
    b.line(format!("tlb-stale rate: {swaps} swaps (each remaps two pages: two shootdowns) back to back on core 0 under a"));
    b.line("reader on the last core; the cores in between idle, then spin. Swaps per second are emulated time:");
    b.line(format!("median of {repeats} boots per kernel (min-max), the kernels alternating. IPIs per swap: every IPI"));
    b.line("the kernel sent meanwhile (stock: one per other core per remap, fire-and-forget).");
    b.line("Readers killed: readers that took a page fault during the swaps (the kernel ends such a task).");
    b.line("| vCPUs | other cores | ipiq swaps/s | stock swaps/s | ipiq/stock | ipiq IPIs/swap | stock IPIs/swap | ipiq stale / checked | stock stale / checked | readers killed ipiq / stock |");
    b.line("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    let range = |v: &[Num]| -> (Num, String, String) {
        let mut sorted: Vec<&Num> = v.iter().collect();
        sorted.sort_by(|a, b| a.value.total_cmp(&b.value));
        let lo = sorted.first().map(|n| n.text.clone()).unwrap_or_default();
        let hi = sorted.last().map(|n| n.text.clone()).unwrap_or_default();
        (median_num(v).unwrap_or_else(|| Num::computed(0.0)), lo, hi)
    };
    for &smp in smps {
        for others in Others::ALL {
            let (Some(a), Some(s)) = (
                figures.get(&(smp, others, true)),
                figures.get(&(smp, others, false)),
            ) else {
                continue;
            };
            let (ra, ra_lo, ra_hi) = range(&a.rate);
            let (rb, rb_lo, rb_hi) = range(&s.rate);
            let ia = range(&a.ipis).0;
            let ib = range(&s.ipis).0;
            let ratio = fmt_g(ra.value / rb.value, 3);
            b.line(format!(
                "| {smp} | {} | {} ({ra_lo}-{ra_hi}) | {} ({rb_lo}-{rb_hi}) | {ratio}x | {} | {} | {} / {} | {} / {} | {} / {} |",
                others.name(),
                ra.text,
                rb.text,
                ia.text,
                ib.text,
                a.stale,
                a.checked,
                s.stale,
                s.checked,
                a.killed,
                s.killed
            ));
            let want = match (smp, others) {
                (4, Others::Idle) => Some("0.25"),
                (2, Others::None) => Some("0.35"),
                _ => None,
            };
            if let Some(w) = want {
                let r: f64 = ratio.parse().unwrap_or(0.0);
                let met = r >= w.parse::<f64>().unwrap_or(f64::INFINITY) && a.stale + a.killed == 0;
                verdicts.push(format!(
                    "- {smp} vCPUs, other cores {}: ipiq/stock {ratio}x (target >= {w}x, 0 stale, no reader killed): {}",
                    others.name(),
                    if met { "met" } else { "not met" }
                ));
            }
        }
    }
    b.line("Targets (issue 10):");
    for v in verdicts {
        b.line(v);
    }
    b.render()
}

// ---------------------------------------------------------------------------------------------
// rayon-work, patched kernel against stock.

/// One `rayon-result workload=W kernel=K vcpus=N threads=T seq_ms=.. par_ms=.. messages=..
/// ipis=.. avoided=.. check=..` line; figures as printed, `-` where the line lacks one.
#[derive(Clone, Debug, PartialEq)]
pub struct RayonResult {
    pub kernel: String,
    pub vcpus: String,
    pub workload: String,
    pub seq_ms: String,
    pub par_ms: String,
    pub messages: String,
    pub ipis: String,
    pub avoided: String,
    pub check: String,
}

impl RayonResult {
    /// Parses a whole `rayon-result ...` line.
    pub fn parse(line: &str) -> RayonResult {
        let f = fields(line);
        let t =
            |key: &str, default: &str| f.get(key).map_or(default.to_string(), |v| v.to_string());
        RayonResult {
            kernel: t("kernel", "?"),
            vcpus: t("vcpus", "?"),
            workload: t("workload", "?"),
            seq_ms: t("seq_ms", "-"),
            par_ms: t("par_ms", "-"),
            messages: t("messages", "-"),
            ipis: t("ipis", "-"),
            avoided: t("avoided", "-"),
            check: t("check", "-"),
        }
    }
}

/// A kernel and vCPU count from a log named `...-(patched|stock)-N.log`.
fn kernel_vcpus_of(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?;
    let name = name.strip_suffix(".log").unwrap_or(name);
    let (rest, n) = name.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ["patched", "stock"]
        .into_iter()
        .find(|k| rest.ends_with(&format!("-{k}")))
        .map(|k| (k.to_string(), n.to_string()))
}

/// Milliseconds with at most one decimal as integer tenths ("1241.0" -> 12410).
fn tenths(s: &str) -> Option<i64> {
    match s.split_once('.') {
        Some((i, d))
            if !i.is_empty()
                && i.bytes().all(|b| b.is_ascii_digit())
                && d.len() == 1
                && d.as_bytes()[0].is_ascii_digit() =>
        {
            Some(i.parse::<i64>().ok()? * 10 + i64::from(d.as_bytes()[0] - b'0'))
        }
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            Some(s.parse::<i64>().ok()? * 10)
        }
        _ => None,
    }
}

/// a / b with two decimals, rounded; `-` when either is not a figure.
fn rayon_ratio(a: &str, b: &str) -> String {
    match (tenths(a), tenths(b)) {
        (Some(a), Some(b)) if b > 0 => {
            let q = (a * 1000 / b + 5) / 10;
            format!("{}.{:02}", q / 100, q % 100)
        }
        _ => "-".into(),
    }
}

/// The rayon-work table from its logs: per vCPU count and workload, both kernels' sequential and
/// parallel times, speedups and ipiq's counters, then the IPIs taken over the whole boot (the
/// kernel's interrupt counters printed at shutdown). A log without result lines shows as
/// "no result".
pub fn rayon_table(logs: &[(PathBuf, String)]) -> String {
    let mut results: BTreeMap<(String, String, String), RayonResult> = BTreeMap::new();
    let mut vcpus: Vec<String> = Vec::new();
    let mut failed_runs: Vec<(String, String)> = Vec::new();
    let mut irqs: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut irq_seen: Vec<(String, String)> = Vec::new();
    let see = |vcpus: &mut Vec<String>, v: &str| {
        if !vcpus.iter().any(|u| u == v) {
            vcpus.push(v.to_string());
        }
    };
    for (path, log) in logs {
        let from_name = kernel_vcpus_of(path);
        let (mut cur_k, mut cur_v) = from_name.clone().unwrap_or_default();
        let (mut found, mut in_irqs) = (false, false);
        for line in log.lines() {
            if line == "Number of interrupts" {
                in_irqs = true;
                continue;
            }
            if in_irqs {
                if let Some((name, count)) = interrupt_count(line) {
                    *irqs
                        .entry((cur_k.clone(), cur_v.clone(), name.to_string()))
                        .or_default() += count;
                    if !irq_seen.contains(&(cur_k.clone(), cur_v.clone())) {
                        irq_seen.push((cur_k.clone(), cur_v.clone()));
                    }
                    continue;
                }
            }
            if !line.starts_with("rayon-result ") {
                continue;
            }
            let r = RayonResult::parse(line);
            cur_k = r.kernel.clone();
            cur_v = r.vcpus.clone();
            see(&mut vcpus, &r.vcpus);
            results.insert((r.kernel.clone(), r.vcpus.clone(), r.workload.clone()), r);
            found = true;
        }
        if let (false, Some((k, v))) = (found, from_name) {
            see(&mut vcpus, &v);
            failed_runs.push((k, v));
        }
    }
    // Numeric order; anything else after the numbers.
    vcpus.sort_by_key(|v| v.parse::<u64>().map_or((1, 0), |n| (0, n)));

    let cell = |k: &str, v: &str, w: &str, pick: fn(&RayonResult) -> &String| -> String {
        match results.get(&(k.to_string(), v.to_string(), w.to_string())) {
            Some(r) => pick(r).clone(),
            None if failed_runs.contains(&(k.to_string(), v.to_string())) => "no result".into(),
            None => "-".into(),
        }
    };
    let mut b = Block::new("rayon-work: patched (ipiq) against stock kernel, per vCPU count");
    b.line("ms are emulated time (QEMU TCG); speedup = sequential / parallel in the same boot;");
    b.line("par. stock/patched > 1 means the patched kernel ran the parallel part faster;");
    b.line("IPIs, messages and avoided are ipiq's counters during the parallel part (stock has none: n/a).");
    b.line("");
    b.line("| vCPUs | workload | patched seq ms | patched par ms | patched speedup | stock seq ms | stock par ms | stock speedup | par. stock/patched | patched messages | patched IPIs | patched avoided | stock IPIs | check |");
    b.line("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for v in &vcpus {
        for w in ["sort", "stencil"] {
            let ps = cell("patched", v, w, |r| &r.seq_ms);
            let pp = cell("patched", v, w, |r| &r.par_ms);
            let ss = cell("stock", v, w, |r| &r.seq_ms);
            let sp = cell("stock", v, w, |r| &r.par_ms);
            let checks = format!(
                "patched {}, stock {}",
                cell("patched", v, w, |r| &r.check),
                cell("stock", v, w, |r| &r.check)
            );
            b.row(&[
                v.clone(),
                w.to_string(),
                ps.clone(),
                pp.clone(),
                rayon_ratio(&ps, &pp),
                ss.clone(),
                sp.clone(),
                rayon_ratio(&ss, &sp),
                rayon_ratio(&sp, &pp),
                cell("patched", v, w, |r| &r.messages),
                cell("patched", v, w, |r| &r.ipis),
                cell("patched", v, w, |r| &r.avoided),
                cell("stock", v, w, |r| &r.ipis),
                checks,
            ]);
        }
    }
    b.line("");
    b.line("IPIs taken during the whole boot (boot, sequential and parallel parts), from the kernel's own");
    b.line("interrupt counters printed at shutdown, summed over cores (IPIs that arrive while one is pending");
    b.line("merge into one): ipiq = ipiq's vector 122 (the patched kernel sends its scheduler wake-ups there),");
    b.line("wakeup = Hermit's vector 121, TLB = Hermit's TLB-flush vector 112.");
    b.line("");
    b.line("| vCPUs | patched ipiq | patched wakeup | patched TLB | patched total | stock wakeup | stock TLB | stock total |");
    b.line("|---|---|---|---|---|---|---|---|");
    let seen = |k: &str, v: &str| irq_seen.contains(&(k.to_string(), v.to_string()));
    let irq = |k: &str, v: &str, name: &str| -> String {
        if !seen(k, v) {
            return "-".into();
        }
        irqs.get(&(k.to_string(), v.to_string(), name.to_string()))
            .copied()
            .unwrap_or(0)
            .to_string()
    };
    let total = |k: &str, v: &str| -> String {
        if !seen(k, v) {
            return "-".into();
        }
        ["ipiq", "Wakeup", "TLB flush"]
            .iter()
            .map(|n| {
                irqs.get(&(k.to_string(), v.to_string(), n.to_string()))
                    .copied()
                    .unwrap_or(0)
            })
            .sum::<u64>()
            .to_string()
    };
    for v in &vcpus {
        b.row(&[
            v.clone(),
            irq("patched", v, "ipiq"),
            irq("patched", v, "Wakeup"),
            irq("patched", v, "TLB flush"),
            total("patched", v),
            irq("stock", v, "Wakeup"),
            irq("stock", v, "TLB flush"),
            total("stock", v),
        ]);
    }
    b.render()
}

/// `[core][name]: count` from the kernel's interrupt counters.
fn interrupt_count(line: &str) -> Option<(&str, u64)> {
    let rest = line.strip_prefix('[')?;
    let (core, rest) = rest.split_once("][")?;
    if core.is_empty() || !core.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (name, count) = rest.split_once("]: ")?;
    if name.is_empty()
        || name.contains(']')
        || count.is_empty()
        || !count.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((name, count.parse().ok()?))
}

// ---------------------------------------------------------------------------------------------
// Gathering the report blocks of logs into one Markdown file.

/// The report blocks of one log, each as (title, lines); an error naming the log and line for a
/// log with no block, a block opened inside another, an end without a start, or one unclosed.
pub fn blocks(path: &Path, log: &str) -> std::result::Result<Vec<(String, Vec<String>)>, String> {
    let file = path.display();
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut open: Option<usize> = None;
    for (i, line) in log.lines().enumerate() {
        let n = i + 1;
        if let Some(title) = line.strip_prefix("<<<report") {
            if let Some(start) = open {
                return Err(format!(
                    "{file}:{n}: block opened inside the block of line {start}"
                ));
            }
            open = Some(n);
            out.push((
                title.trim_start_matches([' ', '\t']).to_string(),
                Vec::new(),
            ));
        } else if line.starts_with(">>>report") {
            if open.is_none() {
                return Err(format!("{file}:{n}: >>>report without <<<report"));
            }
            open = None;
        } else if open.is_some() {
            if let Some(last) = out.last_mut() {
                last.1.push(line.to_string());
            }
        }
    }
    if let Some(start) = open {
        return Err(format!("{file}:{start}: block not closed (no >>>report)"));
    }
    if out.is_empty() {
        return Err(format!("{file}: no <<<report block"));
    }
    Ok(out)
}

/// The heading of a log's section: app, kernel and vCPUs for `<app>-<kernel>-<vcpus>.log`.
fn heading(path: &Path) -> String {
    let file = util::file_name(path);
    match (kernel_vcpus_of(path), file.strip_suffix(".log")) {
        (Some((k, v)), Some(stem)) => {
            let app = &stem[..stem.len() - k.len() - v.len() - 2];
            if app.is_empty() {
                file
            } else {
                format!("{app}, {k} kernel, {v} vCPUs ({file})")
            }
        }
        _ => file,
    }
}

/// The gathered report's header: date, host CPU and cores, QEMU.
pub struct Host {
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub qemu: String,
}

impl Host {
    pub fn here() -> Host {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| "unknown".into());
        let qemu = std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "not found".into());
        Host {
            date,
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            qemu,
        }
    }
}

/// Every report block of the logs, in order, under a heading naming its log, each block under a
/// `### Title` line, after a header naming the host. Errors: one per bad or missing log.
pub fn gather(host: &Host, logs: &[PathBuf]) -> std::result::Result<String, Vec<String>> {
    let mut s = String::new();
    s.push_str("# Guest benchmark report\n\n");
    let _ = writeln!(s, "- date: {}", host.date);
    let _ = writeln!(s, "- host CPU: {}, {} cores", host.cpu, host.cores);
    let _ = writeln!(s, "- QEMU: {}", host.qemu);
    s.push_str(
        "- times are emulated time under QEMU TCG (no KVM here): compare them only within one\n",
    );
    s.push_str("  run and one machine; counts (messages, IPIs) are exact\n");
    let mut errors = Vec::new();
    for path in logs {
        if !path.is_file() {
            errors.push(format!("{}: no such readable log", path.display()));
            continue;
        }
        match blocks(path, &util::read_log(path)) {
            Err(e) => errors.push(e),
            Ok(blocks) => {
                let _ = write!(s, "\n## {}\n", heading(path));
                for (title, lines) in blocks {
                    let title = if title.is_empty() {
                        "(untitled)".to_string()
                    } else {
                        title
                    };
                    let _ = write!(s, "\n### {title}\n\n");
                    for l in lines {
                        let _ = writeln!(s, "{l}");
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(errors)
    }
}

/// Writes the gathered report to `out`; on any bad log, each error and no file (exit 1).
pub fn write_gathered(out: &Path, logs: &[PathBuf]) -> Result<()> {
    if logs.is_empty() {
        return Err(Error::usage("report gather: name at least one log"));
    }
    match gather(&Host::here(), logs) {
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            Err(Error::failed(format!(
                "report not written ({})",
                out.display()
            )))
        }
        Ok(text) => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                util::create_dir(dir)?;
            }
            util::write(out, text)?;
            println!("==> report: {} ({} logs)", out.display(), logs.len());
            Ok(())
        }
    }
}

/// `make bench`'s one file: the host report (RESULTS/bench-report.md, written by the bench
/// binary, its SVG plots beside it), then every guest report block gathered from the logs
/// (RESULTS/guest-report.md), into RESULTS/report.md.
pub fn bench_report(results: &Path, logs: &[PathBuf]) -> Result<()> {
    let host = results.join("bench-report.md");
    if !host.is_file() {
        return Err(Error::failed(format!(
            "{} is missing (run the host benchmark first)",
            host.display()
        )));
    }
    let guest = results.join("guest-report.md");
    write_gathered(&guest, logs)?;
    let deeper = |text: String| -> String {
        text.lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("#{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect()
    };
    let mut s = String::from("# ipiq benchmark report\n\n");
    s.push_str("Host benchmarks first (threads as cores, against peers in the same run), then every table\n");
    s.push_str(
        "the guest benchmarks printed under QEMU (counts exact; times emulated by TCG, compare\n",
    );
    s.push_str("within a table). Plots: the SVG files beside this report.\n\n");
    s.push_str(&deeper(util::read_log(&host)));
    s.push('\n');
    s.push_str(&deeper(util::read_log(&guest)));
    let out = results.join("report.md");
    util::write(&out, &s)?;
    println!(
        "==> report: {} ({} lines; plots beside it)",
        out.display(),
        s.lines().count()
    );
    Ok(())
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

    fn log(lines: &[&str]) -> String {
        let mut s = String::from("APIC in use: x2APIC\n");
        for l in lines {
            s.push_str(l);
            s.push('\n');
        }
        s
    }

    #[test]
    fn bill_table_medians_ratios_and_targets() {
        let logs = vec![
            (
                PathBuf::from("a.log"),
                log(&[
                    "bill: app=wakeup kernel=ipiq smp=2 case=park unit=hand-off n=1000 icr=41 eoi=41 timer=42 halt=41 other=0 exits=165",
                    "bill: app=rayon kernel=ipiq smp=4 case=sort unit=run n=1 icr=7 eoi=7 timer=6 halt=6 other=0 exits=26",
                ]),
            ),
            (
                PathBuf::from("b.log"),
                log(&[
                    "bill: app=wakeup kernel=stock smp=2 case=park unit=hand-off n=1000 icr=3 eoi=3 timer=999 halt=3 other=0 exits=1008",
                    "bill: app=rayon kernel=stock smp=4 case=sort unit=run n=1 icr=12 eoi=12 timer=11 halt=10 other=0 exits=45",
                ]),
            ),
        ];
        let r = bill_table(&logs);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.text.contains("| wakeup | 2 | park | hand-off | 0.165 | 0.041 / 0.041 / 0.042 / 0.041 | 1.01 | 0.003 / 0.003 / 0.999 / 0.003 | 0.164x | met (<= 1x) |"), "{}", r.text);
        assert!(r.text.contains("| rayon | 4 | sort | run | 26.00 | 7.00 / 7.00 / 6.00 / 6.00 | 45.00 | 12.00 / 12.00 / 11.00 / 10.00 | 0.578x | met (<= 0.7x) |"), "{}", r.text);
        assert!(r.text.starts_with("<<<report Hypervisor bill"));
        assert!(r.text.ends_with(">>>report\n"));
    }

    #[test]
    fn bill_table_names_what_is_missing() {
        let logs = vec![
            (PathBuf::from("none.log"), log(&["wakeup: ok"])),
            (
                PathBuf::from("one.log"),
                log(&["bill: app=shootdown kernel=ipiq smp=2 case=none unit=swap n=100 icr=199 eoi=198 timer=0 halt=0 other=0 exits=397"]),
            ),
            (
                PathBuf::from("bad.log"),
                log(&["bill: app=shootdown kernel=ipiq smp=2 case=none unit=swap n=0 icr=1"]),
            ),
        ];
        let r = bill_table(&logs);
        assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
        assert!(r.problems[0].contains("no bill line in none.log"));
        assert!(r.problems[1].contains("bad.log: bad bill line"));
        assert!(r.problems[2].contains("shootdown 2 vCPUs none: a kernel has no bill line"));
        assert!(r
            .text
            .contains("| 3.97 | 1.99 / 1.98 / 0.000 / 0.000 | n/a | n/a | n/a |  |"));
    }

    fn host() -> Host {
        Host {
            date: "2026-12-07 12:00 UTC".into(),
            cpu: "Test CPU".into(),
            cores: 2,
            qemu: "QEMU emulator version 10.0.2".into(),
        }
    }

    /// The gatherer on made-up logs: blocks in order under the log's heading, nothing outside
    /// blocks, no carriage returns, the header; and a clear failure naming the log for a log
    /// with no block, an unclosed block, a block opened inside another, a stray end line, or a
    /// missing log (no report written).
    #[test]
    fn gather_copies_blocks_and_refuses_bad_logs() {
        let dir = util::Scratch::new("gather-test").unwrap_or_else(|e| panic!("{e:?}"));
        let d = &dir.0;
        let write = |name: &str, text: &str| {
            std::fs::write(d.join(name), text).unwrap_or_else(|e| panic!("{e}"));
            d.join(name)
        };
        let demo = write(
            "demo-patched-4.log",
            "boot\r\n<<<report First\r\n| a |\r\n|---|\r\n| 1 |\r\n>>>report\r\nnoise\r\n<<<report Second\r\nfree text\r\n>>>report\r\n",
        );
        let other = write("other.log", "<<<report Third\n| b |\n>>>report\n");
        let report = gather(&host(), &[demo.clone(), other]).unwrap_or_else(|e| panic!("{e:?}"));
        let expected = "## demo, patched kernel, 4 vCPUs (demo-patched-4.log)\n\n### First\n\n| a |\n|---|\n| 1 |\n\n### Second\n\nfree text\n\n## other.log\n\n### Third\n\n| b |\n";
        assert!(report.contains(expected), "{report}");
        assert!(!report.contains("noise") && !report.contains("boot\n"));
        assert!(!report.contains('\r'));
        for field in [
            "- date: ",
            "- host CPU: Test CPU, 2 cores",
            "- QEMU: ",
            "TCG",
        ] {
            assert!(report.contains(field), "header lacks {field}");
        }

        let bad = [
            ("none.log", "nothing here\n", "no <<<report block"),
            (
                "open.log",
                "<<<report Open\n| x |\n",
                ":1: block not closed",
            ),
            (
                "nested.log",
                "<<<report A\n<<<report B\n>>>report\n",
                ":2: block opened inside the block of line 1",
            ),
            (
                "stray.log",
                "x\n>>>report\n",
                ":2: >>>report without <<<report",
            ),
        ];
        for (name, text, why) in bad {
            let log = write(name, text);
            let errors = gather(&host(), &[demo.clone(), log])
                .err()
                .unwrap_or_default();
            assert_eq!(errors.len(), 1, "{name}");
            assert!(
                errors[0].contains(name) && errors[0].contains(why),
                "{name}: {}",
                errors[0]
            );
        }
        let out = d.join("bad.md");
        let missing = d.join("missing.log");
        assert!(write_gathered(&out, &[demo, missing]).is_err_and(|e| e.status == 1));
        assert!(!out.exists(), "a report was written anyway");
    }

    #[test]
    fn rayon_table_from_made_up_logs() {
        let patched = "rayon-work: kernel patched, vCPUs 2, rayon threads 2, pool global\nrayon-result workload=sort kernel=patched vcpus=2 threads=2 seq_ms=13.2 par_ms=17.8 messages=2 ipis=2 avoided=0 check=ok\nNumber of interrupts\n[0][ipiq]: 2\n[1][ipiq]: 4\n[1][Wakeup]: 1\n";
        let logs = vec![
            (PathBuf::from("rayon-patched-2.log"), patched.to_string()),
            (PathBuf::from("rayon-stock-2.log"), "panic\n".to_string()),
        ];
        let t = rayon_table(&logs);
        assert!(t.contains("| 2 | sort | 13.2 | 17.8 | 0.74 | no result | no result | - | - | 2 | 2 | 0 | no result | patched ok, stock no result |"), "{t}");
        assert!(t.contains("| 2 | 6 | 1 | 0 | 7 | - | - | - |"), "{t}");
        assert_eq!(rayon_ratio("1241.0", "100"), "12.41");
        assert_eq!(rayon_ratio("1.25", "1"), "-");
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
