//! The IOVA space through the model: a 32-bit device reaches buffers above 4 GiB without a
//! bounce, scattered pages become one contiguous device segment, exhaustion is a clear
//! error, and freed IOVAs are used again.

mod iommu_rig;

use dmakit::{
    Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DomainConfig, FlushMode, MapPath,
    PhysAddr, SgEntry,
};
use dmakit_sim::{run_workload, Granule, HazardConfig, Owner, WorkloadConfig};
use iommu_rig::rig;

const GIB: u64 = 1 << 30;

#[test]
fn a_32_bit_device_uses_buffers_above_4_gib_without_bouncing() {
    let r = rig(7, Granule::K4, HazardConfig::default());
    let d = r.domain(DomainConfig::STRICT);
    let dev = Device::builder(DeviceId(1), "dma32")
        .dma_bits(32)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    // No bounce pool at all: a bounce would be an error.
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let buf = r.m.alloc_pages_between(4, 5 * GIB, 8 * GIB - 1).unwrap();
    assert!(buf.as_u64() >= 5 * GIB);
    let out: Vec<u8> = (0..8192u32).map(|i| (i * 7) as u8).collect();
    r.m.cpu_write(buf, &out, Owner(3)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) = unsafe { mapper.map_traced(&dev, buf, 8192, Direction::ToDevice) }.unwrap();
    assert_eq!(path, MapPath::Iommu { domain: d });
    assert!(dma.as_u64() + 8191 <= u32::MAX as u64, "{dma}");
    r.m.grant(dev.id(), dma, 8192).unwrap();
    let seen = r.m.device_read(dev.id(), dma, 8192).unwrap();
    assert_eq!(seen.data, out, "the device read the CPU's data above 4 GiB");
    assert!(seen.owners.iter().all(|&o| o == Owner(3)));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 8192, Direction::ToDevice) }.unwrap();

    let inbound = buf.add(8192);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&dev, inbound, 8192, Direction::FromDevice) }.unwrap();
    assert_eq!(path, MapPath::Iommu { domain: d });
    assert!(dma.as_u64() + 8191 <= u32::MAX as u64);
    r.m.grant(dev.id(), dma, 8192).unwrap();
    r.m.device_write(dev.id(), dma, &[0x77; 8192], Owner(4))
        .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 8192, Direction::FromDevice) }.unwrap();
    let mut back = vec![0u8; 8192];
    r.m.cpu_read(inbound, &mut back).unwrap();
    assert_eq!(back, vec![0x77; 8192]);
    assert!(r.m.faults().is_empty());
}

#[test]
fn a_32_bit_coherent_device_runs_the_harness_above_4_gib_without_a_pool() {
    let r = rig(8, Granule::K4, HazardConfig::default());
    let d = r.domain(DomainConfig::LAZY);
    let dev = Device::builder(DeviceId(1), "dma32")
        .dma_bits(32)
        .coherent(true)
        .build()
        .unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let out = run_workload(
        &r.m,
        &mapper,
        &dev,
        WorkloadConfig {
            transfers: 5_000,
            seed: 9,
            min_addr: 4 * GIB,
            max_addr: 8 * GIB - 1,
            ..WorkloadConfig::default()
        },
    )
    .unwrap();
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    assert!(out.report.is_clean(), "{}", out.report);
}

