//! The model judges the direct path: clean where it must be, and able to fail.

use dmakit::{AlignmentPolicy, Device, DeviceId, Direction, DmaMapper};
use dmakit_sim::{
    run_workload, HazardConfig, Machine, MachineConfig, MaintenanceFaults, Placement,
    WorkloadConfig, WorkloadOutcome,
};

fn machine(seed: u64, hazards: HazardConfig) -> Machine {
    Machine::new(MachineConfig {
        seed,
        hazards,
        ..MachineConfig::default()
    })
    .unwrap()
}

fn noncoherent() -> Device {
    Device::builder(DeviceId(1), "nc").build().unwrap()
}

fn run(m: &Machine, policy: AlignmentPolicy, dev: &Device, cfg: WorkloadConfig) -> WorkloadOutcome {
    let mapper = DmaMapper::builder(m).policy(policy).build();
    run_workload(m, &mapper, dev, cfg).unwrap()
}

#[test]
fn line_aligned_buffers_survive_a_misbehaving_cache() {
    let m = machine(11, HazardConfig::default());
    let out = run(
        &m,
        AlignmentPolicy::Exact,
        &noncoherent(),
        WorkloadConfig {
            transfers: 100_000,
            seed: 12,
            min_len: 1,
            max_len: 512,
            placements: vec![Placement::LineAligned],
            ..WorkloadConfig::default()
        },
    );
    let r = &out.report;
    assert!(r.transfers >= 100_000, "{r}");
    assert_eq!(out.map_errors, 0);
    assert_eq!(
        (r.corrupted_bytes, r.stale_bytes, r.leaked_bytes, r.faults),
        (0, 0, 0, 0),
        "{r}"
    );
    assert!(r.checked_bytes > 0 && r.device_read_bytes > 0);
    // The hazards really happened, dirty evictions included.
    let s = out.machine;
    assert!(s.hazard_evictions > 10_000, "{s:?}");
    assert!(s.hazard_dirty_evictions > 0, "{s:?}");
    assert!(s.speculative_fills > 10_000, "{s:?}");
    assert!(s.cache.capacity_evictions > 0, "{s:?}");
}

#[test]
fn shared_lines_are_corrupted_on_the_direct_path() {
    let m = machine(21, HazardConfig::default());
    let out = run(
        &m,
        AlignmentPolicy::Never,
        &noncoherent(),
        WorkloadConfig {
            transfers: 3_000,
            seed: 22,
            directions: vec![Direction::FromDevice, Direction::Bidirectional],
            placements: vec![Placement::Packed, Placement::StructField],
            max_len: 256,
            ..WorkloadConfig::default()
        },
    );
    let r = &out.report;
    assert_eq!(out.map_errors, 0);
    assert!(r.corrupted_bytes > 0, "{r}");
    assert!(
        r.details
            .iter()
            .any(|d| d.kind == dmakit_sim::ErrorKind::Corrupted),
        "{r}"
    );
}

#[test]
fn shared_lines_without_a_pool_are_refused_not_corrupted() {
    // The exact policy wants to bounce them; with no pool the mapping fails cleanly.
    let m = machine(23, HazardConfig::default());
    let out = run(
        &m,
        AlignmentPolicy::Exact,
        &noncoherent(),
        WorkloadConfig {
            transfers: 2_000,
            seed: 24,
            directions: vec![Direction::FromDevice, Direction::Bidirectional],
            placements: vec![Placement::Packed, Placement::StructField],
            max_len: 256,
            ..WorkloadConfig::default()
        },
    );
    assert!(out.map_errors > 0);
    assert!(matches!(
        out.first_map_error,
        Some(dmakit::DmaError::NoBouncePool { .. })
    ));
    assert_eq!(out.report.wrong_bytes(), 0, "{}", out.report);
}

fn missing_sync_for_cpu(hazards: HazardConfig) -> WorkloadOutcome {
    let m = machine(31, hazards);
    run(
        &m,
        AlignmentPolicy::Exact,
        &noncoherent(),
        WorkloadConfig {
            transfers: 3_000,
            seed: 32,
            directions: vec![Direction::FromDevice],
            placements: vec![Placement::LineAligned],
            skip_sync_for_cpu: true,
            short_write_chance: 0.0,
            second_round_chance: 0.0,
            ..WorkloadConfig::default()
        },
    )
}

#[test]
fn missing_sync_for_cpu_is_stale_data_when_the_cache_speculates() {
    let quiet = missing_sync_for_cpu(HazardConfig::NONE);
    assert_eq!(quiet.report.wrong_bytes(), 0, "{}", quiet.report);
    let out = missing_sync_for_cpu(HazardConfig {
        evict_rate: 0.0,
        speculate_rate: 0.3,
        window: 16,
    });
    let r = &out.report;
    assert!(r.stale_bytes > 0, "{r}");
    assert_eq!(r.device_read_stale_bytes, 0);
    assert_eq!((r.corrupted_bytes, r.leaked_bytes), (0, 0), "{r}");
}

fn to_device(drop: MaintenanceFaults) -> WorkloadOutcome {
    let m = machine(41, HazardConfig::default());
    run(
        &m,
        AlignmentPolicy::Exact,
        &noncoherent(),
        WorkloadConfig {
            transfers: 2_000,
            seed: 42,
            directions: vec![Direction::ToDevice],
            placements: vec![Placement::LineAligned],
            drop_maintenance: drop,
            ..WorkloadConfig::default()
        },
    )
}

