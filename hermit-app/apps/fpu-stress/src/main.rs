//! fpu-stress: application message functions that compute with floating point, against threads
//! that check their own floating-point state bit for bit.
//!
//! Core 0 sends message functions a few thousand times per second to every other core; on each
//! target a thread pinned there computes with f64 and holds register state across spin windows
//! in which the messages interrupt it. The messages:
//! - `heavy`: a few hundred f64 multiplications, square roots and divisions (SSE) plus x87 work
//!   (`fsqrt`, `fmul`), each result checked against a value precomputed on core 0; on entry it
//!   checks that it got the ABI's state: x87 control word 0x37F, empty x87 stack, no x87 status
//!   bits, MXCSR control 0x1F80;
//! - `odd`: leaves deliberately odd state behind: MXCSR round-up with flush-to-zero and
//!   denormals-are-zero, x87 control word single precision round-up, three values left on the
//!   x87 stack, every XMM register all ones (and, with AVX, every YMM register all ones);
//! - `nested`: computes, sends a message to its own core (which runs at once, nested inside it:
//!   `nested` again, down to a chosen depth of 1-6, then `odd`), and checks that the state it sees
//!   after the nested call is the one it had and that its results are still exact;
//! - `heavy` also goes passive (drained by the target's tick) and through cpusync rendezvous.
//!
//! The thread on each target, in a loop: the same f64 chain as `heavy`, compared bit for bit with
//! the precomputed value; an XMM window (xmm0-15 loaded with a pattern and MXCSR set to
//! round-toward-zero, a spin, then every register and MXCSR read back exactly); an x87 window
//! (control word single precision, three values on the x87 stack, a spin, then the status word,
//! the control word, the three values and a division that depends on the precision read back);
//! with AVX, a YMM window (ymm0-15, upper halves included). A window counts as *hit* when a
//! message ran on that core during it. A run that did not interrupt the thread cannot pass: past
//! its run time it goes on until every kind of window on every target was hit at least 3 times,
//! and fails if that takes over 30 s.
//!
//! Arguments (after `--`): `ms=N` (least run time, default 2000), `rate=N` (messages per second to each
//! target, default 4000), `spins=N` (length of a window, default 30000 loop turns), `nest=N`
//! (deepest nesting of the nested messages, 0-6, default 6; 0 sends none), `require-avx`
//! (fail unless the CPU has AVX and the windows used it).
//! Output: one line per target core and a final `fpu-stress: PASS` or `fpu-stress: FAIL: why`;
//! exits 0 only on PASS.
//!
//! An application message function runs on the target core in interrupt context. A nested send
//! from inside one is a syscall; Hermit's syscall entry moves to the top of the task's kernel
//! stack, so this test nests only in messages that interrupt the target's thread while it runs
//! its own loop, which makes no syscall.

use std::arch::{asm, global_asm};
use std::hint::black_box;
use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipiq_abi::hermit::{self, AppFn};
use ipiq_abi::CpuSet;

use hermit_apps::pinned;

use pinned::{apic_id, join, spawn_on};

/// Most cores the tallies cover.
const MAX_CORES: usize = 64;
/// Distinct inputs of the f64 and x87 computations (each precomputed on core 0).
const SEEDS: usize = 64;
const CHAIN_LANES: usize = 16;
/// 16 lanes x 16 rounds: 256 multiplications, 256 square roots, 256 divisions per chain.
const CHAIN_ROUNDS: usize = 16;
/// MXCSR at reset and as the ABI wants it: all exceptions masked, round to nearest.
const MXCSR_DEFAULT: u32 = 0x1F80;
/// x87 control word at `fninit` and as the ABI wants it: extended precision, round to nearest.
const FCW_DEFAULT: u16 = 0x037F;
/// The thread's MXCSR inside its XMM window: round toward zero, flags clear.
const MXCSR_WINDOW: u32 = 0x7F80;
/// The thread's x87 control word inside its x87 window: single precision, round to nearest.
const FCW_WINDOW: u16 = 0x007F;

/// The deepest nesting `nested` is asked for.
const MAX_NEST: usize = 6;
/// Each kind of window on each target must be hit by a message at least this often...
const MIN_HITS: u64 = 3;
/// ...within this long (the run goes on past `ms` until then).
const MAX_RUN_MS: u64 = 30_000;

// ----- the computations ----------------------------------------------------------------------

/// A few hundred dependent f64 operations whose every rounding depends on MXCSR; the bits of
/// the result folded into one word.
#[inline(never)]
fn chain(seed: usize) -> u64 {
    let mut v = [0f64; CHAIN_LANES];
    for (i, x) in v.iter_mut().enumerate() {
        *x = 1.0 + ((seed * 31 + i) % 97) as f64 / 7.0;
    }
    for _ in 0..CHAIN_ROUNDS {
        for i in 0..CHAIN_LANES {
            let next = v[(i + 1) % CHAIN_LANES];
            v[i] = (v[i] * next + 0.5).sqrt() * 1.000_1 + 1.0 / (next + 3.0);
        }
    }
    v.iter()
        .fold(0u64, |acc, x| acc.rotate_left(7) ^ x.to_bits())
}

