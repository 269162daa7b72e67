//! The replay: every mapping of a trace judged by dmakit's exact rule and by Linux's
//! size-only rule, as on a machine whose devices do not snoop caches, per device and per
//! call chain.
//!
//! # What the figures mean
//!
//! A mapping here is a streaming mapping of RAM that succeeded: a `dma_map_phys`
//! (`dma_map_page`) event, or one entry of a `dma_map_sg` whose entries' sizes the trace
//! gives. Each is judged by the core's own rule ([`AlignmentPolicy::bounces`]) on a
//! non-coherent device with the given cache line:
//!
//! - **exact**: [`AlignmentPolicy::Exact`] bounces an inbound mapping (`FROM_DEVICE`,
//!   `BIDIRECTIONAL`) whose first or last cache line is partial. That is what dmakit would
//!   bounce: it judges the address range, as here, not who owns the rest of the line.
//! - **size-only**: [`AlignmentPolicy::SizeOnly`] is Linux's `dma_kmalloc_needs_bounce()`.
//! - **misses**: inbound mappings the exact rule bounces and the size-only rule does not.
//!
//! A trace gives each buffer's address and size, not its neighbours: a partial line is
//! *shared* only when something else lives in the rest of it at the time. So the exact
//! count is exactly what dmakit would bounce and an upper bound of what must bounce to be
//! safe; the misses are an upper bound of the mappings the size-only rule leaves at risk
//! of corruption (each is at risk only if its partial line has a neighbour in use).
//!
//! Bytes copied: a bounced inbound mapping copies its size into the bounce buffer when
//! mapped (both dmakit and Linux fill it, so a short device write leaks nothing) and back
//! when unmapped: twice its size, counted at the map. Each sync of a bounced mapping
//! (`dma_sync_single_*`, `dma_sync_sg_*` at a DMA address inside it, between its map and
//! its unmap) copies the bytes synced again. Scatter-gather unmaps give no DMA addresses:
//! such a mapping is forgotten when another mapping of the device takes its address.
//!
//! Not judged, and counted apart: failed mappings (`dma_addr=ffffffffffffffff`,
//! `dma_map_sg_err`), MMIO (`dma_map_resource`, `attrs=MMIO`: not RAM), zero-sized or
//! overflowing ranges, entries of scatter-gather lists an IOMMU merged (their sizes are
//! not traced) and those beyond the 128 the kernel records (`[TRUNCATED]`). Allocations
//! (`dma_alloc*`) own whole lines and never bounce; unmaps and syncs are counted as events.
//!
//! Memory stays bounded: at most [`MAX_DEVICES`] devices and [`MAX_CHAINS`] chains get
//! rows of their own, the rest are added to one row named [`OTHERS`]; at most
//! [`MAX_LIVE`] bounced mappings are remembered for their syncs.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use dmakit::stats::DEFAULT_SUGGEST_PPM;
use dmakit::{AlignmentPolicy, Device, DeviceError, DeviceId, PhysAddr, PhysRange};
use serde::Serialize;

use super::chain::{chain_of, NO_STACK};
use super::event::{Event, TraceDir, DMA_MAPPING_ERROR};
use super::reader::{ReadOptions, ReadStats, TraceError, TraceReader};
use crate::model::BufferModel;
use crate::run::advice;

/// Devices with rows of their own.
pub const MAX_DEVICES: usize = 4096;
/// Call chains with rows of their own.
pub const MAX_CHAINS: usize = 65536;
/// Bounced mappings remembered at once for their syncs; beyond, a bounced mapping's syncs
/// are not counted.
pub const MAX_LIVE: usize = 1 << 20;
/// The row that collects devices or chains beyond the limits.
pub const OTHERS: &str = "(others)";

/// The suggestion for mappings traced without a stack.
pub const NO_STACK_ADVICE: &str =
    "no call chain: record with the stacktrace trigger on the dma: map events to see where they come from";

/// What to replay against.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    line: u64,
    device: Device,
    top_chains: usize,
}

impl ReplayConfig {
    /// A machine with `cache_line`-byte lines and non-coherent devices; the report lists
    /// the `top_chains` chains with the most exact bounces.
    ///
    /// # Errors
    /// [`DeviceError::BadCacheLine`] unless `cache_line` is a power of two in `8..=4096`.
    pub fn new(cache_line: u64, top_chains: usize) -> Result<Self, DeviceError> {
        let device = Device::builder(DeviceId(0), "traced")
            .coherent(false)
            .cache_line(cache_line)
            .build()?;
        Ok(Self {
            line: cache_line,
            device,
            top_chains,
        })
    }
}

