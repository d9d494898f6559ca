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

/// One nesting level of one core: its save area and, in a core's first level, the core's
/// nesting depth. Each core's levels are consecutive in one table ([`SaveStacks`]), so the
/// whole machine's areas are one allocation (in the Hermit kernel every long-lived allocation
/// lengthens the allocator's search on each later allocation, `docs/known-issues.md`).
/// A level is whole cache lines (the area is 64-aligned and whole lines, so the depth has a
/// line of its own), so no two cores' levels share a line.
struct Level {
    /// In a core's first level: how many brackets are open on the core, written only by its own
    /// core. Unused (0) in the other levels.
    depth: AtomicUsize,
    /// The state saved by the bracket open at this level.
    area: UnsafeCell<SaveArea>,
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
    /// Levels per core.
    levels: usize,
    /// Core `c`'s levels are `table[c * levels..(c + 1) * levels]`.
    table: Box<[Level]>,
}

// SAFETY: each core's areas and depth are used only by that core (the contract of `run`),
// strictly nested, so no area is ever used by two contexts at once.
unsafe impl Sync for SaveStacks {}
// SAFETY: owns plain memory; moving it between threads moves no per-core use.
unsafe impl Send for SaveStacks {}

impl SaveStacks {
    /// Areas for `cpus` cores, `levels` nesting levels each (`cpus * levels * 896` bytes, one
    /// allocation), saved with `how`. Allocates: call at bring-up, never in interrupt context.
    pub fn new(cpus: usize, levels: usize, how: SaveInstr) -> Self {
        let table = (0..cpus.saturating_mul(levels))
            .map(|_| Level {
                depth: AtomicUsize::new(0),
                area: UnsafeCell::new(SaveArea::new()),
            })
            .collect::<Vec<_>>()
            .into_boxed_slice();
        SaveStacks { how, levels, table }
    }

    /// Core `cpu`'s levels; `None` past the cores or with no levels (the stack serves then).
    #[inline]
    fn core_levels(&self, cpu: usize) -> Option<&[Level]> {
        let first = cpu.checked_mul(self.levels)?;
        let levels = self.table.get(first..first.checked_add(self.levels)?)?;
        (!levels.is_empty()).then_some(levels)
    }

    /// The save instruction in use.
    pub fn instr(&self) -> SaveInstr {
        self.how
    }

    /// How many brackets are open on `cpu` now (0 outside any).
    pub fn depth(&self, cpu: usize) -> usize {
        // Relaxed: a core-local counter; another core reads it only for diagnostics.
        self.core_levels(cpu)
            .map_or(0, |levels| levels[0].depth.load(Ordering::Relaxed))
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
        let Some(levels) = self.core_levels(cpu) else {
            // SAFETY: the caller's contract, passed on.
            return unsafe { run_on_stack(self.how, func, arg) };
        };
        // The core's depth, in its first level (`core_levels` returns none empty).
        let depth_word = &levels[0].depth;
        // Relaxed load and store: a core-local counter. An interrupt between them nests a whole
        // bracket that leaves the counter as it found it, and uses this level's area before
        // this bracket does (it reads the same depth): last in, first out either way.
        let depth = depth_word.load(Ordering::Relaxed);
        let Some(level) = levels.get(depth) else {
            // SAFETY: as above.
            return unsafe { run_on_stack(self.how, func, arg) };
        };
        depth_word.store(depth + 1, Ordering::Relaxed);
        let area = level.area.get();
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
        depth_word.store(depth, Ordering::Relaxed);
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
mod tests;
