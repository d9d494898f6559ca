//! Threads pinned to a core. Hermit's std has no affinity call: the kernel's `sys_spawn2` takes a
//! core selector, and a thread it starts stays on that core.

/// Stack of each pinned thread.
const THREAD_STACK_SIZE: usize = 0x4_0000;
/// Hermit's normal task priority.
const NORMAL_PRIORITY: u8 = 2;

unsafe extern "C" {
    fn sys_spawn2(func: unsafe extern "C" fn(usize), arg: usize, prio: u8, stack_size: usize, selector: isize) -> i32;
    fn sys_join(id: i32) -> i32;
}

type Job = Box<dyn FnOnce() + Send>;

unsafe extern "C" fn pinned_entry(raw: usize) {
    // SAFETY: `raw` came from `Box::into_raw` in `spawn_on`, consumed exactly once here.
    let job = unsafe { Box::from_raw(raw as *mut Job) };
    job();
}

/// Starts `job` on a thread pinned to `core` (below the core count); its task id for [`join`],
/// or an error naming the kernel's refusal.
pub fn spawn_on(core: usize, job: impl FnOnce() + Send + 'static) -> Result<i32, String> {
    let job: Job = Box::new(job);
    let raw = Box::into_raw(Box::new(job)) as usize;
    // SAFETY: `pinned_entry` takes ownership of `raw`; the caller keeps `core` in range.
    let tid = unsafe { sys_spawn2(pinned_entry, raw, NORMAL_PRIORITY, THREAD_STACK_SIZE, core as isize) };
    if tid < 0 {
        // SAFETY: the kernel did not start the task, so `raw` was not consumed.
        drop(unsafe { Box::from_raw(raw as *mut Job) });
        return Err(format!("cannot start a thread on core {core} ({tid})"));
    }
    Ok(tid)
}

/// Waits for the thread `tid` started by [`spawn_on`].
pub fn join(tid: i32) {
    // SAFETY: a task id returned by sys_spawn2.
    unsafe { sys_join(tid) };
}

/// The APIC id of the calling core (equals the core index under QEMU; the `cores` app checks it).
pub fn apic_id() -> usize {
    // SAFETY: CPUID exists on every x86_64 CPU.
    #[allow(unused_unsafe)]
    let leaf1 = unsafe { std::arch::x86_64::__cpuid(1) };
    (leaf1.ebx >> 24) as usize
}
