//! `N` map+unmap pairs of one 64-byte `FromDevice` buffer on the host platform, for
//! instruction counts under `valgrind --tool=callgrind` (`scripts/callgrind.sh`): the
//! difference between two runs of different `N` is the cost of the pairs alone, whatever
//! the setup costs.
//!
//! `map_unmap_loop direct N` maps a line-aligned buffer (no bounce); `map_unmap_loop bounced
//! N` one 8 bytes off a line (a SWIOTLB bounce: slot, fill, maintenance, copy back, free).
//! Same setup as the `paired` benchmark: a non-coherent device with 64-byte lines, a 64 MiB
//! pool of one area, statistics on, debug checker off.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use dmakit::prelude::*;
use dmakit_sim::host::{HostMaintenance, HostPlatform};

const MIB: u64 = 1 << 20;
const POOL: u64 = 64 * MIB;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (offset, n) = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("direct"), Some(n)) => (0, n),
        (Some("bounced"), Some(n)) => (8, n),
        _ => {
            eprintln!("usage: map_unmap_loop direct|bounced N");
            return ExitCode::from(2);
        }
    };
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("N must be a whole number, not {n:?}");
        return ExitCode::from(2);
    };
    let host = Arc::new(
        HostPlatform::new(0, POOL + 16 * MIB, 1, 64, HostMaintenance::None).expect("arena"),
    );
    let mapper = DmaMapper::builder(host)
        .swiotlb(PhysAddr::new(0), POOL)
        .expect("pool region")
        .build();
    let dev = Device::builder(DeviceId(1), "loop")
        .cache_line(64)
        .build()
        .expect("device");
    let buf = PhysAddr::new(POOL + MIB + offset);
    for _ in 0..n {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma =
            unsafe { mapper.map(&dev, black_box(buf), 64, Direction::FromDevice) }.expect("map");
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 64, Direction::FromDevice) }.expect("unmap");
    }
    let bounces = mapper.stats().total().bounces_total();
    assert_eq!(bounces, if offset == 0 { 0 } else { n }, "bounce count");
    ExitCode::SUCCESS
}
