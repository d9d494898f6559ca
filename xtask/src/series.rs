//! The kernel patch series: directories of `git format-patch` files, each with a `series` file
//! that names them in the order they apply (one file name per line; blank lines and text after
//! '#' are ignored).
//! - `list`: the patch paths in order, after checking that every name in each `series` is a file
//!   there and every *.patch there is named in its `series`;
//! - `am`: apply the series, directory after directory, with plain `git am` to a copy of the
//!   pristine kernel source committed in a scratch git repository (the machine's git identity and
//!   configuration are not used);
//! - `repo`: the same, leaving the repository to edit: one commit per patch, tag `pristine` on the
//!   published source, and a tag named after each directory on its last patch;
//! - `export`: write the commits FROM..TO of a repository into a directory with
//!   `git format-patch` and list them in its `series` (the *.patch files there before are
//!   replaced; the series file's leading comment lines are kept).

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Context, Error, Result};
use crate::util::{self, Scratch};

/// The patches of one directory's series, in order, as paths.
pub fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::failed(format!(
            "no patch directory {}",
            dir.display()
        )));
    }
    let dir = util::absolute(dir)?;
    let series = dir.join("series");
    let text = fs::read_to_string(&series).map_err(|_| {
        Error::failed(format!(
            "{} is missing: every patch directory lists its patches in a 'series' file",
            series.display()
        ))
    })?;
    let mut named = BTreeSet::new();
    let mut patches = Vec::new();
    for line in text.lines() {
        let name: String = line
            .split('#')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if name.is_empty() {
            continue;
        }
        if !named.insert(name.clone()) {
            return Err(Error::failed(format!(
                "{} names {name} twice",
                series.display()
            )));
        }
        let path = dir.join(&name);
        if !path.is_file() {
            return Err(Error::failed(format!(
                "{} names {name}, which is not in {}",
                series.display(),
                dir.display()
            )));
        }
        patches.push(path);
    }
    for entry in fs::read_dir(&dir).context(|| format!("cannot read {}", dir.display()))? {
        let name = entry
            .context(|| format!("cannot read {}", dir.display()))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".patch") && !named.contains(&name) {
            return Err(Error::failed(format!(
                "{} is not named in {} (add it there, in its place, or remove the file)",
                dir.join(&name).display(),
                series.display()
            )));
        }
    }
    Ok(patches)
}

/// The patches of every directory, directory after directory.
pub fn list(dirs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut all = Vec::new();
    for dir in dirs {
        all.extend(list_dir(dir)?);
    }
    Ok(all)
}

/// git with only these settings: no system or user configuration, a throw-away identity.
fn git(repo: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .arg("-C")
        .arg(repo)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "series check")
        .env("GIT_AUTHOR_EMAIL", "series-check@invalid")
        .env("GIT_COMMITTER_NAME", "series check")
        .env("GIT_COMMITTER_EMAIL", "series-check@invalid")
        .env("GIT_AUTHOR_DATE", "2000-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2000-01-01T00:00:00Z");
    command
}

fn dir_name(dir: &Path) -> String {
    util::file_name(dir)
}

/// A git repository at `dest`: the pristine source committed, then every directory's series
/// applied with `git am`.
fn am_into(pristine: &Path, dest: &Path, dirs: &[PathBuf]) -> Result<()> {
    if !pristine.is_dir() {
        return Err(Error::failed(format!(
            "no pristine kernel source at {}",
            pristine.display()
        )));
    }
    list(dirs)?;
    let pristine = util::absolute(pristine)?;
    util::remove_dir(dest)?;
    if let Some(parent) = dest.parent() {
        util::create_dir(parent)?;
    }
    util::run(Command::new("cp").arg("-r").arg(&pristine).arg(dest))?;
    let _ = fs::remove_file(dest.join(".fetched"));
    util::run(git(dest).args(["-c", "init.defaultBranch=main", "init", "-q"]))?;
    util::run(git(dest).args(["add", "-A", "-f"]))?;
    util::run(git(dest).args([
        "-c",
        "commit.gpgsign=false",
        "commit",
        "-q",
        "-m",
        "hermit-kernel as published",
    ]))?;
    util::run(git(dest).args(["tag", "pristine"]))?;
    for dir in dirs {
        let patches = list_dir(dir)?;
        for p in &patches {
            let applied = git(dest)
                .args(["-c", "commit.gpgsign=false", "am", "-q"])
                .arg(p)
                .status()
                .context(|| "cannot run git am".into())?;
            if !applied.success() {
                return Err(Error::failed(format!(
                    "git am: {}/{} does not apply on top of the patches before it",
                    dir_name(dir),
                    util::file_name(p)
                )));
            }
        }
        util::run(git(dest).arg("tag").arg(dir_name(dir)))?;
        println!(
            "    git am: {}: {} patches apply in order",
            dir_name(dir),
            patches.len()
        );
    }
    Ok(())
}

/// `git am` of every directory's series onto a scratch copy of the pristine source.
pub fn am(pristine: &Path, dirs: &[PathBuf]) -> Result<()> {
    let scratch = Scratch::new("series")?;
    am_into(pristine, &scratch.0.join("kernel"), dirs)
}

/// The same, leaving the repository at `dest` to change the series in.
pub fn repo(pristine: &Path, dest: &Path, dirs: &[PathBuf]) -> Result<()> {
    let have_identity = Command::new("git")
        .args(["config", "user.email"])
        .output()
        .map(|o| o.status.success() && !o.stdout.is_empty())
        .unwrap_or(false);
    am_into(pristine, dest, dirs)?;
    // Commits made there need an identity: the machine's if it has one, else a placeholder.
    if !have_identity {
        util::run(Command::new("git").arg("-C").arg(dest).args([
            "config",
            "user.name",
            "kernel series",
        ]))?;
        util::run(Command::new("git").arg("-C").arg(dest).args([
            "config",
            "user.email",
            "kernel-series@invalid",
        ]))?;
    }
    let mut tags = vec!["pristine".to_string()];
    tags.extend(dirs.iter().map(|d| dir_name(d)));
    println!(
        "    repository: {} (tags: {})",
        dest.display(),
        tags.join(" ")
    );
    Ok(())
}

/// Writes the commits FROM..TO of `repo` into `dir` and lists them in its `series`.
pub fn export(repo: &Path, from: &str, to: &str, dir: &Path) -> Result<()> {
    let dir = util::create_dir(dir)?;
    let series = dir.join("series");
    // The series file's leading comment lines are kept.
    let header: Vec<String> = fs::read_to_string(&series)
        .unwrap_or_default()
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(str::to_string)
        .collect();
    for entry in fs::read_dir(&dir).context(|| format!("cannot read {}", dir.display()))? {
        let path = entry
            .context(|| format!("cannot read {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "patch") {
            fs::remove_file(&path).context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    util::run(
        git(repo)
            .args([
                "format-patch",
                "-q",
                "--no-signature",
                "--zero-commit",
                "-N",
                "-o",
            ])
            .arg(&dir)
            .arg(format!("{from}..{to}")),
    )?;
    let mut names: Vec<String> = fs::read_dir(&dir)
        .context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".patch"))
        .collect();
    names.sort();
    let mut text = if header.is_empty() {
        "# Applied in this order (cargo xtask kernel-series list checks it).\n".to_string()
    } else {
        header.join("\n") + "\n"
    };
    for n in &names {
        text.push_str(n);
        text.push('\n');
    }
    util::write(&series, text)?;
    println!("    {}: {} patches", dir.display(), names.len());
    Ok(())
}
