//! Errors of the public API. Nothing in ipiq panics on bad input: it returns one of these.

use core::fmt;

use crate::CpuId;

/// Why an ipiq operation did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The core index is not below the machine's core count.
    NoSuchCpu(CpuId),
    /// The target core has not been brought online (or was stopped).
    CpuOffline(CpuId),
    /// `try_send`: the FIFO is at least 2/3 full; nothing was queued.
    WouldBlock,
    /// A set of cores was empty (or held only offline cores).
    EmptySet,
    /// `wait` for a sequence number that was never issued on that FIFO.
    InvalidSequence,
    /// The target did not make progress within the configured bound (wait, FIFO full, cpusync).
    /// What was accepted before stays queued and still runs once the target drains.
    TimedOut,
    /// A cpusync was asked to add a core that is already in it (or is its master).
    AlreadyInSync(CpuId),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NoSuchCpu(cpu) => write!(f, "no such cpu: {cpu}"),
            Error::CpuOffline(cpu) => write!(f, "cpu {cpu} is not online"),
            Error::WouldBlock => f.write_str("ipi fifo is too full to queue without draining"),
            Error::EmptySet => f.write_str("the cpu set names no online cpu"),
            Error::InvalidSequence => f.write_str("sequence number was never issued"),
            Error::TimedOut => f.write_str("target cpu did not respond in time"),
            Error::AlreadyInSync(cpu) => write!(f, "cpu {cpu} is already in this cpusync"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

/// The errno values the `sys_ipiq_*` syscalls return, negated (Hermit's numbering, as Linux's).
pub mod errno {
    /// Invalid argument: a core past the machine, an empty set, a sequence number never issued.
    pub const EINVAL: i32 = 22;
    /// The target core is not online.
    pub const ENODEV: i32 = 19;
    /// The FIFO is too full to queue without draining.
    pub const EAGAIN: i32 = 11;
    /// The target did not make progress within the kernel's bound.
    pub const ETIMEDOUT: i32 = 110;
    /// A cpusync was asked to add a core already in it.
    pub const EEXIST: i32 = 17;
}

impl Error {
    /// The negative errno a syscall returns for this error (the kernel's side of the contract).
    ///
    /// ```
    /// use ipiq_abi::{errno, Error};
    /// assert_eq!(Error::WouldBlock.errno(), -errno::EAGAIN);
    /// assert_eq!(Error::NoSuchCpu(7).errno(), -errno::EINVAL);
    /// ```
    pub fn errno(&self) -> i32 {
        -match self {
            Error::NoSuchCpu(_) | Error::EmptySet | Error::InvalidSequence => errno::EINVAL,
            Error::CpuOffline(_) => errno::ENODEV,
            Error::WouldBlock => errno::EAGAIN,
            Error::TimedOut => errno::ETIMEDOUT,
            Error::AlreadyInSync(_) => errno::EEXIST,
        }
    }

    /// The error a negative syscall result stands for (the application's side). An errno
    /// carries no core id, so the caller says what `EINVAL` means for its call (`einval`: the
    /// core it named, the empty set, an unknown sequence number); `ENODEV` is that core being
    /// offline, and an errno this contract does not use is read as `einval` too.
    ///
    /// ```
    /// use ipiq_abi::Error;
    /// for error in [Error::CpuOffline(3), Error::WouldBlock, Error::TimedOut, Error::NoSuchCpu(3)] {
    ///     assert_eq!(Error::from_errno(error.errno(), Error::NoSuchCpu(3)), error);
    /// }
    /// ```
    pub fn from_errno(code: i32, einval: Error) -> Error {
        match code.wrapping_neg() {
            errno::EAGAIN => Error::WouldBlock,
            errno::ETIMEDOUT => Error::TimedOut,
            errno::ENODEV => match einval {
                Error::NoSuchCpu(cpu) => Error::CpuOffline(cpu),
                other => other,
            },
            errno::EEXIST => Error::AlreadyInSync(0),
            _ => einval,
        }
    }
}
