//! virtio-drivers' `Hal` over dmakit: coherent memory from the uncached window, buffers
//! shared with the device through `DmaMapper::map` and `unmap`.
//!
//! `Hal` methods take no `self`, so the mapper and devices live in a global set once by
//! [`install`]. [`force_bounce`] switches later shares to a device description that
//! bounces everything (same device id), between transfers.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use dmakit::platform::{CoherentPageAllocator, PAGE_SIZE};
use dmakit::prelude::*;
use virtio_drivers::{BufferDirection, Hal};

use crate::platform::{Aarch64, CoherentWindow};

/// What the HAL needs: the mapper, the block device described twice (as it is, and
/// force-bounced) and the coherent memory.
pub struct Dma {
    /// The mapper every share goes through.
    pub mapper: DmaMapper<&'static Aarch64>,
    /// The disk.
    pub blk: Device,
    /// The disk, every mapping bounced.
    pub blk_forced: Device,
    /// Coherent memory for virtqueues.
    pub window: &'static CoherentWindow,
}

static DMA: spin::Once<Dma> = spin::Once::new();
static FORCE_BOUNCE: AtomicBool = AtomicBool::new(false);

/// Installs what the HAL uses; the first call wins. Returns the installed state.
pub fn install(dma: Dma) -> &'static Dma {
    DMA.call_once(|| dma)
}

/// Shares made from now on bounce (`true`) or follow dmakit's rule (`false`).
pub fn force_bounce(on: bool) {
    FORCE_BOUNCE.store(on, Ordering::SeqCst);
}

fn dma() -> &'static Dma {
    DMA.get()
        .expect("hal::install runs before any virtio device is created")
}

fn device(d: &Dma) -> &Device {
    if FORCE_BOUNCE.load(Ordering::SeqCst) {
        &d.blk_forced
    } else {
        &d.blk
    }
}

fn direction(dir: BufferDirection) -> Direction {
    match dir {
        BufferDirection::DriverToDevice => Direction::ToDevice,
        BufferDirection::DeviceToDriver => Direction::FromDevice,
        BufferDirection::Both => Direction::Bidirectional,
    }
}

/// The HAL type given to virtio-drivers.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned coherent pages owned by the driver until
// `dma_dealloc`; `share` returns a bus address the device may use for the buffer until
// `unshare`, which makes the device's writes visible in the buffer. Physical and virtual
// addresses are equal (identity map).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (u64, NonNull<u8>) {
        let d = dma();
        match d
            .window
            .alloc_coherent_pages(pages as u64, d.blk.coherent_limit())
        {
            Some(base) => {
                let ptr = base.as_u64() as usize as *mut u8;
                // SAFETY: the pages are ours, mapped non-cacheable by the identity map.
                unsafe { ptr.write_bytes(0, pages * PAGE_SIZE as usize) };
                (
                    base.as_u64(),
                    NonNull::new(ptr).expect("the window is not at 0"),
                )
            }
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: u64, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        dma()
            .window
            .free_coherent_pages(PhysAddr::new(paddr), pages as u64);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("MMIO is not at 0")
    }

    #[track_caller]
    unsafe fn share(buffer: NonNull<[u8]>, dir: BufferDirection) -> u64 {
        let d = dma();
        let phys = PhysAddr::new(buffer.as_ptr() as *mut u8 as usize as u64);
        // SAFETY: virtio-drivers lends the buffer to the device until `unshare` (the
        // `Hal::share` contract).
        match unsafe {
            d.mapper
                .map(device(d), phys, buffer.len() as u64, direction(dir))
        } {
            Ok(dma) => dma.as_u64(),
            Err(e) => panic!(
                "dmakit could not map a {}-byte virtio buffer: {e}",
                buffer.len()
            ),
        }
    }

    #[track_caller]
    unsafe fn unshare(paddr: u64, buffer: NonNull<[u8]>, dir: BufferDirection) {
        let d = dma();
        let len = buffer.len() as u64;
        // SAFETY: `paddr` is the mapping `share` made for this buffer, and the device is
        // done with it (the `Hal::unshare` contract).
        if let Err(e) = unsafe {
            d.mapper
                .unmap(device(d), DmaAddr::new(paddr), len, direction(dir))
        } {
            panic!("dmakit could not unmap a {len}-byte virtio buffer: {e}");
        }
    }
}
