//! A machine with bounce pools, shared by the streaming tests.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{BouncePool, Device, DeviceId, PageAllocator, PhysAddr, PhysRange};
use dmakit_sim::{CacheConfig, HazardConfig, Machine, MachineConfig};

pub const LINE: u64 = 128;
pub const BELOW_4G: u64 = (1 << 32) - 1;

/// An arm64-like machine: 128-byte lines, a small cache, misbehaving.
pub fn machine(seed: u64) -> Machine {
    Machine::new(MachineConfig {
        seed,
        cache: CacheConfig {
            line_size: LINE,
            capacity: 32 * 1024,
            ways: 4,
        },
        hazards: HazardConfig::default(),
        cpus: 4,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// A SWIOTLB pool of `bytes` below 4 GiB on `m`.
pub fn swiotlb(m: &Machine, bytes: u64, hook: Option<Arc<dyn GrowthHook>>) -> Arc<SwiotlbBounce> {
    let base = m.alloc_pages(bytes / 4096, BELOW_4G).unwrap();
    let cfg = PoolConfig::builder()
        .cpu_count(4)
        .max_cache_line(LINE)
        .build()
        .unwrap();
    let pool = SwiotlbBounce::new(cfg, hook, 256 * 1024, BELOW_4G);
    pool.add_region(base, bytes).unwrap();
    Arc::new(pool)
}

/// A coherent bounce pool of `bytes` (uncached in the model) below 4 GiB on `m`.
pub fn coherent(m: &Machine, bytes: u64) -> Arc<CoherentBouncePool> {
    let pool = CoherentBouncePool::new(
        ObjectPoolConfig {
            min_object: LINE,
            max_object: 256 * 1024,
            chunk_bytes: 1 << 20,
            refill_below: 0,
            name: "coherent-pool",
        },
        None,
    )
    .unwrap();
    add_coherent_chunk(m, &pool, bytes);
    Arc::new(pool)
}

/// Adds `bytes` of uncached memory to `pool`.
pub fn add_coherent_chunk(m: &Machine, pool: &CoherentBouncePool, bytes: u64) {
    let base = m.alloc_pages(bytes / 4096, BELOW_4G).unwrap();
    m.set_uncached(PhysRange::new(base, bytes).unwrap());
    pool.add_chunk(base, bytes).unwrap();
}

/// A non-coherent device with 128-byte lines and a 32-bit mask, bouncing through `pool`.
pub fn device(id: u32, pool: BouncePool) -> Device {
    Device::builder(DeviceId(id), "nc")
        .cache_line(LINE)
        .dma_bits(32)
        .bounce_pool(pool)
        .build()
        .unwrap()
}

/// A growth hook that queues requests, served later by the test (as a worker would be).
#[derive(Default)]
pub struct GrowthQueue(pub Mutex<Vec<GrowthRequest>>);

impl GrowthHook for GrowthQueue {
    fn request(&self, req: GrowthRequest) {
        self.0.lock().unwrap().push(req);
    }
}

/// Bytes of `len` at `addr` as the CPU sees them.
pub fn read(m: &Machine, addr: PhysAddr, len: u64) -> Vec<u8> {
    let mut v = vec![0; len as usize];
    m.cpu_read(addr, &mut v).unwrap();
    v
}
