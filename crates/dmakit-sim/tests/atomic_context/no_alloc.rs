//! No heap allocation on any map, unmap or sync path.
//!
//! The test binary's global allocator ([`Watch`]) counts every allocation a thread makes
//! while its "no allocation" flag is up, and remembers the first one (its size and the
//! label of the region it happened in). [`atomic`] raises the flag around one region and
//! asserts afterwards that nothing was allocated; the allocator itself never panics.
//! Set-up (building mappers, attaching devices, machine memory the model touches first)
//! happens outside the flag: each watched region runs once unwatched first.
//!
//! Watched, with statistics on: direct maps (coherent and non-coherent devices), SWIOTLB
//! bounces, refused maps (pool full, bad ranges, wrong direction, a part outside the
//! mapping), the IOMMU path strict and lazy (in place, bounced, untrusted, parked bounce
//! slots, flush-queue drains on unmap and by `flush_iommu_queues`, IOVA magazines through
//! the depot, a full mapping table), deferral (queued, refused when the queue is full,
//! completed by an unmap), on the model and (direct and bounced) on the host platform.
//! Coherent-pool and transient bounces are watched in `coherent`; the debug checker and
//! scatter-gather lists on the direct and bounced paths (`map_sg_into`) in `checker_sg`;
//! IOVA allocation beyond the caches (large maps, fragmentation, exhaustion) in `iova`;
//! scatter-gather lists behind an IOMMU (in place, merged, bounced, a full piece table) in
//! `iommu_sg`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The global allocator of this test binary: the system allocator, watched.
pub struct Watch;

/// The first allocation seen inside a flagged region: its size and the region's label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offence {
    /// Bytes asked for.
    pub size: usize,
    /// The label [`atomic`] was given.
    pub label: &'static str,
}

