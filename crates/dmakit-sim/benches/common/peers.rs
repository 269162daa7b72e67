//! What a bounce costs without dmakit: the peers `paired` runs next to dmakit's bounces.
//!
//! A bounce must at least copy the buffer into memory the device may own and copy it back,
//! so the floor is two plain copies; what a driver writer would do without a bounce pool
//! is to take that memory from the global allocator for every transfer; and the `dma-api`
//! crate offers a streaming map whose platform backend may bounce. Each peer here moves the
//! same bytes as a dmakit `FromDevice` bounce of the same buffer (copy in, copy back) with
//! no cache maintenance, as the host platform's is a no-op in these benchmarks.

use std::alloc::{alloc, dealloc, Layout};
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use dma_api::{
    DeviceDma, DmaAddr, DmaAllocHandle, DmaCoherency, DmaConstraints, DmaDeviceInfo, DmaDirection,
    DmaDomainId, DmaError, DmaMapHandle, DmaOp,
};

/// The devices' cache line: every bounce buffer is aligned to it.
const LINE: usize = 64;

/// Two plain copies of `len` bytes, `buf` to `other` and back: the floor of a bounce when
/// `other` sits at the same offset within a page as `buf` (x86 cores can stall a load that
/// matches an earlier store's address modulo 4 KiB, "4K aliasing", so copies between other
/// offsets may cost more).
///
/// # Safety
/// `buf` and `other` must each be valid for `len` bytes, not overlap, and not be accessed
/// otherwise while this runs.
pub unsafe fn two_copies(buf: NonNull<u8>, other: NonNull<u8>, len: usize) {
    // SAFETY: the caller guarantees both ranges are valid, disjoint and unshared.
    unsafe {
        core::ptr::copy_nonoverlapping(buf.as_ptr(), black_box(other.as_ptr()), len);
        core::ptr::copy_nonoverlapping(black_box(other.as_ptr()), buf.as_ptr(), len);
    }
}

/// A driver writer's bounce: a line-aligned buffer from the global allocator, copy in, copy
/// back, free.
///
/// # Safety
/// As [`two_copies`] for `buf`; `len` must not be zero.
pub unsafe fn global_alloc_bounce(buf: NonNull<u8>, len: usize) {
    let layout = Layout::from_size_align(len, LINE).expect("bounce layout");
    // SAFETY: `layout` has a non-zero size (the caller's `len`).
    let bounce = unsafe { alloc(layout) };
    assert!(!bounce.is_null(), "global allocator refused {len} bytes");
    // SAFETY: `bounce` was just allocated for `len` bytes; the caller guarantees `buf`.
    unsafe {
        core::ptr::copy_nonoverlapping(buf.as_ptr(), black_box(bounce), len);
        core::ptr::copy_nonoverlapping(black_box(bounce), buf.as_ptr(), len);
        dealloc(bounce, layout);
    }
}

/// A `dma-api` platform backend that bounces every streaming map through a line-aligned
/// buffer from the global allocator. `dma-api` itself copies into the bounce buffer in
/// `prepare_for_device` and back in `complete_for_cpu`; the backend allocates on map and
/// frees on unmap. Its cache maintenance is a no-op (as the host platform's), and it serves
/// no coherent or contiguous allocations.
struct GlobalBounceOp;

impl DmaOp for GlobalBounceOp {
    fn page_size(&self) -> usize {
        4096
    }

    unsafe fn alloc_contiguous(&self, _: DmaConstraints, _: Layout) -> Option<DmaAllocHandle> {
        None
    }

    unsafe fn dealloc_contiguous(&self, _: DmaAllocHandle) {
        unreachable!("no contiguous allocation was handed out")
    }

    unsafe fn alloc_coherent(&self, _: DmaConstraints, _: Layout) -> Option<DmaAllocHandle> {
        None
    }

    unsafe fn dealloc_coherent(&self, _: DmaAllocHandle) -> Result<(), DmaError> {
        unreachable!("no coherent allocation was handed out")
    }

    unsafe fn map_streaming(
        &self,
        constraints: DmaConstraints,
        addr: NonNull<u8>,
        size: NonZeroUsize,
        _: DmaDirection,
    ) -> Result<DmaMapHandle, DmaError> {
        let layout = Layout::from_size_align(size.get(), constraints.align.max(LINE))?;
        // SAFETY: `layout` has a non-zero size.
        let bounce = NonNull::new(unsafe { alloc(layout) }).ok_or(DmaError::NoMemory)?;
        let dma = DmaAddr::from(bounce.as_ptr() as u64);
        // SAFETY: `addr` is the caller's buffer, live until unmap (`map_streaming`'s
        // contract); `bounce` is a live allocation described by `layout`.
        Ok(unsafe { DmaMapHandle::new(addr, dma, layout, Some(bounce)) })
    }

    unsafe fn unmap_streaming(&self, handle: DmaMapHandle) {
        let bounce = handle.bounce_ptr().expect("every map bounces");
        // SAFETY: `map_streaming` allocated `bounce` with exactly this layout.
        unsafe { dealloc(bounce.as_ptr(), handle.layout()) }
    }

    fn flush(&self, _: NonNull<u8>, _: usize) {}

    fn invalidate(&self, _: NonNull<u8>, _: usize) {}

    fn flush_invalidate(&self, _: NonNull<u8>, _: usize) {}
}

/// `dma-api`'s streaming map of one buffer with [`GlobalBounceOp`] behind it.
pub struct DmaApiBounce {
    dev: DeviceDma,
    buf: NonNull<u8>,
    len: usize,
}

impl DmaApiBounce {
    /// A non-coherent direct-mapped device, 64-bit mask, line alignment, over `len` bytes
    /// at `buf`.
    ///
    /// # Safety
    /// `buf` must be valid for `len` bytes while the returned value lives, and not be
    /// accessed otherwise while [`DmaApiBounce::map_unmap`] runs.
    pub unsafe fn new(buf: NonNull<u8>, len: usize) -> Self {
        static OP: GlobalBounceOp = GlobalBounceOp;
        let constraints = DmaConstraints::new(u64::MAX).with_align(LINE);
        let info = DmaDeviceInfo::new(DmaDomainId::Direct, DmaCoherency::NonCoherent, constraints);
        Self {
            dev: DeviceDma::new(info, &OP),
            buf,
            len,
        }
    }

    /// One streaming map+unmap of the buffer: map and copy in, copy back, unmap.
    ///
    /// `Bidirectional`: for `FromDevice` `dma-api` does not copy the buffer into the bounce
    /// buffer at map, so the bytes the device does not write would come back from stale
    /// heap memory. dmakit fills the bounce for `FromDevice` too; `Bidirectional` makes
    /// `dma-api` move the same bytes.
    pub fn map_unmap(&self) {
        // SAFETY: `new`'s caller guarantees `len` valid bytes, unshared while this runs.
        let buf = unsafe { core::slice::from_raw_parts_mut(self.buf.as_ptr(), self.len) };
        let map = self
            .dev
            .map_streaming_slice_for_device(black_box(buf), LINE, DmaDirection::Bidirectional)
            .expect("dma-api map");
        map.complete_for_cpu(0..self.len);
        drop(map);
    }
}
