//! `N` map+unmap pairs of one buffer on the host platform, for instruction counts under
//! `valgrind --tool=callgrind` (`scripts/callgrind.sh`): the difference between two runs of
//! different `N` is the cost of the pairs alone, whatever the setup costs.
//!
//! `map_unmap_loop direct N` maps a line-aligned 64-byte `FromDevice` buffer (no bounce);
//! `map_unmap_loop bounced N` one 8 bytes off a line (a SWIOTLB bounce: slot, fill,
//! maintenance, copy back, free). Same setup as the `paired` benchmark: a non-coherent
//! device with 64-byte lines, a 64 MiB pool of one area, statistics on, debug checker off.
//! `map_unmap_loop coherent N` bounces the buffer 8 bytes off a line through a coherent
//! object pool of one 1 MiB chunk instead (object, fill, copy back, free; no maintenance
//! on the bounce side).
//! `map_unmap_loop iommu N` maps a page-aligned 4 KiB `Bidirectional` buffer of a coherent
//! device through a strict IOMMU domain with the model's page tables in software, as the
//! `iommu` benchmark does. `map_unmap_loop iommu-sg N` maps a list of four 2 KiB buffers,
//! one at the start of each of four pages, into a stack array of segments (four segments
//! in one IOVA range) in the same domain, and unmaps it.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::prelude::*;
use dmakit::{BouncePool, DmaSegment, DomainConfig, IommuDma, SgEntry};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::{SimIommu, SimIommuConfig};

const MIB: u64 = 1 << 20;
const POOL: u64 = 64 * MIB;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (mode, n) = match (args.get(1).map(String::as_str), args.get(2)) {
        (Some(mode @ ("direct" | "bounced" | "coherent" | "iommu" | "iommu-sg")), Some(n)) => {
            (mode, n)
        }
        _ => {
            eprintln!("usage: map_unmap_loop direct|bounced|coherent|iommu|iommu-sg N");
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
    let builder = DmaMapper::builder(host)
        .swiotlb(PhysAddr::new(0), POOL)
        .expect("pool region");
    let (mapper, dev, buf, len, dir) = if mode.starts_with("iommu") {
        let iommu = SimIommu::new(SimIommuConfig::default()).expect("iommu");
        let dma = Arc::new(IommuDma::new(Arc::new(iommu), 1).expect("iommu layer"));
        let dev = Device::builder(DeviceId(1), "loop")
            .coherent(true)
            .build()
            .expect("device");
        let d = dma.create_domain(DomainConfig::STRICT).expect("domain");
        dma.attach(&dev, d).expect("attach");
        let mapper = builder.iommu(dma).build();
        (
            mapper,
            dev,
            PhysAddr::new(POOL + MIB),
            4096,
            Direction::Bidirectional,
        )
    } else if mode == "coherent" {
        let pool = CoherentBouncePool::new(ObjectPoolConfig::default(), None).expect("pool");
        pool.add_chunk(PhysAddr::new(POOL + 8 * MIB), MIB)
            .expect("chunk");
        let dev = Device::builder(DeviceId(1), "loop")
            .cache_line(64)
            .bounce_pool(BouncePool::Coherent)
            .build()
            .expect("device");
        let buf = PhysAddr::new(POOL + MIB + 8);
        let mapper = builder.coherent_backend(Arc::new(pool)).build();
        (mapper, dev, buf, 64, Direction::FromDevice)
    } else {
        let dev = Device::builder(DeviceId(1), "loop")
            .cache_line(64)
            .build()
            .expect("device");
        let offset = if mode == "bounced" { 8 } else { 0 };
        let buf = PhysAddr::new(POOL + MIB + offset);
        (builder.build(), dev, buf, 64, Direction::FromDevice)
    };
    if mode == "iommu-sg" {
        let entries: [SgEntry; 4] = core::array::from_fn(|i| SgEntry {
            phys: buf.add(i as u64 * 4096),
            len: 2048,
        });
        let mut out = [DmaSegment {
            dma: DmaAddr::new(0),
            len: 0,
        }; 4];
        for _ in 0..n {
            // SAFETY: the buffers lie in the host arena, which only this loop uses.
            let segs = unsafe { mapper.map_sg_into(&dev, black_box(&entries), dir, &mut out) }
                .expect("map_sg_into");
            assert_eq!(segs, 4, "four segments");
            // SAFETY: the list just mapped, and no device uses it.
            unsafe { mapper.unmap_sg(&dev, &out, dir) }.expect("unmap_sg");
        }
        return ExitCode::SUCCESS;
    }
    for _ in 0..n {
        // SAFETY: the buffer lies in the host arena, which only this loop uses.
        let dma = unsafe { mapper.map(&dev, black_box(buf), len, dir) }.expect("map");
        // SAFETY: `dma` is the mapping just made, and no device uses it.
        unsafe { mapper.unmap(&dev, dma, len, dir) }.expect("unmap");
    }
    let bounces = mapper.stats().total().bounces_total();
    assert_eq!(
        bounces,
        if matches!(mode, "bounced" | "coherent") {
            n
        } else {
            0
        },
        "bounce count"
    );
    ExitCode::SUCCESS
}
