//! # ipiq-abi: ipiq's application interface on Hermit
//!
//! What an application needs to use the ipiq kernel's inter-processor message queues, and
//! nothing of the kernel: the `sys_ipiq_*` syscall declarations with safe wrappers
//! ([`hermit`], built for `target_os = "hermit"`), [`Error`] with its errno in both directions
//! ([`Error::errno`] for the kernel's syscall layer, [`Error::from_errno`] for the wrappers),
//! [`CpuSet`], [`Seq`], and the statistics layout ([`Stats`], whose counter list
//! [`for_each_counter!`] the kernel's per-core counters are built from too). It has no
//! dependencies, so an application compiles none of the kernel's; the kernel crate `ipiq`
//! re-exports these types, so both sides of every syscall share one definition.
//!
//! ```
//! use ipiq_abi::{CpuSet, Error};
//! let set = CpuSet::from_cpus([1, 2]).unwrap();
//! assert_eq!(set.words(), [0b110]);
//! assert_eq!(Error::from_errno(Error::WouldBlock.errno(), Error::NoSuchCpu(1)), Error::WouldBlock);
//! ```

#![cfg_attr(not(any(feature = "std", test)), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod cpuset;
mod error;
mod stats;

// Documented on every target; built for applications on Hermit.
#[cfg(any(target_os = "hermit", doc))]
pub mod hermit;

pub use cpuset::CpuSet;
pub use error::{errno, Error};
pub use stats::Stats;

/// A core's index: `0..cpu_count`. The boot core is 0.
pub type CpuId = usize;

/// A sequence number on one sender/target FIFO, returned by a send; waiting on it waits until
/// the target has returned from every message up to it. `Seq(0)` is "nothing to wait for" (the
/// sequence number of a message that already ran, such as one sent to the current core).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);
