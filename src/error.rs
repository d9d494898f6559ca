//! Errors of the public API. Nothing in ipiq panics on bad input: it returns one of these.

use core::fmt;

use crate::platform::CpuId;

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

impl Error {
    /// A negative errno-style code, for the kernel's syscall layer.
    pub fn errno(&self) -> i32 {
        match self {
            Error::NoSuchCpu(_) | Error::EmptySet | Error::InvalidSequence => -22, // EINVAL
            Error::CpuOffline(_) => -19,                                           // ENODEV
            Error::WouldBlock => -11,                                              // EAGAIN
            Error::TimedOut => -110,                                               // ETIMEDOUT
            Error::AlreadyInSync(_) => -17,                                        // EEXIST
        }
    }
}
