//! The streaming API's guarantees, one at a time, on the machine model: bounce placement,
//! exhaustion, deferral, growth, transient bounces, bad input, partial syncs, statistics and
//! call sites, and the typed API.

mod testbed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dmakit::bounce::BounceBackend;
use dmakit::stats::{BounceReport, BounceReporter};
use dmakit::typed::{DmaBuffer, FromDevice, ToDevice};
use dmakit::{
    BouncePool, BounceReason, Clock, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper,
    MapAttrs, MapPath, MapStatus, PhysAddr, PhysRange, SgEntry,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{run_workload, Machine, Owner, WorkloadConfig};
use testbed::*;

const OWNER: Owner = Owner(7);

/// Writes a recognisable pattern at `addr`.
fn scribble(m: &Machine, addr: PhysAddr, len: u64, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    m.cpu_write(addr, &data, OWNER).unwrap();
    data
}

/// A buffer region of `bytes` on `m`, page aligned.
fn buffers(m: &Machine, bytes: u64) -> PhysAddr {
    use dmakit::PageAllocator;
    m.alloc_pages(bytes.div_ceil(4096), BELOW_4G).unwrap()
}

#[test]
fn bounces_keep_min_align_bits_and_large_ones_are_page_aligned() {
    for backend in [BouncePool::Swiotlb, BouncePool::Coherent] {
        let m = machine(1);
        let mapper = DmaMapper::builder(&m)
            .swiotlb_backend(swiotlb(&m, 8 << 20, None))
            .coherent_backend(coherent(&m, 8 << 20))
            .build();
        let base = buffers(&m, 1 << 20);
        let mut checked = 0;
        for (i, mask) in [0u64, 0x3f, 0x7ff, 0xfff].into_iter().enumerate() {
            let dev = Device::builder(DeviceId(i as u32), "d")
                .cache_line(LINE)
                .min_align_mask(mask)
                .bounce_pool(backend)
                .build()
                .unwrap();
            for (off, len) in [
                (8u64, 13u64),
                (0x148, 4096),
                (0x7f8, 9000),
                (0x10, 64 * 1024),
                (0x3c8, 100),
            ] {
                let phys = base.add(off);
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let (dma, path) =
                    unsafe { mapper.map_traced(&dev, phys, len, Direction::FromDevice) }.unwrap();
                assert!(matches!(
                    path,
                    MapPath::Bounced {
                        reason: BounceReason::Misaligned,
                        ..
                    }
                ));
                assert_eq!(
                    dma.as_u64() & mask,
                    phys.as_u64() & mask,
                    "{backend:?} mask {mask:#x}"
                );
                if len >= 4096 && phys.as_u64() & mask == 0 {
                    // On a page boundary; SWIOTLB keeps the offset within the line too, so
                    // the copies in and out do not alias.
                    let line_offset = match backend {
                        BouncePool::Swiotlb => phys.as_u64() & (LINE - 1),
                        _ => 0,
                    };
                    assert_eq!(dma.as_u64() % 4096, line_offset, "{backend:?} {len}");
                }
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { mapper.unmap(&dev, dma, len, Direction::FromDevice) }.unwrap();
                checked += 1;
            }
        }
        assert_eq!(checked, 20);
        let pool = mapper.bounce_backend(&device(0, backend)).unwrap();
        assert_eq!(pool.usage().used, 0);
    }
}

#[test]
fn exhaustion_is_a_clear_error_that_changes_nothing() {
    let m = machine(2);
    let pool = swiotlb(&m, 256 * 1024, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = device(1, BouncePool::Swiotlb);
    let base = buffers(&m, 1 << 20);
    // Fill the pool with 64 KiB bounces (8 bytes into a line, ending on one: 32 slots each).
    let mut live = vec![];
    for i in 0..4u64 {
        let phys = base.add(8 + i * 70_016);
        live.push((
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&dev, phys, 64 * 1024 - 8, Direction::FromDevice) }.unwrap(),
            64 * 1024 - 8,
        ));
    }
    let victim = base.add(600_008);
    let before = scribble(&m, victim, 5000, 3);
    let usage = pool.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let err = unsafe { mapper.map(&dev, victim, 5000, Direction::FromDevice) }.unwrap_err();
    assert_eq!(
        err,
        DmaError::PoolExhausted {
            device: dev.id(),
            len: 5000,
            used: usage.used,
            total: usage.total
        }
    );
    assert!(
        err.to_string()
            .contains("bounce pool exhausted mapping 5000 bytes"),
        "{err}"
    );
    assert_eq!(pool.usage(), usage);
    assert_eq!(read(&m, victim, 5000), before);
    assert_eq!(mapper.stats().total().exhaustion_errors, 1);
    for (dma, len) in live {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, len, Direction::FromDevice) }.unwrap();
    }
    assert_eq!(pool.usage().used, 0);
}

