//! The hypervisor bill: how many guest operations that cost a VM exit under KVM without APIC
//! virtualization the kernel has made so far, per kind, read from the event probe that both
//! compared kernels carry (`kernel/event-probe-patches`, `sys_probe_events`).
//!
//! - `icr`: interrupt command register writes (IPIs). On the ipiq kernel, ipiq writes the ICR
//!   itself: its writes (`icr_writes` for multicasts, `icr_unicast` for single targets, from its
//!   statistics) are added to the kernel's own.
//! - `eoi`: end-of-interrupt writes, one per interrupt taken.
//! - `timer`: timer programming (LVT timer, initial count, divider, TSC deadline).
//! - `halt`: `hlt` / `mwait` in the idle loop.
//! - `other`: other local APIC register writes.
//!
//! Feature `bill` (both compared kernels) links `sys_probe_events`; `bill-ipiq` (the ipiq
//! kernel) also reads ipiq's statistics. Without `bill` (the plain stock kernel), [`now`]
//! says there is no probe.

/// Event counts, summed over the cores read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bill {
    pub icr: u64,
    pub eoi: u64,
    pub timer: u64,
    pub halt: u64,
    pub other: u64,
}

impl Bill {
    /// Every counted event: what a hypervisor without APIC virtualization charges an exit for.
    pub fn exits(&self) -> u64 {
        self.icr + self.eoi + self.timer + self.halt + self.other
    }

    /// The events between `before` and `self`.
    pub fn since(&self, before: &Bill) -> Bill {
        Bill {
            icr: self.icr.wrapping_sub(before.icr),
            eoi: self.eoi.wrapping_sub(before.eoi),
            timer: self.timer.wrapping_sub(before.timer),
            halt: self.halt.wrapping_sub(before.halt),
            other: self.other.wrapping_sub(before.other),
        }
    }

    /// `bill: <what> n=<units> icr=.. eoi=.. timer=.. halt=.. other=.. exits=..`: the line the
    /// report (`cargo xtask report bill`, xtask/src/report/bill.rs) reads; `what` is `key=value`
    /// fields naming the experiment (app, kernel, smp, case, unit), `units` how many units the
    /// counts cover.
    pub fn line(&self, what: &str, units: u64) -> String {
        format!(
            "bill: {what} n={units} icr={} eoi={} timer={} halt={} other={} exits={}",
            self.icr,
            self.eoi,
            self.timer,
            self.halt,
            self.other,
            self.exits()
        )
    }
}

#[cfg(feature = "bill")]
unsafe extern "C" {
    /// event-probe: core `core`'s (or, for -1, every core's summed) counts as u64 words
    /// [icr, eoi, timer, halt, other APIC writes]; words written or -EINVAL.
    fn sys_probe_events(core: isize, out: *mut u64, len: usize) -> i32;
}

/// The whole machine's bill so far (every core's summed), or why there is none.
#[cfg(feature = "bill")]
pub fn now() -> Result<Bill, String> {
    let mut words = [0u64; 5];
    // SAFETY: `words` has room for `words.len()` u64 words.
    let written = unsafe { sys_probe_events(-1, words.as_mut_ptr(), words.len()) };
    if written != words.len() as i32 {
        return Err(format!("sys_probe_events returned {written}"));
    }
    let [icr, eoi, timer, halt, other] = words;
    let bill = Bill { icr, eoi, timer, halt, other };
    // On the ipiq kernel, ipiq's own ICR writes (it writes the ICR itself, outside the probe).
    #[cfg(feature = "bill-ipiq")]
    let bill = {
        let stats = ipiq_abi::hermit::total_stats().map_err(|e| format!("ipiq statistics: {e:?}"))?;
        Bill { icr: bill.icr + stats.icr_writes + stats.icr_unicast, ..bill }
    };
    Ok(bill)
}

/// Without the event probe (the plain stock kernel): no bill.
#[cfg(not(feature = "bill"))]
pub fn now() -> Result<Bill, String> {
    Err("this kernel has no event probe (build with feature bill: KERNEL=patched or stock-probe)".into())
}
