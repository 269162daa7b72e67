//! Streaming-path benchmarks over real memory (the host platform).
//!
//! Every comparison is measured in the same run:
//! - `direct_vs_bounce`: a direct map+unmap against a 64-byte bounced map+unmap;
//! - `bounce/N` against `memcpy/N`: a bounced inbound map+unmap of N bytes against plain
//!   copies of the bytes the bounce must move (N in, N back);
//! - `pool_occupancy/P`: one pool allocation and free in a 1 GiB pool held at P % full;
//! - `threads/T`: map+unmap throughput of T threads on T CPUs' pool areas.

mod common;

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{device, mapper, MIB, POOL};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dmakit::swiotlb::{Pool, PoolConfig, SlotRequest};
use dmakit::{CpuMemory, Direction, PhysAddr};
use dmakit_sim::SimRng;

fn direct_vs_bounce(c: &mut Criterion) {
    let m = mapper(1).build();
    let dev = device();
    let mut g = c.benchmark_group("direct_vs_bounce");
    let aligned = PhysAddr::new(POOL);
    g.bench_function("direct_64", |b| {
        b.iter(|| {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let dma =
                unsafe { m.map(&dev, black_box(aligned), 64, Direction::FromDevice) }.unwrap();
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { m.unmap(&dev, dma, 64, Direction::FromDevice) }.unwrap();
        })
    });
    let misaligned = PhysAddr::new(POOL + 8);
    g.bench_function("bounced_64", |b| {
        b.iter(|| {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let dma =
                unsafe { m.map(&dev, black_box(misaligned), 64, Direction::FromDevice) }.unwrap();
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { m.unmap(&dev, dma, 64, Direction::FromDevice) }.unwrap();
        })
    });
    g.finish();
}

fn bounce_vs_memcpy(c: &mut Criterion) {
    let m = mapper(1).build();
    let dev = device();
    let mut g = c.benchmark_group("bounce");
    for size in [8u64, 64, 512, 4096, 16384, 65536] {
        g.throughput(Throughput::Bytes(2 * size));
        let buf = PhysAddr::new(POOL + 8);
        g.bench_with_input(BenchmarkId::new("bounce", size), &size, |b, &size| {
            b.iter(|| {
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                let dma =
                    unsafe { m.map(&dev, black_box(buf), size, Direction::FromDevice) }.unwrap();
                // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                unsafe { m.unmap(&dev, dma, size, Direction::FromDevice) }.unwrap();
            })
        });
        // The same bytes a bounce moves, between the same addresses: the original into the
        // slot the pool gives this mapping, and back.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { m.map(&dev, buf, size, Direction::FromDevice) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { m.unmap(&dev, dma, size, Direction::FromDevice) }.unwrap();
        let slot = PhysAddr::new(dma.as_u64());
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, &size| {
            b.iter(|| {
                m.platform().copy(slot, black_box(buf), size).unwrap();
                m.platform().copy(buf, black_box(slot), size).unwrap();
            })
        });
    }
    g.finish();
}

fn pool_occupancy(c: &mut Criterion) {
    const GIB: u64 = 1 << 30;
    let mut g = c.benchmark_group("pool_occupancy");
    for percent in [10u64, 50, 90] {
        let cfg = PoolConfig::builder().cpu_count(2).build().expect("config");
        let pool: Pool<()> = Pool::with_region(cfg, PhysAddr::new(0), GIB).expect("region");
        // Fill to `percent` with a seeded mix of sizes and alignments.
        let mut rng = SimRng::new(percent);
        let target = GIB * percent / 100;
        while pool.stats().used_bytes < target {
            let len = rng.between(1, 32 * 1024);
            let orig = PhysAddr::new(rng.below(1 << 40));
            let mask = [0, 0xfff][rng.below(2) as usize];
            if pool
                .alloc(rng.below(2) as usize, SlotRequest::new(orig, len, mask), ())
                .is_err()
            {
                break;
            }
        }
        let req = SlotRequest::new(PhysAddr::new(0x1008), 4096, 0);
        g.bench_with_input(BenchmarkId::from_parameter(percent), &percent, |b, _| {
            b.iter(|| {
                let got = pool.alloc(0, black_box(req), ()).unwrap();
                pool.free(got.addr).unwrap();
            })
        });
    }
    g.finish();
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    for threads in [1usize, 2] {
        let m = mapper(2).build();
        let dev = device();
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(
            BenchmarkId::from_parameter(threads),
            &threads,
            |b, &threads| {
                b.iter_custom(|iters| {
                    let per = iters.div_ceil(threads as u64);
                    let barrier = Barrier::new(threads + 1);
                    let mut start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let (m, dev, barrier) = (&m, &dev, &barrier);
                            s.spawn(move || {
                                m.platform().bind_current_thread(t);
                                let buf = PhysAddr::new(POOL + 8 + (t as u64) * MIB);
                                barrier.wait();
                                for _ in 0..per {
                                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                                    let dma =
                                        unsafe { m.map(dev, buf, 512, Direction::FromDevice) }
                                            .unwrap();
                                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                                    unsafe { m.unmap(dev, dma, 512, Direction::FromDevice) }
                                        .unwrap();
                                }
                            });
                        }
                        barrier.wait();
                        start = Instant::now();
                    });
                    // Time per operation overall: total elapsed over all operations done.
                    let elapsed = start.elapsed();
                    elapsed.mul_f64(iters as f64 / (per * threads as u64) as f64)
                })
            },
        );
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = direct_vs_bounce, bounce_vs_memcpy, pool_occupancy, threads
}
criterion_main!(benches);
