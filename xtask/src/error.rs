//! The one error type: a message for the user and the exit status it ends the task with.

use std::fmt;

pub struct Error {
    /// Printed as `error: MESSAGE`; empty when the task already said what failed.
    pub message: String,
    pub status: u8,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Bad input (a setting, an option): exit status 2.
    pub fn usage(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            status: 2,
        }
    }

    /// Something failed: exit status 1.
    pub fn failed(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
            status: 1,
        }
    }

    /// Ends the task with `status`; what failed was already printed.
    pub fn exit(status: u8) -> Error {
        Error {
            message: String::new(),
            status,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (status {})", self.message, self.status)
    }
}

/// Adds what was being done to an I/O error.
pub trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::failed(format!("{}: {e}", what())))
    }
}
