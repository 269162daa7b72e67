//! Many scatter-gather lists live at once behind an IOMMU, until its domain's piece table
//! is full, under a misbehaving cache: the list that does not fit is refused with nothing
//! mapped, every list that did is transferred byte-exact (the oracle judges what the device
//! read, what the CPU sees afterwards and every neighbour), and once lists are unmapped
//! the refused one maps and transfers too.

use dmakit::{
    Device, Direction, DmaError, DmaMapper, DmaSegment, DomainConfig, PageAllocator, PhysRange,
    SgEntry,
};
use dmakit_sim::{HazardConfig, Machine, Oracle, OracleReport, Owner};

use super::rig::{self, BUF};

/// Buffers per list; pieces in the table: room for `FIT` lists.
const PER_LIST: usize = 3;
const FIT: usize = 4;

/// A list of `PER_LIST` buffers of whole lines, each in its own page and never ending on a
/// page end (so no two merge and each keeps one segment), the CPU's data written in.
fn list(m: &Machine, oracle: &mut Oracle, seed: u8) -> Vec<PhysRange> {
    (0..PER_LIST as u64)
        .map(|i| {
            let page = m.alloc_pages(1, 8 << 30).unwrap();
            let b = rig::buffer_with_neighbours(m, oracle, page.add(512), 1024 + 128 * i);
            let data = rig::pattern(b.len() as usize, seed.wrapping_add(i as u8));
            m.cpu_write(b.start(), &data, BUF).unwrap();
            oracle.cpu_stored(b.start(), &data, BUF);
            b
        })
        .collect()
}

fn entries(bufs: &[PhysRange]) -> Vec<SgEntry> {
    bufs.iter()
        .map(|b| SgEntry {
            phys: b.start(),
            len: b.len(),
        })
        .collect()
}

/// The device reads every segment of a live list (judged against the CPU's data) and
/// writes it back as `owner`, the cache misbehaving meanwhile.
fn device_round(
    m: &Machine,
    oracle: &mut Oracle,
    dev: &Device,
    bufs: &[PhysRange],
    segs: &[DmaSegment],
    owner: Owner,
) {
    assert_eq!(segs.len(), bufs.len(), "one segment per buffer");
    for (s, b) in segs.iter().zip(bufs) {
        m.grant(dev.id(), s.dma, s.len).unwrap();
        let got = m.device_read(dev.id(), s.dma, s.len).unwrap();
        oracle
            .check_device_read(b.start(), &got.data, &got.owners, BUF)
            .unwrap();
        let back = rig::pattern(s.len as usize, owner.0 as u8);
        m.device_write(dev.id(), s.dma, &back, owner).unwrap();
        oracle.device_wrote(b.start(), &back, owner);
        m.revoke(dev.id(), s.dma, s.len).unwrap();
        for _ in 0..4 {
            m.tick();
        }
    }
}

fn fill_the_table(seed: u64, cfg: DomainConfig) -> OracleReport {
    let m = rig::machine(seed, HazardConfig::default());
    let dev = rig::device(&m, 1, 64, false, true);
    let (_, iommu) = rig::iommu_on(&m);
    let cfg = DomainConfig {
        max_sg_pieces: PER_LIST * FIT,
        ..cfg
    };
    let d = iommu.create_domain(cfg).unwrap();
    iommu.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(rig::dirty_swiotlb(&m, 64))
        .iommu(iommu.clone())
        .build();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let dir = Direction::Bidirectional;
    let mut live = Vec::new();
    let refused = loop {
        let bufs = list(&m, &mut oracle, live.len() as u8 * 16);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { mapper.map_sg(&dev, &entries(&bufs), dir) } {
            Ok(segs) => live.push((bufs, segs)),
            Err(e) => break (bufs, e),
        }
    };
    assert_eq!(live.len(), FIT, "lists until the table is full");
    assert_eq!(
        refused.1,
        DmaError::SgPieceTableFull {
            device: dev.id(),
            needed: PER_LIST,
            capacity: PER_LIST * FIT
        }
    );
    let stats = iommu.domain(d).unwrap().stats();
    assert_eq!(
        (stats.live_mappings, stats.free_sg_pieces),
        (FIT, 0),
        "{stats:?}"
    );
    // Every live list at once, then each unmapped and judged.
    for (i, (bufs, segs)) in live.iter().enumerate() {
        device_round(&m, &mut oracle, &dev, bufs, segs, Owner(200 + i as u32));
    }
    for (i, (bufs, segs)) in live.iter().enumerate() {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_sg(&dev, segs, dir) }.unwrap();
        for b in bufs {
            oracle
                .check_transfer(&m, *b, Owner(200 + i as u32))
                .unwrap();
        }
    }
    // The refused list maps now, and its bytes are right too.
    let bufs = refused.0;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries(&bufs), dir) }.unwrap();
    device_round(&m, &mut oracle, &dev, &bufs, &segs, Owner(250));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
    for b in &bufs {
        oracle.check_transfer(&m, *b, Owner(250)).unwrap();
    }
    mapper.flush_iommu_queues();
    let stats = iommu.domain(d).unwrap().stats();
    assert_eq!(
        (stats.live_mappings, stats.free_sg_pieces),
        (0, PER_LIST * FIT),
        "{stats:?}"
    );
    assert!(m.faults().is_empty(), "{:?}", m.faults());
    oracle.take_report()
}

#[test]
fn lists_fill_the_piece_table_and_stay_byte_exact_under_a_misbehaving_cache() {
    for (seed, cfg) in [(81, DomainConfig::STRICT), (82, DomainConfig::LAZY)] {
        let report = fill_the_table(seed, cfg);
        assert!(report.is_clean(), "{cfg:?}: {report}");
    }
}
