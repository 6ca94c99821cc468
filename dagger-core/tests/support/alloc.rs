//! A global allocator that records the largest single allocation made by the current
//! thread while a closure runs, so tests can bound what untrusted input makes a decoder
//! allocate. Included with `#[path]` by the fuzz tests of several crates; each test binary
//! that includes it installs it as its global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    /// The largest request seen on this thread since the last [`largest_allocation`] began;
    /// `None` outside of one.
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The system allocator, recording request sizes.
pub struct Tracking;

fn record(size: usize) {
    // `try_with`: the slot may be gone while the thread exits.
    let _ = LARGEST.try_with(|l| {
        if let Some(max) = l.get() {
            l.set(Some(max.max(size)));
        }
    });
}

// SAFETY: forwards to `System` unchanged; recording touches only a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns its result with the largest single allocation (in bytes) it made
/// on this thread.
pub fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(Some(0)));
    let r = f();
    let max = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
    (r, max)
}