/// Mappings and bounces of a device, a chain or the whole trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Mappings judged.
    pub mappings: u64,
    /// Of those, inbound (`FROM_DEVICE`, `BIDIRECTIONAL`).
    pub inbound: u64,
    /// Mappings the exact rule bounces.
    pub exact_bounces: u64,
    /// Bytes those bounces copy.
    pub exact_bytes: u64,
    /// Mappings the size-only rule bounces.
    pub size_only_bounces: u64,
    /// Bytes those bounces copy.
    pub size_only_bytes: u64,
    /// Inbound mappings with a partial first or last line the size-only rule does not
    /// bounce.
    pub size_only_misses: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.mappings += o.mappings;
        self.inbound += o.inbound;
        self.exact_bounces += o.exact_bounces;
        self.exact_bytes += o.exact_bytes;
        self.size_only_bounces += o.size_only_bounces;
        self.size_only_bytes += o.size_only_bytes;
        self.size_only_misses += o.size_only_misses;
    }
}

/// One device's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceReplay {
    /// `dev_name()` as traced.
    pub device: String,
    /// Its figures.
    #[serde(flatten)]
    pub counts: Counts,
}

/// One call chain's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainReplay {
    /// The chain ([`chain_of`]).
    pub chain: String,
    /// The devices it mapped for, comma separated.
    pub devices: String,
    /// Its figures.
    #[serde(flatten)]
    pub counts: Counts,
    /// Its share of all exact bounces, in parts per million.
    pub share_ppm: u64,
    /// What would stop its bounces: "mark this allocation: ..." when its share reaches the
    /// mapper's suggestion threshold ([`NO_STACK_ADVICE`] for mappings without a stack).
    pub suggestion: String,
}

/// What the replay of a trace found. Field names are a stable interface (`--json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Cache line, bytes.
    pub cache_line: u64,
    /// Lines read.
    pub lines: u64,
    /// `dma:` events by name.
    pub events: BTreeMap<&'static str, u64>,
    /// Entries of other events and tracers, ignored.
    pub other_entries: u64,
    /// Malformed lines skipped (`--lenient`).
    pub skipped_lines: u64,
    /// The first skipped line's error.
    pub first_skipped: Option<String>,
    /// Entries the kernel's ring buffer dropped (`[LOST N EVENTS]`): when not 0, every
    /// count is a lower bound.
    pub lost_events: u64,
    /// Mappings that failed.
    pub failed_mappings: u64,
    /// Mappings of MMIO, not RAM.
    pub mmio_mappings: u64,
    /// Mappings with a zero size or a range past the end of the address space.
    pub invalid_ranges: u64,
    /// Scatter-gather entries whose sizes the trace does not give (merged by an IOMMU).
    pub unsized_sg_entries: u64,
    /// Scatter-gather entries beyond the 128 traced per list.
    pub untraced_sg_entries: u64,
    /// The whole trace.
    pub total: Counts,
    /// Per device, by name.
    pub devices: Vec<DeviceReplay>,
    /// Distinct call chains seen.
    pub chain_count: u64,
    /// The chains with the most exact bounces, most first.
    pub chains: Vec<ChainReplay>,
}

/// Rows keyed by name, at most `cap` of them plus [`OTHERS`].
struct Rows<T> {
    index: HashMap<String, usize>,
    rows: Vec<(String, T)>,
    cap: usize,
}

impl<T: Default> Rows<T> {
    fn new(cap: usize) -> Self {
        Self {
            index: HashMap::new(),
            rows: Vec::new(),
            cap,
        }
    }

    fn get(&mut self, name: &str) -> &mut T {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                let key = if self.rows.len() < self.cap {
                    name
                } else {
                    OTHERS
                };
                match self.index.get(key) {
                    Some(&i) => i,
                    None => {
                        self.rows.push((key.to_string(), T::default()));
                        self.index.insert(key.to_string(), self.rows.len() - 1);
                        self.rows.len() - 1
                    }
                }
            }
        };
        &mut self.rows[i].1
    }
}

#[derive(Default)]
struct ChainRow {
    counts: Counts,
    devices: Vec<String>,
}

