//! Small helpers: running programs, the nested cargo's environment, files and timing.

use std::env;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::error::{Context, Error, Result};

/// The repository root (this crate lives in `xtask/` under it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The shell scripts that stay shell (`hermit-app/scripts`).
pub fn scripts_dir() -> PathBuf {
    repo_root().join("hermit-app/scripts")
}

/// A command with the outer cargo's settings removed: a cargo started from make inside another
/// cargo (or from a shell with RUSTFLAGS set, or from `cargo xtask` itself) would inherit the
/// outer build's settings; the nested builds must see only their own.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = (key.starts_with("CARGO") && key != "CARGO_HOME")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTDOC")
            || key.starts_with("__CARGO")
            || key == "RUSTFLAGS"
            || key == "RUSTUP_TOOLCHAIN";
        if outer {
            command.env_remove(key);
        }
    }
    command
}

/// `cargo +TOOLCHAIN` with a clean environment.
pub fn cargo(toolchain: &str) -> Command {
    let mut command = clean_command("cargo");
    command.arg(format!("+{toolchain}"));
    command
}

/// Runs a command to its end; an error naming it if it could not start or failed.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .context(|| format!("cannot run {}", describe(command)))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::failed(format!(
            "{} failed ({status})",
            describe(command)
        )))
    }
}

/// Runs a command and returns its standard output (stderr goes to the terminal).
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .context(|| format!("cannot run {}", describe(command)))?;
    if !out.status.success() {
        return Err(Error::failed(format!(
            "{} failed ({})",
            describe(command),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    let mut s = words.join(" ");
    if s.len() > 160 {
        s.truncate(157);
        s.push_str("...");
    }
    s
}

/// The program's path if it is on PATH (`command -v`).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

pub fn require_program(program: &str, hint: &str) -> Result<()> {
    match which(program) {
        Some(_) => Ok(()),
        None => Err(Error::failed(format!("{program} not found{hint}"))),
    }
}

/// A log read as text: invalid UTF-8 replaced, carriage returns dropped.
pub fn read_log(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).replace('\r', "")
}

pub fn create_dir(path: &Path) -> Result<PathBuf> {
    fs::create_dir_all(path).context(|| format!("cannot create {}", path.display()))?;
    absolute(path)
}

/// An absolute form of an existing path (symbolic links resolved).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    fs::canonicalize(path).context(|| format!("{}", path.display()))
}

pub fn remove_dir(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::failed(format!(
            "cannot remove {}: {e}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

pub fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    fs::write(path, contents).context(|| format!("cannot write {}", path.display()))
}

/// A new, empty scratch directory under the system's temporary directory; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = env::temp_dir().join(format!("xtask-{what}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Seconds since `start`, one decimal, as the scripts print them.
pub fn elapsed(start: Instant) -> String {
    format!("{:.1}", start.elapsed().as_secs_f64())
}

/// The file name of a path, for messages.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Every file under `dir` (recursively, symbolic links not followed), relative to it.
pub fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let here = root.join(rel);
        for entry in fs::read_dir(&here).context(|| format!("cannot read {}", here.display()))? {
            let entry = entry.context(|| format!("cannot read {}", here.display()))?;
            let kind = entry
                .file_type()
                .context(|| format!("cannot read {}", entry.path().display()))?;
            let rel = rel.join(entry.file_name());
            if kind.is_dir() {
                walk(root, &rel, out)?;
            } else if kind.is_file() {
                out.push(rel);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if dir.is_dir() {
        walk(dir, Path::new(""), &mut out)?;
    }
    Ok(out)
}
