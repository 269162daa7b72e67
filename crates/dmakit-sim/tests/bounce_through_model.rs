//! The routing layer plugs in under the unchanged harness: shared-line inbound buffers
//! bounced through a SWIOTLB pool survive the misbehaving cache.

use std::sync::Arc;

use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{Device, DeviceId, DmaMapper, PageAllocator};
use dmakit_sim::{run_workload, HazardConfig, Machine, MachineConfig, WorkloadConfig};

#[test]
fn shared_lines_bounced_through_swiotlb_are_clean() {
    let m = Machine::new(MachineConfig {
        seed: 71,
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .unwrap();
    let pages = 64;
    let base = m.alloc_pages(pages, u32::MAX as u64).unwrap();
    let backend = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    backend.add_region(base, pages * 4096).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(Arc::new(backend))
        .build();
    let dev = Device::builder(DeviceId(1), "nc").build().unwrap();
    let out = run_workload(
        &m,
        &mapper,
        &dev,
        WorkloadConfig {
            transfers: 20_000,
            seed: 72,
            second_round_chance: 0.3,
            ..WorkloadConfig::default()
        },
    )
    .unwrap();
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    assert!(out.report.is_clean(), "{}", out.report);
    assert!(out.machine.speculative_fills > 0);
}

fn short_inbound_second_rounds(controls: dmakit::HazardControls) -> dmakit_sim::OracleReport {
    let m = Machine::new(MachineConfig {
        seed: 73,
        hazards: HazardConfig::NONE,
        ..MachineConfig::default()
    })
    .unwrap();
    let base = m.alloc_pages(64, u32::MAX as u64).unwrap();
    let backend = SwiotlbBounce::new(PoolConfig::builder().build().unwrap(), None, 0, u64::MAX);
    backend.add_region(base, 64 * 4096).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(Arc::new(backend))
        .hazard_controls(controls)
        .build();
    let dev = Device::builder(DeviceId(1), "nc").build().unwrap();
    let out = run_workload(
        &m,
        &mapper,
        &dev,
        WorkloadConfig {
            transfers: 2_000,
            seed: 74,
            directions: vec![dmakit::Direction::FromDevice],
            placements: vec![dmakit_sim::Placement::Packed],
            second_round_chance: 1.0,
            short_write_chance: 1.0,
            rewrite_inbound_between_rounds: true,
            ..WorkloadConfig::default()
        },
    )
    .unwrap();
    assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
    out.report
}

#[test]
fn cpu_writes_to_an_inbound_buffer_between_rounds_survive_short_device_writes() {
    // sync_for_device refills an inbound bounce from the buffer, so bytes the device does
    // not write in the second round keep the CPU's latest value.
    let report = short_inbound_second_rounds(dmakit::HazardControls::default());
    assert!(report.is_clean(), "{report}");
}

#[test]
fn without_the_inbound_fill_the_model_sees_old_bounce_bytes() {
    // The control: with the fill off, the unwritten bytes come back from whatever the
    // bounce held — the buffer's own older data, or an earlier user's.
    let report = short_inbound_second_rounds(dmakit::HazardControls {
        skip_inbound_fill: true,
        ..Default::default()
    });
    assert!(report.wrong_bytes() > 0, "{report}");
}
