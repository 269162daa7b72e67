//! `MapAttrs::SKIP_CPU_SYNC` and `need_sync`.
//!
//! A driver maps a buffer once with `SKIP_CPU_SYNC` and syncs it itself around every
//! transfer: clean on the direct, bounced and IOMMU paths under a misbehaving cache. The
//! controls: the same driver without its syncs sees stale data (the attribute really
//! skipped the maintenance and the copy back, where a plain map/unmap does them); a
//! `SKIP_CPU_SYNC` bounce is still filled from the buffer (the slot's old contents never
//! reach the device), unless the fill is switched off.

use dmakit::{
    BounceReason, Device, Direction, DmaMapper, DomainConfig, HazardControls, MapAttrs, MapPath,
    PageAllocator, PhysAddr,
};
use dmakit_sim::{HazardConfig, Machine, Oracle, OracleReport};

use super::rig::{self, BUF};

/// Where a test buffer sits, and so which path it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Whole cache lines, no IOMMU: in place.
    Direct,
    /// Sharing its first and last lines with neighbours, no IOMMU: bounced.
    Bounced,
    /// Whole cache lines behind an IOMMU: in place at an IOVA.
    Iommu,
}

/// A mapper over `m` with a SWIOTLB pool whose memory holds old data, and a non-coherent
/// device (behind a strict IOMMU domain for [`Path::Iommu`]).
fn mapper(m: &Machine, path: Path, controls: HazardControls) -> (DmaMapper<&Machine>, Device) {
    let dev = rig::device(m, 1, 64, false, true);
    let mut b = DmaMapper::builder(m)
        .swiotlb_backend(rig::dirty_swiotlb(m, 64))
        .hazard_controls(controls);
    if path == Path::Iommu {
        let (_, dma) = rig::iommu_on(m);
        let d = dma.create_domain(DomainConfig::STRICT).unwrap();
        dma.attach(&dev, d).unwrap();
        b = b.iommu(dma);
    }
    (b.build(), dev)
}

/// The `i`th test buffer for `path`: whole lines, or 8 bytes into its first line.
fn buffer_at(m: &Machine, path: Path, i: u64) -> (PhysAddr, u64) {
    let page = m.alloc_pages(1, 8 << 30).unwrap();
    let len = 256 + (i % 5) * 128;
    match path {
        Path::Direct | Path::Iommu => (page.add(512), len),
        Path::Bounced => (page.add(512 + 8), len - 24),
    }
}

/// A driver that maps each buffer once with `attrs`, runs three transfers on it, syncing
/// around each only when `driver_syncs`, and unmaps it with `attrs`. Returns the oracle's
/// judgement of every transfer and of the unmap.
fn recycling_driver(
    seed: u64,
    hazards: HazardConfig,
    path: Path,
    attrs: MapAttrs,
    driver_syncs: bool,
) -> OracleReport {
    let m = rig::machine(seed, hazards);
    let (mapper, dev) = mapper(&m, path, HazardControls::default());
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let dirs = [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ];
    for i in 0..24u64 {
        let dir = dirs[i as usize % 3];
        let (at, len) = buffer_at(&m, path, i);
        let buf = rig::buffer_with_neighbours(&m, &mut oracle, at, len);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, taken) = unsafe { mapper.map_attrs(&dev, at, len, dir, attrs) }.unwrap();
        let expected_bounce = path == Path::Bounced && dir.device_writes();
        assert_eq!(
            matches!(taken, MapPath::Bounced { .. }),
            expected_bounce,
            "{path:?} {dir:?}: {taken:?}"
        );
        for r in 0..3u8 {
            let to_device = || {
                if driver_syncs {
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { mapper.sync_for_device(&dev, dma, 0, len, dir) }.unwrap();
                }
            };
            let to_cpu = || {
                if driver_syncs {
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { mapper.sync_for_cpu(&dev, dma, 0, len, dir) }.unwrap();
                }
            };
            let seed = (i as u8).wrapping_mul(7).wrapping_add(r);
            rig::round(
                &m,
                &mut oracle,
                &dev,
                buf,
                dma,
                dir,
                seed,
                &to_device,
                &to_cpu,
            );
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_attrs(&dev, dma, len, dir, attrs) }.unwrap();
        oracle.check_transfer(&m, buf, BUF).unwrap();
    }
    oracle.take_report()
}

