//! A bump allocator over a static array: the loader allocates a few small things once
//! (ELF parsing, the device tree) and never needs to reuse memory.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 256 * 1024;

#[repr(C, align(4096))]
struct Heap(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: every allocation hands out a distinct range of the array.
unsafe impl Sync for Heap {}

struct BumpAllocator {
    heap: Heap,
    /// Offset of the first free byte. Only one CPU runs the loader; the atomic just keeps the
    /// shared state sound without `static mut`.
    next: AtomicUsize,
}

// SAFETY: ranges never overlap (see `alloc`), and freed memory is simply not reused.
unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.heap.0.get() as usize;
        let mut result = core::ptr::null_mut();
        // Relaxed is enough: a single CPU, and the range itself carries no other data.
        let _ = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                let start = (base + next).next_multiple_of(layout.align()) - base;
                let end = start.checked_add(layout.size())?;
                if end > HEAP_SIZE {
                    return None;
                }
                result = (base + start) as *mut u8;
                Some(end)
            });
        result
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: BumpAllocator = BumpAllocator {
    heap: Heap(UnsafeCell::new([0; HEAP_SIZE])),
    next: AtomicUsize::new(0),
};
