//! The debug checker and scatter-gather lists allocate nothing on map, unmap or sync.
//!
//! With the checker on, every map, sync and unmap is recorded and checked against its
//! tables, and what it finds is reported: all of that, a full table and reported bugs
//! included, runs inside [`atomic`]. Scatter-gather lists are mapped with `map_sg_into`
//! into the caller's array; `map_sg`, the wrapper that returns a `Vec`, is the control.

use dmakit::bounce::BounceBackend;
use dmakit::debug::{DebugConfig, DebugIssue, MAX_CPU_PARTS};
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{
    BouncePool, CacheMaintenance, CpuMemory, Device, DeviceId, Direction, DmaAddr, DmaError,
    DmaMapper, DmaSegment, DomainConfig, PageAllocator, PhysAddr, PhysRange, Platform, SgEntry,
};
use dmakit_sim::{Granule, HazardConfig, Machine};
use std::sync::Arc;

use super::{atomic, steady, watched};
use crate::iommu_rig::{rig, Rig};
use crate::testbed::{device, machine, swiotlb, BELOW_4G, LINE};

/// Mappings live at once in a round.
const LIVE: usize = 16;
const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::FromDevice,
    Direction::Bidirectional,
];

/// Writes `pages` pages at `base` through to the model's memory, so that it holds them
/// (its sparse memory allocates a page when one is first written).
fn materialise(m: &Machine, base: PhysAddr, pages: u64) {
    m.fill(base, 0x5a, pages * 4096).unwrap();
    m.clean(PhysRange::new(base, pages * 4096).unwrap());
}

fn buffers(m: &Machine) -> PhysAddr {
    let base = m.alloc_pages(64, BELOW_4G).unwrap();
    materialise(m, base, 64);
    base
}

/// Maps `LIVE` buffers of `len` bytes from `base + skew`, syncs part of each both ways,
/// and unmaps them, checking every result; the addresses live in an array.
fn round<P: Platform>(mapper: &DmaMapper<P>, dev: &Device, base: PhysAddr, skew: u64, len: u64) {
    let stride = (len + skew).next_multiple_of(LINE) + LINE;
    let mut live = [DmaAddr::new(0); LIVE];
    for (i, dma) in live.iter_mut().enumerate() {
        let phys = base.add(i as u64 * stride + skew);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        *dma = unsafe { mapper.map(dev, phys, len, DIRS[i % 3]) }.unwrap();
    }
    for (i, &dma) in live.iter().enumerate() {
        let dir = DIRS[i % 3];
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(dev, dma, 1, len - 1, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_device(dev, dma, 0, len / 2, dir) }.unwrap();
    }
    for (i, &dma) in live.iter().enumerate() {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(dev, dma, len, DIRS[i % 3]) }.unwrap();
    }
}

/// A checked mapper over a 1 MiB SWIOTLB pool.
fn checked(m: &Machine, cfg: DebugConfig) -> DmaMapper<&Machine> {
    DmaMapper::builder(m)
        .swiotlb_backend(swiotlb(m, 1 << 20, None))
        .debug_checker_with(cfg)
        .build()
}

fn coherent_device(id: u32) -> Device {
    Device::builder(DeviceId(id), "coherent")
        .coherent(true)
        .dma_bits(32)
        .build()
        .unwrap()
}

/// A device behind a new domain of `cfg`, and a checked mapper whose SWIOTLB pool the
/// model has materialised.
fn behind_iommu(r: &Rig, cfg: DomainConfig, trusted: bool) -> (Device, DmaMapper<&Machine>) {
    let d = r.domain(cfg);
    let dev = Device::builder(DeviceId(8), "behind-iommu")
        .cache_line(LINE)
        .trusted(trusted)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let pool = r.m.alloc_pages(256, u32::MAX as u64).unwrap();
    materialise(&r.m, pool, 256);
    let swiotlb = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    swiotlb.add_region(pool, 256 * 4096).unwrap();
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(Arc::new(swiotlb))
        .iommu(r.dma.clone())
        .debug_checker()
        .build();
    (dev, mapper)
}

#[test]
fn checked_direct_and_swiotlb_maps_allocate_nothing() {
    let m = machine(21);
    let mapper = checked(&m, DebugConfig::default());
    let (coh, nc) = (coherent_device(1), device(2, BouncePool::Swiotlb));
    for d in [&coh, &nc] {
        m.attach(d.clone()).unwrap();
    }
    let base = buffers(&m);
    steady("checker, direct, coherent", || {
        round(&mapper, &coh, base, 8, 100)
    });
    steady("checker, direct, whole lines", || {
        round(&mapper, &nc, base, 0, 2 * LINE)
    });
    steady("checker, swiotlb", || round(&mapper, &nc, base, 8, 100));
    let checker = mapper.debug_checker().unwrap();
    assert_eq!(checker.reports(), vec![], "correct use reports nothing");
    assert!(checker.live().is_empty());
    assert_eq!(checker.untracked(), 0);
}

