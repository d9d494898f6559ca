//! The kernel archive libhermit.a the way an application links it:
//! 1. the kernel (cargo, x86_64-unknown-none, core/alloc built from source),
//! 2. the export step: every symbol the application must not see renamed,
//! 3. hermit-builtins (math and memory functions), renamed the same way and appended,
//! 4. ELF OS/ABI 255 (standalone) in every member, which loaders check in the linked image.
//!
//! Cargo decides what to recompile; steps 2-4 run only when an input archive, the feature set or
//! this code changed.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, UNIX_EPOCH};

use crate::error::{Context, Error, Result};
use crate::kernel;
use crate::util::{self, elapsed};

pub struct KernelBuild {
    pub toolchain: String,
    pub src: PathBuf,
    pub out: PathBuf,
    pub features: String,
    pub builtins_src: PathBuf,
    pub builtins_target: PathBuf,
}

/// The llvm-tools binaries (llvm-nm, llvm-objcopy, llvm-ar) of a toolchain.
fn llvm_bin_dir(toolchain: &str) -> Result<PathBuf> {
    let sysroot = util::output(
        util::clean_command("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]),
    )?;
    Ok(Path::new(sysroot.trim()).join("lib/rustlib/x86_64-unknown-linux-gnu/bin"))
}

/// "mtime.size" of a file, as the up-to-date check compares them.
fn stamp(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).context(|| format!("{} was not built", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(format!("{mtime}.{}", meta.len()))
}

pub fn build(b: &KernelBuild) -> Result<()> {
    let out = util::create_dir(&b.out)?;
    let builtins_target = util::create_dir(&b.builtins_target)?;
    let bin = llvm_bin_dir(&b.toolchain)?;

    // Unwind tables (.eh_frame) only describe frames for debuggers, the code is the same: they
    // let gdb unwind the kernel's frames (make qemu-debug). Flags are separated by 0x1f.
    let start = Instant::now();
    println!(
        "==> building kernel {} [features {}] (~40 s clean, ~1 s when up to date)",
        util::file_name(&out),
        b.features
    );
    util::run(
        kernel::cargo(
            &b.toolchain,
            &b.src,
            &["build"],
            &format!("{}\x1f-Cforce-unwind-tables=yes", kernel::RUSTFLAGS),
            &b.features,
        )
        .arg("--target-dir")
        .arg(out.join("target")),
    )?;
    println!("    kernel: {} s", elapsed(start));

    let start = Instant::now();
    println!("==> building hermit-builtins (~15 s clean)");
    util::run(
        util::cargo(&b.toolchain)
            .current_dir(&b.builtins_src)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                "x86_64-unknown-hermit",
            ])
            .args(["-Zbuild-std=core", "--target-dir"])
            .arg(&builtins_target),
    )?;
    println!("    builtins: {} s", elapsed(start));

    let kernel_raw = out.join("target/x86_64-unknown-none/release/libhermit.a");
    let builtins_raw = builtins_target.join("x86_64-unknown-hermit/release/libhermit_builtins.a");
    let last = out.join("libhermit.a");
    let inputs_file = out.join("libhermit.a.inputs");
    let mut code = DefaultHasher::new();
    include_str!("archive.rs").hash(&mut code);
    let inputs = format!(
        "features={} kernel={} builtins={} xtask={:016x}",
        b.features,
        stamp(&kernel_raw)?,
        stamp(&builtins_raw)?,
        code.finish()
    );
    if last.is_file()
        && fs::read_to_string(&inputs_file).ok().as_deref() == Some(&*format!("{inputs}\n"))
    {
        println!("    {} is up to date", last.display());
        return Ok(());
    }

    let start = Instant::now();
    println!("==> exporting kernel symbols, appending builtins, setting OS/ABI");
    let _ = fs::remove_file(&last);
    let _ = fs::remove_file(&inputs_file);
    let tmp = out.join("libhermit.a.tmp");
    let builtins = out.join("libhermit_builtins.a");
    export(&bin, &kernel_raw, &tmp, Exports::Kernel)?;
    export(&bin, &builtins_raw, &builtins, Exports::Builtins)?;
    util::run(
        Command::new(bin.join("llvm-ar"))
            .arg("qL")
            .arg(&tmp)
            .arg(&builtins),
    )?;
    util::run(Command::new(bin.join("llvm-ar")).arg("s").arg(&tmp))?;
    let members = set_os_abi(&tmp)?;
    println!(
        "    OS/ABI 255 set in {members} members ({} s)",
        elapsed(start)
    );
    fs::rename(&tmp, &last).context(|| format!("cannot write {}", last.display()))?;
    util::write(&inputs_file, format!("{inputs}\n"))?;
    println!("    kernel archive: {}", last.display());
    Ok(())
}

/// Which symbols an archive keeps global.
#[derive(Clone, Copy)]
enum Exports {
    /// `_start`, `__bss_start`, `mcount`, `runtime_entry`, and the `sys_*` symbols defined in the
    /// kernel crate's own members (members named hermit-*); prefix "hermit".
    Kernel,
    /// The unmangled C functions defined in the builtins crate's own members (members named
    /// hermit_builtins-*), but not Rust runtime hooks; prefix "hermit_builtins".
    Builtins,
}