#[test]
fn deferred_mappings_complete_in_order_once_slots_free() {
    let m = machine(3);
    let pool = swiotlb(&m, 256 * 1024, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = device(1, BouncePool::Swiotlb);
    let base = buffers(&m, 1 << 20);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog =
        unsafe { mapper.map(&dev, base.add(8), 256 * 1024 - 64, Direction::FromDevice) }.unwrap();
    type Completions = Arc<Mutex<Vec<(usize, Result<DmaAddr, DmaError>)>>>;
    let done: Completions = Arc::default();
    for i in 0..3usize {
        let d = done.clone();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let status = unsafe {
            mapper.map_or_defer(
                &dev,
                base.add(300_008 + i as u64 * 100_000),
                60_000,
                Direction::FromDevice,
                Box::new(move |r| d.lock().unwrap().push((i, r))),
            )
        }
        .unwrap();
        assert_eq!(status, MapStatus::Deferred);
    }
    // A small request would fit nowhere either; queued behind the others, FIFO.
    let d = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &dev,
            base.add(900_008),
            100,
            Direction::FromDevice,
            Box::new(move |r| d.lock().unwrap().push((3, r))),
        )
    }
    .unwrap();
    assert_eq!(status, MapStatus::Deferred);
    assert_eq!(mapper.deferred_len(), 4);
    assert!(done.lock().unwrap().is_empty());
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 256 * 1024 - 64, Direction::FromDevice) }.unwrap();
    let done = done.lock().unwrap();
    let order: Vec<usize> = done.iter().map(|(i, _)| *i).collect();
    assert_eq!(order, [0, 1, 2, 3]);
    assert!(done.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(mapper.deferred_len(), 0);
    assert_eq!(mapper.stats().total().deferred, 4);
    for (i, r) in done.iter() {
        let len = if *i == 3 { 100 } else { 60_000 };
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, *r.as_ref().unwrap(), len, Direction::FromDevice) }.unwrap();
    }
    assert_eq!(pool.usage().used, 0);
}

#[test]
fn growth_adds_a_pool_and_the_mapping_then_succeeds() {
    let m = machine(4);
    let queue = Arc::new(GrowthQueue::default());
    let pool = swiotlb(&m, 256 * 1024, Some(queue.clone()));
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = device(1, BouncePool::Swiotlb);
    let base = buffers(&m, 1 << 20);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, base.add(8), 200_000, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    assert!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, base.add(300_008), 100_000, Direction::FromDevice) }.is_err()
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    assert!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, base.add(300_008), 100_000, Direction::FromDevice) }.is_err()
    );
    // One request outstanding, however many failures.
    let reqs = std::mem::take(&mut *queue.0.lock().unwrap());
    assert_eq!(reqs.len(), 1);
    assert!(pool.growth_pending());
    // The worker answers: pages below the pool's reach, added as a region.
    use dmakit::PageAllocator;
    let grown = m
        .alloc_pages(reqs[0].min_bytes / 4096, reqs[0].max_addr)
        .unwrap();
    pool.add_region(grown, reqs[0].min_bytes).unwrap();
    assert!(!pool.growth_pending());
    assert_eq!(pool.pool().stats().regions, 2);
    assert_eq!(mapper.stats().pools[0].growth_events, 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma =
        unsafe { mapper.map(&dev, base.add(300_008), 100_000, Direction::FromDevice) }.unwrap();
    let region = PhysRange::new(grown, reqs[0].min_bytes).unwrap();
    assert!(region.contains_range(&PhysRange::new(PhysAddr::new(dma.as_u64()), 100_000).unwrap()));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 100_000, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 200_000, Direction::FromDevice) }.unwrap();
}

