//! Scenarios of the coherent object pool on the machine model, shared by
//! `coherent_pool_isolation.rs` (the fixed pool) and `coherent_pool_isolation_controls.rs`
//! (the same scenarios with the defect put back). Each returns what it observed; the tests
//! decide what that must be.

#![allow(dead_code)]

use std::sync::Arc;

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::dma_alloc::{
    AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig, NoTranslation,
};
use dmakit::growth::GrowthHook;
use dmakit::{
    BouncePool, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, PageAllocator, PhysAddr,
    PhysRange, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{Machine, Oracle, OracleReport, Owner};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use crate::testbed::{machine, GrowthQueue, BELOW_4G, LINE};

pub const KIB: u64 = 1024;

/// `bytes` of uncached memory aligned to `align` (a power of two) on `m`.
fn aligned_uncached(m: &Machine, bytes: u64, align: u64) -> PhysAddr {
    let raw = m
        .alloc_pages((bytes + align) / PAGE_SIZE, BELOW_4G)
        .unwrap();
    let base = PhysAddr::new(raw.as_u64().next_multiple_of(align));
    m.set_uncached(PhysRange::new(base, bytes).unwrap());
    base
}

/// A coherent bounce pool of one chunk of `bytes` (aligned to `max_object`), objects of 128
/// bytes to `max_object`, asking `hook` for growth below `refill_below`.
pub fn pool(
    m: &Machine,
    bytes: u64,
    max_object: u64,
    refill_below: u64,
    hook: Option<Arc<dyn GrowthHook>>,
) -> Arc<CoherentBouncePool> {
    let pool = CoherentBouncePool::new(
        ObjectPoolConfig {
            min_object: LINE,
            max_object,
            chunk_bytes: bytes,
            refill_below,
            name: "coherent-pool",
        },
        hook,
    )
    .unwrap();
    let base = aligned_uncached(m, bytes, max_object);
    pool.add_chunk(base, bytes).unwrap();
    Arc::new(pool)
}

/// A non-coherent device with `line`-byte lines and a 32-bit mask bouncing through the
/// coherent pool, attached to `m`.
fn coherent_pool_device(m: &Machine, id: u32, line: u64) -> Device {
    let d = Device::builder(DeviceId(id), "via-coherent-pool")
        .cache_line(line)
        .dma_bits(32)
        .bounce_pool(BouncePool::Coherent)
        .build()
        .unwrap();
    m.attach(d.clone()).unwrap();
    d
}

fn pattern(len: u64, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) as u8) | 1)
        .collect()
}

/// A live bounced mapping of one device, as the scenario tracks it.
struct Live {
    dev: usize,
    phys: PhysAddr,
    len: u64,
    dma: DmaAddr,
    /// The bounce object: start and size.
    object: (u64, u64),
    /// The owner stamp of the device's writes for this mapping.
    dev_owner: Owner,
    /// The owner stamp of the CPU's data for this buffer.
    cpu_owner: Owner,
}

/// What a run of bounced transfers observed.
#[derive(Debug)]
pub struct Transfers {
    /// Maps attempted and how many failed with `PoolExhausted`.
    pub maps: u64,
    pub exhausted: u64,
    /// Other map errors.
    pub other_errors: Vec<DmaError>,
    /// Bytes of another *live* mapping's data (CPU or device stamp) seen by a device that
    /// read its whole bounce object.
    pub foreign_live_bytes: u64,
    /// Pairs of live bounce objects that overlapped when a new one was handed out.
    pub overlaps: u64,
    /// The oracle's verdict on every byte the devices read and the CPU saw afterwards.
    pub report: OracleReport,
    /// Pool bytes used / live objects at the end, with everything unmapped.
    pub used_after: u64,
    pub live_after: u64,
    /// Bytes the pool had in use at most.
    pub high_water: u64,
}

/// The scenario state: a machine, a mapper over one coherent pool, an oracle.
struct Rig<'m> {
    m: &'m Machine,
    mapper: DmaMapper<&'m Machine>,
    pool: Arc<CoherentBouncePool>,
    devs: Vec<Device>,
    oracle: Oracle,
    live: Vec<Live>,
    out: Transfers,
    next_owner: u32,
}

