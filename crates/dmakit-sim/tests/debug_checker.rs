//! The DMA-API debug checker: one deliberately buggy sequence per bug class is reported
//! with the expected message, and the corrected sequence reports nothing.

mod testbed;

use dmakit::debug::{DebugIssue, DebugReport};
use dmakit::{
    AlignmentPolicy, BouncePool, Device, DeviceId, Direction, DmaAddr, DmaMapper, DmaMapperBuilder,
    PhysAddr, SgEntry,
};
use dmakit_sim::{run_workload, Machine, WorkloadConfig};
use testbed::*;

use Direction::*;

fn rig(m: &Machine) -> DmaMapperBuilder<&Machine> {
    DmaMapper::builder(m)
        .swiotlb_backend(swiotlb(m, 1 << 20, None))
        .debug_checker()
}

fn buffers(m: &Machine) -> PhysAddr {
    use dmakit::PageAllocator;
    m.alloc_pages(64, BELOW_4G).unwrap()
}

fn issues(mapper: &DmaMapper<&Machine>) -> Vec<DebugReport> {
    mapper.debug_checker().unwrap().take_reports()
}

fn only(mapper: &DmaMapper<&Machine>, issue: DebugIssue) -> DebugReport {
    let r = issues(mapper);
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r[0].issue, issue, "{}", r[0]);
    r[0].clone()
}

#[test]
fn unmap_of_an_address_never_mapped_or_already_unmapped() {
    let m = machine(1);
    let mapper = rig(&m).build();
    let dev = device(1, BouncePool::Swiotlb);
    let buf = buffers(&m);
    let bogus = DmaAddr::new(buf.as_u64() + 0x800);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap(&dev, bogus, 128, FromDevice) };
    let r = only(&mapper, DebugIssue::NotMapped);
    assert!(
        r.message().contains("never mapped or is already unmapped"),
        "{r}"
    );
    assert!(
        r.message().contains("debug_checker.rs"),
        "names the offending line: {r}"
    );

    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 128, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 128, FromDevice) }.unwrap();
    assert!(issues(&mapper).is_empty(), "correct sequence");
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap(&dev, dma, 128, FromDevice) };
    only(&mapper, DebugIssue::NotMapped);
}

#[test]
fn a_failed_mapping_used_without_checking() {
    let m = machine(2);
    let mapper = DmaMapper::builder(&m).debug_checker().build(); // no bounce pool
    let dev = device(1, BouncePool::Swiotlb);
    let buf = buffers(&m);
    // The driver ignores the error and uses a default address.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf.add(8), 13, FromDevice) }.unwrap_or_default();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.sync_for_cpu(&dev, dma, 0, 13, FromDevice) };
    let r = only(&mapper, DebugIssue::UncheckedMapError);
    assert!(
        r.message().contains("failed") && r.message().contains("without checking"),
        "{r}"
    );
    assert!(r.mapped_at.is_some());
    // Checking the result first: no report.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    if let Ok(dma) = unsafe { mapper.map(&dev, buf, 128, FromDevice) } {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 128, FromDevice) }.unwrap();
    }
    assert!(issues(&mapper).is_empty());
}

#[test]
fn unmap_with_another_size_direction_or_api() {
    let m = machine(3);
    let mapper = rig(&m).build();
    let dev = device(1, BouncePool::Swiotlb);
    let buf = buffers(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 256, ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 128, ToDevice) }.unwrap();
    let r = only(&mapper, DebugIssue::WrongSize);
    assert!(
        r.message().contains("128 bytes") && r.message().contains("256 bytes were mapped"),
        "{r}"
    );

    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 256, ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap(&dev, dma, 256, FromDevice) };
    let r = only(&mapper, DebugIssue::WrongDirection);
    assert!(
        r.message().contains("from-device unmap") && r.message().contains("mapped to-device"),
        "{r}"
    );

    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 256, ToDevice) }.unwrap();
    let seg = dmakit::DmaSegment { dma, len: 256 };
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap_sg(&dev, &[seg], ToDevice) };
    let r = only(&mapper, DebugIssue::WrongFamily);
    assert!(
        r.message().contains("scatter-gather unmap") && r.message().contains("single API"),
        "{r}"
    );

    let checker = mapper.debug_checker().unwrap();
    checker.coherent_allocated(&dev, DmaAddr::new(buf.as_u64()), buf, 4096);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap(&dev, DmaAddr::new(buf.as_u64()), 4096, Bidirectional) };
    only(&mapper, DebugIssue::WrongFamily);
    checker.coherent_allocated(&dev, DmaAddr::new(buf.as_u64()), buf, 4096);
    checker.coherent_freeing(&dev, DmaAddr::new(buf.as_u64()), 4096);
    assert!(issues(&mapper).is_empty());
}