/// x87 work of a message: sqrt, multiply, add pi, at the precision and rounding of the x87
/// control word it finds (the ABI's default when called correctly).
#[inline(never)]
fn x87_work(seed: usize) -> u64 {
    let a = 2.0 + seed as f64;
    let b = 1.0 / 3.0 + seed as f64 / 11.0;
    let mut out = 0f64;
    // SAFETY: loads two f64 from and stores one f64 to valid locals; the x87 stack is empty
    // again at the end (three pushes, three pops), and st(0)-st(7) are declared clobbered.
    unsafe {
        asm!(
            "fld qword ptr [{a}]",
            "fsqrt",
            "fld qword ptr [{b}]",
            "fmulp st(1), st",
            "fldpi",
            "faddp st(1), st",
            "fld st(0)",
            "fmulp st(1), st",
            "fstp qword ptr [{out}]",
            a = in(reg) &a,
            b = in(reg) &b,
            out = in(reg) &mut out,
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        );
    }
    out.to_bits()
}

/// Precomputed on core 0 before any message is sent.
static EXPECT_CHAIN: [AtomicU64; SEEDS] = [const { AtomicU64::new(0) }; SEEDS];
static EXPECT_X87_WORK: [AtomicU64; SEEDS] = [const { AtomicU64::new(0) }; SEEDS];

// ----- the floating-point state a message finds --------------------------------------------

/// The x87 and SSE control and status state, read with `fxsave64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FpState {
    fcw: u16,
    fsw: u16,
    /// Abridged tag word: one bit per x87 register, 1 = in use.
    ftw: u8,
    mxcsr: u32,
}

impl FpState {
    fn read() -> Self {
        #[repr(C, align(16))]
        struct Area([u8; 512]);
        let mut area = Area([0; 512]);
        // SAFETY: fxsave64 writes 512 bytes at a 16-aligned address: `area` is both.
        unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
        let a = &area.0;
        FpState {
            fcw: u16::from_le_bytes([a[0], a[1]]),
            fsw: u16::from_le_bytes([a[2], a[3]]),
            ftw: a[4],
            mxcsr: u32::from_le_bytes([a[24], a[25], a[26], a[27]]),
        }
    }

    /// What the ABI promises a function on entry (MXCSR's sticky flags aside: the compiler may
    /// place an inexact operation before the read).
    fn is_abi_default(&self) -> bool {
        self.fcw == FCW_DEFAULT
            && self.fsw == 0
            && self.ftw == 0
            && self.mxcsr & !0x3F == MXCSR_DEFAULT
    }
}

/// Gives the calling thread an empty x87 stack and the default x87 control word. Hermit 0.11
/// starts a task with the FSAVE-style tag word 0xFFFF in its FXSAVE-format state, which
/// `fxrstor` reads as all eight x87 registers in use (the XSAVE path starts in the init state
/// instead), so a thread makes its x87 state what the ABI says before it checks anything.
fn reset_x87() {
    // SAFETY: fninit only resets x87 state; no x87 value is live in Rust code here.
    unsafe { asm!("fninit", options(nomem, nostack)) };
}

// ----- tallies --------------------------------------------------------------------------------

/// Per target core: what its thread saw and how many messages ran there.
struct CoreTally {
    /// Message functions that ran on this core (bumped by each, as its last step but one).
    msgs: AtomicU64,
    iterations: AtomicU64,
    chain_bad: AtomicU64,
    mxcsr_bad: AtomicU64,
    xmm_windows: AtomicU64,
    xmm_hit: AtomicU64,
    xmm_bad: AtomicU64,
    x87_windows: AtomicU64,
    x87_hit: AtomicU64,
    x87_bad: AtomicU64,
    ymm_windows: AtomicU64,
    ymm_hit: AtomicU64,
    ymm_bad: AtomicU64,
    ready: AtomicBool,
}

impl CoreTally {
    const fn new() -> Self {
        CoreTally {
            msgs: AtomicU64::new(0),
            iterations: AtomicU64::new(0),
            chain_bad: AtomicU64::new(0),
            mxcsr_bad: AtomicU64::new(0),
            xmm_windows: AtomicU64::new(0),
            xmm_hit: AtomicU64::new(0),
            xmm_bad: AtomicU64::new(0),
            x87_windows: AtomicU64::new(0),
            x87_hit: AtomicU64::new(0),
            x87_bad: AtomicU64::new(0),
            ymm_windows: AtomicU64::new(0),
            ymm_hit: AtomicU64::new(0),
            ymm_bad: AtomicU64::new(0),
            ready: AtomicBool::new(false),
        }
    }
}

static CORES: [CoreTally; MAX_CORES] = [const { CoreTally::new() }; MAX_CORES];

// Message-side failures (messages run in interrupt context: atomics only, no locks, no prints).
static MSG_ENTRY_BAD: AtomicU64 = AtomicU64::new(0);
/// The first bad entry state seen, packed: fcw << 48 | fsw << 32 | ftw << 24 | mxcsr & 0xffffff.
static MSG_ENTRY_FIRST: AtomicU64 = AtomicU64::new(0);
static MSG_CHAIN_BAD: AtomicU64 = AtomicU64::new(0);
static MSG_X87_BAD: AtomicU64 = AtomicU64::new(0);
static NEST_STATE_BAD: AtomicU64 = AtomicU64::new(0);
static NEST_STATE_FIRST: AtomicU64 = AtomicU64::new(0);
static NEST_SEND_ERR: AtomicU64 = AtomicU64::new(0);

