//! hermit-builtins: the C functions a Hermit application expects from the kernel archive.
//!
//! The kernel is linked into the application as one static archive (`libhermit.a`). The
//! kernel's own copies of core and compiler-builtins are renamed before linking, so the
//! application needs these plain C symbols from somewhere else: the math library (from the
//! `libm` crate) and the memory/string functions (below, written with `rep movsb`/`rep stosb`
//! so that the compiler cannot turn them back into calls to themselves).
//!
//! The image build renames every other global symbol of this archive (core, libm internals,
//! the panic handler) and appends it to `libhermit.a`.

#![no_std]

use core::arch::asm;
use core::ffi::{c_char, c_int};

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // Nothing here panics on valid input; there is no console to report to.
    loop {
        core::hint::spin_loop();
    }
}

/// Export `libm` functions with the C ABI under their C names.
macro_rules! export {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name($($arg: $ty),*) -> $ret {
                libm::$name($($arg),*)
            }
        )*
    };
}

export! {
    acos(x: f64) -> f64; acosf(x: f32) -> f32;
    acosh(x: f64) -> f64; acoshf(x: f32) -> f32;
    asin(x: f64) -> f64; asinf(x: f32) -> f32;
    asinh(x: f64) -> f64; asinhf(x: f32) -> f32;
    atan(x: f64) -> f64; atanf(x: f32) -> f32;
    atan2(y: f64, x: f64) -> f64; atan2f(y: f32, x: f32) -> f32;
    atanh(x: f64) -> f64; atanhf(x: f32) -> f32;
    cbrt(x: f64) -> f64; cbrtf(x: f32) -> f32;
    ceil(x: f64) -> f64; ceilf(x: f32) -> f32;
    copysign(x: f64, y: f64) -> f64; copysignf(x: f32, y: f32) -> f32;
    cos(x: f64) -> f64; cosf(x: f32) -> f32;
    cosh(x: f64) -> f64; coshf(x: f32) -> f32;
    erf(x: f64) -> f64; erff(x: f32) -> f32;
    erfc(x: f64) -> f64; erfcf(x: f32) -> f32;
    exp(x: f64) -> f64; expf(x: f32) -> f32;
    exp2(x: f64) -> f64; exp2f(x: f32) -> f32;
    exp10(x: f64) -> f64; exp10f(x: f32) -> f32;
    expm1(x: f64) -> f64; expm1f(x: f32) -> f32;
    fabs(x: f64) -> f64; fabsf(x: f32) -> f32;
    fdim(x: f64, y: f64) -> f64; fdimf(x: f32, y: f32) -> f32;
    floor(x: f64) -> f64; floorf(x: f32) -> f32;
    fma(x: f64, y: f64, z: f64) -> f64; fmaf(x: f32, y: f32, z: f32) -> f32;
    fmax(x: f64, y: f64) -> f64; fmaxf(x: f32, y: f32) -> f32;
    fmin(x: f64, y: f64) -> f64; fminf(x: f32, y: f32) -> f32;
    fmod(x: f64, y: f64) -> f64; fmodf(x: f32, y: f32) -> f32;
    hypot(x: f64, y: f64) -> f64; hypotf(x: f32, y: f32) -> f32;
    ilogb(x: f64) -> i32; ilogbf(x: f32) -> i32;
    ldexp(x: f64, n: i32) -> f64; ldexpf(x: f32, n: i32) -> f32;
    lgamma(x: f64) -> f64; lgammaf(x: f32) -> f32;
    log(x: f64) -> f64; logf(x: f32) -> f32;
    log10(x: f64) -> f64; log10f(x: f32) -> f32;
    log1p(x: f64) -> f64; log1pf(x: f32) -> f32;
    log2(x: f64) -> f64; log2f(x: f32) -> f32;
    nextafter(x: f64, y: f64) -> f64; nextafterf(x: f32, y: f32) -> f32;
    pow(x: f64, y: f64) -> f64; powf(x: f32, y: f32) -> f32;
    remainder(x: f64, y: f64) -> f64; remainderf(x: f32, y: f32) -> f32;
    rint(x: f64) -> f64; rintf(x: f32) -> f32;
    round(x: f64) -> f64; roundf(x: f32) -> f32;
    scalbn(x: f64, n: i32) -> f64; scalbnf(x: f32, n: i32) -> f32;
    sin(x: f64) -> f64; sinf(x: f32) -> f32;
    sinh(x: f64) -> f64; sinhf(x: f32) -> f32;
    sqrt(x: f64) -> f64; sqrtf(x: f32) -> f32;
    tan(x: f64) -> f64; tanf(x: f32) -> f32;
    tanh(x: f64) -> f64; tanhf(x: f32) -> f32;
    tgamma(x: f64) -> f64; tgammaf(x: f32) -> f32;
    trunc(x: f64) -> f64; truncf(x: f32) -> f32;
}