/// A live mapping one of the rules bounces: its syncs copy too.
struct Live {
    len: u64,
    exact: bool,
    size_only: bool,
    chain: String,
}

struct Replayer<'c> {
    cfg: &'c ReplayConfig,
    report: ReplayReport,
    devices: Rows<Counts>,
    chains: Rows<ChainRow>,
    /// Bounced mappings not yet unmapped, per device by DMA address.
    live: HashMap<String, BTreeMap<u64, Live>>,
    live_count: usize,
}

impl Replayer<'_> {
    fn add(&mut self, device: &str, chain: &str, c: &Counts) {
        self.report.total.add(c);
        self.devices.get(device).add(c);
        let row = self.chains.get(chain);
        row.counts.add(c);
        if !row.devices.iter().any(|d| d == device) && row.devices.len() < 8 {
            row.devices.push(device.to_string());
        }
    }

    /// Judges one mapping of `len` bytes at `phys`, which the device sees at `dma`.
    fn mapping(&mut self, device: &str, chain: &str, dir: TraceDir, phys: u64, dma: u64, len: u64) {
        let Some(range) = PhysRange::new(PhysAddr::new(phys), len) else {
            self.report.invalid_ranges += 1;
            return;
        };
        let mut c = Counts {
            mappings: 1,
            ..Counts::default()
        };
        if let Some(dir) = dir.direction() {
            let (dev, line) = (&self.cfg.device, self.cfg.line);
            let exact = AlignmentPolicy::Exact.bounces(dev, range, dir, line);
            let size_only = AlignmentPolicy::SizeOnly.bounces(dev, range, dir, line);
            let copied = len.saturating_mul(2);
            c.inbound = u64::from(dir.device_writes());
            c.exact_bounces = u64::from(exact);
            c.exact_bytes = if exact { copied } else { 0 };
            c.size_only_bounces = u64::from(size_only);
            c.size_only_bytes = if size_only { copied } else { 0 };
            c.size_only_misses = u64::from(exact && !size_only);
            self.track(
                device,
                dma,
                (exact || size_only).then(|| Live {
                    len,
                    exact,
                    size_only,
                    chain: chain.to_string(),
                }),
            );
        }
        self.add(device, chain, &c);
    }

    /// A mapping at `dma` of `device` replaces whatever was there; a bounced one is kept
    /// (up to [`MAX_LIVE`]) so its syncs are counted.
    fn track(&mut self, device: &str, dma: u64, live: Option<Live>) {
        let map = self.live.get_mut(device);
        if map.and_then(|m| m.remove(&dma)).is_some() {
            self.live_count -= 1;
        }
        if let Some(l) = live.filter(|_| self.live_count < MAX_LIVE) {
            self.live
                .entry(device.to_string())
                .or_default()
                .insert(dma, l);
            self.live_count += 1;
        }
    }

    fn unmapped(&mut self, device: &str, dma: u64) {
        self.track(device, dma, None);
    }

    /// A sync of `size` bytes at `dma`: a bounce copies them (either way: an inbound
    /// bounce is filled for the device and copied back for the CPU).
    fn synced(&mut self, device: &str, dma: u64, size: u64) {
        let hit = self.live.get(device).and_then(|m| {
            let (&start, l) = m.range(..=dma).next_back()?;
            (dma - start < l.len).then(|| (l.exact, l.size_only, l.chain.clone()))
        });
        if let Some((exact, size_only, chain)) = hit {
            let c = Counts {
                exact_bytes: if exact { size } else { 0 },
                size_only_bytes: if size_only { size } else { 0 },
                ..Counts::default()
            };
            self.add(device, &chain, &c);
        }
    }

    fn record(&mut self, event: &Event, frames: &[String]) {
        *self.report.events.entry(event.name()).or_default() += 1;
        let chain = || chain_of(frames);
        match event {
            Event::Map {
                kind,
                device,
                dir,
                dma_addr,
                size,
                phys_addr,
                mmio,
            } => {
                if *dma_addr == DMA_MAPPING_ERROR {
                    self.report.failed_mappings += 1;
                } else if *mmio || *kind == super::event::SingleKind::Resource {
                    self.report.mmio_mappings += 1;
                } else {
                    self.mapping(device, &chain(), *dir, *phys_addr, *dma_addr, *size);
                }
            }
            Event::MapSg(sg) => {
                if sg.mmio {
                    self.report.mmio_mappings += u64::from(sg.nents);
                    return;
                }
                let traced = sg.phys_addrs.len() as u64;
                self.report.untraced_sg_entries += u64::from(sg.nents).saturating_sub(traced);
                if sg.nents != sg.ents {
                    self.report.unsized_sg_entries += traced;
                    return;
                }
                let chain = chain();
                let entries = sg.phys_addrs.iter().zip(&sg.dma_addrs).zip(&sg.sizes);
                for ((&phys, &dma), &len) in entries {
                    self.mapping(&sg.device, &chain, sg.dir, phys, dma, len);
                }
            }
            Event::MapSgErr { .. } => self.report.failed_mappings += 1,
            Event::Unmap {
                device, dma_addr, ..
            } => self.unmapped(device, *dma_addr),
            Event::SyncSingle {
                device,
                dma_addr,
                size,
                ..
            } => self.synced(device, *dma_addr, *size),
            Event::SyncSg {
                device,
                dma_addrs,
                sizes,
                ..
            } => {
                for (&dma, &len) in dma_addrs.iter().zip(sizes) {
                    self.synced(device, dma, len);
                }
            }
            _ => {}
        }
    }

    fn finish(mut self, stats: &ReadStats) -> ReplayReport {
        let r = &mut self.report;
        r.lines = stats.lines;
        r.other_entries = stats.other_entries;
        r.skipped_lines = stats.skipped_lines;
        r.first_skipped = stats.first_skipped.as_ref().map(|e| e.to_string());
        r.lost_events = stats.lost_events;
        let mut devices: Vec<DeviceReplay> = self
            .devices
            .rows
            .into_iter()
            .map(|(device, counts)| DeviceReplay { device, counts })
            .collect();
        devices.sort_by(|a, b| a.device.cmp(&b.device));
        r.devices = devices;
        r.chain_count = self.chains.rows.len() as u64;
        let total = r.total.exact_bounces;
        let mut chains: Vec<ChainReplay> = self
            .chains
            .rows
            .into_iter()
            .map(|(chain, row)| {
                let share_ppm = (u128::from(row.counts.exact_bounces) * 1_000_000
                    / u128::from(total.max(1))) as u64;
                let advice = advice(BufferModel::Kmalloc);
                let suggestion = if chain == NO_STACK {
                    String::from(NO_STACK_ADVICE)
                } else if share_ppm >= DEFAULT_SUGGEST_PPM {
                    format!("mark this allocation: {advice}")
                } else {
                    advice
                };
                ChainReplay {
                    chain,
                    devices: row.devices.join(","),
                    counts: row.counts,
                    share_ppm,
                    suggestion,
                }
            })
            .filter(|c| c.counts.exact_bounces > 0)
            .collect();
        chains.sort_by(|a, b| {
            b.counts
                .exact_bounces
                .cmp(&a.counts.exact_bounces)
                .then_with(|| a.chain.cmp(&b.chain))
        });
        chains.truncate(self.cfg.top_chains);
        r.chains = chains;
        self.report
    }
}

