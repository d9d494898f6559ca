//! The loader (stable toolchain) and the applications (the kernel's pinned nightly), and a
//! self-contained copy of this machine's QEMU for a machine with none.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::cli;
use crate::error::{Context, Error, Result};
use crate::util::{self, elapsed};

/// The project's multiboot loader, built with the stable toolchain (its x86_64-unknown-none
/// target is installed by `scripts/toolchain.sh loader`).
pub fn loader(loader_dir: &Path, target_dir: &Path) -> Result<()> {
    util::run(Command::new(util::scripts_dir().join("toolchain.sh")).arg("loader"))?;
    let target_dir = util::create_dir(target_dir)?;
    let start = Instant::now();
    println!("==> building loader (stable, x86_64-unknown-none; ~10 s clean)");
    util::run(
        util::cargo("stable")
            .current_dir(loader_dir)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "x86_64-unknown-none",
                "--target-dir",
            ])
            .arg(&target_dir),
    )?;
    println!(
        "    loader: {} s: {}",
        elapsed(start),
        target_dir
            .join("x86_64-unknown-none/release/ipiq-loader")
            .display()
    );
    Ok(())
}

/// One application under hermit-app/apps/, linked with the kernel archive in `kernel_dir`; the
/// image is TARGET_DIR/x86_64-unknown-hermit/release/<app>. `features`: the application's cargo
/// features (space- or comma-separated), none if empty.
pub fn app(
    toolchain: &str,
    app_dir: &Path,
    kernel_dir: &Path,
    target_dir: &Path,
    features: &str,
) -> Result<()> {
    if !app_dir.join("Cargo.toml").is_file() {
        return Err(Error::failed(format!(
            "no application at {}",
            app_dir.display()
        )));
    }
    let kernel_dir = util::absolute(kernel_dir)?;
    let target_dir = util::create_dir(target_dir)?;
    let features = cli::split_list(features).join(",");
    let start = Instant::now();
    println!(
        "==> building application {}{} (~25 s clean: std from source; <1 s relink)",
        util::file_name(app_dir),
        if features.is_empty() {
            String::new()
        } else {
            format!(" (features: {features})")
        }
    );
    let mut command = util::cargo(toolchain);
    command
        .current_dir(app_dir)
        .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
        .env("HERMIT_KERNEL_DIR", &kernel_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "x86_64-unknown-hermit",
        ])
        .args(["-Zbuild-std=std,panic_abort", "--target-dir"])
        .arg(&target_dir);
    if !features.is_empty() {
        command.args(["--features", &features]);
    }
    util::run(&mut command)?;
    println!("    application: {} s", elapsed(start));
    Ok(())
}

/// Makes a self-contained copy of this machine's qemu-system-x86_64 in `out` for a machine
/// without QEMU or network (device-scaling.sh): the binary, every shared library it loads (the
/// dynamic loader and libc included, so the target's own glibc version does not matter) and the
/// x86 firmware it reads, plus a bash wrapper that starts it with those (about 60 MB).
pub fn bundle_qemu(out: &Path) -> Result<()> {
    let qemu = util::which("qemu-system-x86_64")
        .ok_or_else(|| Error::failed("qemu-system-x86_64 not found (make qemu-install)"))?;
    let qemu = util::absolute(&qemu)?;
    util::remove_dir(out)?;
    let lib = util::create_dir(&out.join("lib"))?;
    let share = util::create_dir(&out.join("share"))?;
    let out = util::absolute(out)?;
    let copy = |from: &Path, to: &Path| -> Result<()> {
        fs::copy(from, to)
            .map(|_| ())
            .context(|| format!("cannot copy {} to {}", from.display(), to.display()))
    };
    copy(&qemu, &lib.join("qemu-system-x86_64.bin"))?;

    // Libraries: "name => /path (addr)" lines, and the loader's own "/lib64/ld-linux... (addr)".
    let mut dynamic_loader = None;
    for line in util::output(Command::new("ldd").arg(&qemu))?.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [name, "=>", path, ..] if Path::new(path).is_file() => {
                copy(Path::new(path), &lib.join(name))?;
            }
            [path, ..] if path.starts_with('/') && path.contains("ld-linux") => {
                let name = util::file_name(Path::new(path));
                copy(Path::new(path), &lib.join(&name))?;
                dynamic_loader = Some(name);
            }
            _ => {}
        }
    }
    let dynamic_loader =
        dynamic_loader.ok_or_else(|| Error::failed("no dynamic loader in ldd's output"))?;

    // Firmware an x86 guest with -kernel/-initrd (multiboot) and the default devices reads: the
    // SeaBIOS image, the option ROMs for multiboot and linuxboot, kvmvapic, the default VGA BIOS.
    // QEMU's own search path (-L help), first hit wins, as in QEMU.
    let mut datadirs: Vec<PathBuf> = Command::new(&qemu)
        .args(["-L", "help"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    if datadirs.is_empty() {
        datadirs = vec!["/usr/share/qemu".into(), "/usr/share/seabios".into()];
    }
    for f in [
        "bios-256k.bin",
        "bios.bin",
        "multiboot_dma.bin",
        "multiboot.bin",
        "linuxboot_dma.bin",
        "linuxboot.bin",
        "kvmvapic.bin",
        "pvh.bin",
        "vgabios-stdvga.bin",
        "vgabios.bin",
    ] {
        if let Some(d) = datadirs.iter().find(|d| d.join(f).exists()) {
            copy(&d.join(f), &share.join(f))?;
        }
    }
    if !share.join("bios-256k.bin").is_file() {
        let dirs: Vec<String> = datadirs.iter().map(|d| d.display().to_string()).collect();
        return Err(Error::failed(format!(
            "no bios-256k.bin in {}",
            dirs.join(" ")
        )));
    }

    let version = util::output(Command::new(&qemu).arg("--version"))?;
    let version = version.lines().next().unwrap_or("QEMU");
    let wrapper = out.join("qemu-system-x86_64");
    util::write(
        &wrapper,
        format!(
            "#!/usr/bin/env bash\n# Bundled {version}: this machine's QEMU with its own libraries and firmware.\nd=\"$(dirname \"$(readlink -f \"${{BASH_SOURCE[0]}}\")\")\"\nexec \"$d/lib/{dynamic_loader}\" --library-path \"$d/lib\" \"$d/lib/qemu-system-x86_64.bin\" -L \"$d/share\" \"$@\"\n"
        ),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))
        .context(|| format!("cannot make {} executable", wrapper.display()))?;
    let size: u64 = util::files_under(&out)?
        .iter()
        .filter_map(|f| fs::metadata(out.join(f)).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "==> {}: {} MB, run {}",
        out.display(),
        size / 1_000_000,
        wrapper.display()
    );
    Ok(())
}