impl<'m> Rig<'m> {
    fn new(m: &'m Machine, bytes: u64, max_object: u64, lines: &[u64]) -> Self {
        let pool = pool(m, bytes, max_object, 0, None);
        let mapper = DmaMapper::builder(m).coherent_backend(pool.clone()).build();
        let devs = lines
            .iter()
            .enumerate()
            .map(|(i, &l)| coherent_pool_device(m, i as u32 + 1, l))
            .collect();
        let oracle = Oracle::new(m.line_size()).unwrap();
        Self {
            m,
            mapper,
            pool,
            devs,
            oracle,
            live: Vec::new(),
            out: Transfers {
                maps: 0,
                exhausted: 0,
                other_errors: Vec::new(),
                foreign_live_bytes: 0,
                overlaps: 0,
                report: OracleReport::default(),
                used_after: 0,
                live_after: 0,
                high_water: 0,
            },
            next_owner: 100,
        }
    }

    /// Maps `len` bytes at `phys` for device `dev` (Bidirectional), lets the device read the
    /// whole bounce object and write the second half of the buffer. Returns whether the map
    /// succeeded.
    fn map(&mut self, dev: usize, phys: PhysAddr, len: u64) -> bool {
        self.next_owner += 2;
        let (cpu_owner, dev_owner) = (Owner(self.next_owner), Owner(self.next_owner + 1));
        let d = &self.devs[dev];
        self.oracle
            .register(self.m, cpu_owner, phys, len, "buffer")
            .unwrap();
        let data = pattern(len, u64::from(self.next_owner));
        self.m.cpu_write(phys, &data, cpu_owner).unwrap();
        self.oracle.cpu_stored(phys, &data, cpu_owner);
        self.out.maps += 1;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = match unsafe { self.mapper.map(d, phys, len, Direction::Bidirectional) } {
            Ok(dma) => dma,
            Err(e) => {
                if matches!(e, DmaError::PoolExhausted { .. }) {
                    self.out.exhausted += 1;
                } else {
                    self.out.other_errors.push(e);
                }
                self.oracle.unregister(phys).unwrap();
                return false;
            }
        };
        let start = dma.as_u64() & !(d.min_align_mask());
        let size = self
            .pool
            .objects()
            .object_size(PhysAddr::new(start))
            .expect("a bounced mapping sits in a live object");
        let object = (start, size);
        self.out.overlaps += self
            .live
            .iter()
            .filter(|l| l.object.0 < start + size && start < l.object.0 + l.object.1)
            .count() as u64;
        // The device reads its whole bounce object, as a hostile one would.
        self.m.grant(d.id(), DmaAddr::new(start), size).unwrap();
        let got = self
            .m
            .device_read(d.id(), DmaAddr::new(start), size)
            .unwrap();
        let at = (dma.as_u64() - start) as usize;
        self.oracle
            .check_device_read(
                phys,
                &got.data[at..at + len as usize],
                &got.owners[at..at + len as usize],
                cpu_owner,
            )
            .unwrap();
        self.out.foreign_live_bytes += got
            .owners
            .iter()
            .filter(|o| {
                self.live
                    .iter()
                    .any(|l| **o == l.cpu_owner || **o == l.dev_owner)
            })
            .count() as u64;
        let half = len / 2;
        let back = pattern(len - half, u64::from(dev_owner.0));
        self.m
            .device_write(d.id(), dma.add(half), &back, dev_owner)
            .unwrap();
        self.oracle.device_wrote(phys.add(half), &back, dev_owner);
        self.m.revoke(d.id(), DmaAddr::new(start), size).unwrap();
        self.live.push(Live {
            dev,
            phys,
            len,
            dma,
            object,
            dev_owner,
            cpu_owner,
        });
        true
    }

    /// Unmaps the `i`-th live mapping and checks what the CPU sees.
    fn unmap(&mut self, i: usize) {
        let l = self.live.swap_remove(i);
        let d = &self.devs[l.dev];
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { self.mapper.unmap(d, l.dma, l.len, Direction::Bidirectional) }.unwrap();
        for _ in 0..4 {
            self.m.tick();
        }
        self.oracle
            .check_transfer(self.m, PhysRange::new(l.phys, l.len).unwrap(), l.dev_owner)
            .unwrap();
        self.oracle.unregister(l.phys).unwrap();
    }

