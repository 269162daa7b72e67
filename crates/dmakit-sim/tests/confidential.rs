//! Acceptance: confidential guests. On a machine whose memory is private to the guest and
//! whose cache misbehaves, devices that must bounce (their own flag, or the mapper's
//! `force_bounce_all`) reach only memory the pools shared with the host:
//!
//! - the direct path, per-device flag and global switch, with syncs and sg, and a device
//!   behind an IOMMU under the global switch;
//! - the SWIOTLB pool through growth: the new region is shared before a bounce uses it, and
//!   private again when it is removed;
//! - the coherent bounce pool;
//! - coherent allocations (`DmaAllocator`), from pages and from the atomic pool;
//! - the pools the mapper's builder makes, whether `memory_sharing` comes before or after
//!   them;
//! - the other allocations a force-bounce device gets (`alloc_pages`, `alloc_noncontiguous`,
//!   `alloc_sg`): shared while they live, private again once freed;
//!
//! every device access stays in shared memory (no `PrivateMemory` fault) and the oracle is
//! clean. A refused share is a clean error that leaves the memory out of use. The control,
//! `HazardControls::skip_memory_sharing`, skips the conversions: the same runs fault.

use std::sync::{Arc, Mutex};

use dmakit::bounce::BounceBackend;
use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig, ObjectPoolError};
use dmakit::dma_alloc::{AllocContext, DmaAllocator, DmaAllocatorConfig, NoTranslation};
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::swiotlb::{PoolConfig, RegionError, SwiotlbBounce};
use dmakit::{
    BouncePool, CacheMaintenance, Device, DeviceId, Direction, DmaAddr, DmaAllocError, DmaError,
    DmaMapper, DomainConfig, HazardControls, HostSharing, IommuDma, PageAllocator, PhysRange,
    SgEntry, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{
    run_workload, FaultReason, Machine, MachineConfig, Owner, RoutedTranslation, SharedPages,
    SimIommu, SimIommuConfig, WorkloadConfig, WorkloadOutcome,
};

const KIB: u64 = 1 << 10;
const BELOW_4G: u64 = u32::MAX as u64;

/// A confidential guest with the default misbehaving cache (evictions and speculation).
fn guest(seed: u64) -> (Machine, Arc<SharedPages>) {
    let m = Machine::new_confidential(MachineConfig {
        seed,
        ..MachineConfig::default()
    })
    .unwrap();
    let shared = m
        .host_sharing()
        .expect("a confidential machine shares through a hook");
    (m, shared)
}

/// The pools' sharing through the model's hook; `skip` is the control.
fn sharing(shared: &Arc<SharedPages>, skip: bool) -> HostSharing {
    HostSharing::new(shared.clone()).with_controls(HazardControls {
        skip_memory_sharing: skip,
        ..HazardControls::default()
    })
}

/// Device accesses refused because they touched private memory.
fn private_faults(m: &Machine) -> usize {
    m.faults()
        .iter()
        .filter(|f| f.reason == FaultReason::PrivateMemory)
        .count()
}

fn bouncer(id: u32, pool: BouncePool) -> Device {
    Device::builder(DeviceId(id), "bouncer")
        .force_bounce(true)
        .bounce_pool(pool)
        .build()
        .unwrap()
}

fn plain(id: u32) -> Device {
    Device::builder(DeviceId(id), "plain").build().unwrap()
}

fn workload(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        transfers: 400,
        seed,
        max_len: 4096,
        log_sizes: true,
        sync_chance: 0.5,
        second_round_chance: 0.3,
        ..WorkloadConfig::default()
    }
}

/// A mapper with a 1 MiB SWIOTLB pool shared through `s`, forcing every device to bounce
/// when `all`.
fn swiotlb_mapper(m: &Machine, s: HostSharing, all: bool) -> DmaMapper<&Machine> {
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let b = DmaMapper::builder(m)
        .memory_sharing(s)
        .unwrap()
        .swiotlb(base, 1 << 20)
        .unwrap();
    if all { b.force_bounce_all() } else { b }.build()
}

/// Every mapping of `out` bounced, for the forced reason.
fn all_forced(mapper: &DmaMapper<&Machine>) -> bool {
    let t = mapper.stats().total();
    t.mappings.total() > 0 && t.bounced.forced == t.mappings.total() && t.direct == 0
}

/// One direct-path run: a force-bounce device (`flagged`), or a plain device under the
/// global switch.
fn direct_run(flagged: bool, skip: bool) -> (WorkloadOutcome, usize, bool) {
    let (m, shared) = guest(3);
    let mapper = swiotlb_mapper(&m, sharing(&shared, skip), !flagged);
    let dev = if flagged {
        bouncer(1, BouncePool::Swiotlb)
    } else {
        plain(1)
    };
    let out = run_workload(&m, &mapper, &dev, workload(11)).unwrap();
    (out, private_faults(&m), all_forced(&mapper))
}

