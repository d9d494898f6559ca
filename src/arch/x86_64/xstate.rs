//! The extended processor state (x87, MXCSR, SSE, AVX) around application message functions.
//!
//! # Why the kernel needs this
//! The kernel that runs ipiq is built soft-float: none of its own code, its interrupt entry
//! and ipiq's drain loop included, uses or saves the x87, SSE or AVX registers. An application
//! message function is built for the application target, which computes every `f64` in SSE
//! registers, and it runs on the target core inside whatever that core was doing: a thread
//! interrupted by the IPI or the tick in the middle of its own floating-point work, the idle
//! loop, or a syscall that drains its own queues. Without a save, the function's registers,
//! MXCSR rounding mode and x87 stack become the interrupted thread's, and the function starts
//! with the thread's control words instead of the ABI's. Hermit also switches the FPU lazily:
//! a task switch sets CR0.TS, and the first FPU instruction after it traps (#NM) into the
//! scheduler, which moves the FPU to the current task. A message function that traps there
//! runs the scheduler's switch inside an interrupt (and the trap's handler shares the IPI
//! handler's interrupt stack, whose frames it overwrites).
//!
//! # The mechanism
//! [`SaveStacks::run`] brackets one application function: it saves the live state into this
//! core's area for the current nesting level (`xsave64` of x87, SSE and AVX where the kernel
//! enabled XSAVE, otherwise `fxsave64`), gives the function the ABI's entry state
//! ([`enter_abi_state`]: `fninit` for an empty x87 stack and control word 0x37F, then MXCSR
//! 0x1F80), calls it, and restores the saved state (`xrstor64` / `fxrstor64`). The interrupted
//! context gets back every register, MXCSR, the x87 stack, tags and status bit for bit, and
//! nothing the function left behind reaches it. The kernel wraps the bracket in [`claim_fpu`]
//! and [`release_fpu`]: CR0.TS is cleared first when it is set (so neither the save nor the
//! function traps into the lazy switch) and set again afterwards, so the lazy switching finds
//! the registers (the FPU owner's) and TS exactly as it left them. Only application functions
//! pay; the kernel's own messages are soft-float and skip all of this.
//!
//! Nesting: a message function may itself drain (a send to its own core runs at once, a wait
//! serves the queues), so brackets nest. Each core keeps a depth counter and one area per level
//! up to the `levels` given at construction (allocated at bring-up, never in interrupt
//! context); a deeper level saves into an area on the stack (832 bytes). The nesting is
//! strictly last-in first-out on a core, which makes a plain counter enough even if an
//! interrupt arrives in the middle of a bracket.
//!
//! Alternatives not taken: running application messages on a per-core task that owns its own
//! FPU state would turn every message into a context switch and take it out of the interrupt
//! context ipiq's contract promises (messages run in order, at once, with interrupts off).
//! Saving the state in the interrupt entry would make every interrupt pay, the kernel's own
//! included. `xsaveopt` / `xsavec` are not used: their modified-state tracking keys on the last
//! `xrstor`, which the lazy switching and nested levels make hard to reason about; plain
//! `xsave` into a standard-format area is always exact.
//!
//! The area holds x87, SSE and AVX state (XCR0 bits 0-2), the only components the kernel
//! enables; [`SaveInstr::detect`] refuses an XCR0 with more.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

use crate::sync::CachePadded;

/// The XSAVE components a [`SaveArea`] holds: x87 (bit 0), SSE (bit 1), AVX (bit 2).
pub const COMPONENTS: u64 = 0b111;
/// Bytes of a save area: the legacy region (512: x87, MXCSR, XMM), the XSAVE header (64) and
/// the AVX upper halves (256), in XSAVE's standard format.
pub const AREA_BYTES: usize = 832;
/// MXCSR as the ABI wants it on entry: every exception masked, round to nearest, flags clear.
pub const MXCSR_DEFAULT: u32 = 0x1F80;
/// The x87 control word after `fninit`, as the ABI wants it: all exceptions masked, extended
/// precision, round to nearest.
pub const FCW_DEFAULT: u16 = 0x037F;
/// CR0.TS, the task-switched flag of lazy FPU switching.
const CR0_TS: u64 = 1 << 3;
/// CPUID.1:ECX.OSXSAVE: the kernel set CR4.OSXSAVE (XGETBV and XSAVE are usable).
const CPUID1_ECX_OSXSAVE: u32 = 1 << 27;

/// How the state is saved: which instruction, and for XSAVE which components.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveInstr {
    /// `fxsave64` / `fxrstor64`: x87, MXCSR and XMM0-15 (CPUs or kernels without XSAVE).
    Fxsave,
    /// `xsave64` / `xrstor64` of the components in `mask` (a subset of [`COMPONENTS`]).
    Xsave {
        /// The requested-feature bitmap (EDX:EAX of the instructions).
        mask: u64,
    },
}

