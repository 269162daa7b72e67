//! `dma_alloc` / `dma_dealloc`: coherent pages from the allocator, freed by address.
//!
//! The HAL hands out the device address and a CPU pointer and gets both back with the
//! page count at free time; the allocator rebuilds its handle from them
//! (`coherent_from_raw`), so nothing is remembered in between.

use core::ptr::NonNull;

use dmakit::dma_alloc::{AllocContext, RawCoherent};
use dmakit::linear_map::CpuAddr;
use dmakit::{DmaAddr, PAGE_SIZE};

use crate::install::VirtioDma;

impl VirtioDma {
    /// `pages` zeroed pages of coherent memory (`Hal::dma_alloc`): the device address and
    /// the CPU pointer, page aligned. Allocates with `AllocContext::MayBlock` (virtio
    /// drivers allocate when a device or queue is created). With `access_platform` the
    /// memory is allocated as for the force-bounce device (shared with the host on a
    /// confidential guest whose allocator shares memory).
    ///
    /// On failure (zero pages, no memory, memory outside the linear map) returns address
    /// 0 with a dangling pointer, which virtio-drivers reports as `Error::DmaError`, and
    /// logs why; nothing stays allocated.
    pub fn dma_alloc(&self, pages: usize, access_platform: bool) -> (u64, NonNull<u8>) {
        let failed = (0, NonNull::dangling());
        let dev = self.device(access_platform);
        let Some(size) = (pages as u64).checked_mul(PAGE_SIZE).filter(|&s| s != 0) else {
            log::error!("dmakit-virtio: dma_alloc of {pages} pages refused");
            return failed;
        };
        let raw = match self
            .cfg
            .ops
            .alloc_coherent(dev, size, AllocContext::MayBlock)
        {
            Ok(raw) => raw,
            Err(e) => {
                log::error!("dmakit-virtio: dma_alloc of {pages} pages: {e}");
                return failed;
            }
        };
        let cpu = self.cfg.linear.cpu_of(raw.phys, size);
        match cpu.and_then(|c| NonNull::new(c.as_mut_ptr())) {
            Some(ptr) if raw.dma.as_u64() != 0 => (raw.dma.as_u64(), ptr),
            _ => {
                log::error!(
                    "dmakit-virtio: coherent memory at {} has no usable CPU pointer or device address",
                    raw.phys
                );
                // SAFETY: `raw` was just returned by `alloc_coherent` for `dev`; freed once.
                if let Err(e) = unsafe { self.cfg.ops.free_coherent(dev, raw) } {
                    log::error!("dmakit-virtio: freeing it again failed: {e}");
                }
                failed
            }
        }
    }

    /// Frees memory [`VirtioDma::dma_alloc`] returned (`Hal::dma_dealloc`). Returns 0, or
    /// -1 (and logs why) when the pointer is outside the linear map or the allocator
    /// refuses the addresses; nothing is freed then.
    ///
    /// # Safety
    /// `paddr`, `vaddr` and `pages` are what one `dma_alloc` call with the same
    /// `access_platform` returned and took, and that memory is freed once.
    pub unsafe fn dma_dealloc(
        &self,
        paddr: u64,
        vaddr: NonNull<u8>,
        pages: usize,
        access_platform: bool,
    ) -> i32 {
        let dev = self.device(access_platform);
        let size = (pages as u64).saturating_mul(PAGE_SIZE);
        let Some(phys) = self
            .cfg
            .linear
            .phys_of(CpuAddr::of_ptr(vaddr.as_ptr()), size)
        else {
            log::error!(
                "dmakit-virtio: dma_dealloc of {pages} pages at {}: outside the linear map",
                CpuAddr::of_ptr(vaddr.as_ptr())
            );
            return -1;
        };
        let raw = RawCoherent {
            phys,
            dma: DmaAddr::new(paddr),
            size,
        };
        // SAFETY: the caller passes one `dma_alloc`'s results, freed once; `dma_alloc`
        // gave up exactly this handle (`phys` is its CPU side through the linear map).
        match unsafe { self.cfg.ops.free_coherent(dev, raw) } {
            Ok(()) => 0,
            Err(e) => {
                log::error!("dmakit-virtio: dma_dealloc of {pages} pages at {phys}: {e}");
                -1
            }
        }
    }

    /// The CPU pointer of MMIO registers at `paddr` (`Hal::mmio_phys_to_virt`), through
    /// the linear map.
    ///
    /// # Panics
    /// When `[paddr, paddr + size)` is outside the linear map.
    pub fn mmio_phys_to_virt(&self, paddr: u64, size: usize) -> NonNull<u8> {
        let phys = dmakit::PhysAddr::new(paddr);
        let cpu = self.cfg.linear.cpu_of(phys, size as u64);
        match cpu.and_then(|c| NonNull::new(c.as_mut_ptr())) {
            Some(ptr) => ptr,
            None => panic!(
                "dmakit-virtio: MMIO region of {size} bytes at {phys} lies outside the linear map"
            ),
        }
    }
}
