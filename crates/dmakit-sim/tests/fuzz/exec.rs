//! The executor: runs operations on a rig, keeps the fuzzer's own model (buffers and what
//! they must hold, live mappings and the memory their bounces own, deferred requests,
//! statistics it expects) and checks every answer against it.

use std::sync::{Arc, Mutex};

use dmakit::dma_alloc::{DmaAllocator, DmaAllocatorConfig};
use dmakit::mem::ZonedPageAllocator;
use dmakit::{
    AllocContext, BouncePool, Device, DeviceId, Direction, DmaAddr, DmaError, DmaSegment,
    MapStatus, PhysAddr, PhysRange, SgEntry,
};
use dmakit_sim::{Owner, SimRng};

use super::check::{self, fail, Checked, Footprint, COHERENT};
use super::ops::{BadUnmap, Invalid, Op};
use super::rig::{self, Behind, Dev, Rig, RigOptions, COHERENT_BYTES, GIB, KIB, SEGMENT, SLOT};

/// A CPU buffer of the case and what it must hold.
pub struct Buffer {
    pub phys: PhysAddr,
    pub len: u64,
    pub owner: Owner,
    pub data: Vec<u8>,
    pub owners: Vec<Owner>,
    /// Mapped (or waiting in a deferred queue).
    pub busy: bool,
}

enum Kind {
    Single {
        buf: usize,
    },
    Sg {
        bufs: Vec<usize>,
        segs: Vec<DmaSegment>,
    },
}

struct Live {
    id: u64,
    dev: usize,
    dir: Direction,
    kind: Kind,
    /// The mapper validates unmaps of it (a bounce or an IOMMU mapping keeps a record).
    recorded: bool,
    footprint: Vec<Footprint>,
}

impl Live {
    fn bufs(&self) -> Vec<usize> {
        match &self.kind {
            Kind::Single { buf } => vec![*buf],
            Kind::Sg { bufs, .. } => bufs.clone(),
        }
    }
}

struct Pending {
    token: u64,
    dev: usize,
    buf: usize,
    dir: Direction,
    /// The device was released while this waited: it must never complete with `Ok`.
    cancelled: bool,
}

type Fired = Arc<Mutex<Vec<(u64, Result<DmaAddr, DmaError>)>>>;

pub struct State {
    pub rig: Rig,
    pub bufs: Vec<Buffer>,
    /// A buffer outside RAM (the copy of a bounce faults).
    fault_buf: (PhysAddr, u64),
    /// The 64 KiB buffer for the coherent pool.
    big: usize,
    /// The buffer larger than any bounce.
    huge: usize,
    live: Vec<(Live, DmaAddr)>,
    pending: Vec<Pending>,
    fired: Fired,
    next_id: u64,
    rng: SimRng,
    /// The first answer to `unmap_sg(&[])`: (device, was it Ok).
    empty_unmap_sg: Option<(DeviceId, bool)>,
    detached: Vec<bool>,
    grown: u32,
    zones: Option<Arc<ZonedPageAllocator>>,
    /// An operation is under way that is not a valid call: debug reports are expected.
    invalid_call: bool,
}

fn hostile(dev: DeviceId) -> Owner {
    Owner(1000 + dev.0)
}

impl State {
    pub fn new(o: RigOptions) -> State {
        let rig = Rig::new(o);
        let mut rng = SimRng::new(o.seed ^ 0x0b0f_fe75);
        let mut bufs = Vec::new();
        // Two arenas (below and above 4 GiB), each a 64 KiB page of packed kmalloc-style
        // objects and 64 KiB of larger, partly aligned buffers.
        for (lo, hi) in [(32 << 20, rig::BELOW_4G), (4 * GIB + (64 << 20), u64::MAX)] {
            let base = rig::pages(&rig.m, 384 * KIB, lo, hi);
            let base = PhysAddr::new(base.as_u64().next_multiple_of(64 * KIB));
            let mut at = 0u64;
            const SIZES: [u64; 12] = [8, 13, 24, 31, 64, 100, 128, 200, 512, 1000, 1536, 3000];
            while at < 60 * KIB {
                let len = SIZES[rng.below(SIZES.len() as u64) as usize];
                let len = if rng.chance(0.2) {
                    len + rng.below(64)
                } else {
                    len
                };
                bufs.push((base.add(at), len));
                at = (at + len).next_multiple_of(8)
                    + if rng.chance(0.3) {
                        8 * rng.below(40)
                    } else {
                        0
                    };
                if bufs.len() % 24 == 0 {
                    at = at.next_multiple_of(4096) + 0x900 * rng.below(2);
                }
            }
            let big = base.add(64 * KIB);
            bufs.push((big.add(rng.below(4) * 0x900), 13));
            bufs.push((big.add(16 * KIB), 16 * KIB));
            bufs.push((big.add(32 * KIB + 8), 8 * KIB - 16));
            bufs.push((big.add(48 * KIB), 4096));
            bufs.push((big.add(52 * KIB + 0x900), 13));
            // Larger buffers: 32-bit devices fill the low pool region with them.
            for j in 0..6 {
                bufs.push((
                    big.add(64 * KIB + j * 32 * KIB + 8 * (j % 2)),
                    32 * KIB - 16,
                ));
            }
        }
        // Larger than any bounce can be.
        let hbase = rig::pages(&rig.m, 2 * SEGMENT, 32 << 20, rig::BELOW_4G);
        bufs.push((hbase.add(8), SEGMENT + 4096));
        let huge = bufs.len() - 1;
        let bigbase = rig::pages(&rig.m, 128 * KIB, 32 << 20, rig::BELOW_4G);
        bufs.push((bigbase.add(8), COHERENT_BYTES - 8));
        let big = bufs.len() - 1;
        let bufs = bufs
            .into_iter()
            .enumerate()
            .map(|(i, (phys, len))| {
                let owner = Owner(100 + i as u32);
                let mut data = vec![0; len as usize];
                rng.fill_bytes(&mut data);
                rig.m.cpu_write(phys, &data, owner).unwrap();
                Buffer {
                    phys,
                    len,
                    owner,
                    data,
                    owners: vec![owner; len as usize],
                    busy: false,
                }
            })
            .collect();
        let n = rig.devices.len();
        State {
            rig,
            bufs,
            fault_buf: (PhysAddr::new(3 * GIB + 0x40), 100),
            big,
            huge,
            live: Vec::new(),
            pending: Vec::new(),
            fired: Arc::new(Mutex::new(Vec::new())),
            next_id: 1,
            rng,
            empty_unmap_sg: None,
            detached: vec![false; n],
            grown: 0,
            zones: None,
            invalid_call: false,
        }
    }

    pub fn devices(&self) -> u8 {
        self.rig.devices.len() as u8
    }

    fn dev(&self, i: usize) -> Dev {
        self.rig.devices[i].clone()
    }