impl SaveInstr {
    /// What this CPU, as the kernel configured it, needs: XSAVE of XCR0's components if
    /// CR4.OSXSAVE is set (seen through CPUID), otherwise FXSAVE.
    ///
    /// Errors with XCR0 when it enables components beyond [`COMPONENTS`] (a save area could
    /// not hold them). Context: any; reads CPUID and XCR0 only.
    pub fn detect() -> Result<SaveInstr, u64> {
        match Self::xcr0() {
            None => Ok(SaveInstr::Fxsave),
            Some(xcr0) if xcr0 & !COMPONENTS == 0 => Ok(SaveInstr::Xsave { mask: xcr0 }),
            Some(xcr0) => Err(xcr0),
        }
    }

    /// As [`detect`](Self::detect), but only the components a save area holds: for a CPU
    /// whose XCR0 enables more (AVX-512 on a host) when the code under test touches none of it.
    pub fn detect_held() -> SaveInstr {
        match Self::xcr0() {
            None => SaveInstr::Fxsave,
            Some(xcr0) => SaveInstr::Xsave {
                mask: xcr0 & COMPONENTS,
            },
        }
    }

    /// XCR0, or `None` when the kernel did not enable XSAVE (XGETBV would fault).
    fn xcr0() -> Option<u64> {
        // SAFETY: CPUID leaf 1 exists on every x86_64 CPU.
        #[allow(unused_unsafe)]
        let leaf1 = unsafe { core::arch::x86_64::__cpuid(1) };
        if leaf1.ecx & CPUID1_ECX_OSXSAVE == 0 {
            return None;
        }
        let (low, high): (u32, u32);
        // SAFETY: OSXSAVE is set, so XGETBV with ECX = 0 (XCR0) is defined at any privilege.
        unsafe {
            asm!("xgetbv", in("ecx") 0u32, out("eax") low, out("edx") high,
                options(nomem, nostack, preserves_flags));
        }
        Some(u64::from(high) << 32 | u64::from(low))
    }
}

/// One saved extended state, in the layout `fxsave64` / `xsave64` write (standard format).
///
/// A fresh area is zeroed, which makes its XSAVE header valid for `xrstor64`; the save
/// instructions write only the state and the header's XSTATE_BV, never the rest of the header.
#[repr(C, align(64))]
pub struct SaveArea {
    bytes: [u8; AREA_BYTES],
}

impl Default for SaveArea {
    fn default() -> Self {
        Self::new()
    }
}

impl SaveArea {
    /// A zeroed area.
    pub const fn new() -> Self {
        SaveArea {
            bytes: [0; AREA_BYTES],
        }
    }

    /// Saves the calling core's extended state into the area.
    ///
    /// # Safety
    /// CR0.TS is clear (or the save traps with #NM); `how` matches the CPU: for
    /// [`SaveInstr::Xsave`], CR4.OSXSAVE is set. Interrupt context: yes; never blocks.
    #[inline(always)]
    pub unsafe fn save(&mut self, how: SaveInstr) {
        let area = self.bytes.as_mut_ptr();
        match how {
            // SAFETY: `area` is 64-byte aligned and 832 bytes long (fxsave64 needs 16 and
            // 512); the caller guarantees TS is clear and the instruction is enabled.
            SaveInstr::Fxsave => unsafe {
                asm!("fxsave64 [{}]", in(reg) area, options(nostack, preserves_flags));
            },
            // SAFETY: as above; xsave64 of at most x87, SSE and AVX writes at most 832 bytes
            // (AVX ends at 576 + 256 in the standard format); EDX:EAX is the mask.
            SaveInstr::Xsave { mask } => unsafe {
                asm!("xsave64 [{}]", in(reg) area, in("eax") mask as u32,
                    in("edx") (mask >> 32) as u32, options(nostack, preserves_flags));
            },
        }
    }

    /// Loads the extended state the last [`save`](Self::save) into this area stored.
    ///
    /// # Safety
    /// As [`save`](Self::save), with the same `how`, and the area holds a state saved by
    /// it (an area that was never saved into holds all-zero control words: exceptions unmasked).
    #[inline(always)]
    pub unsafe fn restore(&self, how: SaveInstr) {
        let area = self.bytes.as_ptr();
        match how {
            // SAFETY: aligned, long enough, written by fxsave64 (the caller's contract).
            SaveInstr::Fxsave => unsafe {
                asm!("fxrstor64 [{}]", in(reg) area, options(nostack, preserves_flags));
            },
            // SAFETY: aligned, long enough, its header written by xsave64 with the same mask
            // (the caller's contract), so xrstor64 finds it valid.
            SaveInstr::Xsave { mask } => unsafe {
                asm!("xrstor64 [{}]", in(reg) area, in("eax") mask as u32,
                    in("edx") (mask >> 32) as u32, options(nostack, preserves_flags));
            },
        }
    }

