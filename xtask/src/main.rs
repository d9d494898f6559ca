//! ipiq's build, boot and check tasks: `cargo xtask COMMAND --option value ...` from the
//! repository root (the Makefile's targets call these; `cargo xtask help` lists them).
//!
//! Build: fetch-kernel, prepare-kernel, kernel-series, build-kernel, build-loader, build-app,
//! bundle-qemu. Boot: boot-args, qemu, uhyve. Checks: image-test, fpu-test, kernel-tests,
//! boot-args-test, qemu-debug-test, lock-inject-test, preempt-inject. Experiments: bill, wakeup,
//! spread, tlb-stale, shootdown, rayon.
//! Reports: report (tables from the boots' result lines, `report/`). Host: host-compare (the
//! host benchmark at two revisions, run alternately, `host_compare.rs`).

mod archive;
mod boot_tests;
mod build;
mod checks;
mod cli;
mod debug_tests;
mod error;
mod experiments;
mod host_compare;
mod kernel;
mod kernel_tests;
mod qemu;
mod report;
mod series;
mod util;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use checks::{ApicMode, KernelKind};
use cli::Args;
use error::{Error, Result};

const HELP: &str = "\
usage: cargo xtask COMMAND [--option value]... [-- extra arguments]

build
  fetch-kernel   --toolchain T --version V --dest DIR
  prepare-kernel --pristine DIR --src DIR [--patch-dir DIR]...
  kernel-series  list DIR... | am --pristine DIR DIR... | repo --pristine DIR --dest DIR DIR...
                 | export --repo DIR --from REV --to REV --dir DIR
  build-kernel   --toolchain T --src DIR --out DIR --features F --builtins-src DIR --builtins-target DIR
  build-loader   --loader-dir DIR --target-dir DIR
  build-app      --toolchain T --app-dir DIR --kernel-dir DIR --target-dir DIR [--features F]
  bundle-qemu    --out DIR
boot
  boot-args      --smp N --cpu MODEL --mem SIZE --timeout S      (checks them, boots nothing)
  qemu           --loader F --image F --smp N --cpu MODEL --mem SIZE --timeout S [--append ARGS]
                 [-- QEMU arguments]   (QEMU_ICOUNT_SHIFT / QEMU_ICOUNT_PHASE: repeatable mode)
  uhyve          --image F --smp N --timeout S --version V