#[test]
fn skip_cpu_sync_mappings_with_the_drivers_own_syncs_are_clean_on_every_path() {
    for path in [Path::Direct, Path::Bounced, Path::Iommu] {
        let report = recycling_driver(
            41,
            HazardConfig::default(),
            path,
            MapAttrs::SKIP_CPU_SYNC,
            true,
        );
        assert!(report.is_clean(), "{path:?}: {report}");
        assert!(report.transfers > 0);
    }
}

#[test]
fn without_the_drivers_syncs_a_skip_cpu_sync_mapping_shows_stale_data() {
    // The control: one transfer per mapping and no driver sync at all. A plain map/unmap
    // pair does the maintenance and the copy back itself, so it is clean; with
    // SKIP_CPU_SYNC the same transfer goes wrong, so the attribute really skips them.
    for path in [Path::Direct, Path::Bounced, Path::Iommu] {
        let skipped = one_round_per_mapping(path, MapAttrs::SKIP_CPU_SYNC);
        assert!(skipped.wrong_bytes() > 0, "{path:?}: {skipped}");
        let plain = one_round_per_mapping(path, MapAttrs::NONE);
        assert!(plain.is_clean(), "{path:?}: {plain}");
    }
}

/// Maps, runs one transfer without any driver sync, unmaps — all with `attrs` — on a
/// cache that keeps its lines (so what the CPU sees is what maintenance left).
fn one_round_per_mapping(path: Path, attrs: MapAttrs) -> OracleReport {
    let m = rig::machine(43, HazardConfig::NONE);
    let (mapper, dev) = mapper(&m, path, HazardControls::default());
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    for (i, dir) in [
        Direction::ToDevice,
        Direction::FromDevice,
        Direction::Bidirectional,
    ]
    .into_iter()
    .enumerate()
    {
        let (at, len) = buffer_at(&m, path, i as u64);
        let buf = rig::buffer_with_neighbours(&m, &mut oracle, at, len);
        // The CPU's stores happen before the map, as in a single transfer.
        let data = rig::pattern(len as usize, i as u8);
        let mut scratch = vec![0; len as usize];
        m.cpu_read(at, &mut scratch).unwrap();
        if dir.device_reads() {
            m.cpu_write(at, &data, BUF).unwrap();
            oracle.cpu_stored(at, &data, BUF);
        }
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, _) = unsafe { mapper.map_attrs(&dev, at, len, dir, attrs) }.unwrap();
        m.grant(dev.id(), dma, len).unwrap();
        if dir.device_reads() {
            let got = m.device_read(dev.id(), dma, len).unwrap();
            oracle
                .check_device_read(at, &got.data, &got.owners, BUF)
                .unwrap();
        }
        let owner = dmakit_sim::Owner(500 + i as u32);
        if dir.device_writes() {
            let back = rig::pattern(len as usize, 200 + i as u8);
            m.device_write(dev.id(), dma, &back, owner).unwrap();
            oracle.device_wrote(at, &back, owner);
        }
        m.revoke(dev.id(), dma, len).unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_attrs(&dev, dma, len, dir, attrs) }.unwrap();
        oracle.check_transfer(&m, buf, owner).unwrap();
    }
    oracle.take_report()
}

