//! The Rust heap: `linked_list_allocator` over [`layout::HEAP`].
//!
//! A first-fit free list is plenty for a kernel that allocates a few buffers and the
//! bookkeeping of dmakit's pools at start-up: it is small, `no_std`, has no dependencies of
//! its own beyond a spin lock, and is the allocator most bare-metal Rust examples use, so
//! readers know it. The heap hands out 8-byte aligned blocks, like a kernel's `kmalloc`
//! with a small minimum alignment, which is exactly the situation dmakit is for: heap
//! buffers share cache lines with their neighbours.
//!
//! Its lock does not mask interrupts; that is sound here because dmakit's map, unmap and
//! sync paths allocate nothing, and this kernel takes no interrupts.

use linked_list_allocator::LockedHeap;

use crate::layout::HEAP;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

/// Gives the heap its memory. Called once, before the first allocation.
pub fn init() {
    // SAFETY: HEAP is RAM mapped write-back by the identity map, used by nothing else
    // (layout.rs), and `init` is called once.
    unsafe {
        ALLOCATOR
            .lock()
            .init(HEAP.start as *mut u8, HEAP.len as usize)
    };
}