#[test]
fn sg_unmap_with_another_entry_count() {
    let m = machine(4);
    let mapper = rig(&m).build();
    let dev = Device::builder(DeviceId(5), "sg")
        .cache_line(LINE)
        .max_segment_size(4096)
        .build()
        .unwrap();
    let buf = buffers(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe {
        mapper.map_sg(
            &dev,
            &[SgEntry {
                phys: buf,
                len: 3 * 4096,
            }],
            FromDevice,
        )
    }
    .unwrap();
    assert_eq!(segs.len(), 3);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let _ = unsafe { mapper.unmap_sg(&dev, &segs[..2], FromDevice) };
    let r = issues(&mapper);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r.issue == DebugIssue::WrongSgCount));
    assert!(
        r[0].message()
            .contains("with 2 entries of a list mapped with 3"),
        "{}",
        r[0]
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, segs[2].dma, 4096, FromDevice) }.unwrap();
    only(&mapper, DebugIssue::WrongFamily);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe {
        mapper.map_sg(
            &dev,
            &[SgEntry {
                phys: buf,
                len: 3 * 4096,
            }],
            FromDevice,
        )
    }
    .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, FromDevice) }.unwrap();
    assert!(issues(&mapper).is_empty());
}

#[test]
fn sync_outside_the_mapping_or_in_a_forbidden_direction() {
    let m = machine(5);
    let mapper = rig(&m).build();
    let dev = device(1, BouncePool::Swiotlb);
    let buf = buffers(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 512, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_cpu(&dev, dma, 500, 100, FromDevice) }.unwrap(); // direct: no error value
    let r = only(&mapper, DebugIssue::SyncOutOfRange);
    assert!(r.message().contains("outside the 512-byte mapping"), "{r}");
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_device(&dev, dma, 0, 512, ToDevice) }.unwrap();
    only(&mapper, DebugIssue::WrongDirection);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_cpu(&dev, dma, 0, 512, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_device(&dev, dma, 0, 512, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 512, FromDevice) }.unwrap();
    assert!(issues(&mapper).is_empty());
}