#[test]
fn checked_iommu_maps_allocate_nothing() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        for trusted in [true, false] {
            let r = rig(22, Granule::K4, HazardConfig::NONE);
            let (dev, mapper) = behind_iommu(&r, cfg, trusted);
            let base = buffers(&r.m);
            steady("checker, iommu, pages", || {
                round(&mapper, &dev, base, 0, 4096)
            });
            steady("checker, iommu, bounced", || {
                round(&mapper, &dev, base, 8, 100)
            });
            assert_eq!(mapper.debug_checker().unwrap().reports(), vec![]);
        }
    }
}

#[test]
fn reported_bugs_allocate_nothing() {
    let m = machine(23);
    let mapper = checked(&m, DebugConfig::default());
    let dev = device(3, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let checker = mapper.debug_checker().unwrap();
    steady("checker reports", || {
        // Inbound and misaligned: bounced, so the mapping layer refuses bad calls too.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, base.add(8), 256, Direction::FromDevice) }.unwrap();
        // A sync past the mapping's end and one in a direction it does not allow.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let _ = unsafe { mapper.sync_for_cpu(&dev, dma, 200, 100, Direction::FromDevice) };
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let _ = unsafe { mapper.sync_for_cpu(&dev, dma, 0, 8, Direction::ToDevice) };
        // The wrong size, then the right one, then the same unmap again.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let wrong = unsafe { mapper.unmap(&dev, dma, 128, Direction::FromDevice) };
        if wrong.is_err() {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, dma, 256, Direction::FromDevice) }.unwrap();
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let again = unsafe { mapper.unmap(&dev, dma, 256, Direction::FromDevice) };
        assert!(again.is_err(), "{again:?}");
    });
    let issues: Vec<DebugIssue> = checker.take_reports().iter().map(|r| r.issue).collect();
    for issue in [
        DebugIssue::SyncOutOfRange,
        DebugIssue::WrongDirection,
        DebugIssue::WrongSize,
        DebugIssue::NotMapped,
    ] {
        assert_eq!(
            issues.iter().filter(|&&i| i == issue).count(),
            2,
            "{issue:?} once per run: {issues:?}"
        );
    }
}

#[test]
fn a_full_checker_table_counts_what_it_does_not_track_without_allocating() {
    const ROOM: usize = 4;
    let m = machine(24);
    let cfg = DebugConfig {
        live_mappings: ROOM,
        ..DebugConfig::default()
    };
    let mapper = checked(&m, cfg);
    let dev = device(4, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let checker = mapper.debug_checker().unwrap();
    steady("checker table full", || round(&mapper, &dev, base, 8, 100));
    let untracked = 2 * (LIVE - ROOM) as u64;
    assert_eq!(checker.untracked(), untracked);
    // The untracked mappings' syncs and unmaps are reported as unknown, saying why.
    let reports = checker.take_reports();
    assert_eq!(reports.len(), 2 * 3 * (LIVE - ROOM), "{reports:#?}");
    assert!(reports.iter().all(|r| r.issue == DebugIssue::NotMapped));
    let last = reports.last().unwrap().to_string();
    assert!(
        last.contains(&format!("one of the {untracked} mappings not tracked")),
        "{last}"
    );
    assert!(checker.live().is_empty());
}

#[test]
fn cpu_parts_and_reports_past_their_room_are_counted_without_allocating() {
    let m = machine(25);
    let cfg = DebugConfig {
        reports: 2,
        ..DebugConfig::default()
    };
    let mapper = checked(&m, cfg);
    let dev = device(5, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let checker = mapper.debug_checker().unwrap();
    let parts = MAX_CPU_PARTS as u64 + 2;
    steady("cpu parts and reports overflow", || {
        let dir = Direction::FromDevice;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, base, 4096, dir) }.unwrap();
        for i in 0..parts {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.sync_for_cpu(&dev, dma, i * 64, 32, dir) }.unwrap();
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 4096, dir) }.unwrap();
        for _ in 0..3 {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let _ = unsafe { mapper.unmap(&dev, dma, 4096, dir) };
        }
    });
    assert_eq!(checker.dropped_cpu_parts(), 2 * 2);
    assert_eq!(checker.reports().len(), 2);
    assert_eq!(checker.dropped_reports(), 2 * 3 - 2);
}