#[test]
fn force_bounce_devices_on_the_direct_path_reach_only_shared_memory() {
    for flagged in [true, false] {
        let (out, faults, forced) = direct_run(flagged, false);
        assert!(out.report.is_clean(), "flagged {flagged}: {}", out.report);
        assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
        assert_eq!(faults, 0);
        assert!(forced, "flagged {flagged}: every mapping bounces, forced");
        // Control: the pool's memory was never shared; the device's accesses fault and the
        // oracle counts them.
        let (out, faults, _) = direct_run(flagged, true);
        assert!(faults > 0, "flagged {flagged}: {}", out.report);
        assert_eq!(out.report.faults, faults as u64);
        assert!(!out.report.is_clean());
    }
}

/// A scatter-gather list of whole cache lines (mapped in place without the global switch)
/// in both directions: the device reads each segment (it must see what the CPU wrote) and
/// writes it, and the CPU sees the device's bytes after unmap_sg. Returns the
/// private-memory faults.
fn sg_run(skip: bool) -> usize {
    let (m, shared) = guest(5);
    let mapper = swiotlb_mapper(&m, sharing(&shared, skip), true);
    let dev = plain(2);
    m.attach(dev.clone()).unwrap();
    let page = m.alloc_pages(4, u64::MAX).unwrap();
    let entries: Vec<SgEntry> = [(0u64, 512u64), (0x400, 1024), (0x1800, 2048)]
        .iter()
        .map(|&(off, len)| SgEntry {
            phys: page.add(off),
            len,
        })
        .collect();
    for (i, e) in entries.iter().enumerate() {
        m.cpu_write(e.phys, &vec![0x20 + i as u8; e.len as usize], Owner(1))
            .unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::Bidirectional) }.unwrap();
    for (i, s) in segs.iter().enumerate() {
        m.grant(dev.id(), s.dma, s.len).unwrap();
        if let Ok(read) = m.device_read(dev.id(), s.dma, s.len) {
            assert!(read.data.iter().all(|&b| b == 0x20 + i as u8));
        }
        let _ = m.device_write(
            dev.id(),
            s.dma,
            &vec![0x60 + i as u8; s.len as usize],
            Owner(2),
        );
        m.revoke(dev.id(), s.dma, s.len).unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::Bidirectional) }.unwrap();
    let faults = private_faults(&m);
    if faults == 0 {
        for (i, e) in entries.iter().enumerate() {
            let mut got = vec![0; e.len as usize];
            m.cpu_read(e.phys, &mut got).unwrap();
            assert!(got.iter().all(|&b| b == 0x60 + i as u8), "segment {i}");
        }
    }
    faults
}

#[test]
fn sg_lists_under_the_global_switch_reach_only_shared_memory() {
    assert_eq!(sg_run(false), 0);
    assert!(sg_run(true) > 0, "control: private bounce memory faults");
}

/// A device behind an IOMMU and a force-bounce device on the plain bus, both under the
/// global switch: the IOMMU maps the shared bounce slot, never the private buffer.
fn iommu_run(skip: bool) -> (WorkloadOutcome, WorkloadOutcome, usize, bool) {
    let (m, shared) = guest(9);
    let hw = SimIommu::new(SimIommuConfig::default()).unwrap();
    let iommu_dev = plain(3);
    let mut routes = RoutedTranslation::new();
    routes.route(iommu_dev.id(), &hw);
    m.set_translation(Box::new(routes));
    let dma = Arc::new(IommuDma::new(Arc::new(hw), 1).unwrap());
    dma.attach(&iommu_dev, dma.create_domain(DomainConfig::STRICT).unwrap())
        .unwrap();
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let mapper = DmaMapper::builder(&m)
        .memory_sharing(sharing(&shared, skip))
        .unwrap()
        .swiotlb(base, 1 << 20)
        .unwrap()
        .iommu(dma)
        .force_bounce_all()
        .build();
    let a = run_workload(&m, &mapper, &iommu_dev, workload(21)).unwrap();
    let b = run_workload(&m, &mapper, &bouncer(4, BouncePool::Swiotlb), workload(22)).unwrap();
    let forced = all_forced(&mapper);
    (a, b, private_faults(&m), forced)
}

#[test]
fn an_iommu_device_under_the_global_switch_reaches_only_shared_memory() {
    let (a, b, faults, forced) = iommu_run(false);
    for out in [&a, &b] {
        assert!(out.report.is_clean(), "{}", out.report);
        assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    }
    assert_eq!(faults, 0);
    assert!(forced);
    let (_, _, faults, _) = iommu_run(true);
    assert!(faults > 0, "control: private bounce memory faults");
}

