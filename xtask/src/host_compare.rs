//! `cargo xtask host-compare`: the host benchmark (`benches/ipiq_bench`) at two git revisions,
//! run alternately on the same machine, one table of both.
//!
//! Each side is a scratch copy of its revision (`git archive REV | tar -x`, or for `worktree` a
//! tree of the working tree as it is, uncommitted and untracked files included, written through
//! a temporary index so the real one is untouched) under `target/host-compare/`, built with
//! `cargo bench --features std --bench ipiq_bench --no-run` into a target directory of its own
//! that later invocations reuse (the dependencies stay built). The executable's path is the
//! `executable` field of cargo's `compiler-artifact` message. The copies are removed at the end.
//!
//! A round runs both binaries, before then after, the order swapped every other round. It
//! starts only on a quiet machine (1-minute load average below `--max-load`, at most 2
//! runnable tasks in `/proc/loadavg`): figures on this project's 2-core machine move 2-40x with
//! other load. Each run writes its own directory (`before-1`, `after-1`, ...); its
//! `bench-figures.csv` is read into typed rows once, and the table is rendered from those rows.
//! A ratio is taken within one run, against that run's own baseline, and only then summarised
//! over the rounds.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::error::{Context, Error, Result};
use crate::report::median;
use crate::util;

/// The literal that names the working tree as it is instead of a revision.
pub const WORKTREE: &str = "worktree";

/// A comparison as the command line asked for it.
#[derive(Debug)]
pub struct Compare {
    pub before: String,
    pub after: String,
    pub rounds: u32,
    /// Case-id prefixes (`IPIQ_BENCH_CASES`); empty: every case.
    pub cases: Vec<String>,
    /// A round starts only below this 1-minute load average (and at most 2 runnable tasks).
    pub max_load: f64,
    /// Seconds from the start, builds included, after which no round starts.
    pub deadline_s: u64,
    /// The table and every run's directory (`before-1`, `after-1`, ...).
    pub out: PathBuf,
}

impl Compare {
    /// Reads the options; a bad value is a usage error naming its option.
    pub fn from_args(a: &mut Args) -> Result<Compare> {
        let before = a.required("before")?;
        let after = a.required("after")?;
        let rounds = whole(a.optional("rounds"), "rounds", 8)?;
        let cases = a.list("cases");
        let max_load = match a.optional("max-load") {
            None => 1.5,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    Error::usage(format!(
                        "host-compare: --max-load must be a load average above 0, not '{v}'"
                    ))
                })?,
        };
        let deadline_s = u64::from(whole(a.optional("deadline-s"), "deadline-s", 3600)?);
        let out = a.optional("out").filter(|s| !s.is_empty()).map_or_else(
            || util::repo_root().join("results/host-compare"),
            PathBuf::from,
        );
        for (name, rev) in [("before", &before), ("after", &after)] {
            if rev.trim().is_empty() || rev.starts_with('-') {
                return Err(Error::usage(format!(
                    "host-compare: --{name} must be a git revision or '{WORKTREE}', not '{rev}'"
                )));
            }
        }
        Ok(Compare {
            before,
            after,
            rounds,
            cases,
            max_load,
            deadline_s,
            out,
        })
    }

    /// The command line that repeats this comparison.
    pub fn command_line(&self) -> String {
        let mut s = format!(
            "cargo xtask host-compare --before {} --after {} --rounds {}",
            self.before, self.after, self.rounds
        );
        if !self.cases.is_empty() {
            let _ = write!(s, " --cases {}", self.cases.join(","));
        }
        let _ = write!(
            s,
            " --max-load {} --deadline-s {}",
            self.max_load, self.deadline_s
        );
        s
    }
}

/// A whole number from 1, `default` when absent; a usage error naming `--name` otherwise.
fn whole(value: Option<String>, name: &str, default: u32) -> Result<u32> {
    match value.filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::usage(format!(
                "host-compare: --{name} must be a whole number from 1, not '{v}'"
            ))),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Typed data: the bench's figures, the machine's load, the rounds.

/// One row of `bench-figures.csv`: a figure's metric, its median, min and max over the runs.
#[derive(Clone, Debug, PartialEq)]
pub struct FigureRow {
    pub family: String,
    pub figure: String,
    pub label: String,
    pub metric: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// Splits one CSV record into its fields (RFC 4180 without line breaks inside a field: a field
/// holding a comma or quote is quoted, a quote inside it doubled).
pub fn csv_fields(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        let field = fields.last_mut().expect("fields is never empty");
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err(format!("text after a closing quote in '{line}'"));
                }
            }
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, '"') => return Err(format!("a quote inside an unquoted field in '{line}'")),
            (false, ',') => fields.push(String::new()),
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("unterminated quoted field in '{line}'"));
    }
    Ok(fields)
}

