//! Threads mapping and unmapping through one SWIOTLB pool over real memory: mixed sizes,
//! mixed alignments and `min_align_mask`s never give one slot to two live mappings, and
//! every transfer's data arrives intact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{Device, DeviceId, Direction, DmaMapper, MapPath, PhysAddr};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::SimRng;

const MIB: u64 = 1 << 20;
const POOL: u64 = 32 * MIB;
const PER_THREAD: u64 = 8 * MIB;
const THREADS: usize = 4;

#[test]
fn concurrent_bounces_never_share_a_slot_and_keep_their_data() {
    let host = HostPlatform::new(
        0,
        POOL + PER_THREAD * THREADS as u64,
        THREADS,
        64,
        HostMaintenance::None,
    )
    .unwrap();
    let cfg = PoolConfig::builder().cpu_count(THREADS).build().unwrap();
    let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
    pool.add_region(PhysAddr::new(0), POOL).unwrap();
    let pool = Arc::new(pool);
    let mapper = DmaMapper::builder(&host)
        .swiotlb_backend(pool.clone())
        .build();
    let devices: Vec<Device> = [0u64, 0x3f, 0xfff]
        .iter()
        .enumerate()
        .map(|(i, &mask)| {
            Device::builder(DeviceId(i as u32), "t")
                .cache_line(64)
                .min_align_mask(mask)
                .build()
                .unwrap()
        })
        .collect();
    // Live bounce ranges: start -> (end, thread).
    let live: Mutex<BTreeMap<u64, (u64, usize)>> = Mutex::new(BTreeMap::new());
    let bounced = std::sync::atomic::AtomicU64::new(0);

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (mapper, host, devices, live, bounced) =
                (&mapper, &host, &devices, &live, &bounced);
            s.spawn(move || {
                host.bind_current_thread(t);
                let mut rng = SimRng::new(t as u64 + 100);
                let region = POOL + t as u64 * PER_THREAD;
                for i in 0..3000u64 {
                    let dev = &devices[rng.below(3) as usize];
                    let bits = rng.between(0, 16) as u32;
                    let len = rng.between(1u64 << bits, (2u64 << bits) - 1).min(200_000);
                    let phys = PhysAddr::new(region + rng.below(PER_THREAD - len) / 8 * 8);
                    let dir = [Direction::ToDevice, Direction::FromDevice, Direction::Bidirectional][rng.below(3) as usize];
                    let seed = (i as u8) ^ (t as u8 * 64);
                    let data: Vec<u8> = (0..len).map(|k| (k as u8).wrapping_add(seed)).collect();
                    host.write(phys, &data).unwrap();

                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    let (dma, path) = unsafe { mapper.map_traced(dev, phys, len, dir) }.unwrap();
                    let is_bounce = matches!(path, MapPath::Bounced { .. });
                    if is_bounce {
                        bounced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (a, b) = (dma.as_u64(), dma.as_u64() + len);
                        let mut l = live.lock().unwrap();
                        if let Some((&s0, &(e0, other))) = l.range(..b).next_back() {
                            assert!(e0 <= a, "thread {t}: [{a:#x},{b:#x}) overlaps [{s0:#x},{e0:#x}) of thread {other}");
                        }
                        l.insert(a, (b, t));
                    }
                    // The device reads what the CPU wrote...
                    let mut seen = vec![0u8; len as usize];
                    host.read(PhysAddr::new(dma.as_u64()), &mut seen).unwrap();
                    if dir.device_reads() {
                        assert_eq!(seen, data, "thread {t} transfer {i}");
                    }
                    // ...and writes a new pattern.
                    let reply: Vec<u8> = data.iter().map(|b| b ^ 0xff).collect();
                    if dir.device_writes() {
                        host.write(PhysAddr::new(dma.as_u64()), &reply).unwrap();
                    }
                    if is_bounce {
                        live.lock().unwrap().remove(&dma.as_u64());
                    }
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { mapper.unmap(dev, dma, len, dir) }.unwrap();
                    let mut back = vec![0u8; len as usize];
                    host.read(phys, &mut back).unwrap();
                    assert_eq!(back, if dir.device_writes() { reply } else { data }, "thread {t} transfer {i}");
                }
            });
        }
    });
    assert!(bounced.into_inner() > 1000);
    let stats = pool.pool().stats();
    assert_eq!((stats.used_bytes, stats.live), (0, 0));
    assert!(stats.high_water_bytes > 0);
}