#[test]
fn missing_clean_before_to_device_is_the_device_reading_stale_ram() {
    let ok = to_device(MaintenanceFaults::NONE);
    assert_eq!(ok.report.wrong_bytes(), 0, "{}", ok.report);
    let out = to_device(MaintenanceFaults {
        drop_clean: true,
        ..MaintenanceFaults::NONE
    });
    let r = &out.report;
    assert!(out.machine.dropped_maintenance > 0);
    assert!(r.device_read_stale_bytes > 0, "{r}");
    assert!(r
        .details
        .iter()
        .any(|d| d.site == dmakit_sim::ErrorSite::DeviceRead
            && d.kind == dmakit_sim::ErrorKind::Stale));
}

#[test]
fn coherent_device_needs_no_maintenance() {
    let m = machine(51, HazardConfig::default());
    let dev = Device::builder(DeviceId(2), "coherent")
        .coherent(true)
        .build()
        .unwrap();
    let out = run(
        &m,
        AlignmentPolicy::Exact,
        &dev,
        WorkloadConfig {
            transfers: 20_000,
            seed: 52,
            drop_maintenance: MaintenanceFaults::ALL,
            ..WorkloadConfig::default()
        },
    );
    assert_eq!(out.map_errors, 0);
    assert!(out.report.is_clean(), "{}", out.report);
    assert!(out.machine.speculative_fills > 0 && out.machine.hazard_dirty_evictions > 0);
}

#[test]
fn a_non_coherent_device_with_all_maintenance_dropped_fails() {
    // The same workload as above on a non-coherent device: the model must notice.
    let m = machine(51, HazardConfig::default());
    let out = run(
        &m,
        AlignmentPolicy::Exact,
        &noncoherent(),
        WorkloadConfig {
            transfers: 2_000,
            seed: 52,
            placements: vec![Placement::LineAligned],
            drop_maintenance: MaintenanceFaults::ALL,
            ..WorkloadConfig::default()
        },
    );
    assert!(out.report.wrong_bytes() > 0, "{}", out.report);
}

fn determinism_run(machine_seed: u64, workload_seed: u64) -> WorkloadOutcome {
    let m = machine(machine_seed, HazardConfig::default());
    run(
        &m,
        AlignmentPolicy::Never,
        &noncoherent(),
        WorkloadConfig {
            transfers: 2_000,
            seed: workload_seed,
            ..WorkloadConfig::default()
        },
    )
}

#[test]
fn same_seed_same_run_different_seed_different_events() {
    let a = determinism_run(61, 62);
    let b = determinism_run(61, 62);
    assert_eq!(a, b);
    assert!(
        a.report.wrong_bytes() > 0,
        "a run with errors, so the reports say something"
    );
    let c = determinism_run(63, 62);
    assert_ne!(a.machine.event_hash, c.machine.event_hash);
    let d = determinism_run(61, 64);
    assert_ne!(a.machine.event_hash, d.machine.event_hash);
    assert_ne!(a.report, d.report);
}

#[test]
fn every_line_size_behaves() {
    for line in [32u64, 64, 128] {
        let m = Machine::new(MachineConfig {
            seed: line,
            cache: dmakit_sim::CacheConfig {
                line_size: line,
                capacity: 16 * 1024,
                ways: 4,
            },
            ..MachineConfig::default()
        })
        .unwrap();
        let dev = Device::builder(DeviceId(1), "nc")
            .cache_line(line)
            .build()
            .unwrap();
        let ok = run(
            &m,
            AlignmentPolicy::Exact,
            &dev,
            WorkloadConfig {
                transfers: 5_000,
                seed: line + 1,
                placements: vec![Placement::LineAligned],
                ..WorkloadConfig::default()
            },
        );
        assert!(ok.report.is_clean(), "line {line}: {}", ok.report);
        assert_eq!(ok.map_errors, 0);
        let bad = run(
            &m,
            AlignmentPolicy::Never,
            &dev,
            WorkloadConfig {
                transfers: 2_000,
                seed: line + 2,
                placements: vec![Placement::Packed],
                directions: vec![Direction::FromDevice],
                ..WorkloadConfig::default()
            },
        );
        assert!(
            bad.report.corrupted_bytes > 0,
            "line {line}: {}",
            bad.report
        );
    }
}

#[test]
fn bad_workload_configurations_are_errors() {
    let m = machine(1, HazardConfig::NONE);
    let mapper = DmaMapper::builder(&m).build();
    let dev = noncoherent();
    let bad = |cfg: WorkloadConfig| run_workload(&m, &mapper, &dev, cfg).is_err();
    assert!(bad(WorkloadConfig {
        directions: vec![],
        ..WorkloadConfig::default()
    }));
    assert!(bad(WorkloadConfig {
        min_len: 0,
        ..WorkloadConfig::default()
    }));
    assert!(bad(WorkloadConfig {
        min_len: 10,
        max_len: 5,
        ..WorkloadConfig::default()
    }));
    assert!(bad(WorkloadConfig {
        device_chunk: (0, 8),
        ..WorkloadConfig::default()
    }));
    // No RAM in the window asked for.
    assert!(bad(WorkloadConfig {
        min_addr: 1 << 40,
        max_addr: u64::MAX,
        ..WorkloadConfig::default()
    }));
}
