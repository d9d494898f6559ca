//! Gathering the report blocks of logs into one Markdown file, and `make bench`'s report.

use super::rayon::kernel_vcpus_of;
use super::*;

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
        let qemu = crate::qemu::version_line().unwrap_or_else(|| "not found".into());
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
}