#[test]
fn a_background_worker_grows_a_full_pool() {
    use dmakit::growth::GrowthWorker;
    use dmakit::{DmaError, PageAllocator, PhysRange};
    use dmakit_mem::ZonedPageAllocator;
    use std::sync::Weak;

    let host = Arc::new(HostPlatform::new(0, 64 * MIB, 1, 64, HostMaintenance::None).unwrap());
    // RAM for growth: [16 MiB, 48 MiB), handed out by the core's zoned page allocator.
    let pages = Arc::new(
        ZonedPageAllocator::new(&[PhysRange::new(PhysAddr::new(16 * MIB), 32 * MIB).unwrap()])
            .unwrap(),
    );
    let dev = Device::builder(DeviceId(1), "t")
        .cache_line(64)
        .build()
        .unwrap();
    let cfg = PoolConfig::builder().build().unwrap();
    let (grown_tx, grown) = std::sync::mpsc::channel::<PhysAddr>();
    let pool = Arc::new_cyclic(|weak: &Weak<SwiotlbBounce>| {
        let (weak, pages) = (weak.clone(), pages.clone());
        let worker = GrowthWorker::spawn(move |req| {
            // The worker holds the pool weakly, so dropping the pool stops the thread.
            let Some(pool) = weak.upgrade() else { return };
            match pages.alloc_pages(req.min_bytes / 4096, req.max_addr) {
                Some(base) => {
                    pool.add_region(base, req.min_bytes).unwrap();
                    grown_tx.send(base).unwrap();
                }
                None => pool.growth_failed(),
            }
        })
        .unwrap();
        let pool = SwiotlbBounce::new(cfg, Some(Arc::new(worker)), 1 << 20, u64::MAX);
        pool.add_region(PhysAddr::new(0), 256 * 1024).unwrap();
        pool
    });
    let mapper = DmaMapper::builder(host.clone())
        .swiotlb_backend(pool.clone())
        .build();
    let buf = PhysAddr::new(50 * MIB + 8);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, buf, 250_000, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let err =
        unsafe { mapper.map(&dev, buf.add(300_000), 100_000, Direction::FromDevice) }.unwrap_err();
    assert!(matches!(err, DmaError::PoolExhausted { .. }), "{err}");
    // The worker adds a region in the background; the mapping then succeeds.
    let base = grown.recv().unwrap();
    assert!((16 * MIB..48 * MIB).contains(&base.as_u64()));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma =
        unsafe { mapper.map(&dev, buf.add(300_000), 100_000, Direction::FromDevice) }.unwrap();
    assert!((base.as_u64()..base.as_u64() + MIB).contains(&dma.as_u64()));
    assert_eq!(pool.pool().stats().regions, 2);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 100_000, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
}

#[test]
fn deferred_mappings_are_never_forgotten_under_contention() {
    use dmakit::MapStatus;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    let host = HostPlatform::new(0, 8 * MIB, 2, 64, HostMaintenance::None).unwrap();
    let cfg = PoolConfig::builder().cpu_count(2).build().unwrap();
    let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
    // One segment: room for exactly one 150 KiB bounce at a time.
    pool.add_region(PhysAddr::new(0), 256 * 1024).unwrap();
    let mapper = DmaMapper::builder(&host)
        .swiotlb_backend(Arc::new(pool))
        .build();
    let dev = Device::builder(DeviceId(1), "t")
        .cache_line(64)
        .build()
        .unwrap();
    let len = 150 * 1024;
    let deferred = std::sync::atomic::AtomicU64::new(0);
    // Both threads start together and keep going past their 2,000 mappings until they have
    // contended at least once (or 20 s pass), so a loaded machine that runs them one after
    // the other does not make the test vacuous.
    let start = std::sync::Barrier::new(2);
    let began = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..2usize {
            let (mapper, dev, host, deferred, start) = (&mapper, &dev, &host, &deferred, &start);
            s.spawn(move || {
                host.bind_current_thread(t);
                let buf = PhysAddr::new(MIB + t as u64 * 2 * MIB + 8);
                start.wait();
                for i in 0.. {
                    if i >= 2000
                        && (deferred.load(std::sync::atomic::Ordering::Relaxed) > 0
                            || began.elapsed() > Duration::from_secs(20))
                    {
                        break;
                    }
                    let (tx, rx) = channel();
                    let done = Box::new(move |r| tx.send(r).unwrap());
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    let dma = match unsafe {
                        mapper.map_or_defer(dev, buf, len, Direction::FromDevice, done)
                    }
                    .unwrap()
                    {
                        MapStatus::Mapped(dma) => dma,
                        MapStatus::Deferred => {
                            deferred.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            // The other thread's unmap must complete this one; a lost
                            // wake-up would leave it waiting forever.
                            rx.recv_timeout(Duration::from_secs(60))
                                .unwrap_or_else(|_| {
                                    panic!("thread {t}: deferred mapping {i} never completed")
                                })
                                .unwrap()
                        }
                    };
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { mapper.unmap(dev, dma, len, Direction::FromDevice) }.unwrap();
                }
            });
        }
    });
    assert!(deferred.into_inner() > 0, "the threads never contended");
    assert_eq!(mapper.deferred_len(), 0);
}
