//! Speed of the machine model: simulated 64-byte transfers per second, single thread, with
//! the cache hazards and the oracle on.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dmakit::{Device, DeviceId, DmaMapper};
use dmakit_sim::workload::Harness;
use dmakit_sim::{HazardConfig, Machine, MachineConfig, Placement, WorkloadConfig};

fn transfers(c: &mut Criterion) {
    let machine = Machine::new(MachineConfig {
        seed: 1,
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .expect("machine");
    let mapper = DmaMapper::builder(&machine).build();
    let dev = Device::builder(DeviceId(1), "bench")
        .build()
        .expect("device");
    let cfg = WorkloadConfig {
        transfers: 0,
        seed: 2,
        min_len: 64,
        max_len: 64,
        placements: vec![Placement::LineAligned],
        ..WorkloadConfig::default()
    };
    let mut harness = Harness::new(&machine, &mapper, &dev, cfg).expect("harness");
    let mut g = c.benchmark_group("model");
    g.throughput(Throughput::Elements(1));
    g.bench_function("transfer_64B_oracle", |b| {
        b.iter(|| harness.run_one().expect("transfer"))
    });
    g.finish();
    let report = harness.oracle().report();
    assert_eq!(report.wrong_bytes(), 0, "{report}");
}

criterion_group!(benches, transfers);
criterion_main!(benches);
