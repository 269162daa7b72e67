//! `sync_sg_for_cpu` / `sync_sg_for_device` mid-transfer, on every path a list can take:
//! direct, bounced segments, and the IOMMU in place and bounced. The device writes every
//! segment several times while the list stays mapped, the CPU's cache fetching lines
//! meanwhile; after each round the driver syncs the list for the CPU and the oracle judges
//! every buffer. The control leaves out the mid-transfer sync: the CPU then sees stale
//! data on every path (lines its cache fetched during the transfer, or a bounce never
//! copied back).

use dmakit::{Device, Direction, DmaMapper, DmaSegment, DomainConfig, PageAllocator, SgEntry};
use dmakit_sim::{HazardConfig, Machine, Oracle, OracleReport, Owner};

use super::rig::{self, BUF};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Bounced,
    IommuInPlace,
    IommuBounced,
}

const ALL: [Path; 4] = [
    Path::Direct,
    Path::Bounced,
    Path::IommuInPlace,
    Path::IommuBounced,
];

fn mapper(m: &Machine, path: Path) -> (DmaMapper<&Machine>, Device) {
    let untrusted = path == Path::IommuBounced;
    let dev = rig::device(m, 1, 64, false, !untrusted);
    let mut b = DmaMapper::builder(m).swiotlb_backend(rig::dirty_swiotlb(m, 64));
    if matches!(path, Path::IommuInPlace | Path::IommuBounced) {
        let (_, iommu) = rig::iommu_on(m);
        let d = iommu.create_domain(DomainConfig::STRICT).unwrap();
        iommu.attach(&dev, d).unwrap();
        b = b.iommu(iommu);
    }
    (b.build(), dev)
}

/// Runs a four-buffer list in `dir` for three device rounds, syncing the whole list for the
/// device before each and — when `mid_sync` — for the CPU after each; then unmaps it.
fn list_transfer(
    seed: u64,
    hazards: HazardConfig,
    path: Path,
    dir: Direction,
    mid_sync: bool,
) -> OracleReport {
    let m = rig::machine(seed, hazards);
    let (mapper, dev) = mapper(&m, path);
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let mut bufs = Vec::new();
    for i in 0..4u64 {
        let page = m.alloc_pages(1, 8 << 30).unwrap();
        // Whole lines, never ending on a page end (so the IOMMU path keeps one segment per
        // buffer); 8 bytes into a line for the bounced paths.
        let (off, len) = match path {
            Path::Direct | Path::IommuInPlace => (512, 1024 + 128 * i),
            Path::Bounced | Path::IommuBounced => (520, 1000 + 100 * i),
        };
        bufs.push(rig::buffer_with_neighbours(
            &m,
            &mut oracle,
            page.add(off),
            len,
        ));
    }
    let entries: Vec<SgEntry> = bufs
        .iter()
        .map(|b| SgEntry {
            phys: b.start(),
            len: b.len(),
        })
        .collect();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs: Vec<DmaSegment> = unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap();
    assert_eq!(segs.len(), bufs.len(), "{path:?}: one segment per buffer");
    for r in 0..3u8 {
        for (i, b) in bufs.iter().enumerate() {
            let mut scratch = vec![0; b.len() as usize];
            m.cpu_read(b.start(), &mut scratch).unwrap();
            if dir.device_reads() {
                let data = rig::pattern(b.len() as usize, r * 16 + i as u8);
                m.cpu_write(b.start(), &data, BUF).unwrap();
                oracle.cpu_stored(b.start(), &data, BUF);
            }
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_device(&dev, &segs, dir) }.unwrap();
        // The CPU runs on while the device works: its cache may fetch the buffers' lines
        // again, which only the sync for the CPU afterwards throws away.
        for _ in 0..8 {
            m.tick();
        }
        let owner = Owner(300 + u32::from(r));
        for (s, b) in segs.iter().zip(&bufs) {
            m.grant(dev.id(), s.dma, s.len).unwrap();
            if dir.device_reads() {
                let got = m.device_read(dev.id(), s.dma, s.len).unwrap();
                oracle
                    .check_device_read(b.start(), &got.data, &got.owners, BUF)
                    .unwrap();
            }
            let back = rig::pattern(s.len as usize, 100 + r);
            m.device_write(dev.id(), s.dma, &back, owner).unwrap();
            oracle.device_wrote(b.start(), &back, owner);
            m.revoke(dev.id(), s.dma, s.len).unwrap();
        }
        for _ in 0..8 {
            m.tick();
        }
        if mid_sync {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.sync_sg_for_cpu(&dev, &segs, dir) }.unwrap();
        }
        for b in &bufs {
            oracle.check_transfer(&m, *b, owner).unwrap();
        }
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
    oracle.take_report()
}

