//! The process allocator: the system allocator, except that single allocations of 1 GiB or more
//! are served by `mmap(MAP_NORESERVE)`.
//!
//! Why: kafka-protocol's decoders reserve `Vec` capacity straight from array counts on the wire
//! (`Vec::with_capacity(n)` before reading any element). A hostile count of 2^31 elements asks
//! for hundreds of GiB; the system allocator refuses and Rust aborts the whole broker. A
//! no-reserve mapping of address space succeeds without committing memory, the decoder then
//! fails on the first missing element, and the mapping is returned untouched. Frames themselves
//! are bounded by `socket.request.max.bytes` before any of this happens; nothing in strata
//! legitimately allocates 1 GiB in one piece, so normal allocations never take this path.

use std::alloc::{GlobalAlloc, Layout, System};

const HUGE_BYTES: usize = 1 << 30;
const PAGE_BYTES: usize = 4096;

pub struct GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_BYTES && layout.align() <= PAGE_BYTES
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        ptr as *mut u8
    }
}

unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) {
            // Anonymous mappings are zero-filled.
            // SAFETY: see `map`.
            unsafe { map(layout.size()) }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) {
            // SAFETY: `ptr` came from `map` with this exact size.
            unsafe {
                libc::munmap(ptr as *mut libc::c_void, layout.size());
            }
        } else {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            // SAFETY: forwarded with the caller's guarantees.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // SAFETY: fresh allocation; copy the smaller of the two sizes, then free the old block.
        unsafe {
            let new_ptr = self.alloc(new_layout);
            if !new_ptr.is_null() {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            new_ptr
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_capacity_does_not_abort() {
        // 2^31 elements of 128 bytes: 256 GiB of address space, never touched.
        let v: Vec<[u8; 128]> = Vec::with_capacity(i32::MAX as usize);
        assert!(v.capacity() >= i32::MAX as usize);
        let mut small: Vec<u8> = Vec::with_capacity(16);
        small.extend_from_slice(b"still fine");
        assert_eq!(&small[..], b"still fine");
    }
}