#[test]
fn scattered_pages_become_one_contiguous_segment() {
    let r = rig(10, Granule::K4, HazardConfig::NONE);
    let d = r.domain(DomainConfig::STRICT);
    let dev = Device::builder(DeviceId(1), "sg")
        .max_segment_size(1 << 20)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    // Four pages far apart, in descending physical order.
    let pages: Vec<PhysAddr> = [7 * GIB, GIB, 5 * GIB, 3 << 20]
        .iter()
        .map(|&a| r.m.alloc_pages_between(1, a, a + (1 << 20)).unwrap())
        .collect();
    let entries: Vec<SgEntry> = pages
        .iter()
        .enumerate()
        .map(|(i, &p)| {
            r.m.cpu_write(p, &[i as u8 + 1; 4096], Owner(i as u32 + 1))
                .unwrap();
            SgEntry { phys: p, len: 4096 }
        })
        .collect();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::ToDevice) }.unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(segs[0].len, 4 * 4096);
    r.m.grant(dev.id(), segs[0].dma, segs[0].len).unwrap();
    let seen = r.m.device_read(dev.id(), segs[0].dma, 4 * 4096).unwrap();
    for i in 0..4 {
        let chunk = &seen.data[i * 4096..(i + 1) * 4096];
        assert!(chunk.iter().all(|&b| b == i as u8 + 1), "page {i}");
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_device(&dev, segs[0].dma, 4096, 4096, Direction::ToDevice) }.unwrap();
    // The device's segment limit splits the contiguous range, but it stays contiguous.
    let small = Device::builder(DeviceId(2), "sg-small")
        .max_segment_size(8192)
        .build()
        .unwrap();
    r.dma.attach(&small, d).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let split = unsafe { mapper.map_sg(&small, &entries, Direction::ToDevice) }.unwrap();
    assert_eq!(split.len(), 2);
    assert_eq!(split[1].dma.as_u64(), split[0].dma.as_u64() + 8192);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&small, &split, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::ToDevice) }.unwrap();
    assert!(r.m.device_read(dev.id(), segs[0].dma, 64).is_err());
    assert_eq!(r.dma.domain(d).unwrap().stats().live_mappings, 0);
    // Sub-page pieces do not merge: each keeps its own offset in its granule.
    let odd = [
        SgEntry {
            phys: pages[0].add(100),
            len: 50,
        },
        SgEntry {
            phys: pages[1],
            len: 4096,
        },
    ];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &odd, Direction::ToDevice) }.unwrap();
    assert_eq!(segs.len(), 2);
    assert_eq!(segs[0].dma.as_u64() & 0xfff, 100);
    assert_eq!(segs[1].dma.as_u64(), (segs[0].dma.as_u64() & !0xfff) + 4096);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::ToDevice) }.unwrap();
}

fn exhaust(mode: FlushMode) {
    let r = rig(12, Granule::K4, HazardConfig::NONE);
    // Sixteen pages of IOVA space.
    let d = r.domain(DomainConfig {
        mode,
        iova_window: Some((0x10_0000, 0x10_0000 + 16 * 4096 - 1)),
        ..DomainConfig::STRICT
    });
    let dev = Device::builder(DeviceId(1), "d").build().unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let buf = r.m.alloc_pages_between(17, 0, 8 * GIB).unwrap();
    let mut live: Vec<DmaAddr> = (0..16)
        .map(|i| {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&dev, buf.add(i * 4096), 4096, Direction::ToDevice) }.unwrap()
        })
        .collect();
    let mut sorted: Vec<u64> = live.iter().map(|a| a.as_u64()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 16);
    assert!(sorted.iter().all(|&a| (0x10_0000..0x11_0000).contains(&a)));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let err =
        unsafe { mapper.map(&dev, buf.add(16 * 4096), 4096, Direction::ToDevice) }.unwrap_err();
    assert!(
        matches!(err, DmaError::IovaExhausted { len: 4096, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("IOVA space exhausted"));
    // A two-page request cannot fit either, and fails the same way.
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, buf, 8192, Direction::ToDevice) },
        Err(DmaError::IovaExhausted { len: 8192, .. })
    ));
    // Free one and the same IOVA serves the next mapping.
    let freed = live.remove(5);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, freed, 4096, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let again = unsafe { mapper.map(&dev, buf.add(16 * 4096), 4096, Direction::ToDevice) }.unwrap();
    assert_eq!(again, freed);
    live.push(again);
    for (i, dma) in live.into_iter().enumerate() {
        let _ = i;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 4096, Direction::ToDevice) }.unwrap();
    }
    // Everything free again: the whole window serves one 16-page mapping.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let all = unsafe { mapper.map(&dev, buf, 16 * 4096, Direction::ToDevice) }.unwrap();
    assert_eq!(all.as_u64(), 0x10_0000);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, all, 16 * 4096, Direction::ToDevice) }.unwrap();
}

#[test]
fn iova_exhaustion_is_an_error_and_freed_iovas_are_reused_strict() {
    exhaust(FlushMode::Strict);
}

#[test]
fn iova_exhaustion_drains_the_flush_queue_before_failing_lazy() {
    exhaust(FlushMode::Lazy { queue: 1024 });
}