/// What a SWIOTLB growth run saw.
struct Grown {
    /// Private-memory faults.
    faults: usize,
    /// Whether the oracle was clean.
    clean: bool,
    /// Whether every bounce lay in shared memory when it was mapped.
    bounces_shared: bool,
    /// Bounces served by the transient pool while growth was pending.
    transient: usize,
    /// Regions added by growth, and whether each was shared when added.
    regions: Vec<(PhysRange, bool)>,
    /// Whether the grown regions were private again after their removal.
    private_after_removal: bool,
}

/// Keeps 96 bounces of 4 KiB in flight through a 256 KiB pool that grows by 256 KiB at a
/// time: while growth is pending, transient pages bridge the gap; the test then serves the
/// request with new memory. The device reads, writes and syncs each mapping; the oracle
/// checks each buffer after unmap.
fn growth_run(skip: bool) -> Grown {
    use dmakit_sim::transfer::{Scratch, Started, Transfer, TransferKnobs};
    use dmakit_sim::{Oracle, SimRng};

    let (m, shared) = guest(13);
    let requests: Arc<Mutex<Vec<GrowthRequest>>> = Arc::default();
    let log = requests.clone();
    let hook: Arc<dyn GrowthHook> = Arc::new(move |r: GrowthRequest| log.lock().unwrap().push(r));
    let cfg = PoolConfig::builder().areas(1).build().unwrap();
    let pool = Arc::new(
        SwiotlbBounce::new(cfg, Some(hook), 256 * KIB, BELOW_4G)
            .with_sharing(sharing(&shared, skip)),
    );
    let first = m.alloc_pages(64, BELOW_4G).unwrap();
    pool.add_region(first, 256 * KIB).unwrap();
    let spare = m.alloc_pages(64, BELOW_4G).unwrap();
    let zoned = Arc::new(
        ZonedPageAllocator::new(&[PhysRange::new(spare, 64 * PAGE_SIZE).unwrap()]).unwrap(),
    );
    let mapper = DmaMapper::builder(&m)
        .memory_sharing(sharing(&shared, skip))
        .unwrap()
        .swiotlb_backend(pool.clone())
        .transient_pages(zoned)
        .build();
    let dev = bouncer(5, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();

    let bufs = m.alloc_pages(96, u64::MAX).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let (mut rng, mut scratch) = (SimRng::new(17), Scratch::default());
    let mut t = Transfer {
        machine: &m,
        mapper: &mapper,
        device: &dev,
        knobs: TransferKnobs {
            cpu_ops: (0, 2),
            device_chunk: (64, 512),
            short_write_chance: 0.3,
            sync_chance: 0.5,
            second_round_chance: 0.3,
            rewrite_inbound_between_rounds: true,
            skip_sync_for_cpu: false,
        },
        rng: &mut rng,
        oracle: &mut oracle,
        scratch: &mut scratch,
    };
    let (mut regions, mut in_flight) = (Vec::new(), Vec::new());
    let (mut bounces_shared, mut transient) = (true, 0);
    for i in 0..96u64 {
        let buf = PhysRange::new(bufs.add(i * PAGE_SIZE), PAGE_SIZE).unwrap();
        let owner = Owner(100 + i as u32);
        t.oracle
            .register(&m, owner, buf.start(), buf.len(), "buffer")
            .unwrap();
        let dir = Direction::ALL[i as usize % 3];
        let Started::InFlight(f) = t.start(buf, dir, owner, &[]).unwrap() else {
            panic!("map {i} failed");
        };
        bounces_shared &= shared.is_shared(f.dma.as_u64(), f.buf.len());
        if matches!(
            f.path,
            dmakit::MapPath::Bounced {
                backend: "transient",
                ..
            }
        ) {
            transient += 1;
        }
        in_flight.push(f);
        // Serve a growth request the map made: a new region, shared as it is added.
        if let Some(req) = requests.lock().unwrap().pop() {
            let base = m
                .alloc_pages(req.min_bytes / PAGE_SIZE, req.max_addr)
                .unwrap();
            let range = pool.add_region(base, req.min_bytes).unwrap();
            regions.push((range, shared.is_shared(base.as_u64(), range.len())));
        }
    }
    for f in &in_flight {
        t.complete(f, &[]).unwrap();
    }
    let report = oracle.take_report();
    let private_after_removal = regions.iter().all(|(r, _)| {
        pool.remove_region(r.start()).unwrap();
        !shared.is_shared(r.start().as_u64(), 1) && !shared.is_shared(r.last().as_u64(), 1)
    });
    Grown {
        faults: private_faults(&m),
        clean: report.is_clean(),
        bounces_shared,
        transient,
        regions,
        private_after_removal,
    }
}

#[test]
fn swiotlb_growth_shares_each_new_region_before_a_bounce_uses_it() {
    let g = growth_run(false);
    assert!(!g.regions.is_empty(), "the pool grew");
    assert!(
        g.regions.iter().all(|&(_, shared)| shared),
        "{:?}",
        g.regions
    );
    assert!(g.transient > 0, "transient pages bridged pending growth");
    assert!(g.bounces_shared);
    assert_eq!(g.faults, 0);
    assert!(g.clean);
    assert!(g.private_after_removal);
    let g = growth_run(true);
    assert!(!g.regions.is_empty());
    assert!(g.regions.iter().all(|&(_, shared)| !shared));
    assert!(!g.bounces_shared);
    assert!(
        g.faults > 0,
        "control: the grown and first regions are private"
    );
}

/// Force-bounce devices using the coherent bounce pool, whose chunk is shared as it is added.
fn coherent_pool_run(skip: bool) -> (WorkloadOutcome, usize) {
    let (m, shared) = guest(23);
    let pool = CoherentBouncePool::new(
        ObjectPoolConfig {
            min_object: 128,
            max_object: 64 * KIB,
            chunk_bytes: 1 << 20,
            refill_below: 0,
            name: "coherent-pool",
        },
        None,
    )
    .unwrap()
    .with_sharing(sharing(&shared, skip));
    let chunk = m.alloc_pages(256, BELOW_4G).unwrap();
    m.set_uncached(PhysRange::new(chunk, 1 << 20).unwrap());
    pool.add_chunk(chunk, 1 << 20).unwrap();
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(Arc::new(pool))
        .build();
    let out = run_workload(&m, &mapper, &bouncer(6, BouncePool::Coherent), workload(31)).unwrap();
    (out, private_faults(&m))
}

#[test]
fn the_coherent_bounce_pool_serves_force_bounce_devices_from_shared_memory() {
    let (out, faults) = coherent_pool_run(false);
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    assert_eq!(faults, 0);
    let (out, faults) = coherent_pool_run(true);
    assert!(faults > 0, "control: {}", out.report);
}

/// A DMA allocator on the guest, sharing for force-bounce devices (`every_device`: for all).
fn allocator(
    m: &Machine,
    s: HostSharing,
    every_device: bool,
) -> DmaAllocator<&Machine, ZonedPageAllocator, NoTranslation> {
    let base = m.alloc_pages(1024, BELOW_4G).unwrap();
    let zones =
        ZonedPageAllocator::new(&[PhysRange::new(base, 1024 * PAGE_SIZE).unwrap()]).unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * KIB,
        ..DmaAllocatorConfig::default()
    };
    DmaAllocator::new(m, zones, NoTranslation, cfg, None)
        .unwrap()
        .with_memory_sharing(s, every_device)
        .map_err(|r| r.error)
        .unwrap()
}

