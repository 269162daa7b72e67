//! `N` operations of one kind on the host platform, for instruction counts under
//! `valgrind --tool=callgrind` (`scripts/instructions.sh`): the difference between two runs
//! of different `N` is the cost of the operations alone, whatever the setup costs.
//!
//! Modes (`map_unmap_loop MODE N`):
//! - `direct`: map+unmap of a line-aligned 64-byte `FromDevice` buffer (no bounce);
//! - `bounced`, `bounced-512`, `bounced-4096`: map+unmap of a 64-byte, 512-byte or 4 KiB
//!   `FromDevice` buffer 8 bytes off a line (a SWIOTLB bounce: slot, fill, maintenance,
//!   copy back, free). Same setup as the `paired` benchmark: a non-coherent device with
//!   64-byte lines, a 64 MiB pool of one area, statistics on, debug checker off;
//! - `coherent`: the 64-byte buffer 8 bytes off a line bounced through a coherent object
//!   pool of one 1 MiB chunk instead (object, fill, copy back, free; no maintenance on the
//!   bounce side);
//! - `iommu`: map+unmap of a page-aligned 4 KiB `Bidirectional` buffer of a coherent device
//!   through a strict IOMMU domain with the model's page tables in software, as the `iommu`
//!   benchmark does; `iommu-sg`: a list of four 2 KiB buffers, one at the start of each of
//!   four pages, mapped into a stack array of segments (four segments in one IOVA range) in
//!   the same domain, and unmapped;
//! - `pool-64`, `pool-4096`: the bounce slot pool alone (`swiotlb::Pool` of 64 MiB, one
//!   area): alloc+free of a 64-byte or 4 KiB request for an original 8 bytes off a line,
//!   without a mapper, copies or maintenance;
//! - `rmw-add`, `rmw-swap`: one `AtomicU64::fetch_add` (a `lock`-prefixed instruction) or
//!   one `AtomicU64::swap` (an `xchg` with memory, locked without a prefix) per iteration
//!   and nothing else: the calibration of the script's locked-instruction count, which
//!   must report exactly 1 for each.

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::prelude::*;
use dmakit::swiotlb::{Pool, PoolConfig, SlotRequest};
use dmakit::{BouncePool, DmaSegment, DomainConfig, IommuDma, SgEntry};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::{SimIommu, SimIommuConfig};

const MIB: u64 = 1 << 20;
const POOL: u64 = 64 * MIB;
/// The buffers: above the pool, in the host arena.
const BUF: u64 = POOL + MIB;

const MODES: [&str; 11] = [
    "direct",
    "bounced",
    "bounced-512",
    "bounced-4096",
    "coherent",
    "iommu",
    "iommu-sg",
    "pool-64",
    "pool-4096",
    "rmw-add",
    "rmw-swap",
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(n)) = (
        args.get(1).filter(|m| MODES.contains(&m.as_str())),
        args.get(2),
    ) else {
        eprintln!("usage: map_unmap_loop {} N", MODES.join("|"));
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<u64>() else {
        eprintln!("N must be a whole number, not {n:?}");
        return ExitCode::from(2);
    };
    match mode.as_str() {
        "rmw-add" => rmw_loop(n, |c| {
            c.fetch_add(1, Ordering::Relaxed);
        }),
        "rmw-swap" => rmw_loop(n, |c| {
            c.swap(black_box(1), Ordering::Relaxed);
        }),
        "pool-64" => pool_loop(n, 64),
        "pool-4096" => pool_loop(n, 4096),
        "iommu-sg" => iommu_sg_loop(n),
        mode => map_loop(mode, n),
    }
    ExitCode::SUCCESS
}

/// `n` times `op` on one counter.
fn rmw_loop(n: u64, op: fn(&AtomicU64)) {
    let counter = AtomicU64::new(0);
    for _ in 0..n {
        op(black_box(&counter));
    }
    black_box(counter.load(Ordering::Relaxed));
}