/// Descriptions of the first thread-side mismatches (threads only; never taken by a message).
static FAILURES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn note_failure(line: String) {
    let mut failures = FAILURES.lock().unwrap_or_else(|e| e.into_inner());
    if failures.len() < 12 {
        failures.push(line);
    }
}

fn pack(state: FpState) -> u64 {
    (u64::from(state.fcw) << 48)
        | (u64::from(state.fsw) << 32)
        | (u64::from(state.ftw) << 24)
        | u64::from(state.mxcsr & 0xff_ffff)
}

/// Relaxed: each counter only counts; the reader looks after `wait` and the joins, which order
/// every message and thread before it.
fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

// ----- message functions -----------------------------------------------------------------------

fn check_entry() {
    let state = FpState::read();
    if !state.is_abi_default() {
        if MSG_ENTRY_BAD.fetch_add(1, Ordering::Relaxed) == 0 {
            MSG_ENTRY_FIRST.store(pack(state), Ordering::Relaxed);
        }
    }
}

fn ran_here() {
    if let Some(tally) = CORES.get(apic_id()) {
        bump(&tally.msgs);
    }
}

/// A few hundred f64 operations and some x87 work, checked against core 0's results.
extern "C" fn heavy(seed: usize) {
    check_entry();
    let seed = seed % SEEDS;
    if chain(black_box(seed)) != EXPECT_CHAIN[seed].load(Ordering::Relaxed) {
        bump(&MSG_CHAIN_BAD);
    }
    if x87_work(black_box(seed)) != EXPECT_X87_WORK[seed].load(Ordering::Relaxed) {
        bump(&MSG_X87_BAD);
    }
    ran_here();
}

// Leaves odd state behind on purpose (an ABI violation a careless or hostile message function
// commits): MXCSR 0xDFC0 (round up, flush-to-zero, denormals-are-zero), x87 control word 0x087F
// (single precision, round up), three values on the x87 stack, xmm0-15 all ones; the AVX
// variant also sets the upper halves of ymm0-15.
global_asm!(
    ".pushsection .text.fpu_stress_leave_odd_state,\"ax\",@progbits",
    ".globl fpu_stress_leave_odd_state",
    ".type fpu_stress_leave_odd_state,@function",
    "fpu_stress_leave_odd_state:",
    "sub rsp, 8",
    "mov dword ptr [rsp], 0xDFC0",
    "ldmxcsr dword ptr [rsp]",
    "mov word ptr [rsp], 0x087F",
    "fldcw word ptr [rsp]",
    "add rsp, 8",
    "fld1",
    "fldpi",
    "fldl2e",
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
    ".size fpu_stress_leave_odd_state, . - fpu_stress_leave_odd_state",
    ".globl fpu_stress_leave_odd_state_avx",
    ".type fpu_stress_leave_odd_state_avx,@function",
    "fpu_stress_leave_odd_state_avx:",
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
    "sub rsp, 8",
    "mov dword ptr [rsp], 0xDFC0",
    "ldmxcsr dword ptr [rsp]",
    "mov word ptr [rsp], 0x087F",
    "fldcw word ptr [rsp]",
    "add rsp, 8",
    "fld1",
    "fldpi",
    "fldl2e",
    "ret",
    ".size fpu_stress_leave_odd_state_avx, . - fpu_stress_leave_odd_state_avx",
    ".popsection",
);

unsafe extern "C" {
    /// Sets the odd state described above and returns (clobbers only that state).
    fn fpu_stress_leave_odd_state();
    /// The same plus all-ones upper halves in ymm0-15; needs AVX.
    fn fpu_stress_leave_odd_state_avx();
}

extern "C" fn odd(_: usize) {
    check_entry();
    ran_here();
    // SAFETY: the routine touches only floating-point state (and 8 bytes below the stack
    // pointer that it reserves). It deliberately breaks the ABI's rule that MXCSR and the x87
    // control word survive a call and the x87 stack is empty on return: this is the last thing
    // this function does, so no code of ours runs with that state.
    unsafe { fpu_stress_leave_odd_state() };
}

extern "C" fn odd_avx(_: usize) {
    check_entry();
    ran_here();
    // SAFETY: as in `odd`; only sent when the CPU and the kernel enable AVX.
    unsafe { fpu_stress_leave_odd_state_avx() };
}

/// `arg`: depth << 16 | seed. Computes, runs a nested message on its own core (`nested` one
/// level shallower, or at depth 1 an odd one), then checks its state and results.
extern "C" fn nested(arg: usize) {
    check_entry();
    let seed = arg & 0xffff;
    let depth = arg >> 16;
    let before = chain(black_box(seed % SEEDS));
    let avx = AVX.load(Ordering::Relaxed);
    let (inner, inner_arg): (AppFn, usize) = if depth > 1 {
        (nested, ((depth - 1) << 16) | ((seed + 1) % SEEDS))
    } else if avx && seed % 2 == 0 {
        (odd_avx, 0)
    } else {
        (odd, 0)
    };
    // A message to the calling core runs at once, nested in this one.
    if hermit::send(apic_id(), inner, inner_arg).is_err() {
        bump(&NEST_SEND_ERR);
    }
    let state = FpState::read();
    if !state.is_abi_default() && NEST_STATE_BAD.fetch_add(1, Ordering::Relaxed) == 0 {
        NEST_STATE_FIRST.store(pack(state), Ordering::Relaxed);
    }
    let after = chain(black_box(seed % SEEDS));
    let expect = EXPECT_CHAIN[seed % SEEDS].load(Ordering::Relaxed);
    if before != expect || after != expect {
        bump(&MSG_CHAIN_BAD);
    }
    ran_here();
}