/// Export `libm` functions that return a second result, through a C out-pointer.
macro_rules! export_out {
    ($($name:ident($($arg:ident: $ty:ty),*; $out:ident: *mut $out_ty:ty) -> $ret:ty;)*) => {
        $(
            /// # Safety
            /// The out-pointer must be valid for a write.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty,)* $out: *mut $out_ty) -> $ret {
                let (result, second) = libm::$name($($arg),*);
                unsafe { $out.write(second) };
                result
            }
        )*
    };
}

export_out! {
    frexp(x: f64; exponent: *mut c_int) -> f64;
    frexpf(x: f32; exponent: *mut c_int) -> f32;
    lgamma_r(x: f64; sign: *mut c_int) -> f64;
    lgammaf_r(x: f32; sign: *mut c_int) -> f32;
    modf(x: f64; integral: *mut f64) -> f64;
    modff(x: f32; integral: *mut f32) -> f32;
    remquo(x: f64, y: f64; quotient: *mut c_int) -> f64;
    remquof(x: f32, y: f32; quotient: *mut c_int) -> f32;
}

/// # Safety
/// Both pointers must be valid for a write.
#[no_mangle]
pub unsafe extern "C" fn sincos(x: f64, sin: *mut f64, cos: *mut f64) {
    let (s, c) = libm::sincos(x);
    unsafe {
        sin.write(s);
        cos.write(c);
    }
}

/// # Safety
/// Both pointers must be valid for a write.
#[no_mangle]
pub unsafe extern "C" fn sincosf(x: f32, sin: *mut f32, cos: *mut f32) {
    let (s, c) = libm::sincosf(x);
    unsafe {
        sin.write(s);
        cos.write(c);
    }
}

/// # Safety
/// As C's `memcpy`: both ranges valid for `n` bytes and not overlapping.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
            options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C's `memmove`: both ranges valid for `n` bytes; they may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // dest is below src or the ranges do not overlap: copying forwards is safe.
        unsafe { memcpy(dest, src, n) }
    } else {
        // dest overlaps the end of src: copy backwards, from the last byte down.
        unsafe {
            asm!("std", "rep movsb", "cld",
                inout("rcx") n => _,
                inout("rdi") dest.add(n - 1) => _,
                inout("rsi") src.add(n - 1) => _,
                options(nostack));
        }
        dest
    }
}

/// # Safety
/// As C's `memset`: the range valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, value: c_int, n: usize) -> *mut u8 {
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") value as u8,
            options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// As C's `memcmp`: both ranges valid for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    for i in 0..n {
        // Volatile reads keep the compiler from recognising this loop as a call to memcmp/bcmp.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return c_int::from(x) - c_int::from(y);
        }
    }
    0
}

/// # Safety
/// As C's `bcmp`.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> c_int {
    unsafe { memcmp(a, b, n) }
}

/// # Safety
/// As C's `strlen`: a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn strlen(s: *const c_char) -> usize {
    let mut n = 0;
    // Volatile for the same reason as in `memcmp`.
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    n
}