impl Exports {
    fn prefix(self) -> &'static str {
        match self {
            Exports::Kernel => "hermit",
            Exports::Builtins => "hermit_builtins",
        }
    }

    fn keeps(self, member: &str, name: &str) -> bool {
        match self {
            Exports::Kernel => {
                matches!(name, "_start" | "__bss_start" | "mcount" | "runtime_entry")
                    || (name.starts_with("sys_") && member.starts_with("hermit-"))
            }
            Exports::Builtins => {
                member.starts_with("hermit_builtins-")
                    && !["_ZN", "_R", "rust_", "__rust"]
                        .iter()
                        .any(|p| name.starts_with(p))
            }
        }
    }
}

/// The new name of a hidden symbol: mangled names (_ZN...) get the prefix as an outer path
/// component, so they stay demanglable; all other names get "PREFIX_".
fn renamed(prefix: &str, name: &str) -> String {
    match name.strip_prefix("_ZN") {
        Some(rest) => format!("_ZN{}{prefix}{rest}", prefix.len()),
        None => format!("{prefix}_{name}"),
    }
}

/// Renames every global symbol of a static archive except the ones it exports, so that the
/// kernel's (or the builtins') private copies of core, alloc and compiler-builtins cannot clash
/// with the application's own.
fn export(bin: &Path, input: &Path, output: &Path, exports: Exports) -> Result<()> {
    let listing = util::output(
        Command::new(bin.join("llvm-nm"))
            .args(["--defined-only", "--extern-only", "--print-file-name"])
            .arg(input)
            .stderr(std::process::Stdio::null()),
    )?;
    // "ARCHIVE.a:MEMBER.o: ADDRESS TYPE NAME"
    let mut defined = BTreeSet::new();
    let mut keep = BTreeSet::new();
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(first), Some(name)) = (fields.next(), line.split_whitespace().last()) else {
            continue;
        };
        let member = match first.rfind(".a:") {
            Some(at) => &first[at + 3..],
            None => first,
        };
        let member = member.strip_suffix(':').unwrap_or(member);
        defined.insert(name.to_string());
        if exports.keeps(member, name) {
            keep.insert(name.to_string());
        }
    }
    let renames: BTreeMap<&String, String> = defined
        .iter()
        .filter(|n| !keep.contains(*n))
        .map(|n| (n, renamed(exports.prefix(), n)))
        .collect();
    let renames_file = PathBuf::from(format!("{}.renames", output.display()));
    let text: String = renames
        .iter()
        .map(|(old, new)| format!("{old} {new}\n"))
        .collect();
    util::write(&renames_file, text)?;
    util::run(
        Command::new(bin.join("llvm-objcopy"))
            .arg(format!("--redefine-syms={}", renames_file.display()))
            .arg(input)
            .arg(output),
    )?;
    println!(
        "    {}: kept {} global symbols, renamed {}",
        util::file_name(input),
        defined.len() - renames.len(),
        renames.len()
    );
    Ok(())
}

/// Sets the ELF OS/ABI byte (offset 7) of every ELF member of a GNU ar archive to 255: after
/// "!<arch>\n", each member is a 60-byte header (size in bytes 48-57, decimal) and its data,
/// padded to an even length. Returns how many members it set.
fn set_os_abi(path: &Path) -> Result<usize> {
    let mut bytes = fs::read(path).context(|| format!("cannot read {}", path.display()))?;
    if !bytes.starts_with(b"!<arch>\n") {
        return Err(Error::failed(format!(
            "{} is not an ar archive",
            path.display()
        )));
    }
    let mut offset = 8;
    let mut members = 0;
    while offset + 60 <= bytes.len() {
        let size_field = String::from_utf8_lossy(&bytes[offset + 48..offset + 58])
            .trim()
            .to_string();
        let length: usize = size_field.parse().map_err(|_| {
            Error::failed(format!(
                "{}: bad member size '{size_field}' at offset {offset}",
                path.display()
            ))
        })?;
        let data = offset + 60;
        if bytes.len() >= data + 8 && bytes[data..data + 4] == *b"\x7fELF" {
            bytes[data + 7] = 255;
            members += 1;
        }
        offset = data + length + length % 2;
    }
    util::write(path, bytes)?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_symbols_get_the_prefix() {
        assert_eq!(
            renamed("hermit", "_ZN4core3fmt5write17h0E"),
            "_ZN6hermit4core3fmt5write17h0E"
        );
        assert_eq!(
            renamed("hermit_builtins", "memcpy"),
            "hermit_builtins_memcpy"
        );
    }

    #[test]
    fn exports_follow_the_member() {
        assert!(Exports::Kernel.keeps("hermit-abc.o", "sys_ipiq_send"));
        assert!(!Exports::Kernel.keeps("ipiq-abc.o", "sys_ipiq_send"));
        assert!(Exports::Kernel.keeps("core-x.o", "_start"));
        assert!(Exports::Builtins.keeps("hermit_builtins-x.o", "memcpy"));
        assert!(!Exports::Builtins.keeps("hermit_builtins-x.o", "rust_begin_unwind"));
    }
}
