//! `dmakit bench`: the map benchmark (like Linux's `map_benchmark`) on the host, over real
//! memory: threads map and unmap one buffer each as fast as they can; map and unmap
//! latencies are measured one by one.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{Device, DeviceId, Direction, DmaMapper, DomainConfig, IommuDma, PhysAddr, PAGE_SIZE};
use dmakit_scenario::units::parse_size;
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::{SimIommu, SimIommuConfig};
use serde::Serialize;

use crate::reservoir::{Reservoir, MAX_SAMPLES};
use crate::table;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// The direct path (no bounce).
    Direct,
    /// Every mapping bounced through the SWIOTLB pool.
    Bounce,
    /// Through an IOMMU: the model's page tables and IOTLB in software over real memory.
    Iommu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Domain {
    /// Every unmap invalidates the IOTLB.
    Strict,
    /// Unmaps are queued and invalidated 256 at a time.
    Lazy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Dir {
    ToDevice,
    FromDevice,
    Bidirectional,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  dmakit bench                                     1 thread, 4 KiB, direct
  dmakit bench --mode bounce --threads 2 --granule 512
  dmakit bench --mode iommu --domain lazy
  dmakit bench --granule 4pages --direction to-device --seconds 5 --json")]
pub struct Args {
    /// Threads mapping concurrently (each on its own CPU number).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Mapping size: bytes ("512", "64KiB") or pages ("4pages").
    #[arg(long, default_value = "4096")]
    granule: String,
    /// Direction of the mappings.
    #[arg(long, value_enum, default_value = "from-device")]
    direction: Dir,
    /// Which path the mappings take.
    #[arg(long, value_enum, default_value = "direct")]
    mode: Mode,
    /// With `--mode iommu`: how the IOMMU domain invalidates.
    #[arg(long, value_enum, default_value = "strict")]
    domain: Domain,
    /// How long to run.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Out {
    mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<String>,
    threads: u64,
    granule_bytes: u64,
    direction: String,
    operations: u64,
    ops_per_second: f64,
    map_median_ns: u64,
    map_p99_ns: u64,
    unmap_median_ns: u64,
    unmap_p99_ns: u64,
}

/// A sample of one thread's map and unmap latencies, in nanoseconds.
type Latencies = Reservoir;

fn granule(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let g = if let Some(n) = t.strip_suffix("pages").or_else(|| t.strip_suffix("page")) {
        n.trim()
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(PAGE_SIZE))
    } else {
        parse_size(&t)
    };
    match g {
        Some(g) if (1..=256 * 1024).contains(&g) => Ok(g),
        _ => Err(format!(
            "--granule {text}: give bytes (\"512\", \"64KiB\") or pages (\"4pages\"), from 1 byte to 256 KiB"
        )),
    }
}

fn pct(v: &mut [u32], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    let (_, x, _) = v.select_nth_unstable(i);
    u64::from(*x)
}

/// The IOMMU of `--mode iommu`: the model's page tables and IOTLB (software, 4 KiB
/// granule) with `dev` attached to one domain of the chosen kind, as
/// `crates/dmakit-sim/benches/iommu.rs` sets it up.
fn iommu(dev: &Device, cpus: usize, domain: Domain) -> Result<Arc<IommuDma>, String> {
    let hw = SimIommu::new(SimIommuConfig::default()).map_err(|e| format!("IOMMU model: {e}"))?;
    let dma = Arc::new(IommuDma::new(Arc::new(hw), cpus).map_err(|e| e.to_string())?);
    let cfg = match domain {
        Domain::Strict => DomainConfig::STRICT,
        Domain::Lazy => DomainConfig::LAZY,
    };
    let d = dma.create_domain(cfg).map_err(|e| e.to_string())?;
    dma.attach(dev, d).map_err(|e| e.to_string())?;
    Ok(dma)
}

/// What one measurement maps: `threads` threads map and unmap `granule` bytes in
/// direction `dir` on the path `mode` (through a `domain` IOMMU domain in `Mode::Iommu`).
pub(crate) struct Setup {
    pub(crate) mode: Mode,
    pub(crate) domain: Domain,
    pub(crate) threads: usize,
    pub(crate) granule: u64,
    pub(crate) dir: Direction,
}

/// What a measurement found: map+unmap pairs, latency sample, bytes bounced.
pub(crate) struct Measured {
    pub(crate) operations: u64,
    pub(crate) maps: Vec<u32>,
    pub(crate) unmaps: Vec<u32>,
    /// Bytes copied into and out of bounce buffers over all pairs.
    pub(crate) bytes_copied: u64,
}

impl Measured {
    /// The `p` quantile (0 to 1) of the map latencies, in nanoseconds.
    pub(crate) fn map_ns(&mut self, p: f64) -> u64 {
        pct(&mut self.maps, p)
    }

    /// The `p` quantile (0 to 1) of the unmap latencies, in nanoseconds.
    pub(crate) fn unmap_ns(&mut self, p: f64) -> u64 {
        pct(&mut self.unmaps, p)
    }
}

/// Maps and unmaps as `s` says for `run_for` on the host: the benchmark's loop, shared by
/// `dmakit bench` and the bounce cost `dmakit simulate` measures.
///
/// # Errors
/// A message when the host memory, the pool, the device or the IOMMU cannot be set up,
/// or a mapping fails.
pub(crate) fn measure(s: &Setup, run_for: Duration) -> Result<Measured, String> {
    let (g, dir, threads) = (s.granule, s.dir, s.threads);
    const MIB: u64 = 1 << 20;
    let pool = 64 * MIB;
    let per_thread = g.next_multiple_of(PAGE_SIZE) + PAGE_SIZE;
    let arena = pool + per_thread * threads as u64;
    let host = Arc::new(
        HostPlatform::new(0, arena, threads, 64, HostMaintenance::None)
            .map_err(|e| format!("host memory: {e}"))?,
    );
    let cfg = PoolConfig::builder()
        .cpu_count(threads)
        .build()
        .map_err(|e| e.to_string())?;
    let backend = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
    backend
        .add_region(PhysAddr::new(0), pool)
        .map_err(|e| e.to_string())?;
    let mut builder = DmaMapper::builder(host).swiotlb_backend(Arc::new(backend));
    let dev = Device::builder(DeviceId(1), "bench")
        .force_bounce(s.mode == Mode::Bounce)
        .max_segment_size(u64::MAX)
        .build()
        .map_err(|e| e.to_string())?;
    if s.mode == Mode::Iommu {
        builder = builder.iommu(iommu(&dev, threads, s.domain)?);
    }
    let mapper = builder.build();
    let barrier = Barrier::new(threads);
    let results: Vec<Result<Latencies, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let (mapper, dev, barrier) = (&mapper, &dev, &barrier);
                s.spawn(move || {
                    mapper.platform().bind_current_thread(t);
                    let buf = PhysAddr::new(pool + per_thread * t as u64);
                    // Bounded whatever --seconds is: a uniform sample, not every latency.
                    let mut sample = Reservoir::new(MAX_SAMPLES / threads, t as u64 + 1);
                    barrier.wait();
                    let start = Instant::now();
                    while start.elapsed() < run_for {
                        let t0 = Instant::now();
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        let dma =
                            unsafe { mapper.map(dev, buf, g, dir) }.map_err(|e| e.to_string())?;
                        let t1 = Instant::now();
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { mapper.unmap(dev, dma, g, dir) }.map_err(|e| e.to_string())?;
                        let t2 = Instant::now();
                        let ns = |d: Duration| d.as_nanos().min(u32::MAX as u128) as u32;
                        sample.offer(ns(t1 - t0), ns(t2 - t1));
                    }
                    Ok(sample)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let (mut maps, mut unmaps, mut ops) = (Vec::new(), Vec::new(), 0);
    for r in results {
        let s = r?;
        ops += s.offered();
        maps.extend(s.maps);
        unmaps.extend(s.unmaps);
    }
    let t = mapper.stats().total();
    Ok(Measured {
        operations: ops,
        maps,
        unmaps,
        bytes_copied: t.bytes_to_bounce + t.bytes_from_bounce,
    })
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be above 0 and at most 3600".into());
    }
    let g = granule(&args.granule)?;
    let dir = match args.direction {
        Dir::ToDevice => Direction::ToDevice,
        Dir::FromDevice => Direction::FromDevice,
        Dir::Bidirectional => Direction::Bidirectional,
    };
    let setup = Setup {
        mode: args.mode,
        domain: args.domain,
        threads: args.threads as usize,
        granule: g,
        dir,
    };
    let mut m = measure(&setup, Duration::from_secs_f64(args.seconds))?;
    let out = Out {
        mode: format!("{:?}", args.mode).to_lowercase(),
        domain: (args.mode == Mode::Iommu).then(|| format!("{:?}", args.domain).to_lowercase()),
        threads: args.threads,
        granule_bytes: g,
        direction: dir.to_string(),
        operations: m.operations,
        ops_per_second: m.operations as f64 / args.seconds,
        map_median_ns: m.map_ns(0.5),
        map_p99_ns: m.map_ns(0.99),
        unmap_median_ns: m.unmap_ns(0.5),
        unmap_p99_ns: m.unmap_ns(0.99),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let mode = match &out.domain {
        Some(d) => format!("{} ({d})", out.mode),
        None => out.mode.clone(),
    };
    println!(
        "{mode} mode, {} thread(s), {} bytes {}, {:.1} s on the host",
        out.threads, out.granule_bytes, out.direction, args.seconds
    );
    let mut t = table::new(&["", "median", "p99"]);
    t.add_row(vec![
        "map".into(),
        format!("{} ns", out.map_median_ns),
        format!("{} ns", out.map_p99_ns),
    ]);
    t.add_row(vec![
        "unmap".into(),
        format!("{} ns", out.unmap_median_ns),
        format!("{} ns", out.unmap_p99_ns),
    ]);
    println!("{t}");
    println!(
        "{} map+unmap pairs, {} per second",
        table::count(out.operations),
        table::count(out.ops_per_second as u64)
    );
    Ok(())
}
