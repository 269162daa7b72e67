//! The DMA allocators behind the IOMMU: `alloc_noncontiguous` gives a 32-bit device
//! scattered pages (above 4 GiB too) at one contiguous IOVA range, the data crosses intact
//! in both directions, and after the free the device faults on the old range;
//! `alloc_sg` tables are made contiguous by `map_sg`.

mod iommu_rig;

use dmakit::dma_alloc::{DeviceAddressSpace, DmaAllocator, DmaAllocatorConfig};
use dmakit::{
    Device, DeviceId, Direction, DmaMapper, DomainConfig, PhysAddr, PhysRange, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{FaultReason, Granule, HazardConfig, IommuFaultReason, Machine, Owner, SimError};
use iommu_rig::rig;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Zones with 8 MiB below 4 GiB (the atomic pool lives there) and 64 MiB above.
fn zones(m: &Machine) -> ZonedPageAllocator {
    let low = m
        .alloc_pages_between(8 * MIB / PAGE_SIZE, 16 * MIB, u32::MAX as u64)
        .unwrap();
    let high = m
        .alloc_pages_between(64 * MIB / PAGE_SIZE, 4 * GIB, u64::MAX)
        .unwrap();
    ZonedPageAllocator::new(&[
        PhysRange::new(low, 8 * MIB).unwrap(),
        PhysRange::new(high, 64 * MIB).unwrap(),
    ])
    .unwrap()
}

fn dev32() -> Device {
    Device::builder(DeviceId(1), "dma32")
        .dma_bits(32)
        .build()
        .unwrap()
}

#[test]
fn noncontiguous_allocations_are_contiguous_in_iova_space() {
    let r = rig(21, Granule::K4, HazardConfig::default());
    let d = r.domain(DomainConfig::STRICT);
    let dev = dev32();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let z = zones(&r.m);
    let a =
        DmaAllocator::new(&r.m, &z, r.dma.clone(), DmaAllocatorConfig::default(), None).unwrap();
    assert!(a.address_space().translates(&dev));
    let size = 96 * 1024;
    let table = a
        .alloc_noncontiguous(&dev, size, Direction::Bidirectional)
        .unwrap();
    let dma = table.dma_addr().unwrap();
    assert!(dma.as_u64() + size - 1 <= u32::MAX as u64, "{dma}");
    let pages = table.pages();
    assert!(
        pages.iter().any(|p| p.as_u64() >= 4 * GIB),
        "memory above the device's mask is used"
    );
    // The CPU fills the pages in table order; the device reads one contiguous range.
    for (i, &p) in pages.iter().enumerate() {
        r.m.cpu_write(p, &[i as u8 + 1; PAGE_SIZE as usize], Owner(2))
            .unwrap();
    }
    a.sync_noncontiguous_for_device(&dev, &table).unwrap();
    r.m.grant(dev.id(), dma, size).unwrap();
    let seen = r.m.device_read(dev.id(), dma, size).unwrap();
    for (i, chunk) in seen.data.chunks(PAGE_SIZE as usize).enumerate() {
        assert!(chunk.iter().all(|&b| b == i as u8 + 1), "page {i}");
    }
    // And writes back across the page boundaries.
    let at = dma.add(PAGE_SIZE - 8);
    r.m.device_write(dev.id(), at, &[0xee; 16], Owner(3))
        .unwrap();
    a.sync_noncontiguous_for_cpu(&dev, &table).unwrap();
    let mut back = [0u8; 8];
    r.m.cpu_read(pages[0].add(PAGE_SIZE - 8), &mut back)
        .unwrap();
    assert_eq!(back, [0xee; 8]);
    r.m.cpu_read(pages[1], &mut back).unwrap();
    assert_eq!(back, [0xee; 8]);
    assert_eq!(r.dma.domain(d).unwrap().stats().live_mappings, 1);

    a.free_noncontiguous(&dev, table).unwrap();
    assert_eq!(r.dma.domain(d).unwrap().stats().live_mappings, 0);
    let err = r.m.device_read(dev.id(), dma, 64).unwrap_err();
    assert!(matches!(err, SimError::DeviceFault(f) if f.reason == FaultReason::NoTranslation));
    assert_eq!(
        r.iommu.faults().last().map(|f| f.reason),
        Some(IommuFaultReason::Unmapped)
    );
    // Unmapping what is not mapped is refused.
    assert!(r.dma.unmap_pages(&dev, dma, size / PAGE_SIZE).is_err());
}

#[test]
fn sg_tables_are_mapped_as_one_segment() {
    let r = rig(22, Granule::K4, HazardConfig::NONE);
    let d = r.domain(DomainConfig::LAZY);
    let dev = Device::builder(DeviceId(1), "dma32")
        .dma_bits(32)
        .max_segment_size(1 << 20)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let z = zones(&r.m);
    let a =
        DmaAllocator::new(&r.m, &z, r.dma.clone(), DmaAllocatorConfig::default(), None).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let table = a.alloc_sg(&dev, 40 * 1024).unwrap();
    let entries = table.entries();
    let phys: Vec<PhysAddr> = table.pages();
    for (i, &p) in phys.iter().enumerate() {
        r.m.cpu_write(p, &[0x10 + i as u8; PAGE_SIZE as usize], Owner(4))
            .unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::ToDevice) }.unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert!(segs[0].dma.as_u64() + segs[0].len - 1 <= u32::MAX as u64);
    r.m.grant(dev.id(), segs[0].dma, segs[0].len).unwrap();
    let seen = r.m.device_read(dev.id(), segs[0].dma, 40 * 1024).unwrap();
    for (i, chunk) in seen.data.chunks(PAGE_SIZE as usize).enumerate() {
        assert!(chunk.iter().all(|&b| b == 0x10 + i as u8), "page {i}");
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::ToDevice) }.unwrap();
    r.dma.flush_queues(0);
    assert!(r.m.device_read(dev.id(), segs[0].dma, 64).is_err());
    a.free_sg(&dev, table).unwrap();
}