/// `bench-figures.csv` into rows; columns are found by their header names, so only `figure`,
/// `metric` and `median` must be there (`min`, `max` default to the median).
pub fn parse_figures(text: &str) -> std::result::Result<Vec<FigureRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = csv_fields(lines.next().ok_or("empty file")?)?;
    let column = |name: &str| header.iter().position(|h| h.trim() == name);
    let need = |name: &str| column(name).ok_or_else(|| format!("no '{name}' column"));
    let (figure, metric, med) = (need("figure")?, need("metric")?, need("median")?);
    let (family, label, unit, min, max) = (
        column("family"),
        column("label"),
        column("unit"),
        column("min"),
        column("max"),
    );
    let mut rows = Vec::new();
    for line in lines {
        let f = csv_fields(line)?;
        let text = |i: Option<usize>| i.and_then(|i| f.get(i)).cloned().unwrap_or_default();
        let number = |i: usize, name: &str| {
            f.get(i)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("no number in column '{name}' of '{line}'"))
        };
        let median = number(med, "median")?;
        rows.push(FigureRow {
            family: text(family),
            figure: text(Some(figure)),
            label: text(label),
            metric: text(Some(metric)),
            unit: text(unit),
            median,
            min: min.map_or(Ok(median), |i| number(i, "min"))?,
            max: max.map_or(Ok(median), |i| number(i, "max"))?,
        });
        if rows.last().is_some_and(|r| r.figure.is_empty()) {
            return Err(format!("an empty figure id in '{line}'"));
        }
    }
    Ok(rows)
}

/// `/proc/loadavg`: the 1-minute load average and the runnable tasks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Load {
    pub one_min: f64,
    pub running: u32,
}

impl Load {
    pub fn parse(text: &str) -> Option<Load> {
        let mut words = text.split_whitespace();
        let one_min = words.next()?.parse().ok()?;
        let running = words.nth(2)?.split_once('/')?.0.parse().ok()?;
        Some(Load { one_min, running })
    }

    pub fn now() -> Result<Load> {
        let text = fs::read_to_string("/proc/loadavg")
            .context(|| "host-compare: cannot read /proc/loadavg".to_string())?;
        Load::parse(&text).ok_or_else(|| {
            Error::failed(format!(
                "host-compare: cannot read /proc/loadavg: '{}'",
                text.trim()
            ))
        })
    }

    pub fn quiet(&self, max_load: f64) -> bool {
        self.one_min < max_load && self.running <= 2
    }
}

/// The two sides of a comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    Before,
    After,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Before => "before",
            Side::After => "after",
        }
    }
}

/// One side's run in a round.
#[derive(Clone, Debug)]
pub struct Run {
    pub figures: Vec<FigureRow>,
    pub wall_s: f64,
}

impl Run {
    fn value(&self, figure: &str, metric: &str) -> Option<f64> {
        self.figures
            .iter()
            .find(|r| r.figure == figure && r.metric == metric)
            .map(|r| r.median)
    }
}

/// One round: both sides run back to back on a machine that was quiet when it started.
#[derive(Clone, Debug)]
pub struct Round {
    pub first: Side,
    pub load: Load,
    pub before: Run,
    pub after: Run,
}

