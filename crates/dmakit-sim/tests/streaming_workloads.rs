//! The alignment-safe streaming path under randomised workloads, judged by the oracle:
//! exact bouncing is clean through both pool backends, and the model shows the failures of
//! the controls (`Never`, `SizeOnly`, no inbound fill).
//!
//! Transfer counts scale with `DMAKIT_TRANSFERS` (default 100,000 small transfers per
//! backend, so CI runs over 200,000); set it to millions to soak by hand.

mod testbed;

use dmakit::stats::DeviceStats;
use dmakit::HazardControls;
use dmakit::{AlignmentPolicy, BouncePool, BounceReason, Direction, DmaMapper};
use dmakit_sim::{run_workload, Placement, WorkloadConfig, WorkloadOutcome};
use testbed::*;

fn transfers(default: u64) -> u64 {
    std::env::var("DMAKIT_TRANSFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small transfers (1 B – 4 KiB, log-uniform): the bulk of real driver traffic.
fn small(n: u64, seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        transfers: n,
        seed,
        min_len: 1,
        max_len: 4096,
        log_sizes: true,
        slots: 16,
        short_write_chance: 0.3,
        second_round_chance: 0.1,
        ..WorkloadConfig::default()
    }
}

/// Large transfers (4 KiB – 256 KiB), fewer of them.
fn large(n: u64, seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        transfers: n,
        seed,
        min_len: 4096,
        max_len: 256 * 1024,
        log_sizes: true,
        slots: 4,
        device_chunk: (512, 8192),
        ..WorkloadConfig::default()
    }
}

fn run(
    backend: BouncePool,
    policy: AlignmentPolicy,
    cfg: WorkloadConfig,
    controls: HazardControls,
) -> (WorkloadOutcome, DeviceStats) {
    let m = machine(cfg.seed ^ 0x5eed);
    let dev = device(1, backend);
    let mapper = match backend {
        BouncePool::Swiotlb => DmaMapper::builder(&m).swiotlb_backend(swiotlb(&m, 8 << 20, None)),
        BouncePool::Coherent => DmaMapper::builder(&m).coherent_backend(coherent(&m, 8 << 20)),
    }
    .policy(policy)
    .hazard_controls(controls)
    .build();
    let out = run_workload(&m, &mapper, &dev, cfg).unwrap();
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    let total = mapper.stats().total();
    assert_eq!(total.direct + total.bounces_total(), total.mappings_total());
    (out, total)
}

fn assert_clean_and_hazardous((out, stats): &(WorkloadOutcome, DeviceStats)) {
    assert!(out.report.is_clean(), "{}", out.report);
    assert!(out.machine.hazard_dirty_evictions > 0 && out.machine.speculative_fills > 0);
    // Both paths were exercised: shared-line inbound buffers bounced, the rest went direct.
    assert!(
        stats.bounces(BounceReason::Misaligned) > 0 && stats.direct > 0,
        "{stats:?}"
    );
}

#[test]
fn exact_is_clean_through_swiotlb() {
    let n = transfers(100_000);
    let small_run = run(
        BouncePool::Swiotlb,
        AlignmentPolicy::Exact,
        small(n, 1),
        HazardControls::default(),
    );
    assert!(small_run.0.report.transfers >= n);
    assert_clean_and_hazardous(&small_run);
    let large_run = run(
        BouncePool::Swiotlb,
        AlignmentPolicy::Exact,
        large(n / 50, 2),
        HazardControls::default(),
    );
    assert_clean_and_hazardous(&large_run);
}

#[test]
fn exact_is_clean_through_the_coherent_pool() {
    let n = transfers(100_000);
    let small_run = run(
        BouncePool::Coherent,
        AlignmentPolicy::Exact,
        small(n, 3),
        HazardControls::default(),
    );
    assert!(small_run.0.report.transfers >= n);
    assert_clean_and_hazardous(&small_run);
    let large_run = run(
        BouncePool::Coherent,
        AlignmentPolicy::Exact,
        large(n / 50, 4),
        HazardControls::default(),
    );
    assert_clean_and_hazardous(&large_run);
}