    fn through_iommu(&self, i: usize) -> bool {
        matches!(self.rig.devices[i].behind, Behind::Iommu { .. }) && !self.detached[i]
    }

    /// The pool index device `i` bounces into.
    fn pool_for(&self, i: usize) -> usize {
        let d = &self.rig.devices[i];
        match (d.behind, d.dev.bounce_pool(), d.mapper) {
            (Behind::Nothing, BouncePool::Coherent, _) => COHERENT,
            (_, _, 3) => check::POOLS - 1,
            (_, _, m) => m,
        }
    }

    fn idle(&self, buf: u16) -> Option<usize> {
        let b = if buf == super::ops::HUGE {
            self.huge
        } else {
            buf as usize % self.bufs.len()
        };
        (!self.bufs[b].busy).then_some(b)
    }

    // ---------------------------------------------------------------- bookkeeping

    /// What device `i`'s new mapping at `dma` (`len` bytes) owns in the pools.
    fn footprint(&self, i: usize, id: u64, dma: DmaAddr, len: u64) -> Vec<Footprint> {
        let d = &self.rig.devices[i];
        let mut out = Vec::new();
        if let (true, Behind::Iommu { unit, .. }) = (self.through_iommu(i), d.behind) {
            let g = self.rig.granules[unit];
            let dom = d.domain.unwrap();
            let mut iova = dma.as_u64() & !(g - 1);
            while iova < dma.as_u64() + len {
                if let Some((p, _)) = self.rig.units[unit].iova_to_phys(dom, DmaAddr::new(iova)) {
                    let p = p.as_u64() & !(g - 1);
                    if let Some(pool) = check::pool_of(&self.rig, p) {
                        out.push(Footprint {
                            pool,
                            start: p,
                            end: p + g,
                            id,
                        });
                    }
                }
                iova += g;
            }
            return out;
        }
        let a = dma.as_u64();
        if let Some(pool) = check::pool_of(&self.rig, a) {
            let unit = if pool == COHERENT || pool == check::TRANSIENT {
                rig::COHERENT_MIN
            } else {
                SLOT
            };
            let start = (a & !d.dev.min_align_mask()) & !(unit - 1);
            let end = (a + len).next_multiple_of(unit);
            out.push(Footprint {
                pool,
                start,
                end,
                id,
            });
        }
        out
    }

    /// Records a new live mapping, grants it to the device and checks the device can use
    /// it: it reads the buffer (or writes it back unchanged, for a write-only mapping).
    fn add_live(
        &mut self,
        i: usize,
        dir: Direction,
        kind: Kind,
        ranges: &[(DmaAddr, u64)],
    ) -> Checked {
        let id = self.next_id;
        self.next_id += 1;
        let mut footprint = Vec::new();
        for &(dma, len) in ranges {
            footprint.extend(self.footprint(i, id, dma, len));
        }
        let d = self.dev(i);
        let recorded = !footprint.is_empty() || self.through_iommu(i);
        let bufs = match &kind {
            Kind::Single { buf } => vec![*buf],
            Kind::Sg { bufs, .. } => bufs.clone(),
        };
        for &b in &bufs {
            self.bufs[b].busy = true;
        }
        for &(dma, len) in ranges {
            self.rig.m.grant(d.id(), dma, len).unwrap();
        }
        let first = ranges[0].0;
        self.live.push((
            Live {
                id,
                dev: i,
                dir,
                kind,
                recorded,
                footprint,
            },
            first,
        ));
        // The device can use what it was given.
        let (want, owners) = self.expected_concat(&bufs);
        let mut at = 0usize;
        for &(dma, len) in ranges {
            let n = len as usize;
            if dir.device_reads() {
                let seen = match self.rig.m.device_read(d.id(), dma, len) {
                    Ok(s) => s,
                    Err(e) => {
                        return fail(
                            "ok-mapping-unusable",
                            format!("{}: read of {dma} (+{len}) faults: {e}", d.dev.name()),
                        )
                    }
                };
                check::same_bytes(
                    &format!("{} reads its new mapping {dma}", d.dev.name()),
                    (&seen.data, &seen.owners),
                    (&want[at..at + n], &owners[at..at + n]),
                    "device-sees-wrong-bytes",
                )?;
            } else if let Err(e) = write_runs(
                &self.rig.m,
                d.id(),
                dma,
                &want[at..at + n],
                &owners[at..at + n],
            ) {
                return fail(
                    "ok-mapping-unusable",
                    format!("{}: write of {dma} (+{len}) faults: {e}", d.dev.name()),
                );
            }
            at += n;
        }
        Ok(())
    }

    fn expected_concat(&self, bufs: &[usize]) -> (Vec<u8>, Vec<Owner>) {
        let mut d = Vec::new();
        let mut o = Vec::new();
        for &b in bufs {
            d.extend_from_slice(&self.bufs[b].data);
            o.extend_from_slice(&self.bufs[b].owners);
        }
        (d, o)
    }

    /// The byte oracle for one buffer: the CPU sees exactly what it must.
    fn check_buffer(&self, b: usize, when: &str) -> Checked {
        let buf = &self.bufs[b];
        let (d, o) = rig::cpu_bytes(&self.rig.m, buf.phys, buf.len);
        check::same_bytes(
            &format!("buffer {b} ({} bytes at {}) {when}", buf.len, buf.phys),
            (&d, &o),
            (&buf.data, &buf.owners),
            "byte-oracle",
        )
    }

    pub fn check_idle_buffers(&self) -> Checked {
        for b in 0..self.bufs.len() {
            if !self.bufs[b].busy {
                self.check_buffer(b, "while idle")?;
            }
        }
        Ok(())
    }

