//! IOMMU identity (passthrough) domains.
//!
//! A trusted device in an identity domain maps at the physical address, with nothing in
//! the IOMMU's page tables and no record in the domain, its mask still judged (a buffer
//! beyond it is bounced, as one sharing its lines is) and the DMA allocators handing it
//! physical addresses; the model's devices reach memory through the passthrough and the
//! oracle finds every transfer clean. An untrusted device is refused such a domain; the
//! control attaches one anyway, behind the mapping layer's back, and it reads another
//! owner's memory that a translated domain keeps it from.

use dmakit::dma_alloc::{AllocContext, DmaAllocator, DmaAllocatorConfig};
use dmakit::iommu::IommuDmaError;
use dmakit::{
    BounceReason, DeviceId, Direction, DmaAddr, DmaMapper, DomainConfig, Iommu, MapPath,
    PageAllocator, PhysRange, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{HazardConfig, Oracle};

use super::rig::{self, LEFT};

#[test]
fn identity_domain_devices_map_at_their_physical_address_with_the_mask_judged() {
    let m = rig::machine(91, HazardConfig::default());
    let (sim, iommu) = rig::iommu_on(&m);
    let pool = rig::dirty_swiotlb(&m, 64);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(pool)
        .iommu(iommu.clone())
        .build();
    let dom = iommu.create_domain(DomainConfig::IDENTITY).unwrap();
    let wide = rig::device(&m, 1, 64, false, true);
    let narrow = rig::device(&m, 2, 32, false, true);
    for d in [&wide, &narrow] {
        iommu.attach(d, dom).unwrap();
    }
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let high = m.alloc_pages_between(16, 1 << 32, u64::MAX).unwrap();
    let cases = [
        (&wide, 512, 1024, Direction::Bidirectional, None),
        (
            &wide,
            PAGE_SIZE + 8,
            1000,
            Direction::FromDevice,
            Some(BounceReason::Misaligned),
        ),
        (
            &narrow,
            3 * PAGE_SIZE,
            1024,
            Direction::ToDevice,
            Some(BounceReason::AboveMask),
        ),
        (
            &narrow,
            5 * PAGE_SIZE,
            1024,
            Direction::FromDevice,
            Some(BounceReason::AboveMask),
        ),
    ];
    for (i, (dev, off, len, dir, bounce)) in cases.into_iter().enumerate() {
        let at = high.add(off);
        let buf = rig::buffer_with_neighbours(&m, &mut oracle, at, len);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, path) = unsafe { mapper.map_traced(dev, at, len, dir) }.unwrap();
        match bounce {
            None => {
                assert_eq!(path, MapPath::Direct);
                assert_eq!(dma, DmaAddr::new(at.as_u64()), "the physical address");
            }
            Some(reason) => {
                assert!(
                    matches!(path, MapPath::Bounced { reason: r, .. } if r == reason),
                    "{path:?}"
                );
                assert!(
                    dev.can_address(dma.as_u64(), len),
                    "a slot the mask reaches"
                );
            }
        }
        assert_eq!(sim.iova_to_phys(dom, dma), None, "no page tables");
        assert_eq!(iommu.domain(dom).unwrap().stats().live_mappings, 0);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let to_device = || unsafe { mapper.sync_for_device(dev, dma, 0, len, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let to_cpu = || unsafe { mapper.unmap(dev, dma, len, dir) }.unwrap();
        rig::round(
            &m,
            &mut oracle,
            dev,
            buf,
            dma,
            dir,
            i as u8,
            &to_device,
            &to_cpu,
        );
    }
    let report = oracle.take_report();
    assert!(report.is_clean(), "{report}");
    assert_eq!(m.fault_count(), 0);
    let iova = iommu.domain(dom).unwrap().stats().iova;
    assert_eq!(iova.rcache_hits + iova.tree_allocs, 0, "no IOVA");
}

#[test]
fn the_dma_allocators_give_identity_domain_devices_physical_addresses() {
    let m = rig::machine(92, HazardConfig::NONE);
    let (_, iommu) = rig::iommu_on(&m);
    let base = m
        .alloc_pages_between(1024, 16 << 20, u32::MAX as u64)
        .unwrap();
    let z = ZonedPageAllocator::new(&[PhysRange::new(base, 1024 * PAGE_SIZE).unwrap()]).unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * 1024,
        ..DmaAllocatorConfig::default()
    };
    let a = DmaAllocator::new(&m, &z, iommu.clone(), cfg, None).unwrap();
    let dev = rig::device(&m, 1, 32, false, true);
    let dom = iommu.create_domain(DomainConfig::IDENTITY).unwrap();
    iommu.attach(&dev, dom).unwrap();
    let buf = a
        .alloc_coherent(&dev, 3 * PAGE_SIZE, AllocContext::MayBlock)
        .unwrap();
    assert_eq!(buf.dma(), DmaAddr::new(buf.phys().as_u64()));
    m.grant(dev.id(), buf.dma(), buf.size()).unwrap();
    m.device_write(dev.id(), buf.dma(), &[7; 64], rig::BUF)
        .unwrap();
    let mut back = [0; 64];
    m.cpu_read(buf.phys(), &mut back).unwrap();
    assert_eq!(back, [7; 64], "coherent through the passthrough");
    a.free_coherent(&dev, buf).unwrap();
}

#[test]
fn an_untrusted_device_is_refused_an_identity_domain() {
    let m = rig::machine(93, HazardConfig::NONE);
    let (_, iommu) = rig::iommu_on(&m);
    let dom = iommu.create_domain(DomainConfig::IDENTITY).unwrap();
    let ext = rig::device(&m, 5, 64, false, false);
    let e = iommu.attach(&ext, dom).unwrap_err();
    assert_eq!(e, IommuDmaError::UntrustedIdentity(DeviceId(5)));
    assert!(e.to_string().contains("untrusted"), "{e}");
    assert!(iommu.domain_of(ext.id()).is_none(), "nothing attached");
}

#[test]
fn an_untrusted_device_in_an_identity_domain_would_read_other_owners_memory() {
    // The control: what the refusal prevents. Attached behind the mapping layer's back, the
    // untrusted device reads a neighbour's data next to its 13-byte buffer; in a translated
    // domain it gets only its own bytes and zeros (its buffer is bounced into a granule of
    // its own), and outside that granule nothing at all.
    let m = rig::machine(94, HazardConfig::NONE);
    let (sim, iommu) = rig::iommu_on(&m);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(rig::dirty_swiotlb(&m, 64))
        .iommu(iommu.clone())
        .build();
    let ext = rig::device(&m, 5, 64, false, false);
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let page = m.alloc_pages(1, 8 << 30).unwrap();
    let at = page.add(0x200 + 8);
    rig::buffer_with_neighbours(&m, &mut oracle, at, 13);
    dmakit::CacheMaintenance::clean(&m, PhysRange::new(page, PAGE_SIZE).unwrap());
    let translated = iommu.create_domain(DomainConfig::STRICT).unwrap();
    iommu.attach(&ext, translated).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, _) = unsafe { mapper.map_traced(&ext, at, 13, Direction::ToDevice) }.unwrap();
    let granule = DmaAddr::new(dma.as_u64() & !(PAGE_SIZE - 1));
    m.grant(ext.id(), granule, PAGE_SIZE).unwrap();
    let seen = m.device_read(ext.id(), granule, PAGE_SIZE).unwrap();
    assert!(
        !seen.owners.contains(&LEFT),
        "translated: no neighbour's byte"
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&ext, dma, 13, Direction::ToDevice) }.unwrap();
    iommu.detach(&ext).unwrap();
    let identity = iommu.create_domain(DomainConfig::IDENTITY).unwrap();
    sim.attach_device(identity, ext.id()).unwrap();
    let raw = DmaAddr::new(page.as_u64());
    m.grant(ext.id(), raw, PAGE_SIZE).unwrap();
    let leaked = m.device_read(ext.id(), raw, PAGE_SIZE).unwrap();
    assert!(
        leaked.owners.contains(&LEFT),
        "identity: the neighbour's bytes"
    );
}
