//! The executor: runs operations on a rig, keeps the fuzzer's own model (buffers and what
//! they must hold, live mappings and the memory their bounces own, deferred requests,
//! statistics it expects) and checks every answer against it.

use std::sync::{Arc, Mutex};

use dmakit::{BouncePool, DeviceId, Direction, DmaAddr, DmaError, DmaSegment, PhysAddr, SgEntry};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{Owner, SimRng};

mod adversarial;
mod deferred;

use super::check::{self, fail, Checked, Footprint, COHERENT};
use super::ops::Op;
use super::rig::{self, Behind, Dev, Rig, RigOptions, COHERENT_BYTES, GIB, KIB, LINE, SEGMENT};

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
    /// `release_device` was called for it (later maps may be refused, with any error).
    released: Vec<bool>,
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
            released: vec![false; n],
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

    /// (free scatter-gather pieces, live mappings) of device `i`'s IOMMU domain.
    fn sg_room(&self, i: usize) -> Option<(usize, usize)> {
        let d = &self.rig.devices[i];
        let (Behind::Iommu { unit, .. }, Some(id)) = (d.behind, d.domain) else {
            return None;
        };
        let st = self.rig.iommus[unit].domain(id)?.stats();
        Some((st.free_sg_pieces, st.live_mappings))
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
            // Untrusted and force-bounce devices own the whole granules of their bounces
            // (the device can reach all of them); a trusted device's alignment bounce owns
            // its lines, lead-in included, and shares its granules with others by design.
            let whole = !d.dev.is_trusted() || d.dev.force_bounce();
            let (start, end) = (dma.as_u64(), dma.as_u64() + len);
            let mut iova = start;
            while iova < end {
                let piece_end = ((iova & !(g - 1)) + g).min(end);
                if let Some((p, _)) = self.rig.units[unit].iova_to_phys(dom, DmaAddr::new(iova)) {
                    let p = p.as_u64();
                    if let Some(pool) = check::pool_of(&self.rig, p) {
                        let (s, e) = if whole {
                            (p & !(g - 1), (p & !(g - 1)) + g)
                        } else {
                            let lead = if iova == start {
                                d.dev.min_align_mask()
                            } else {
                                0
                            };
                            (
                                (p & !lead) & !(LINE - 1),
                                (p + (piece_end - iova)).next_multiple_of(LINE),
                            )
                        };
                        out.push(Footprint {
                            pool,
                            start: s,
                            end: e,
                            id,
                        });
                    }
                }
                iova = piece_end;
            }
            return out;
        }
        let a = dma.as_u64();
        if let Some(pool) = check::pool_of(&self.rig, a) {
            // What a bounce owns whatever the pool: whole lines (a SWIOTLB bounce may hold
            // more, whole slots; packed ones hold exactly these lines).
            let unit = if pool == COHERENT || pool == check::TRANSIENT {
                rig::COHERENT_MIN
            } else {
                LINE
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
        if self.detached[i] || self.released[i] {
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
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { self.rig.mapper(&d).map_traced(&d.dev, phys, len, dir) } {
            Ok((dma, _)) => self.add_live(i, dir, Kind::Single { buf: b }, &[(dma, len)]),
            Err(e) => {
                self.judge_map_error(i, phys, len, e, &before, fired)?;
                self.failed_left_pools(&before, fired, &format!("failed map by {}", d.dev.name()))
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
        let room_before = self.sg_room(i);
        let nfired = self.fired.lock().unwrap().len();
        let stats_before = device_stats(self.rig.mapper(&d), d.id());
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { self.rig.mapper(&d).map_sg(&d.dev, &entries, dir) } {
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
            Err(DmaError::SgPieceTableFull {
                needed, capacity, ..
            }) => {
                // Refused only when the domain's live lists really hold the room, and the
                // refusal gives back whatever it took.
                let free = room_before.map_or(0, |(free, _)| free);
                if needed <= free || capacity != rig::SG_PIECES {
                    return fail(
                        "sg-table-full-while-free",
                        format!(
                            "{}: list of {} needs {needed} pieces, {free} of {capacity} free",
                            d.dev.name(),
                            entries.len()
                        ),
                    );
                }
                if self.sg_room(i) != room_before {
                    return fail(
                        "refused-sg-list-kept-room",
                        format!(
                            "{}: pieces and live mappings {room_before:?} -> {:?}",
                            d.dev.name(),
                            self.sg_room(i)
                        ),
                    );
                }
                SG_TABLE_FULL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.failed_left_pools(&before, nfired, "sg list refused, piece table full")
            }
            Err(e) => {
                let (p, l) = (
                    entries[0].phys,
                    entries.iter().map(|e| e.len).max().unwrap(),
                );
                // A list's own earlier segments hold room when a later one fails: the
                // room judgments hold only for a list that maps as one segment (one entry
                // within the device's segment size and boundary).
                let one_segment = entries.len() == 1 && {
                    let (start, len) = (entries[0].phys.as_u64(), entries[0].len);
                    let boundary = d.dev.seg_boundary_mask();
                    len <= d.dev.max_segment_size()
                        && (start & boundary)
                            .checked_add(len)
                            .is_some_and(|end| end <= boundary.saturating_add(1))
                };
                if !one_segment && matches!(e, DmaError::PoolExhausted { .. }) {
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
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            Kind::Single { buf } => unsafe {
                mapper.unmap(&d.dev, dma, self.bufs[*buf].len, l.dir)
            },
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            Kind::Sg { segs, .. } => unsafe { mapper.unmap_sg(&d.dev, segs, l.dir) },
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
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        if let Err(e) = unsafe { mapper.sync_for_cpu(&d.dev, dma, off, n, dir) } {
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
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        if let Err(e) = unsafe {
            self.rig
                .mapper(&d)
                .sync_for_device(&d.dev, dma, off, n, dir)
        } {
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

    fn unmap_all_of(&mut self, i: usize) -> Checked {
        while let Some(k) = self.live.iter().position(|(l, _)| l.dev == i) {
            self.unmap(k)?;
        }
        Ok(())
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
        for i in 0..self.rig.devices.len() {
            if let Some((free, _)) = self.sg_room(i) {
                if free != rig::SG_PIECES {
                    return fail(
                        "sg-pieces-leaked",
                        format!(
                            "{}: {free} of {} pieces free with nothing mapped",
                            self.rig.devices[i].dev.name(),
                            rig::SG_PIECES
                        ),
                    );
                }
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

/// Lists refused because their domain's piece table was full, in this process (so a run
/// can show the refusal path was taken, not only allowed).
pub static SG_TABLE_FULL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
