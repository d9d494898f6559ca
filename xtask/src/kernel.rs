//! The kernel source: fetched from the crates registry with cargo alone, then a prepared copy per
//! variant with its patch directories' series applied.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Context, Error, Result};
use crate::series;
use crate::util;

/// The rustflags every kernel build here passes (the kernel's own build uses them).
pub const RUSTFLAGS: &str = "-Zmutable-noalias=no";

/// `cargo +TOOLCHAIN SUBCOMMAND` in the kernel source `src`, as the kernel archive and the
/// kernel's own tests are built: release, locked, x86_64-unknown-none with core and alloc built
/// from source, `rustflags` (separated by 0x1f), no default features but `features`. The caller
/// adds the target directory and what else its subcommand needs.
pub fn cargo(
    toolchain: &str,
    src: &Path,
    subcommand: &[&str],
    rustflags: &str,
    features: &str,
) -> Command {
    let mut command = util::cargo(toolchain);
    command
        .current_dir(src)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .args(subcommand)
        .args(["--release", "--locked", "--target", "x86_64-unknown-none"])
        .args([
            "-Zbuild-std=core,alloc",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .args(["--no-default-features", "--features", features]);
    command
}

/// Leaves a pristine copy of hermit-kernel VERSION's source in `dest`. A throw-away package whose
/// only dependency is the kernel: resolving it (`cargo metadata`) makes cargo download the
/// kernel's source (and its dependencies' sources, which the kernel build needs anyway) and name
/// where it is; the copy is taken out of the shared cache, so the build edits the copy, never the
/// cache.
pub fn fetch(toolchain: &str, version: &str, dest: &Path) -> Result<()> {
    let work = PathBuf::from(format!("{}.fetch", dest.display()));
    util::remove_dir(&work)?;
    util::remove_dir(dest)?;
    util::create_dir(&work.join("src"))?;
    util::write(
        &work.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-hermit-kernel\"\nversion = \"0.0.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\nhermit-kernel = \"={version}\"\n\n[workspace]\n"
        ),
    )?;
    util::write(&work.join("src/lib.rs"), "")?;

    println!("==> fetching hermit-kernel {version} from the crates registry");
    let metadata = util::output(
        util::cargo(toolchain)
            .env("CARGO_RESOLVER_INCOMPATIBLE_RUST_VERSIONS", "fallback")
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(work.join("Cargo.toml")),
    )?;
    let wanted = format!("/hermit-kernel-{version}/Cargo.toml");
    let manifest = metadata
        .split("\"manifest_path\":\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|path| path.ends_with(&wanted))
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Error::failed(format!(
                "cargo did not report the source of hermit-kernel {version}"
            ))
        })?;
    let source = manifest.parent().unwrap_or(Path::new("."));
    util::run(Command::new("cp").arg("-r").arg(source).arg(dest))?;
    for f in [".cargo-checksum.json", ".cargo_vcs_info.json"] {
        let _ = fs::remove_file(dest.join(f));
    }
    util::run(Command::new("chmod").args(["-R", "u+w"]).arg(dest))?;
    util::remove_dir(&work)?;
    println!("    kernel source: {}", dest.display());
    Ok(())
}

/// Makes `src` a copy of the pristine source with the series of each patch directory applied,
/// directory after directory. A patch missing from a `series`, or a name in it without its file,
/// stops it (`series::list`). The copy is built fresh in a scratch directory, then only files
/// whose content differs are written into `src`, so cargo rebuilds only what a patch change
/// really touched (a file a removed patch restores also gets a new mtime, so cargo sees it too).
pub fn prepare(pristine: &Path, src: &Path, patch_dirs: &[PathBuf]) -> Result<()> {
    let patches = series::list(patch_dirs)?;
    let fresh = PathBuf::from(format!("{}.fresh", src.display()));
    util::remove_dir(&fresh)?;
    if let Some(parent) = fresh.parent() {
        util::create_dir(parent)?;
    }
    util::run(Command::new("cp").arg("-r").arg(pristine).arg(&fresh))?;
    for p in &patches {
        let dir = p.parent().map(util::file_name).unwrap_or_default();
        println!("    applying {dir}/{}", util::file_name(p));
        let input = fs::File::open(p).context(|| format!("cannot read {}", p.display()))?;
        let applied = Command::new("patch")
            .args(["-s", "-p1", "-d"])
            .arg(&fresh)
            .arg("--no-backup-if-mismatch")
            .stdin(Stdio::from(input))
            .status()
            .context(|| "cannot run patch".into())?;
        if !applied.success() {
            return Err(Error::failed(format!(
                "{} does not apply on top of the patches before it",
                util::file_name(p)
            )));
        }
    }
    // The copy lives inside the project's tree: give it a workspace of its own.
    let manifest = fresh.join("Cargo.toml");
    let text =
        fs::read_to_string(&manifest).context(|| format!("cannot read {}", manifest.display()))?;
    if !text.lines().any(|l| l.starts_with("[workspace]")) {
        util::write(&manifest, format!("{text}\n[workspace]\n"))?;
    }

    util::create_dir(src)?;
    for rel in util::files_under(&fresh)? {
        let (from, to) = (fresh.join(&rel), src.join(&rel));
        let same = match (fs::read(&from), fs::read(&to)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            if let Some(parent) = to.parent() {
                util::create_dir(parent)?;
            }
            fs::copy(&from, &to).context(|| format!("cannot write {}", to.display()))?;
        }
    }
    // Files that no longer exist in the fresh copy (e.g. added by a removed patch).
    for rel in util::files_under(src)? {
        if !fresh.join(&rel).exists() {
            let _ = fs::remove_file(src.join(&rel));
        }
    }
    util::remove_dir(&fresh)
}
