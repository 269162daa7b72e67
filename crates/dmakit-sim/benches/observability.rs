//! What observability costs on the map path: map+unmap with neither statistics nor the
//! debug checker, with statistics only (the default), and with both — for a direct and for
//! a bounced mapping, over real memory, in the same run.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb_backend::SwiotlbBounce;
use dmakit::{Device, DeviceId, Direction, DmaMapper, PhysAddr};
use dmakit_sim::host::{HostMaintenance, HostPlatform};

const MIB: u64 = 1 << 20;

fn mapper(host: &Arc<HostPlatform>) -> DmaMapper<Arc<HostPlatform>> {
    let pool = SwiotlbBounce::new(
        PoolConfig::builder().build().expect("config"),
        None,
        0,
        u64::MAX,
    );
    pool.add_region(PhysAddr::new(0), 16 * MIB).expect("region");
    DmaMapper::new(host.clone()).with_swiotlb(Arc::new(pool))
}

fn observability(c: &mut Criterion) {
    let host =
        Arc::new(HostPlatform::new(0, 32 * MIB, 1, 64, HostMaintenance::None).expect("arena"));
    let dev = Device::builder(DeviceId(1), "bench")
        .cache_line(64)
        .build()
        .expect("device");
    let variants = [
        ("neither", mapper(&host).without_statistics()),
        ("stats", mapper(&host)),
        ("stats+checker", mapper(&host).with_debug_checker()),
    ];
    let mut g = c.benchmark_group("observability");
    for (name, m) in &variants {
        for (kind, buf) in [
            ("direct", PhysAddr::new(16 * MIB)),
            ("bounced", PhysAddr::new(16 * MIB + 8)),
        ] {
            g.bench_function(format!("{kind}/{name}"), |b| {
                b.iter(|| {
                    let dma = m
                        .map(&dev, black_box(buf), 64, Direction::FromDevice)
                        .unwrap();
                    m.unmap(&dev, dma, 64, Direction::FromDevice).unwrap();
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = observability
}
criterion_main!(benches);
