//! Runs a scenario under one policy, or under several side by side (on as many threads as
//! asked, see [`crate::workers`]).
//!
//! Each policy gets its own [`Machine`] (same scenario, same seed), a real SWIOTLB pool of
//! the size that policy gets, a real [`dmakit_mem::Kmalloc`] with the policy's minimum
//! alignment, and the mapping layer with the policy's alignment rule. Every simulated
//! kmalloc object comes from that kmalloc, every object is known to the oracle, and every
//! transfer is judged. Bounce figures come from the mapper's own statistics.

use std::fmt;
use std::num::NonZeroUsize;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use dmakit::bounce::BounceBackend;
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    AlignmentPolicy, BouncePool, BounceReason, DmaMapper, PhysAddr, PhysRange, PAGE_SIZE,
};
use dmakit_mem::{AutoMinAlign, Kmalloc};

use crate::churn::{load_slabinfo, Churn, SizeDistribution};
use crate::drivers::Buffer;
use crate::drivers::{Env, Placer};
use crate::frames::Framebuffers;
use crate::heap::{Heap, HeapError};
use crate::iommu;
use crate::mapping_log::MappingLog;
use crate::model::{BufferModel, Scenario};
use crate::policy::{self, Policy, ARM64_DMA_LIMIT};
use crate::rates::{DriverLoad, PerSecond};
use crate::refill::CoherentRefill;
use crate::report::{PolicyReport, SimulationReport, SiteReport};
use crate::scale::MachineScale;
use crate::sites::{self, Args};
use crate::slabinfo::parse_slabinfo;
use crate::units::format_bytes;
use crate::workers;
use dmakit_sim::machine::{Machine, MachineConfig};
use dmakit_sim::memory::Owner;
use dmakit_sim::oracle::Oracle;
use dmakit_sim::rng::SimRng;
use dmakit_sim::transfer::{Neighbour, Scratch, Started, Transfer, TransferKnobs};

/// A transfer of a queue between its start and its completion.
struct Pending {
    buf: Buffer,
    neighbours: Vec<Neighbour>,
    started: Started,
}

/// What to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOptions {
    /// Seed of the machine and of every decision.
    pub seed: u64,
    /// Transfers per policy.
    pub transfers: u64,
    /// Call sites to report.
    pub top_sites: usize,
    /// The policy whose mappings are logged in its report's
    /// [`PolicyReport::mapping_log`] (`simulate --emit-trace`); `None`: no log.
    pub log_mappings_of: Option<Policy>,
    /// How many policies run at once, each on its own thread (see [`crate::workers`]);
    /// [`machine_cores`](crate::workers::machine_cores) uses every core. It changes how
    /// long a run takes, not what it reports.
    pub threads: NonZeroUsize,
}

