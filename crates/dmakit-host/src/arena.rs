//! The host allocation that stands in for RAM, and the checked arithmetic between its
//! physical addresses and its pointers.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

use dmakit::{MemoryFault, PhysAddr, PhysRange};

use crate::error::{ForeignPointer, HostError};

/// `size` bytes of zeroed, resident host memory presented at `[phys_base, phys_base + size)`.
pub(crate) struct Arena {
    ptr: NonNull<u8>,
    layout: Layout,
    range: PhysRange,
}

impl Arena {
    /// Allocates the arena, page aligned, and touches every page.
    ///
    /// # Errors
    /// [`HostError::BadSize`] for a zero size, one that does not fit `usize`, or an
    /// overflowing range; [`HostError::OutOfMemory`] if the allocation fails.
    pub(crate) fn new(phys_base: u64, size: u64) -> Result<Self, HostError> {
        let bytes = usize::try_from(size).map_err(|_| HostError::BadSize)?;
        // A zero size or a range whose end overflows is refused here.
        let range = PhysRange::new(PhysAddr::new(phys_base), size).ok_or(HostError::BadSize)?;
        let layout = Layout::from_size_align(bytes, 4096).map_err(|_| HostError::BadSize)?;
        // SAFETY: the layout has a non-zero size (`PhysRange::new` refused zero).
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).ok_or(HostError::OutOfMemory)?;
        // Touch every page now, so measurements never pay first-touch page faults: a
        // kernel's RAM is resident.
        // SAFETY: `ptr` is valid for `bytes` bytes, just allocated.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
        Ok(Self { ptr, layout, range })
    }

    /// The physical range the arena covers.
    pub(crate) fn range(&self) -> PhysRange {
        self.range
    }

    /// A pointer to `len` bytes at `addr`, if they lie in the arena (`len` may be 0).
    ///
    /// # Errors
    /// [`MemoryFault`] otherwise.
    pub(crate) fn at(&self, addr: PhysAddr, len: u64) -> Result<NonNull<u8>, MemoryFault> {
        let fault = MemoryFault { addr, len };
        let off = addr.checked_offset_from(self.range.start()).ok_or(fault)?;
        let end = off.checked_add(len).ok_or(fault)?;
        if end > self.range.len() {
            return Err(fault);
        }
        // SAFETY: `off + len <= size`, so the offset stays inside (or one past) the
        // allocation, and `off` fits `usize` because the size does.
        Ok(unsafe { self.ptr.add(off as usize) })
    }

    /// The physical address of `len` bytes at `ptr`, if they lie in the arena (`len` may
    /// be 0).
    ///
    /// # Errors
    /// [`ForeignPointer`] otherwise.
    pub(crate) fn phys_of(&self, ptr: *const u8, len: usize) -> Result<PhysAddr, ForeignPointer> {
        let foreign = ForeignPointer {
            addr: ptr.addr(),
            len,
        };
        let off = ptr
            .addr()
            .checked_sub(self.ptr.as_ptr().addr())
            .ok_or(foreign)?;
        let end = off.checked_add(len).ok_or(foreign)?;
        if end > self.layout.size() {
            return Err(foreign);
        }
        Ok(self.range.start().add(off as u64))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this layout and is freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
    }
}