impl Round {
    fn side(&self, side: Side) -> &Run {
        match side {
            Side::Before => &self.before,
            Side::After => &self.after,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

/// A figure's value against a baseline of the same run, one ratio per round.
enum Baseline {
    /// The ratio figure / baseline (rates: above 1 is faster than the baseline).
    Figure(&'static str),
    /// figure / the lowest p50 of the raw ping-pongs in the same run (above 1 is slower).
    BestRaw,
}

const RAW: [&str; 2] = ["rt.raw.yield16", "rt.raw.yield1024"];

fn baseline_value(run: &Run, base: &Baseline, metric: &str) -> Option<f64> {
    match base {
        Baseline::Figure(id) => run.value(id, metric),
        Baseline::BestRaw => RAW
            .iter()
            .filter_map(|id| run.value(id, metric))
            .min_by(f64::total_cmp),
    }
}

/// `median (min–max)` of per-round values, each printed with `digits` decimals; `n/a` when
/// no round has one.
fn spread(values: &[f64], digits: usize) -> String {
    let Some(m) = median(values) else {
        return "n/a".to_string();
    };
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{m:.digits$} ({lo:.digits$}–{hi:.digits$})")
}

/// One family's section: the figures of `family` both sides measured, in the order of the
/// first run's file, each side's value and its ratios to `baselines`.
struct Section {
    title: &'static str,
    family: &'static str,
    metric: &'static str,
    unit: &'static str,
    /// Printed value = file value / scale.
    scale: f64,
    digits: usize,
    baselines: &'static [(&'static str, Baseline)],
}

const SECTIONS: [Section; 3] = [
    Section {
        title: "Streaming, 1 sender -> 1 target",
        family: "streaming",
        metric: "rate",
        unit: "M msg/s",
        scale: 1e6,
        digits: 2,
        baselines: &[
            ("ring+fence", Baseline::Figure("stream.ring.fence")),
            ("ring", Baseline::Figure("stream.ring")),
        ],
    },
    Section {
        title: "Round trip, `send` + `wait`",
        family: "round-trip",
        metric: "p50",
        unit: "p50 ns",
        scale: 1.0,
        digits: 0,
        baselines: &[("best raw", Baseline::BestRaw)],
    },
    Section {
        title: "All-to-all",
        family: "all-to-all",
        metric: "rate",
        unit: "M msg/s",
        scale: 1e6,
        digits: 2,
        baselines: &[],
    },
];

/// The figures both sides measured in `section`'s family and metric, in first-seen order.
fn common_figures(rounds: &[Round], s: &Section) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    let on = |side: Side, id: &str| {
        rounds.iter().any(|r| {
            r.side(side)
                .figures
                .iter()
                .any(|f| f.figure == id && f.metric == s.metric)
        })
    };
    for side in [Side::Before, Side::After] {
        for r in rounds {
            for f in &r.side(side).figures {
                let new = !seen.iter().any(|(id, _)| *id == f.figure);
                if f.family == s.family && f.metric == s.metric && new {
                    seen.push((f.figure.clone(), f.label.clone()));
                }
            }
        }
    }
    seen.retain(|(id, _)| on(Side::Before, id) && on(Side::After, id));
    seen
}

fn render_section(rounds: &[Round], s: &Section) -> Option<String> {
    let figures = common_figures(rounds, s);
    if figures.is_empty() {
        return None;
    }
    let mut t = format!("## {}\n\n| case |", s.title);
    let mut rule = String::from("|---|");
    for side in [Side::Before, Side::After] {
        let _ = write!(t, " {}: {} |", side.name(), s.unit);
        rule.push_str("---:|");
        for (name, _) in s.baselines {
            let _ = write!(t, " {} / {name} |", side.name());
            rule.push_str("---:|");
        }
    }
    let _ = write!(t, "\n{rule}\n");
    for (id, label) in &figures {
        let name = if label.is_empty() || label == id {
            format!("`{id}`")
        } else {
            format!("{label} (`{id}`)")
        };
        let _ = write!(t, "| {name} |");
        for side in [Side::Before, Side::After] {
            let values: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.side(side).value(id, s.metric))
                .map(|v| v / s.scale)
                .collect();
            let _ = write!(t, " {} |", spread(&values, s.digits));
            for (_, base) in s.baselines {
                let ratios: Vec<f64> = rounds
                    .iter()
                    .filter_map(|r| {
                        let run = r.side(side);
                        let v = run.value(id, s.metric)?;
                        let b = baseline_value(run, base, s.metric).filter(|b| *b > 0.0)?;
                        Some(v / b)
                    })
                    .collect();
                let is_itself = matches!(base, Baseline::Figure(b) if b == id);
                let cell = if is_itself && !ratios.is_empty() {
                    "1.00".to_string()
                } else {
                    spread(&ratios, 2)
                };
                let _ = write!(t, " {cell} |");
            }
        }
        t.push('\n');
    }
    Some(t)
}

/// The rounds' table: when each started, its order and the load then, each run's wall time.
fn render_rounds(rounds: &[Round]) -> String {
    let mut t = String::from(
        "## Rounds\n\n| round | order | 1-min load at start | runnable | before s | after s |\n\
         |---:|---|---:|---:|---:|---:|\n",
    );
    for (i, r) in rounds.iter().enumerate() {
        let order = match r.first {
            Side::Before => "before, after",
            Side::After => "after, before",
        };
        let _ = writeln!(
            t,
            "| {} | {order} | {:.2} | {} | {:.1} | {:.1} |",
            i + 1,
            r.load.one_min,
            r.load.running,
            r.before.wall_s,
            r.after.wall_s
        );
    }
    t
}

/// Every section with figures on both sides, then the rounds.
pub fn render_tables(rounds: &[Round]) -> String {
    let mut parts: Vec<String> = SECTIONS
        .iter()
        .filter_map(|s| render_section(rounds, s))
        .collect();
    if parts.is_empty() {
        parts.push("No figure was measured on both sides.\n".to_string());
    }
    parts.push(render_rounds(rounds));
    parts.join("\n")
}

// ---------------------------------------------------------------------------------------------
// cargo's JSON messages, read by hand (the xtask has no dependencies).

