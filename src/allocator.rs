//! The process's allocator: the system's (glibc malloc), except that every allocation of
//! `PAGE_ALIGNED_BYTES_MIN` or more starts on a page boundary. A PUT body is a plain
//! `Vec<u8>` of the block's size, and a block write skips the page cache (`O_DIRECT`,
//! `volume::io::BlockWriter`) only from page-aligned memory; asking the system allocator
//! for a stricter alignment than the caller's is allowed (`GlobalAlloc`: the block must
//! fit the layout, and a page-aligned block fits any smaller alignment), and the rule
//! depends on the size alone, so `dealloc` and `realloc` always see the layout their block
//! was made with. Small allocations take exactly the system's path.
//!
//! glibc serves a page-aligned request of this size from the same places as a plain one
//! (its heap, or an mmap of its own for big ones) and frees it with `free`, so buffers
//! still return to glibc's caches and big ones are still unmapped when freed. One
//! difference: growing a big block copies it (the system's aligned `realloc` is allocate,
//! copy, free) where glibc could `mremap`; buffers that grow do so geometrically
//! (`api::body`), so that costs at most one more copy of their final size.

use std::alloc::{GlobalAlloc, Layout, System};

/// A page on every platform keepring runs on, and the alignment `O_DIRECT` needs.
pub const PAGE_BYTES: usize = 4096;

/// Allocations of at least this size are page-aligned: PUT bodies worth streaming to disk
/// start at 1 MiB (`limits::STREAMED_WRITE_BYTES_MIN`).
pub const PAGE_ALIGNED_BYTES_MIN: usize = 1024 * 1024;

/// The global allocator (installed in `lib.rs`).
pub struct PageAlignedLarge;

/// The layout actually asked of the system for `layout`.
fn system_layout(layout: Layout) -> Layout {
    if layout.size() >= PAGE_ALIGNED_BYTES_MIN && layout.align() < PAGE_BYTES {
        // A size below isize::MAX rounded up to a page stays valid: Layout's own limit is
        // isize::MAX - (align - 1), and the caller's layout was already checked against it.
        Layout::from_size_align(layout.size(), PAGE_BYTES).unwrap_or(layout)
    } else {
        layout
    }
}

// SAFETY: every method forwards to `System` with `system_layout(layout)`, a layout of the
// same size and an alignment at least the caller's; the block a method returns therefore
// fits the caller's layout, and since `system_layout` depends only on the size and the
// caller's alignment, `dealloc` and `realloc` pass `System` the layout the block was
// allocated with.
unsafe impl GlobalAlloc for PageAlignedLarge {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the impl's comment; the layout's size is non-zero as the caller's is.
        unsafe { System.alloc(system_layout(layout)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // For a big block this is malloc + memset (the system has no aligned calloc), so
        // every page becomes resident at once; no request path asks for big zeroed blocks.
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(system_layout(layout)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc*` with this same `system_layout(layout)`.
        unsafe { System.dealloc(ptr, system_layout(layout)) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = system_layout(layout);
        // The caller guarantees new_size rounded to layout.align() does not overflow isize.
        let Ok(new_caller) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let new = system_layout(new_caller);
        if new.align() == old.align() {
            // SAFETY: `ptr` was allocated with `old`; the new size is non-zero (caller).
            return unsafe { System.realloc(ptr, old, new_size) };
        }
        // Crossing the size threshold changes the alignment: move by hand.
        // SAFETY: `new` has a non-zero size; on success both blocks are valid for
        // min(old, new) bytes and do not overlap; `ptr` is freed with its own layout.
        unsafe {
            let moved = System.alloc(new);
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                System.dealloc(ptr, old);
            }
            moved
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_vectors_start_on_a_page_and_small_ones_are_left_alone() {
        for size in [PAGE_ALIGNED_BYTES_MIN, PAGE_ALIGNED_BYTES_MIN + 1, 3 << 20, 64 << 20] {
            let buffer: Vec<u8> = Vec::with_capacity(size);
            assert_eq!(buffer.as_ptr() as usize % PAGE_BYTES, 0, "{size} bytes");
        }
        // glibc's own small-block alignment is 16: at least one of a few small blocks is
        // not on a page, which shows the rule does not apply below the threshold.
        let small: Vec<Vec<u8>> = (0..8).map(|_| Vec::with_capacity(100)).collect();
        assert!(small
            .iter()
            .any(|buffer| !(buffer.as_ptr() as usize).is_multiple_of(PAGE_BYTES)));
    }

    #[test]
    fn growing_and_shrinking_across_the_threshold_keeps_the_bytes() {
        let pattern = |length: usize| (0..length).map(|index| (index * 7 + 3) as u8).collect::<Vec<u8>>();
        // Small → big (the alignment changes: moved by hand).
        let mut buffer = pattern(1000);
        buffer.reserve_exact(2 * PAGE_ALIGNED_BYTES_MIN);
        assert_eq!(buffer.as_ptr() as usize % PAGE_BYTES, 0);
        assert_eq!(buffer, pattern(1000));
        // Big → bigger (same alignment: the system's realloc).
        buffer.resize(PAGE_ALIGNED_BYTES_MIN + 5, 0);
        buffer[..1000].copy_from_slice(&pattern(1000));
        buffer.reserve_exact(8 * PAGE_ALIGNED_BYTES_MIN);
        assert_eq!(buffer.as_ptr() as usize % PAGE_BYTES, 0);
        assert_eq!(buffer[..1000], pattern(1000)[..]);
        // Big → small.
        buffer.truncate(1000);
        buffer.shrink_to_fit();
        assert_eq!(buffer, pattern(1000));
        // Zeroed big allocations are zero.
        let zeroed = vec![0u8; 2 * PAGE_ALIGNED_BYTES_MIN];
        assert_eq!(zeroed.as_ptr() as usize % PAGE_BYTES, 0);
        assert!(zeroed.iter().all(|&byte| byte == 0));
    }
}
