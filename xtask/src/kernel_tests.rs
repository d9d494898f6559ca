//! The kernel package's own integration tests (tests/ of hermit-kernel), built on each prepared
//! kernel source and booted directly with the loader under QEMU. A test binary is a complete
//! kernel image (static PIE with the HERMIT note): no export step. QEMU exit 3 = pass.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Context, Error, Result};
use crate::kernel;
use crate::qemu::{self, Boot, BootArgs, Sink};
use crate::util::{self, elapsed};

/// All five tests of tests/ (measure_startup_time boots in ~0.3 s too).
const TESTS: [&str; 5] = [
    "basic_math",
    "basic_mem",
    "basic_print",
    "measure_startup_time",
    "thread",
];

/// One kernel source to test: its name (patched, stock), source and cargo target directory.
pub struct Variant {
    pub name: String,
    pub src: PathBuf,
    pub target: PathBuf,
}

impl Variant {
    /// `NAME=SRC[:TARGET]`; TARGET defaults to SRC/../test-target.
    pub fn parse(s: &str) -> Result<Variant> {
        let (name, rest) = s
            .split_once('=')
            .filter(|(n, r)| !n.is_empty() && !r.is_empty())
            .ok_or_else(|| {
                Error::usage(format!("--kernel must be NAME=SRC[:TARGET], not '{s}'"))
            })?;
        let (src, target) = match rest.split_once(':') {
            Some((src, target)) => (PathBuf::from(src), PathBuf::from(target)),
            None => (PathBuf::from(rest), Path::new(rest).join("../test-target")),
        };
        Ok(Variant {
            name: name.to_string(),
            src,
            target,
        })
    }
}

pub struct KernelTests {
    pub toolchain: String,
    pub loader: PathBuf,
    pub features: String,
    pub logs: PathBuf,
    pub timeout_s: u64,
    pub smp: Vec<u32>,
    pub variants: Vec<Variant>,
}

/// Builds the tests of one source; returns (test name, binary) pairs.
fn build(t: &KernelTests, v: &Variant, logs: &Path) -> Result<Vec<(String, PathBuf)>> {
    let start = Instant::now();
    println!(
        "==> building kernel tests [{}, features {}] in {} (~60 s clean)",
        v.name,
        t.features,
        v.src.display()
    );
    let json_path = logs.join(format!("{}.build.json", v.name));
    let log_path = logs.join(format!("{}.build.log", v.name));
    let json =
        File::create(&json_path).context(|| format!("cannot create {}", json_path.display()))?;
    let log =
        File::create(&log_path).context(|| format!("cannot create {}", log_path.display()))?;
    // `--test NAME` for each wanted test instead of `--tests`: that would also build the crate's
    // unit-test binary (which panics at boot upstream too). The archive build's rustflags
    // without its unwind tables (which only debuggers read), so the kernel's own code is
    // compiled the same way.
    let mut command = kernel::cargo(
        &t.toolchain,
        &v.src,
        &["test", "--no-run"],
        kernel::RUSTFLAGS,
        &t.features,
    );
    command.arg("--target-dir").arg(&v.target);
    for test in TESTS {
        command.args(["--test", test]);
    }
    command
        .arg("--message-format=json-render-diagnostics")
        .stdout(json)
        .stderr(log);
    let status = command.status().context(|| "cannot run cargo".into())?;
    if !status.success() {
        let text = util::read_log(&log_path);
        let lines: Vec<&str> = text.lines().collect();
        for line in &lines[lines.len().saturating_sub(20)..] {
            eprintln!("{line}");
        }
        return Err(Error::failed(format!(
            "building the {} kernel tests failed (log: {})",
            v.name,
            log_path.display()
        )));
    }
    // One JSON object per line; test executables have "profile":{..."test":true...} and
    // "executable".
    let bins: Vec<(String, PathBuf)> = util::read_log(&json_path)
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"test\":true"))
        .filter_map(test_binary)
        .collect();
    let listing: String = bins
        .iter()
        .map(|(n, p)| format!("{n} {}\n", p.display()))
        .collect();
    util::write(&logs.join(format!("{}.bins", v.name)), listing)?;
    println!("    {} test binaries in {} s", bins.len(), elapsed(start));
    Ok(bins)
}

/// The target name and executable of one compiler-artifact message.
fn test_binary(line: &str) -> Option<(String, PathBuf)> {
    let name_end = line.find("\",\"src_path\"")?;
    let name_start = line[..name_end].rfind("\"name\":\"")? + "\"name\":\"".len();
    let name = &line[name_start..name_end];
    let exe_start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
    let exe_len = line[exe_start..].find('"')?;
    Some((
        name.to_string(),
        PathBuf::from(&line[exe_start..exe_start + exe_len]),
    ))
}

pub fn run(t: &KernelTests) -> Result<()> {
    if !t.loader.is_file() {
        return Err(Error::failed(format!(
            "loader {} does not exist (run make loader)",
            t.loader.display()
        )));
    }
    util::require_program("qemu-system-x86_64", " (make qemu-install)")?;
    let logs = util::create_dir(&t.logs)?;
    let total = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for v in &t.variants {
        if !v.src.is_dir() {
            return Err(Error::failed(format!(
                "kernel source {} does not exist (run make image)",
                v.src.display()
            )));
        }
        let bins = match build(t, v, &logs) {
            Ok(bins) => bins,
            Err(e) => {
                eprintln!("error: {}", e.message);
                failed += 1;
                continue;
            }
        };
        for test in TESTS {
            let bin = bins.iter().find(|(n, _)| n == test).map(|(_, p)| p);
            for &smp in &t.smp {
                let Some(bin) = bin.filter(|b| b.is_file()) else {
                    println!("FAIL {} {test} smp={smp} (no test binary found)", v.name);
                    failed += 1;
                    continue;
                };
                let log = logs.join(format!("{}-{test}-smp{smp}.log", v.name));
                let args = BootArgs::new(smp, "qemu64,+x2apic,+fsgsbase", t.timeout_s)?;
                let boot = Boot {
                    loader: &t.loader,
                    image: bin,
                    args: &args,
                    extra: &[],
                };
                let start = Instant::now();
                let verdict = qemu::run(&boot, Sink::Log(&log))?;
                let took = elapsed(start);
                if verdict.passed() {
                    println!("PASS {} {test} smp={smp} {took}s", v.name);
                    passed += 1;
                } else {
                    println!(
                        "FAIL {} {test} smp={smp} {took}s (log: {})",
                        v.name,
                        log.display()
                    );
                    let text = util::read_log(&log);
                    for line in text
                        .lines()
                        .filter(|l| l.contains("error:") || l.contains("panicked"))
                        .take(3)
                    {
                        println!("    {}", line.chars().take(196).collect::<String>());
                    }
                    failed += 1;
                }
            }
        }
    }
    println!("kernel tests: {} s", elapsed(total));
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(Error::exit(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_test_artifact() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"crate_types":["bin"],"name":"basic_math","src_path":"/k/tests/basic_math.rs"},"profile":{"test":true},"executable":"/t/basic_math-123"}"#;
        assert_eq!(
            test_binary(line),
            Some(("basic_math".into(), PathBuf::from("/t/basic_math-123")))
        );
    }

    #[test]
    fn variants_name_their_source_and_target() {
        let v = Variant::parse("stock=/b/src:/b/t").unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            (v.name.as_str(), v.src, v.target),
            ("stock", "/b/src".into(), "/b/t".into())
        );
        assert!(Variant::parse("nonsense").is_err());
    }
}
