//! Scatter-gather lists behind an IOMMU allocate nothing on map, sync or unmap.
//!
//! A list mapped in one IOVA range keeps its pieces in the room its domain was created with
//! (`DomainConfig::max_sg_pieces`), its segments go to the caller's array, and a failing
//! list is undone from what it wrote. Watched here, on the model (strict and lazy domains,
//! trusted and untrusted devices) and on the host platform: lists merged into one
//! contiguous segment, lists of sub-page pieces, lists whose buffers are bounced one by
//! one, a lazy domain's flush queue drained by an sg unmap, a full piece table and a
//! segment array too short, each refused with every table, IOVA and pool as before.
//! Control: `map_sg`, which returns a `Vec`, allocates behind the IOMMU too, and the
//! watch sees it.

use dmakit::iommu::DomainStats;
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{
    CpuMemory, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DmaSegment, DomainConfig,
    FlushMode, IommuDma, PhysAddr, Platform, SgEntry,
};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::{Granule, HazardConfig, SimIommu, SimIommuConfig};
use std::sync::Arc;

use super::paths::{behind_iommu, buffers};
use super::{atomic, steady, watched};
use crate::iommu_rig::rig;

const EMPTY: DmaSegment = DmaSegment {
    dma: DmaAddr::new(0),
    len: 0,
};

/// Four buffers of `len` bytes, one per page from `base`, each `skew` bytes in.
fn list(base: PhysAddr, skew: u64, len: u64) -> [SgEntry; 4] {
    core::array::from_fn(|i| SgEntry {
        phys: base.add(i as u64 * 4096 + skew),
        len,
    })
}

/// Maps `entries` into an array, syncs the whole list both ways and unmaps it; returns the
/// number of segments.
fn sg_round<P: Platform>(
    mapper: &DmaMapper<P>,
    dev: &Device,
    entries: &[SgEntry],
    dir: Direction,
) -> usize {
    let mut out = [EMPTY; 8];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let n = unsafe { mapper.map_sg_into(dev, entries, dir, &mut out) }.unwrap();
    let segs = &out[..n];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_sg_for_cpu(dev, segs, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_sg_for_device(dev, segs, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(dev, segs, dir) }.unwrap();
    n
}

/// The three kinds of list: whole pages (in place, one contiguous segment), sub-page
/// pieces read by the device (in place for a trusted device, one segment each; bounced
/// for an untrusted one), and misaligned buffers the device writes (bounced one by one).
fn kinds<P: Platform>(mapper: &DmaMapper<P>, dev: &Device, base: PhysAddr) {
    let merged = sg_round(mapper, dev, &list(base, 0, 4096), Direction::Bidirectional);
    assert_eq!(merged, 1, "whole pages merge into one segment");
    let pieces = sg_round(mapper, dev, &list(base, 8, 100), Direction::ToDevice);
    assert_eq!(pieces, 4, "sub-page pieces keep a segment each");
    let bounced = sg_round(mapper, dev, &list(base, 8, 100), Direction::FromDevice);
    assert_eq!(bounced, 4, "bounced buffers keep a segment each");
}

#[test]
fn iommu_sg_lists_allocate_nothing_strict_and_lazy() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        for trusted in [true, false] {
            let r = rig(40, Granule::K4, HazardConfig::NONE);
            let (dev, mapper) = behind_iommu(&r, cfg, trusted);
            let base = buffers(&r.m);
            steady("iommu sg lists", || kinds(&mapper, &dev, base));
            steady("iommu sg, flush queues", || {
                mapper.flush_iommu_queues();
            });
            let stats = r.dma.domain_of(dev.id()).unwrap().stats();
            assert_eq!(stats.live_mappings, 0, "{stats:?}");
            assert_eq!(stats.free_sg_pieces, cfg.max_sg_pieces, "{stats:?}");
            let bounces: u64 = mapper
                .stats()
                .devices
                .iter()
                .map(|d| d.bounces_total())
                .sum();
            assert!(bounces > 0, "some lists bounced");
        }
    }
}

#[test]
fn a_lazy_domain_drains_its_queue_during_sg_unmaps_without_allocating() {
    let r = rig(41, Granule::K4, HazardConfig::NONE);
    let cfg = DomainConfig {
        mode: FlushMode::Lazy { queue: 2 },
        ..DomainConfig::STRICT
    };
    let (dev, mapper) = behind_iommu(&r, cfg, true);
    let base = buffers(&r.m);
    let dom = r.dma.domain_of(dev.id()).unwrap();
    let before = dom.stats().queue_flushes;
    steady("lazy, sg unmaps drain the queue", || {
        for _ in 0..8 {
            sg_round(&mapper, &dev, &list(base, 0, 4096), Direction::ToDevice);
        }
    });
    let flushes = dom.stats().queue_flushes - before;
    assert!(
        flushes >= 2 * 8 / 2,
        "sg unmaps drained the queue: {flushes}"
    );
}

/// What an undone list must leave as it was: live mappings, free pieces, allocated IOVA
/// ranges (its own range may come back through a cache rather than the free-range table)
/// and bounce pool use.
fn state(s: &DomainStats, pool_used: u64) -> (usize, usize, u64, u64) {
    let i = &s.iova;
    let iovas = (i.tree_allocs + i.rcache_hits) - (i.tree_frees + i.rcache_frees);
    (s.live_mappings, s.free_sg_pieces, iovas, pool_used)
}

