//! cores: one thread pinned to each core reports the core's APIC id.
//!
//! Output, checked by the image tests:
//!
//! ```text
//! cores: 4 (processor count), available parallelism 4
//! core 0: apic id 0 (x2APIC)
//! ...
//! all 4 cores reported
//! ```
//!
//! Exits 0 only if every core reported and the APIC ids are distinct.
//! The kernel has no syscall for the current core id: a thread knows the core it was pinned
//! to (its spawn selector), and the APIC id read on that thread shows where it really ran.

use std::arch::asm;
use std::arch::x86_64::__cpuid;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most cores this application reports on.
const MAX_CORES: usize = 256;
/// Stack of each pinned thread (it only reads two registers and stores a word).
const THREAD_STACK_SIZE: usize = 0x1_0000;
/// The kernel's normal task priority.
const NORMAL_PRIORITY: u8 = 2;

/// Set in a report word once the thread has written it.
const REPORTED: u64 = 1 << 63;
/// Set in a report word when the APIC id came from the x2APIC.
const X2APIC: u64 = 1 << 62;

/// One report word per core: written once by the thread pinned there, read by main after join.
static REPORTS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

unsafe extern "C" {
    fn sys_get_processor_count() -> usize;
    /// Starts `func(arg)` as a new task on core `selector` (not bounds-checked by the kernel);
    /// returns the task id, negative on error.
    fn sys_spawn2(
        func: unsafe extern "C" fn(usize),
        arg: usize,
        prio: u8,
        stack_size: usize,
        selector: isize,
    ) -> i32;
    fn sys_join(id: i32) -> i32;
}

/// Read a model-specific register.
///
/// # Safety
/// Ring 0 (Hermit applications run there) and an MSR that exists on this CPU.
unsafe fn rdmsr(msr: u32) -> u64 {
    let (low, high): (u32, u32);
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") low, out("edx") high, options(nomem, nostack))
    };
    (u64::from(high) << 32) | u64::from(low)
}

/// This core's APIC id, and whether it came from the x2APIC.
fn apic_id() -> (u32, bool) {
    const IA32_APIC_BASE: u32 = 0x1b;
    const X2APIC_ENABLE: u64 = 1 << 10;
    const IA32_X2APIC_APICID: u32 = 0x802;
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU with a local APIC.
    if unsafe { rdmsr(IA32_APIC_BASE) } & X2APIC_ENABLE != 0 {
        // SAFETY: the x2APIC is enabled, so its MSRs exist (they fault in xAPIC mode).
        (unsafe { rdmsr(IA32_X2APIC_APICID) } as u32, true)
    } else {
        // xAPIC: the initial APIC id from CPUID leaf 1, EBX bits 31:24.
        // SAFETY: CPUID exists on every x86_64 CPU (newer compilers mark __cpuid safe).
        #[allow(unused_unsafe)]
        let leaf1 = unsafe { __cpuid(1) };
        (leaf1.ebx >> 24, false)
    }
}

/// Body of the thread pinned to core `core`.
unsafe extern "C" fn report(core: usize) {
    let (id, x2apic) = apic_id();
    let word = REPORTED | if x2apic { X2APIC } else { 0 } | u64::from(id);
    // Release pairs with main's Acquire after join (join itself also orders, this is explicit).
    REPORTS[core].store(word, Ordering::Release);
}

fn main() {
    // SAFETY: a plain query.
    let count = unsafe { sys_get_processor_count() };
    let parallelism = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cores: {count} (processor count), available parallelism {parallelism}");
    if count == 0 || count > MAX_CORES {
        println!("error: unsupported core count {count}");
        std::process::exit(1);
    }

    let mut tasks = Vec::with_capacity(count);
    for core in 0..count {
        // SAFETY: `core` < processor count, so the selector names an existing core.
        let id = unsafe {
            sys_spawn2(
                report,
                core,
                NORMAL_PRIORITY,
                THREAD_STACK_SIZE,
                core as isize,
            )
        };
        if id < 0 {
            println!("error: cannot start a thread on core {core} ({id})");
            std::process::exit(1);
        }
        tasks.push(id);
    }
    for id in tasks {
        // SAFETY: a task id returned by sys_spawn2.
        unsafe { sys_join(id) };
    }

    let mut reported = 0;
    let mut ids = BTreeSet::new();
    let mut identity = true;
    for (core, slot) in REPORTS.iter().take(count).enumerate() {
        let word = slot.load(Ordering::Acquire);
        if word & REPORTED == 0 {
            println!("core {core}: no report");
            continue;
        }
        let id = (word & 0xffff_ffff) as u32;
        let mode = if word & X2APIC != 0 {
            "x2APIC"
        } else {
            "xAPIC"
        };
        println!("core {core}: apic id {id} ({mode})");
        reported += 1;
        ids.insert(id);
        identity &= id as usize == core;
    }
    println!(
        "apic ids equal core indices: {}",
        if identity { "yes" } else { "no" }
    );

    if reported == count && ids.len() == count {
        println!("all {count} cores reported");
    } else {
        println!(
            "error: {reported} of {count} cores reported, {} distinct apic ids",
            ids.len()
        );
        std::process::exit(1);
    }
}