    fn finish(mut self) -> Transfers {
        while !self.live.is_empty() {
            self.unmap(self.live.len() - 1);
        }
        self.oracle.set_faults(self.m.fault_count() as u64);
        let u = self.pool.objects().usage();
        self.out.report = self.oracle.take_report();
        self.out.used_after = u.used;
        self.out.live_after = u.live;
        self.out.high_water = u.high_water;
        self.out
    }
}

/// Buffers for `slots` mappings of up to `max` bytes each, page aligned apart.
fn buffers(m: &Machine, slots: u64, max: u64) -> PhysAddr {
    let stride = (max + 2 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    m.alloc_pages(slots * stride / PAGE_SIZE, BELOW_4G).unwrap()
}

/// The reproduction through the coherent bounce backend: on a 64 KiB pool, one
/// 128-byte bounce is mapped and unmapped, then a misaligned 64 KiB buffer is mapped
/// (its bounce needs the whole pool), the device reads and writes it, and it is unmapped.
pub fn bounce_whole_pool_after_small_free(seed: u64) -> Transfers {
    let m = machine(seed);
    let mut rig = Rig::new(&m, 64 * KIB, 64 * KIB, &[LINE]);
    let base = buffers(&m, 2, 64 * KIB);
    // 100 bytes at offset 8: both lines shared, a 128-byte object.
    assert!(rig.map(0, base.add(8), 100));
    assert_eq!(rig.live[0].object.1, 128);
    rig.unmap(0);
    let stride = (64 * KIB + 2 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    rig.map(0, base.add(stride + 8), 64 * KIB);
    rig.finish()
}

/// Two devices (128- and 64-byte lines) bounce through one 256 KiB coherent pool (objects
/// up to 64 KiB) in a seeded interleaving of maps and unmaps of 1 byte to 64 KiB, at most
/// three mappings live at once: then any request fits (three live objects touch at most
/// three of the four 64 KiB blocks), so with coalescing no map may fail.
pub fn two_devices_interleaved(seed: u64, steps: u32) -> Transfers {
    const SLOTS: u64 = 3;
    let m = machine(seed);
    let mut rig = Rig::new(&m, 256 * KIB, 64 * KIB, &[LINE, 64]);
    let base = buffers(&m, SLOTS, 64 * KIB);
    let stride = (64 * KIB + 2 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let mut slot_used = [false; SLOTS as usize];
    for _ in 0..steps {
        let free_slot = slot_used.iter().position(|u| !u);
        if let Some(s) = free_slot.filter(|_| rig.live.is_empty() || rng.random_bool(0.55)) {
            let dev = rng.random_range(0..2usize);
            let len = match rng.random_range(0..4u32) {
                0 => rng.random_range(1..=128u64),
                1 => rng.random_range(129..=4096u64),
                2 => rng.random_range(4097..=32 * KIB),
                _ => rng.random_range(32 * KIB + 1..=64 * KIB - 64),
            };
            // Misaligned by 8 so the first line is shared and the mapping bounces.
            let phys = base.add(s as u64 * stride + 8);
            if rig.map(dev, phys, len) {
                slot_used[s] = true;
            }
        } else if !rig.live.is_empty() {
            let i = rng.random_range(0..rig.live.len());
            let s = ((rig.live[i].phys.as_u64() - base.as_u64()) / stride) as usize;
            slot_used[s] = false;
            rig.unmap(i);
        }
    }
    rig.finish()
}

/// What the growth-threshold scenario observed.
#[derive(Debug)]
pub struct Threshold {
    /// Pool bytes free and its largest free object after fragmentation.
    pub free: u64,
    pub largest_free: u64,
    /// Growth requests made by the one map after fragmentation.
    pub requests: usize,
}

/// A 64 KiB coherent bounce pool that asks for growth below 16 KiB is filled with 128-byte
/// bounces (its growth request refused), then all but one bounce every 4 KiB are unmapped:
/// 62 KiB are free but no 16 KiB object can be served. One more small bounce is mapped.
pub fn fragmented_pool_growth(seed: u64) -> Threshold {
    let m = machine(seed);
    let queue = Arc::new(GrowthQueue::default());
    let pool = pool(&m, 64 * KIB, 64 * KIB, 16 * KIB, Some(queue.clone()));
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(pool.clone())
        .build();
    let dev = coherent_pool_device(&m, 1, LINE);
    let base = m.alloc_pages(512 * 256 / PAGE_SIZE + 1, BELOW_4G).unwrap();
    let mut live = Vec::new();
    for i in 0..512u64 {
        let phys = base.add(i * 256 + 8);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, phys, 100, Direction::FromDevice) }.unwrap();
        live.push(dma);
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    assert!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, base.add(512 * 256 + 8), 100, Direction::FromDevice) }.is_err()
    );
    pool.objects().growth_failed();
    queue.0.lock().unwrap().clear();
    for dma in live {
        if dma.as_u64() % PAGE_SIZE != 0 {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, dma, 100, Direction::FromDevice) }.unwrap();
        }
    }
    let u = pool.objects().usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let extra = unsafe { mapper.map(&dev, base.add(8), 100, Direction::FromDevice) }.unwrap();
    let requests = queue.0.lock().unwrap().len();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, extra, 100, Direction::FromDevice) }.unwrap();
    Threshold {
        free: u.free,
        largest_free: u.largest_free,
        requests,
    }
}