/// The device writes a pattern through the buffer's DMA address and reads it back; the
/// CPU sees it. Returns whether every access went through.
fn round_trip(
    m: &Machine,
    dev: &Device,
    buf: &dmakit::dma_alloc::CoherentBuffer,
    seed: u8,
) -> bool {
    let data = vec![seed; buf.size() as usize];
    m.grant(dev.id(), buf.dma(), buf.size()).unwrap();
    let ok = m.device_write(dev.id(), buf.dma(), &data, Owner(7)).is_ok()
        && m.device_read(dev.id(), buf.dma(), buf.size())
            .is_ok_and(|r| r.data == data);
    m.revoke(dev.id(), buf.dma(), buf.size()).unwrap();
    let mut cpu = vec![0; data.len()];
    m.cpu_read(buf.phys(), &mut cpu).unwrap();
    ok && cpu == data
}

/// Coherent allocations of a force-bounce device, from pages and from the atomic pool:
/// returns the private-memory faults, and whether the pages were private again after free.
fn coherent_alloc_run(skip: bool) -> (usize, bool) {
    let (m, shared) = guest(29);
    let alloc = allocator(&m, sharing(&shared, skip), false);
    let dev = bouncer(8, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let mut private_after_free = true;
    for (i, (size, ctx)) in [
        (3 * PAGE_SIZE, AllocContext::MayBlock),
        (512, AllocContext::Atomic),
        (PAGE_SIZE, AllocContext::MayBlock),
        (100, AllocContext::Atomic),
    ]
    .into_iter()
    .enumerate()
    {
        let buf = alloc.alloc_coherent(&dev, size, ctx).unwrap();
        assert_eq!(buf.from_atomic_pool(), ctx == AllocContext::Atomic);
        let ok = round_trip(&m, &dev, &buf, 0x31 + i as u8);
        assert_eq!(ok, !skip, "allocation {i}");
        let (phys, pooled) = (buf.phys(), buf.from_atomic_pool());
        alloc.free_coherent(&dev, buf).map_err(|r| r.error).unwrap();
        if !pooled {
            private_after_free &= !shared.is_shared(phys.as_u64(), size);
        }
    }
    (private_faults(&m), private_after_free)
}

#[test]
fn coherent_allocations_for_force_bounce_devices_come_from_shared_memory() {
    let (faults, private_after_free) = coherent_alloc_run(false);
    assert_eq!(faults, 0);
    assert!(private_after_free);
    let (faults, _) = coherent_alloc_run(true);
    assert!(faults > 0, "control: private coherent memory faults");
}

#[test]
fn only_devices_that_must_bounce_get_shared_pages() {
    let (m, shared) = guest(37);
    let flagged = bouncer(9, BouncePool::Swiotlb);
    let other = plain(10);
    for (every_device, other_shared) in [(false, false), (true, true)] {
        let alloc = allocator(&m, sharing(&shared, false), every_device);
        for (dev, want) in [(&flagged, true), (&other, other_shared)] {
            let buf = alloc
                .alloc_coherent(dev, PAGE_SIZE, AllocContext::MayBlock)
                .unwrap();
            assert_eq!(shared.is_shared(buf.phys().as_u64(), PAGE_SIZE), want);
            alloc.free_coherent(dev, buf).map_err(|r| r.error).unwrap();
        }
        alloc.release().map_err(|r| r.error).unwrap();
    }
    assert_eq!(shared.shared_pages(), 0, "everything is private again");
}

#[test]
fn a_refused_share_is_a_clean_error_and_the_memory_stays_unused() {
    let (m, shared) = guest(41);
    let s = sharing(&shared, false);
    shared.set_refuse(true);

    // A SWIOTLB region.
    let pool = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX)
        .with_sharing(s.clone());
    let base = m.alloc_pages(64, BELOW_4G).unwrap();
    let e = pool.add_region(base, 256 * KIB).unwrap_err();
    assert!(matches!(e, RegionError::NotShared { .. }), "{e}");
    assert!(e.to_string().contains("could not be shared"), "{e}");
    assert!(pool.pool().regions().is_empty());

    // A coherent pool chunk.
    let cpool = CoherentBouncePool::new(ObjectPoolConfig::default(), None)
        .unwrap()
        .with_sharing(s.clone());
    let e = cpool.add_chunk(base, 256 * KIB).unwrap_err();
    assert!(matches!(e, ObjectPoolError::NotShared(_)), "{e}");
    assert_eq!(cpool.objects().usage().total, 0);

    // A coherent allocation, and an allocator whose atomic pool cannot be shared.
    shared.set_refuse(false);
    let alloc = allocator(&m, s.clone(), false);
    shared.set_refuse(true);
    let e = alloc
        .alloc_coherent(
            &bouncer(12, BouncePool::Swiotlb),
            PAGE_SIZE,
            AllocContext::MayBlock,
        )
        .unwrap_err();
    assert!(matches!(e, DmaAllocError::NotShared(_)), "{e}");
    let base2 = m.alloc_pages(64, BELOW_4G).unwrap();
    let zones = ZonedPageAllocator::new(&[PhysRange::new(base2, 64 * PAGE_SIZE).unwrap()]).unwrap();
    let refused = DmaAllocator::new(
        &m,
        zones,
        NoTranslation,
        DmaAllocatorConfig::default(),
        None,
    )
    .unwrap()
    .with_memory_sharing(s, true)
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(refused.error, DmaAllocError::NotShared(_)));
    refused.handle.release().map_err(|r| r.error).unwrap();

    assert_eq!(private_faults(&m), 0);
    assert_eq!(
        shared.shared_pages(),
        alloc.atomic_pool_usage().total / PAGE_SIZE
    );
}