static AVX: AtomicBool = AtomicBool::new(false);

// ----- the thread's windows -------------------------------------------------------------------

/// The thread's scratch block for its windows (offsets are used by the assembly below).
#[repr(C, align(64))]
struct Hold {
    xmm_in: [u64; 32],
    xmm_out: [u64; 32],
    ymm_in: [u64; 64],
    ymm_out: [u64; 64],
    x87_in: [f64; 3],
    x87_out: [u64; 4],
    mxcsr_in: u32,
    mxcsr_out: u32,
    mxcsr_default: u32,
    fcw_in: u16,
    fcw_out: u16,
    fcw_default: u16,
    fsw_mid: u16,
}

const _: () = {
    assert!(offset_of!(Hold, xmm_in) == 0);
    assert!(offset_of!(Hold, xmm_out) == 256);
    assert!(offset_of!(Hold, ymm_in) == 512);
    assert!(offset_of!(Hold, ymm_out) == 1024);
};

impl Hold {
    fn new() -> Box<Self> {
        Box::new(Hold {
            xmm_in: [0; 32],
            xmm_out: [0; 32],
            ymm_in: [0; 64],
            ymm_out: [0; 64],
            x87_in: [0.0; 3],
            x87_out: [0; 4],
            mxcsr_in: MXCSR_WINDOW,
            mxcsr_out: 0,
            mxcsr_default: MXCSR_DEFAULT,
            fcw_in: FCW_WINDOW,
            fcw_out: 0,
            fcw_default: FCW_DEFAULT,
            fsw_mid: 0,
        })
    }
}

fn pattern(i: u64, k: usize) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .rotate_left(k as u32)
}

/// Loads xmm0-15 and MXCSR from `h`, spins `spins` turns, stores them back to `h`, restores the
/// default MXCSR.
fn xmm_window(h: &mut Hold, spins: u64) {
    // SAFETY: reads and writes only `h` (offsets checked above); every XMM register is declared
    // clobbered and MXCSR is back at its default when the block ends.
    unsafe {
        asm!(
            "ldmxcsr dword ptr [{h} + {mxin}]",
            "movdqu xmm0, xmmword ptr [{h} + 0]",
            "movdqu xmm1, xmmword ptr [{h} + 16]",
            "movdqu xmm2, xmmword ptr [{h} + 32]",
            "movdqu xmm3, xmmword ptr [{h} + 48]",
            "movdqu xmm4, xmmword ptr [{h} + 64]",
            "movdqu xmm5, xmmword ptr [{h} + 80]",
            "movdqu xmm6, xmmword ptr [{h} + 96]",
            "movdqu xmm7, xmmword ptr [{h} + 112]",
            "movdqu xmm8, xmmword ptr [{h} + 128]",
            "movdqu xmm9, xmmword ptr [{h} + 144]",
            "movdqu xmm10, xmmword ptr [{h} + 160]",
            "movdqu xmm11, xmmword ptr [{h} + 176]",
            "movdqu xmm12, xmmword ptr [{h} + 192]",
            "movdqu xmm13, xmmword ptr [{h} + 208]",
            "movdqu xmm14, xmmword ptr [{h} + 224]",
            "movdqu xmm15, xmmword ptr [{h} + 240]",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "dec {n}",
            "jnz 2b",
            "3:",
            "movdqu xmmword ptr [{h} + 256], xmm0",
            "movdqu xmmword ptr [{h} + 272], xmm1",
            "movdqu xmmword ptr [{h} + 288], xmm2",
            "movdqu xmmword ptr [{h} + 304], xmm3",
            "movdqu xmmword ptr [{h} + 320], xmm4",
            "movdqu xmmword ptr [{h} + 336], xmm5",
            "movdqu xmmword ptr [{h} + 352], xmm6",
            "movdqu xmmword ptr [{h} + 368], xmm7",
            "movdqu xmmword ptr [{h} + 384], xmm8",
            "movdqu xmmword ptr [{h} + 400], xmm9",
            "movdqu xmmword ptr [{h} + 416], xmm10",
            "movdqu xmmword ptr [{h} + 432], xmm11",
            "movdqu xmmword ptr [{h} + 448], xmm12",
            "movdqu xmmword ptr [{h} + 464], xmm13",
            "movdqu xmmword ptr [{h} + 480], xmm14",
            "movdqu xmmword ptr [{h} + 496], xmm15",
            "stmxcsr dword ptr [{h} + {mxout}]",
            "ldmxcsr dword ptr [{h} + {mxdef}]",
            h = in(reg) h as *mut Hold,
            n = inout(reg) spins => _,
            mxin = const offset_of!(Hold, mxcsr_in),
            mxout = const offset_of!(Hold, mxcsr_out),
            mxdef = const offset_of!(Hold, mxcsr_default),
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        );
    }
}

