//! IOVA allocation allocates nothing, whatever the size and however fragmented the space.
//!
//! The range caches serve sizes up to `2^rcache_max_order` pages; everything else — larger
//! mappings, a space fragmented into many free ranges, exhaustion and the cache flush it
//! triggers — reaches the free-range table, on the map and unmap paths. Each is watched
//! here through the mapper on the model (strict and lazy domains), and the allocator's own
//! bound (more live ranges than it was sized for) is refused cleanly and recovers.
//! Control: creating a domain and attaching a device do allocate (they are allowed to:
//! they run outside atomic context), and the watch sees it.

use dmakit::iommu::{IovaAllocator, IovaConfig, IovaError, IovaRange};
use dmakit::{
    Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DomainConfig, PageAllocator,
    PhysAddr,
};
use dmakit_sim::{Granule, HazardConfig, Machine};

use super::{atomic, steady, watched};
use crate::iommu_rig::{rig, Rig};

const MIB4: u64 = 4 << 20;

/// A coherent trusted device (whole pages map in place) behind a new domain of `cfg`, and
/// a mapper for it.
fn behind(r: &Rig, cfg: DomainConfig) -> (Device, DmaMapper<&Machine>) {
    let d = r.domain(cfg);
    let dev = Device::builder(DeviceId(9), "iova-user")
        .coherent(true)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    (dev, DmaMapper::builder(&r.m).iommu(r.dma.clone()).build())
}

fn map(mapper: &DmaMapper<&Machine>, dev: &Device, phys: PhysAddr, len: u64) -> DmaAddr {
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.map(dev, phys, len, Direction::ToDevice) }.unwrap()
}

fn unmap(mapper: &DmaMapper<&Machine>, dev: &Device, dma: DmaAddr, len: u64) {
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(dev, dma, len, Direction::ToDevice) }.unwrap();
}

#[test]
fn maps_above_the_cached_orders_allocate_nothing() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        let r = rig(21, Granule::K4, HazardConfig::NONE);
        let (dev, mapper) = behind(&r, cfg);
        let dom = r.dma.domain_of(dev.id()).unwrap();
        assert!(MIB4 / 4096 > dom.iova().largest_cached_pages());
        let base = r.m.alloc_pages(4 * MIB4 / 4096, u64::MAX).unwrap();
        let before = dom.stats().iova.tree_allocs;
        steady("iova, 4 MiB maps", || {
            let mut live = [DmaAddr::new(0); 4];
            for (i, dma) in live.iter_mut().enumerate() {
                *dma = map(&mapper, &dev, base.add(i as u64 * MIB4), MIB4);
            }
            for &dma in &live {
                unmap(&mapper, &dev, dma, MIB4);
            }
            mapper.flush_iommu_queues();
        });
        let iova = dom.stats().iova;
        assert_eq!(
            iova.tree_allocs - before,
            8,
            "every 4 MiB range came from the free-range table: {iova:?}"
        );
    }
}

#[test]
fn a_fragmented_space_allocates_nothing() {
    // Nothing cached: every range, of any size, goes through the free-range table.
    let cfg = DomainConfig {
        rcache_max_order: 0,
        ..DomainConfig::STRICT
    };
    let r = rig(22, Granule::K4, HazardConfig::NONE);
    let (dev, mapper) = behind(&r, cfg);
    let dom = r.dma.domain_of(dev.id()).unwrap();
    const N: usize = 400;
    let small = r.m.alloc_pages(2 * N as u64, u64::MAX).unwrap();
    let big = r.m.alloc_pages(MIB4 / 4096, u64::MAX).unwrap();
    let mut live = [DmaAddr::new(0); N];
    for (i, dma) in live.iter_mut().enumerate() {
        *dma = map(&mapper, &dev, small.add(i as u64 * 8192), 8192);
    }
    // Every other 8 KiB range back: the space is a comb of holes.
    for &dma in live.iter().step_by(2) {
        unmap(&mapper, &dev, dma, 8192);
    }
    let holes = dom.stats().iova.tree_free_ranges;
    assert!(holes > N / 2, "fragmented: {holes} free ranges");
    steady("iova, fragmented space", || {
        let mut again = [DmaAddr::new(0); N / 2];
        for (i, dma) in again.iter_mut().enumerate() {
            *dma = map(&mapper, &dev, small.add(2 * i as u64 * 8192), 8192);
        }
        let large = map(&mapper, &dev, big, MIB4);
        let odd = map(&mapper, &dev, small, 3 * 4096);
        for &dma in &again {
            unmap(&mapper, &dev, dma, 8192);
        }
        unmap(&mapper, &dev, large, MIB4);
        unmap(&mapper, &dev, odd, 3 * 4096);
    });
    assert_eq!(dom.stats().iova.tree_free_ranges, holes, "holes as before");
    for &dma in live.iter().skip(1).step_by(2) {
        unmap(&mapper, &dev, dma, 8192);
    }
    assert_eq!(dom.stats().iova.tree_free_ranges, 1, "all coalesced again");
}

