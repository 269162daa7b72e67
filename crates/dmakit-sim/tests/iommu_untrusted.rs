//! An untrusted device mapping a 13-byte buffer that shares its page with other objects can
//! read only its 13 bytes and zeros, never a neighbour's byte, even when it reads the whole
//! IOMMU granule it was given and the bounce memory held an earlier user's data. Its writes
//! outside the 13 bytes land in its own padding. A trusted device given the same buffer sees
//! the neighbours: the check can fail.

mod iommu_rig;

use std::sync::Arc;

use dmakit::bounce::BounceBackend;
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    BounceReason, CacheMaintenance, Device, DeviceId, Direction, DmaMapper, DomainConfig, MapPath,
    PageAllocator, PhysAddr, PhysRange,
};
use dmakit_sim::{Granule, HazardConfig, Oracle, Owner, Stamped};
use iommu_rig::{rig, Rig};

const BUF: Owner = Owner(9);
const LEFT: Owner = Owner(7);
const RIGHT: Owner = Owner(8);
const REST: Owner = Owner(10);
const STALE: Owner = Owner(66);

struct Seen {
    /// Bytes of the granule stamped by someone other than the buffer's owner or nobody.
    foreign: usize,
    /// Bytes stamped nobody that are not zero.
    nonzero_padding: usize,
    /// Bytes of the buffer the device saw.
    own: usize,
    oracle_clean: bool,
}

/// A SWIOTLB pool whose memory still holds an earlier user's data (stamped `STALE`), as a
/// pool that served other mappings before would.
fn dirty_pool(r: &Rig, pages: u64) -> Arc<dyn BounceBackend> {
    let base = r.m.alloc_pages(pages, u32::MAX as u64).unwrap();
    for i in 0..pages {
        r.m.cpu_write(base.add(i * 4096), &[0xab; 4096], STALE)
            .unwrap();
    }
    let b = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    b.add_region(base, pages * 4096).unwrap();
    Arc::new(b)
}

/// A device attached to the machine and to a new domain of `cfg`, and a mapper that routes
/// it through the IOMMU with `pool` for its bounces.
fn attached(
    r: &Rig,
    pool: Arc<dyn BounceBackend>,
    cfg: DomainConfig,
    trusted: bool,
) -> (Device, DmaMapper<&dmakit_sim::Machine>) {
    let d = r.domain(cfg);
    let dev = Device::builder(DeviceId(4), "external")
        .trusted(trusted)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool)
        .iommu(r.dma.clone())
        .build();
    (dev, mapper)
}

fn read_granule(trusted: bool, granule: Granule, dir: Direction) -> Seen {
    let r = rig(3, granule, HazardConfig::default());
    let pool = dirty_pool(&r, 64);
    let g = granule.bytes();
    let (dev, mapper) = attached(&r, pool, DomainConfig::STRICT, trusted);
    // One granule of kmalloc-style objects: a neighbour, the 13-byte buffer, another
    // neighbour, and unrelated data filling the rest.
    let page = r.m.alloc_pages(2 * g / 4096, 8 << 30).unwrap();
    let page = PhysAddr::new(page.as_u64().next_multiple_of(g));
    let mut oracle = Oracle::new(r.m.line_size()).unwrap();
    let objects = [
        (0u64, 0x123u64, LEFT),
        (0x123, 13, BUF),
        (0x130, 0xd0, RIGHT),
        (0x200, g - 0x200, REST),
    ];
    for (i, &(off, len, owner)) in objects.iter().enumerate() {
        let data: Vec<u8> = (0..len).map(|b| (b as u8) ^ (i as u8 * 40 + 1)).collect();
        let at = page.add(off);
        r.m.cpu_write(at, &data, owner).unwrap();
        oracle.register(&r.m, owner, at, len, "object").unwrap();
    }
    // The neighbours' data is in memory, where a device could read it.
    CacheMaintenance::clean(&r.m, PhysRange::new(page, g).unwrap());
    let buf = page.add(0x123);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) = unsafe { mapper.map_traced(&dev, buf, 13, dir) }.unwrap();
    if trusted {
        assert!(matches!(path, MapPath::Iommu { .. }), "{path:?}");
    } else {
        assert!(
            matches!(
                path,
                MapPath::Bounced {
                    reason: BounceReason::Untrusted,
                    ..
                }
            ),
            "{path:?}"
        );
    }
    assert_eq!(
        dma.as_u64() & (g - 1),
        0x123,
        "the offset in the granule is kept"
    );
    let gbase = dmakit::DmaAddr::new(dma.as_u64() & !(g - 1));
    r.m.grant(dev.id(), gbase, g).unwrap();
    let seen: Stamped = r.m.device_read(dev.id(), gbase, g).unwrap();
    let own = 0x123..0x130usize;
    oracle
        .check_device_read(buf, &seen.data[own.clone()], &seen.owners[own.clone()], BUF)
        .unwrap();
    let foreign = seen
        .owners
        .iter()
        .filter(|&&o| o != BUF && o != Owner::NOBODY)
        .count();
    let nonzero_padding = seen
        .owners
        .iter()
        .zip(&seen.data)
        .filter(|&(&o, &b)| o == Owner::NOBODY && b != 0)
        .count();
    let own = seen.owners.iter().filter(|&&o| o == BUF).count();
    if dir.device_writes() {
        // The device scribbles over the whole granule it can reach.
        let junk = vec![0xcd; g as usize];
        r.m.device_write(dev.id(), gbase, &junk, Owner(99)).unwrap();
        oracle.device_wrote(buf, &junk[..13], Owner(99));
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 13, dir) }.unwrap();
    oracle.check_all(&r.m, Owner(99)).unwrap();
    let report = oracle.take_report();
    Seen {
        foreign,
        nonzero_padding,
        own,
        oracle_clean: report.wrong_bytes() == 0,
    }
}

