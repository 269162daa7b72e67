//! Bad-input scenarios on the machine model, shared by `input_validation` (fixed
//! behaviour) and `input_validation_controls` (defect put back). Each returns what it saw.

#![allow(dead_code)]

use dmakit::bounce::{BounceBackend, PoolUsage};
use dmakit::DeviceError;
use dmakit::{Device, DeviceId, Direction, DmaError, DmaMapper, MapStatus, PhysAddr};

use super::testbed::*;

/// What [`huge_ranges`] saw.
#[derive(Debug)]
pub struct Huge {
    /// `map(0, u64::MAX)` on a 64-bit device.
    pub whole_space: Result<u64, DmaError>,
    /// The same through `map_or_defer`.
    pub whole_space_deferred: Result<MapStatus, DmaError>,
    /// 8 bytes in the last page of the address space.
    pub last_page: Result<u64, DmaError>,
    /// The page just below it (the highest range that may be mapped).
    pub below_last_page: Result<u64, DmaError>,
    /// The pool before and after.
    pub usage: (PoolUsage, PoolUsage),
    /// Live records of the debug checker after the refused calls.
    pub live: usize,
}

/// Ranges no DMA address can hold, on a 64-bit device of the model (outbound, so nothing
/// but the range decides the path).
pub fn huge_ranges() -> Huge {
    use Direction::ToDevice;
    let m = machine(71);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .debug_checker()
        .build();
    let dev = Device::builder(DeviceId(1), "64-bit")
        .cache_line(LINE)
        .build()
        .unwrap();
    let before = pool.usage();
    let map = |addr: u64, len: u64| {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let r = unsafe { mapper.map(&dev, PhysAddr::new(addr), len, ToDevice) };
        if let Ok(dma) = r {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, dma, len, ToDevice) }.unwrap();
        }
        r.map(|d| d.as_u64())
    };
    let whole_space = map(0, u64::MAX);
    let whole_space_deferred =
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map_or_defer(&dev, PhysAddr::ZERO, u64::MAX, ToDevice, Box::new(|_| {})) };
    if let Ok(MapStatus::Mapped(dma)) = whole_space_deferred {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, u64::MAX, ToDevice) }.unwrap();
    }
    let last_page = map(u64::MAX - 4095, 8);
    let below_last_page = map(u64::MAX - 8191, 4096);
    let live = mapper.debug_checker().unwrap().live().len();
    Huge {
        whole_space,
        whole_space_deferred,
        last_page,
        below_last_page,
        usage: (before, pool.usage()),
        live,
    }
}

/// `dma_bits(n)` for address-bit counts around and above 64: the mask built, or why not.
pub fn dma_bits_around_64() -> Vec<(u32, Result<u64, DeviceError>)> {
    [1, 63, 64, 65, 100, u32::MAX]
        .into_iter()
        .map(|bits| {
            let built = Device::builder(DeviceId(1), "bits")
                .dma_bits(bits)
                .build()
                .map(|d| d.dma_mask());
            (bits, built)
        })
        .collect()
}