/// A JSON string's contents from the opening quote at `chars[start]`: the text and the index
/// just past the closing quote; None if it does not close.
fn json_string(chars: &[char], start: usize) -> Option<(String, usize)> {
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Some((s, i + 1)),
            '\\' => {
                let c = *chars.get(i + 1)?;
                i += 2;
                match c {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'b' => s.push('\u{8}'),
                    'f' => s.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.get(i..i + 4)?.iter().collect();
                        let mut code = u32::from_str_radix(&hex, 16).ok()?;
                        i += 4;
                        // A surrogate pair: the low half follows as its own escape.
                        if (0xD800..0xDC00).contains(&code)
                            && chars.get(i) == Some(&'\\')
                            && chars.get(i + 1) == Some(&'u')
                        {
                            let low: String = chars.get(i + 2..i + 6)?.iter().collect();
                            let low = u32::from_str_radix(&low, 16).ok()?;
                            if (0xDC00..0xE000).contains(&low) {
                                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                                i += 6;
                            }
                        }
                        s.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                    }
                    other => s.push(other),
                }
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
    None
}

/// The value of the top-level string field `key` of one JSON object; None if the field is
/// missing, not a string (`null`), or the text is not an object.
pub fn json_top_string(json: &str, key: &str) -> Option<String> {
    let chars: Vec<char> = json.chars().collect();
    let mut depth = 0usize;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' => {
                let (s, end) = json_string(&chars, i)?;
                i = end;
                let mut j = end;
                while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                    j += 1;
                }
                if depth == 1 && chars.get(j) == Some(&':') && s == key {
                    j += 1;
                    while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                        j += 1;
                    }
                    return match chars.get(j) {
                        Some('"') => json_string(&chars, j).map(|(v, _)| v),
                        _ => None,
                    };
                }
                continue;
            }
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The bench executable from `cargo --message-format=json` output: the `executable` of a
/// `compiler-artifact` line, the one named `ipiq_bench-*` if there are several.
pub fn bench_executable(messages: &str) -> Option<PathBuf> {
    let executables: Vec<PathBuf> = messages
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter(|l| json_top_string(l, "reason").as_deref() == Some("compiler-artifact"))
        .filter_map(|l| json_top_string(l, "executable"))
        .map(PathBuf::from)
        .collect();
    let named = executables.iter().rev().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("ipiq_bench-") || n == "ipiq_bench")
    });
    match (named, executables.as_slice()) {
        (Some(p), _) => Some(p.clone()),
        (None, [only]) => Some(only.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Checkouts, builds and runs.

/// One side's revision, copied out and built.
struct Build {
    side: Side,
    /// As given (`--before REV`).
    rev: String,
    /// What it resolved to, for the report.
    resolved: String,
    src: PathBuf,
    binary: PathBuf,
}

/// Removes the scratch copies when the comparison ends, however it ends.
struct Copies(Vec<PathBuf>);

impl Drop for Copies {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn git(root: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(root);
    c
}

/// The tree to copy for `rev` and how to name it: a commit, or for `worktree` a tree written
/// from the working tree through a temporary index (the real index is not touched).
fn resolve(root: &Path, scratch: &Path, side: Side, rev: &str) -> Result<(String, String)> {
    if rev == WORKTREE {
        let index = scratch.join(format!("index-{}", side.name()));
        let _ = fs::remove_file(&index);
        let with_index = |args: &[&str]| {
            let mut c = git(root);
            c.env("GIT_INDEX_FILE", &index).args(args);
            util::output(&mut c)
        };
        let head = util::output(git(root).args(["rev-parse", "--short", "HEAD"]))?;
        let tree = with_index(&["read-tree", "HEAD"])
            .and_then(|_| with_index(&["add", "-A", "."]))
            .and_then(|_| with_index(&["write-tree"]));
        let _ = fs::remove_file(&index);
        let tree = tree?.trim().to_string();
        let short = &tree[..tree.len().min(10)];
        return Ok((
            tree.clone(),
            format!("the working tree on {} (tree {short})", head.trim()),
        ));
    }
    let out = git(root)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("{rev}^{{commit}}"))
        .stderr(Stdio::null())
        .output()
        .context(|| "host-compare: cannot run git".to_string())?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || commit.is_empty() {
        return Err(Error::usage(format!(
            "host-compare: --{} '{rev}' is not a git revision (or '{WORKTREE}')",
            side.name()
        )));
    }
    let subject = util::output(git(root).args(["log", "-1", "--format=%h %s", &commit]))?;
    let mut subject = subject.trim().to_string();
    if subject.chars().count() > 80 {
        subject = subject.chars().take(77).collect::<String>() + "...";
    }
    Ok((commit, subject))
}

/// `git archive TREE | tar -x -m -C dir` (`-m`: the files' times are now, so cargo rebuilds the
/// crate in a reused target directory instead of trusting an older output).
fn copy_out(root: &Path, tree: &str, dir: &Path) -> Result<()> {
    util::remove_dir(dir)?;
    util::create_dir(dir)?;
    let mut archive = git(root)
        .args(["archive", "--format=tar", tree])
        .stdout(Stdio::piped())
        .spawn()
        .context(|| "host-compare: cannot run git archive".to_string())?;
    let stdout = archive.stdout.take().expect("piped stdout");
    let tar = Command::new("tar")
        .args(["-x", "-m", "-f", "-", "-C"])
        .arg(dir)
        .stdin(stdout)
        .status()
        .context(|| "host-compare: cannot run tar".to_string())?;
    let archived = archive
        .wait()
        .context(|| "host-compare: git archive".to_string())?;
    if !archived.success() || !tar.success() {
        return Err(Error::failed(format!(
            "host-compare: cannot copy {tree} into {} (git archive {archived}, tar {tar})",
            dir.display()
        )));
    }
    Ok(())
}

/// Copies `tree` (`rev` resolved) out and builds its bench binary.
fn build(
    root: &Path,
    scratch: &Path,
    copies: &mut Copies,
    side: Side,
    rev: &str,
    (tree, resolved): (String, String),
) -> Result<Build> {
    let src = scratch.join(format!("src-{}", side.name()));
    copies.0.push(src.clone());
    copy_out(root, &tree, &src)?;
    let target = scratch.join(format!("target-{}", side.name()));
    println!(
        "host-compare: building {} ({rev}: {resolved}) in {}",
        side.name(),
        src.display()
    );
    let mut cargo = util::clean_command("cargo");
    cargo
        .args([
            "bench",
            "--features",
            "std",
            "--bench",
            "ipiq_bench",
            "--no-run",
        ])
        .arg("--message-format=json-render-diagnostics")
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .stderr(Stdio::inherit());
    // clean_command drops every CARGO* variable; a job limit asked for still applies.
    if let Some(jobs) = std::env::var_os("CARGO_BUILD_JOBS") {
        cargo.env("CARGO_BUILD_JOBS", jobs);
    }
    let out = cargo
        .output()
        .context(|| "host-compare: cannot run cargo".to_string())?;
    let messages = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::failed(format!(
            "host-compare: building the bench at --{} {rev} ({resolved}) failed ({})",
            side.name(),
            out.status
        )));
    }
    let binary = bench_executable(&messages)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Error::failed(format!(
                "host-compare: cargo built --{} {rev} but named no ipiq_bench executable \
             (no compiler-artifact line with an \"executable\" in its JSON output)",
                side.name()
            ))
        })?;
    Ok(Build {
        side,
        rev: rev.to_string(),
        resolved,
        src,
        binary,
    })
}

