//! `LimitedAlloc`: a global allocator for fuzz targets that aborts the process on any single
//! allocation above a limit, so that "bytes read from disk never make raftwal allocate without
//! bound" is checked without a sanitizer's malloc hooks (libFuzzer's `-malloc_limit_mb` works
//! only under one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The system allocator, refusing (by aborting, which the fuzzer reports as a crash) any single
/// allocation, zeroed allocation or reallocation larger than `limit_bytes`.
///
/// Aborting rather than returning null matters: a null return would reach `try_reserve` callers
/// as an ordinary error and hide the oversized request the check exists to find.
#[derive(Debug)]
pub struct LimitedAlloc {
    limit_bytes: usize,
}

impl LimitedAlloc {
    /// An allocator refusing requests above `limit_bytes`.
    pub const fn new(limit_bytes: usize) -> LimitedAlloc {
        LimitedAlloc { limit_bytes }
    }

    /// Whether a request of `size` bytes is within the limit.
    pub fn allows(&self, size: usize) -> bool {
        size <= self.limit_bytes
    }

    fn check(&self, size: usize) {
        if !self.allows(size) {
            // Stderr is unbuffered and `write!` to it does not allocate.
            let _ = writeln!(
                std::io::stderr(),
                "LimitedAlloc: an allocation of {size} bytes passes the limit of {} bytes",
                self.limit_bytes
            );
            std::process::abort();
        }
    }
}

// SAFETY: every method checks the size (which never allocates) and then forwards its arguments
// unchanged to `System`, which upholds `GlobalAlloc`'s contract; callers' obligations are the
// same as `System`'s.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for LimitedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: forwarded unchanged; the caller guarantees `layout` has a non-zero size.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.check(new_size);
        // SAFETY: `ptr` came from `System` with `layout`; the caller guarantees `new_size` is
        // valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_up_to_the_limit_only() {
        let limited = LimitedAlloc::new(256 << 20);
        assert!(limited.allows(0));
        assert!(limited.allows(256 << 20));
        assert!(!limited.allows((256 << 20) + 1));
        assert!(!limited.allows(usize::MAX));
    }

    #[test]
    fn allocates_and_frees_within_the_limit() {
        let limited = LimitedAlloc::new(1 << 20);
        let layout = Layout::from_size_align(4096, 8).unwrap();
        // SAFETY: a non-zero layout; the pointer is checked, written within its size, grown with
        // the same layout and freed once with the layout it then has.
        unsafe {
            let ptr = limited.alloc_zeroed(layout);
            assert!(!ptr.is_null());
            assert_eq!(*ptr.add(4095), 0);
            *ptr = 7;
            let grown = limited.realloc(ptr, layout, 8192);
            assert!(!grown.is_null());
            assert_eq!(*grown, 7);
            limited.dealloc(grown, Layout::from_size_align(8192, 8).unwrap());
        }
    }
}
