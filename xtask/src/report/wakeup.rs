//! The wake-up ping-pong (`wakeup: kernel=…` lines and their table) and the spread of the
//! headline ratios across runs (ipiq-bench's headline lines).

use super::*;

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
