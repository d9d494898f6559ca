//! The guest experiments: each boots applications on the ipiq kernel and on stock-probe, checks
//! every boot (a PASS/FAIL line each), and tabulates the boots' result lines through `report`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::checks::{self, ApicMode};
use crate::error::{Error, Result};
use crate::qemu::{self, Boot, BootArgs, Sink};
use crate::report;
use crate::util::{self, elapsed};

mod bill;
mod rayon;
mod tlb;
mod wakeup;

pub use bill::*;
pub use rayon::*;
pub use tlb::*;
pub use wakeup::*;

/// The CPU model every experiment boots with (x2APIC).
pub const MODEL: &str = "qemu64,+x2apic,+fsgsbase";

/// `NAME=IMAGE` words as a map; an error naming the setting for a word without `=` or a name
/// not in `allowed`.
pub fn images(
    setting: &str,
    specs: &[String],
    allowed: &[&str],
) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let Some((name, image)) = spec.split_once('=') else {
            return Err(Error::usage(format!(
                "{setting}: expected NAME=IMAGE, not '{spec}'"
            )));
        };
        if !allowed.contains(&name) {
            return Err(Error::usage(format!(
                "{setting}: '{name}': expected one of {}",
                allowed.join(", ")
            )));
        }
        out.insert(name.to_string(), PathBuf::from(image));
    }
    Ok(out)
}

/// One checked boot: its log's text, whether every check passed, and the time it took.
pub struct Checked {
    pub text: String,
    pub passed: bool,
}

/// Boots `image` into `log` with the x2APIC model, runs the boot checks and `extra` on the log,
/// and prints `PASS NAME TIME s SUFFIX` or `FAIL NAME TIME s (log: LOG)` with the reasons.
#[allow(clippy::too_many_arguments)]
pub fn boot_checked(
    loader: &Path,
    image: &Path,
    args: &BootArgs,
    append: &str,
    log: &Path,
    name: &str,
    pass_suffix: &str,
    extra: impl FnOnce(&str) -> Vec<String>,
) -> Result<Checked> {
    boot_checked_in(
        ApicMode::X2Apic,
        loader,
        image,
        args,
        append,
        log,
        name,
        |_| pass_suffix.to_string(),
        extra,
    )
}

/// `boot_checked` under another APIC mode, with the PASS line's suffix read from the log.
#[allow(clippy::too_many_arguments)]
pub fn boot_checked_in(
    mode: ApicMode,
    loader: &Path,
    image: &Path,
    args: &BootArgs,
    append: &str,
    log: &Path,
    name: &str,
    pass_suffix: impl FnOnce(&str) -> String,
    extra: impl FnOnce(&str) -> Vec<String>,
) -> Result<Checked> {
    let start = Instant::now();
    let append_args = if append.is_empty() {
        Vec::new()
    } else {
        vec!["-append".to_string(), format!("-- {append}")]
    };
    let boot = Boot {
        loader,
        image,
        args,
        extra: &append_args,
    };
    let verdict = qemu::run(&boot, Sink::Log(log))?;
    let took = elapsed(start);
    let text = util::read_log(log);
    let mut reasons = checks::boot(&text, mode, verdict.passed());
    reasons.extend(extra(&text));
    let passed = reasons.is_empty();
    if passed {
        println!("PASS {name} {took}s{}", pass_suffix(&text));
    } else {
        println!("FAIL {name} {took}s (log: {})", log.display());
        for r in &reasons {
            println!("    - {r}");
        }
    }
    Ok(Checked { text, passed })
}

/// The mode line of a table's header: repeatable (QEMU_ICOUNT_SHIFT set) or normal.
pub fn mode_line() -> String {
    match std::env::var("QEMU_ICOUNT_SHIFT")
        .ok()
        .filter(|s| !s.is_empty())
    {
        Some(shift) => format!(
            "repeatable: QEMU instruction counting, shift {shift}, phase {}",
            std::env::var("QEMU_ICOUNT_PHASE")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "0".into())
        ),
        None => "normal: multi-threaded TCG, counts follow the host's scheduling".into(),
    }
}

pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Writes `text` to stdout and to `path`.
pub fn tee(text: &str, path: &Path) -> Result<()> {
    print!("{text}");
    util::write(path, text)
}

/// The end of an experiment that tabulates its boots: prints `table` (and writes it to
/// `summary` when given), the boots' count line, and fails (exit 1) if any boot failed.
pub fn finish(table: &str, summary: Option<&Path>, passed: usize, failed: usize) -> Result<()> {
    match summary {
        Some(path) => tee(table, path)?,
        None => print!("{table}"),
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::exit(1))
    }
}
