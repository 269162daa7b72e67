//! Unmap finds a bounce by its DMA address alone. The router first tests each backend's
//! memory span (so direct mappings skip the lookup) and then asks the backend. These tests
//! show that a bounce in memory a pool gained later is still found, that addresses in bounce
//! memory that are not live bounces are still refused, and — the control — that a backend
//! whose span misses part of its memory loses the device's data, which the model shows.

mod testbed;

use std::sync::Arc;

use dmakit::bounce::{
    BounceAllocError, BounceBackend, BounceMeta, BounceRequest, MemorySpan, PoolUsage,
};
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{BouncePool, DmaAddr, DmaError, DmaMapper, MapPath, PageAllocator, PhysAddr};
use dmakit::{Direction, PhysRange};
use dmakit_sim::{Machine, Owner};
use testbed::*;

const REGION: u64 = 256 * 1024;

/// A SWIOTLB backend that reports a span frozen at creation: memory added later is outside
/// it. This is the bug the span's contract forbids.
struct StaleSpan {
    inner: Arc<SwiotlbBounce>,
    span: Arc<MemorySpan>,
}

impl BounceBackend for StaleSpan {
    fn name(&self) -> &'static str {
        "stale-span"
    }
    fn is_cached(&self) -> bool {
        self.inner.is_cached()
    }
    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError> {
        self.inner.alloc(req, meta)
    }
    fn get(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.inner.get(addr)
    }
    fn free(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.inner.free(addr)
    }
    fn contains(&self, addr: PhysAddr) -> bool {
        self.inner.contains(addr)
    }
    fn usage(&self) -> PoolUsage {
        self.inner.usage()
    }
    fn memory_span(&self) -> Option<Arc<MemorySpan>> {
        Some(self.span.clone())
    }
}

/// What happened to a bounce made in a region added after the first one.
struct Outcome {
    /// The unmap's result.
    unmapped: Result<(), DmaError>,
    /// What the CPU reads in the buffer afterwards.
    buffer: Vec<u8>,
    /// What the device wrote.
    written: Vec<u8>,
    /// Unmapping an address in the new region that is no live bounce.
    stray: Result<(), DmaError>,
    /// Live bounces left in the pool.
    live: u64,
}

/// Fills the pool's first region, adds a second, bounces a buffer into it, lets the device
/// write it and unmaps. `stale` wraps the pool in [`StaleSpan`].
fn bounce_in_added_region(stale: bool) -> Outcome {
    let m: Machine = machine(21);
    let pool = swiotlb(&m, REGION, None);
    let backend: Arc<dyn BounceBackend> = if stale {
        let span = Arc::new(MemorySpan::new());
        for r in pool.pool().regions() {
            span.cover(r.start().as_u64(), r.len());
        }
        Arc::new(StaleSpan {
            inner: pool.clone(),
            span,
        })
    } else {
        pool.clone()
    };
    let mapper = DmaMapper::builder(&m).swiotlb_backend(backend).build();
    let dev = device(1, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, base.add(8), 200_000, Direction::FromDevice) }.unwrap();
    let added = m.alloc_pages(REGION / 4096, BELOW_4G).unwrap();
    pool.add_region(added, REGION).unwrap();

    let phys = base.add(400_008);
    let len = 100_000;
    m.cpu_write(phys, &vec![0x11; len as usize], Owner(7))
        .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) = unsafe { mapper.map_traced(&dev, phys, len, Direction::FromDevice) }.unwrap();
    assert!(matches!(path, MapPath::Bounced { .. }));
    let region = PhysRange::new(added, REGION).unwrap();
    assert!(region.contains_range(&PhysRange::new(PhysAddr::new(dma.as_u64()), len).unwrap()));
    m.grant(dev.id(), dma, len).unwrap();
    let written: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    m.device_write(dev.id(), dma, &written, Owner(9)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let unmapped = unsafe { mapper.unmap(&dev, dma, len, Direction::FromDevice) };
    let buffer = read(&m, phys, len);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let stray = unsafe {
        mapper.unmap(
            &dev,
            DmaAddr::new(added.as_u64() + REGION - 4096),
            64,
            Direction::FromDevice,
        )
    };
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 200_000, Direction::FromDevice) }.unwrap();
    Outcome {
        unmapped,
        buffer,
        written,
        stray,
        live: pool.usage().live,
    }
}

#[test]
fn a_bounce_in_memory_added_later_is_found_and_copied_back() {
    let o = bounce_in_added_region(false);
    assert_eq!(o.unmapped, Ok(()));
    assert_eq!(o.buffer, o.written);
    assert_eq!(o.live, 0);
}

#[test]
fn an_address_in_bounce_memory_that_is_no_live_bounce_is_refused() {
    let o = bounce_in_added_region(false);
    assert!(matches!(o.stray, Err(DmaError::UnknownMapping { .. })));
}

#[test]
fn control_a_span_that_misses_added_memory_loses_the_device_data() {
    let o = bounce_in_added_region(true);
    // The router took the bounce for a direct mapping: no error, no copy back, a leaked
    // slot, and the stray address passes unnoticed.
    assert_eq!(o.unmapped, Ok(()));
    assert_ne!(o.buffer, o.written);
    assert!(o.buffer.iter().all(|&b| b == 0x11));
    assert_eq!(o.live, 1);
    assert_eq!(o.stray, Ok(()));
}

#[test]
fn direct_mappings_between_bounce_regions_stay_direct() {
    let m = machine(22);
    let pool = swiotlb(&m, REGION, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = device(1, BouncePool::Swiotlb);
    let base = m.alloc_pages(64, BELOW_4G).unwrap();
    let added = m.alloc_pages(REGION / 4096, BELOW_4G).unwrap();
    pool.add_region(added, REGION).unwrap();
    let span = pool.pool().memory_span();
    // Whichever side the buffers landed on, aligned buffers map directly, and unmapping
    // them (inside the span or not) is not mistaken for a bounce.
    for off in [0u64, 4096, 64 * 1024] {
        let phys = base.add(off);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, path) =
            unsafe { mapper.map_traced(&dev, phys, 1024, Direction::FromDevice) }.unwrap();
        assert_eq!(path, MapPath::Direct);
        assert_eq!(dma.as_u64(), phys.as_u64());
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 1024, Direction::FromDevice) }.unwrap();
        assert_eq!(
            span.may_contain(phys.as_u64()),
            phys.as_u64() >= pool.pool().regions()[0].start().as_u64()
                && phys.as_u64() < pool.pool().regions()[1].end().as_u64()
        );
    }
}
