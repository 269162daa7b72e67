//! What observability costs on the map path: map+unmap with neither statistics nor the
//! debug checker, with statistics only (the default), and with both — for a direct and for
//! a bounced mapping, over real memory, in the same run.

mod common;

use std::hint::black_box;
use std::time::Duration;

use common::{device, mapper, POOL};
use criterion::{criterion_group, criterion_main, Criterion};
use dmakit::{Direction, PhysAddr};

fn observability(c: &mut Criterion) {
    let dev = device();
    let variants = [
        ("neither", mapper(1).without_statistics().build()),
        ("stats", mapper(1).build()),
        ("stats+checker", mapper(1).debug_checker().build()),
    ];
    let mut g = c.benchmark_group("observability");
    for (name, m) in &variants {
        for (kind, buf) in [
            ("direct", PhysAddr::new(POOL)),
            ("bounced", PhysAddr::new(POOL + 8)),
        ] {
            g.bench_function(format!("{kind}/{name}"), |b| {
                b.iter(|| {
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    let dma =
                        unsafe { m.map(&dev, black_box(buf), 64, Direction::FromDevice) }.unwrap();
                    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                    unsafe { m.unmap(&dev, dma, 64, Direction::FromDevice) }.unwrap();
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