#[test]
fn an_untrusted_device_reads_only_its_13_bytes_and_zeros() {
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        for dir in [Direction::ToDevice, Direction::Bidirectional] {
            let s = read_granule(false, g, dir);
            assert_eq!(s.foreign, 0, "{g:?} {dir:?}: neighbour or stale bytes seen");
            assert_eq!(s.nonzero_padding, 0, "{g:?} {dir:?}");
            assert_eq!(s.own, 13, "{g:?} {dir:?}");
            assert!(s.oracle_clean, "{g:?} {dir:?}");
        }
    }
}

#[test]
fn an_untrusted_device_cannot_read_a_write_only_mapping() {
    let r = rig(5, Granule::K4, HazardConfig::NONE);
    let (dev, mapper) = attached(&r, r.swiotlb(64), DomainConfig::STRICT, false);
    let page = r.m.alloc_pages(1, u64::MAX).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, page.add(0x40), 13, Direction::FromDevice) }.unwrap();
    r.m.grant(dev.id(), dma, 13).unwrap();
    let err = r.m.device_read(dev.id(), dma, 13).unwrap_err();
    assert!(matches!(
        err,
        dmakit_sim::SimError::DeviceFault(f) if f.reason == dmakit_sim::FaultReason::PermissionDenied
    ));
    assert_eq!(
        r.iommu.faults()[0].reason,
        dmakit_sim::IommuFaultReason::ReadDenied
    );
    r.m.device_write(dev.id(), dma, &[1; 13], Owner(3)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, 13, Direction::FromDevice) }.unwrap();
    let mut back = [0u8; 13];
    r.m.cpu_read(page.add(0x40), &mut back).unwrap();
    assert_eq!(back, [1; 13]);
}

#[test]
fn control_a_trusted_device_sees_the_neighbours() {
    let s = read_granule(true, Granule::K4, Direction::ToDevice);
    assert!(
        s.foreign > 4000,
        "the whole page of other objects is visible"
    );
    assert_eq!(s.own, 13);
}

#[test]
fn bytes_copied_through_untrusted_bounces_are_all_counted() {
    for cfg in [DomainConfig::STRICT, DomainConfig::LAZY] {
        let r = rig(5, Granule::K4, HazardConfig::default());
        let (dev, mapper) = attached(&r, r.swiotlb(64), cfg, false);
        let buf = r.m.alloc_pages(1, u32::MAX as u64).unwrap().add(0x48);
        let before = r.m.stats().copied_bytes;
        let dir = Direction::Bidirectional;
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, buf, 1000, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_cpu(&dev, dma, 100, 200, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_for_device(&dev, dma, 300, 50, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 1000, dir) }.unwrap();
        let copied = r.m.stats().copied_bytes - before;
        let t = mapper.stats().total();
        // Every byte the machine saw copied is in the statistics, each way.
        assert_eq!(t.bytes_to_bounce + t.bytes_from_bounce, copied, "{cfg:?}");
        assert_eq!(t.bytes_to_bounce, 1000 + 50, "{cfg:?}");
        assert_eq!(t.bytes_from_bounce, 200 + 1000, "{cfg:?}");
    }
}
