//! After unmap (strict) or after the flush queue drains (lazy), a device that kept the old
//! IOVA faults. With the IOTLB invalidation skipped, the model shows the device still
//! reaching the memory through a stale translation: the check can fail.

mod iommu_rig;

use dmakit::{
    Device, DeviceId, Direction, DmaAddr, DmaMapper, DomainConfig, FlushMode, PageAllocator,
    PhysAddr,
};
use dmakit_sim::{FaultReason, Granule, HazardConfig, IommuFaultReason, Owner, SimError};
use iommu_rig::{rig, Rig};

const LEN: u64 = 4096;

fn dev() -> Device {
    Device::builder(DeviceId(1), "nic").build().unwrap()
}

/// A page written by the CPU with `owner`.
fn page(r: &Rig, owner: Owner) -> PhysAddr {
    let p = r.m.alloc_pages(1, u64::MAX).unwrap();
    r.m.cpu_write(p, &[0x5a; LEN as usize], owner).unwrap();
    p
}

/// Maps a page, lets the device use it (filling the IOTLB), unmaps it, and has the device
/// (which keeps its grant, as a buggy or malicious device keeps an address) read and write
/// the old IOVA again. Returns whether the device still reached memory, and the CPU's view
/// of the first bytes afterwards.
fn access_after_unmap(drop_invalidations: bool, cfg: DomainConfig) -> (bool, Vec<u8>) {
    let r = rig(1, Granule::K4, HazardConfig::NONE);
    let d = r.domain(cfg);
    let dev = dev();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    r.iommu.set_drop_invalidations(drop_invalidations);
    let buf = page(&r, Owner(5));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, buf, LEN, Direction::Bidirectional) }.unwrap();
    assert_ne!(dma.as_u64(), buf.as_u64(), "the device sees an IOVA");
    r.m.grant(dev.id(), dma, LEN).unwrap();
    let seen = r.m.device_read(dev.id(), dma, 64).unwrap();
    assert!(seen.owners.iter().all(|&o| o == Owner(5)));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, LEN, Direction::Bidirectional) }.unwrap();
    r.dma.flush_queues(0);
    let read = r.m.device_read(dev.id(), dma, 64);
    let write = r.m.device_write(dev.id(), dma, &[0xee; 16], Owner(66));
    assert_eq!(read.is_ok(), write.is_ok());
    if read.is_err() {
        for e in [read.as_ref().err().cloned(), write.as_ref().err().cloned()] {
            assert!(matches!(
                e,
                Some(SimError::DeviceFault(f)) if f.reason == FaultReason::NoTranslation
            ));
        }
        let faults = r.iommu.faults();
        assert_eq!(faults.len(), 2);
        assert!(faults.iter().all(|f| f.reason == IommuFaultReason::Unmapped
            && f.iova == dma
            && f.domain == Some(d)));
        assert_eq!(r.iommu.stats().stale_hits, 0);
    } else {
        assert!(r.iommu.stats().stale_hits >= 2);
        assert!(r.iommu.stats().dropped_invalidations >= 1);
    }
    let mut cpu = vec![0; 16];
    r.m.cpu_read(buf, &mut cpu).unwrap();
    (read.is_ok(), cpu)
}

#[test]
fn strict_unmap_cuts_the_device_off() {
    let (reached, cpu) = access_after_unmap(false, DomainConfig::STRICT);
    assert!(!reached);
    assert_eq!(cpu, vec![0x5a; 16], "the device's late write never landed");
}

#[test]
fn lazy_unmap_cuts_the_device_off_once_the_queue_drains() {
    let (reached, cpu) = access_after_unmap(false, DomainConfig::LAZY);
    assert!(!reached);
    assert_eq!(cpu, vec![0x5a; 16]);
}

#[test]
fn control_skipped_invalidation_lets_the_device_reach_freed_memory() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        let (reached, cpu) = access_after_unmap(true, cfg);
        assert!(
            reached,
            "{:?}: the stale IOTLB entry still translates",
            cfg.mode
        );
        assert_eq!(cpu, vec![0xee; 16], "{:?}: the late write landed", cfg.mode);
    }
}

#[test]
fn lazy_mode_never_reuses_an_iova_before_its_invalidation() {
    let r = rig(2, Granule::K4, HazardConfig::NONE);
    let d = r.domain(DomainConfig {
        mode: FlushMode::Lazy { queue: 8 },
        ..DomainConfig::STRICT
    });
    let dev = dev();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let buf = page(&r, Owner(5));
    let mut queued: Vec<DmaAddr> = Vec::new();
    let mut after_drain = Vec::new();
    for round in 0..40 {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, buf, LEN, Direction::ToDevice) }.unwrap();
        let stats = r.dma.domain(d).unwrap().stats();
        if stats.queued == 0 && round > 0 {
            // A drain just happened: everything queued before it is invalidated.
            after_drain.push(dma);
            queued.clear();
        }
        assert!(
            !queued.contains(&dma),
            "round {round}: {dma} reused while waiting for invalidation"
        );
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, LEN, Direction::ToDevice) }.unwrap();
        queued.push(dma);
    }
    let stats = r.dma.domain(d).unwrap().stats();
    assert!(stats.queue_flushes >= 4, "{stats:?}");
    assert_eq!(r.iommu.stats().domain_invalidations, stats.queue_flushes);
    // Invalidated IOVAs do come back (from the range cache) once released.
    assert!(!after_drain.is_empty());
    assert!(r.dma.domain(d).unwrap().iova().stats().rcache_hits > 0);
}