#[test]
fn exhaustion_is_refused_cleanly_and_recovers_without_allocating() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        // 64 pages of IOVA space.
        let cfg = DomainConfig {
            iova_window: Some((1 << 20, (1 << 20) + 64 * 4096 - 1)),
            ..cfg
        };
        let r = rig(23, Granule::K4, HazardConfig::NONE);
        let (dev, mapper) = behind(&r, cfg);
        let dom = r.dma.domain_of(dev.id()).unwrap();
        let base = r.m.alloc_pages(64, u64::MAX).unwrap();
        steady("iova, exhaustion and recovery", || {
            // Small ranges fill the caches' classes; then the space runs out.
            let mut live = [DmaAddr::new(0); 48];
            for (i, dma) in live.iter_mut().enumerate() {
                *dma = map(&mapper, &dev, base.add(i as u64 * 4096), 4096);
            }
            for &dma in &live[..16] {
                unmap(&mapper, &dev, dma, 4096);
            }
            let before = dom.stats();
            // 32 pages: 16 are free in the tree or cached, never 32 in a row.
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let refused = unsafe { mapper.map(&dev, base, 32 * 4096, Direction::ToDevice) };
            assert!(
                matches!(refused, Err(DmaError::IovaExhausted { .. })),
                "{refused:?}"
            );
            let after = dom.stats();
            assert_eq!(after.live_mappings, before.live_mappings);
            // Free, cached or (lazy) waiting in the flush queue, one page each.
            let idle = |s: &dmakit::iommu::DomainStats| {
                s.iova.tree_free_pages + s.iova.cached_ranges as u64 + s.queued as u64
            };
            assert_eq!(
                idle(&after),
                idle(&before),
                "no page lost: {before:?} / {after:?}"
            );
            assert!(
                after.iova.cache_flushes > before.iova.cache_flushes,
                "the caches were emptied before the refusal"
            );
            // Recovery: once the rest is unmapped, the whole window maps again.
            for &dma in &live[16..] {
                unmap(&mapper, &dev, dma, 4096);
            }
            mapper.flush_iommu_queues();
            let whole = map(&mapper, &dev, base, 64 * 4096);
            unmap(&mapper, &dev, whole, 64 * 4096);
            mapper.flush_iommu_queues();
        });
    }
}

/// The allocator's own bound: more live ranges than `max_live` (with no caches to hide
/// it) is a clean error; a free makes room again, and none of it allocates.
#[test]
fn the_free_range_bound_is_refused_cleanly_and_recovers_without_allocating() {
    let a = IovaAllocator::new(IovaConfig {
        rcache_max_order: 0,
        magazine_size: 1,
        depot_magazines: 0,
        max_live: 8,
        ..IovaConfig::new(1, 4096, 1)
    })
    .unwrap();
    // Three-page ranges are never cached: they go to the table and back.
    let mut live = [IovaRange { pfn: 0, pages: 0 }; 12];
    let ranges = atomic("iova, free-range bound", || {
        for r in &mut live {
            match a.alloc(3, u64::MAX, 0) {
                Ok(got) => *r = got,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    // Room for 8 live plus the 2 ranges the caches could hold (two one-range magazines):
    // the eleventh is refused.
    assert_eq!(ranges, Err(IovaError::RangeTableFull { max_live: 8 }));
    let got = live.iter().filter(|r| r.pages == 3).count();
    assert_eq!(got, 10);
    let before = a.stats();
    assert_eq!(
        a.alloc(3, u64::MAX, 0),
        Err(IovaError::RangeTableFull { max_live: 8 })
    );
    let after = a.stats();
    assert_eq!(
        (after.tree_free_pages, after.tree_free_ranges),
        (before.tree_free_pages, before.tree_free_ranges),
        "a refusal changes nothing"
    );
    atomic("iova, room again after a free", || {
        a.free(live[0], 0).unwrap();
        live[0] = a.alloc(3, u64::MAX, 0).unwrap();
        for r in live.iter().filter(|r| r.pages == 3) {
            a.free(*r, 0).unwrap();
        }
    });
    let end = a.stats();
    assert_eq!((end.tree_free_pages, end.tree_free_ranges), (4096, 1));
}

/// Control: creating a domain (its records, caches and free-range table) and attaching a
/// device allocate — they are allowed to, outside atomic context — and the watch sees
/// both, so the regions above that saw nothing were not blind.
#[test]
fn control_creating_a_domain_and_attaching_a_device_allocate() {
    let r = rig(24, Granule::K4, HazardConfig::NONE);
    let (d, n, first) = watched("create_domain", || {
        r.dma.create_domain(DomainConfig::STRICT)
    });
    let d = d.unwrap();
    assert!(
        n > 0 && first.is_some(),
        "create_domain allocated {n} times"
    );
    let dev = Device::builder(DeviceId(9), "iova-user")
        .coherent(true)
        .build()
        .unwrap();
    let (res, n, first) = watched("attach", || r.dma.attach(&dev, d));
    res.unwrap();
    assert!(n > 0 && first.is_some(), "attach allocated {n} times");
}