    /// The saved x87 control word.
    pub fn fcw(&self) -> u16 {
        u16::from_le_bytes([self.bytes[0], self.bytes[1]])
    }

    /// The saved x87 status word.
    pub fn fsw(&self) -> u16 {
        u16::from_le_bytes([self.bytes[2], self.bytes[3]])
    }

    /// The saved abridged x87 tag word (one bit per register, set = in use).
    pub fn ftw(&self) -> u8 {
        self.bytes[4]
    }

    /// The saved MXCSR.
    pub fn mxcsr(&self) -> u32 {
        u32::from_le_bytes([
            self.bytes[24],
            self.bytes[25],
            self.bytes[26],
            self.bytes[27],
        ])
    }

    /// The saved XMM register `n` (0-15), low byte first.
    pub fn xmm(&self, n: usize) -> [u8; 16] {
        let mut out = [0; 16];
        let at = 160 + 16 * (n % 16);
        out.copy_from_slice(&self.bytes[at..at + 16]);
        out
    }
}

/// Gives a function the ABI's entry state: empty x87 stack, x87 control word 0x37F, x87 status
/// clear (`fninit`), MXCSR 0x1F80. XMM and YMM contents are left as they are (the ABI makes no
/// promise about them on entry).
///
/// # Safety
/// CR0.TS is clear; the caller has saved whatever state it needs back (this discards the x87
/// stack). Interrupt context: yes.
#[inline(always)]
pub unsafe fn enter_abi_state() {
    let mxcsr = MXCSR_DEFAULT;
    // SAFETY: fninit and ldmxcsr only change floating-point state (the caller's contract);
    // `mxcsr` is a valid MXCSR value on a readable local.
    unsafe {
        asm!("fninit", "ldmxcsr [{}]", in(reg) &mxcsr, options(nostack, preserves_flags));
    }
}

/// What [`claim_fpu`] found in CR0.TS, for the matching [`release_fpu`].
#[must_use = "pass it to release_fpu, which puts CR0.TS back"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FpuClaim {
    /// TS was set (the registers belong to a task the lazy switching has not moved yet): it
    /// was cleared and must be set again.
    TaskSwitched,
    /// TS was clear: nothing to put back.
    Owned,
}

/// Clears CR0.TS if it is set, so the FPU can be used without the #NM trap of lazy switching;
/// says what it found, for [`release_fpu`].
///
/// # Safety
/// Ring 0. The caller calls [`release_fpu`] with the result before anything may switch tasks
/// on this core. Interrupt context: yes; re-entrant (a nested call finds TS clear and returns
/// [`FpuClaim::Owned`], leaving it to the outer one).
#[inline(always)]
pub unsafe fn claim_fpu() -> FpuClaim {
    let cr0: u64;
    // SAFETY: reading CR0 in ring 0 (the caller's contract) has no side effect.
    unsafe { asm!("mov {}, cr0", out(reg) cr0, options(nomem, nostack, preserves_flags)) };
    if cr0 & CR0_TS == 0 {
        return FpuClaim::Owned;
    }
    // SAFETY: ring 0; clts only clears CR0.TS.
    unsafe { asm!("clts", options(nomem, nostack, preserves_flags)) };
    FpuClaim::TaskSwitched
}

/// Sets CR0.TS again if [`claim_fpu`] found it set, so lazy switching goes on as before.
///
/// # Safety
/// Ring 0; `claim` is what the matching [`claim_fpu`] returned, and the FPU registers hold
/// what they held then (restored). Interrupt context: yes.
#[inline(always)]
pub unsafe fn release_fpu(claim: FpuClaim) {
    if claim == FpuClaim::TaskSwitched {
        // SAFETY: ring 0; only CR0.TS changes (read-modify-write of CR0).
        unsafe {
            asm!("mov {t}, cr0", "or {t}, {ts}", "mov cr0, {t}", t = out(reg) _,
                ts = const CR0_TS, options(nomem, nostack));
        }
    }
}

/// One core's nesting depth and save areas.
struct CoreAreas {
    /// How many brackets are open on this core. Written only by its own core.
    depth: AtomicUsize,
    areas: Box<[UnsafeCell<SaveArea>]>,
}