#[test]
fn a_transient_bounce_bridges_pending_growth_and_returns_its_pages() {
    let m = machine(5);
    let queue = Arc::new(GrowthQueue::default());
    let pool = swiotlb(&m, 256 * 1024, Some(queue.clone()));
    // Pages for transient bounces: a range carved from the machine, managed by the core's
    // zoned allocator (thread-safe, as the mapper requires).
    use dmakit::PageAllocator;
    let spare = m.alloc_pages(256, BELOW_4G).unwrap();
    let zoned =
        Arc::new(ZonedPageAllocator::new(&[PhysRange::new(spare, 256 * 4096).unwrap()]).unwrap());
    let free_before = zoned.stats().map(|z| z.pages.free_pages);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .transient_pages(zoned.clone())
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m, 1 << 20);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, base.add(8), 250_000, Direction::FromDevice) }.unwrap();
    let phys = base.add(300_008);
    let old = scribble(&m, phys, 9000, 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&dev, phys, 9000, Direction::FromDevice) }.unwrap();
    assert_eq!(
        path,
        MapPath::Bounced {
            reason: BounceReason::Misaligned,
            backend: "transient"
        }
    );
    assert!(pool.growth_pending());
    // The device writes part of it; the rest must keep the CPU's bytes.
    m.grant(dev.id(), dma, 9000).unwrap();
    let new = vec![0xab; 4000];
    m.device_write(dev.id(), dma, &new, Owner(9)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 9000, Direction::FromDevice) }.unwrap();
    let got = read(&m, phys, 9000);
    assert_eq!(&got[..4000], &new[..]);
    assert_eq!(&got[4000..], &old[4000..]);
    assert_eq!(zoned.stats().map(|z| z.pages.free_pages), free_before);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let m = machine(6);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = device(1, BouncePool::Swiotlb);
    let other = device(2, BouncePool::Swiotlb);
    let base = buffers(&m, 1 << 20);
    let id = dev.id();
    use Direction::*;
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, base, 0, FromDevice) },
        Err(DmaError::ZeroLength { device: id })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, PhysAddr::new(u64::MAX - 3), 16, ToDevice) },
        Err(DmaError::AddressOverflow {
            device: id,
            addr: u64::MAX - 3,
            len: 16
        })
    );
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, base.add(8), 300 * 1024, FromDevice) },
        Err(DmaError::TooLargeToBounce {
            len: 307_200,
            max: 262_144,
            ..
        })
    ));
    let no_pool = DmaMapper::builder(&m).build();
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { no_pool.map(&dev, base.add(8), 13, FromDevice) },
        Err(DmaError::NoBouncePool { .. })
    ));

    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, base.add(8), 1000, FromDevice) }.unwrap();
    let usage = pool.usage();
    let unknown = DmaAddr::new(dma.as_u64() + 4096);
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, unknown, 8, FromDevice) },
        Err(DmaError::UnknownMapping {
            device: id,
            dma: unknown
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&other, dma, 1000, FromDevice) },
        Err(DmaError::UnknownMapping {
            device: other.id(),
            dma
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 999, FromDevice) },
        Err(DmaError::OutOfMapping {
            device: id,
            dma,
            len: 999,
            mapped_len: 1000
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 1000, ToDevice) },
        Err(DmaError::WrongDirection {
            device: id,
            mapped: FromDevice,
            requested: ToDevice
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(&dev, dma, 0, 10, Bidirectional) },
        Err(DmaError::WrongDirection {
            device: id,
            mapped: FromDevice,
            requested: Bidirectional
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(&dev, dma, 990, 11, FromDevice) },
        Err(DmaError::OutOfMapping {
            device: id,
            dma,
            len: 11,
            mapped_len: 1000
        })
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_device(&dev, dma, 0, 0, FromDevice) },
        Err(DmaError::ZeroLength { device: id })
    );
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(&dev, dma, u64::MAX, 2, FromDevice) },
        Err(DmaError::AddressOverflow { .. })
    ));
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map_sg(&dev, &[], FromDevice) },
        Err(DmaError::ZeroLength { device: id })
    );
    // Nothing above changed the pool.
    assert_eq!(pool.usage(), usage);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 1000, FromDevice) }.unwrap();
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 1000, FromDevice) },
        Err(DmaError::UnknownMapping { device: id, dma })
    );
    for e in [
        DmaError::ZeroLength { device: id },
        DmaError::UnknownMapping { device: id, dma },
    ] {
        assert!(e.to_string().starts_with("dev1: "), "{e}");
    }
}

