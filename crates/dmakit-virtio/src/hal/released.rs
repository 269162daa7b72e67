//! The `Hal` of the released virtio-drivers 0.13.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use super::{direction, DmakitHal};
use crate::install::installed;

// SAFETY: `dma_alloc` returns pointers into coherent memory the allocator hands to this
// call alone, page aligned (whole pages from the zones or pool objects of a page or more),
// zeroed, and valid through the linear map until `dma_dealloc`; `mmio_phys_to_virt`
// translates through the same linear map; `share` returns the device address of a live
// mapping of the buffer and `unshare` ends it, copying an inbound bounce back.
unsafe impl Hal for DmakitHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        installed().dma_alloc(pages, false)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers passes what `dma_alloc` returned, once.
        unsafe { installed().dma_dealloc(paddr, vaddr, pages, false) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        installed().mmio_phys_to_virt(paddr, size)
    }

    #[track_caller]
    unsafe fn share(buffer: NonNull<[u8]>, dir: BufferDirection) -> PhysAddr {
        // SAFETY: `Hal::share`'s contract, and virtio-drivers keeps the buffer until the
        // unshare.
        unsafe { installed().share(buffer, direction(dir), false) }
    }

    #[track_caller]
    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, dir: BufferDirection) {
        // SAFETY: `paddr` is the live share of `buffer` in `direction`, and the device is
        // done with it (`Hal::unshare`'s contract).
        unsafe { installed().unshare(paddr, buffer, direction(dir), false) }
    }
}