checks
  image-test     --loader F --image F --kernel K --logs DIR --timeout S
                 [--ipiq-tests IMAGE --ipiq-tests-smp \"1 2 4 8\"]
  fpu-test       --loader F --image F --logs DIR --timeout S --smp \"2 4\" --modes \"x2APIC xAPIC\"
                 [--avx-models M] [--args A]
  kernel-tests   --toolchain T --loader F --features F --logs DIR --timeout S --smp \"1 4\"
                 --kernel NAME=SRC[:TARGET]...
  boot-args-test --loader F --image F
  qemu-debug-test --loader F --image SPIN_IMAGE --out DIR
  lock-inject-test --loader F --image IPIQ_TESTS_IMAGE --out DIR [--seconds 5]
  preempt-inject --image F [--vcpu N]      (writes the gdb hook to stdout)
experiments (ipiq kernel against stock-probe; checked boots, then a table)
  bill           --loader F --out DIR --image KIND.KERNEL=F... [--wakeup-smp \"2 4\"]
                 [--wakeup-rounds 500] [--shootdown-smp \"2 4\"] [--swaps 100] [--rayon-smp \"4 8\"]
                 [--rayon-args smoke] [--timeout 900]
  wakeup         --loader F --logs DIR --timeout S --smp \"2 4\" [--rounds N] [--repeats 1]
                 [--summary FILE] --image patched=F --image stock-probe=F
  tlb-stale      --loader F --logs DIR --timeout S --smp \"2 4\" --modes \"x2APIC xAPIC\"
                 [--summary FILE] --image KERNEL=F...   (KERNEL: patched, stock-probe or stock)
  shootdown      --loader F --logs DIR --timeout S --smp \"2 4 8\" --swaps N [--repeats 3]
                 [--summary FILE] --image patched=F --image stock-probe=F
  rayon          --loader F --cpu MODEL --mem SIZE --timeout S --logs DIR --prefix P --smp \"1 2 4 8\"
                 [--args A] --image KERNEL=F... [-- QEMU arguments]
  spread         --loader F --out DIR --runs N --smp \"2 4\" --wakeup-smp \"2 4\" [--wakeup-rounds N]
                 [--phases \"0 1 2\"] --image bench=F --image patched=F --image stock-probe=F
reports (tables from the boots' result lines)
  report bill LOG...              the hypervisor bill
  report rayon LOG...             the rayon-work table
  report gather --out F LOG...    every <<<report block of the logs into one Markdown file
  report bench --results DIR LOG...   DIR/bench-report.md and the gathered guest blocks into
                                  DIR/report.md
host
  host-compare   --before REV --after REV [--rounds 8] [--cases PREFIX,...] [--max-load 1.5]
                 [--deadline-s 3600] [--out results/host-compare]
                 the host bench built at both revisions (REV: any git revision, or 'worktree'
                 for the working tree with its uncommitted changes), run alternately in rounds
                 that start only on a quiet machine; table in OUT/host-compare.md
";

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match run(&argv) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            if !e.message.is_empty() {
                eprintln!("error: {}", e.message);
            }
            ExitCode::from(e.status)
        }
    }
}

fn timeout(a: &mut Args) -> Result<u64> {
    let value = a.required("timeout")?;
    qemu::BootArgs::check("1", "qemu64", "512M", &value).map(|b| b.timeout_s)
}

fn kernel_kind(a: &mut Args) -> Result<KernelKind> {
    let value = a.required("kernel")?;
    KernelKind::parse(&value).ok_or_else(|| {
        Error::usage(format!(
            "KERNEL must be 'patched', 'stock' or 'stock-probe', not '{value}'"
        ))
    })
}

fn run(argv: &[String]) -> Result<()> {
    let Some((command, rest)) = argv.split_first() else {
        print!("{HELP}");
        return Err(Error::exit(2));
    };
    let mut a = Args::parse(command, rest)?;
    match command.as_str() {
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(())
        }

        "fetch-kernel" => {
            let (toolchain, version, dest) = (
                a.required("toolchain")?,
                a.required("version")?,
                a.path("dest")?,
            );
            a.finish()?;
            kernel::fetch(&toolchain, &version, &dest)
        }
        "prepare-kernel" => {
            let (pristine, src) = (a.path("pristine")?, a.path("src")?);
            let dirs: Vec<PathBuf> = a.list("patch-dir").into_iter().map(PathBuf::from).collect();
            a.finish()?;
            kernel::prepare(&pristine, &src, &dirs)
        }
        "kernel-series" => kernel_series(a),
        "build-kernel" => {
            let b = archive::KernelBuild {
                toolchain: a.required("toolchain")?,
                src: a.path("src")?,
                out: a.path("out")?,
                features: a.required("features")?,
                builtins_src: a.path("builtins-src")?,
                builtins_target: a.path("builtins-target")?,
            };
            a.finish()?;
            archive::build(&b)
        }
        "build-loader" => {
            let (dir, target) = (a.path("loader-dir")?, a.path("target-dir")?);
            a.finish()?;
            build::loader(&dir, &target)
        }
        "build-app" => {
            let toolchain = a.required("toolchain")?;
            let (app, kernel, target) = (
                a.path("app-dir")?,
                a.path("kernel-dir")?,
                a.path("target-dir")?,
            );
            let features = a.optional("features").unwrap_or_default();
            a.finish()?;
            build::app(&toolchain, &app, &kernel, &target, &features)
        }
        "bundle-qemu" => {
            let out = a.path("out")?;
            a.finish()?;
            build::bundle_qemu(&out)
        }

        "boot-args" => {
            let (smp, cpu, mem, timeout) = (
                a.required("smp")?,
                a.required("cpu")?,
                a.required("mem")?,
                a.required("timeout")?,
            );
            a.finish()?;
            qemu::BootArgs::check(&smp, &cpu, &mem, &timeout).map(|_| ())
        }
        "qemu" => {
            let (smp, cpu, mem, timeout) = (
                a.required("smp")?,
                a.required("cpu")?,
                a.required("mem")?,
                a.required("timeout")?,
            );
            let args = qemu::BootArgs::check(&smp, &cpu, &mem, &timeout)?;
            let (loader, image) = (a.path("loader")?, a.path("image")?);
            let mut extra = std::mem::take(&mut a.rest);
            if let Some(append) = a.optional("append").filter(|s| !s.is_empty()) {
                extra.extend(["-append".to_string(), format!("-- {append}")]);
            }
            a.finish()?;
            let boot = qemu::Boot {
                loader: &loader,
                image: &image,
                args: &args,
                extra: &extra,
            };
            match qemu::run(&boot, qemu::Sink::Terminal)? {
                qemu::Verdict::Passed => Ok(()),
                _ => Err(Error::exit(1)),
            }
        }
        "uhyve" => {
            let image = a.path("image")?;
            let smp = qemu::BootArgs::check(&a.required("smp")?, "host", "512M", "1")?.smp;
            let timeout = timeout(&mut a)?;
            let version = a.required("version")?;
            a.finish()?;
            qemu::uhyve(&image, smp, timeout, &version)
        }

        "image-test" => {
            let t = boot_tests::ImageTest {
                loader: a.path("loader")?,
                image: a.path("image")?,
                kernel: kernel_kind(&mut a)?,
                logs: a.path("logs")?,
                timeout_s: timeout(&mut a)?,
                ipiq_tests: match a.optional("ipiq-tests").filter(|s| !s.is_empty()) {
                    None => None,
                    Some(image) => {
                        let mut smp = a.list("ipiq-tests-smp");
                        if smp.is_empty() {
                            smp = cli::split_list("1 2 4");
                        }
                        Some((PathBuf::from(image), cli::smp_list("IPIQ_TESTS_SMP", &smp)?))
                    }
                },
            };
            a.finish()?;
            boot_tests::image_test(&t)
        }
        "fpu-test" => {
            let modes = apic_modes(&a.list("modes"), "FPU_TEST_MODES")?;
            let t = boot_tests::FpuTest {
                loader: a.path("loader")?,
                image: a.path("image")?,
                logs: a.path("logs")?,
                timeout_s: timeout(&mut a)?,
                smp: cli::smp_list("FPU_TEST_SMP", &a.list("smp"))?,
                modes,
                avx_models: a.list("avx-models"),
                app_args: a.optional("args").unwrap_or_default(),
            };
            a.finish()?;
            boot_tests::fpu_test(&t)
        }
        "kernel-tests" => {
            let variants = a
                .values_of("kernel")
                .iter()
                .map(|v| kernel_tests::Variant::parse(v))
                .collect::<Result<Vec<_>>>()?;
            if variants.is_empty() {
                return Err(Error::usage(
                    "kernel-tests: give at least one --kernel NAME=SRC[:TARGET]",
                ));
            }
            let t = kernel_tests::KernelTests {
                toolchain: a.required("toolchain")?,
                loader: a.path("loader")?,
                features: a.required("features")?,
                logs: a.path("logs")?,
                timeout_s: timeout(&mut a)?,
                smp: cli::smp_list("KERNEL_TESTS_SMP", &a.list("smp"))?,
                variants,
            };
            a.finish()?;
            kernel_tests::run(&t)
        }
        "boot-args-test" => {
            let (loader, image) = (a.path("loader")?, a.path("image")?);
            a.finish()?;
            boot_tests::boot_args_test(&loader, &image)
        }
        "qemu-debug-test" => {
            let (loader, image, out) = (a.path("loader")?, a.path("image")?, a.path("out")?);
            a.finish()?;
            debug_tests::qemu_debug_test(&loader, &image, &out)
        }
        "lock-inject-test" => {
            let (loader, image, out) = (a.path("loader")?, a.path("image")?, a.path("out")?);
            let seconds = a.parsed("seconds", 5u32)?;
            a.finish()?;
            debug_tests::lock_inject_test(&loader, &image, &out, seconds)
        }
        "preempt-inject" => {
            let image = a.path("image")?;
            let vcpu = match a.optional("vcpu") {
                None => None,
                Some(v) => Some(v.parse::<u32>().map_err(|_| {
                    Error::usage(format!("--vcpu must be a vCPU index, not '{v}'"))
                })?),
            };
            a.finish()?;
            print!("{}", debug_tests::preempt_inject(&image, vcpu)?.script);
            Ok(())
        }

        "bill" => {
            let r = experiments::BillRun {
                loader: a.path("loader")?,
                out: a.path("out")?,
                images: experiments::images(
                    "bill --image",
                    &a.values_of("image"),
                    &experiments::BILL_IMAGE_NAMES,
                )?,
                wakeup_smp: smps(&mut a, "wakeup-smp", "BILL_WAKEUP_SMP", "2 4")?,
                wakeup_rounds: count(&mut a, "wakeup-rounds", "BILL_WAKEUP_ROUNDS", 500)?,
                shootdown_smp: smps(&mut a, "shootdown-smp", "BILL_SHOOTDOWN_SMP", "2 4")?,
                swaps: count(&mut a, "swaps", "BILL_SWAPS", 100)?,
                rayon_smp: smps(&mut a, "rayon-smp", "BILL_RAYON_SMP", "4 8")?,
                rayon_args: a.optional("rayon-args").unwrap_or_else(|| "smoke".into()),
                timeout_s: match a.optional("timeout") {
                    None => 900,
                    Some(t) => {
                        qemu::BootArgs::check("1", "qemu64", "512M", &t)
                            .map_err(|_| {
                                Error::usage(format!(
                                    "BILL_TIMEOUT must be a whole number of seconds, not '{t}'"
                                ))
                            })?
                            .timeout_s
                    }
                },
            };
            a.finish()?;
            if r.images.is_empty() {
                return Err(Error::usage("bill: give --image KIND.KERNEL=IMAGE"));
            }
            experiments::bill(&r)
        }
        "wakeup" => {
            let images = experiments::images(
                "wakeup --image",
                &a.values_of("image"),
                &["patched", "stock-probe"],
            )?;
            let r = experiments::WakeupRun {
                loader: a.path("loader")?,
                logs: a.path("logs")?,
                timeout_s: setting_timeout(&mut a, "WAKEUP_TIMEOUT")?,
                smp: smps(&mut a, "smp", "WAKEUP_SMP", "2 4")?,
                rounds: optional_count(&mut a, "rounds", "WAKEUP_ROUNDS")?,
                patched: image(&images, "wakeup", "patched")?,
                stock_probe: image(&images, "wakeup", "stock-probe")?,
                repeats: count(&mut a, "repeats", "WAKEUP_REPEATS", 1)?,
                summary: a.optional("summary").map(PathBuf::from),
            };
            a.finish()?;
            experiments::wakeup(&r)
        }
        "spread" => {
            let images = experiments::images(
                "spread --image",
                &a.values_of("image"),
                &["bench", "patched", "stock-probe"],
            )?;
            let phases = a
                .list("phases")
                .iter()
                .map(|p| {
                    p.parse::<u32>().map_err(|_| {
                        Error::usage(format!(
                            "SPREAD_PHASES must list whole numbers (ICOUNT_PHASE values), not '{p}'"
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let r = experiments::SpreadRun {
                loader: a.path("loader")?,
                out: a.path("out")?,
                runs: count(&mut a, "runs", "SPREAD_RUNS", 3)?,
                smp: smps(&mut a, "smp", "SPREAD_SMP", "2 4")?,
                wakeup_smp: smps(&mut a, "wakeup-smp", "SPREAD_WAKEUP_SMP", "2 4")?,
                wakeup_rounds: optional_count(&mut a, "wakeup-rounds", "SPREAD_WAKEUP_ROUNDS")?,
                bench: image(&images, "spread", "bench")?,
                patched: image(&images, "spread", "patched")?,
                stock_probe: image(&images, "spread", "stock-probe")?,
                phases,
            };
            a.finish()?;
            if !r.phases.is_empty() && std::env::var_os("QEMU_ICOUNT_SHIFT").is_none() {
                return Err(Error::usage(
                    "SPREAD_PHASES needs the repeatable mode (REPEATABLE=1)",
                ));
            }
            experiments::spread(&r)
        }
        "tlb-stale" => {
            let mut kernels = Vec::new();
            for spec in a.values_of("image") {
                let one = experiments::images(
                    "TLB_STALE_KERNELS",
                    std::slice::from_ref(&spec),
                    &["patched", "stock-probe", "stock"],
                )?;
                kernels.extend(one);
            }
            if kernels.is_empty() {
                return Err(Error::usage("tlb-stale: give --image KERNEL=IMAGE"));
            }
            let modes = apic_modes(&a.list("modes"), "TLB_STALE_MODES")?;
            let r = experiments::TlbStaleRun {
                loader: a.path("loader")?,
                logs: a.path("logs")?,
                timeout_s: setting_timeout(&mut a, "QEMU_TIMEOUT")?,
                smp: smps(&mut a, "smp", "TLB_STALE_SMP", "2 4")?,
                modes,
                kernels,
                summary: a
                    .optional("summary")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            };
            a.finish()?;
            experiments::tlb_stale(&r)
        }
        "shootdown" => {
            let images = experiments::images(
                "shootdown --image",
                &a.values_of("image"),
                &["patched", "stock-probe"],
            )?;
            let r = experiments::ShootdownRun {
                loader: a.path("loader")?,
                logs: a.path("logs")?,
                timeout_s: setting_timeout(&mut a, "SHOOTDOWN_TIMEOUT")?,
                smp: smps(&mut a, "smp", "SHOOTDOWN_SMP", "2 4 8")?,
                swaps: count(&mut a, "swaps", "SHOOTDOWN_SWAPS", 200)?,
                repeats: count(&mut a, "repeats", "SHOOTDOWN_REPEATS", 3)?,
                patched: image(&images, "shootdown", "patched")?,
                stock_probe: image(&images, "shootdown", "stock-probe")?,
                summary: a
                    .optional("summary")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from),
            };
            a.finish()?;
            experiments::shootdown(&r)
        }
        "rayon" => {
            let mut images = Vec::new();
            for spec in a.values_of("image") {
                let Some((kernel, image)) = spec
                    .split_once('=')
                    .filter(|(k, i)| !k.is_empty() && !i.is_empty())
                else {
                    return Err(Error::usage(format!(
                        "rayon --image: '{spec}' is not KERNEL=IMAGE"
                    )));
                };
                if !std::path::Path::new(image).is_file() {
                    return Err(Error::usage(format!(
                        "rayon --image: image {image} does not exist"
                    )));
                }
                images.push((kernel.to_string(), PathBuf::from(image)));
            }
            if images.is_empty() {
                return Err(Error::usage("rayon: give --image KERNEL=IMAGE"));
            }
            let (cpu, mem) = (a.required("cpu")?, a.required("mem")?);
            let timeout_s = setting_timeout(&mut a, "RAYON_TIMEOUT")?;
            qemu::BootArgs::check("1", &cpu, &mem, "1")?;
            let r = experiments::RayonRun {
                loader: a.path("loader")?,
                cpu,
                mem,
                timeout_s,
                logs: a.path("logs")?,
                prefix: a.required("prefix")?,
                smp: smps(&mut a, "smp", "RAYON_SMP", "1 2 4 8")?,
                args: a.optional("args").unwrap_or_default(),
                images,
                qemu_extra: std::mem::take(&mut a.rest),
            };
            a.finish()?;
            experiments::rayon(&r)
        }
        "report" => report_command(a),
        "host-compare" => {
            let c = host_compare::Compare::from_args(&mut a)?;
            a.finish()?;
            host_compare::run(&c)
        }
        other => Err(Error::usage(format!(
            "unknown command '{other}' (cargo xtask help lists them)"
        ))),
    }
}

/// The APIC modes named by a list option (`x2APIC`, `xAPIC`); an unknown one is a usage error
/// naming the make variable `setting`.
fn apic_modes(names: &[String], setting: &str) -> Result<Vec<ApicMode>> {
    names
        .iter()
        .map(|m| {
            ApicMode::parse(m).ok_or_else(|| {
                Error::usage(format!(
                    "{setting}: unknown APIC mode '{m}' (x2APIC or xAPIC)"
                ))
            })
        })
        .collect()
}

/// A list of vCPU counts from `--option`, `default` when absent; errors name `setting`.
fn smps(a: &mut Args, option: &str, setting: &str, default: &str) -> Result<Vec<u32>> {
    let mut words = a.list(option);
    if words.is_empty() {
        words = cli::split_list(default);
    }
    let list = cli::smp_list(setting, &words)?;
    if list.iter().any(|&n| n > 255) {
        return Err(Error::usage(format!(
            "{setting} must list vCPU counts from 1 to 255, not '{}'",
            words.join(" ")
        )));
    }
    Ok(list)
}

/// A positive whole number from `--option`, `default` when absent; errors name `setting`.
fn count(a: &mut Args, option: &str, setting: &str, default: u32) -> Result<u32> {
    match a.optional(option).filter(|s| !s.is_empty()) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::usage(format!(
                "{setting} must be a whole number from 1, not '{v}'"
            ))),
        },
    }
}

/// `--option`: None when absent or empty, else a positive whole number; errors name `setting`.
fn optional_count(a: &mut Args, option: &str, setting: &str) -> Result<Option<u32>> {
    if a.optional(option)
        .filter(|s| !s.trim().is_empty())
        .is_none()
    {
        return Ok(None);
    }
    count(a, option, setting, 1).map(Some)
}

/// `--timeout`, a whole number of seconds; errors name `setting`.
fn setting_timeout(a: &mut Args, setting: &str) -> Result<u64> {
    let t = a.required("timeout")?;
    qemu::BootArgs::check("1", "qemu64", "512M", &t)
        .map(|b| b.timeout_s)
        .map_err(|_| {
            Error::usage(format!(
                "{setting} must be a whole number of seconds, not '{t}'"
            ))
        })
}

/// The image named `name` among `--image NAME=F`; an error naming the missing one.
fn image(
    images: &std::collections::BTreeMap<String, PathBuf>,
    command: &str,
    name: &str,
) -> Result<PathBuf> {
    images
        .get(name)
        .cloned()
        .ok_or_else(|| Error::usage(format!("{command}: --image {name}=IMAGE is required")))
}

fn report_command(mut a: Args) -> Result<()> {
    let words = a.positional();
    let Some((kind, logs)) = words.split_first() else {
        return Err(Error::usage(
            "report: bill LOG... | rayon LOG... | gather --out F LOG... | bench --results DIR LOG...",
        ));
    };
    let logs: Vec<PathBuf> = logs.iter().map(PathBuf::from).collect();
    let read_all = |logs: &[PathBuf]| -> Result<Vec<(PathBuf, String)>> {
        if logs.is_empty() {
            return Err(Error::usage(format!(
                "report {kind}: name at least one log"
            )));
        }
        logs.iter()
            .map(|p| Ok((p.clone(), report::read(p)?)))
            .collect()
    };
    match kind.as_str() {
        "bill" => {
            a.finish()?;
            report::print_bill(&logs).map(|_| ())
        }
        "rayon" => {
            a.finish()?;
            print!("{}", report::rayon_table(&read_all(&logs)?));
            Ok(())
        }
        "gather" => {
            let out = a.path("out")?;
            a.finish()?;
            report::write_gathered(&out, &logs)
        }
        "bench" => {
            let results = a.path("results")?;
            a.finish()?;
            report::bench_report(&results, &logs)
        }
        other => Err(Error::usage(format!(
            "report: unknown table '{other}' (bill, rayon, gather or bench)"
        ))),
    }
}

fn kernel_series(mut a: Args) -> Result<()> {
    let words = a.positional();
    let Some((sub, dirs)) = words.split_first() else {
        return Err(Error::usage(
            "kernel-series: list DIR... | am --pristine DIR DIR... | repo --pristine DIR --dest DIR DIR... | export --repo DIR --from REV --to REV --dir DIR",
        ));
    };
    let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
    let need_dirs = |what: &str| {
        if dirs.is_empty() {
            Err(Error::usage(format!(
                "kernel-series {what}: name at least one patch directory"
            )))
        } else {
            Ok(())
        }
    };
    match sub.as_str() {
        "list" => {
            a.finish()?;
            need_dirs("list")?;
            for p in series::list(&dirs)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        "am" => {
            let pristine = a.path("pristine")?;
            a.finish()?;
            need_dirs("am")?;
            series::am(&pristine, &dirs)
        }
        "repo" => {
            let (pristine, dest) = (a.path("pristine")?, a.path("dest")?);
            a.finish()?;
            need_dirs("repo")?;
            series::repo(&pristine, &dest, &dirs)
        }
        "export" => {
            let (repo, from, to, dir) = (
                a.path("repo")?,
                a.required("from")?,
                a.required("to")?,
                a.path("dir")?,
            );
            a.finish()?;
            if !dirs.is_empty() {
                return Err(Error::usage(
                    "kernel-series export: the directory is --dir DIR",
                ));
            }
            series::export(&repo, &from, &to, &dir)
        }
        other => Err(Error::usage(format!(
            "kernel-series: unknown step '{other}' (list, am, repo or export)"
        ))),
    }
}