/// An unmap with nothing to copy back (a `ToDevice` bounce, or any bounce without the
/// CPU sync) is checked and released in one step of the pool: a refused one must leave the
/// bounce live and the pool as it was, exactly as the copying unmap does.
#[test]
fn an_unmap_with_nothing_to_copy_back_refuses_as_the_copying_one_does() {
    use Direction::{FromDevice, ToDevice};
    let m = machine(6);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let forced = |id| {
        device(id, BouncePool::Swiotlb)
            .to_builder()
            .force_bounce(true)
            .build()
            .unwrap()
    };
    let (dev, other) = (forced(1), forced(2));
    let id = dev.id();
    let base = buffers(&m, 1 << 20);
    let empty = pool.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, base.add(8), 1000, ToDevice) }.unwrap();
    let usage = pool.usage();
    assert_eq!(usage.live, 1, "a forced bounce, even ToDevice");
    let refusals = [
        (
            &other,
            dma,
            1000,
            ToDevice,
            DmaError::UnknownMapping {
                device: other.id(),
                dma,
            },
        ),
        (
            &dev,
            dma,
            999,
            ToDevice,
            DmaError::OutOfMapping {
                device: id,
                dma,
                len: 999,
                mapped_len: 1000,
            },
        ),
        (
            &dev,
            dma,
            1000,
            FromDevice,
            DmaError::WrongDirection {
                device: id,
                mapped: ToDevice,
                requested: FromDevice,
            },
        ),
        (
            &dev,
            DmaAddr::new(dma.as_u64() + 8),
            1000,
            ToDevice,
            DmaError::UnknownMapping {
                device: id,
                dma: DmaAddr::new(dma.as_u64() + 8),
            },
        ),
    ];
    for (d, at, len, dir, want) in refusals {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        assert_eq!(unsafe { mapper.unmap(d, at, len, dir) }, Err(want));
        assert_eq!(pool.usage(), usage, "refused {want}");
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 1000, ToDevice) }.unwrap();
    assert_eq!((pool.usage().used, pool.usage().live), (empty.used, 0));
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 1000, ToDevice) },
        Err(DmaError::UnknownMapping { device: id, dma })
    );
    // Without the CPU sync a FromDevice bounce takes the same step.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, base.add(8), 1000, FromDevice) }.unwrap();
    let skip = MapAttrs::SKIP_CPU_SYNC;
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_attrs(&other, dma, 1000, FromDevice, skip) },
        Err(DmaError::UnknownMapping {
            device: other.id(),
            dma
        })
    );
    assert_eq!(pool.usage().live, 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_attrs(&dev, dma, 1000, FromDevice, skip) }.unwrap();
    assert_eq!(pool.usage().live, 0);
}