/// Clears the x87 exception flags, sets the x87 control word from `h`, pushes `h.x87_in` (three values), spins, then stores the
/// status and control words, the three values and st(0)/st(1) divided at that precision, and
/// restores the default control word. The x87 stack is empty again at the end.
fn x87_window(h: &mut Hold, spins: u64) {
    // SAFETY: reads and writes only `h`; st(0)-st(7) are declared clobbered; three pushes are
    // matched by four pops of four pushes; the control word is back at its default.
    unsafe {
        asm!(
            "fnclex",
            "fldcw word ptr [{h} + {fcwin}]",
            "fld qword ptr [{h} + {xin}]",
            "fld qword ptr [{h} + {xin} + 8]",
            "fld qword ptr [{h} + {xin} + 16]",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "dec {n}",
            "jnz 2b",
            "3:",
            "fnstsw word ptr [{h} + {fswmid}]",
            "fnstcw word ptr [{h} + {fcwout}]",
            "fld st(0)",
            "fdiv st(0), st(2)",
            "fstp qword ptr [{h} + {xout} + 24]",
            "fstp qword ptr [{h} + {xout} + 16]",
            "fstp qword ptr [{h} + {xout} + 8]",
            "fstp qword ptr [{h} + {xout}]",
            "fldcw word ptr [{h} + {fcwdef}]",
            h = in(reg) h as *mut Hold,
            n = inout(reg) spins => _,
            fcwin = const offset_of!(Hold, fcw_in),
            fcwout = const offset_of!(Hold, fcw_out),
            fcwdef = const offset_of!(Hold, fcw_default),
            fswmid = const offset_of!(Hold, fsw_mid),
            xin = const offset_of!(Hold, x87_in),
            xout = const offset_of!(Hold, x87_out),
            out("st(0)") _, out("st(1)") _, out("st(2)") _, out("st(3)") _,
            out("st(4)") _, out("st(5)") _, out("st(6)") _, out("st(7)") _,
            options(nostack),
        );
    }
}

/// Loads ymm0-15 from `h`, spins, stores them back, `vzeroupper`.
///
/// # Safety
/// The CPU must have AVX and the kernel must have enabled it (XCR0).
#[target_feature(enable = "avx")]
unsafe fn ymm_window(h: &mut Hold, spins: u64) {
    // SAFETY: reads and writes only `h`; every YMM register is declared clobbered; AVX is
    // available (the caller's contract).
    unsafe {
        asm!(
            "vmovdqu ymm0, ymmword ptr [{h} + 512]",
            "vmovdqu ymm1, ymmword ptr [{h} + 544]",
            "vmovdqu ymm2, ymmword ptr [{h} + 576]",
            "vmovdqu ymm3, ymmword ptr [{h} + 608]",
            "vmovdqu ymm4, ymmword ptr [{h} + 640]",
            "vmovdqu ymm5, ymmword ptr [{h} + 672]",
            "vmovdqu ymm6, ymmword ptr [{h} + 704]",
            "vmovdqu ymm7, ymmword ptr [{h} + 736]",
            "vmovdqu ymm8, ymmword ptr [{h} + 768]",
            "vmovdqu ymm9, ymmword ptr [{h} + 800]",
            "vmovdqu ymm10, ymmword ptr [{h} + 832]",
            "vmovdqu ymm11, ymmword ptr [{h} + 864]",
            "vmovdqu ymm12, ymmword ptr [{h} + 896]",
            "vmovdqu ymm13, ymmword ptr [{h} + 928]",
            "vmovdqu ymm14, ymmword ptr [{h} + 960]",
            "vmovdqu ymm15, ymmword ptr [{h} + 992]",
            "test {n}, {n}",
            "jz 3f",
            "2:",
            "dec {n}",
            "jnz 2b",
            "3:",
            "vmovdqu ymmword ptr [{h} + 1024], ymm0",
            "vmovdqu ymmword ptr [{h} + 1056], ymm1",
            "vmovdqu ymmword ptr [{h} + 1088], ymm2",
            "vmovdqu ymmword ptr [{h} + 1120], ymm3",
            "vmovdqu ymmword ptr [{h} + 1152], ymm4",
            "vmovdqu ymmword ptr [{h} + 1184], ymm5",
            "vmovdqu ymmword ptr [{h} + 1216], ymm6",
            "vmovdqu ymmword ptr [{h} + 1248], ymm7",
            "vmovdqu ymmword ptr [{h} + 1280], ymm8",
            "vmovdqu ymmword ptr [{h} + 1312], ymm9",
            "vmovdqu ymmword ptr [{h} + 1344], ymm10",
            "vmovdqu ymmword ptr [{h} + 1376], ymm11",
            "vmovdqu ymmword ptr [{h} + 1408], ymm12",
            "vmovdqu ymmword ptr [{h} + 1440], ymm13",
            "vmovdqu ymmword ptr [{h} + 1472], ymm14",
            "vmovdqu ymmword ptr [{h} + 1504], ymm15",
            "vzeroupper",
            h = in(reg) h as *mut Hold,
            n = inout(reg) spins => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
            out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
            out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack),
        );
    }
}

