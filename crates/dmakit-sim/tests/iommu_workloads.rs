//! Randomised transfers through the IOMMU path under the unchanged harness: in place and
//! bounced, strict and lazy, every granule, trusted and untrusted devices. The oracle finds
//! no corrupted, stale or leaked byte and the machine no device fault; with alignment
//! bouncing switched off the same workload corrupts, so the check can fail.

mod iommu_rig;

use dmakit::{AlignmentPolicy, Device, DeviceId, DmaMapper, DomainConfig, FlushMode};
use dmakit_sim::{run_workload, Granule, HazardConfig, WorkloadConfig, WorkloadOutcome};
use iommu_rig::rig;

fn run(
    seed: u64,
    granule: Granule,
    cfg: DomainConfig,
    dev: Device,
    policy: AlignmentPolicy,
    transfers: u64,
) -> (WorkloadOutcome, dmakit_sim::IommuStats, u64) {
    let r = rig(seed, granule, HazardConfig::default());
    let d = r.domain(cfg);
    r.dma.attach(&dev, d).unwrap();
    let pool = r.swiotlb(256);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .policy(policy)
        .build();
    let out = run_workload(
        &r.m,
        &mapper,
        &dev,
        WorkloadConfig {
            transfers,
            seed: seed + 1,
            second_round_chance: 0.3,
            max_len: 3000,
            // Buffers above 4 GiB (the bounce pool is below).
            min_addr: 4 << 30,
            max_addr: (8 << 30) - 1,
            ..WorkloadConfig::default()
        },
    )
    .unwrap();
    r.dma.flush_queues(0);
    // The mapper's statistics see IOMMU mappings like any other: every successful mapping
    // counted once, in place or bounced.
    let t = mapper.stats().total();
    assert_eq!(t.direct + t.bounces_total(), t.mappings_total());
    assert!(t.mappings_total() >= transfers - out.map_errors);
    let live = r.dma.domain(d).unwrap().stats().live_mappings as u64;
    assert_eq!(live, 0, "every mapping was unmapped");
    assert!(r.iommu.faults().is_empty(), "{:?}", r.iommu.faults());
    (out, r.iommu.stats(), pool.usage().high_water)
}

fn nc(id: u32) -> Device {
    Device::builder(DeviceId(id), "nc").build().unwrap()
}

#[test]
fn strict_trusted_non_coherent_is_clean_direct_and_bounced() {
    let (out, iommu, bounce_hw) = run(
        11,
        Granule::K4,
        DomainConfig::STRICT,
        nc(1),
        AlignmentPolicy::Exact,
        20_000,
    );
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.report.faults, 0);
    assert!(out.report.device_read_bytes > 0);
    // Both kinds of mapping happened: misaligned inbound ones bounced, the rest in place.
    assert!(bounce_hw > 0);
    assert!(iommu.maps >= 20_000 && iommu.unmaps == iommu.maps);
    assert!(iommu.range_invalidations >= iommu.unmaps);
    assert!(out.machine.speculative_fills > 0 && out.machine.hazard_dirty_evictions > 0);
}

#[test]
fn lazy_trusted_non_coherent_is_clean() {
    let (out, iommu, _) = run(
        13,
        Granule::K4,
        DomainConfig {
            mode: FlushMode::Lazy { queue: 64 },
            ..DomainConfig::STRICT
        },
        nc(1),
        AlignmentPolicy::Exact,
        20_000,
    );
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    assert!(out.report.is_clean(), "{}", out.report);
    // Batched: far fewer invalidations than unmaps, none per range.
    assert_eq!(iommu.range_invalidations, 0);
    assert!(iommu.domain_invalidations > 0);
    assert!(iommu.domain_invalidations <= iommu.unmaps / 64 + 1);
}

#[test]
fn untrusted_devices_are_clean_with_every_granule() {
    for (i, g) in [Granule::K4, Granule::K16, Granule::K64]
        .into_iter()
        .enumerate()
    {
        let dev = Device::builder(DeviceId(2), "ext")
            .trusted(false)
            .build()
            .unwrap();
        let (out, iommu, bounce_hw) = run(
            20 + i as u64,
            g,
            DomainConfig::LAZY,
            dev,
            AlignmentPolicy::Exact,
            5_000,
        );
        assert_eq!(out.map_errors, 0, "{g:?}: {:?}", out.first_map_error);
        assert!(out.report.is_clean(), "{g:?}: {}", out.report);
        assert!(bounce_hw >= g.bytes(), "{g:?}: bounces own whole granules");
        // Untrusted unmaps are strict even in a lazy domain.
        assert!(iommu.range_invalidations >= iommu.unmaps, "{g:?}");
    }
}

#[test]
fn coherent_devices_with_large_granules_are_clean() {
    for (i, g) in [Granule::K16, Granule::K64].into_iter().enumerate() {
        let dev = Device::builder(DeviceId(3), "coh")
            .coherent(true)
            .build()
            .unwrap();
        let (out, _, bounce_hw) = run(
            30 + i as u64,
            g,
            DomainConfig::STRICT,
            dev,
            AlignmentPolicy::Exact,
            5_000,
        );
        assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
        assert!(out.report.is_clean(), "{g:?}: {}", out.report);
        assert_eq!(bounce_hw, 0, "a trusted coherent device never bounces");
    }
}

#[test]
fn control_without_alignment_bounces_the_iommu_path_corrupts() {
    // Non-coherent devices behind an IOMMU need the same exact line rule as the direct path:
    // the IOMMU translates addresses, it does not make a shared cache line safe.
    let (out, _, bounce_hw) = run(
        41,
        Granule::K4,
        DomainConfig::STRICT,
        nc(1),
        AlignmentPolicy::Never,
        5_000,
    );
    assert_eq!(bounce_hw, 0);
    assert!(out.report.corrupted_bytes > 0, "{}", out.report);
}