#[test]
fn a_partial_sync_copies_only_its_range() {
    let m = machine(7);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let phys = buffers(&m, 8192).add(8);
    let old = scribble(&m, phys, 1000, 2);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, phys, 1000, Direction::FromDevice) }.unwrap();
    m.grant(dev.id(), dma, 1000).unwrap();
    m.device_write(dev.id(), dma, &[0x5a; 1000], Owner(9))
        .unwrap();
    let copied = m.stats().copied_bytes;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_cpu(&dev, dma, 100, 50, Direction::FromDevice) }.unwrap();
    assert_eq!(m.stats().copied_bytes - copied, 50);
    let got = read(&m, phys, 1000);
    assert!(got[100..150].iter().all(|&b| b == 0x5a));
    assert_eq!(&got[..100], &old[..100]);
    assert_eq!(&got[150..], &old[150..]);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 1000, Direction::FromDevice) }.unwrap();
    assert!(read(&m, phys, 1000).iter().all(|&b| b == 0x5a));
}

#[test]
fn counters_add_up_and_copied_bytes_match_the_machine() {
    let m = machine(8);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 8 << 20, None))
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    let out = run_workload(
        &m,
        &mapper,
        &dev,
        WorkloadConfig {
            transfers: 5000,
            seed: 8,
            log_sizes: true,
            max_len: 4096,
            ..WorkloadConfig::default()
        },
    )
    .unwrap();
    assert!(out.report.is_clean(), "{}", out.report);
    let s = mapper.stats();
    let t = s.total();
    assert_eq!(t.direct + t.bounces_total(), t.mappings_total());
    assert_eq!(t.bounced_by_direction.total(), t.bounces_total());
    assert!(t.bounces_total() > 0 && t.direct > 0);
    assert_eq!(
        t.bytes_to_bounce + t.bytes_from_bounce,
        out.machine.copied_bytes
    );
    assert_eq!(s.pools[0].name, "swiotlb");
    assert_eq!(s.pools[0].usage.used, 0);
    assert!(s.pools[0].usage.high_water > 0);
}

struct TickClock(AtomicU64);
impl Clock for TickClock {
    fn now_ns(&self) -> u64 {
        // Every reading is one second later.
        self.0.fetch_add(1_000_000_000, Ordering::Relaxed)
    }
}

#[test]
fn the_hot_call_site_ranks_first_and_dominates_the_samples() {
    let m = machine(9);
    let reports: Arc<Mutex<Vec<BounceReport>>> = Arc::default();
    let r2 = reports.clone();
    let reporter = BounceReporter::new(
        Arc::new(TickClock(AtomicU64::new(0))),
        Box::new(move |r| r2.lock().unwrap().push(*r)),
    )
    .with_interval_ns(10_000_000_000);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .bounce_reporter(reporter)
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    let phys = buffers(&m, 8192).add(8);
    // One mapping in twenty comes from the cold site, at random.
    let mut rng = dmakit_sim::SimRng::new(9);
    let mut cold = 0;
    for _ in 0..1000 {
        let dma = if rng.chance(0.05) {
            cold += 1;
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&dev, phys, 13, Direction::FromDevice) }.unwrap()
        // the cold site
        } else {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&dev, phys, 13, Direction::FromDevice) }.unwrap()
            // the hot site
        };
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 13, Direction::FromDevice) }.unwrap();
    }
    let top = mapper.top_sites(5);
    assert_eq!(top.len(), 2);
    assert_eq!((top[0].bounces, top[1].bounces), (1000 - cold, cold));
    assert!(cold > 20 && cold < 100, "{cold}");
    assert_ne!(top[0].location.line(), top[1].location.line());
    let hot_line = top[0].location.line();
    assert!(top[0].location.file().ends_with("streaming_api.rs"));
    assert!(top[0].suggest_dma_alloc && !top[1].suggest_dma_alloc);
    let reports = reports.lock().unwrap();
    assert!(reports.len() >= 90, "{}", reports.len());
    let hot = reports.iter().filter(|r| r.site.line() == hot_line).count();
    assert!(hot * 10 >= reports.len() * 8, "{hot} of {}", reports.len());
    assert!(reports.iter().map(|r| r.bounces_since_last).sum::<u64>() <= 1000);
}

