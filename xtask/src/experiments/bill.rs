//! The hypervisor bill: wakeup, tlb-stale rate and rayon-work on both kernels.

use super::*;

/// The three experiments the bill covers, in table order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BillKind {
    Wakeup,
    Shootdown,
    Rayon,
}

impl BillKind {
    const ALL: [BillKind; 3] = [BillKind::Wakeup, BillKind::Shootdown, BillKind::Rayon];

    fn name(self) -> &'static str {
        match self {
            BillKind::Wakeup => "wakeup",
            BillKind::Shootdown => "shootdown",
            BillKind::Rayon => "rayon",
        }
    }

    /// The line that says the application finished its work.
    fn done_line(self) -> &'static str {
        match self {
            BillKind::Wakeup => "wakeup: ok",
            BillKind::Shootdown => "tlb-stale-rate: ",
            BillKind::Rayon => "rayon-work: all results correct",
        }
    }
}

pub struct BillRun {
    pub loader: PathBuf,
    pub out: PathBuf,
    /// `KIND.KERNEL` to image.
    pub images: BTreeMap<String, PathBuf>,
    pub wakeup_smp: Vec<u32>,
    pub wakeup_rounds: u32,
    pub shootdown_smp: Vec<u32>,
    pub swaps: u32,
    pub rayon_smp: Vec<u32>,
    pub rayon_args: String,
    pub timeout_s: u64,
}

pub const BILL_IMAGE_NAMES: [&str; 6] = [
    "wakeup.patched",
    "wakeup.stock-probe",
    "shootdown.patched",
    "shootdown.stock-probe",
    "rayon.patched",
    "rayon.stock-probe",
];

/// The hypervisor bill, ipiq kernel against stock-probe: boots the wake-up ping-pong, the
/// shootdown loop under a reader (tlb-stale rate) and rayon's sort and stencil on both kernels,
/// checks every boot, and tabulates their `bill:` lines into OUT/bill.md (and stdout).
pub fn bill(r: &BillRun) -> Result<()> {
    let out = util::create_dir(&r.out)?;
    let mut logs = Vec::new();
    let mut failed = 0;
    for kind in BillKind::ALL {
        let (smps, args) = match kind {
            BillKind::Wakeup => (&r.wakeup_smp, r.wakeup_rounds.to_string()),
            BillKind::Shootdown => (&r.shootdown_smp, format!("rate {}", r.swaps)),
            BillKind::Rayon => (&r.rayon_smp, r.rayon_args.clone()),
        };
        let image = |kernel: &str| r.images.get(&format!("{}.{kernel}", kind.name()));
        if image("patched").is_none() && image("stock-probe").is_none() {
            continue;
        }
        for kernel in ["patched", "stock-probe"] {
            if image(kernel).is_none() {
                return Err(Error::usage(format!(
                    "bill: {}.{kernel}=IMAGE missing",
                    kind.name()
                )));
            }
        }
        for &smp in smps {
            let boot_args =
                BootArgs::check(&smp.to_string(), MODEL, "512M", &r.timeout_s.to_string())?;
            for kernel in ["patched", "stock-probe"] {
                let Some(img) = image(kernel) else { continue };
                let log = out.join(format!("{}-{kernel}-{smp}.log", kind.name()));
                let name = format!("bill {} {kernel} smp={smp}", kind.name());
                let c = boot_checked(&r.loader, img, &boot_args, &args, &log, &name, "", |text| {
                    let mut reasons = Vec::new();
                    if !text.lines().any(|l| l.starts_with(kind.done_line())) {
                        reasons.push(format!("no '^{}' line", kind.done_line()));
                    }
                    if !text.lines().any(|l| l.starts_with("bill: ")) {
                        reasons.push("no bill line".into());
                    }
                    reasons
                })?;
                if c.passed {
                    logs.push((log, c.text));
                } else {
                    failed += 1;
                }
            }
        }
    }
    if failed > 0 {
        println!("{failed} boot(s) failed");
        return Err(Error::exit(1));
    }
    let mut text = String::new();
    let _ = writeln!(
        text,
        "Mode: {}. QEMU {}, cpu {MODEL}, host {} cores.",
        mode_line(),
        qemu::version(),
        host_cores()
    );
    let _ = writeln!(
        text,
        "wakeup: {} round trips per primitive; shootdown: tlb-stale rate {}; rayon-work: {}.",
        r.wakeup_rounds, r.swaps, r.rayon_args
    );
    let rendered = report::bill_table(&logs);
    text.push_str(&rendered.text);
    tee(&text, &out.join("bill.md"))?;
    report::finish(rendered).map(|_| ())
}
