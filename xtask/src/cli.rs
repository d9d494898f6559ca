//! Command lines: a subcommand, named options (`--name value` or `--name=value`), and what follows
//! `--` passed on untouched. Every option takes a value; an option the command does not read is
//! an error naming it, never ignored.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

use crate::error::{Error, Result};

/// One command line after its subcommand.
pub struct Args {
    command: String,
    options: Vec<(String, String)>,
    positional: Vec<String>,
    /// Everything after `--`.
    pub rest: Vec<String>,
    read: BTreeSet<String>,
    positional_read: bool,
}

impl Args {
    /// Splits `argv` (without the subcommand) into options, positional words and the rest.
    pub fn parse(command: &str, argv: &[String]) -> Result<Args> {
        let mut args = Args {
            command: command.to_string(),
            options: Vec::new(),
            positional: Vec::new(),
            rest: Vec::new(),
            read: BTreeSet::new(),
            positional_read: false,
        };
        let mut words = argv.iter();
        while let Some(word) = words.next() {
            if word == "--" {
                args.rest = words.cloned().collect();
                break;
            }
            if let Some(name) = word.strip_prefix("--") {
                let (name, value) = match name.split_once('=') {
                    Some((name, value)) => (name.to_string(), value.to_string()),
                    None => {
                        let value = words.next().ok_or_else(|| {
                            Error::usage(format!("{command}: option --{name} needs a value"))
                        })?;
                        (name.to_string(), value.clone())
                    }
                };
                args.options.push((name, value));
            } else {
                args.positional.push(word.clone());
            }
        }
        Ok(args)
    }

    fn values(&mut self, name: &str) -> Vec<String> {
        self.read.insert(name.to_string());
        self.options
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every value of a repeatable option, as given.
    pub fn values_of(&mut self, name: &str) -> Vec<String> {
        self.values(name)
    }

    /// The option's value, if given (the last one wins).
    pub fn optional(&mut self, name: &str) -> Option<String> {
        self.values(name).pop()
    }

    /// The option's value; an error naming it if it is missing.
    pub fn required(&mut self, name: &str) -> Result<String> {
        self.optional(name)
            .ok_or_else(|| Error::usage(format!("{}: --{name} is required", self.command)))
    }

    pub fn path(&mut self, name: &str) -> Result<PathBuf> {
        self.required(name).map(PathBuf::from)
    }

    /// The option parsed as `T`; an error naming the option and the value it could not read.
    pub fn parsed<T: FromStr>(&mut self, name: &str, default: T) -> Result<T>
    where
        T::Err: Display,
    {
        match self.optional(name) {
            None => Ok(default),
            Some(value) => value
                .trim()
                .parse()
                .map_err(|e| Error::usage(format!("{}: --{name} '{value}': {e}", self.command))),
        }
    }

    /// Every value of a repeatable option, each split at spaces and commas ("2 4", "2,4" and
    /// `--smp 2 --smp 4` are the same list).
    pub fn list(&mut self, name: &str) -> Vec<String> {
        split_list(&self.values(name).join(" "))
    }

    /// The positional words (those not after `--`).
    pub fn positional(&mut self) -> Vec<String> {
        self.positional_read = true;
        self.positional.clone()
    }

    /// Fails on an option or positional word the command did not read.
    pub fn finish(self) -> Result<()> {
        if let Some((name, _)) = self.options.iter().find(|(n, _)| !self.read.contains(n)) {
            return Err(Error::usage(format!(
                "{}: unknown option --{name} (cargo xtask help)",
                self.command
            )));
        }
        if !self.positional_read && !self.positional.is_empty() {
            return Err(Error::usage(format!(
                "{}: unexpected argument '{}' (options are --name value; cargo xtask help)",
                self.command, self.positional[0]
            )));
        }
        Ok(())
    }
}

/// Words of a list given as one string: separated by spaces or commas, empty words dropped.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// A list of vCPU counts, each a whole number of at least 1, named after its setting.
pub fn smp_list(setting: &str, words: &[String]) -> Result<Vec<u32>> {
    words
        .iter()
        .map(|w| match w.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(Error::usage(format!(
                "{setting} must list vCPU counts (whole numbers from 1), not '{w}'"
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<String> {
        s.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn options_lists_and_the_rest() {
        let argv = words(&[
            "--smp", "2 4", "--smp=8", "--cpu", "qemu64", "--", "-accel", "tcg",
        ]);
        let mut a = Args::parse("t", &argv).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(a.list("smp"), ["2", "4", "8"]);
        assert_eq!(a.optional("cpu").as_deref(), Some("qemu64"));
        assert_eq!(a.rest, ["-accel", "tcg"]);
        assert!(a.finish().is_ok());
    }

    #[test]
    fn unknown_missing_and_valueless_options_are_errors() {
        let a = Args::parse("t", &words(&["--smpp", "2"])).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(a
            .finish()
            .is_err_and(|e| e.message.contains("unknown option --smpp")));
        assert!(Args::parse("t", &words(&["--smp"])).is_err_and(|e| e.status == 2));
        let mut a = Args::parse("t", &[]).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(a
            .required("loader")
            .is_err_and(|e| e.message == "t: --loader is required"));
        let a = Args::parse("t", &words(&["stray"])).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(a.finish().is_err());
        assert!(smp_list("FPU_TEST_SMP", &words(&["2", "0"])).is_err());
    }
}
