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
        SaveInstr::Fxsave => FXSAVE_STACKS.get_or_init(|| SaveStacks::new(1, 2, SaveInstr::Fxsave)),
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
        xmm_in: core::array::from_fn(|i| 0x0123_4567_89ab_cdefu64.rotate_left(i as u32) ^ i as u64),
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
