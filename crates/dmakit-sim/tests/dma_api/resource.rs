//! `map_resource` / `unmap_resource`: a device reaching another device's registers.
//!
//! Registers are modelled as a page of RAM standing for the peer's register window, so a
//! device write through the returned address can be seen landing (in RAM, never in a
//! cache). Without an IOMMU the address is the bus address, nothing is bounced or
//! maintained, and a window beyond the mask is refused — the control shows the model's
//! device faulting at that address. Behind an IOMMU the window gets an IOVA below the
//! mask, mapped as MMIO, and is gone after the unmap.

use dmakit::{
    DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DomainConfig, IommuPerm, PageAllocator,
    PhysAddr,
};
use dmakit_sim::{FaultReason, HazardConfig, Machine, Owner, SimError};

use super::rig;

const PEER: Owner = Owner(77);

/// Maintenance operations the machine has performed so far.
fn maintenance(m: &Machine) -> u64 {
    let s = m.stats();
    s.cleans + s.invalidates + s.clean_invalidates
}

/// What RAM holds at `at` for `len` bytes.
fn ram(m: &Machine, at: PhysAddr, len: usize) -> (Vec<u8>, Vec<Owner>) {
    let (mut d, mut o) = (vec![0; len], vec![Owner::NOBODY; len]);
    m.peek_ram(at, &mut d, &mut o).unwrap();
    (d, o)
}

#[test]
fn without_an_iommu_a_resource_is_its_bus_address_never_bounced_or_maintained() {
    let m = rig::machine(61, HazardConfig::default());
    let pool = rig::dirty_swiotlb(&m, 64);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = rig::device(&m, 1, 32, false, true);
    let regs = m.alloc_pages(1, u32::MAX as u64).unwrap();
    // 24 bytes 8 bytes into a line: a buffer like it would be bounced for the device.
    let fifo = regs.add(0x48);
    let before = maintenance(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map_resource(&dev, fifo, 24, Direction::FromDevice) }.unwrap();
    assert_eq!(dma, DmaAddr::new(fifo.as_u64()), "the bus address");
    assert_eq!(pool.usage().live, 0, "never bounced");
    assert_eq!(maintenance(&m), before, "never maintained");
    m.grant(dev.id(), dma, 24).unwrap();
    m.device_write(dev.id(), dma, &[0x5a; 24], PEER).unwrap();
    let (data, owners) = ram(&m, fifo, 24);
    assert!(data.iter().all(|&b| b == 0x5a) && owners.iter().all(|&o| o == PEER));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_resource(&dev, dma, 24, Direction::FromDevice) }.unwrap();
    assert_eq!(maintenance(&m), before, "never maintained");
    assert_eq!(pool.usage().high_water, 0);
}

#[test]
fn a_resource_beyond_the_mask_is_refused_and_the_model_would_fault_there() {
    let m = rig::machine(62, HazardConfig::NONE);
    let pool = rig::dirty_swiotlb(&m, 64);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = rig::device(&m, 1, 32, false, true);
    let regs = m.alloc_pages_between(1, 1 << 32, u64::MAX).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let e = unsafe { mapper.map_resource(&dev, regs, 64, Direction::ToDevice) }.unwrap_err();
    assert_eq!(
        e,
        DmaError::ResourceUnreachable {
            device: DeviceId(1),
            phys: regs,
            len: 64,
            mask: u32::MAX as u64,
        }
    );
    assert!(e.to_string().contains("never bounced"), "{e}");
    assert_eq!(pool.usage().high_water, 0, "not bounced instead");
    // The control: had the address been handed out, the device's access would fault.
    let dma = DmaAddr::new(regs.as_u64());
    m.grant(dev.id(), dma, 64).unwrap();
    let refused = m.device_read(dev.id(), dma, 64).unwrap_err();
    assert!(
        matches!(&refused, SimError::DeviceFault(f) if f.reason == FaultReason::AboveMask),
        "{refused:?}"
    );
}

#[test]
fn behind_an_iommu_a_resource_is_mapped_as_mmio_below_the_mask() {
    let m = rig::machine(63, HazardConfig::default());
    let (sim, iommu) = rig::iommu_on(&m);
    let pool = rig::dirty_swiotlb(&m, 64);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool.clone())
        .iommu(iommu.clone())
        .build();
    let dev = rig::device(&m, 1, 32, false, false);
    let dom = iommu.create_domain(DomainConfig::STRICT).unwrap();
    iommu.attach(&dev, dom).unwrap();
    // Registers above the device's mask: reachable through the IOMMU only.
    let regs = m.alloc_pages_between(1, 1 << 32, u64::MAX).unwrap();
    let fifo = regs.add(0x48);
    let before = maintenance(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map_resource(&dev, fifo, 24, Direction::FromDevice) }.unwrap();
    assert!(dev.can_address(dma.as_u64(), 24), "{dma}");
    assert_eq!(
        dma.as_u64() & 0xfff,
        0x48,
        "the offset in the granule is kept"
    );
    let (phys, perm) = sim.iova_to_phys(dom, dma).unwrap();
    assert_eq!(phys, fifo);
    assert_eq!(
        perm,
        IommuPerm {
            read: false,
            write: true,
            mmio: true
        }
    );
    // Untrusted, yet not bounced: registers are not memory another owner's data shares.
    assert_eq!(pool.usage().high_water, 0);
    assert_eq!(maintenance(&m), before);
    m.grant(dev.id(), dma, 24).unwrap();
    m.device_write(dev.id(), dma, &[0xc3; 24], PEER).unwrap();
    assert!(ram(&m, fifo, 24).0.iter().all(|&b| b == 0xc3));
    // Neither unmap ends the other's kind of mapping.
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 24, Direction::FromDevice) },
        Err(DmaError::UnknownMapping { .. })
    ));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_resource(&dev, dma, 24, Direction::FromDevice) }.unwrap();
    assert_eq!(sim.iova_to_phys(dom, dma), None);
    assert!(m.device_write(dev.id(), dma, &[1; 24], PEER).is_err());
    let buf = m.alloc_pages(1, u64::MAX).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let mem = unsafe { mapper.map(&dev, buf, 4096, Direction::ToDevice) }.unwrap();
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_resource(&dev, mem, 4096, Direction::ToDevice) },
        Err(DmaError::UnknownMapping { .. })
    ));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, mem, 4096, Direction::ToDevice) }.unwrap();
    assert!(
        maintenance(&m) > before,
        "the memory mapping was maintained"
    );
}
