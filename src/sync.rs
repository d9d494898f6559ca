//! The atomics and cells the protocol is built from.
//!
//! Under `--cfg ipiq_loom` (with feature `loom`) every type here is loom's model-checked twin, so the loom tests in
//! `tests/loom.rs` explore the interleavings of the very code the kernel runs. Outside loom they
//! are the `core` types, with a thin [`UnsafeCell`] wrapper that offers loom's closure API.

#[cfg(ipiq_loom)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(ipiq_loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(ipiq_loom))]
pub(crate) use alloc::sync::Arc;
#[cfg(not(ipiq_loom))]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering,
};

/// An `UnsafeCell` with loom's access API (`with`, `with_mut`).
#[cfg(ipiq_loom)]
pub(crate) use loom::cell::UnsafeCell;

/// An `UnsafeCell` with loom's access API (`with`, `with_mut`).
#[cfg(not(ipiq_loom))]
#[derive(Debug)]
pub(crate) struct UnsafeCell<T>(core::cell::UnsafeCell<T>);

#[cfg(not(ipiq_loom))]
impl<T> UnsafeCell<T> {
    #[inline]
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Calls `f` with a shared raw pointer to the contents.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents.
    #[inline]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Pads and aligns a value to its own cache line pair, so that fields written by different cores
/// never share a line (x86_64's adjacent-line prefetcher pulls lines in pairs, hence 128 bytes).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CachePadded<T>(pub T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
