//! A [`GlobalAlloc`] over kmalloc, so a kernel can use it as its heap.
//!
//! kmalloc deals in physical addresses and never touches memory; a heap hands out pointers.
//! The bridge is the kernel's linear map: all of RAM mapped at `virt = phys + offset`. The
//! adapter is given that offset at construction and trusts it, which is why construction is
//! `unsafe`.
//!
//! # Bookkeeping and re-entrancy
//!
//! kmalloc keeps its own bookkeeping in `alloc` collections. Those allocations must not be
//! served by this same heap (the adapter would re-enter its own lock): a kernel that makes
//! [`KmallocHeap`] its `#[global_allocator]` must route allocations made *inside* kmalloc to
//! a separate boot allocator, for example with a per-CPU "inside the heap" flag, and route
//! frees by address range. The host test of this module does exactly that with a
//! thread-local flag.

use core::alloc::{GlobalAlloc, Layout};

use crate::kmalloc::{AllocKind, Kmalloc};
use dmakit::platform::PageAllocator;
use dmakit::PhysAddr;

/// kmalloc as a heap: pointers are `phys + linear_offset`.
#[derive(Debug)]
pub struct KmallocHeap<A> {
    kmalloc: Kmalloc<A>,
    linear_offset: u64,
}

impl<A: PageAllocator> KmallocHeap<A> {
    /// A heap over `kmalloc`, whose memory is reached at `phys + linear_offset`.
    ///
    /// # Safety
    /// For as long as the heap is used, the caller guarantees that for every physical page
    /// the page allocator under `kmalloc` can hand out:
    /// - `phys + linear_offset` neither overflows nor wraps, and is the address of that page
    ///   in the current address space, valid for reads and writes by any thread;
    /// - the memory there is used by nothing but this heap (no other allocator hands it out,
    ///   no device writes it unless a heap user lent it);
    /// - the page allocator never hands the same page out twice while it is allocated (the
    ///   [`PageAllocator`] contract).
    pub const unsafe fn new(kmalloc: Kmalloc<A>, linear_offset: u64) -> Self {
        Self {
            kmalloc,
            linear_offset,
        }
    }

    /// The kmalloc underneath (statistics, slabinfo).
    pub fn kmalloc(&self) -> &Kmalloc<A> {
        &self.kmalloc
    }

    /// The pointer a physical address is reached at.
    pub fn virt(&self, phys: PhysAddr) -> *mut u8 {
        phys.as_u64().wrapping_add(self.linear_offset) as usize as *mut u8
    }

    /// The physical address behind a pointer of this heap.
    pub fn phys(&self, ptr: *const u8) -> PhysAddr {
        PhysAddr::new((ptr as usize as u64).wrapping_sub(self.linear_offset))
    }
}

// SAFETY: `alloc` returns either null or a pointer to `layout.size()` bytes (at least), aligned
// to `layout.align()`, that kmalloc will not hand out again until `dealloc`; by the contract of
// `KmallocHeap::new` those bytes are valid, exclusively owned memory. `dealloc` hands the
// object back to kmalloc, which rejects addresses it did not hand out.
unsafe impl<A: PageAllocator> GlobalAlloc for KmallocHeap<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // A zero-size layout is not allowed by the `GlobalAlloc` contract; serve it as 1 byte
        // rather than fail.
        let size = (layout.size() as u64).max(1);
        match self
            .kmalloc
            .alloc_aligned(size, layout.align() as u64, AllocKind::Normal)
        {
            Ok(phys) => self.virt(phys),
            Err(_) => core::ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        if let Err(e) = self.kmalloc.free(self.phys(ptr)) {
            log::error!("heap dealloc of {ptr:p} ignored: {e}");
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let phys = self.phys(ptr);
        let usable = match self.kmalloc.usable_size(phys) {
            Ok(info) => info.usable,
            Err(_) => return core::ptr::null_mut(),
        };
        // Growing or shrinking within the object's size class keeps the object, as long as
        // the class is not wastefully large for the new size (more than twice).
        let new = new_size as u64;
        if new <= usable && new.saturating_mul(2) > usable {
            return ptr;
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: `new_layout` has the alignment of `layout` and a size the caller's contract
        // makes non-zero.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            let n = layout.size().min(new_size);
            // SAFETY: `ptr` is valid for `layout.size()` bytes (the caller's contract),
            // `new_ptr` for `new_size` bytes (just allocated), and distinct live objects of
            // kmalloc do not overlap.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new_ptr, n) };
            // SAFETY: `ptr` was allocated by this heap with `layout` (the caller's contract)
            // and is not used after this point.
            unsafe { self.dealloc(ptr, layout) };
        }
        new_ptr
    }
}