#[test]
fn a_refused_transient_share_fails_the_map_and_returns_the_pages() {
    let (m, shared) = guest(43);
    let s = sharing(&shared, false);
    let hook: Arc<dyn GrowthHook> = Arc::new(|_: GrowthRequest| {});
    let cfg = PoolConfig::builder().areas(1).build().unwrap();
    let pool =
        Arc::new(SwiotlbBounce::new(cfg, Some(hook), 256 * KIB, BELOW_4G).with_sharing(s.clone()));
    pool.add_region(m.alloc_pages(64, BELOW_4G).unwrap(), 256 * KIB)
        .unwrap();
    let spare = m.alloc_pages(64, BELOW_4G).unwrap();
    let zoned = Arc::new(
        ZonedPageAllocator::new(&[PhysRange::new(spare, 64 * PAGE_SIZE).unwrap()]).unwrap(),
    );
    let free = || {
        zoned
            .stats()
            .iter()
            .map(|z| z.pages.free_pages)
            .sum::<u64>()
    };
    let mapper = DmaMapper::builder(&m)
        .memory_sharing(s)
        .unwrap()
        .swiotlb_backend(pool.clone())
        .transient_pages(zoned.clone())
        .force_bounce_all()
        .build();
    let dev = plain(11);
    let bufs = m.alloc_pages(65, u64::MAX).unwrap();
    // Fill the pool (64 bounces of two slots), then refuse conversions.
    for i in 0..64 {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe {
            mapper.map(
                &dev,
                bufs.add(i * PAGE_SIZE),
                PAGE_SIZE,
                Direction::ToDevice,
            )
        }
        .unwrap();
    }
    shared.set_refuse(true);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let e = unsafe { mapper.map(&dev, bufs.add(64 * PAGE_SIZE), 100, Direction::ToDevice) }
        .unwrap_err();
    assert!(matches!(e, DmaError::PoolExhausted { .. }), "{e}");
    assert!(
        pool.growth_pending(),
        "the map did reach for transient pages"
    );
    assert_eq!(free(), 64, "the transient pages went back unused");
    assert_eq!(mapper.transient().unwrap().usage().live, 0);
}

