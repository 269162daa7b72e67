//! `virtio_drivers::Hal` with the development head's signature: every method takes
//! `access_platform: bool` (`VIRTIO_F_ACCESS_PLATFORM` negotiated). When it is true the
//! call goes through the installed device with `force_bounce` set, as a confidential
//! guest must; otherwise as in the released signature. Builds only against a
//! virtio-drivers with that signature (feature `access-platform`).

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use super::{direction, DmakitHal};
use crate::install::installed;

// SAFETY: as for the released signature (`released.rs`); `access_platform` only chooses the
// device the same calls use.
unsafe impl Hal for DmakitHal {
    fn dma_alloc(
        pages: usize,
        _direction: BufferDirection,
        access_platform: bool,
    ) -> (PhysAddr, NonNull<u8>) {
        installed().dma_alloc(pages, access_platform)
    }

    unsafe fn dma_dealloc(
        paddr: PhysAddr,
        vaddr: NonNull<u8>,
        pages: usize,
        access_platform: bool,
    ) -> i32 {
        // SAFETY: virtio-drivers passes what `dma_alloc` returned, once.
        unsafe { installed().dma_dealloc(paddr, vaddr, pages, access_platform) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        installed().mmio_phys_to_virt(paddr, size)
    }

    #[track_caller]
    unsafe fn share(
        buffer: NonNull<[u8]>,
        dir: BufferDirection,
        access_platform: bool,
    ) -> PhysAddr {
        // SAFETY: `Hal::share`'s contract, and virtio-drivers keeps the buffer until the
        // unshare.
        unsafe { installed().share(buffer, direction(dir), access_platform) }
    }

    #[track_caller]
    unsafe fn unshare(
        paddr: PhysAddr,
        buffer: NonNull<[u8]>,
        dir: BufferDirection,
        access_platform: bool,
    ) {
        // SAFETY: `paddr` is the live share of `buffer` in `direction`, and the device is
        // done with it.
        unsafe { installed().unshare(paddr, buffer, direction(dir), access_platform) }
    }
}
