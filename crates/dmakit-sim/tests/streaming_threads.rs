//! Threads mapping and unmapping through one SWIOTLB pool over real memory: mixed sizes,
//! mixed alignments and `min_align_mask`s never give one slot to two live mappings, and
//! every transfer's data arrives intact.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb_backend::SwiotlbBounce;
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
    let mapper = DmaMapper::new(&host).with_swiotlb(pool.clone());
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

                    let (dma, path) = mapper.map_traced(dev, phys, len, dir).unwrap();
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
                    mapper.unmap(dev, dma, len, dir).unwrap();
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
