//! What the Hermit apps under `hermit-app/apps` share (each depends on this crate by path):
//! threads pinned to a core ([`pinned`]), the stale-TLB experiment ([`stale`]) that both
//! `tlb-stale` and `ipiq-tests` run, and the hypervisor bill ([`bill`]) the kernel comparisons
//! print. They call the kernel's syscalls directly and build only for `x86_64-unknown-hermit`.

pub mod bill;
pub mod pinned;
pub mod stale;