/// Four buffers of `len` bytes from `base + skew`, a page apart.
fn list(base: PhysAddr, skew: u64, len: u64) -> [SgEntry; 4] {
    core::array::from_fn(|i| SgEntry {
        phys: base.add(i as u64 * 4096 + skew),
        len,
    })
}

/// Maps `entries` into an array, syncs the whole list both ways and unmaps it.
fn sg_round<P: Platform>(mapper: &DmaMapper<P>, dev: &Device, entries: &[SgEntry]) {
    let dir = Direction::Bidirectional;
    let mut out = [DmaSegment {
        dma: DmaAddr::new(0),
        len: 0,
    }; 8];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let n = unsafe { mapper.map_sg_into(dev, entries, dir, &mut out) }.unwrap();
    let segs = &out[..n];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_sg_for_cpu(dev, segs, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_sg_for_device(dev, segs, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(dev, segs, dir) }.unwrap();
}

#[test]
fn sg_lists_into_an_array_allocate_nothing_direct_and_bounced() {
    let m = machine(26);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .debug_checker()
        .build();
    let (coh, nc) = (coherent_device(6), device(7, BouncePool::Swiotlb));
    for d in [&coh, &nc] {
        m.attach(d.clone()).unwrap();
    }
    let base = buffers(&m);
    steady("sg, direct, coherent", || {
        sg_round(&mapper, &coh, &list(base, 8, 100))
    });
    steady("sg, direct, whole lines", || {
        sg_round(&mapper, &nc, &list(base, 0, 2 * LINE))
    });
    steady("sg, bounced", || {
        sg_round(&mapper, &nc, &list(base, 8, 100))
    });
    assert_eq!(pool.usage().used, 0);
    assert!(
        mapper
            .stats()
            .devices
            .iter()
            .map(|d| d.bounces_total())
            .sum::<u64>()
            > 0
    );
    let checker = mapper.debug_checker().unwrap();
    assert_eq!(checker.reports(), vec![]);
    assert!(checker.live().is_empty());
}

#[test]
fn failing_sg_lists_unwind_without_allocating() {
    let m = machine(27);
    // One bounce of nearly a segment fills the pool.
    let pool = swiotlb(&m, 256 * 1024, None);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .debug_checker()
        .build();
    let dev = device(8, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let dir = Direction::FromDevice;
    let mut out = [DmaSegment {
        dma: DmaAddr::new(0),
        len: 0,
    }; 8];
    steady("sg, refused lists", || {
        // Three small bounces, then one the pool cannot take: all three are given back.
        let mut entries = list(base, 8, 100);
        entries[3] = SgEntry {
            phys: base.add(0x4_0008),
            len: 300_000,
        };
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let full = unsafe { mapper.map_sg_into(&dev, &entries, dir, &mut out) };
        assert!(
            matches!(full, Err(DmaError::PoolExhausted { .. })),
            "{full:?}"
        );
        // Four bounces into room for two: the two mapped are given back.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let short = unsafe { mapper.map_sg_into(&dev, &list(base, 8, 100), dir, &mut out[..2]) };
        assert_eq!(
            short,
            Err(DmaError::SegmentListTooShort {
                device: dev.id(),
                room: 2
            })
        );
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let empty = unsafe { mapper.map_sg_into(&dev, &[], dir, &mut out) };
        assert!(matches!(empty, Err(DmaError::ZeroLength { .. })));
    });
    let usage = pool.usage();
    assert_eq!((usage.used, usage.high_water), (0, 0), "{usage:?}");
    let checker = mapper.debug_checker().unwrap();
    assert!(checker.live().is_empty());
    let short = DmaError::SegmentListTooShort {
        device: dev.id(),
        room: 2,
    };
    assert!(
        short.to_string().contains("more than the 2 segments"),
        "{short}"
    );
}

/// Control: `map_sg`, the wrapper that returns a `Vec`, allocates, and the watch sees it.
#[test]
fn control_map_sg_allocates_its_list() {
    let m = machine(28);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .build();
    let dev = device(9, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let entries = list(base, 8, 100);
    let dir = Direction::Bidirectional;
    // Set-up: the same list once unwatched.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
    let (segs, n, first) = watched("map_sg", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap()
    });
    assert!(n >= 1, "map_sg allocated its list: {n} allocations");
    assert_eq!(first.map(|o| o.label), Some("map_sg"));
    assert_eq!(segs.len(), 4);
    // The same list through `map_sg_into` allocates nothing.
    atomic("map_sg_into after map_sg", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
        sg_round(&mapper, &dev, &entries);
    });
}