/// Why a run could not be done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunError {
    /// An input the scenario names (its slabinfo file) cannot be read or parsed; the text
    /// names the file and what is wrong.
    Input(String),
    /// The scenario describes a machine that cannot work; the text explains why.
    Impossible(String),
    /// The model or the allocator refused something during the run.
    Model(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Input(m) => f.write_str(m),
            RunError::Impossible(m) => write!(f, "impossible machine: {m}"),
            RunError::Model(m) => write!(f, "simulation failed: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

fn model(e: impl fmt::Debug) -> RunError {
    RunError::Model(format!("{e:?}"))
}

fn heap_err(e: HeapError) -> RunError {
    match e {
        HeapError::Kmalloc(m) => RunError::Impossible(format!(
            "kmalloc ran out of memory ({m}); give the machine more RAM or fewer live objects"
        )),
        HeapError::Sim(s) => model(s),
    }
}

/// How transfers behave in scenarios (device bursts come from each pattern).
fn knobs(burst: (u64, u64)) -> TransferKnobs {
    TransferKnobs {
        cpu_ops: (1, 4),
        device_chunk: burst,
        short_write_chance: 0.3,
        sync_chance: 0.25,
        second_round_chance: 0.05,
        rewrite_inbound_between_rounds: true,
        skip_sync_for_cpu: false,
    }
}

/// Runs every policy of `policies`, at most [`RunOptions::threads`] at a time, and collects
/// the reports in the order of `policies`: the report is the same whatever the number of
/// threads. `progress` counts transfers done across all of them.
///
/// # Errors
/// The first [`RunError`] of any policy, or [`RunError::Input`] for a slabinfo file that
/// cannot be read (missing, larger than
/// [`MAX_SLABINFO_BYTES`](crate::input::MAX_SLABINFO_BYTES), not UTF-8) or parsed.
pub fn simulate(
    sc: &Scenario,
    policies: &[Policy],
    opts: &RunOptions,
    progress: &AtomicU64,
) -> Result<SimulationReport, RunError> {
    let (text, origin) = load_slabinfo(&sc.churn.slabinfo).map_err(RunError::Input)?;
    let sizes = SizeDistribution::from_slabinfo(&text)
        .map_err(|e| RunError::Input(format!("{origin}: {e}")))?;
    let rows = parse_slabinfo(&text).map_err(|e| RunError::Input(format!("{origin}: {e}")))?;
    // Checks the line before the runs; the figures use the alignment each run chose.
    MachineScale::new(&rows, sc.line(), policies)
        .map_err(|e| RunError::Impossible(e.to_string()))?;
    let results = workers::run_in_order(policies, opts.threads, |&p| {
        run_policy(sc, p, &sizes, opts, progress)
    });
    let mut out = Vec::new();
    for r in results {
        out.push(r.unwrap_or_else(|| Err(RunError::Model("a policy run panicked".into())))?);
    }
    let aligns: Vec<(String, u64)> = out
        .iter()
        .map(|p| (p.name.clone(), p.kmalloc_min_align))
        .collect();
    let machine_scale = MachineScale::with_alignments(&rows, sc.line(), &aligns)
        .map_err(|e| RunError::Impossible(e.to_string()))?;
    Ok(SimulationReport {
        scenario: sc.name.clone(),
        seed: opts.seed,
        slabinfo: origin,
        machine_scale,
        policies: out,
    })
}

/// Runs `sc` under `policy`.
///
/// # Errors
/// [`RunError::Impossible`] when the machine cannot hold the pool or the objects;
/// [`RunError::Model`] when the model refuses something (a bug).
pub fn run_policy(
    sc: &Scenario,
    policy: Policy,
    sizes: &SizeDistribution,
    opts: &RunOptions,
    progress: &AtomicU64,
) -> Result<PolicyReport, RunError> {
    let started = Instant::now();
    let line = sc.line();
    let m = &sc.machine;
    let machine = Machine::new(MachineConfig {
        ram: m.ram.clone(),
        cache: m.cache,
        hazards: m.hazards,
        cpus: m.cpus,
        seed: opts.seed,
        reserve_below: 1 << 20,
    })
    .map_err(|e| RunError::Impossible(e.to_string()))?;
    // Under `coherent-pool` every device bounces through the coherent pool.
    let devices: Vec<dmakit::Device> = sc
        .devices
        .iter()
        .map(|d| {
            if policy.uses_coherent_pool() {
                d.with_bounce_pool(BouncePool::Coherent)
            } else {
                d.clone()
            }
        })
        .collect();
    for d in &devices {
        machine.attach(d.clone()).map_err(model)?;
    }
    let iommu = iommu::setup(&machine, sc).map_err(RunError::Model)?;
    let untrusted = sc.devices.iter().any(|d| !d.is_trusted());
    let pool_bytes = policy::pool_bytes(policy, m, untrusted);
    // Devices behind the IOMMU reach the pool through it, wherever it is.
    let reach = sc
        .devices
        .iter()
        .zip(&sc.iommu)
        .filter(|(_, i)| i.is_none())
        .map(|(d, _)| d.dma_mask())
        .fold(ARM64_DMA_LIMIT - 1, u64::min);
    let mut pool = None;
    if pool_bytes > 0 {
        let cfg = PoolConfig::builder()
            .cpu_count(m.cpus)
            .max_cache_line(line)
            .build()
            .map_err(|e| RunError::Impossible(e.to_string()))?;
        let base = machine
            .alloc_pages_between(pool_bytes / PAGE_SIZE, 0, reach)
            .ok_or_else(|| {
                RunError::Impossible(format!(
                    "a bounce pool of {} does not fit in RAM below {reach:#x}, the limit of the \
                     most constrained device",
                    format_bytes(pool_bytes)
                ))
            })?;
        let b = Arc::new(SwiotlbBounce::new(cfg, None, 0, reach));
        b.add_region(base, pool_bytes)
            .map_err(|e| RunError::Impossible(format!("bounce pool: {e}")))?;
        pool = Some(b);
    }
    let mut refill = None;
    if policy.uses_coherent_pool() {
        let r = CoherentRefill::new(&machine, line, reach, true).map_err(RunError::Impossible)?;
        refill = Some(r);
    }
    let build = |alignment| {
        let mut b = DmaMapper::builder(&machine).policy(alignment);
        if let Some(p) = &pool {
            b = b.swiotlb_backend(p.clone());
        }
        if let Some(r) = &refill {
            b = b.coherent_backend(r.pool().clone());
        }
        if let Some(i) = &iommu {
            b = b.iommu(i.dma.clone());
        }
        b.build()
    };
    let mut mapper = build(policy.alignment());
    let bad_line = |e: dmakit_mem::MemError| RunError::Impossible(e.to_string());
    let mut kpolicy = policy.kmalloc_policy(line).map_err(bad_line)?;
    if policy == Policy::Auto {
        // The devices are added one by one, as a machine probes them; each re-evaluates.
        let mut auto = AutoMinAlign::new(line).map_err(bad_line)?;
        for d in &devices {
            kpolicy = auto.add_device(&mapper, d).map_err(bad_line)?;
        }
        if kpolicy.is_line_aligned() {
            // Objects own their lines: nothing is bounced for alignment (there is no pool
            // to bounce into), as under `minalign128`.
            mapper = build(AlignmentPolicy::Never);
        }
    }
    let mut heap = Heap::new(&machine, Kmalloc::new(&machine, kpolicy));
    let mut oracle = Oracle::new(line).map_err(model)?;
    let mut log = (opts.log_mappings_of == Some(policy)).then(MappingLog::default);
    let mut rng = SimRng::new(opts.seed ^ 0x5ce7_a210);
    let mut scratch = Scratch::default();
    let mut churn = Churn::new(sizes.clone());
    let mut framebuffers =
        Framebuffers::new(&machine, sc, iommu.as_ref().map(|i| &i.dma), &mut rng)
            .map_err(RunError::Impossible)?;
    for _ in 0..sc.churn.live_objects {
        churn
            .grow(&mut heap, &mut oracle, &mut rng, &mut scratch)
            .map_err(heap_err)?;
    }

    // Call sites: one per transfer pattern, numbered in scenario order.
    let patterns: Vec<_> = sc.transfer_sites().collect();
    let mut placers: Vec<Placer> = patterns.iter().map(|(_, t)| Placer::new(t)).collect();
    let mut seen: Vec<Option<&'static Location<'static>>> = vec![None; patterns.len()];
    let mut first_site = Vec::new();
    let mut n = 0;
    for d in &sc.drivers {
        first_site.push(n);
        n += d.transfers.len();
    }
    let weights: Vec<u64> = sc
        .drivers
        .iter()
        .map(|d| (d.weight * 1000.0).round().max(1.0) as u64)
        .collect();
    let total_weight: u64 = weights.iter().sum();
    let mut loads: Vec<DriverLoad> = sc
        .drivers
        .iter()
        .map(|d| DriverLoad {
            driver: d.name.clone(),
            rate: d.rate,
            ..DriverLoad::default()
        })
        .collect();

    let mut done = 0u64;
    let mut reported = 0u64;
    let mut map_errors = 0u64;
    let mut first_map_error = None;
    let sample_every = (opts.transfers / 400).max(1);
    let mut occupancy = vec![(0, 0)];
    let mut window_leaked = 0u64;
    let granule = sc.machine.iommu_granule.bytes();
    let mut nb = Vec::new();
    let churn_whole = sc.churn.churn_per_transfer.floor() as u64;
    let churn_frac = sc.churn.churn_per_transfer.fract();
    let mut counted = bounce_counts(&mapper);
    while done < opts.transfers {
        let ops = churn_whole + u64::from(rng.chance(churn_frac));
        for _ in 0..ops {
            churn
                .shrink(&mut heap, &mut oracle, &mut rng)
                .map_err(heap_err)?;
            churn
                .grow(&mut heap, &mut oracle, &mut rng, &mut scratch)
                .map_err(heap_err)?;
        }
        let mut pick = rng.below(total_weight);
        let di = weights
            .iter()
            .position(|&w| {
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        let driver = &sc.drivers[di];
        let device = &devices[driver.device];
        machine
            .set_current_cpu(rng.below(m.cpus as u64) as usize)
            .map_err(model)?;
        for (ti, t) in driver.transfers.iter().enumerate() {
            if done >= opts.transfers {
                break;
            }
            if t.chance < 1.0 && !rng.chance(t.chance) {
                continue;
            }
            let site = first_site[di] + ti;
            let mut batch = Vec::new();
            if let BufferModel::Noncontiguous { frames } = t.buffer {
                let fb = framebuffers
                    .as_mut()
                    .ok_or_else(|| model("framebuffers without an allocator"))?;
                let len = rng.between(t.size.0 / t.step, t.size.1 / t.step) * t.step;
                let shape = (frames, t.size.1, len, t.burst);
                // A refused device read is in the machine's fault log (device_faults).
                fb.scanout(
                    site,
                    device,
                    shape,
                    &mut heap,
                    &mut oracle,
                    &mut rng,
                    &mut scratch,
                )
                .map_err(RunError::Model)?;
                batch.push(None);
            } else {
                // Start up to `queue_depth` transfers (a ring, a queue), then complete them.
                let depth = (t.queue_depth as u64).min(opts.transfers - done);
                for _ in 0..depth {
                    let len = rng.between(t.size.0 / t.step, t.size.1 / t.step) * t.step;
                    let dir = *rng
                        .pick(&t.directions)
                        .unwrap_or(&dmakit::Direction::ToDevice);
                    let mut env = Env {
                        heap: &mut heap,
                        oracle: &mut oracle,
                        rng: &mut rng,
                        scratch: &mut scratch,
                        min_align: kpolicy.min_align(),
                    };
                    let buf = placers[site].acquire(&mut env, len).map_err(heap_err)?;
                    heap.neighbours(buf.start, buf.start + buf.len, line, &mut nb);
                    // The CPU leaves the other buffers of the queue alone: the device owns them.
                    nb.retain(|n| {
                        !batch
                            .iter()
                            .flatten()
                            .any(|p: &Pending| p.buf.owner == n.owner)
                    });
                    let range = PhysRange::new(PhysAddr::new(buf.start), buf.len)
                        .ok_or_else(|| model("buffer range"))?;
                    let mut tr = Transfer {
                        machine: &machine,
                        mapper: &mapper,
                        device,
                        knobs: knobs(t.burst),
                        rng: &mut rng,
                        oracle: &mut oracle,
                        scratch: &mut scratch,
                    };
                    let args = Args {
                        buf: range,
                        dir,
                        owner: buf.owner,
                        neighbours: &nb,
                        fresh: buf.fresh,
                    };
                    let started =
                        sites::run_at(site, &mut tr, &args, &mut seen[site]).map_err(model)?;
                    if let Some(l) = log.as_mut() {
                        l.mapped(driver.device, site, range, dir, &started);
                    }
                    batch.push(Some(Pending {
                        buf,
                        neighbours: nb.clone(),
                        started,
                    }));
                }
            }
            for p in &batch {
                if let Some(p) = p {
                    match &p.started {
                        Started::InFlight(f) => {
                            let mut tr = Transfer {
                                machine: &machine,
                                mapper: &mapper,
                                device,
                                knobs: knobs(t.burst),
                                rng: &mut rng,
                                oracle: &mut oracle,
                                scratch: &mut scratch,
                            };
                            if !device.is_trusted() {
                                window_leaked += tr.probe_window(f, granule).map_err(model)?;
                            }
                            tr.complete(f, &p.neighbours).map_err(model)?;
                            if let Some(l) = log.as_mut() {
                                l.unmapped(driver.device, site, f);
                            }
                        }
                        Started::MapFailed(e) => {
                            map_errors += 1;
                            first_map_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                done += 1;
                if done % 1024 == 0 {
                    progress.fetch_add(done - reported, Ordering::Relaxed);
                    reported = done;
                    if let Some(i) = &iommu {
                        i.dma
                            .flush_queues(dmakit::CpuTopology::current_cpu(&machine));
                    }
                }
                if done % sample_every == 0 {
                    // Whatever is mapped now: the rest of this queue is still in flight.
                    let used = mapper.stats().pools.iter().map(|p| p.usage.used).sum();
                    occupancy.push((done, used));
                }
            }
            for p in batch.into_iter().flatten() {
                let mut env = Env {
                    heap: &mut heap,
                    oracle: &mut oracle,
                    rng: &mut rng,
                    scratch: &mut scratch,
                    min_align: kpolicy.min_align(),
                };
                placers[site].release(&mut env, p.buf).map_err(heap_err)?;
            }
        }
        // The refill worker runs between operations, never from a mapping.
        if let Some(r) = &mut refill {
            r.step(&machine, done).map_err(RunError::Model)?;
        }
        // Only operations map, so what the counters gained since the last one is this one's.
        let now = bounce_counts(&mapper);
        let load = &mut loads[di];
        load.operations += 1;
        load.bounces += now.0 - counted.0;
        load.bytes_copied += now.1 - counted.1;
        counted = now;
    }
    progress.fetch_add(done - reported, Ordering::Relaxed);
    oracle.check_all(&machine, Owner::NOBODY).map_err(model)?;
    oracle.set_faults(machine.fault_count() as u64);
    let report = oracle.take_report();

    let stats = mapper.stats();
    let mapping_log = log.map(|l| MappingLog {
        stats: stats.clone(),
        ..l
    });
    let total = stats.total();
    let bounces = BounceReason::ALL
        .iter()
        .map(|&r| (r.name().to_string(), total.bounces(r)))
        .collect();
    let top_sites = mapper
        .top_sites(opts.top_sites)
        .into_iter()
        .map(|s| {
            let i = seen.iter().position(|l| {
                l.is_some_and(|l| {
                    l.file() == s.location.file()
                        && l.line() == s.location.line()
                        && l.column() == s.location.column()
                })
            });
            let (name, suggestion) = match i.map(|i| patterns[i]) {
                Some((d, t)) if !sc.devices[d.device].is_trusted() => (
                    format!("{}: {}", d.name, t.site),
                    String::from(UNTRUSTED_ADVICE),
                ),
                Some((d, t)) => (format!("{}: {}", d.name, t.site), advice(t.buffer)),
                None => (s.site(), String::from("not a scenario driver")),
            };
            let untrusted = i.is_some_and(|i| !sc.devices[patterns[i].0.device].is_trusted());
            let suggestion = if s.suggest_dma_alloc && !untrusted {
                format!("mark this allocation: {suggestion}")
            } else {
                suggestion
            };
            SiteReport {
                site: name,
                bounces: s.bounces,
                bytes: s.bytes,
                suggestion,
            }
        })
        .collect();
    let (pool_kind, bounce_pool_bytes) = match (&pool, &refill) {
        (Some(p), _) => ("swiotlb", p.usage().total),
        (None, Some(r)) => ("coherent", r.pool().usage().total),
        (None, None) => ("none", 0),
    };
    Ok(PolicyReport {
        name: policy.name().to_string(),
        kmalloc_min_align: kpolicy.min_align(),
        pool_kind: pool_kind.to_string(),
        kmalloc_bytes: heap.kmalloc_bytes(),
        bounce_pool_bytes,
        transfers: done,
        bounces,
        bounced_bytes: total.bytes_to_bounce + total.bytes_from_bounce,
        corrupted_bytes: report.corrupted_bytes,
        stale_bytes: report.stale_bytes,
        leaked_bytes: report.leaked_bytes + window_leaked,
        pool_high_water_bytes: stats
            .pools
            .iter()
            .map(|p| p.usage.high_water)
            .max()
            .unwrap_or(0),
        top_sites,
        per_second: PerSecond::of(&loads),
        drivers: loads,
        map_errors,
        pool_exhausted: total.exhaustion_errors,
        pool_growth: refill.as_ref().map(CoherentRefill::growth),
        device_faults: report.faults,
        occupancy,
        elapsed: started.elapsed(),
        first_errors: report
            .details
            .iter()
            .take(5)
            .map(|d| d.to_string())
            .collect(),
        first_map_error,
        mapping_log,
    })
}

/// Bounced mappings and bytes copied so far, as the mapper's statistics count them.
fn bounce_counts<P: dmakit::Platform>(mapper: &DmaMapper<P>) -> (u64, u64) {
    mapper.bounce_totals()
}

/// Why an untrusted device's buffers bounce, and what avoids the copy.
const UNTRUSTED_ADVICE: &str =
    "untrusted device: bounced unless the buffer fills whole IOMMU pages; use page-sized buffers (page_pool)";

/// What would stop a pattern's buffers from bouncing.
pub(crate) fn advice(b: BufferModel) -> String {
    match b {
        BufferModel::Kmalloc => "allocate it as a DMA buffer (AllocKind::Dma, dma-kmalloc): line aligned, never bounced",
        BufferModel::StructField { .. } => "align the structure to the cache line (allocate it as a DMA buffer) so its ____cacheline_aligned field owns its lines",
        BufferModel::PageFrag { .. } => "align receive fragments and their tail to the cache line",
        BufferModel::Noncontiguous { .. } => "mapped once by the DMA allocator, never bounced",
        BufferModel::DmaKmalloc | BufferModel::Pages => "the buffer lies beyond the device's DMA mask: allocate it below the mask (ZONE_DMA32) or map it through an IOMMU",
    }
    .to_string()
}
