//! virtio-drivers' `Hal` over dmakit's object-safe facade: coherent memory from the DMA
//! allocator (the non-cacheable window), buffers shared with the device through the
//! mapper, attributed to virtio-drivers' own call sites.
//!
//! `Hal` methods take no `self`, so the facade and devices live in a global set once by
//! [`install`]. [`force_bounce`] switches later shares to a description of the disk that
//! bounces everything (the same device, derived with `Device::to_builder`), between
//! transfers.

use core::panic::Location;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use dmakit::dma_alloc::RawCoherent;
use dmakit::linear_map::{CpuAddr, LinearMap};
use dmakit::platform::PAGE_SIZE;
use dmakit::prelude::*;
use dmakit::{AllocContext, DmaOps};
use virtio_drivers::{BufferDirection, Hal};

/// What the HAL needs: the DMA facade, the disk described twice (as it is, and
/// force-bounced) and the CPU's linear map.
pub struct Dma {
    /// Mapper and allocator.
    pub ops: &'static (dyn DmaOps + Send + Sync),
    /// The disk.
    pub blk: Device,
    /// The disk, every mapping bounced.
    pub blk_forced: Device,
    /// Physical address to pointer and back.
    pub linear: LinearMap,
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

/// The physical address of a buffer the driver holds.
fn phys_of(d: &Dma, buffer: NonNull<[u8]>) -> PhysAddr {
    let cpu = CpuAddr::of_ptr(buffer.as_ptr() as *const u8);
    d.linear
        .phys_of(cpu, buffer.len() as u64)
        .unwrap_or_else(|| {
            panic!(
                "virtio buffer at {:p} is not in the linear map",
                buffer.as_ptr()
            )
        })
}

/// The HAL type given to virtio-drivers.
pub struct KernelHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned coherent memory owned by the driver
// until `dma_dealloc`; `share` returns a bus address the device may use for the buffer
// until `unshare`, which makes the device's writes visible in the buffer.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (u64, NonNull<u8>) {
        let d = dma();
        let size = pages as u64 * PAGE_SIZE;
        let Ok(raw) = d.ops.alloc_coherent(&d.blk, size, AllocContext::MayBlock) else {
            return (0, NonNull::dangling());
        };
        let cpu = d
            .linear
            .cpu_of(raw.phys, size)
            .expect("coherent memory is RAM");
        (
            raw.dma.as_u64(),
            NonNull::new(cpu.as_mut_ptr()).expect("RAM is not at 0"),
        )
    }

    unsafe fn dma_dealloc(paddr: u64, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let d = dma();
        let size = pages as u64 * PAGE_SIZE;
        let Some(phys) = d.linear.phys_of(CpuAddr::of_ptr(vaddr.as_ptr()), size) else {
            return -1;
        };
        let raw = RawCoherent {
            phys,
            dma: DmaAddr::new(paddr),
            size,
        };
        // SAFETY: virtio-drivers frees what `dma_alloc` gave it, once (the `Hal` contract).
        match unsafe { d.ops.free_coherent(&d.blk, raw) } {
            Ok(()) => 0,
            Err(_) => -1,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("MMIO is not at 0")
    }

    #[track_caller]
    unsafe fn share(buffer: NonNull<[u8]>, dir: BufferDirection) -> u64 {
        let d = dma();
        let (phys, len) = (phys_of(d, buffer), buffer.len() as u64);
        // SAFETY: virtio-drivers lends the buffer to the device until `unshare` (the
        // `Hal::share` contract).
        let mapped = unsafe {
            d.ops
                .map_from(device(d), phys, len, direction(dir), Location::caller())
        };
        match mapped {
            Ok(dma) => dma.as_u64(),
            Err(e) => panic!("dmakit could not map a {len}-byte virtio buffer: {e}"),
        }
    }

    #[track_caller]
    unsafe fn unshare(paddr: u64, buffer: NonNull<[u8]>, dir: BufferDirection) {
        let d = dma();
        let len = buffer.len() as u64;
        // SAFETY: `paddr` is the mapping `share` made for this buffer, and the device is
        // done with it (the `Hal::unshare` contract).
        let unmapped = unsafe {
            d.ops.unmap_from(
                device(d),
                DmaAddr::new(paddr),
                len,
                direction(dir),
                Location::caller(),
            )
        };
        if let Err(e) = unmapped {
            panic!("dmakit could not unmap a {len}-byte virtio buffer: {e}");
        }
    }
}