/// The device writes a pattern of `len` bytes at `dma` and reads it back: whether both
/// accesses went through and the device read its own bytes.
fn device_writes(m: &Machine, dev: &Device, dma: DmaAddr, len: u64, seed: u8) -> bool {
    let data = vec![seed; len as usize];
    m.grant(dev.id(), dma, len).unwrap();
    let ok = m.device_write(dev.id(), dma, &data, Owner(7)).is_ok()
        && m.device_read(dev.id(), dma, len)
            .is_ok_and(|r| r.data == data);
    m.revoke(dev.id(), dma, len).unwrap();
    ok
}

/// Whether the CPU sees `len` bytes of `seed` at `phys`.
fn cpu_sees(m: &Machine, phys: dmakit::PhysAddr, len: u64, seed: u8) -> bool {
    let mut got = vec![0; len as usize];
    m.cpu_read(phys, &mut got).unwrap();
    got.iter().all(|&b| b == seed)
}

/// What a run of one allocation kind for a force-bounce device saw.
struct KindRun {
    /// Private-memory faults.
    faults: usize,
    /// Whether every allocation was shared with the host while it lived.
    shared_while_live: bool,
    /// Whether every device round trip went through and the CPU saw the device's bytes.
    round_trips: bool,
    /// Whether every allocation's pages were private again after free.
    private_after_free: bool,
}

/// Sizes the allocation-kind runs use: a partial page, one page, several with a tail.
const KIND_SIZES: [u64; 3] = [512, PAGE_SIZE, 3 * PAGE_SIZE + 100];