/// `n` alloc+free pairs of a `len`-byte request in a pool of one area.
fn pool_loop(n: u64, len: u64) {
    let cfg = PoolConfig::builder().cpu_count(1).build().expect("config");
    let pool: Pool<()> = Pool::with_region(cfg, PhysAddr::new(0), POOL).expect("region");
    let req = SlotRequest::new(PhysAddr::new(BUF + 8), len, 0);
    for _ in 0..n {
        let got = pool.alloc(0, black_box(req), ()).expect("alloc");
        pool.free(got.addr).expect("free");
    }
    assert_eq!(pool.stats().used_bytes, 0, "every slot freed");
}

fn host() -> Arc<HostPlatform> {
    Arc::new(HostPlatform::new(0, POOL + 16 * MIB, 1, 64, HostMaintenance::None).expect("arena"))
}

/// A coherent device behind a strict IOMMU domain, and a mapper that routes it there.
fn iommu_mapper() -> (DmaMapper<Arc<HostPlatform>>, Device) {
    let builder = DmaMapper::builder(host())
        .swiotlb(PhysAddr::new(0), POOL)
        .expect("pool region");
    let iommu = SimIommu::new(SimIommuConfig::default()).expect("iommu");
    let dma = Arc::new(IommuDma::new(Arc::new(iommu), 1).expect("iommu layer"));
    let dev = Device::builder(DeviceId(1), "loop")
        .coherent(true)
        .build()
        .expect("device");
    let d = dma.create_domain(DomainConfig::STRICT).expect("domain");
    dma.attach(&dev, d).expect("attach");
    (builder.iommu(dma).build(), dev)
}

/// `n` map+unmap pairs of one buffer, as `mode` says.
fn map_loop(mode: &str, n: u64) {
    let (mapper, dev, buf, len, dir) = if mode == "iommu" {
        let (mapper, dev) = iommu_mapper();
        (mapper, dev, BUF, 4096, Direction::Bidirectional)
    } else {
        let builder = DmaMapper::builder(host())
            .swiotlb(PhysAddr::new(0), POOL)
            .expect("pool region");
        let mut dev = Device::builder(DeviceId(1), "loop").cache_line(64);
        let mapper = if mode == "coherent" {
            let pool = CoherentBouncePool::new(ObjectPoolConfig::default(), None).expect("pool");
            pool.add_chunk(PhysAddr::new(POOL + 8 * MIB), MIB)
                .expect("chunk");
            dev = dev.bounce_pool(BouncePool::Coherent);
            builder.coherent_backend(Arc::new(pool)).build()
        } else {
            builder.build()
        };
        let (offset, len) = match mode {
            "direct" => (0, 64),
            "bounced-512" => (8, 512),
            "bounced-4096" => (8, 4096),
            _ => (8, 64),
        };
        let dev = dev.build().expect("device");
        (mapper, dev, BUF + offset, len, Direction::FromDevice)
    };
    let buf = PhysAddr::new(buf);
    for _ in 0..n {
        // SAFETY: the buffer lies in the host arena, which only this loop uses.
        let dma = unsafe { mapper.map(&dev, black_box(buf), len, dir) }.expect("map");
        // SAFETY: `dma` is the mapping just made, and no device uses it.
        unsafe { mapper.unmap(&dev, dma, len, dir) }.expect("unmap");
    }
    let bounces = mapper.stats().total().bounces_total();
    let expected = if mode == "direct" || mode == "iommu" {
        0
    } else {
        n
    };
    assert_eq!(bounces, expected, "bounce count");
}

/// `n` map_sg_into+unmap_sg pairs of four 2 KiB buffers through the strict domain.
fn iommu_sg_loop(n: u64) {
    let (mapper, dev) = iommu_mapper();
    let dir = Direction::Bidirectional;
    let entries: [SgEntry; 4] = core::array::from_fn(|i| SgEntry {
        phys: PhysAddr::new(BUF + i as u64 * 4096),
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
}