/// Runs one side's binary into `dir`, its output logged there; its figures.
fn run_bench(b: &Build, cases: &[String], dir: &Path) -> Result<Run> {
    util::remove_dir(dir)?;
    let dir = util::create_dir(dir)?;
    let log_path = dir.join("bench.log");
    let log =
        fs::File::create(&log_path).context(|| format!("cannot create {}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .context(|| format!("cannot write {}", log_path.display()))?;
    let mut c = util::clean_command(&b.binary);
    c.arg("--bench")
        .current_dir(&b.src)
        .env("IPIQ_BENCH_OUT", &dir)
        .env_remove("IPIQ_BENCH_SMOKE")
        .env_remove("IPIQ_BENCH_TARGETS")
        .stdout(log)
        .stderr(log2);
    if cases.is_empty() {
        c.env_remove("IPIQ_BENCH_CASES");
    } else {
        c.env("IPIQ_BENCH_CASES", cases.join(","));
    }
    let began = Instant::now();
    let status = c
        .status()
        .context(|| format!("host-compare: cannot run {}", b.binary.display()))?;
    let wall_s = began.elapsed().as_secs_f64();
    if !status.success() {
        return Err(Error::failed(format!(
            "host-compare: the {} bench ({}) failed ({status}); its output: {}",
            b.side.name(),
            b.rev,
            log_path.display()
        )));
    }
    let path = dir.join("bench-figures.csv");
    let text = fs::read_to_string(&path).context(|| {
        format!(
            "host-compare: the {} bench wrote no {}",
            b.side.name(),
            path.display()
        )
    })?;
    let figures = parse_figures(&text)
        .map_err(|e| Error::failed(format!("host-compare: {}: {e}", path.display())))?;
    Ok(Run { figures, wall_s })
}

/// A run directory's name: `before-N` or `after-N`.
fn is_run_dir(name: &str) -> bool {
    [Side::Before, Side::After].iter().any(|side| {
        name.strip_prefix(side.name())
            .and_then(|n| n.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Removes an earlier comparison's table and run directories from `out`, so that what is there
/// afterwards is this comparison's alone.
fn clear_runs(out: &Path) -> Result<()> {
    let entries = fs::read_dir(out).context(|| format!("cannot read {}", out.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_run_dir(&name) {
            util::remove_dir(&entry.path())?;
        }
    }
    let _ = fs::remove_file(out.join("host-compare.md"));
    Ok(())
}

/// Waits for a quiet machine; None once the deadline has passed.
fn wait_quiet(round: u32, max_load: f64, deadline: Instant) -> Result<Option<Load>> {
    let began = Instant::now();
    let mut said = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let load = Load::now()?;
        if load.quiet(max_load) {
            return Ok(Some(load));
        }
        let minute = began.elapsed().as_secs() / 60;
        if minute >= said {
            println!(
                "host-compare: round {round} waits for a quiet machine ({:.0} min so far): load \
                 {:.2}, {} runnable (needs below {max_load} and at most 2)",
                minute, load.one_min, load.running
            );
            said = minute + 1;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// The whole comparison: builds, rounds, the table on stdout and in `OUT/host-compare.md`.
pub fn run(c: &Compare) -> Result<()> {
    let root = util::repo_root();
    let scratch = util::create_dir(&root.join("target/host-compare"))?;
    let out = util::create_dir(&c.out)?;
    clear_runs(&out)?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(c.deadline_s);
    let mut copies = Copies(Vec::new());
    // Both revisions resolved before either is built: a typo fails at once.
    let trees = (
        resolve(&root, &scratch, Side::Before, &c.before)?,
        resolve(&root, &scratch, Side::After, &c.after)?,
    );
    let before = build(
        &root,
        &scratch,
        &mut copies,
        Side::Before,
        &c.before,
        trees.0,
    )?;
    let after = build(&root, &scratch, &mut copies, Side::After, &c.after, trees.1)?;
    let cases = if c.cases.is_empty() {
        "every case".to_string()
    } else {
        c.cases.join(",")
    };
    println!(
        "host-compare: {} rounds of {cases}, each started below load {} (deadline {} s)",
        c.rounds, c.max_load, c.deadline_s
    );

    let mut rounds: Vec<Round> = Vec::new();
    for n in 1..=c.rounds {
        let Some(load) = wait_quiet(n, c.max_load, deadline)? else {
            println!("host-compare: deadline reached before round {n}");
            break;
        };
        let first = if n % 2 == 1 {
            Side::Before
        } else {
            Side::After
        };
        let order = match first {
            Side::Before => [&before, &after],
            Side::After => [&after, &before],
        };
        let mut runs: Vec<Run> = Vec::new();
        for b in order {
            runs.push(run_bench(
                b,
                &c.cases,
                &out.join(format!("{}-{n}", b.side.name())),
            )?);
        }
        let (first_run, second_run) = (runs.remove(0), runs.remove(0));
        let (before_run, after_run) = match first {
            Side::Before => (first_run, second_run),
            Side::After => (second_run, first_run),
        };
        println!(
            "host-compare: round {n}/{} at load {:.2} ({} runnable): {} first; before {:.1} s, after {:.1} s",
            c.rounds,
            load.one_min,
            load.running,
            first.name(),
            before_run.wall_s,
            after_run.wall_s
        );
        rounds.push(Round {
            first,
            load,
            before: before_run,
            after: after_run,
        });
    }
    drop(copies);

    let mut doc = String::from("# Host benchmark, before against after\n\n");
    let _ = writeln!(doc, "    {}\n", c.command_line());
    let _ = writeln!(
        doc,
        "- before: `{}` = {}\n- after: `{}` = {}",
        before.rev, before.resolved, after.rev, after.resolved
    );
    let _ = writeln!(
        doc,
        "- cases: {cases}; {} of {} rounds ran ({:.0} s), each started at a 1-minute load \
         below {} with at most 2 runnable tasks, sides alternating (the first side swapped \
         every other round)",
        rounds.len(),
        c.rounds,
        started.elapsed().as_secs_f64(),
        c.max_load
    );
    let _ = writeln!(
        doc,
        "- a value is the median over the rounds of each run's median, the lowest and highest \
         round in brackets; a ratio is taken within one run against that run's own baseline \
         (seconds apart), then its median and range over the rounds\n"
    );
    doc.push_str(&render_tables(&rounds));
    let path = out.join("host-compare.md");
    util::write(&path, &doc)?;
    println!();
    print!("{doc}");
    println!(
        "\nhost-compare: {} (runs in {}/before-N, after-N)",
        path.display(),
        out.display()
    );
    if rounds.is_empty() {
        return Err(Error::failed(format!(
            "host-compare: no round started within --deadline-s {} (the machine never had a \
             1-minute load below {} with at most 2 runnable tasks)",
            c.deadline_s, c.max_load
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIGURES: &str = "\
family,figure,label,metric,unit,median,min,max,runs
streaming,stream.ring,bare SPSC ring (limit),rate,msg/s,50000000,40000000,60000000,3
streaming,stream.ring.fence,\"ring + fence, per message\",rate,msg/s,25000000,20000000,30000000,3
streaming,stream.ipiq.send.polls,\"send, \"\"polls\"\"\",rate,msg/s,20000000,1e7,2.5e7,3
streaming,stream.ipiq.send.polls,\"send, \"\"polls\"\"\",wakeups,per msg,0,0,0,3
round-trip,rt.raw.yield16,raw yield 16,p50,ns,130,120,140,3
round-trip,rt.raw.yield1024,raw yield 1024,p50,ns,120,120,125,3
round-trip,rt.ipiq.polls,ipiq polls,p50,ns,240,230,250,3
";

    #[test]
    fn csv_records_and_figures() {
        assert_eq!(
            csv_fields("a,\"b, c\",\"say \"\"hi\"\"\",").unwrap_or_default(),
            ["a", "b, c", "say \"hi\"", ""]
        );
        assert!(csv_fields("a,\"b").is_err());
        assert!(csv_fields("a,b\"c").is_err());
        assert!(csv_fields("\"a\"b").is_err());
        let rows = parse_figures(FIGURES).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[1].label, "ring + fence, per message");
        assert_eq!(rows[2].label, "send, \"polls\"");
        assert_eq!(
            (rows[2].median, rows[2].min, rows[2].max),
            (2e7, 1e7, 2.5e7)
        );
        assert_eq!(rows[3].metric, "wakeups");
        assert_eq!(rows[6].family, "round-trip");
        assert!(parse_figures("figure,metric\nx,rate\n").is_err_and(|e| e.contains("median")));
        assert!(parse_figures("figure,metric,median\nx,rate,fast\n").is_err());
        // Columns found by name, in any order.
        let rows = parse_figures("median,metric,figure\n3,p50,rt.x\n").unwrap_or_default();
        assert_eq!((rows[0].figure.as_str(), rows[0].min), ("rt.x", 3.0));
    }

    #[test]
    fn run_directories() {
        assert!(is_run_dir("before-1") && is_run_dir("after-12"));
        assert!(!is_run_dir("before-") && !is_run_dir("after-x") && !is_run_dir("notes"));
    }

    #[test]
    fn loadavg() {
        let l = Load::parse("1.67 2.55 2.22 2/128 25779\n");
        assert_eq!(
            l,
            Some(Load {
                one_min: 1.67,
                running: 2
            })
        );
        assert!(l.is_some_and(|l| !l.quiet(1.5) && l.quiet(2.0)));
        assert!(Load::parse("0.10 0.2 0.3 3/99 1").is_some_and(|l| !l.quiet(1.5)));
        assert_eq!(Load::parse("garbage"), None);
    }

    #[test]
    fn executable_from_cargo_json() {
        let messages = r#"{"reason":"compiler-artifact","package_id":"path+file:///x#libc@0.2.1","target":{"kind":["lib"],"name":"libc"},"filenames":["/t/liblibc.rlib"],"executable":null,"fresh":true}
   Compiling ipiq v0.1.0 (/x)
{"reason":"build-script-executed","package_id":"libc","out_dir":"/t/out"}
{"reason":"compiler-artifact","target":{"kind":["bench"],"name":"ipiq_bench","executable":"/not/this"},"profile":{"opt_level":"3"},"executable":"/t/release/deps/ipiq_bench-0123abcd","fresh":false}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            bench_executable(messages),
            Some(PathBuf::from("/t/release/deps/ipiq_bench-0123abcd"))
        );
        // Escapes, spacing, and a key that appears as a value first.
        let line = r#"{ "note" : "executable", "reason": "compiler-artifact", "executable" : "C:\\b\\ipiq_bench-1.exe\u00e9" }"#;
        assert_eq!(
            json_top_string(line, "executable").as_deref(),
            Some("C:\\b\\ipiq_bench-1.exe\u{e9}")
        );
        assert_eq!(json_top_string(line, "missing"), None);
        assert_eq!(bench_executable("{\"reason\":\"build-finished\"}"), None);
        assert_eq!(bench_executable("not json at all"), None);
    }

    fn row(family: &str, figure: &str, metric: &str, median: f64) -> FigureRow {
        FigureRow {
            family: family.into(),
            figure: figure.into(),
            label: String::new(),
            metric: metric.into(),
            unit: String::new(),
            median,
            min: median,
            max: median,
        }
    }

    /// A run: the two streaming baselines, ipiq's send, the raw ping-pongs and ipiq's p50.
    fn run(ring: f64, fence: f64, send: f64, raw16: f64, raw1024: f64, rt: f64) -> Run {
        let s = |id, v| row("streaming", id, "rate", v * 1e6);
        let r = |id, v| row("round-trip", id, "p50", v);
        Run {
            figures: vec![
                s("stream.ring", ring),
                s("stream.ring.fence", fence),
                s("stream.ipiq.send.polls", send),
                r("rt.raw.yield16", raw16),
                r("rt.raw.yield1024", raw1024),
                r("rt.ipiq.polls", rt),
            ],
            wall_s: 1.0,
        }
    }

    #[test]
    fn table_takes_ratios_within_each_run() {
        let load = Load {
            one_min: 0.5,
            running: 1,
        };
        let round = |first, before, after| Round {
            first,
            load,
            before,
            after,
        };
        let mut only_before = run(10.0, 5.0, 2.0, 120.0, 130.0, 240.0);
        only_before
            .figures
            .push(row("streaming", "stream.old", "rate", 1e6));
        let rounds = [
            // A quiet round and a loaded one: the ratios stay put while the rates move 4x.
            round(
                Side::Before,
                only_before,
                run(10.0, 5.0, 4.0, 120.0, 130.0, 180.0),
            ),
            round(
                Side::After,
                run(40.0, 20.0, 8.0, 500.0, 480.0, 960.0),
                run(40.0, 20.0, 16.0, 480.0, 500.0, 720.0),
            ),
            round(
                Side::Before,
                run(20.0, 10.0, 5.0, 240.0, 250.0, 600.0),
                run(20.0, 10.0, 10.0, 240.0, 250.0, 480.0),
            ),
        ];
        let t = render_tables(&rounds);
        // Rates: 2, 8, 5 -> 5 (2–8); ratios 0.4 each against the fence, 0.2 / 0.25 against the
        // ring.
        assert!(
            t.contains("| `stream.ipiq.send.polls` | 5.00 (2.00–8.00) | 0.40 (0.40–0.50) | 0.20 (0.20–0.25) | 10.00 (4.00–16.00) | 0.80 (0.80–1.00) | 0.40 (0.40–0.50) |"),
            "{t}"
        );
        assert!(
            t.contains("| `stream.ring` | 20.00 (10.00–40.00) | 2.00 (2.00–2.00) | 1.00 |"),
            "{t}"
        );
        assert!(
            t.contains("| `stream.ring.fence` | 10.00 (5.00–20.00) | 1.00 | 0.50 (0.50–0.50) |"),
            "{t}"
        );
        // Round trip against the best raw p50 of the same run: 240/120, 960/480, 600/240.
        assert!(
            t.contains("| `rt.ipiq.polls` | 600 (240–960) | 2.00 (2.00–2.50) | 480 (180–720) | 1.50 (1.50–2.00) |"),
            "{t}"
        );
        assert!(t.contains(
            "| before: M msg/s | before / ring+fence | before / ring | after: M msg/s |"
        ));
        // Only on one side: left out. No all-to-all figures: no section.
        assert!(!t.contains("stream.old"));
        assert!(!t.contains("All-to-all"));
        assert!(
            t.contains("| 2 | after, before | 0.50 | 1 | 1.0 | 1.0 |"),
            "{t}"
        );
    }

    #[test]
    fn options() {
        let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        let parse = |s: &[&str]| {
            let mut a = Args::parse("host-compare", &words(s)).unwrap_or_else(|e| panic!("{e:?}"));
            let c = Compare::from_args(&mut a);
            c.and_then(|c| a.finish().map(|()| c))
        };
        let c = parse(&[
            "--before",
            "HEAD~1",
            "--after",
            "worktree",
            "--cases",
            "rt.raw, rt.ipiq",
        ])
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((c.rounds, c.max_load, c.deadline_s), (8, 1.5, 3600));
        assert_eq!(c.cases, ["rt.raw", "rt.ipiq"]);
        assert!(c.command_line().contains("--cases rt.raw,rt.ipiq"));
        let err = |s: &[&str], what: &str| {
            assert!(
                parse(s).is_err_and(|e| e.status == 2 && e.message.contains(what)),
                "{s:?}"
            );
        };
        err(&["--after", "HEAD"], "--before is required");
        err(
            &["--before", "a", "--after", "b", "--rounds", "0"],
            "--rounds",
        );
        err(
            &["--before", "a", "--after", "b", "--max-load", "-1"],
            "--max-load",
        );
        err(
            &["--before", "a", "--after", "b", "--deadline-s", "x"],
            "--deadline-s",
        );
        err(
            &["--before", "a", "--after", "b", "--round", "2"],
            "--round",
        );
    }
}