/// `alloc_pages` for a force-bounce device: the device writes and reads the pages through
/// their DMA address between the syncs, and the CPU sees its bytes.
fn pages_run(skip: bool) -> KindRun {
    let (m, shared) = guest(47);
    let alloc = allocator(&m, sharing(&shared, skip), false);
    let dev = bouncer(14, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let (mut shared_while_live, mut round_trips, mut private_after_free) = (true, true, true);
    for (i, size) in KIND_SIZES.into_iter().enumerate() {
        let seed = 0x41 + i as u8;
        let p = alloc
            .alloc_pages(&dev, size, Direction::Bidirectional)
            .unwrap();
        shared_while_live &= shared.is_shared(p.phys().as_u64(), size);
        alloc.sync_pages_for_device(&dev, &p, 0, size).unwrap();
        let ok = device_writes(&m, &dev, p.dma(), size, seed);
        alloc.sync_pages_for_cpu(&dev, &p, 0, size).unwrap();
        round_trips &= ok && cpu_sees(&m, p.phys(), size, seed);
        let phys = p.phys();
        alloc.free_pages(&dev, p).map_err(|r| r.error).unwrap();
        private_after_free &=
            !shared.is_shared(phys.as_u64(), 1) && !shared.is_shared(phys.as_u64() + size - 1, 1);
    }
    KindRun {
        faults: private_faults(&m),
        shared_while_live,
        round_trips,
        private_after_free,
    }
}

/// `alloc_noncontiguous` for a force-bounce device on the plain bus: the device uses the
/// table's one device address between the syncs.
fn noncontiguous_run(skip: bool) -> KindRun {
    let (m, shared) = guest(53);
    let alloc = allocator(&m, sharing(&shared, skip), false);
    let dev = bouncer(15, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let (mut shared_while_live, mut round_trips, mut private_after_free) = (true, true, true);
    for (i, size) in KIND_SIZES.into_iter().enumerate() {
        let seed = 0x51 + i as u8;
        let t = alloc
            .alloc_noncontiguous(&dev, size, Direction::Bidirectional)
            .unwrap();
        let chunks: Vec<PhysRange> = t
            .chunks()
            .iter()
            .map(|c| PhysRange::new(c.phys(), c.bytes()).unwrap())
            .collect();
        assert_eq!(chunks.len(), 1, "one physical chunk without an IOMMU");
        shared_while_live &= t.chunks().iter().all(|c| c.shared())
            && chunks
                .iter()
                .all(|c| shared.is_shared(c.start().as_u64(), c.len()));
        alloc.sync_noncontiguous_for_device(&dev, &t).unwrap();
        let ok = device_writes(&m, &dev, t.dma_addr().unwrap(), size, seed);
        alloc.sync_noncontiguous_for_cpu(&dev, &t).unwrap();
        round_trips &= ok && cpu_sees(&m, chunks[0].start(), size, seed);
        alloc
            .free_noncontiguous(&dev, t)
            .map_err(|r| r.error)
            .unwrap();
        private_after_free &= chunks.iter().all(|c| {
            !shared.is_shared(c.start().as_u64(), 1) && !shared.is_shared(c.last().as_u64(), 1)
        });
    }
    KindRun {
        faults: private_faults(&m),
        shared_while_live,
        round_trips,
        private_after_free,
    }
}

/// `alloc_sg` for a force-bounce device on the plain bus, which sees memory at its
/// physical addresses: the device writes and reads every entry of the table, the CPU
/// invalidates the entry and sees the device's bytes.
fn sg_table_run(skip: bool) -> KindRun {
    let (m, shared) = guest(59);
    let alloc = allocator(&m, sharing(&shared, skip), false);
    let dev = bouncer(16, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let (mut shared_while_live, mut round_trips, mut private_after_free) = (true, true, true);
    for (i, size) in KIND_SIZES.into_iter().enumerate() {
        let seed = 0x61 + i as u8;
        let t = alloc.alloc_sg(&dev, size).unwrap();
        assert!(!t.needs_bounce(), "the zones lie below the device's mask");
        let chunks: Vec<PhysRange> = t
            .chunks()
            .iter()
            .map(|c| PhysRange::new(c.phys(), c.bytes()).unwrap())
            .collect();
        shared_while_live &= t.chunks().iter().all(|c| c.shared())
            && chunks
                .iter()
                .all(|c| shared.is_shared(c.start().as_u64(), c.len()));
        for e in t.entries() {
            // The device has no bus ranges: it sees memory at its physical addresses.
            let ok = device_writes(&m, &dev, DmaAddr::new(e.phys.as_u64()), e.len, seed);
            m.invalidate(PhysRange::new(e.phys, e.len).unwrap());
            round_trips &= ok && cpu_sees(&m, e.phys, e.len, seed);
        }
        alloc.free_sg(&dev, t).map_err(|r| r.error).unwrap();
        private_after_free &= chunks.iter().all(|c| {
            !shared.is_shared(c.start().as_u64(), 1) && !shared.is_shared(c.last().as_u64(), 1)
        });
    }
    KindRun {
        faults: private_faults(&m),
        shared_while_live,
        round_trips,
        private_after_free,
    }
}

/// The assertions every allocation kind shares, run and control.
fn assert_kind(name: &str, run: fn(bool) -> KindRun) {
    let r = run(false);
    assert_eq!(r.faults, 0, "{name}");
    assert!(r.shared_while_live, "{name}: shared while it lives");
    assert!(r.round_trips, "{name}: the device's bytes reach the CPU");
    assert!(r.private_after_free, "{name}: private again after free");
    // Control: the allocations stay private; every device access faults.
    let r = run(true);
    assert!(!r.shared_while_live, "{name} control");
    assert!(!r.round_trips, "{name} control");
    assert!(r.faults > 0, "{name} control: private memory faults");
}

#[test]
fn pages_for_force_bounce_devices_come_from_shared_memory() {
    assert_kind("alloc_pages", pages_run);
}

#[test]
fn noncontiguous_tables_for_force_bounce_devices_come_from_shared_memory() {
    assert_kind("alloc_noncontiguous", noncontiguous_run);
}

#[test]
fn sg_tables_for_force_bounce_devices_come_from_shared_memory() {
    assert_kind("alloc_sg", sg_table_run);
}

#[test]
fn a_refused_share_fails_every_page_allocation_cleanly() {
    let (m, shared) = guest(61);
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let zones = Arc::new(
        ZonedPageAllocator::new(&[PhysRange::new(base, 256 * PAGE_SIZE).unwrap()]).unwrap(),
    );
    let free = || {
        zones
            .stats()
            .iter()
            .map(|z| z.pages.free_pages)
            .sum::<u64>()
    };
    let alloc = DmaAllocator::new(
        &m,
        zones.clone(),
        NoTranslation,
        DmaAllocatorConfig {
            atomic_pool_bytes: 16 * KIB,
            ..DmaAllocatorConfig::default()
        },
        None,
    )
    .unwrap()
    .with_memory_sharing(sharing(&shared, false), false)
    .map_err(|r| r.error)
    .unwrap();
    let dev = bouncer(17, BouncePool::Swiotlb);
    let (free_before, shared_before) = (free(), shared.shared_pages());
    shared.set_refuse(true);
    let size = 2 * PAGE_SIZE;
    let errors = [
        alloc
            .alloc_pages(&dev, size, Direction::ToDevice)
            .map(|_| ())
            .unwrap_err(),
        alloc
            .alloc_noncontiguous(&dev, size, Direction::ToDevice)
            .map(|_| ())
            .unwrap_err(),
        alloc.alloc_sg(&dev, size).map(|_| ()).unwrap_err(),
    ];
    for e in errors {
        assert!(matches!(e, DmaAllocError::NotShared(_)), "{e}");
        assert!(e.to_string().contains("shared"), "{e}");
    }
    assert_eq!(free(), free_before, "every page went back");
    assert_eq!(shared.shared_pages(), shared_before, "nothing left shared");
    // A device that need not bounce is not converted, so the refusal does not touch it.
    let p = alloc
        .alloc_pages(&plain(18), size, Direction::ToDevice)
        .unwrap();
    alloc
        .free_pages(&plain(18), p)
        .map_err(|r| r.error)
        .unwrap();
}

/// What a run with the builder's pools saw.
struct OrderRun {
    /// The global pool's device, then the restricted pool's.
    outcomes: [WorkloadOutcome; 2],
    /// Private-memory faults.
    faults: usize,
    /// Whether both pools' memory was shared when the mapper was built.
    pools_shared: bool,
}

const RESTRICTED: u64 = 256 * KIB;

/// A mapper whose builder makes a 1 MiB SWIOTLB pool and a restricted pool for device 20,
/// with `memory_sharing` given first or last; a force-bounce device uses the global pool and
/// device 20 its own.
fn order_run(sharing_first: bool, skip: bool) -> OrderRun {
    let (m, shared) = guest(67);
    let s = sharing(&shared, skip);
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let own = m.alloc_pages(RESTRICTED / PAGE_SIZE, BELOW_4G).unwrap();
    let restricted = plain(20);
    fn pools(
        b: dmakit::DmaMapperBuilder<&Machine>,
        (base, own, restricted): (dmakit::PhysAddr, dmakit::PhysAddr, DeviceId),
    ) -> dmakit::DmaMapperBuilder<&Machine> {
        b.swiotlb(base, 1 << 20)
            .unwrap()
            .restricted_pool(restricted, own, RESTRICTED)
            .unwrap()
    }
    let memory = (base, own, restricted.id());
    let b = DmaMapper::builder(&m);
    let mapper = if sharing_first {
        pools(b.memory_sharing(s).unwrap(), memory)
    } else {
        pools(b, memory).memory_sharing(s).unwrap()
    }
    .build();
    let pools_shared =
        shared.is_shared(base.as_u64(), 1 << 20) && shared.is_shared(own.as_u64(), RESTRICTED);
    let global = bouncer(21, BouncePool::Swiotlb);
    let outcomes = [
        run_workload(&m, &mapper, &global, workload(71)).unwrap(),
        run_workload(&m, &mapper, &restricted, workload(73)).unwrap(),
    ];
    OrderRun {
        outcomes,
        faults: private_faults(&m),
        pools_shared,
    }
}

#[test]
fn the_builder_shares_its_pools_whether_sharing_comes_first_or_last() {
    for sharing_first in [true, false] {
        let r = order_run(sharing_first, false);
        assert!(r.pools_shared, "sharing first: {sharing_first}");
        for out in &r.outcomes {
            assert!(out.report.is_clean(), "{sharing_first}: {}", out.report);
            assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
            assert!(out.report.checked_bytes > 0);
        }
        assert_eq!(r.faults, 0);
        // Control: conversions skipped; both pools stay private and the devices fault.
        let r = order_run(sharing_first, true);
        assert!(!r.pools_shared);
        assert!(r.faults > 0, "control, sharing first: {sharing_first}");
    }
}

#[test]
fn sharing_given_twice_or_refused_after_the_pools_leaves_no_memory_wrongly_shared() {
    let (m, shared) = guest(79);
    let s = sharing(&shared, false);
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    // Given twice through the same hook: the remade pool's memory stays shared.
    let mapper = DmaMapper::builder(&m)
        .memory_sharing(s.clone())
        .unwrap()
        .swiotlb(base, 1 << 20)
        .unwrap()
        .memory_sharing(s.clone())
        .unwrap()
        .build();
    assert!(shared.is_shared(base.as_u64(), 1 << 20));
    assert_eq!(shared.shared_pages(), 256);
    let out = run_workload(&m, &mapper, &bouncer(22, BouncePool::Swiotlb), workload(83)).unwrap();
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(private_faults(&m), 0);
    drop(mapper);

    // Refused after the pool was made: a clean error, and nothing is left shared.
    let (m, shared) = guest(89);
    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let b = DmaMapper::builder(&m).swiotlb(base, 1 << 20).unwrap();
    shared.set_refuse(true);
    let e = b
        .memory_sharing(sharing(&shared, false))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, RegionError::NotShared { .. }), "{e}");
    assert!(e.to_string().contains("could not be shared"), "{e}");
    assert_eq!(shared.shared_pages(), 0);
}