#[test]
fn sg_syncs_mid_transfer_are_clean_on_every_path() {
    for path in ALL {
        for dir in [Direction::FromDevice, Direction::Bidirectional] {
            let report = list_transfer(71, HazardConfig::default(), path, dir, true);
            assert!(report.is_clean(), "{path:?} {dir:?}: {report}");
        }
    }
}

#[test]
fn without_the_mid_transfer_sg_sync_the_cpu_sees_stale_data_on_every_path() {
    for path in ALL {
        // A cache that fetches lines near recent activity on every roll, never evicting.
        let speculating = HazardConfig {
            evict_rate: 0.0,
            speculate_rate: 1.0,
            window: 64,
        };
        let report = list_transfer(72, speculating, path, Direction::FromDevice, false);
        assert!(report.wrong_bytes() > 0, "{path:?}: {report}");
    }
}

#[test]
fn sg_syncs_validate_the_list_before_syncing_anything() {
    let m = rig::machine(73, HazardConfig::NONE);
    let (mapper, dev) = mapper(&m, Path::Bounced);
    let page = m.alloc_pages(1, 8 << 30).unwrap();
    let entries = [SgEntry {
        phys: page.add(8),
        len: 100,
    }];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::FromDevice) }.unwrap();
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_cpu(&dev, &[], Direction::FromDevice) },
        Err(dmakit::DmaError::ZeroLength { .. })
    ));
    let bad = [
        segs[0],
        DmaSegment {
            dma: segs[0].dma,
            len: u64::MAX,
        },
    ];
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_device(&dev, &bad, Direction::FromDevice) },
        Err(dmakit::DmaError::AddressOverflow { .. })
    ));
    // A segment outside the mapping, or the wrong direction, is refused as a single sync is.
    let longer = [DmaSegment {
        dma: segs[0].dma,
        len: 200,
    }];
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_cpu(&dev, &longer, Direction::FromDevice) },
        Err(dmakit::DmaError::OutOfMapping { .. })
    ));
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_cpu(&dev, &segs, Direction::ToDevice) },
        Err(dmakit::DmaError::WrongDirection { .. })
    ));
    // A list with a bad segment after a good one syncs nothing: the device's bytes in the
    // good segment's bounce do not reach the buffer until a list without it is synced.
    m.cpu_write(page.add(8), &[0x11; 100], BUF).unwrap();
    m.grant(dev.id(), segs[0].dma, 100).unwrap();
    m.device_write(dev.id(), segs[0].dma, &[0x22; 100], Owner(3))
        .unwrap();
    let unknown = [
        segs[0],
        DmaSegment {
            dma: segs[0].dma.add(4096),
            len: 8,
        },
    ];
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.sync_sg_for_cpu(&dev, &unknown, Direction::FromDevice) },
        Err(dmakit::DmaError::UnknownMapping { .. })
    ));
    let mut seen = [0; 100];
    m.cpu_read(page.add(8), &mut seen).unwrap();
    assert_eq!(seen, [0x11; 100], "nothing was synced");
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_sg_for_cpu(&dev, &segs, Direction::FromDevice) }.unwrap();
    m.cpu_read(page.add(8), &mut seen).unwrap();
    assert_eq!(seen, [0x22; 100], "the good list is");
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::FromDevice) }.unwrap();
}