/// A buffer in the model's memory.
struct SimBuf {
    phys: PhysAddr,
    len: u64,
}

// SAFETY: each test gives a `SimBuf` its own range of the model's memory (which is not Rust
// memory) and touches it only through the mapping while it is lent.
unsafe impl DmaBuffer for SimBuf {
    fn phys(&self) -> PhysAddr {
        self.phys
    }
    fn len(&self) -> u64 {
        self.len
    }
}

#[test]
fn the_typed_api_hands_buffers_back_and_syncs_by_token() {
    let m = machine(10);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let phys = buffers(&m, 8192).add(8);
    scribble(&m, phys, 300, 4);
    let mut mapping = mapper
        .map_buffer::<FromDevice, _>(&dev, SimBuf { phys, len: 300 })
        .map_err(|(_, e)| e)
        .unwrap();
    let dma = mapping.dma_addr();
    m.grant(dev.id(), dma, 300).unwrap();
    m.device_write(dev.id(), dma, &[1; 300], Owner(9)).unwrap();
    let token = mapping.sync_for_cpu(0, 300).unwrap();
    assert_eq!(read(&m, token.buffer().phys(), 300), vec![1; 300]);
    token.for_device().unwrap();
    m.device_write(dev.id(), dma, &[2; 100], Owner(9)).unwrap();
    assert!(mapping.sync_for_cpu(250, 51).is_err());
    let buf = mapping.unmap().map_err(|(_, e)| e).unwrap();
    let got = read(&m, buf.phys, 300);
    assert_eq!(
        (&got[..100], &got[100..]),
        (&[2u8; 100][..], &[1u8; 200][..])
    );

    // A failed mapping returns the buffer with the error.
    let no_pool = DmaMapper::builder(&m).build();
    let (back, err) = match no_pool.map_buffer::<FromDevice, _>(&dev, SimBuf { phys, len: 13 }) {
        Ok(_) => panic!("a misaligned inbound buffer needs a pool"),
        Err(e) => e,
    };
    assert_eq!((back.phys, back.len), (phys, 13));
    assert!(matches!(err, DmaError::NoBouncePool { .. }));

    // Outbound: the CPU updates part of the buffer and hands it back to the device.
    let mut out = mapper
        .map_buffer::<ToDevice, _>(&dev, SimBuf { phys, len: 300 })
        .map_err(|(_, e)| e)
        .unwrap();
    m.grant(dev.id(), out.dma_addr(), 300).unwrap();
    m.cpu_write(phys, &[3; 10], OWNER).unwrap();
    out.cpu_update(0, 10).unwrap().for_device().unwrap();
    assert_eq!(
        m.device_read(dev.id(), out.dma_addr(), 10).unwrap().data,
        vec![3; 10]
    );
    drop(out); // Dropping unmaps: the device loses access.
    assert!(mapper.stats().total().mappings_total() >= 2);
}

