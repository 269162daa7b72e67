//! `N` map+unmap pairs of a 64-byte `ToDevice` buffer 8 bytes off a line, for a device
//! that bounces every mapping (`force_bounce`, as in a confidential guest): slot, fill,
//! maintenance and free, with nothing to copy back. For instruction counts under
//! `valgrind --tool=callgrind` (`scripts/instructions.sh`, mode `bounced-to-device`), with
//! the setup of `map_unmap_loop.rs`'s `bounced` mode.
//!
//! A program of its own: callgrind's counts of `map_unmap_loop`'s modes move by tens of
//! instructions with how the compiler inlines the mapper, which another caller of it in
//! that program changes.

use std::hint::black_box;
use std::process::ExitCode;

use dmakit::prelude::*;
use dmakit_sim::host::{HostMaintenance, HostPlatform};

const MIB: u64 = 1 << 20;
const POOL: u64 = 64 * MIB;
/// The buffer: above the pool, in the host arena.
const BUF: u64 = POOL + MIB;

fn main() -> ExitCode {
    let Some(Ok(n)) = std::env::args().nth(1).map(|n| n.parse::<u64>()) else {
        eprintln!("usage: to_device_loop N");
        return ExitCode::from(2);
    };
    let host = HostPlatform::new(0, POOL + 16 * MIB, 1, 64, HostMaintenance::None).expect("arena");
    let mapper = DmaMapper::builder(&host)
        .swiotlb(PhysAddr::new(0), POOL)
        .expect("pool region")
        .build();
    let dev = Device::builder(DeviceId(1), "loop")
        .cache_line(64)
        .force_bounce(true)
        .build()
        .expect("device");
    let buf = PhysAddr::new(BUF + 8);
    for _ in 0..n {
        // SAFETY: the buffer lies in the host arena, which only this loop uses.
        let dma =
            unsafe { mapper.map(&dev, black_box(buf), 64, Direction::ToDevice) }.expect("map");
        // SAFETY: `dma` is the mapping just made, and no device uses it.
        unsafe { mapper.unmap(&dev, dma, 64, Direction::ToDevice) }.expect("unmap");
    }
    assert_eq!(mapper.stats().total().bounces_total(), n, "bounce count");
    ExitCode::SUCCESS
}
