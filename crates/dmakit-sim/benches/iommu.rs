//! IOMMU path benchmarks over real memory (the host platform) with the model's page tables
//! in software.
//!
//! - `iommu_map_unmap/{strict,lazy}/{4K,1M}`: one map+unmap through `DmaMapper` of a
//!   page-aligned buffer for a coherent device, single thread; strict invalidates every
//!   unmap, lazy batches 256 unmaps per invalidation; the model's invalidation is a few
//!   hash-map removals, so `..._inv1us` repeats the runs with every invalidation taking
//!   1 µs, the order of a real IOMMU's command-queue round trip;
//! - `iova_alloc_free/{10k,1M}`: one allocation and free of a 1-page IOVA with that many
//!   ranges live (the common case: served by the range caches);
//! - `iova_tree_alloc_free/{10k,1M}`: the same for a 2-page range that always goes to the
//!   tree (range caches off for that size), with that many ranges live and the free space
//!   fragmented into as many holes.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use dmakit::iommu::{IovaAllocator, IovaConfig, IovaRange};
use dmakit::{Device, DeviceId, Direction, DmaMapper, DomainConfig, IommuDma, PhysAddr};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::{SimIommu, SimIommuConfig};

const MIB: u64 = 1 << 20;

fn mapper(cfg: DomainConfig, latency: Duration) -> (DmaMapper<Arc<HostPlatform>>, Device) {
    let host =
        Arc::new(HostPlatform::new(0, 8 * MIB, 1, 64, HostMaintenance::None).expect("arena"));
    let iommu = SimIommu::new(SimIommuConfig {
        invalidation_latency: latency,
        ..SimIommuConfig::default()
    })
    .expect("iommu");
    let dma = Arc::new(IommuDma::new(Arc::new(iommu), 1).expect("iommu layer"));
    let dev = Device::builder(DeviceId(1), "bench")
        .coherent(true)
        .build()
        .expect("device");
    let d = dma.create_domain(cfg).expect("domain");
    dma.attach(&dev, d).expect("attach");
    (DmaMapper::builder(host).iommu(dma).build(), dev)
}

fn map_unmap(c: &mut Criterion) {
    let mut g = c.benchmark_group("iommu_map_unmap");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let modes = [
        ("strict", DomainConfig::STRICT),
        ("lazy", DomainConfig::LAZY),
    ];
    let latencies = [("", Duration::ZERO), ("_inv1us", Duration::from_micros(1))];
    for (suffix, latency) in latencies {
        for (mode, cfg) in modes {
            for (name, len) in [("4K", 4096u64), ("1M", MIB)] {
                let (m, dev) = mapper(cfg, latency);
                let buf = PhysAddr::new(2 * MIB);
                g.bench_function(format!("{mode}{suffix}/{name}"), |b| {
                    b.iter(|| {
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        let dma =
                            unsafe { m.map(&dev, black_box(buf), len, Direction::Bidirectional) }
                                .expect("map");
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { m.unmap(&dev, dma, len, Direction::Bidirectional) }
                            .expect("unmap");
                    })
                });
            }
        }
    }
    g.finish();
}

/// An allocator over a 48-bit space of 4 KiB pages with `live` ranges of one page live.
/// With `holes`, every other allocated page is freed back to the tree, so the free space is
/// fragmented into `live` holes.
fn populated(live: usize, rcache_max_order: u32, holes: bool) -> (IovaAllocator, Vec<IovaRange>) {
    let a = IovaAllocator::new(IovaConfig {
        rcache_max_order,
        max_live: 2 * live,
        ..IovaConfig::new(1, (1 << 36) - 1, 1)
    })
    .expect("allocator");
    let n = if holes { 2 * live } else { live };
    let mut v: Vec<IovaRange> = (0..n)
        .map(|_| a.alloc(1, u64::MAX, 0).expect("room"))
        .collect();
    if holes {
        let mut keep = Vec::with_capacity(live);
        for (i, r) in v.drain(..).enumerate() {
            if i % 2 == 0 {
                a.free(r, 0).expect("free");
            } else {
                keep.push(r);
            }
        }
        a.flush_caches();
        v = keep;
    }
    (a, v)
}

fn iova(c: &mut Criterion) {
    let mut g = c.benchmark_group("iova_alloc_free");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, live) in [("10k", 10_000usize), ("1M", 1_000_000)] {
        let (a, v) = populated(live, 9, false);
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = a.alloc(black_box(1), u64::MAX, 0).expect("room");
                a.free(r, 0).expect("free");
            })
        });
        assert_eq!(v.len(), live);
    }
    g.finish();
    let mut g = c.benchmark_group("iova_tree_alloc_free");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, live) in [("10k", 10_000usize), ("1M", 1_000_000)] {
        let (a, v) = populated(live, 0, true);
        assert!(a.stats().tree_free_ranges >= live);
        g.bench_function(name, |b| {
            b.iter(|| {
                let r = a.alloc(black_box(2), u64::MAX, 0).expect("room");
                a.free(r, 0).expect("free");
            })
        });
        assert_eq!(v.len(), live);
    }
    g.finish();
}

criterion_group!(benches, map_unmap, iova);
criterion_main!(benches);