#[test]
fn never_bouncing_corrupts_shared_lines() {
    for backend in [BouncePool::Swiotlb, BouncePool::Coherent] {
        let (out, stats) = run(
            backend,
            AlignmentPolicy::Never,
            small(20_000, 5),
            HazardControls::default(),
        );
        assert!(out.report.corrupted_bytes > 0, "{}", out.report);
        assert_eq!(stats.bounces(BounceReason::Misaligned), 0);
    }
}

/// A buffer inside a larger structure at a non-line offset, 100 B – 2 KiB: the size-only
/// heuristic lets most through, the exact rule bounces them all.
fn in_struct(seed: u64) -> WorkloadConfig {
    WorkloadConfig {
        placements: vec![Placement::StructField],
        directions: vec![Direction::FromDevice, Direction::Bidirectional],
        min_len: 100,
        max_len: 2048,
        ..small(20_000, seed)
    }
}

#[test]
fn size_only_corrupts_a_buffer_inside_a_struct_exact_does_not() {
    let (size_only, so) = run(
        BouncePool::Swiotlb,
        AlignmentPolicy::SizeOnly,
        in_struct(6),
        HazardControls::default(),
    );
    assert!(size_only.report.corrupted_bytes > 0, "{}", size_only.report);
    let (exact, ex) = run(
        BouncePool::Swiotlb,
        AlignmentPolicy::Exact,
        in_struct(6),
        HazardControls::default(),
    );
    assert!(exact.report.is_clean(), "{}", exact.report);
    // Every inbound in-struct buffer shares a line: exact bounces all, size-only some.
    assert_eq!(ex.direct, 0, "{ex:?}");
    assert!(so.direct > 0 && so.bounces_total() > 0, "{so:?}");
}

#[test]
fn size_only_is_enough_for_standalone_small_objects() {
    // The case Linux's heuristic was built for: packed kmalloc objects smaller than two
    // lines whose size class is not line-sized bounce, and then they are safe.
    let cfg = WorkloadConfig {
        placements: vec![Placement::Packed],
        min_len: 1,
        max_len: 96,
        ..small(20_000, 7)
    };
    let (out, _) = run(
        BouncePool::Swiotlb,
        AlignmentPolicy::SizeOnly,
        cfg,
        HazardControls::default(),
    );
    assert!(out.report.is_clean(), "{}", out.report);
}

#[test]
fn short_inbound_writes_never_show_old_bounce_data() {
    let cfg = |seed| WorkloadConfig {
        directions: vec![Direction::FromDevice],
        short_write_chance: 1.0,
        second_round_chance: 0.0,
        realloc_chance: 0.9,
        ..small(20_000, seed)
    };
    for backend in [BouncePool::Swiotlb, BouncePool::Coherent] {
        let (out, _) = run(
            backend,
            AlignmentPolicy::Exact,
            cfg(8),
            HazardControls::default(),
        );
        assert!(out.report.is_clean(), "{}", out.report);
        // The control: without the fill, bytes the device did not write come from an
        // earlier user of the bounce memory — another owner's data.
        let (out, _) = run(
            backend,
            AlignmentPolicy::Exact,
            cfg(8),
            HazardControls {
                skip_inbound_fill: true,
                ..Default::default()
            },
        );
        assert!(out.report.leaked_bytes > 0, "{backend:?}: {}", out.report);
    }
}

#[test]
fn nvme_style_min_align_mask_is_clean() {
    let m = machine(9);
    let dev = dmakit::Device::builder(dmakit::DeviceId(2), "nvme")
        .cache_line(LINE)
        .dma_bits(32)
        .min_align_mask(0xfff)
        .build()
        .unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(swiotlb(&m, 8 << 20, None))
        .build();
    let out = run_workload(&m, &mapper, &dev, small(20_000, 9)).unwrap();
    assert_eq!(out.map_errors, 0);
    assert!(out.report.is_clean(), "{}", out.report);
}