/// Per-core, per-nesting-level save areas, and the bracket that uses them ([`SaveStacks::run`]).
///
/// ```
/// # #[cfg(feature = "std")] {
/// use ipiq::arch::x86_64::xstate::{SaveInstr, SaveStacks};
/// use std::arch::asm;
///
/// fn mxcsr() -> u32 {
///     let mut value = 0u32;
///     // SAFETY: stmxcsr stores 4 bytes to a local.
///     unsafe { asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack)) };
///     value
/// }
///
/// // A message function that leaves MXCSR rounding toward zero behind.
/// extern "C" fn careless(_: usize) {
///     let rz = 0x7F80u32;
///     // SAFETY: ldmxcsr loads a valid MXCSR from a local (and breaks the ABI on purpose).
///     unsafe { asm!("ldmxcsr [{}]", in(reg) &rz, options(nostack)) };
/// }
///
/// // Bring-up: one core, two nesting levels (user mode here: CR0.TS is clear).
/// let stacks = SaveStacks::new(1, 2, SaveInstr::detect_held());
/// let before = mxcsr();
/// // SAFETY: core 0 is the only one; TS is clear; the instruction was detected on this CPU.
/// unsafe { stacks.run(0, careless, 0) };
/// assert_eq!(mxcsr(), before);
/// # }
/// ```
pub struct SaveStacks {
    how: SaveInstr,
    cores: Box<[CachePadded<CoreAreas>]>,
}

// SAFETY: each core's areas and depth are used only by that core (the contract of `run`),
// strictly nested, so no area is ever used by two contexts at once.
unsafe impl Sync for SaveStacks {}
// SAFETY: owns plain memory; moving it between threads moves no per-core use.
unsafe impl Send for SaveStacks {}

