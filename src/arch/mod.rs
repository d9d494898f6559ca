//! Platform implementations for real hardware.

#[cfg(all(target_arch = "x86_64", not(ipiq_loom)))]
pub mod x86_64;
