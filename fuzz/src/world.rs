//! The machine the target drives: real host memory, a SWIOTLB pool that straddles 4 GiB,
//! buffer memory on both sides of it, and one device of each kind the raw API treats
//! differently.

use std::sync::Arc;

use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{Device, DeviceId, DmaMapper, PhysAddr};
use dmakit_sim::host::{HostMaintenance, HostPlatform};

const KIB: u64 = 1024;
/// 4 GiB: the limit of the 32-bit devices.
pub const GIB4: u64 = 1 << 32;
/// The cache line of the host platform and of every device.
pub const LINE: u64 = 64;
/// Where the arena starts (physical = DMA address on the host platform).
pub const BASE: u64 = GIB4 - 96 * KIB;
/// Arena size: 64 KiB of buffers, the pool, 64 KiB of buffers.
pub const ARENA: u64 = 192 * KIB;
/// The pool: 64 KiB centred on 4 GiB, so a 32-bit device can only use its lower half.
pub const POOL_START: u64 = GIB4 - 32 * KIB;
/// Pool size.
pub const POOL_BYTES: u64 = 64 * KIB;
/// Each of the two buffer areas (below the pool, and above it, past 4 GiB).
pub const AREA: u64 = 64 * KIB;
/// Pool geometry: 128-byte slots, 8 KiB segments (the largest bounce).
const SLOT: u64 = 128;
const SEGMENT_SLOTS: u64 = 64;
/// CPUs of the host platform (and areas of the pool).
pub const CPUS: usize = 2;

/// The devices, by index as the input names them.
pub fn devices() -> Vec<Device> {
    let b = |id, name| Device::builder(DeviceId(id), name).cache_line(LINE);
    [
        // Coherent, 64-bit: always direct.
        b(1, "direct").coherent(true).build(),
        // Non-coherent: inbound buffers that do not own whole lines are bounced.
        b(2, "misaligned").build(),
        // Coherent, 32-bit: bounced only for memory above 4 GiB.
        b(3, "dma32").coherent(true).dma_bits(32).build(),
        // Non-coherent, bounces keep the low 12 address bits (NVMe-like).
        b(4, "min-align").min_align_mask(0xfff).build(),
        // Coherent, every mapping bounced (confidential guest).
        b(5, "force-bounce")
            .coherent(true)
            .force_bounce(true)
            .build(),
        // Non-coherent, 32-bit, short segments that may not cross 4 KiB: splits sg lists.
        b(6, "sg-split")
            .dma_bits(32)
            .max_segment_size(512)
            .seg_boundary_mask(0xfff)
            .build(),
    ]
    .into_iter()
    .map(|d| d.expect("valid device"))
    .collect()
}

/// The host platform, the mapper over it and the devices.
pub struct World {
    /// Real memory as physical memory `[BASE, BASE + ARENA)`.
    pub host: Arc<HostPlatform>,
    /// The mapper under test.
    pub mapper: DmaMapper<Arc<HostPlatform>>,
    /// See [`devices`].
    pub devices: Vec<Device>,
}

impl World {
    /// A fresh machine (zeroed memory, empty pool), with the debug checker when `debug`.
    pub fn new(debug: bool) -> Self {
        let host = Arc::new(
            HostPlatform::new(BASE, ARENA, CPUS, LINE, HostMaintenance::None).expect("arena"),
        );
        host.bind_current_thread(0);
        let cfg = PoolConfig::builder()
            .slot_size(SLOT)
            .segment_slots(SEGMENT_SLOTS)
            .cpu_count(CPUS)
            .max_cache_line(LINE)
            .build()
            .expect("pool geometry");
        let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
        pool.add_region(PhysAddr::new(POOL_START), POOL_BYTES)
            .expect("pool region");
        let mut builder = DmaMapper::builder(host.clone()).swiotlb_backend(Arc::new(pool));
        if debug {
            builder = builder.debug_checker();
        }
        let mapper = builder.build();
        Self {
            host,
            mapper,
            devices: devices(),
        }
    }
}

/// Whether `[addr, addr + len)` lies in one of the two buffer areas.
pub fn in_buffers(addr: u64, len: u64) -> bool {
    let end = addr + len;
    (addr >= BASE && end <= POOL_START) || (addr >= POOL_START + POOL_BYTES && end <= BASE + ARENA)
}

/// Whether `[addr, addr + len)` lies in the pool.
pub fn in_pool(addr: u64, len: u64) -> bool {
    addr >= POOL_START && addr + len <= POOL_START + POOL_BYTES
}