impl SaveStacks {
    /// Areas for `cpus` cores, `levels` nesting levels each (`cpus * levels * 832` bytes), saved
    /// with `how`. Allocates: call at bring-up, never in interrupt context.
    pub fn new(cpus: usize, levels: usize, how: SaveInstr) -> Self {
        let cores = (0..cpus)
            .map(|_| {
                CachePadded(CoreAreas {
                    depth: AtomicUsize::new(0),
                    areas: (0..levels)
                        .map(|_| UnsafeCell::new(SaveArea::new()))
                        .collect::<Vec<_>>()
                        .into_boxed_slice(),
                })
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        SaveStacks { how, cores }
    }

    /// The save instruction in use.
    pub fn instr(&self) -> SaveInstr {
        self.how
    }

    /// How many brackets are open on `cpu` now (0 outside any).
    pub fn depth(&self, cpu: usize) -> usize {
        // Relaxed: a core-local counter; another core reads it only for diagnostics.
        self.cores
            .get(cpu)
            .map_or(0, |core| core.depth.load(Ordering::Relaxed))
    }

    /// Runs `func(arg)` with its own extended state: saves the caller's into `cpu`'s area for
    /// the current depth (on the stack past the last level, or for a `cpu` past the count),
    /// enters the ABI's state, calls, and restores the caller's state exactly.
    ///
    /// # Safety
    /// Called on core `cpu` (each core passes its own index); CR0.TS is clear (see
    /// [`claim_fpu`]); the CPU is configured as this value's [`SaveInstr`] says.
    /// Context: any, interrupt context included, interrupts disabled or not; it never blocks or
    /// allocates, and may be re-entered by an interrupt or by `func` itself.
    pub unsafe fn run(&self, cpu: usize, func: extern "C" fn(usize), arg: usize) {
        let Some(core) = self.cores.get(cpu) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { run_on_stack(self.how, func, arg) };
        };
        // Relaxed load and store: a core-local counter. An interrupt between them nests a whole
        // bracket that leaves the counter as it found it, and uses this level's area before
        // this bracket does (it reads the same depth): last in, first out either way.
        let depth = core.depth.load(Ordering::Relaxed);
        let Some(slot) = core.areas.get(depth) else {
            // SAFETY: as above.
            return unsafe { run_on_stack(self.how, func, arg) };
        };
        core.depth.store(depth + 1, Ordering::Relaxed);
        let area = slot.get();
        // SAFETY: `area` is this core's area for this level, which no other context uses while
        // the bracket is open (a nested bracket takes the next level); TS is clear and `how`
        // matches the CPU (the caller's contract).
        unsafe {
            (*area).save(self.how);
            enter_abi_state();
        }
        func(arg);
        // SAFETY: as above; the area holds what `save` wrote with the same `how`.
        unsafe { (*area).restore(self.how) };
        // Relaxed: core-local (see above). The asm blocks before it are not moved across it.
        core.depth.store(depth, Ordering::Relaxed);
    }
}

/// [`SaveStacks::run`] with an area on the stack (832 bytes): what it does past the per-core
/// levels, and a kernel's fallback before its areas exist.
///
/// # Safety
/// As [`SaveStacks::run`], except that any core may call it.
#[cold]
#[inline(never)]
pub unsafe fn run_on_stack(how: SaveInstr, func: extern "C" fn(usize), arg: usize) {
    let mut area = core::mem::MaybeUninit::<SaveArea>::uninit();
    let base = area.as_mut_ptr().cast::<u64>();
    // The XSAVE header (bytes 512-575) must be zero for xrstor64; written a word at a time
    // with volatile stores so that no vector instruction touches a register before the save.
    for word in 64..72 {
        // SAFETY: within the area (bytes 512..576 of 832), 8-byte aligned.
        unsafe { base.add(word).write_volatile(0) };
    }
    // SAFETY: the header is zero; the save writes every byte the restore reads (the legacy
    // region, XSTATE_BV, and the components in the mask); the caller's contract covers TS and
    // `how`.
    unsafe {
        let area = &mut *area.as_mut_ptr();
        area.save(how);
        enter_abi_state();
        func(arg);
        area.restore(how);
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    //! The bracket on the host (user mode: no CR0 access, so TS stays clear and only
    //! `SaveStacks::run` is exercised). Registers are loaded and read back in the same asm
    //! block that calls the bracket, so no compiled code stands between them.

    use super::*;
    use std::sync::atomic::AtomicU64;

    /// MXCSR of the caller under test: round toward zero, flush-to-zero, flags clear.
    const CALLER_MXCSR: u32 = 0xFF80;
    /// x87 control word of the caller under test: single precision, round down.
    const CALLER_FCW: u16 = 0x047F;

    /// The state a message function saw on entry, packed (fcw, fsw, ftw, mxcsr control bits).
    static SEEN: AtomicU64 = AtomicU64::new(0);

    fn pack(area: &SaveArea) -> u64 {
        u64::from(area.fcw()) << 48
            | u64::from(area.fsw()) << 32
            | u64::from(area.ftw()) << 24
            | u64::from(area.mxcsr() & !0x3F)
    }

    fn record_entry_state(how: SaveInstr) {
        let mut area = SaveArea::new();
        // SAFETY: user mode on the host: TS is clear; `how` came from detect_held.
        unsafe { area.save(how) };
        SEEN.store(pack(&area), Ordering::Relaxed);
    }

    /// The instruction the current test uses (tests take `SERIAL` first).
    static HOW: std::sync::Mutex<Option<SaveInstr>> = std::sync::Mutex::new(None);
    static XSAVE_STACKS: std::sync::OnceLock<SaveStacks> = std::sync::OnceLock::new();
    static FXSAVE_STACKS: std::sync::OnceLock<SaveStacks> = std::sync::OnceLock::new();

    fn how() -> SaveInstr {
        HOW.lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("set by the test")
    }

    /// One core, two levels, for the current instruction.
    fn stacks() -> &'static SaveStacks {
        match how() {
            SaveInstr::Fxsave => {
                FXSAVE_STACKS.get_or_init(|| SaveStacks::new(1, 2, SaveInstr::Fxsave))
            }
            held => XSAVE_STACKS.get_or_init(|| SaveStacks::new(1, 2, held)),
        }
    }

    // Leaves odd state behind (what a careless message function might): MXCSR round-up with
    // denormals-are-zero, x87 control word 0x0C7F, two values on the x87 stack, xmm0-15
    // all ones. A routine in assembly, so no compiled code runs with that state.
    std::arch::global_asm!(
        ".pushsection .text.ipiq_xstate_test_dirty,\"ax\",@progbits",
        ".globl ipiq_xstate_test_dirty",
        "ipiq_xstate_test_dirty:",
        "sub rsp, 8",
        "mov dword ptr [rsp], 0x5FC0",
        "ldmxcsr dword ptr [rsp]",
        "mov word ptr [rsp], 0x0C7F",
        "fldcw word ptr [rsp]",
        "add rsp, 8",
        "fld1",
        "fldpi",
        "pcmpeqd xmm0, xmm0",
        "pcmpeqd xmm1, xmm1",
        "pcmpeqd xmm2, xmm2",
        "pcmpeqd xmm3, xmm3",
        "pcmpeqd xmm4, xmm4",
        "pcmpeqd xmm5, xmm5",
        "pcmpeqd xmm6, xmm6",
        "pcmpeqd xmm7, xmm7",
        "pcmpeqd xmm8, xmm8",
        "pcmpeqd xmm9, xmm9",
        "pcmpeqd xmm10, xmm10",
        "pcmpeqd xmm11, xmm11",
        "pcmpeqd xmm12, xmm12",
        "pcmpeqd xmm13, xmm13",
        "pcmpeqd xmm14, xmm14",
        "pcmpeqd xmm15, xmm15",
        "ret",
        ".popsection",
    );

    unsafe extern "C" {
        fn ipiq_xstate_test_dirty();
    }

    /// A message function: records its entry state, then nests `arg` more levels, then dirties
    /// every register and control word it can and returns.
    extern "C" fn message(arg: usize) {
        let how = how();
        if arg > 0 {
            // SAFETY: the test runs on "core" 0 only, one thread at a time (a mutex below).
            unsafe { stacks().run(0, message, arg - 1) };
        }
        record_entry_state(how);
        // SAFETY: touches only floating-point state; this is the function's last action.
        unsafe { ipiq_xstate_test_dirty() };
    }

    extern "C" fn enter(nest: usize) {
        // SAFETY: as in `message`.
        unsafe { stacks().run(0, message, nest) };
    }

    /// What the caller under test reads back after the bracket.
    #[repr(C, align(16))]
    struct Readback {
        xmm_in: [u64; 32],
        xmm_out: [u64; 32],
        x87_in: [f64; 2],
        x87_out: [f64; 2],
        mxcsr_in: u32,
        mxcsr_out: u32,
        fcw_in: u16,
        fcw_out: u16,
        fsw_out: u16,
        fcw_default: u16,
        mxcsr_default: u32,
    }

    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Loads a caller state, calls the bracket through `enter(nest)`, reads the state back.
    fn call_bracketed(nest: usize) -> Box<Readback> {
        let mut r = Box::new(Readback {
            xmm_in: core::array::from_fn(|i| {
                0x0123_4567_89ab_cdefu64.rotate_left(i as u32) ^ i as u64
            }),
            xmm_out: [0; 32],
            x87_in: [1.25, -3.5],
            x87_out: [0.0; 2],
            mxcsr_in: CALLER_MXCSR,
            mxcsr_out: 0,
            fcw_in: CALLER_FCW,
            fcw_out: 0,
            fsw_out: 0,
            fcw_default: FCW_DEFAULT,
            mxcsr_default: MXCSR_DEFAULT,
        });
        stacks();
        let p: *mut Readback = &mut *r;
        // SAFETY: reads and writes only `*p` (in r13, which the callee preserves); calls `enter` (extern "C") with a 16-aligned stack
        // (the block aligns it); every register the C ABI lets a callee clobber is declared;
        // the block leaves MXCSR, the x87 control word and the x87 stack as it found them.
        unsafe {
            asm!(
                "mov r12, rsp",
                "and rsp, -16",
                "ldmxcsr dword ptr [r13 + {mxin}]",
                "fninit",
                "fldcw word ptr [r13 + {fcwin}]",
                "fld qword ptr [r13 + {x87in}]",
                "fld qword ptr [r13 + {x87in} + 8]",
                "movdqu xmm0, [r13 + 0]",
                "movdqu xmm1, [r13 + 16]",
                "movdqu xmm2, [r13 + 32]",
                "movdqu xmm3, [r13 + 48]",
                "movdqu xmm4, [r13 + 64]",
                "movdqu xmm5, [r13 + 80]",
                "movdqu xmm6, [r13 + 96]",
                "movdqu xmm7, [r13 + 112]",
                "movdqu xmm8, [r13 + 128]",
                "movdqu xmm9, [r13 + 144]",
                "movdqu xmm10, [r13 + 160]",
                "movdqu xmm11, [r13 + 176]",
                "movdqu xmm12, [r13 + 192]",
                "movdqu xmm13, [r13 + 208]",
                "movdqu xmm14, [r13 + 224]",
                "movdqu xmm15, [r13 + 240]",
                "call {enter}",
                "movdqu [r13 + 256], xmm0",
                "movdqu [r13 + 272], xmm1",
                "movdqu [r13 + 288], xmm2",
                "movdqu [r13 + 304], xmm3",
                "movdqu [r13 + 320], xmm4",
                "movdqu [r13 + 336], xmm5",
                "movdqu [r13 + 352], xmm6",
                "movdqu [r13 + 368], xmm7",
                "movdqu [r13 + 384], xmm8",
                "movdqu [r13 + 400], xmm9",
                "movdqu [r13 + 416], xmm10",
                "movdqu [r13 + 432], xmm11",
                "movdqu [r13 + 448], xmm12",
                "movdqu [r13 + 464], xmm13",
                "movdqu [r13 + 480], xmm14",
                "movdqu [r13 + 496], xmm15",
                "stmxcsr dword ptr [r13 + {mxout}]",
                "fnstcw word ptr [r13 + {fcwout}]",
                "fnstsw word ptr [r13 + {fswout}]",
                "fstp qword ptr [r13 + {x87out} + 8]",
                "fstp qword ptr [r13 + {x87out}]",
                "fldcw word ptr [r13 + {fcwdef}]",
                "ldmxcsr dword ptr [r13 + {mxdef}]",
                "mov rsp, r12",
                in("r13") p,
                enter = sym enter,
                mxin = const core::mem::offset_of!(Readback, mxcsr_in),
                mxout = const core::mem::offset_of!(Readback, mxcsr_out),
                mxdef = const core::mem::offset_of!(Readback, mxcsr_default),
                fcwin = const core::mem::offset_of!(Readback, fcw_in),
                fcwout = const core::mem::offset_of!(Readback, fcw_out),
                fcwdef = const core::mem::offset_of!(Readback, fcw_default),
                fswout = const core::mem::offset_of!(Readback, fsw_out),
                x87in = const core::mem::offset_of!(Readback, x87_in),
                x87out = const core::mem::offset_of!(Readback, x87_out),
                in("rdi") nest,
                out("r12") _,
                clobber_abi("C"),
            );
        }
        r
    }

    /// Runs `check` once with the detected instruction and once with FXSAVE.
    fn check_both(nest: usize) {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        for how in [SaveInstr::detect_held(), SaveInstr::Fxsave] {
            *HOW.lock().unwrap_or_else(|e| e.into_inner()) = Some(how);
            check(nest, how);
        }
    }

    fn check(nest: usize, how: SaveInstr) {
        SEEN.store(0, Ordering::Relaxed);
        let r = call_bracketed(nest);
        assert_eq!(
            r.xmm_out, r.xmm_in,
            "XMM registers after {nest} nested levels ({how:?})"
        );
        assert_eq!(
            r.mxcsr_out, r.mxcsr_in,
            "MXCSR (control and flags) after {nest} nested levels ({how:?})"
        );
        assert_eq!(
            r.fcw_out, r.fcw_in,
            "x87 control word after {nest} nested levels ({how:?})"
        );
        assert_eq!(
            (r.fsw_out >> 11) & 7,
            6,
            "x87 stack top: two values pushed before the bracket, none left by the message"
        );
        assert_eq!(
            r.x87_out, r.x87_in,
            "x87 stack values after {nest} nested levels ({how:?})"
        );
        let seen = SEEN.load(Ordering::Relaxed);
        let abi = u64::from(FCW_DEFAULT) << 48 | u64::from(MXCSR_DEFAULT);
        assert_eq!(
            seen, abi,
            "the message's entry state (fcw<<48|fsw<<32|ftw<<24|mxcsr), not the caller's"
        );
        assert_eq!(stacks().depth(0), 0, "every bracket closed");
    }

    #[test]
    fn the_caller_state_survives_a_message_that_dirties_everything() {
        check_both(0);
    }

    #[test]
    fn nested_messages_each_get_their_own_area() {
        check_both(1);
    }

    #[test]
    fn nesting_past_the_per_core_levels_saves_on_the_stack() {
        // Two levels per core: the third and fourth brackets use the stack.
        check_both(3);
    }

    #[test]
    fn the_fast_path_would_fail_without_the_bracket() {
        // The check itself must be able to fail: calling the dirtying routine directly (no
        // bracket) leaves the caller's registers changed.
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut before = SaveArea::new();
        let mut after = SaveArea::new();
        let how = SaveInstr::detect_held();
        // SAFETY: user mode: TS clear. The asm restores the default state it breaks.
        unsafe {
            before.save(how);
            asm!(
                "call {dirty}",
                "fstp st(0)",
                "fstp st(0)",
                dirty = sym ipiq_xstate_test_dirty,
                clobber_abi("C"),
            );
            after.save(how);
            enter_abi_state();
        }
        assert_ne!(after.mxcsr() & !0x3F, before.mxcsr() & !0x3F);
        assert_ne!(after.fcw(), before.fcw());
        assert_ne!(after.xmm(0), before.xmm(0));
    }

    // All ones in ymm0-15, upper halves included (needs AVX).
    std::arch::global_asm!(
        ".pushsection .text.ipiq_xstate_test_dirty_avx,\"ax\",@progbits",
        ".globl ipiq_xstate_test_dirty_avx",
        "ipiq_xstate_test_dirty_avx:",
        "vcmpps ymm0, ymm0, ymm0, 15",
        "vcmpps ymm1, ymm1, ymm1, 15",
        "vcmpps ymm2, ymm2, ymm2, 15",
        "vcmpps ymm3, ymm3, ymm3, 15",
        "vcmpps ymm4, ymm4, ymm4, 15",
        "vcmpps ymm5, ymm5, ymm5, 15",
        "vcmpps ymm6, ymm6, ymm6, 15",
        "vcmpps ymm7, ymm7, ymm7, 15",
        "vcmpps ymm8, ymm8, ymm8, 15",
        "vcmpps ymm9, ymm9, ymm9, 15",
        "vcmpps ymm10, ymm10, ymm10, 15",
        "vcmpps ymm11, ymm11, ymm11, 15",
        "vcmpps ymm12, ymm12, ymm12, 15",
        "vcmpps ymm13, ymm13, ymm13, 15",
        "vcmpps ymm14, ymm14, ymm14, 15",
        "vcmpps ymm15, ymm15, ymm15, 15",
        "ret",
        ".popsection",
    );

    unsafe extern "C" {
        fn ipiq_xstate_test_dirty_avx();
    }

    extern "C" fn avx_message(_: usize) {
        // SAFETY: only called when the CPU has AVX; touches only vector registers.
        unsafe { ipiq_xstate_test_dirty_avx() };
    }

    extern "C" fn enter_avx(_: usize) {
        // SAFETY: as in `message`.
        unsafe { stacks().run(0, avx_message, 0) };
    }

    /// Loads ymm0-15, calls the bracket around `avx_message`, reads ymm0-15 back.
    ///
    /// # Safety
    /// The CPU has AVX and XCR0 enables it.
    #[target_feature(enable = "avx")]
    unsafe fn ymm_round_trip() -> ([u64; 64], [u64; 64]) {
        let input: [u64; 64] =
            core::array::from_fn(|i| 0xfeed_f00d_dead_beefu64.rotate_left(i as u32) ^ i as u64);
        let mut output = [0u64; 64];
        stacks();
        // SAFETY: reads `input` and writes `output` (r13, r14: preserved by the callee); the
        // stack is aligned around the call; every register the C ABI lets a callee clobber is
        // declared.
        unsafe {
            asm!(
                "vmovdqu ymm0, [r13 + 0]",
                "vmovdqu ymm1, [r13 + 32]",
                "vmovdqu ymm2, [r13 + 64]",
                "vmovdqu ymm3, [r13 + 96]",
                "vmovdqu ymm4, [r13 + 128]",
                "vmovdqu ymm5, [r13 + 160]",
                "vmovdqu ymm6, [r13 + 192]",
                "vmovdqu ymm7, [r13 + 224]",
                "vmovdqu ymm8, [r13 + 256]",
                "vmovdqu ymm9, [r13 + 288]",
                "vmovdqu ymm10, [r13 + 320]",
                "vmovdqu ymm11, [r13 + 352]",
                "vmovdqu ymm12, [r13 + 384]",
                "vmovdqu ymm13, [r13 + 416]",
                "vmovdqu ymm14, [r13 + 448]",
                "vmovdqu ymm15, [r13 + 480]",
                "mov r12, rsp",
                "and rsp, -16",
                "call {enter}",
                "mov rsp, r12",
                "vmovdqu [r14 + 0], ymm0",
                "vmovdqu [r14 + 32], ymm1",
                "vmovdqu [r14 + 64], ymm2",
                "vmovdqu [r14 + 96], ymm3",
                "vmovdqu [r14 + 128], ymm4",
                "vmovdqu [r14 + 160], ymm5",
                "vmovdqu [r14 + 192], ymm6",
                "vmovdqu [r14 + 224], ymm7",
                "vmovdqu [r14 + 256], ymm8",
                "vmovdqu [r14 + 288], ymm9",
                "vmovdqu [r14 + 320], ymm10",
                "vmovdqu [r14 + 352], ymm11",
                "vmovdqu [r14 + 384], ymm12",
                "vmovdqu [r14 + 416], ymm13",
                "vmovdqu [r14 + 448], ymm14",
                "vmovdqu [r14 + 480], ymm15",
                "vzeroupper",
                enter = sym enter_avx,
                in("r13") input.as_ptr(),
                in("r14") output.as_mut_ptr(),
                out("r12") _,
                clobber_abi("C"),
            );
        }
        (input, output)
    }

    #[test]
    fn ymm_upper_halves_survive_with_xsave() {
        if !std::arch::is_x86_feature_detected!("avx") {
            eprintln!("SKIPPED ymm_upper_halves_survive_with_xsave: this host has no AVX");
            return;
        }
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let held = SaveInstr::detect_held();
        assert!(
            matches!(held, SaveInstr::Xsave { mask } if mask & 0b100 != 0),
            "AVX without XSAVE of AVX state"
        );
        *HOW.lock().unwrap_or_else(|e| e.into_inner()) = Some(held);
        // SAFETY: AVX detected (CPUID and XCR0).
        let (input, output) = unsafe { ymm_round_trip() };
        assert_eq!(
            output, input,
            "ymm0-15 after a message that set them all ones"
        );
        // FXSAVE does not hold the upper halves: the same check sees them change.
        *HOW.lock().unwrap_or_else(|e| e.into_inner()) = Some(SaveInstr::Fxsave);
        // SAFETY: as above.
        let (input, output) = unsafe { ymm_round_trip() };
        assert_ne!(output, input, "fxsave64 keeps only the low halves");
        let lows_kept = (0..16).all(|r| output[4 * r..4 * r + 2] == input[4 * r..4 * r + 2]);
        assert!(lows_kept, "fxsave64 keeps the XMM (low) halves");
    }

    #[test]
    fn detect_names_an_instruction_this_cpu_has() {
        let how = SaveInstr::detect_held();
        if let SaveInstr::Xsave { mask } = how {
            assert_eq!(mask & !COMPONENTS, 0);
            assert_ne!(mask & 0b11, 0, "x87 and SSE are always enabled with XSAVE");
        }
        match SaveInstr::detect() {
            Ok(SaveInstr::Xsave { mask }) => assert_eq!(mask & !COMPONENTS, 0),
            Ok(SaveInstr::Fxsave) => {}
            Err(xcr0) => assert_ne!(
                xcr0 & !COMPONENTS,
                0,
                "refused only for components beyond AVX"
            ),
        }
    }
}
