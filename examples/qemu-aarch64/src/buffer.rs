//! Page-aligned heap buffers, so a test can place a transfer at an exact offset from a
//! cache line.

use core::alloc::Layout;
use core::ptr::NonNull;

use dmakit::platform::PAGE_SIZE;

/// `len` zeroed bytes on the heap, starting on a page boundary.
pub struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Arena {
    /// A zeroed arena of `len` bytes (at least 1).
    pub fn new(len: usize) -> Self {
        let layout =
            Layout::from_size_align(len.max(1), PAGE_SIZE as usize).expect("arena sizes are small");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| alloc::alloc::handle_alloc_error(layout));
        Self { ptr, layout }
    }

    /// The bytes.
    pub fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` initialised bytes that this
        // arena owns; the borrow of `self` keeps it unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
