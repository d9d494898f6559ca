//! What the Hermit apps under `hermit-app/apps` share (each depends on this crate by path):
//! threads pinned to a core ([`pinned`]) and the stale-TLB experiment ([`stale`]) that both
//! `tlb-stale` and `ipiq-tests` run. Both call the kernel's syscalls directly and build only for
//! `x86_64-unknown-hermit`.

pub mod pinned;
pub mod stale;