fn x87_inputs(seed: usize) -> [f64; 3] {
    [
        1.0 + seed as f64,
        3.0 + seed as f64 / 7.0,
        std::f64::consts::PI * (seed + 1) as f64,
    ]
}

/// What an uninterrupted x87 window gives for each seed (precomputed on core 0).
struct X87Expect {
    out: [u64; 4],
    fsw: u16,
}

/// Runs until `STOP`: checks the f64 chain, then an XMM, an x87 and (with AVX) a YMM window.
fn worker(core: usize, spins: u64, x87_expect: &[X87Expect], avx: bool) {
    reset_x87();
    let tally = &CORES[core];
    let mut h = Hold::new();
    tally.ready.store(true, Ordering::Release);
    // Acquire: pairs with main's Release store; the expected values were written before it.
    while !START.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    let mut i = 0u64;
    // Acquire: pairs with main's Release store after every message finished.
    while !STOP.load(Ordering::Acquire) {
        let seed = (i as usize) % SEEDS;
        let got = chain(black_box(seed));
        let expect = EXPECT_CHAIN[seed].load(Ordering::Relaxed);
        if got != expect {
            bump(&tally.chain_bad);
            note_failure(format!(
                "core {core} iteration {i}: f64 chain {got:#018x}, expected {expect:#018x}"
            ));
        }
        let state = FpState::read();
        if state.mxcsr & !0x3F != MXCSR_DEFAULT || state.fcw != FCW_DEFAULT || state.ftw != 0 {
            bump(&tally.mxcsr_bad);
            note_failure(format!(
                "core {core} iteration {i}: thread state {state:x?}, expected the defaults"
            ));
        }

        // XMM window.
        for k in 0..32 {
            h.xmm_in[k] = pattern(i, k);
        }
        h.mxcsr_in = MXCSR_WINDOW;
        let before = tally.msgs.load(Ordering::Relaxed);
        xmm_window(&mut h, spins);
        let hit = tally.msgs.load(Ordering::Relaxed) != before;
        bump(&tally.xmm_windows);
        if hit {
            bump(&tally.xmm_hit);
        }
        if h.xmm_out != h.xmm_in || h.mxcsr_out != h.mxcsr_in {
            bump(&tally.xmm_bad);
            let reg = (0..16).find(|&r| h.xmm_out[2 * r..2 * r + 2] != h.xmm_in[2 * r..2 * r + 2]);
            note_failure(format!(
                "core {core} iteration {i}: XMM window (hit by a message: {hit}): first bad register {reg:?}, MXCSR {:#x} (expected {:#x})",
                h.mxcsr_out, h.mxcsr_in
            ));
        }

        // x87 window.
        h.x87_in = x87_inputs(seed);
        h.fcw_in = FCW_WINDOW;
        let before = tally.msgs.load(Ordering::Relaxed);
        x87_window(&mut h, spins);
        let hit = tally.msgs.load(Ordering::Relaxed) != before;
        bump(&tally.x87_windows);
        if hit {
            bump(&tally.x87_hit);
        }
        let want = &x87_expect[seed];
        if h.x87_out != want.out || h.fsw_mid != want.fsw || h.fcw_out != FCW_WINDOW {
            bump(&tally.x87_bad);
            note_failure(format!(
                "core {core} iteration {i}: x87 window (hit by a message: {hit}): values {:x?} (expected {:x?}), status {:#x} (expected {:#x}), control {:#x} (expected {FCW_WINDOW:#x})",
                h.x87_out, want.out, h.fsw_mid, want.fsw, h.fcw_out
            ));
        }

        // YMM window.
        if avx {
            for k in 0..64 {
                h.ymm_in[k] = pattern(i ^ 0x5555, k);
            }
            let before = tally.msgs.load(Ordering::Relaxed);
            // SAFETY: `avx` is true only when the CPU has AVX and XCR0 enables it.
            unsafe { ymm_window(&mut h, spins) };
            let hit = tally.msgs.load(Ordering::Relaxed) != before;
            bump(&tally.ymm_windows);
            if hit {
                bump(&tally.ymm_hit);
            }
            if h.ymm_out != h.ymm_in {
                bump(&tally.ymm_bad);
                let reg =
                    (0..16).find(|&r| h.ymm_out[4 * r..4 * r + 4] != h.ymm_in[4 * r..4 * r + 4]);
                note_failure(format!("core {core} iteration {i}: YMM window (hit by a message: {hit}): first bad register {reg:?}"));
            }
        }
        i += 1;
    }
    tally.iterations.store(i, Ordering::Relaxed);
}

static START: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);

// ----- main -----------------------------------------------------------------------------------

struct Options {
    ms: u64,
    rate: u64,
    spins: u64,
    /// Deepest nesting of the nested messages; 0: none are sent.
    nest: usize,
    require_avx: bool,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        ms: 2_000,
        rate: 4_000,
        spins: 30_000,
        nest: MAX_NEST,
        require_avx: false,
    };
    for arg in std::env::args().skip(1) {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("bad number in argument '{arg}'"))
        };
        match arg.split_once('=') {
            Some(("ms", v)) => o.ms = number(v)?,
            Some(("rate", v)) => o.rate = number(v)?.max(1),
            Some(("spins", v)) => o.spins = number(v)?,
            Some(("nest", v)) => o.nest = (number(v)? as usize).min(MAX_NEST),
            None if arg == "require-avx" => o.require_avx = true,
            _ => {
                return Err(format!(
                    "unknown argument '{arg}' (ms=N rate=N spins=N nest=N require-avx)"
                ))
            }
        }
    }
    Ok(o)
}

