//! Host benchmarks of ipiq against its peers, all measured in the same run on the same machine
//! (`make bench-host`; `make bench-smoke` for a seconds-long pass over every case).
//!
//! Families (`cases/`): streaming one sender -> one target (throughput and wake-ups per
//! message), send+wait round trip (latency percentiles against a raw shared-flag ping-pong), and
//! all-to-all on 4 cores. Peers (`peers/`): crossbeam-channel bounded, `std::sync::mpsc::
//! sync_channel`, a `Mutex<VecDeque>` with thread unpark (Hermit's pattern), a Linux-style
//! lock-free list, the bare SPSC ring (the limit), and the ring paying the wake-up protocol's
//! SeqCst fence per message or per batch (the limit the protocol allows); for round trips, a raw
//! shared-flag ping-pong, also with that fence after each hand-over. Every case runs
//! `Params::runs` times (`measure.rs`); each figure is its median with its spread (min–max).
//!
//! Output, in `IPIQ_BENCH_OUT` (default `results/`; a smoke run writes to its `smoke/`
//! subfolder): `bench-report.md` (the tables, the targets' verdicts), the figures as CSV
//! (`data.rs`), and SVG plots (`plots.rs`). Targets come from `benches/targets.csv`
//! (`IPIQ_BENCH_TARGETS` names another file; format in `targets.rs`), checked against the case
//! ids before anything is measured.
//!
//! `IPIQ_BENCH_CASES` (a comma-separated list of case-id prefixes, e.g.
//! `stream.ipiq.send.polls,stream.ring,rt.`) runs only the cases whose id starts with one of
//! them: for profiling one path without the whole suite. Targets whose figure or baseline did
//! not run are reported as not measured; the latency table's ratio needs a `rt.raw.` case.
//!
//! This file only wires the parts together.

mod cases;
mod csv;
mod data;
mod measure;
mod peers;
mod plots;
mod report;
mod self_check;
mod spin;
mod targets;

use std::path::PathBuf;
use std::thread;
use std::time::Instant;

use cases::Params;
use measure::{Family, Figure, Metric};

fn main() {
    if let Err(e) = run() {
        eprintln!("ipiq bench: error: {e}");
        std::process::exit(1);
    }
}

/// `/proc/loadavg`'s first three fields, if readable.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "n/a".to_string())
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or(default, PathBuf::from)
}