    /// The debug checker reports nothing for valid calls.
    fn checker_quiet(&self, what: &str) -> Checked {
        for (i, m) in self.rig.mappers.iter().enumerate() {
            let reports = m.debug_checker().unwrap().take_reports();
            if !self.invalid_call {
                if let Some(r) = reports.first() {
                    return fail(
                        "checker-report-on-valid-call",
                        format!(
                            "mapper {i} after {what}: {} reports, first: {r}",
                            reports.len()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// How a refused valid map is judged.
    fn judge_map_error(
        &self,
        i: usize,
        phys: PhysAddr,
        len: u64,
        e: DmaError,
        before: &[dmakit::bounce::PoolUsage; check::POOLS],
        fired_before: usize,
    ) -> Checked {
        // Deferred mappings that completed during the call are not in the model yet.
        let fired_during = self.fired.lock().unwrap().len() != fired_before;
        let d = self.dev(i);
        let name = d.dev.name();
        if self.detached[i] {
            return Ok(());
        }
        match e {
            DmaError::NoBouncePool { .. }
                if self.rig.mapper(&d).bounce_backend(&d.dev).is_some() =>
            {
                fail(
                    "no-bounce-pool-with-a-pool",
                    format!("{name} has a pool but got {e:?}"),
                )
            }
            DmaError::TooLargeToBounce { max: 0, .. } => {
                fail("too-large-says-nothing", format!("{name}: {e:?}"))
            }
            DmaError::PoolExhausted { .. } if fired_during => Ok(()),
            DmaError::PoolExhausted { .. } => {
                let p = self.pool_for(i);
                let lead = phys.as_u64()
                    & (d.dev.min_align_mask() | self.rig.granule(&d).map_or(0, |g| g - 1));
                let need = (lead + len).next_multiple_of(self.rig.granule(&d).unwrap_or(1));
                let cap = if p == COHERENT {
                    COHERENT_BYTES
                } else {
                    SEGMENT
                };
                if before[p].used == 0 && need <= cap {
                    return fail(
                        "exhausted-while-free",
                        format!(
                            "{name}: {e:?} although {} was entirely free ({:?})",
                            check::POOL_NAMES[p],
                            before[p]
                        ),
                    );
                }
                let holders = self
                    .live
                    .iter()
                    .filter(|(l, _)| l.footprint.iter().any(|f| f.pool == p))
                    .count();
                if holders == 0 {
                    return fail(
                        "exhausted-while-only-unmapped-hold-it",
                        format!(
                            "{name}: {e:?} with no live bounce in {} ({:?})",
                            check::POOL_NAMES[p],
                            before[p]
                        ),
                    );
                }
                Ok(())
            }
            DmaError::TooLargeToBounce { .. } | DmaError::IovaExhausted { .. } => Ok(()),
            _ => fail(
                "valid-map-refused",
                format!("{name}: map of {len} at {phys}: {e:?}"),
            ),
        }
    }

    /// After a failed mapping call: the pools are as they were (unless deferred mappings
    /// completed during the call).
    fn failed_left_pools(
        &self,
        before: &[dmakit::bounce::PoolUsage; check::POOLS],
        fired_before: usize,
        what: &str,
    ) -> Checked {
        if self.fired.lock().unwrap().len() != fired_before {
            return Ok(());
        }
        check::pools_unchanged(before, &check::usages(&self.rig), what)
    }

    // ---------------------------------------------------------------- operations

    fn map(&mut self, i: usize, b: usize, dir: Direction) -> Checked {
        let d = self.dev(i);
        let (phys, len) = (self.bufs[b].phys, self.bufs[b].len);
        let before = check::usages(&self.rig);
        let fired = self.fired.lock().unwrap().len();
        match self.rig.mapper(&d).map_traced(&d.dev, phys, len, dir) {
            Ok((dma, _)) => self.add_live(i, dir, Kind::Single { buf: b }, &[(dma, len)]),
            Err(e) => {
                self.judge_map_error(i, phys, len, e, &before, fired)?;
                self.failed_left_pools(&before, fired, &format!("failed map by {}", d.dev.name()))
            }
        }
    }

    fn map_or_defer(&mut self, i: usize, b: usize, dir: Direction) -> Checked {
        let d = self.dev(i);
        let (phys, len) = (self.bufs[b].phys, self.bufs[b].len);
        let token = self.next_id;
        self.next_id += 1;
        let fired = self.fired.clone();
        let done = Box::new(move |r| fired.lock().unwrap().push((token, r)));
        let pool = self.pool_for(i);
        let queued_same_pool = self.pending.iter().any(|p| {
            !p.cancelled
                && self.pool_for(p.dev) == pool
                && self.rig.devices[p.dev].mapper == d.mapper
        });
        let before = check::usages(&self.rig);
        let nfired = self.fired.lock().unwrap().len();
        match self
            .rig
            .mapper(&d)
            .map_or_defer(&d.dev, phys, len, dir, done)
        {
            Ok(MapStatus::Mapped(dma)) => {
                self.add_live(i, dir, Kind::Single { buf: b }, &[(dma, len)])
            }
            Ok(MapStatus::Deferred) => {
                self.bufs[b].busy = true;
                self.pending.push(Pending {
                    token,
                    dev: i,
                    buf: b,
                    dir,
                    cancelled: false,
                });
                if self.detached[i] {
                    return Ok(());
                }
                let lead = phys.as_u64() & d.dev.min_align_mask();
                // It must bounce: forced, or an inbound buffer whose first line is shared.
                let must_bounce = d.dev.force_bounce()
                    || (!d.dev.is_coherent()
                        && dir.device_writes()
                        && phys.as_u64() % d.dev.cache_line() != 0);
                if !self.through_iommu(i) && must_bounce && lead + len > SEGMENT {
                    return fail(
                        "too-large-deferred",
                        format!("{}: {len} bytes can never bounce (segment {SEGMENT}) but were deferred", d.dev.name()),
                    );
                }
                if !queued_same_pool {
                    // Nothing waits ahead of it for the same pool: a plain map must fail too.
                    if let Ok((dma, path)) = self.rig.mapper(&d).map_traced(&d.dev, phys, len, dir)
                    {
                        let _ = self.rig.mapper(&d).unmap(&d.dev, dma, len, dir);
                        return fail(
                            if matches!(path, dmakit::MapPath::Bounced { .. }) {
                                "deferred-behind-another-pool"
                            } else {
                                "deferred-without-bounce"
                            },
                            format!(
                                "{}: {len} bytes at {phys} deferred ({} waiting in all), yet a plain map succeeds",
                                d.dev.name(),
                                self.pending.len() - 1
                            ),
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.judge_map_error(i, phys, len, e, &before, nfired)?;
                self.failed_left_pools(
                    &before,
                    nfired,
                    &format!("failed map_or_defer by {}", d.dev.name()),
                )
            }
        }
    }

    fn map_sg(&mut self, i: usize, bufs: &[u16], dir: Direction) -> Checked {
        let d = self.dev(i);
        let mut chosen: Vec<usize> = Vec::new();
        for &b in bufs {
            if let Some(b) = self.idle(b) {
                if !chosen.contains(&b) {
                    chosen.push(b);
                }
            }
        }
        if chosen.is_empty() {
            return Ok(());
        }
        let entries: Vec<SgEntry> = chosen
            .iter()
            .map(|&b| SgEntry {
                phys: self.bufs[b].phys,
                len: self.bufs[b].len,
            })
            .collect();
        let before = check::usages(&self.rig);
        let nfired = self.fired.lock().unwrap().len();
        let stats_before = device_stats(self.rig.mapper(&d), d.id());
        match self.rig.mapper(&d).map_sg(&d.dev, &entries, dir) {
            Ok(segs) => {
                let total: u64 = segs.iter().map(|s| s.len).sum();
                let want: u64 = entries.iter().map(|e| e.len).sum();
                if total != want {
                    return fail(
                        "sg-segments-wrong",
                        format!("{}: segments cover {total} of {want} bytes", d.dev.name()),
                    );
                }
                let ranges: Vec<(DmaAddr, u64)> = segs.iter().map(|s| (s.dma, s.len)).collect();
                self.add_live(i, dir, Kind::Sg { bufs: chosen, segs }, &ranges)?;
                let after = device_stats(self.rig.mapper(&d), d.id());
                let bounced = !self.live.last().unwrap().0.footprint.is_empty();
                if after.0 <= stats_before.0 || (bounced && after.1 <= stats_before.1) {
                    return fail(
                        "statistics-miss-mappings",
                        format!(
                            "{}: map_sg of {} entries (bounced: {bounced}): mappings {} -> {}, bounces {} -> {}",
                            d.dev.name(),
                            entries.len(),
                            stats_before.0,
                            after.0,
                            stats_before.1,
                            after.1
                        ),
                    );
                }
                Ok(())
            }
            Err(e) => {
                let (p, l) = (
                    entries[0].phys,
                    entries.iter().map(|e| e.len).max().unwrap(),
                );
                // A list's own earlier segments hold room when a later one fails: the
                // room judgments hold for single-entry lists only.
                if entries.len() > 1 && matches!(e, DmaError::PoolExhausted { .. }) {
                    return self.failed_left_pools(&before, nfired, "failed map_sg");
                }
                self.judge_map_error(i, p, l, e, &before, nfired)?;
                self.failed_left_pools(
                    &before,
                    nfired,
                    &format!("failed map_sg by {}", d.dev.name()),
                )
            }
        }
    }

    fn pick(&self, pick: u32, f: impl Fn(&Live) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.live.len())
            .filter(|&k| f(&self.live[k].0))
            .collect();
        (!c.is_empty()).then(|| c[pick as usize % c.len()])
    }

    /// Correct unmap of live mapping `k`, with every check of what follows.
    fn unmap(&mut self, k: usize) -> Checked {
        let (l, dma) = self.live.remove(k);
        let d = self.dev(l.dev);
        let mapper = self.rig.mapper(&d);
        let ranges = l.ranges_with(dma, self);
        let nfired = self.fired.lock().unwrap().len();
        let r = match &l.kind {
            Kind::Single { buf } => mapper.unmap(&d.dev, dma, self.bufs[*buf].len, l.dir),
            Kind::Sg { segs, .. } => mapper.unmap_sg(&d.dev, segs, l.dir),
        };
        for &(a, n) in &ranges {
            let _ = self.rig.m.revoke(d.id(), a, n);
        }
        for b in l.bufs() {
            self.bufs[b].busy = false;
        }
        if let Err(e) = r {
            return fail(
                "valid-unmap-refused",
                format!("{}: unmap of {dma}: {e:?}", d.dev.name()),
            );
        }
        for b in l.bufs() {
            self.check_buffer(
                b,
                &format!("after {}'s unmap ({})", d.dev.name(), l.dir.name()),
            )?;
        }
        // (A deferred mapping completed by this unmap may have the same IOVA again.)
        let refilled = self.fired.lock().unwrap().len() != nfired;
        if let (true, false, Behind::Iommu { lazy: false, .. }) =
            (self.through_iommu(l.dev), refilled, d.behind)
        {
            // A strict domain: the old IOVA is gone at once.
            let (a, n) = ranges[0];
            self.rig.m.grant(d.id(), a, n).unwrap();
            let r = self.rig.m.device_read(d.id(), a, n);
            self.rig.m.revoke(d.id(), a, n).unwrap();
            if r.is_ok() && l.dir.device_reads() {
                return fail(
                    "strict-unmap-still-reachable",
                    format!("{} reads {a} after its unmap", d.dev.name()),
                );
            }
        }
        Ok(())
    }

    fn sync(&mut self, k: usize, off: u32, len: u32) -> Checked {
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            return Ok(());
        };
        let (i, dir) = (l.dev, l.dir);
        let d = self.dev(i);
        let blen = self.bufs[buf].len;
        let off = off as u64 % blen;
        let n = 1 + len as u64 % (blen - off);
        let mapper = self.rig.mapper(&d);
        if let Err(e) = mapper.sync_for_cpu(&d.dev, dma, off, n, dir) {
            return fail(
                "valid-sync-refused",
                format!("{}: sync_for_cpu {dma}+{off} ({n}): {e:?}", d.dev.name()),
            );
        }
        let b = &self.bufs[buf];
        if dir.device_writes() {
            let (seen, owners) = rig::cpu_bytes(&self.rig.m, b.phys.add(off), n);
            let (o, e) = (off as usize, (off + n) as usize);
            check::same_bytes(
                &format!(
                    "buffer {buf} part +{off} ({n}) after sync_for_cpu by {}",
                    d.dev.name()
                ),
                (&seen, &owners),
                (&b.data[o..e], &b.owners[o..e]),
                "byte-oracle",
            )?;
        }
        if dir.device_reads() {
            let mut new = vec![0; n as usize];
            self.rng.fill_bytes(&mut new);
            let (phys, owner) = (b.phys, b.owner);
            self.rig.m.cpu_write(phys.add(off), &new, owner).unwrap();
            let b = &mut self.bufs[buf];
            b.data[off as usize..(off + n) as usize].copy_from_slice(&new);
            b.owners[off as usize..(off + n) as usize].fill(owner);
        }
        if let Err(e) = self
            .rig
            .mapper(&d)
            .sync_for_device(&d.dev, dma, off, n, dir)
        {
            return fail(
                "valid-sync-refused",
                format!("{}: sync_for_device {dma}+{off} ({n}): {e:?}", d.dev.name()),
            );
        }
        if dir.device_reads() {
            let seen = self.rig.m.device_read(d.id(), dma.add(off), n).unwrap();
            let b = &self.bufs[buf];
            let (o, e) = (off as usize, (off + n) as usize);
            check::same_bytes(
                &format!("{} reads +{off} ({n}) after sync_for_device", d.dev.name()),
                (&seen.data, &seen.owners),
                (&b.data[o..e], &b.owners[o..e]),
                "device-sees-wrong-bytes",
            )?;
        }
        Ok(())
    }

    fn device_write(&mut self, k: usize, seed: u8) -> Checked {
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            return Ok(());
        };
        let d = self.dev(l.dev);
        let blen = self.bufs[buf].len;
        let off = seed as u64 % blen;
        let n = 1 + (seed as u64 * 7919) % (blen - off);
        let mut data = vec![0; n as usize];
        self.rng.fill_bytes(&mut data);
        let owner = self.bufs[buf].owner;
        if let Err(e) = self.rig.m.device_write(d.id(), dma.add(off), &data, owner) {
            return fail(
                "ok-mapping-unusable",
                format!("{}: write {dma}+{off} ({n}): {e}", d.dev.name()),
            );
        }
        let b = &mut self.bufs[buf];
        b.data[off as usize..(off + n) as usize].copy_from_slice(&data);
        b.owners[off as usize..(off + n) as usize].fill(owner);
        Ok(())
    }

    fn device_read(&mut self, k: usize) -> Checked {
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            return Ok(());
        };
        let d = self.dev(l.dev);
        let b = &self.bufs[buf];
        let seen = match self.rig.m.device_read(d.id(), dma, b.len) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    "ok-mapping-unusable",
                    format!("{}: read {dma}: {e}", d.dev.name()),
                )
            }
        };
        check::same_bytes(
            &format!("{} reads its mapping {dma} of buffer {buf}", d.dev.name()),
            (&seen.data, &seen.owners),
            (&b.data, &b.owners),
            "device-sees-wrong-bytes",
        )
    }

    /// The whole granules of a live IOMMU mapping of an untrusted device.
    fn windows(&self, l: &Live, dma: DmaAddr) -> Vec<(u64, u64)> {
        let d = &self.rig.devices[l.dev];
        let g = self.rig.granule(d).unwrap();
        l.ranges_with(dma, self)
            .iter()
            .map(|&(a, n)| {
                let s = a.as_u64() & !(g - 1);
                (s, (a.as_u64() + n).next_multiple_of(g))
            })
            .collect()
    }

    fn hostile_read(&mut self, i: usize) -> Checked {
        let d = self.dev(i);
        if !d.untrusted() || self.detached[i] {
            return Ok(());
        }
        let mine: Vec<usize> = (0..self.live.len())
            .filter(|&k| self.live[k].0.dev == i && self.live[k].0.dir.device_reads())
            .collect();
        let mut granted: Vec<(u64, u64)> = Vec::new();
        for (l, dma) in self.live.iter().filter(|(l, _)| l.dev == i) {
            granted.extend(self.windows(l, *dma));
        }
        for k in mine {
            let (l, dma) = (&self.live[k].0, self.live[k].1);
            let mut allowed: Vec<Owner> = l.bufs().iter().map(|&b| self.bufs[b].owner).collect();
            allowed.push(hostile(d.id()));
            for (s, e) in self.windows(l, dma) {
                let (a, n) = (DmaAddr::new(s), e - s);
                self.rig.m.grant(d.id(), a, n).unwrap();
                let seen = self.rig.m.device_read(d.id(), a, n);
                self.rig.m.revoke(d.id(), a, n).unwrap();
                let seen = match seen {
                    Ok(s) => s,
                    Err(err) => {
                        return fail(
                            "ok-mapping-unusable",
                            format!("{}: granule read {a} (+{n}): {err}", d.dev.name()),
                        )
                    }
                };
                check::isolated(
                    &format!(
                        "{} ({}) reads the granules {a}..{e:#x} of its mapping {dma}",
                        d.dev.name(),
                        d.what
                    ),
                    &seen.data,
                    &seen.owners,
                    &allowed,
                )?;
                // Beyond what was granted the engine refuses.
                if !granted.iter().any(|&(gs, ge)| gs <= e && e < ge)
                    && self.rig.m.device_read(d.id(), DmaAddr::new(e), 1).is_ok()
                {
                    return fail(
                        "read-outside-grant",
                        format!("{} read {e:#x}, never granted", d.dev.name()),
                    );
                }
            }
        }
        Ok(())
    }

    fn hostile_write(&mut self, k: usize) -> Checked {
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            return Ok(());
        };
        let d = self.dev(l.dev);
        if !d.untrusted() || self.detached[l.dev] || !l.dir.device_writes() {
            return Ok(());
        }
        let w = self.windows(l, dma);
        let (s, e) = w[0];
        let mut junk = vec![0; (e - s) as usize];
        self.rng.fill_bytes(&mut junk);
        let (a, n) = (DmaAddr::new(s), e - s);
        self.rig.m.grant(d.id(), a, n).unwrap();
        let r = self.rig.m.device_write(d.id(), a, &junk, hostile(d.id()));
        self.rig.m.revoke(d.id(), a, n).unwrap();
        if let Err(err) = r {
            return fail(
                "ok-mapping-unusable",
                format!("{}: granule write {a} (+{n}): {err}", d.dev.name()),
            );
        }
        // What landed on the buffer is the device's; the rest is its own padding.
        let off = (dma.as_u64() - s) as usize;
        let b = &mut self.bufs[buf];
        let len = b.len as usize;
        b.data.copy_from_slice(&junk[off..off + len]);
        b.owners.fill(hostile(d.id()));
        Ok(())
    }

    fn cpu_touch(&mut self, b: usize, seed: u8) -> Checked {
        let buf = &self.bufs[b];
        let off = seed as u64 % buf.len;
        let n = 1 + (seed as u64 * 31) % (buf.len - off);
        let mut data = vec![0; n as usize];
        self.rng.fill_bytes(&mut data);
        let (phys, owner) = (buf.phys, buf.owner);
        self.rig.m.cpu_write(phys.add(off), &data, owner).unwrap();
        let buf = &mut self.bufs[b];
        buf.data[off as usize..(off + n) as usize].copy_from_slice(&data);
        buf.owners[off as usize..(off + n) as usize].fill(owner);
        Ok(())
    }

    fn bad_unmap(&mut self, pick: u32, kind: BadUnmap) -> Checked {
        let Some(k) = self.pick(pick, |l| {
            l.recorded && matches!(l.kind, Kind::Single { .. })
        }) else {
            return Ok(());
        };
        let (l, dma) = (&self.live[k].0, self.live[k].1);
        let Kind::Single { buf } = l.kind else {
            unreachable!()
        };
        let (i, dir) = (l.dev, l.dir);
        let d = self.dev(i);
        let len = self.bufs[buf].len;
        if kind == BadUnmap::Double {
            self.unmap(k)?;
            self.checker_quiet("the first of a double unmap")?;
        }
        let (a, n, dr) = match kind {
            BadUnmap::WrongSize => (dma, if len > 1 { len - 1 } else { len + 1 }, dir),
            BadUnmap::WrongDirection => (
                dma,
                len,
                match dir {
                    Direction::ToDevice => Direction::FromDevice,
                    _ => Direction::ToDevice,
                },
            ),
            BadUnmap::Double => (dma, len, dir),
            BadUnmap::Unknown => (dma.add(8), len.saturating_sub(8).max(1), dir),
        };
        if kind == BadUnmap::Unknown && self.live.iter().any(|(_, s)| s.as_u64() == a.as_u64()) {
            return Ok(());
        }
        self.invalid_call = true;
        let before = check::usages(&self.rig);
        let checker = self.rig.mapper(&d).debug_checker().unwrap();
        let reported = checker.reports().len();
        let r = self.rig.mapper(&d).unmap(&d.dev, a, n, dr);
        // An address that no longer looks like a bounce (a transient bounce's pages went
        // back) is unmapped as a direct mapping, which keeps no record: then the debug
        // checker must report it, as documented.
        if r.is_ok() && checker.reports().len() == reported {
            return fail(
                "invalid-unmap-accepted",
                format!(
                    "{}: {kind:?} unmap ({a}, {n}, {}) returned Ok and the checker said nothing",
                    d.dev.name(),
                    dr.name()
                ),
            );
        }
        check::pools_unchanged(
            &before,
            &check::usages(&self.rig),
            &format!("{kind:?} unmap"),
        )
    }

    fn invalid(&mut self, i: usize, kind: Invalid) -> Checked {
        let d = self.dev(i);
        let mapper = self.rig.mapper(&d);
        let b = &self.bufs[0];
        let before = check::usages(&self.rig);
        self.invalid_call = true;
        let name = d.dev.name();
        let must_fail = |r: bool, what: &str| {
            if r {
                fail(
                    match kind {
                        Invalid::Huge => "huge-range-accepted",
                        _ => "invalid-call-accepted",
                    },
                    format!("{name}: {what} returned Ok"),
                )
            } else {
                Ok(())
            }
        };
        match kind {
            Invalid::ZeroLength => must_fail(
                mapper.map(&d.dev, b.phys, 0, Direction::ToDevice).is_ok(),
                "map of 0 bytes",
            )?,
            Invalid::Overflow => must_fail(
                mapper
                    .map(
                        &d.dev,
                        PhysAddr::new(u64::MAX - 10),
                        100,
                        Direction::ToDevice,
                    )
                    .is_ok(),
                "map wrapping past u64::MAX",
            )?,
            Invalid::Huge => must_fail(
                mapper
                    .map(&d.dev, PhysAddr::new(0), u64::MAX, Direction::ToDevice)
                    .is_ok(),
                "map(0, u64::MAX)",
            )?,
            Invalid::EmptySg => must_fail(
                mapper.map_sg(&d.dev, &[], Direction::ToDevice).is_ok(),
                "map_sg(&[])",
            )?,
            Invalid::ZeroLengthSgEntry => {
                let e = [
                    SgEntry {
                        phys: b.phys,
                        len: b.len.min(8),
                    },
                    SgEntry {
                        phys: b.phys.add(64),
                        len: 0,
                    },
                ];
                must_fail(
                    mapper.map_sg(&d.dev, &e, Direction::ToDevice).is_ok(),
                    "map_sg with a zero-length entry",
                )?
            }
            Invalid::EmptyUnmapSg => {
                let ok = mapper.unmap_sg(&d.dev, &[], Direction::ToDevice).is_ok();
                match self.empty_unmap_sg {
                    None => self.empty_unmap_sg = Some((d.id(), ok)),
                    Some((other, was)) if was != ok => {
                        return fail(
                            "paths-disagree",
                            format!(
                                "unmap_sg(&[]): {other} got ok={was}, {name} ({}) got ok={ok}",
                                d.what
                            ),
                        )
                    }
                    Some(_) => {}
                }
            }
            Invalid::SyncOutOfRange => {
                if let Some(k) = self.pick(0, |l| {
                    l.dev == i && l.recorded && matches!(l.kind, Kind::Single { .. })
                }) {
                    let (l, dma) = (&self.live[k].0, self.live[k].1);
                    let Kind::Single { buf } = l.kind else {
                        unreachable!()
                    };
                    let len = self.bufs[buf].len;
                    must_fail(
                        mapper.sync_for_cpu(&d.dev, dma, len, 1, l.dir).is_ok(),
                        "sync past the mapping's end",
                    )?;
                }
            }
            Invalid::DmaBits65 => {
                if Device::builder(DeviceId(99), "bits65")
                    .dma_bits(65)
                    .build()
                    .is_ok()
                {
                    return fail("dma-bits-65-accepted", "dma_bits(65) was accepted");
                }
            }
            Invalid::NearTop => {
                // Valid or not, a range ending next to u64::MAX must not panic; if mapped,
                // it unmaps.
                let coh = self.dev(7);
                let at = PhysAddr::new(u64::MAX - 0x3f);
                if let Ok(dma) = self
                    .rig
                    .mapper(&coh)
                    .map(&coh.dev, at, 0x20, Direction::ToDevice)
                {
                    let _ = self
                        .rig
                        .mapper(&coh)
                        .unmap(&coh.dev, dma, 0x20, Direction::ToDevice);
                }
            }
        }
        check::pools_unchanged(
            &before,
            &check::usages(&self.rig),
            &format!("invalid call {kind:?}"),
        )
    }

    fn unmap_all_of(&mut self, i: usize) -> Checked {
        while let Some(k) = self.live.iter().position(|(l, _)| l.dev == i) {
            self.unmap(k)?;
        }
        Ok(())
    }

    fn release(&mut self, i: usize) -> Checked {
        // Unmapping may complete the device's own deferred requests: unmap those too.
        while self.live.iter().any(|(l, _)| l.dev == i) {
            self.unmap_all_of(i)?;
            self.drain_callbacks()?;
        }
        self.checker_quiet("unmapping before a release")?;
        let d = self.dev(i);
        for p in self.pending.iter_mut().filter(|p| p.dev == i) {
            p.cancelled = true;
        }
        let leaks = self.rig.mapper(&d).release_device(&d.dev);
        if let Some(r) = leaks.first() {
            return fail(
                "release-reports-leak",
                format!("{} released with nothing mapped: {r}", d.dev.name()),
            );
        }
        Ok(())
    }

    fn grow(&mut self) -> Checked {
        if self.grown >= 6 {
            return Ok(());
        }
        let next = self.rig.hooks.iter().find_map(|h| {
            let mut q = h.queue.lock().unwrap();
            (!q.is_empty()).then(|| q.remove(0))
        });
        let Some((pool, req)) = next else {
            return Ok(());
        };
        self.grown += 1;
        let bytes = req.min_bytes.max(rig::GROW_BYTES).next_multiple_of(SEGMENT);
        // A grower that prefers memory above 4 GiB where the request allows it.
        let high = self
            .rig
            .m
            .alloc_pages_between(bytes / 4096, 4 * GIB, req.max_addr);
        match high.or_else(|| {
            self.rig
                .m
                .alloc_pages_between(bytes / 4096, 16 << 20, req.max_addr)
        }) {
            Some(base) => {
                let _ = self.rig.swiotlb[pool].add_region(base, bytes);
            }
            None => self.rig.swiotlb[pool].growth_failed(),
        }
        self.retry()
    }

    fn retry(&mut self) -> Checked {
        for m in self.rig.mappers.clone() {
            m.retry_deferred();
        }
        Ok(())
    }

    fn detach(&mut self, i: usize) -> Checked {
        let d = self.dev(i);
        let Behind::Iommu { unit, .. } = d.behind else {
            return Ok(());
        };
        if self.detached[i] || self.pending.iter().any(|p| p.dev == i) {
            return Ok(());
        }
        self.unmap_all_of(i)?;
        self.rig.iommus[unit].flush_queues(0);
        if self.rig.iommus[unit].detach(&d.dev).is_ok() {
            self.detached[i] = true;
        }
        Ok(())
    }

    fn alloc_dma(&mut self, unit: u8, pages: bool) -> Checked {
        let unit = unit as usize;
        let i = if unit == 1 { 11 } else { 13 };
        if self.detached[i] {
            return Ok(());
        }
        let d = self.dev(i);
        let m = self.rig.m.clone();
        let zones = self
            .zones
            .get_or_insert_with(|| {
                let low = m
                    .alloc_pages_between(2048, 16 << 20, rig::BELOW_4G)
                    .unwrap();
                Arc::new(
                    ZonedPageAllocator::new(&[PhysRange::new(low, 2048 * 4096).unwrap()]).unwrap(),
                )
            })
            .clone();
        let cfg = DmaAllocatorConfig {
            atomic_pool_bytes: 64 * KIB,
            ..DmaAllocatorConfig::default()
        };
        let a =
            match DmaAllocator::new(&*m, zones.clone(), self.rig.iommus[unit].clone(), cfg, None) {
                Ok(a) => a,
                Err(e) => return fail("dma-allocator-refused", format!("{e:?}")),
            };
        let g = self.rig.granules[unit];
        let r = if pages {
            a.alloc_pages(&d.dev, 8 * KIB, Direction::Bidirectional)
                .map(|p| a.free_pages(&d.dev, p).is_ok())
        } else {
            a.alloc_coherent(&d.dev, 4 * KIB, AllocContext::MayBlock)
                .map(|c| a.free_coherent(&d.dev, c).is_ok())
        };
        let _ = a.release();
        match r {
            Ok(true) => Ok(()),
            Ok(false) => fail(
                "dma-free-refused",
                format!("{}: free after a sub-granule allocation", d.dev.name()),
            ),
            Err(e) => fail(
                "sub-granule-alloc-refused",
                format!(
                    "{}: {} of {} KiB behind a {} KiB IOMMU: {e:?}",
                    d.dev.name(),
                    if pages {
                        "alloc_pages"
                    } else {
                        "alloc_coherent"
                    },
                    if pages { 8 } else { 4 },
                    g / KIB
                ),
            ),
        }
    }

    fn fault_map(&mut self, pick: u8) -> Checked {
        // Devices that must bounce whatever they map: the bounce copy reads outside RAM.
        let i = [4usize, 6, 9, 13][pick as usize % 4];
        if self.detached[i] {
            return Ok(());
        }
        let d = self.dev(i);
        let (phys, len) = self.fault_buf;
        let before = check::usages(&self.rig);
        let nfired = self.fired.lock().unwrap().len();
        self.invalid_call = true;
        match self
            .rig
            .mapper(&d)
            .map(&d.dev, phys, len, Direction::ToDevice)
        {
            Ok(dma) => {
                let _ = self
                    .rig
                    .mapper(&d)
                    .unmap(&d.dev, dma, len, Direction::ToDevice);
                fail(
                    "fault-map-accepted",
                    format!(
                        "{}: a bounce of memory outside RAM ({phys}) mapped",
                        d.dev.name()
                    ),
                )
            }
            Err(_) => self.failed_left_pools(
                &before,
                nfired,
                &format!("faulting bounce by {}", d.dev.name()),
            ),
        }
    }

    /// A write-only bounce of memory outside RAM on the mapper without inbound fills: the
    /// map succeeds, the copy back at unmap faults. Whatever unmap answers, the mapping is
    /// over (its IOVA is gone), so its slot must be free again.
    fn fault_unmap(&mut self) -> Checked {
        let d = self.dev(17);
        let (phys, len) = self.fault_buf;
        let p = check::POOLS - 1;
        let before = check::usages(&self.rig)[p];
        self.invalid_call = true;
        let Ok(dma) = self
            .rig
            .mapper(&d)
            .map(&d.dev, phys, len, Direction::FromDevice)
        else {
            return Ok(());
        };
        let r = self
            .rig
            .mapper(&d)
            .unmap(&d.dev, dma, len, Direction::FromDevice);
        let after = check::usages(&self.rig)[p];
        if after.used > before.used || after.live > before.live {
            return fail(
                "faulting-unmap-leaks",
                format!(
                    "{}: unmap whose copy back faulted ({r:?}) left {} {before:?} -> {after:?}",
                    d.dev.name(),
                    check::POOL_NAMES[p]
                ),
            );
        }
        Ok(())
    }

    /// A device whose `min_align_mask` no segment of its pool can honour: every map fails,
    /// and the error must say something useful.
    fn boundary_map(&mut self, buf: u16) -> Checked {
        let d = self.dev(18);
        let Some(b) = self.idle(buf) else {
            return Ok(());
        };
        let (phys, len) = (self.bufs[b].phys, self.bufs[b].len);
        let before = check::usages(&self.rig);
        match self
            .rig
            .mapper(&d)
            .map(&d.dev, phys, len, Direction::ToDevice)
        {
            Ok(dma) => {
                if let Err(e) = self
                    .rig
                    .mapper(&d)
                    .unmap(&d.dev, dma, len, Direction::ToDevice)
                {
                    return fail("valid-unmap-refused", format!("{}: {e:?}", d.dev.name()));
                }
                self.check_buffer(b, "after an unmap by alignffff")
            }
            Err(DmaError::TooLargeToBounce { max: 0, .. }) => fail(
                "too-large-says-nothing",
                format!(
                    "{}: {len} bytes: TooLargeToBounce {{ max: 0 }}",
                    d.dev.name()
                ),
            ),
            Err(_) => {
                check::pools_unchanged(&before, &check::usages(&self.rig), "alignffff's failed map")
            }
        }
    }

    fn big_coherent(&mut self, second: bool) -> Checked {
        let b = self.big;
        if self.bufs[b].busy {
            return Ok(());
        }
        self.map(if second { 16 } else { 8 }, b, Direction::FromDevice)
    }

    fn fill(&mut self, i: usize) -> Checked {
        let mut idle: Vec<usize> = (0..self.bufs.len())
            .filter(|&b| !self.bufs[b].busy && b != self.huge)
            .collect();
        idle.sort_by_key(|&b| std::cmp::Reverse(self.bufs[b].len));
        for b in idle.into_iter().take(16) {
            let before = self.live.len();
            self.map(i, b, Direction::FromDevice)?;
            if self.live.len() == before {
                break;
            }
        }
        Ok(())
    }

    fn churn(&mut self, i: usize, n: u8) -> Checked {
        for j in 0..n {
            let Some(b) = self.idle(j as u16 * 7 + 3) else {
                continue;
            };
            let before = self.live.len();
            self.map(i, b, Direction::Bidirectional)?;
            if self.live.len() > before {
                self.unmap(self.live.len() - 1)?;
            }
        }
        Ok(())
    }

    /// Completed deferred mappings: each exactly once, never for a released device.
    fn drain_callbacks(&mut self) -> Checked {
        let fired: Vec<_> = std::mem::take(&mut *self.fired.lock().unwrap());
        for (token, r) in fired {
            let Some(k) = self.pending.iter().position(|p| p.token == token) else {
                return fail(
                    "callback-twice",
                    format!("deferred callback {token} fired again"),
                );
            };
            let p = self.pending.remove(k);
            self.bufs[p.buf].busy = false;
            let d = self.dev(p.dev);
            if let Ok(dma) = r {
                let len = self.bufs[p.buf].len;
                self.add_live(p.dev, p.dir, Kind::Single { buf: p.buf }, &[(dma, len)])?;
                if p.cancelled {
                    return fail(
                        "callback-after-release",
                        format!(
                            "{}'s deferred mapping completed (Ok({dma})) after release_device",
                            d.dev.name()
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs one operation and the checks that follow every step.
    pub fn step(&mut self, op: &Op) -> Checked {
        self.invalid_call = false;
        let nbuf = self.bufs.len();
        let nd = self.rig.devices.len();
        match *op {
            Op::Map { dev, buf, dir } => {
                if let Some(b) = self.idle(buf) {
                    self.map(dev as usize % nd, b, dir)?;
                }
            }
            Op::MapOrDefer { dev, buf, dir } => {
                if let Some(b) = self.idle(buf) {
                    self.map_or_defer(dev as usize % nd, b, dir)?;
                }
            }
            Op::MapSg { dev, ref bufs, dir } => self.map_sg(dev as usize % nd, bufs, dir)?,
            Op::Unmap { pick } => {
                if let Some(k) = self.pick(pick, |_| true) {
                    self.unmap(k)?;
                }
            }
            Op::Sync { pick, off, len } => {
                if let Some(k) = self.pick(pick, |l| matches!(l.kind, Kind::Single { .. })) {
                    self.sync(k, off, len)?;
                }
            }
            Op::DeviceWrite { pick, seed } => {
                if let Some(k) = self.pick(pick, |l| {
                    l.dir.device_writes() && matches!(l.kind, Kind::Single { .. })
                }) {
                    self.device_write(k, seed)?;
                }
            }
            Op::DeviceRead { pick } => {
                if let Some(k) = self.pick(pick, |l| {
                    l.dir.device_reads() && matches!(l.kind, Kind::Single { .. })
                }) {
                    self.device_read(k)?;
                }
            }
            Op::HostileRead { dev } => self.hostile_read(dev as usize % nd)?,
            Op::HostileWrite { pick } => {
                let devs = &self.rig.devices;
                if let Some(k) =
                    self.pick(pick, |l| devs[l.dev].untrusted() && l.dir.device_writes())
                {
                    self.hostile_write(k)?;
                }
            }
            Op::CpuTouch { buf, seed } => {
                if let Some(b) = self.idle(buf) {
                    self.cpu_touch(b % nbuf, seed)?;
                }
            }
            Op::BadUnmap { pick, kind } => self.bad_unmap(pick, kind)?,
            Op::Invalid { dev, kind } => self.invalid(dev as usize % nd, kind)?,
            Op::Release { dev } => self.release(dev as usize % nd)?,
            Op::Flush => {
                for u in &self.rig.iommus {
                    u.flush_queues(0);
                }
            }
            Op::Grow => self.grow()?,
            Op::Retry => self.retry()?,
            Op::Detach { dev } => self.detach(dev as usize % nd)?,
            Op::AllocDma { unit, pages } => self.alloc_dma(unit, pages)?,
            Op::FaultMap { dev } => self.fault_map(dev)?,
            Op::BigCoherent { second } => self.big_coherent(second)?,
            Op::FaultUnmap => self.fault_unmap()?,
            Op::Fill { dev } => self.fill(dev as usize % nd)?,
            Op::BoundaryMap { buf } => self.boundary_map(buf)?,
            Op::Churn { dev, n } => self.churn(dev as usize % nd, n)?,
        }
        self.drain_callbacks()?;
        self.checker_quiet(&format!("{op:?}"))?;
        self.invalid_call = false;
        let mut all: Vec<Footprint> = self
            .live
            .iter()
            .flat_map(|(l, _)| l.footprint.clone())
            .collect();
        check::disjoint(&mut all)
    }

    /// Everything unmapped, queues retried and flushed: nothing may remain anywhere.
    pub fn finish(&mut self) -> Checked {
        for _ in 0..4 {
            while !self.live.is_empty() {
                self.unmap(0)?;
            }
            self.checker_quiet("the final unmaps")?;
            for u in &self.rig.iommus {
                u.flush_queues(0);
            }
            self.retry()?;
            self.drain_callbacks()?;
            if self.live.is_empty() {
                break;
            }
        }
        let waiting: usize = self.rig.mappers.iter().map(|m| m.deferred_len()).sum();
        let live_pending = self.pending.iter().filter(|p| !p.cancelled).count();
        if waiting > 0 || live_pending > 0 {
            return fail(
                "deferred-left-at-end",
                format!("{waiting} deferred entries queued, {live_pending} callbacks never came, with every pool empty"),
            );
        }
        for (i, u) in check::usages(&self.rig).iter().enumerate() {
            if u.used != 0 || u.live != 0 {
                return fail(
                    "pool-not-empty-at-end",
                    format!("{}: {u:?} with nothing mapped", check::POOL_NAMES[i]),
                );
            }
        }
        for (i, m) in self.rig.mappers.iter().enumerate() {
            let c = m.debug_checker().unwrap();
            if let Some(l) = c.live().first() {
                return fail(
                    "checker-not-empty-at-end",
                    format!("mapper {i}: {} records left, first {l:?}", c.live().len()),
                );
            }
        }
        self.check_idle_buffers()
    }
}

/// The device writes `data` at `dma`, each byte stamped with its owner in `owners` (one
/// write per run of equal owners).
fn write_runs(
    m: &dmakit_sim::Machine,
    dev: DeviceId,
    dma: DmaAddr,
    data: &[u8],
    owners: &[Owner],
) -> Result<(), dmakit_sim::SimError> {
    let mut i = 0;
    while i < data.len() {
        let j = (i..data.len())
            .find(|&j| owners[j] != owners[i])
            .unwrap_or(data.len());
        m.device_write(dev, dma.add(i as u64), &data[i..j], owners[i])?;
        i = j;
    }
    Ok(())
}

/// (mappings, bounces) the statistics count for `dev`.
fn device_stats(m: &rig::Mapper, dev: DeviceId) -> (u64, u64) {
    m.stats()
        .devices
        .iter()
        .find(|s| s.device == dev)
        .map_or((0, 0), |s| (s.mappings_total(), s.bounces_total()))
}

impl Live {
    fn ranges_with(&self, dma: DmaAddr, st: &State) -> Vec<(DmaAddr, u64)> {
        match &self.kind {
            Kind::Single { buf } => vec![(dma, st.bufs[*buf].len)],
            Kind::Sg { segs, .. } => segs.iter().map(|s| (s.dma, s.len)).collect(),
        }
    }
}