#[derive(Default)]
struct Sent {
    heavy: u64,
    passive: u64,
    odd: u64,
    odd_avx: u64,
    nested: u64,
    /// Message functions the nested messages run in all (each nests `depth` times, then odd).
    nested_runs: u64,
    cpusync: u64,
}

fn main() {
    match run() {
        Ok(()) => println!("fpu-stress: PASS"),
        Err(why) => {
            println!("fpu-stress: FAIL: {why}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<(), String> {
    let o = options()?;
    let cpus = hermit::cpu_count().min(MAX_CORES);
    if cpus < 2 {
        return Err(format!("needs at least 2 cores, has {cpus}"));
    }
    if hermit::core_id() != 0 {
        return Err("main does not run on core 0".into());
    }
    let avx = std::arch::is_x86_feature_detected!("avx");
    AVX.store(avx, Ordering::Relaxed);
    if o.require_avx && !avx {
        return Err("require-avx: this CPU (or its XCR0) has no AVX".into());
    }
    println!(
        "fpu-stress: {cpus} cores, AVX {}, {} ms, {} messages/s to each of cores 1-{}, windows of {} turns",
        if avx { "yes" } else { "no" },
        o.ms,
        o.rate,
        cpus - 1,
        o.spins
    );

    // Reference results, on core 0 with the ABI's default state (no message runs here).
    reset_x87();
    for seed in 0..SEEDS {
        EXPECT_CHAIN[seed].store(chain(black_box(seed)), Ordering::Relaxed);
        EXPECT_X87_WORK[seed].store(x87_work(black_box(seed)), Ordering::Relaxed);
    }
    let mut h = Hold::new();
    let mut x87_expect = Vec::with_capacity(SEEDS);
    for seed in 0..SEEDS {
        h.x87_in = x87_inputs(seed);
        h.fcw_in = FCW_WINDOW;
        x87_window(&mut h, 0);
        x87_expect.push(X87Expect {
            out: h.x87_out,
            fsw: h.fsw_mid,
        });
    }
    // The check would miss a reset control word if single and extended precision agreed here.
    let mut wide = Hold::new();
    wide.x87_in = x87_inputs(1);
    wide.fcw_in = FCW_DEFAULT;
    x87_window(&mut wide, 0);
    if wide.x87_out[3] == x87_expect[1].out[3] {
        return Err(
            "self-check: the x87 window's division does not depend on the precision".into(),
        );
    }
    let x87_expect = std::sync::Arc::new(x87_expect);

    let targets: Vec<usize> = (1..cpus).collect();
    let mut tids = Vec::new();
    for &core in &targets {
        let expect = x87_expect.clone();
        let spins = o.spins;
        tids.push(spawn_on(core, move || worker(core, spins, &expect, avx))?);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !targets
        .iter()
        .all(|&c| CORES[c].ready.load(Ordering::Acquire))
    {
        if Instant::now() > deadline {
            return Err("the pinned threads did not start within 10 s".into());
        }
        std::thread::yield_now();
    }
    // Release: the expected values above are visible to the threads that see START.
    START.store(true, Ordering::Release);

    let set = match CpuSet::from_cpus(targets.iter().copied()) {
        Ok(set) => set,
        Err(e) => return Err(format!("target set: {e}")),
    };
    let mut sent: Vec<Sent> = (0..cpus).map(|_| Sent::default()).collect();
    let period = Duration::from_nanos(1_000_000_000 / o.rate);
    let begin = Instant::now();
    let mut next = begin;
    let mut k = 0usize;
    let err =
        |what: &str, core: usize, e: ipiq_abi::Error| format!("{what} to core {core} failed: {e}");
    let least = Duration::from_millis(o.ms);
    let most = least.max(Duration::from_millis(MAX_RUN_MS));
    // Past the run time, go on until every kind of window on every target was hit a few times
    // (a loaded host runs the vCPUs, and so the drains, less often), within a bound.
    let exercised = || {
        targets.iter().all(|&c| {
            let t = &CORES[c];
            let l = |x: &AtomicU64| x.load(Ordering::Relaxed);
            l(&t.xmm_hit) >= MIN_HITS
                && l(&t.x87_hit) >= MIN_HITS
                && (!avx || l(&t.ymm_hit) >= MIN_HITS)
        })
    };
    while begin.elapsed() < least || (!exercised() && begin.elapsed() < most) {
        for &core in &targets {
            let seed = (k * 7 + core) % SEEDS;
            let s = &mut sent[core];
            match k % 16 {
                3 => {
                    hermit::send(core, odd, 0).map_err(|e| err("odd", core, e))?;
                    s.odd += 1;
                }
                7 if avx => {
                    hermit::send(core, odd_avx, 0).map_err(|e| err("odd_avx", core, e))?;
                    s.odd_avx += 1;
                }
                11 if o.nest > 0 => {
                    let depth = 1 + (k / 16) % o.nest;
                    hermit::send(core, nested, (depth << 16) | seed)
                        .map_err(|e| err("nested", core, e))?;
                    s.nested += 1;
                    s.nested_runs += depth as u64 + 1;
                }
                13 => {
                    hermit::send_passive(core, heavy, seed).map_err(|e| err("passive", core, e))?;
                    s.passive += 1;
                }
                _ => {
                    hermit::send(core, heavy, seed).map_err(|e| err("heavy", core, e))?;
                    s.heavy += 1;
                }
            }
        }
        if k % 64 == 21 {
            let n = hermit::cpusync(&set, heavy, k % SEEDS)
                .map_err(|e| format!("cpusync failed: {e}"))?;
            if n != targets.len() {
                return Err(format!(
                    "cpusync reached {n} cores, expected {}",
                    targets.len()
                ));
            }
            for &core in &targets {
                sent[core].cpusync += 1;
            }
        }
        k += 1;
        next += period;
        while Instant::now() < next {
            std::hint::spin_loop();
        }
    }
    let elapsed = begin.elapsed();
    // Every message has run once `wait` returns (I5), while the threads still loop.
    for &core in &targets {
        let seq = hermit::seq(core).map_err(|e| format!("seq of core {core}: {e}"))?;
        hermit::wait(core, seq).map_err(|e| format!("wait for core {core}: {e}"))?;
    }
    // Release: pairs with the threads' Acquire loads.
    STOP.store(true, Ordering::Release);
    for tid in tids {
        join(tid);
    }

    let total: u64 = sent
        .iter()
        .map(|s| s.heavy + s.passive + s.odd + s.odd_avx + s.nested + s.cpusync)
        .sum();
    println!(
        "fpu-stress: sent {total} messages in {:.0} ms: {:.0} per second to each target",
        elapsed.as_secs_f64() * 1e3,
        total as f64 / elapsed.as_secs_f64() / targets.len() as f64
    );
    let mut problems = Vec::new();
    for &core in &targets {
        let t = &CORES[core];
        let s = &sent[core];
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let expected = s.heavy + s.passive + s.odd + s.odd_avx + s.nested_runs + s.cpusync;
        println!(
            "fpu-stress: core {core}: {} iterations; messages sent {} (heavy {}, passive {}, odd {}, odd-avx {}, nested {} running {} functions, cpusync {}), ran {}; windows hit/total: xmm {}/{}, x87 {}/{}, ymm {}/{}; bad: chain {}, state {}, xmm {}, x87 {}, ymm {}",
            l(&t.iterations),
            s.heavy + s.passive + s.odd + s.odd_avx + s.nested + s.cpusync,
            s.heavy,
            s.passive,
            s.odd,
            s.odd_avx,
            s.nested,
            s.nested_runs,
            s.cpusync,
            l(&t.msgs),
            l(&t.xmm_hit),
            l(&t.xmm_windows),
            l(&t.x87_hit),
            l(&t.x87_windows),
            l(&t.ymm_hit),
            l(&t.ymm_windows),
            l(&t.chain_bad),
            l(&t.mxcsr_bad),
            l(&t.xmm_bad),
            l(&t.x87_bad),
            l(&t.ymm_bad),
        );
        let bad = l(&t.chain_bad) + l(&t.mxcsr_bad) + l(&t.xmm_bad) + l(&t.x87_bad) + l(&t.ymm_bad);
        if bad > 0 {
            problems.push(format!(
                "core {core}: {bad} of its thread's checks saw wrong results or state"
            ));
        }
        if l(&t.msgs) != expected {
            problems.push(format!(
                "core {core}: {} message functions ran, {expected} were sent",
                l(&t.msgs)
            ));
        }
        if l(&t.xmm_hit) < MIN_HITS || l(&t.x87_hit) < MIN_HITS || (avx && l(&t.ymm_hit) < MIN_HITS)
        {
            problems.push(format!(
                "core {core}: not exercised: some kind of window was interrupted by a message fewer than {MIN_HITS} times in {MAX_RUN_MS} ms"
            ));
        }
    }
    let msg = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "fpu-stress: messages: bad entry state {} (first {:#018x}: fcw<<48|fsw<<32|ftw<<24|mxcsr), bad f64 results {}, bad x87 results {}, bad state after a nested message {} (first {:#018x}), failed nested sends {}; {:.0} ms",
        msg(&MSG_ENTRY_BAD),
        msg(&MSG_ENTRY_FIRST),
        msg(&MSG_CHAIN_BAD),
        msg(&MSG_X87_BAD),
        msg(&NEST_STATE_BAD),
        msg(&NEST_STATE_FIRST),
        msg(&NEST_SEND_ERR),
        elapsed.as_secs_f64() * 1e3
    );
    for line in FAILURES.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("fpu-stress: mismatch: {line}");
    }
    let msg_bad = msg(&MSG_ENTRY_BAD)
        + msg(&MSG_CHAIN_BAD)
        + msg(&MSG_X87_BAD)
        + msg(&NEST_STATE_BAD)
        + msg(&NEST_SEND_ERR);
    if msg_bad > 0 {
        problems.push(format!("{msg_bad} message-side checks failed"));
    }
    if o.require_avx
        && targets
            .iter()
            .all(|&c| CORES[c].ymm_windows.load(Ordering::Relaxed) == 0)
    {
        problems.push("require-avx: no YMM window ran".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