#[test]
fn a_full_piece_table_and_a_short_array_are_refused_cleanly_without_allocating() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        let r = rig(42, Granule::K4, HazardConfig::NONE);
        let cfg = DomainConfig {
            max_sg_pieces: 8,
            ..cfg
        };
        let (dev, mapper) = behind_iommu(&r, cfg, true);
        let pool = mapper.bounce_backend(&dev).unwrap().clone();
        let base = buffers(&r.m);
        let dom = r.dma.domain_of(dev.id()).unwrap();
        let dir = Direction::ToDevice;
        let mut held = [[EMPTY; 8]; 2];
        let mut counts = [0; 2];
        steady("sg, piece table full", || {
            // Two lists of four pieces fill the table.
            for (i, (out, n)) in held.iter_mut().zip(&mut counts).enumerate() {
                let entries = list(base.add(i as u64 * 0x1_0000), 8, 100);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                *n = unsafe { mapper.map_sg_into(&dev, &entries, dir, out) }.unwrap();
            }
            let (before, used) = (dom.stats(), pool.usage().used);
            assert_eq!(before.free_sg_pieces, 0, "no piece free");
            let mut out = [EMPTY; 8];
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let full = unsafe {
                mapper.map_sg_into(&dev, &list(base.add(0x2_0000), 0, 4096), dir, &mut out)
            };
            assert_eq!(
                full,
                Err(DmaError::SgPieceTableFull {
                    device: dev.id(),
                    needed: 4,
                    capacity: 8
                })
            );
            // Refused before anything was taken: the domain is exactly as it was.
            assert_eq!(
                (dom.stats(), pool.usage().used),
                (before, used),
                "a refusal changes nothing"
            );
            // Room again once a list is unmapped; then a list whose segments do not fit
            // is refused after its tables were mapped, and undone.
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap_sg(&dev, &held[0][..counts[0]], dir) }.unwrap();
            let freed = state(&dom.stats(), pool.usage().used);
            assert_eq!(freed.1, 4);
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let short = unsafe {
                mapper.map_sg_into(&dev, &list(base.add(0x2_0000), 8, 100), dir, &mut out[..2])
            };
            assert_eq!(
                short,
                Err(DmaError::SegmentListTooShort {
                    device: dev.id(),
                    room: 2
                })
            );
            assert_eq!(
                state(&dom.stats(), pool.usage().used),
                freed,
                "an undone list changes nothing"
            );
            // The same with buffers bounced one by one: two bounced, the third does not
            // fit, all three are given back.
            let inbound = list(base.add(0x2_0000), 8, 100);
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let short =
                unsafe { mapper.map_sg_into(&dev, &inbound, Direction::FromDevice, &mut out[..2]) };
            assert!(
                matches!(short, Err(DmaError::SegmentListTooShort { room: 2, .. })),
                "{short:?}"
            );
            assert_eq!(
                state(&dom.stats(), pool.usage().used),
                freed,
                "an undone bounced list changes nothing"
            );
            let again = sg_round(&mapper, &dev, &list(base.add(0x2_0000), 0, 4096), dir);
            assert_eq!(again, 1);
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap_sg(&dev, &held[1][..counts[1]], dir) }.unwrap();
            mapper.flush_iommu_queues();
        });
        let end = dom.stats();
        assert_eq!((end.live_mappings, end.free_sg_pieces), (0, 8), "{end:?}");
    }
    let full = DmaError::SgPieceTableFull {
        device: DeviceId(8),
        needed: 4,
        capacity: 8,
    };
    assert!(full.to_string().contains("max_sg_pieces"), "{full}");
}

#[test]
fn host_platform_iommu_sg_lists_allocate_nothing() {
    const MIB: u64 = 1 << 20;
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        for trusted in [true, false] {
            let host = HostPlatform::new(0, 8 * MIB, 1, 64, HostMaintenance::None).unwrap();
            let pool =
                SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
            pool.add_region(PhysAddr::new(0), 2 * MIB).unwrap();
            let iommu = SimIommu::new(SimIommuConfig::default()).unwrap();
            let dma = Arc::new(IommuDma::new(Arc::new(iommu), 1).unwrap());
            let dev = Device::builder(DeviceId(11), "host-behind-iommu")
                .cache_line(64)
                .trusted(trusted)
                .build()
                .unwrap();
            let d = dma.create_domain(cfg).unwrap();
            dma.attach(&dev, d).unwrap();
            let mapper = DmaMapper::builder(&host)
                .swiotlb_backend(Arc::new(pool))
                .iommu(dma.clone())
                .build();
            let base = PhysAddr::new(4 * MIB);
            host.fill(base, 0x5a, 4 * 4096).unwrap();
            steady("host, iommu sg lists", || kinds(&mapper, &dev, base));
            assert_eq!(
                dma.domain(d).unwrap().stats().free_sg_pieces,
                cfg.max_sg_pieces
            );
        }
    }
}

/// Control: `map_sg`, the wrapper that returns a `Vec`, allocates behind an IOMMU as
/// everywhere, and the watch sees it; the same list into an array does not.
#[test]
fn control_map_sg_behind_an_iommu_allocates_its_list() {
    let r = rig(43, Granule::K4, HazardConfig::NONE);
    let (dev, mapper) = behind_iommu(&r, DomainConfig::STRICT, true);
    let base = buffers(&r.m);
    let entries = list(base, 0, 4096);
    let dir = Direction::ToDevice;
    sg_round(&mapper, &dev, &entries, dir);
    let (segs, n, first) = watched("map_sg behind an iommu", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap()
    });
    assert!(n >= 1, "map_sg allocated its list: {n} allocations");
    assert_eq!(first.map(|o| o.label), Some("map_sg behind an iommu"));
    assert_eq!(segs.len(), 1);
    atomic("map_sg_into behind an iommu after map_sg", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
        sg_round(&mapper, &dev, &entries, dir);
    });
}
