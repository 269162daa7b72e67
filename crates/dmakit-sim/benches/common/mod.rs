//! Setup shared by the streaming benchmarks: a host platform over real memory, a SWIOTLB
//! pool at its bottom and a non-coherent device with 64-byte lines.

use std::sync::Arc;

use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{Device, DeviceId, DmaMapper, DmaMapperBuilder, PhysAddr};
use dmakit_sim::host::{HostMaintenance, HostPlatform};

pub const MIB: u64 = 1 << 20;
/// The pool: the first 64 MiB of the arena; buffers live above it.
pub const POOL: u64 = 64 * MIB;
const BUFFERS: u64 = 128 * MIB;

/// A non-coherent device with 64-byte lines and no IOMMU.
pub fn device() -> Device {
    Device::builder(DeviceId(1), "bench")
        .cache_line(64)
        .build()
        .expect("valid device")
}

/// A mapper over a fresh arena with a SWIOTLB pool of `cpus` areas, statistics on.
pub fn mapper(cpus: usize) -> DmaMapperBuilder<Arc<HostPlatform>> {
    let host = Arc::new(
        HostPlatform::new(0, POOL + BUFFERS, cpus, 64, HostMaintenance::None).expect("arena"),
    );
    let cfg = PoolConfig::builder()
        .cpu_count(cpus)
        .build()
        .expect("config");
    let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
    pool.add_region(PhysAddr::new(0), POOL).expect("region");
    DmaMapper::builder(host).swiotlb_backend(Arc::new(pool))
}