fn run() -> Result<(), String> {
    let p = Params::new(
        std::env::var_os("IPIQ_BENCH_SMOKE").is_some_and(|v| !v.is_empty() && v != "0"),
    );
    let smoke = p.smoke;
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if smoke {
        self_check::run()?;
        eprintln!("ipiq bench: csv and targets-file self-checks passed");
    }

    // The targets, checked against every case id before anything runs.
    let targets_path = env_path(
        "IPIQ_BENCH_TARGETS",
        manifest.join("benches").join("targets.csv"),
    );
    let text = std::fs::read_to_string(&targets_path)
        .map_err(|e| format!("cannot read {}: {e}", targets_path.display()))?;
    let targets = targets::parse(&text).map_err(|e| format!("{}: {e}", targets_path.display()))?;
    let mut streaming = cases::streaming::cases(&p);
    let mut round_trip = cases::round_trip::cases(&p);
    let mut all_to_all = cases::all_to_all::cases(&p);
    let ids: Vec<&str> = streaming
        .iter()
        .chain(&all_to_all)
        .map(|c| c.id)
        .chain(round_trip.iter().map(|c| c.id))
        .collect();
    targets::check(&targets, &ids).map_err(|e| format!("{}: {e}", targets_path.display()))?;
    // The optional case filter, applied after the targets file was checked against every id.
    if let Some(filter) = std::env::var("IPIQ_BENCH_CASES")
        .ok()
        .filter(|v| !v.trim().is_empty())
    {
        let prefixes: Vec<String> = filter
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let wanted = |id: &str| prefixes.iter().any(|p| id.starts_with(p.as_str()));
        streaming.retain(|c| wanted(c.id));
        round_trip.retain(|c| wanted(c.id));
        all_to_all.retain(|c| wanted(c.id));
        eprintln!("ipiq bench: only the cases starting with {prefixes:?} (IPIQ_BENCH_CASES)");
    }

    // A smoke run writes beside, not over, the last full report.
    let mut dir = env_path("IPIQ_BENCH_OUT", manifest.join("results"));
    if smoke {
        dir.push("smoke");
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;

    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let load_before = loadavg();
    let began = Instant::now();
    eprintln!(
        "ipiq bench{}: {cpus} host CPUs, {} runs per case (median, min–max), {} messages streaming, \
         {} round trips, {} x {} all-to-all",
        if smoke { " (smoke)" } else { "" },
        p.runs,
        p.stream,
        p.roundtrips,
        p.a2a_cores,
        p.a2a_per_core
    );

    let mut figures: Vec<Figure> = Vec::new();
    eprintln!("streaming, 1 sender -> 1 target:");
    for c in &streaming {
        figures.push(measure::throughput(
            Family::Streaming,
            c.id,
            c.label,
            p.runs,
            p.stream,
            &*c.run,
        ));
    }
    eprintln!("round trip:");
    for c in &round_trip {
        figures.push(measure::latency(c.id, c.label, p.runs, &*c.run));
    }
    eprintln!("all-to-all, {} cores:", p.a2a_cores);
    let total = p.a2a_cores as u64 * p.a2a_per_core;
    for c in &all_to_all {
        figures.push(measure::throughput(
            Family::AllToAll,
            c.id,
            c.label,
            p.runs,
            total,
            &*c.run,
        ));
    }
    let wall_s = began.elapsed().as_secs_f64();
    let load_after = loadavg();

    // Tables: each family against its baselines of this run.
    let family = |f: Family| figures.iter().filter(|x| x.family == f).collect::<Vec<_>>();
    let find = |id: &str| figures.iter().find(|f| f.id == id);
    let against = |pairs: &[(&'static str, &str)]| {
        pairs
            .iter()
            .filter_map(|(name, id)| Some((*name, find(id)?)))
            .collect::<Vec<_>>()
    };
    let stream_rows = family(Family::Streaming);
    let latency_rows = family(Family::RoundTrip);
    let a2a_rows = family(Family::AllToAll);
    let raw = ["rt.raw.yield16", "rt.raw.yield1024"]
        .iter()
        .filter_map(|id| find(id))
        .min_by(|a, b| {
            let p50 = |f: &Figure| f.metric(Metric::P50).map_or(f64::INFINITY, |s| s.median);
            p50(a).total_cmp(&p50(b))
        });
    let outcomes = targets::evaluate(&targets, &figures);
    let tables = report::Tables {
        streaming: report::throughput_table(
            &stream_rows,
            &against(&[
                ("crossbeam", "stream.crossbeam"),
                ("ring", "stream.ring"),
                ("ring+fence", "stream.ring.fence"),
            ]),
        ),
        latency: report::latency_table(&latency_rows, raw),
        all_to_all: report::throughput_table(
            &a2a_rows,
            &against(&[("crossbeam", "a2a.crossbeam")]),
        ),
        targets: report::targets_table(&outcomes),
    };
    println!();
    println!(
        "## Streaming, 1 sender -> 1 target ({} messages)\n\n{}",
        p.stream, tables.streaming
    );
    println!(
        "## Round trip ({} round trips)\n\n{}",
        p.roundtrips, tables.latency
    );
    println!(
        "## All-to-all, {} cores ({} messages per core)\n\n{}",
        p.a2a_cores, p.a2a_per_core, tables.all_to_all
    );
    println!("## Targets\n\n{}", tables.targets);

    // Files: report, data, plots.
    let targets_file = targets_path
        .strip_prefix(&manifest)
        .unwrap_or(&targets_path)
        .display()
        .to_string();
    let run = report::Run {
        smoke,
        cpus,
        runs: p.runs,
        wall_s,
        load_before: &load_before,
        load_after: &load_after,
        stream_msgs: p.stream,
        round_trips: p.roundtrips,
        cores: p.a2a_cores,
        per_core: p.a2a_per_core,
        targets_file: &targets_file,
    };
    let meta = [
        ("smoke", smoke.to_string()),
        ("host_cpus", cpus.to_string()),
        ("runs_per_case", p.runs.to_string()),
        ("stream_messages", p.stream.to_string()),
        ("round_trips", p.roundtrips.to_string()),
        ("a2a_cores", p.a2a_cores.to_string()),
        ("a2a_messages_per_core", p.a2a_per_core.to_string()),
        ("loadavg_before", load_before.clone()),
        ("loadavg_after", load_after.clone()),
        ("wall_s", format!("{wall_s:.1}")),
        ("targets_file", targets_file.clone()),
    ];
    data::write_all(&dir, &meta, &figures, &outcomes)?;
    let title = |what: &str| format!("{what} (M msg/s, median of {} runs)", p.runs);
    plots::throughput_bars(
        &dir.join("bench-streaming.svg"),
        &title("Streaming throughput, 1 sender -> 1 target"),
        &stream_rows,
    )?;
    plots::throughput_bars(
        &dir.join("bench-all-to-all.svg"),
        &title(&format!("All-to-all throughput, {} cores", p.a2a_cores)),
        &a2a_rows,
    )?;
    plots::latency_lines(&dir.join("bench-latency.svg"), &latency_rows)?;
    let path = dir.join("bench-report.md");
    std::fs::write(&path, report::document(&run, &tables))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!(
        "report: {} (CSV data and SVG plots beside it)",
        path.display()
    );
    eprintln!("ipiq bench: done in {:.1} s", began.elapsed().as_secs_f64());
    Ok(())
}
