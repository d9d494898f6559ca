//! rayon-work, patched kernel against stock: `rayon-result` lines and the kernel's interrupt
//! counters.

use super::*;

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
pub(super) fn kernel_vcpus_of(path: &Path) -> Option<(String, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