#[test]
fn scatter_gather_splits_at_limits_and_bounces_per_segment() {
    let m = machine(11);
    let pool = swiotlb(&m, 1 << 20, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = Device::builder(DeviceId(3), "sg")
        .cache_line(LINE)
        .max_segment_size(8192)
        .seg_boundary_mask(0xffff)
        .build()
        .unwrap();
    let base = buffers(&m, 1 << 20);
    let entries = [
        SgEntry {
            phys: base.add(0x1000),
            len: 20_000,
        }, // aligned start, split in three
        SgEntry {
            phys: base.add(0x2_0008),
            len: 100,
        }, // misaligned: bounced
        SgEntry {
            phys: base.add(0x2_f000),
            len: 0x2000,
        }, // crosses a 64 KiB boundary: split
    ];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::FromDevice) }.unwrap();
    let lens: Vec<u64> = segs.iter().map(|s| s.len).collect();
    assert_eq!(lens, [8192, 8192, 20_000 - 16_384, 100, 0x1000, 0x1000]);
    assert_eq!(segs[0].dma.as_u64(), base.add(0x1000).as_u64());
    assert_ne!(segs[3].dma.as_u64(), base.add(0x2_0008).as_u64());
    for s in &segs {
        assert!(s.len <= 8192);
        assert_eq!(s.dma.as_u64() >> 16, (s.dma.as_u64() + s.len - 1) >> 16);
    }
    assert_eq!(
        pool.usage().live,
        2,
        "the misaligned entry and the split tail of the first"
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::FromDevice) }.unwrap();
    assert_eq!(pool.usage().live, 0);
    // A failure part-way leaves nothing mapped.
    let bad = [
        SgEntry {
            phys: base.add(8),
            len: 100,
        },
        SgEntry { phys: base, len: 0 },
    ];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    assert!(unsafe { mapper.map_sg(&dev, &bad, Direction::FromDevice) }.is_err());
    // A segment the pool cannot take, after one it could: the first is unmapped again.
    let wide = Device::builder(DeviceId(4), "wide")
        .cache_line(LINE)
        .max_segment_size(1 << 20)
        .build()
        .unwrap();
    let too_big = [
        SgEntry {
            phys: base.add(8),
            len: 100,
        },
        SgEntry {
            phys: base.add(0x10008),
            len: 300_000,
        },
    ];
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map_sg(&wide, &too_big, Direction::FromDevice) },
        Err(DmaError::TooLargeToBounce { .. })
    ));
    assert_eq!(pool.usage().live, 0);
}

#[test]
fn kmalloc_needs_line_alignment_only_for_noncoherent_devices_without_a_pool() {
    let m = machine(12);
    let nc = device(1, BouncePool::Swiotlb);
    let via_coherent_pool = device(2, BouncePool::Coherent);
    let snooping = Device::builder(DeviceId(3), "c")
        .coherent(true)
        .build()
        .unwrap();
    let none = DmaMapper::builder(&m).build();
    assert!(none.needs_line_aligned_kmalloc([&nc]));
    assert!(!none.needs_line_aligned_kmalloc([&snooping]));
    let with_swiotlb = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .build();
    assert!(!with_swiotlb.needs_line_aligned_kmalloc([&nc, &snooping]));
    // A device whose chosen pool is missing still needs it.
    assert!(with_swiotlb.needs_line_aligned_kmalloc([&nc, &via_coherent_pool]));
}

#[test]
fn statistics_can_be_turned_off_without_changing_mappings() {
    let m = machine(13);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 1 << 20, None))
        .without_statistics()
        .build();
    let dev = device(1, BouncePool::Swiotlb);
    let phys = buffers(&m, 8192).add(8);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) = unsafe { mapper.map_traced(&dev, phys, 100, Direction::FromDevice) }.unwrap();
    assert!(matches!(path, MapPath::Bounced { .. }));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 100, Direction::FromDevice) }.unwrap();
    let s = mapper.stats();
    assert!(s.devices.is_empty() && mapper.top_sites(5).is_empty());
    // Pool occupancy is the pool's own bookkeeping: at the peak one packed bounce of two
    // 64-byte lines (100 bytes at offset 8 in its line).
    assert_eq!(s.pools[0].usage.high_water, 128);
}
