//! The `Hal` the disk driver is given: `dmakit-virtio`'s, with a switch to force-bounce.
//!
//! Every call goes to the DMA layer installed with `dmakit_virtio::install`: unforced
//! calls to `dmakit_virtio::DmakitHal` itself, and while [`force_bounce`] is on, shares
//! and unshares go to the same installed layer asking for platform access, which maps the
//! buffer as the installed device with `force_bounce` set (what the `access-platform`
//! signature of virtio-drivers' development head does per call; the released 0.13 `Hal`
//! has no such argument, hence this switch). It is flipped only between transfers, so a
//! share and its unshare always agree.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use dmakit_virtio::{direction, installed, DmakitHal};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

static FORCE_BOUNCE: AtomicBool = AtomicBool::new(false);

/// Shares made from now on bounce (`true`) or follow dmakit's rule (`false`).
pub fn force_bounce(on: bool) {
    FORCE_BOUNCE.store(on, Ordering::SeqCst);
}

fn forced() -> bool {
    FORCE_BOUNCE.load(Ordering::SeqCst)
}

/// The HAL type given to virtio-drivers.
pub struct KernelHal;

// SAFETY: every method forwards to `DmakitHal`, or to the same installed layer with the
// force-bounce device, which keep the `Hal` contract; a share and its unshare use the same
// device because the switch changes only between transfers.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        DmakitHal::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: virtio-drivers passes what `dma_alloc` returned, once.
        unsafe { DmakitHal::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded with the caller's guarantee.
        unsafe { DmakitHal::mmio_phys_to_virt(paddr, size) }
    }

    #[track_caller]
    unsafe fn share(buffer: NonNull<[u8]>, dir: BufferDirection) -> PhysAddr {
        // SAFETY: `Hal::share`'s contract, forwarded; virtio-drivers keeps the buffer
        // until the unshare.
        unsafe { installed().share(buffer, direction(dir), forced()) }
    }

    #[track_caller]
    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, dir: BufferDirection) {
        // SAFETY: `Hal::unshare`'s contract, forwarded; the share used the same device.
        unsafe { installed().unshare(paddr, buffer, direction(dir), forced()) }
    }
}