thread_local! {
    static LABEL: Cell<Option<&'static str>> = const { Cell::new(None) };
    static FIRST: Cell<Option<Offence>> = const { Cell::new(None) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

impl Watch {
    fn note(size: usize) {
        // `try_with`: a thread being torn down has no locals left; it is never flagged.
        let _ = LABEL.try_with(|l| {
            if let Some(label) = l.get() {
                COUNT.with(|c| c.set(c.get() + 1));
                FIRST.with(|f| {
                    if f.get().is_none() {
                        f.set(Some(Offence { size, label }));
                    }
                });
            }
        });
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; `note` only touches
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::note(new_size);
        // SAFETY: the caller's contract for `realloc` is passed on as is.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Runs `f` with this thread's "no allocation" flag up and returns what it returned, with
/// the number of allocations made meanwhile and the first of them.
pub fn watched<R>(label: &'static str, f: impl FnOnce() -> R) -> (R, usize, Option<Offence>) {
    FIRST.with(|x| x.set(None));
    COUNT.with(|c| c.set(0));
    LABEL.with(|l| l.set(Some(label)));
    let r = f();
    LABEL.with(|l| l.set(None));
    (r, COUNT.with(Cell::get), FIRST.with(Cell::get))
}

/// Runs `f` with the flag up and fails the test if it allocated.
#[track_caller]
pub fn atomic<R>(label: &'static str, f: impl FnOnce() -> R) -> R {
    let (r, n, first) = watched(label, f);
    assert_eq!(first, None, "{n} heap allocation(s) inside `{label}`");
    r
}

#[test]
fn the_allocator_catches_an_allocation_inside_the_flag() {
    let mut v: Vec<u64> = Vec::new();
    let ((), n, first) = watched("deliberate push", || v.push(1));
    assert_eq!(n, 1);
    assert_eq!(
        first,
        Some(Offence {
            size: 32,
            label: "deliberate push"
        })
    );
    // Outside the flag nothing is counted, and a region that allocates nothing passes.
    v.push(2);
    let ((), n, first) = watched("no push", || v[0] += 1);
    assert_eq!((n, first), (0, None));
}

/// Runs `f` twice: once as set-up (first use of devices, pools and model memory may
/// allocate), then with the flag up, failing the test if the second run allocated.
#[track_caller]
fn steady(label: &'static str, mut f: impl FnMut()) {
    f();
    atomic(label, f);
}

mod paths {
    use dmakit::bounce::BounceBackend;
    use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
    use dmakit::{
        BouncePool, CacheMaintenance, CpuMemory, DeferredCompletion, Device, DeviceId, Direction,
        DmaAddr, DmaError, DmaMapper, DomainConfig, FlushMode, HazardControls, MapStatus,
        PageAllocator, PhysAddr, PhysRange, Platform,
    };
    use dmakit_sim::host::{HostMaintenance, HostPlatform};
    use dmakit_sim::Machine;
    use dmakit_sim::{Granule, HazardConfig};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use super::{atomic, steady, watched};
    use crate::iommu_rig::{rig, Rig};
    use crate::testbed::{device, machine, swiotlb, BELOW_4G, LINE};

    /// Mappings live at once in each round: enough that every table behind a path holds
    /// many records, not one.
    const LIVE: usize = 48;
    const DIRS: [Direction; 3] = [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ];

    /// Maps `LIVE` buffers of `len` bytes at `stride` apart from `base + skew` (cycling the
    /// directions), syncs part of each both ways, and unmaps them, checking every result.
    /// The addresses live in an array: the round itself allocates nothing.
    pub(super) fn round<P: Platform>(
        mapper: &DmaMapper<P>,
        dev: &Device,
        base: PhysAddr,
        skew: u64,
        len: u64,
    ) {
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

    /// Writes `len` bytes at `base` through to the model's memory, so that it holds their
    /// pages (it allocates a page when one is first written, which a later write-back
    /// from the cache could otherwise do inside a watched region).
    pub(super) fn materialise(m: &Machine, base: PhysAddr, len: u64) {
        m.fill(base, 0x5a, len).unwrap();
        m.clean(PhysRange::new(base, len).unwrap());
    }

    pub(super) fn buffers(m: &Machine) -> PhysAddr {
        let base = m.alloc_pages(128, BELOW_4G).unwrap();
        materialise(m, base, 128 * 4096);
        base
    }

    #[test]
    fn direct_maps_allocate_nothing() {
        let m = machine(1);
        let mapper = DmaMapper::builder(&m)
            .swiotlb_backend(swiotlb(&m, 1 << 20, None))
            .build();
        let coherent = Device::builder(DeviceId(1), "coherent")
            .coherent(true)
            .dma_bits(32)
            .build()
            .unwrap();
        let noncoherent = device(2, BouncePool::Swiotlb);
        for d in [&coherent, &noncoherent] {
            m.attach(d.clone()).unwrap();
        }
        let base = buffers(&m);
        // A coherent device maps anything in place; a non-coherent one maps whole lines
        // in place, with maintenance.
        steady("direct, coherent device", || {
            round(&mapper, &coherent, base, 8, 100)
        });
        steady("direct, non-coherent device, whole lines", || {
            round(&mapper, &noncoherent, base, 0, 2 * LINE)
        });
        assert_eq!(
            mapper
                .stats()
                .devices
                .iter()
                .map(|d| d.bounces_total())
                .sum::<u64>(),
            0
        );
    }

    #[test]
    fn swiotlb_bounces_allocate_nothing() {
        let m = machine(2);
        let pool = swiotlb(&m, 1 << 20, None);
        let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
        let dev = device(3, BouncePool::Swiotlb);
        m.attach(dev.clone()).unwrap();
        let base = buffers(&m);
        steady("swiotlb, misaligned", || round(&mapper, &dev, base, 8, 100));
        steady("swiotlb, misaligned, several pages", || {
            round(&mapper, &dev, base, 24, 3000)
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
    }

    #[test]
    fn refused_maps_allocate_nothing() {
        let m = machine(3);
        // One bounce of nearly a segment fills the pool.
        let pool = swiotlb(&m, 256 * 1024, None);
        let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
        let dev = device(4, BouncePool::Swiotlb);
        m.attach(dev.clone()).unwrap();
        let base = buffers(&m);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let hog = unsafe { mapper.map(&dev, base.add(8), 250_000, Direction::FromDevice) }.unwrap();
        let used = pool.usage().used;
        steady("refused maps", || {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let full =
                unsafe { mapper.map(&dev, base.add(0x4_0008), 16384, Direction::FromDevice) };
            assert!(
                matches!(full, Err(DmaError::PoolExhausted { .. })),
                "{full:?}"
            );
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let empty = unsafe { mapper.map(&dev, base, 0, Direction::ToDevice) };
            assert!(matches!(empty, Err(DmaError::ZeroLength { .. })));
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let huge =
                unsafe { mapper.map(&dev, PhysAddr::new(u64::MAX - 8), 64, Direction::ToDevice) };
            assert!(matches!(huge, Err(DmaError::AddressOverflow { .. })));
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let wrong = unsafe { mapper.unmap(&dev, hog, 250_000, Direction::ToDevice) };
            assert!(
                matches!(wrong, Err(DmaError::WrongDirection { .. })),
                "{wrong:?}"
            );
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let part =
                unsafe { mapper.sync_for_cpu(&dev, hog, 250_000, 64, Direction::FromDevice) };
            assert!(
                matches!(part, Err(DmaError::OutOfMapping { .. })),
                "{part:?}"
            );
        });
        assert_eq!(pool.usage().used, used, "refusals changed the pool");
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
    }

    #[test]
    fn host_platform_paths_allocate_nothing() {
        const MIB: u64 = 1 << 20;
        let host = HostPlatform::new(0, 8 * MIB, 1, 64, HostMaintenance::None).unwrap();
        let cfg = PoolConfig::builder().build().unwrap();
        let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
        pool.add_region(PhysAddr::new(0), 2 * MIB).unwrap();
        let mapper = DmaMapper::builder(&host)
            .swiotlb_backend(std::sync::Arc::new(pool))
            .build();
        let bounced = Device::builder(DeviceId(5), "noncoherent")
            .cache_line(64)
            .build()
            .unwrap();
        let direct = Device::builder(DeviceId(6), "coherent")
            .coherent(true)
            .build()
            .unwrap();
        let base = PhysAddr::new(4 * MIB);
        host.fill(base, 0x5a, 4096).unwrap();
        steady("host, bounced", || round(&mapper, &bounced, base, 8, 100));
        steady("host, direct", || round(&mapper, &direct, base, 8, 100));
        atomic("host, refused", || {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            assert!(unsafe { mapper.map(&bounced, base, 0, Direction::ToDevice) }.is_err());
        });
    }

    /// A device behind a new domain of `cfg` on the rig's machine, and a mapper with a
    /// SWIOTLB pool for its bounces, every page of which the model has materialised (its
    /// sparse memory allocates a page when it is first written).
    pub(super) fn behind_iommu(
        r: &Rig,
        cfg: DomainConfig,
        trusted: bool,
    ) -> (Device, DmaMapper<&Machine>) {
        let d = r.domain(cfg);
        let dev = Device::builder(DeviceId(8), "behind-iommu")
            .cache_line(LINE)
            .trusted(trusted)
            .build()
            .unwrap();
        r.m.attach(dev.clone()).unwrap();
        r.dma.attach(&dev, d).unwrap();
        let pool = r.m.alloc_pages(256, u32::MAX as u64).unwrap();
        materialise(&r.m, pool, 256 * 4096);
        let swiotlb = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
        swiotlb.add_region(pool, 256 * 4096).unwrap();
        let mapper = DmaMapper::builder(&r.m)
            .swiotlb_backend(std::sync::Arc::new(swiotlb))
            .iommu(r.dma.clone())
            .build();
        (dev, mapper)
    }

    #[test]
    fn iommu_maps_allocate_nothing() {
        for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
            for trusted in [true, false] {
                let r = rig(5, Granule::K4, HazardConfig::NONE);
                let (dev, mapper) = behind_iommu(&r, cfg, trusted);
                let base = buffers(&r.m);
                // Whole pages map in place; a misaligned buffer is bounced (an untrusted
                // device's into zero-padded pages), and a lazy domain parks its slot.
                steady("iommu, 4 KiB pages", || round(&mapper, &dev, base, 0, 4096));
                steady("iommu, bounced", || round(&mapper, &dev, base, 8, 100));
                steady("iommu, flush queues", || {
                    mapper.flush_iommu_queues();
                });
            }
        }
    }

    /// More IOVAs freed at once than a CPU's two magazines hold (2 x 128): magazines go to
    /// the depot and come back from it, and that allocates nothing either.
    #[test]
    fn iova_magazines_cycle_through_the_depot_without_allocating() {
        const MANY: usize = 320;
        let r = rig(10, Granule::K4, HazardConfig::NONE);
        let (dev, mapper) = behind_iommu(&r, DomainConfig::STRICT, true);
        let base = r.m.alloc_pages(MANY as u64, u64::MAX).unwrap();
        materialise(&r.m, base, MANY as u64 * 4096);
        let mut live = [DmaAddr::new(0); MANY];
        steady("iova magazines and depot", || {
            for (i, dma) in live.iter_mut().enumerate() {
                let phys = base.add(i as u64 * 4096);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                *dma = unsafe { mapper.map(&dev, phys, 4096, Direction::ToDevice) }.unwrap();
            }
            for &dma in &live {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.unmap(&dev, dma, 4096, Direction::ToDevice) }.unwrap();
            }
        });
        let iova = r.dma.domain_of(dev.id()).unwrap().stats().iova;
        assert!(
            iova.cached_ranges > 256,
            "the depot holds magazines: {iova:?}"
        );
    }

    #[test]
    fn a_lazy_domain_drains_its_full_queue_without_allocating() {
        let r = rig(6, Granule::K4, HazardConfig::NONE);
        let cfg = DomainConfig {
            mode: FlushMode::Lazy { queue: 8 },
            ..DomainConfig::STRICT
        };
        let (dev, mapper) = behind_iommu(&r, cfg, true);
        let base = buffers(&r.m);
        // 48 unmaps through an 8-entry queue: it fills and drains on the unmap path.
        steady("lazy, queue drains", || round(&mapper, &dev, base, 0, 4096));
        let stats = r.dma.domain_of(dev.id()).unwrap().stats();
        assert!(stats.queue_flushes >= 2 * 48 / 8, "{stats:?}");
    }

    #[test]
    fn a_full_mapping_table_refuses_without_allocating() {
        let r = rig(7, Granule::K4, HazardConfig::NONE);
        let cfg = DomainConfig {
            max_mappings: 2,
            ..DomainConfig::STRICT
        };
        let (dev, mapper) = behind_iommu(&r, cfg, true);
        let base = buffers(&r.m);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let a = unsafe { mapper.map(&dev, base, 4096, Direction::ToDevice) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let b = unsafe { mapper.map(&dev, base.add(4096), 4096, Direction::ToDevice) }.unwrap();
        let dom = r.dma.domain_of(dev.id()).unwrap();
        let before = dom.stats();
        steady("mapping table full", || {
            for (off, len) in [(8192, 4096), (3 * 4096 + 8, 100)] {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let full = unsafe { mapper.map(&dev, base.add(off), len, Direction::FromDevice) };
                assert!(
                    matches!(full, Err(DmaError::MappingTableFull { capacity: 2, .. })),
                    "{full:?}"
                );
            }
        });
        let after = dom.stats();
        assert_eq!(after.live_mappings, 2);
        assert_eq!(after.iova.tree_free_pages, before.iova.tree_free_pages);
        for dma in [a, b] {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, dma, 4096, Direction::ToDevice) }.unwrap();
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let again = unsafe { mapper.map(&dev, base.add(8192), 4096, Direction::ToDevice) };
        assert!(
            again.is_ok(),
            "room again once a mapping is gone: {again:?}"
        );
    }

    /// Completion callbacks that record the address they are given in `got[i]`, made
    /// (boxed) before any watched region: the caller allocates them, not the map path.
    fn completions(got: &Arc<[AtomicU64; 8]>, n: usize) -> Vec<DeferredCompletion> {
        (0..n)
            .map(|i| {
                let got = got.clone();
                let done: DeferredCompletion = Box::new(move |r: Result<DmaAddr, DmaError>| {
                    got[i].store(r.map_or(u64::MAX, DmaAddr::as_u64), Ordering::SeqCst);
                });
                done
            })
            .collect()
    }

    /// A mapper whose pool one hog fills, with room for `capacity` deferred mappings.
    fn deferring(m: &Machine, capacity: usize, controls: HazardControls) -> DmaMapper<&Machine> {
        DmaMapper::builder(m)
            .swiotlb_backend(swiotlb(m, 256 * 1024, None))
            .deferred_capacity(capacity)
            .hazard_controls(controls)
            .build()
    }

    #[test]
    fn deferred_mappings_queue_and_complete_without_allocating() {
        const WAITING: usize = 4;
        let m = machine(8);
        let mapper = deferring(&m, WAITING, HazardControls::default());
        let dev = device(9, BouncePool::Swiotlb);
        m.attach(dev.clone()).unwrap();
        let base = buffers(&m);
        let got: Arc<[AtomicU64; 8]> = Arc::new(Default::default());
        let at = |i: usize| base.add(0x4_0008 + i as u64 * 0x8000);
        let round = |mut dones: Vec<DeferredCompletion>| {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let hog =
                unsafe { mapper.map(&dev, base.add(8), 250_000, Direction::FromDevice) }.unwrap();
            for (i, done) in dones.drain(..WAITING).enumerate() {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let status =
                    unsafe { mapper.map_or_defer(&dev, at(i), 16384, Direction::FromDevice, done) };
                assert_eq!(status, Ok(MapStatus::Deferred));
            }
            // The queue is full: refused at once, nothing queued, the callback dropped.
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let full = unsafe {
                mapper.map_or_defer(
                    &dev,
                    at(WAITING),
                    16384,
                    Direction::FromDevice,
                    dones.pop().unwrap(),
                )
            };
            assert!(
                matches!(
                    full,
                    Err(DmaError::DeferQueueFull {
                        capacity: WAITING,
                        ..
                    })
                ),
                "{full:?}"
            );
            assert_eq!(mapper.deferred_len(), WAITING);
            // The unmap that frees the hog's room completes them, in order, here.
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
            mapper.retry_deferred();
            assert_eq!(mapper.deferred_len(), 0);
            for i in 0..WAITING {
                let dma = got[i].swap(0, Ordering::SeqCst);
                assert_ne!(dma, 0, "deferred mapping {i} not completed");
                assert_ne!(dma, u64::MAX, "deferred mapping {i} failed");
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.unmap(&dev, DmaAddr::new(dma), 16384, Direction::FromDevice) }
                    .unwrap();
            }
        };
        round(completions(&got, WAITING + 1));
        let dones = completions(&got, WAITING + 1);
        atomic("deferred: queued, refused, completed", || round(dones));
    }

    /// Control: with the queue's bound switched off, queueing past the room allocated up
    /// front allocates on the map path, and the watch sees it.
    #[test]
    fn control_an_unbounded_deferred_queue_allocates_on_the_map_path() {
        let m = machine(9);
        let grow = HazardControls {
            grow_defer_queue: true,
            ..HazardControls::default()
        };
        let mapper = deferring(&m, 2, grow);
        let dev = device(10, BouncePool::Swiotlb);
        m.attach(dev.clone()).unwrap();
        let base = buffers(&m);
        let got: Arc<[AtomicU64; 8]> = Arc::new(Default::default());
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let hog = unsafe { mapper.map(&dev, base.add(8), 250_000, Direction::FromDevice) }.unwrap();
        let mut dones = completions(&got, 3);
        let ((), n, first) = watched("unbounded deferred queue", || {
            for i in 0..3 {
                let at = base.add(0x4_0008 + i * 0x8000);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let status = unsafe {
                    mapper.map_or_defer(
                        &dev,
                        at,
                        16384,
                        Direction::FromDevice,
                        dones.pop().unwrap(),
                    )
                };
                assert_eq!(status, Ok(MapStatus::Deferred));
            }
        });
        assert!(n >= 1, "the third deferral grew the queue: {n} allocations");
        assert_eq!(first.map(|o| o.label), Some("unbounded deferred queue"));
        assert_eq!(mapper.deferred_len(), 3);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
        assert_eq!(mapper.deferred_len(), 0);
    }
}

#[path = "no_alloc/checker_sg.rs"]
mod checker_sg;
#[path = "no_alloc/coherent.rs"]
mod coherent;
#[path = "no_alloc/iommu_sg.rs"]
mod iommu_sg;
#[path = "no_alloc/iova.rs"]
mod iova;
