//! The stale-TLB experiment (`tlb-stale: kernel=…`) and the shootdown's cost (`tlb-stale-rate:`).

use super::*;

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