/// Reads the trace from `input` and replays it under `cfg`.
///
/// # Errors
/// As [`TraceReader::next_record`]: the first malformed line (unless `read.lenient`) or a
/// read error.
pub fn replay<R: BufRead>(
    input: R,
    read: ReadOptions,
    cfg: &ReplayConfig,
) -> Result<ReplayReport, TraceError> {
    let mut reader = TraceReader::new(input, read);
    let mut r = Replayer {
        cfg,
        report: ReplayReport {
            cache_line: cfg.line,
            lines: 0,
            events: BTreeMap::new(),
            other_entries: 0,
            skipped_lines: 0,
            first_skipped: None,
            lost_events: 0,
            failed_mappings: 0,
            mmio_mappings: 0,
            invalid_ranges: 0,
            unsized_sg_entries: 0,
            untraced_sg_entries: 0,
            total: Counts::default(),
            devices: Vec::new(),
            chain_count: 0,
            chains: Vec::new(),
        },
        devices: Rows::new(MAX_DEVICES),
        chains: Rows::new(MAX_CHAINS),
        live: HashMap::new(),
        live_count: 0,
    };
    while let Some(rec) = reader.next_record()? {
        r.record(&rec.event, &rec.frames);
    }
    Ok(r.finish(reader.stats()))
}