/// What the atomic-pool scenario observed.
#[derive(Debug)]
pub struct Atomic {
    /// The 64 KiB atomic allocation after the small one was freed.
    pub big: Result<(), DmaAllocError>,
    /// The oracle's verdict on the round trip through the big buffer (when allocated).
    pub report: OracleReport,
    /// Atomic pool bytes used at the end.
    pub used_after: u64,
}

/// The reproduction through `DmaAllocator::alloc_coherent`'s atomic path: on a
/// 64 KiB atomic pool, 128 bytes are allocated and freed, then 64 KiB are allocated; the
/// CPU fills it, the device reads it all and writes half back, the CPU checks.
pub fn atomic_whole_pool_after_small_free(seed: u64) -> Atomic {
    let m = machine(seed);
    let ram = m.alloc_pages(8 << 20 >> 12, BELOW_4G).unwrap();
    let zones = ZonedPageAllocator::new(&[PhysRange::new(ram, 8 << 20).unwrap()]).unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * KIB,
        ..DmaAllocatorConfig::default()
    };
    let a = DmaAllocator::new(&m, &zones, NoTranslation, cfg, None).unwrap();
    let dev = Device::builder(DeviceId(1), "nc")
        .cache_line(LINE)
        .dma_bits(32)
        .build()
        .unwrap();
    m.attach(dev.clone()).unwrap();
    let small = a.alloc_coherent(&dev, 128, AllocContext::Atomic).unwrap();
    assert!(small.from_atomic_pool());
    a.free_coherent(&dev, small).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let big = a
        .alloc_coherent(&dev, 64 * KIB, AllocContext::Atomic)
        .map(|b| {
            assert!(b.from_atomic_pool());
            let len = b.size();
            oracle
                .register(&m, Owner(7), b.phys(), len, "atomic")
                .unwrap();
            let data = pattern(len, 7);
            m.cpu_write(b.phys(), &data, Owner(7)).unwrap();
            oracle.cpu_stored(b.phys(), &data, Owner(7));
            m.grant(dev.id(), b.dma(), len).unwrap();
            let got = m.device_read(dev.id(), b.dma(), len).unwrap();
            oracle
                .check_device_read(b.phys(), &got.data, &got.owners, Owner(7))
                .unwrap();
            let back = pattern(len / 2, 99);
            m.device_write(dev.id(), b.dma().add(len / 2), &back, Owner(8))
                .unwrap();
            oracle.device_wrote(b.phys().add(len / 2), &back, Owner(8));
            m.revoke(dev.id(), b.dma(), len).unwrap();
            for _ in 0..8 {
                m.tick();
            }
            oracle
                .check_transfer(&m, PhysRange::new(b.phys(), len).unwrap(), Owner(8))
                .unwrap();
            oracle.unregister(b.phys()).unwrap();
            a.free_coherent(&dev, b).unwrap();
        });
    oracle.set_faults(m.fault_count() as u64);
    Atomic {
        big,
        report: oracle.take_report(),
        used_after: a.atomic_pool_usage().used,
    }
}
