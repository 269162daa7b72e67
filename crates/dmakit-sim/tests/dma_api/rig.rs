//! What the DMA API tests share: a machine, pools, an IOMMU, and one driver transfer
//! round judged by the oracle.

use std::sync::Arc;

use dmakit::bounce::BounceBackend;
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{Device, DeviceId, Direction, DmaAddr, IommuDma, PageAllocator, PhysAddr, PhysRange};
use dmakit_sim::{HazardConfig, Machine, MachineConfig, Oracle, Owner, SimIommu, SimIommuConfig};

/// Owner of the CPU's stores into the driver's buffer.
pub const BUF: Owner = Owner(9);
/// Owners of the data around it.
pub const LEFT: Owner = Owner(7);
pub const RIGHT: Owner = Owner(8);
/// Owner of what a bounce pool held before.
pub const STALE: Owner = Owner(66);

pub fn machine(seed: u64, hazards: HazardConfig) -> Machine {
    Machine::new(MachineConfig {
        seed,
        hazards,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// A SWIOTLB pool of `pages` pages below 4 GiB whose memory holds an earlier user's data
/// (stamped [`STALE`]), as a pool that served other mappings would.
pub fn dirty_swiotlb(m: &Machine, pages: u64) -> Arc<dyn BounceBackend> {
    let base = m.alloc_pages(pages, u32::MAX as u64).unwrap();
    for i in 0..pages {
        m.cpu_write(base.add(i * 4096), &[0xab; 4096], STALE)
            .unwrap();
    }
    let b = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    b.add_region(base, pages * 4096).unwrap();
    Arc::new(b)
}

/// A modelled IOMMU (4 KiB granule) between the machine's devices and memory, and the
/// mapping layer's view of it.
pub fn iommu_on(m: &Machine) -> (SimIommu, Arc<IommuDma>) {
    let iommu = SimIommu::new(SimIommuConfig::default()).unwrap();
    m.set_translation(Box::new(iommu.clone()));
    let dma = Arc::new(IommuDma::new(Arc::new(iommu.clone()), 1).unwrap());
    (iommu, dma)
}

/// A non-coherent device with `bits` of DMA address, attached to the machine.
pub fn device(m: &Machine, id: u32, bits: u32, coherent: bool, trusted: bool) -> Device {
    let d = Device::builder(DeviceId(id), "dev")
        .dma_bits(bits)
        .coherent(coherent)
        .trusted(trusted)
        .build()
        .unwrap();
    m.attach(d.clone()).unwrap();
    d
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A driver buffer of `len` bytes at `at` between two neighbours that fill the rest of its
/// first and last cache lines (and one more line each way), all written by the CPU and
/// tracked by the oracle. Returns the buffer's range.
pub fn buffer_with_neighbours(
    m: &Machine,
    oracle: &mut Oracle,
    at: PhysAddr,
    len: u64,
) -> PhysRange {
    let line = m.line_size();
    let first = (at.as_u64() & !(line - 1)) - line;
    let end = (at.as_u64() + len).next_multiple_of(line) + line;
    let pieces = [
        (first, at.as_u64() - first, LEFT),
        (at.as_u64(), len, BUF),
        (at.as_u64() + len, end - at.as_u64() - len, RIGHT),
    ];
    for (i, (start, n, owner)) in pieces.into_iter().enumerate() {
        let p = PhysAddr::new(start);
        m.cpu_write(p, &pattern(n as usize, i as u8 * 50), owner)
            .unwrap();
        oracle.register(m, owner, p, n, "object").unwrap();
    }
    PhysRange::new(at, len).unwrap()
}

/// One transfer on the live mapping `dma` of `buf` in `dir`, as a driver that recycles its
/// buffer does it: the CPU writes what the device will read (and first reads the buffer,
/// so its lines are cached), `to_device` (the driver's sync, or nothing), the device reads
/// and writes the whole buffer, time passes, `to_cpu`, and the oracle judges what the
/// device read and what the CPU sees.
#[allow(clippy::too_many_arguments)]
pub fn round(
    m: &Machine,
    oracle: &mut Oracle,
    dev: &Device,
    buf: PhysRange,
    dma: DmaAddr,
    dir: Direction,
    seed: u8,
    to_device: &dyn Fn(),
    to_cpu: &dyn Fn(),
) {
    let (phys, len) = (buf.start(), buf.len());
    let mut scratch = vec![0; len as usize];
    m.cpu_read(phys, &mut scratch).unwrap();
    if dir.device_reads() {
        let data = pattern(len as usize, seed);
        m.cpu_write(phys, &data, BUF).unwrap();
        oracle.cpu_stored(phys, &data, BUF);
    }
    to_device();
    m.grant(dev.id(), dma, len).unwrap();
    if dir.device_reads() {
        let got = m.device_read(dev.id(), dma, len).unwrap();
        oracle
            .check_device_read(phys, &got.data, &got.owners, BUF)
            .unwrap();
    }
    let dev_owner = Owner(1000 + u32::from(seed));
    if dir.device_writes() {
        let back = pattern(len as usize, seed.wrapping_add(101));
        m.device_write(dev.id(), dma, &back, dev_owner).unwrap();
        oracle.device_wrote(phys, &back, dev_owner);
    }
    m.revoke(dev.id(), dma, len).unwrap();
    for _ in 0..8 {
        m.tick();
    }
    to_cpu();
    oracle.check_transfer(m, buf, dev_owner).unwrap();
}