#[test]
fn two_unbounced_inbound_mappings_sharing_a_line() {
    let m = machine(6);
    let buf = buffers(&m);
    let dev = device(1, BouncePool::Swiotlb);
    // Under the Never policy two 8-byte neighbours are both mapped in place.
    let never = rig(&m).policy(AlignmentPolicy::Never).build();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let a = unsafe { never.map(&dev, buf, 8, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let b = unsafe { never.map(&dev, buf.add(8), 8, FromDevice) }.unwrap();
    let r = only(&never, DebugIssue::SharedInboundLine);
    assert!(
        r.message().contains("shares a cache line") && r.message().contains("neither is bounced"),
        "{r}"
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { never.unmap(&dev, a, 8, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { never.unmap(&dev, b, 8, FromDevice) }.unwrap();
    // The exact policy bounces both: nothing to report.
    let exact = rig(&m).build();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let a = unsafe { exact.map(&dev, buf, 8, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let b = unsafe { exact.map(&dev, buf.add(8), 8, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { exact.unmap(&dev, a, 8, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { exact.unmap(&dev, b, 8, FromDevice) }.unwrap();
    assert!(issues(&exact).is_empty());
}

#[test]
fn mappings_still_live_when_the_device_is_released() {
    let m = machine(7);
    let mapper = rig(&m).build();
    let dev = device(1, BouncePool::Swiotlb);
    let other = device(2, BouncePool::Swiotlb);
    let buf = buffers(&m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let kept = unsafe { mapper.map(&dev, buf.add(8), 100, FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let fine = unsafe { mapper.map(&other, buf.add(4096), 128, ToDevice) }.unwrap();
    let leaks = mapper.release_device(&dev);
    assert_eq!(leaks.len(), 1);
    assert_eq!(
        (leaks[0].issue, leaks[0].dma, leaks[0].len),
        (DebugIssue::Leak, kept, 100)
    );
    assert!(leaks[0]
        .message()
        .contains("released with a live single mapping of 100 bytes"));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&other, fine, 128, ToDevice) }.unwrap();
    assert!(mapper.release_device(&other).is_empty());
}

#[test]
fn cpu_access_while_the_device_owns_the_buffer() {
    let m = machine(8);
    let mapper = rig(&m).build();
    let dev = device(1, BouncePool::Swiotlb);
    let buf = buffers(&m);
    let checker = mapper.debug_checker().unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 256, FromDevice) }.unwrap();
    let r = checker.check_cpu_access(buf.add(16), 4, false).unwrap();
    assert_eq!(r.issue, DebugIssue::CpuReadWhileDeviceOwns);
    assert!(r.message().contains("the CPU read 4 bytes"), "{r}");
    // After sync_for_cpu of that part the CPU may read it, but not the rest.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_cpu(&dev, dma, 0, 128, FromDevice) }.unwrap();
    assert!(checker.check_cpu_access(buf.add(16), 4, false).is_none());
    assert!(checker.check_cpu_access(buf.add(200), 4, false).is_some());
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 256, FromDevice) }.unwrap();
    assert!(checker.check_cpu_access(buf, 256, true).is_none());
    // Writing a buffer the device is reading is a bug too; reading it is not.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, 256, ToDevice) }.unwrap();
    assert!(checker.check_cpu_access(buf, 8, false).is_none());
    let r = checker.check_cpu_access(buf, 8, true).unwrap();
    assert_eq!(r.issue, DebugIssue::CpuWriteWhileDeviceOwns);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 256, ToDevice) }.unwrap();
    checker.take_reports();
}

#[test]
fn randomised_workloads_report_nothing_and_a_missing_sync_is_caught() {
    for backend in [BouncePool::Swiotlb, BouncePool::Coherent] {
        let m = machine(9);
        let mapper = DmaMapper::builder(&m)
            .swiotlb_backend(swiotlb(&m, 8 << 20, None))
            .coherent_backend(coherent(&m, 8 << 20))
            .debug_checker()
            .build();
        let dev = device(1, backend);
        let cfg = WorkloadConfig {
            transfers: 20_000,
            seed: 9,
            log_sizes: true,
            max_len: 4096,
            ..WorkloadConfig::default()
        };
        let out = run_workload(&m, &mapper, &dev, cfg.clone()).unwrap();
        assert!(out.report.is_clean(), "{}", out.report);
        assert!(issues(&mapper).is_empty(), "{:#?}", issues(&mapper).first());
        assert!(mapper.release_device(&dev).is_empty());

        // The control: the harness reads buffers before giving them back to the CPU.
        let m = machine(10);
        let mapper = DmaMapper::builder(&m)
            .swiotlb_backend(swiotlb(&m, 8 << 20, None))
            .coherent_backend(coherent(&m, 8 << 20))
            .debug_checker()
            .build();
        let cfg = WorkloadConfig {
            skip_sync_for_cpu: true,
            transfers: 2_000,
            ..cfg
        };
        run_workload(&m, &mapper, &dev, cfg).unwrap();
        let r = issues(&mapper);
        assert!(!r.is_empty());
        assert!(
            r.iter()
                .all(|r| r.issue == DebugIssue::CpuReadWhileDeviceOwns),
            "{:#?}",
            r.first()
        );
    }
}