/// Maps a 100-byte inbound buffer that shares its lines with `SKIP_CPU_SYNC` through a
/// pool whose memory holds an earlier user's data; the device reads the whole mapping
/// before writing anything. Returns the oracle's judgement of what it read.
fn device_reads_a_fresh_inbound_bounce(controls: HazardControls) -> OracleReport {
    let m = rig::machine(47, HazardConfig::default());
    let (mapper, dev) = mapper(&m, Path::Bounced, controls);
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let mut unfilled = 0;
    for i in 0..16u64 {
        let (at, _) = buffer_at(&m, Path::Bounced, i);
        let len = 100;
        rig::buffer_with_neighbours(&m, &mut oracle, at, len);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, path) = unsafe {
            mapper.map_attrs(
                &dev,
                at,
                len,
                Direction::FromDevice,
                MapAttrs::SKIP_CPU_SYNC,
            )
        }
        .unwrap();
        assert!(
            matches!(
                path,
                MapPath::Bounced {
                    reason: BounceReason::Misaligned,
                    ..
                }
            ),
            "{path:?}"
        );
        m.grant(dev.id(), dma, len).unwrap();
        let got = m.device_read(dev.id(), dma, len).unwrap();
        unfilled += got.owners.iter().filter(|&&o| o == rig::STALE).count();
        oracle
            .check_device_read(at, &got.data, &got.owners, BUF)
            .unwrap();
        m.revoke(dev.id(), dma, len).unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe {
            mapper.unmap_attrs(
                &dev,
                dma,
                len,
                Direction::FromDevice,
                MapAttrs::SKIP_CPU_SYNC,
            )
        }
        .unwrap();
    }
    assert_eq!(
        unfilled > 0,
        controls.skip_inbound_fill,
        "old slot bytes reach the device exactly when the fill is off"
    );
    oracle.take_report()
}

#[test]
fn a_skip_cpu_sync_bounce_is_still_filled_from_the_buffer() {
    let report = device_reads_a_fresh_inbound_bounce(HazardControls::default());
    assert!(report.is_clean(), "{report}");
}

#[test]
fn without_the_fill_a_skip_cpu_sync_bounce_shows_the_slots_old_contents() {
    let report = device_reads_a_fresh_inbound_bounce(HazardControls {
        skip_inbound_fill: true,
        ..Default::default()
    });
    assert!(report.wrong_bytes() > 0, "{report}");
}

#[test]
fn need_sync_answers_for_coherent_non_coherent_and_bounced_mappings() {
    let m = rig::machine(53, HazardConfig::NONE);
    let (_, iommu) = rig::iommu_on(&m);
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(rig::dirty_swiotlb(&m, 64))
        .iommu(iommu.clone())
        .build();
    let coherent = rig::device(&m, 1, 64, true, true);
    let non_coherent = rig::device(&m, 2, 64, false, true);
    // A coherent device that reaches only the low 16 MiB: buffers above are bounced.
    let narrow = rig::device(&m, 3, 24, true, true);
    let behind = rig::device(&m, 4, 64, true, true);
    let untrusted = rig::device(&m, 5, 64, true, false);
    for d in [&behind, &untrusted] {
        let dom = iommu.create_domain(DomainConfig::STRICT).unwrap();
        iommu.attach(d, dom).unwrap();
    }
    let high = m.alloc_pages_between(1, 1 << 32, u64::MAX).unwrap();
    let buf = high.add(256);
    let len = 512;
    let cases: [(&Device, u64, bool, &str); 5] = [
        (&coherent, len, false, "coherent, in place"),
        (&non_coherent, len, true, "non-coherent, in place"),
        (&narrow, len, true, "coherent, bounced above its mask"),
        (&behind, len, false, "coherent, in place behind the IOMMU"),
        (&untrusted, 40, true, "untrusted, bounced behind the IOMMU"),
    ];
    for (d, len, want, what) in cases {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, path) = unsafe { mapper.map_traced(d, buf, len, Direction::FromDevice) }.unwrap();
        assert_eq!(mapper.need_sync(d, dma), want, "{what}: {path:?}");
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(d, dma, len, Direction::FromDevice) }.unwrap();
    }
    // Behind the IOMMU, an address that is no live mapping is answered conservatively.
    assert!(mapper.need_sync(&behind, dmakit::DmaAddr::new(0x1234_5000)));
}
