//! The IOMMU path: map, unmap, sync and scatter-gather through I/O virtual addresses.
//!
//! A mapping reserves IOVA pages in the device's domain (below the device's mask, wherever
//! the memory is), maps the granules holding the buffer, and gives the device the IOVA with
//! the buffer's offset inside its first granule. Two cases bounce instead, through the
//! generic bounce machinery, and map the bounce slot:
//!
//! - **untrusted** devices (and force-bounce ones) whose buffer does not fill whole
//!   granules: the device can reach every byte of a mapped granule, so it gets a bounce
//!   that owns whole granules, filled with its own bytes and zeros — never a neighbour's;
//! - **non-coherent** devices under the same exact cache-line rule as the direct path
//!   (an inbound buffer whose first or last line is shared).
//!
//! Unmap removes the translations, then in strict mode invalidates them at once; in lazy
//! mode the IOVA (and any bounce slot) waits in the domain's flush queue for one batched
//! invalidation, so it is never reused while a stale IOTLB entry may translate it. The
//! queue drains when full, when its oldest entry outlives the domain's time bound (checked
//! here on every map and unmap), when the pool of a slot it parks is under pressure, and
//! when a map finds its pool full (the routing layer drains every domain's queue before it
//! fails). Unmaps of untrusted devices are always strict. The path knows nothing of the direct path or of
//! any particular bounce pool: the routing layer hands it the device's backend.

use alloc::sync::Arc;
use alloc::vec::Vec;

use super::domain::{FlushMode, IommuDomain, Kind, Piece, Record};
use super::flush_queue::FlushEntry;
use super::iova::{IovaError, IovaRange};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::{self as bounce, MapFailure, Placement, SyncPart};
use crate::bounce::{BounceBackend, BounceMeta};
use crate::decision::{self, AlignmentPolicy, BounceReason};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::maintenance;
use crate::mapped::{DmaSegment, MapPath};
use crate::platform::{IommuPerm, Platform};
use crate::reintroduce::{self, Defect};

/// What the routing layer passes along for a map.
pub(crate) struct MapCtx<'a> {
    /// The device's bounce backend, if it has one.
    pub(crate) backend: Option<&'a Arc<dyn BounceBackend>>,
    /// The alignment policy for non-coherent devices.
    pub(crate) policy: AlignmentPolicy,
    /// Fill inbound bounces from the buffer (off only to demonstrate the hazard).
    pub(crate) fill_inbound: bool,
}

/// The whole granules holding `[start, start + len)`: `(first byte, length)`.
fn granule_span(start: u64, len: u64, granule: u64) -> Option<(u64, u64)> {
    let first = start & !(granule - 1);
    let end = start.checked_add(len)?.checked_next_multiple_of(granule)?;
    Some((first, end - first))
}

fn overflow(dev: &Device, addr: u64, len: u64) -> DmaError {
    DmaError::AddressOverflow {
        device: dev.id(),
        addr,
        len,
    }
}

/// The domain had no IOVA range for `len` bytes below the device's mask. (The allocator's
/// other errors cannot happen here: its configuration was checked when the domain was
/// created, and the path frees only what it allocated.)
fn iova_error(dev: &Device, len: u64, _: IovaError) -> DmaError {
    DmaError::IovaExhausted {
        device: dev.id(),
        len,
        mask: dev.dma_mask(),
    }
}

/// Reserves IOVA pages for `len` granule-aligned bytes at `phys` and maps them.
fn map_granules(
    dom: &IommuDomain,
    dev: &Device,
    phys: u64,
    len: u64,
    perm: IommuPerm,
    cpu: usize,
) -> Result<IovaRange, DmaError> {
    let limit = dom
        .limit_pfn(dev.dma_mask())
        .ok_or(DmaError::IovaExhausted {
            device: dev.id(),
            len,
            mask: dev.dma_mask(),
        })?;
    let iova = dom
        .alloc_iova(len >> dom.shift, limit, cpu)
        .map_err(|e| iova_error(dev, len, e))?;
    if let Err(error) = dom
        .iommu
        .map(dom.id, dom.iova_addr(iova), PhysAddr::new(phys), len, perm)
    {
        dom.release(iova, cpu);
        return Err(DmaError::Iommu {
            device: dev.id(),
            error,
        });
    }
    Ok(iova)
}

/// Maps `range` for `dev` in `dom`: in place, or through a bounce slot.
///
/// # Errors
/// [`MapFailure::NoRoom`] when the bounce backend is full; [`MapFailure::Failed`] with
/// [`DmaError::NoBouncePool`], [`DmaError::IovaExhausted`], [`DmaError::Iommu`],
/// [`DmaError::AddressOverflow`] or a bounce copy fault. Nothing changed then.
pub(crate) fn map<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    ctx: &MapCtx<'_>,
) -> Result<(DmaAddr, MapPath), MapFailure> {
    let cpu = p.current_cpu();
    dom.drain_expired(cpu);
    let g = dom.granule;
    let perm = IommuPerm::for_direction(dir);
    let reason = decision::iommu_bounce_reason(dev, range, dir, ctx.policy, p.cache_line_size(), g);
    let Some(reason) = reason else {
        let start = range.start().as_u64();
        let (first, span) = granule_span(start, range.len(), g)
            .ok_or_else(|| MapFailure::Failed(overflow(dev, start, range.len())))?;
        let iova = map_granules(dom, dev, first, span, perm, cpu).map_err(MapFailure::Failed)?;
        if !dev.is_coherent() {
            maintenance::for_device(p, range, dir);
        }
        let dma = dom.iova_addr(iova).add(start - first);
        insert(
            dom,
            dma,
            Record {
                device: dev.id(),
                iova,
                mapped: span,
                len: range.len(),
                dir,
                kind: Kind::Single {
                    phys: range.start(),
                },
            },
        );
        return Ok((dma, MapPath::Iommu { domain: dom.id }));
    };
    let backend = ctx
        .backend
        .ok_or(MapFailure::Failed(DmaError::NoBouncePool {
            device: dev.id(),
            phys: range.start(),
            len: range.len(),
        }))?;
    let meta = BounceMeta {
        device: dev.id(),
        orig: range.start(),
        len: range.len(),
        dir,
        reason,
    };
    let (slot, first, span) = bounce_in(p, backend.as_ref(), dev, range, meta, g, ctx)?;
    let iova = match map_granules(dom, dev, first, span, perm, cpu) {
        Ok(i) => i,
        Err(e) => {
            backend.abandon(slot);
            return Err(MapFailure::Failed(e));
        }
    };
    let dma = dom.iova_addr(iova).add(slot.as_u64() - first);
    insert(
        dom,
        dma,
        Record {
            device: dev.id(),
            iova,
            mapped: span,
            len: range.len(),
            dir,
            kind: Kind::Bounced {
                backend: backend.clone(),
                slot,
            },
        },
    );
    Ok((
        dma,
        MapPath::Bounced {
            reason,
            backend: backend.name(),
        },
    ))
}

fn insert(dom: &IommuDomain, dma: DmaAddr, rec: Record) {
    dom.records.lock().insert(dma.as_u64(), rec);
}

/// Reserves and fills a bounce for `range` (the bounce path's one routine). Returns the
/// slot (where the buffer's bytes go) and the granules to map, `(first byte, length)`.
///
/// For untrusted and force-bounce devices the slot owns whole granules, padded with zeros
/// around the buffer's bytes ([`Placement::granule_pad`]); the IOMMU translates, so the slot
/// may be anywhere in memory.
fn bounce_in<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    range: PhysRange,
    meta: BounceMeta,
    g: u64,
    ctx: &MapCtx<'_>,
) -> Result<(PhysAddr, u64, u64), MapFailure> {
    let pad = matches!(meta.reason, BounceReason::Untrusted | BounceReason::Forced);
    let place = Placement {
        max_addr: u64::MAX,
        granule_pad: pad.then_some(g),
    };
    let b = bounce::map(p, backend, dev, range, meta, ctx.fill_inbound, place)?;
    let (at, len) = b.reach;
    match granule_span(at, len, g) {
        Some((first, span)) => Ok((b.slot, first, span)),
        None => {
            backend.abandon(b.slot);
            Err(MapFailure::Failed(overflow(dev, at, len)))
        }
    }
}

/// Removes the record of the mapping at `key` after checking it belongs to `dev`, has
/// length `len` (when given) and direction `dir`.
fn take_record(
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    len: Option<u64>,
    dir: Direction,
) -> Result<Record, DmaError> {
    let unknown = DmaError::UnknownMapping {
        device: dev.id(),
        dma: DmaAddr::new(key),
    };
    let mut recs = dom.records.lock();
    let r = recs
        .get(&key)
        .filter(|r| r.device == dev.id())
        .ok_or(unknown)?;
    if let Some(len) = len.filter(|&l| l != r.len) {
        return Err(DmaError::OutOfMapping {
            device: dev.id(),
            dma: DmaAddr::new(key),
            len,
            mapped_len: r.len,
        });
    }
    if r.dir != dir {
        return Err(DmaError::WrongDirection {
            device: dev.id(),
            mapped: r.dir,
            requested: dir,
        });
    }
    recs.remove(&key).ok_or(unknown)
}

/// What ending a mapping did on the CPU side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// A bounce slot was released (deferred mappings may now fit).
    pub(crate) freed_room: bool,
    /// Bytes copied from a bounce back to the caller's buffer.
    pub(crate) copied: u64,
}

/// Removes the page-table entries of the mapping whose record was taken; when the IOMMU
/// refuses, the record goes back (the mapping stays live) and the error is returned.
fn unmap_tables(
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    rec: Record,
) -> Result<(Record, DmaAddr), DmaError> {
    let base = dom.iova_addr(rec.iova);
    match dom.iommu.unmap(dom.id, base, rec.mapped) {
        Ok(()) => Ok((rec, base)),
        Err(error) => {
            dom.records.lock().insert(key, rec);
            Err(DmaError::Iommu {
                device: dev.id(),
                error,
            })
        }
    }
}

/// Ends a mapping whose record was taken: page tables, IOTLB (now or queued), CPU side,
/// IOVA release.
fn finish<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    rec: Record,
) -> Result<Ended, DmaError> {
    let cpu = p.current_cpu();
    let (rec, base) = unmap_tables(dom, dev, key, rec)?;
    let strict = matches!(dom.mode, FlushMode::Strict) || !dev.is_trusted();
    if strict {
        dom.iommu.flush_iotlb_range(dom.id, base, rec.mapped);
    }
    let mut result = Ok(Ended::default());
    let mut parked = None;
    match &rec.kind {
        Kind::Single { phys } => cpu_side(p, dev, *phys, rec.len, rec.dir),
        Kind::Sg { pieces } => {
            for pc in pieces {
                cpu_side(p, dev, pc.phys, pc.len, rec.dir);
            }
        }
        Kind::Pages { .. } => {}
        Kind::Bounced { backend, slot } => {
            let dma = DmaAddr::new(slot.as_u64());
            result = if strict {
                let unmapped = bounce::unmap(p, backend.as_ref(), dev, dma, rec.len, rec.dir);
                if unmapped.is_err() && !reintroduce::active(Defect::IommuFaultLeaksSlot) {
                    // The copy back faulted (the record matched the slot, so nothing else
                    // can fail): the record and the IOVA are gone, so the slot must go
                    // too, or nothing could ever free it.
                    let freed = backend.free(*slot);
                    debug_assert!(freed.is_some());
                }
                unmapped.map(|(_, copied)| Ended {
                    freed_room: true,
                    copied,
                })
            } else {
                // Copy back now; the slot is released only after the invalidation.
                parked = Some((backend.clone(), *slot));
                let part = SyncPart {
                    dma,
                    offset: 0,
                    len: rec.len,
                    dir: rec.dir,
                };
                bounce::sync_for_cpu(p, backend.as_ref(), dev, part).map(|copied| Ended {
                    freed_room: false,
                    copied,
                })
            };
        }
    }
    if strict {
        dom.release(rec.iova, cpu);
    } else {
        let released = dom.defer(
            FlushEntry {
                iova: rec.iova,
                bounce: parked,
            },
            cpu,
        );
        // A drain released bounce slots: deferred mappings may fit now.
        if released > 0 && !reintroduce::active(Defect::LazyDomainParksBounces) {
            if let Ok(ended) = &mut result {
                ended.freed_room = true;
            }
        }
    }
    result
}

fn cpu_side<P: Platform + ?Sized>(p: &P, dev: &Device, phys: PhysAddr, len: u64, dir: Direction) {
    if dev.is_coherent() {
        return;
    }
    if let Some(r) = PhysRange::new(phys, len) {
        maintenance::for_cpu(p, r, dir);
    }
}

/// Ends the mapping at `dma` of `len` bytes in `dir`. Returns whether a bounce slot was
/// released (deferred mappings may fit now).
///
/// # Errors
/// [`DmaError::UnknownMapping`] (not a live mapping of `dev`), [`DmaError::OutOfMapping`]
/// (another length), [`DmaError::WrongDirection`]: nothing changed then.
/// [`DmaError::Iommu`] when the IOMMU refuses the unmap (the mapping stays live); a bounce
/// copy fault: the mapping is still ended (IOVA and bounce slot released, or queued for
/// release in lazy mode), only the data the device wrote is lost.
pub(crate) fn unmap<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    dma: DmaAddr,
    len: u64,
    dir: Direction,
) -> Result<Ended, DmaError> {
    let rec = take_record(dom, dev, dma.as_u64(), Some(len), dir)?;
    finish(p, dom, dev, dma.as_u64(), rec)
}

/// Takes back a mapping this call made and the device never saw (a failing sg list):
/// page tables and IOTLB at once, whatever the domain's mode, the IOVA released, and a
/// bounce abandoned — no copy back, and the pool's usage and high-water mark as before.
///
/// # Errors
/// As [`unmap`] for a mapping that is not live with these arguments, or that the IOMMU
/// refuses to unmap (then it stays live).
fn undo<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    dma: DmaAddr,
    len: u64,
    dir: Direction,
) -> Result<(), DmaError> {
    let key = dma.as_u64();
    let rec = take_record(dom, dev, key, Some(len), dir)?;
    let (rec, base) = unmap_tables(dom, dev, key, rec)?;
    dom.iommu.flush_iotlb_range(dom.id, base, rec.mapped);
    match &rec.kind {
        Kind::Bounced { backend, slot } => {
            let abandoned = backend.abandon(*slot);
            debug_assert!(abandoned.is_some());
        }
        Kind::Single { phys } => cpu_side(p, dev, *phys, rec.len, rec.dir),
        Kind::Sg { .. } | Kind::Pages { .. } => {}
    }
    dom.release(rec.iova, p.current_cpu());
    Ok(())
}

/// The key of the live mapping of `dev` holding `[addr, addr + len)`.
fn containing(
    recs: &alloc::collections::BTreeMap<u64, Record>,
    dev: &Device,
    addr: u64,
    len: u64,
) -> Result<u64, DmaError> {
    let (&key, r) = recs
        .range(..=addr)
        .next_back()
        .filter(|(&k, r)| r.device == dev.id() && addr - k < r.len)
        .ok_or(DmaError::UnknownMapping {
            device: dev.id(),
            dma: DmaAddr::new(addr),
        })?;
    if (addr - key).checked_add(len).is_none_or(|end| end > r.len) {
        return Err(DmaError::OutOfMapping {
            device: dev.id(),
            dma: DmaAddr::new(addr),
            len,
            mapped_len: r.len,
        });
    }
    Ok(key)
}

/// Which way a sync hands ownership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncTo {
    /// To the device; inbound bounces are refilled unless `fill_inbound` is off (only to
    /// demonstrate the hazard).
    Device {
        /// Refill inbound bounces from the buffer.
        fill_inbound: bool,
    },
    /// Back to the CPU.
    Cpu,
}

/// Ownership of the part `part` (bytes at an offset inside the mapping at `part.dma`)
/// passes to the device or back to the CPU. Returns the bytes copied to or from a bounce.
///
/// # Errors
/// [`DmaError::UnknownMapping`] when the part is not inside a live mapping of `dev`,
/// [`DmaError::OutOfMapping`] when it leaves it, [`DmaError::WrongDirection`] when the
/// mapping does not permit the direction; a bounce copy fault.
pub(crate) fn sync<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    part: SyncPart,
    to: SyncTo,
) -> Result<u64, DmaError> {
    let SyncPart {
        dma,
        offset,
        len,
        dir,
    } = part;
    let addr = dma
        .as_u64()
        .checked_add(offset)
        .ok_or(overflow(dev, dma.as_u64(), offset))?;
    let recs = dom.records.lock();
    // The mapping the caller names is the one holding `dma`; the synced part must lie in
    // it, even where another mapping of the device starts right after it.
    let key = if reintroduce::active(Defect::IommuSyncStraysIntoNeighbour) {
        containing(&recs, dev, addr, len)?
    } else {
        containing(&recs, dev, dma.as_u64(), 1)?
    };
    let Some(r) = recs.get(&key) else {
        return Err(DmaError::UnknownMapping {
            device: dev.id(),
            dma,
        });
    };
    if (addr - key).checked_add(len).is_none_or(|end| end > r.len) {
        return Err(DmaError::OutOfMapping {
            device: dev.id(),
            dma: DmaAddr::new(addr),
            len,
            mapped_len: r.len,
        });
    }
    if !r.dir.permits_sync(dir) {
        return Err(DmaError::WrongDirection {
            device: dev.id(),
            mapped: r.dir,
            requested: dir,
        });
    }
    let at = addr - key;
    let maintain = |phys: PhysAddr, n: u64| {
        if dev.is_coherent() {
            return;
        }
        if let Some(range) = PhysRange::new(phys, n) {
            if to != SyncTo::Cpu {
                maintenance::for_device(p, range, dir);
            } else {
                maintenance::for_cpu(p, range, dir);
            }
        }
    };
    match &r.kind {
        Kind::Single { phys } => {
            maintain(phys.add(at), len);
            Ok(0)
        }
        Kind::Sg { pieces } | Kind::Pages { pieces } => {
            let (lo, hi) = (addr, addr + len);
            for pc in pieces {
                let (s, e) = (pc.dma.max(lo), (pc.dma + pc.len).min(hi));
                if s < e {
                    maintain(pc.phys.add(s - pc.dma), e - s);
                }
            }
            Ok(0)
        }
        Kind::Bounced { backend, slot } => {
            let backend = backend.clone();
            let part = SyncPart {
                dma: DmaAddr::new(slot.as_u64()),
                offset: at,
                len,
                dir,
            };
            drop(recs);
            match to {
                SyncTo::Device { fill_inbound } => {
                    bounce::sync_for_device(p, backend.as_ref(), dev, part, fill_inbound)
                }
                SyncTo::Cpu => bounce::sync_for_cpu(p, backend.as_ref(), dev, part),
            }
        }
    }
}

/// Appends `[start, start + len)` to `out` as segments the device accepts (at most its
/// maximum segment size, never crossing its segment boundary).
fn push_segments(dev: &Device, start: u64, len: u64, out: &mut Vec<DmaSegment>) {
    let (mut at, end) = (start, start + len);
    while at < end {
        let boundary = dev.seg_boundary_mask();
        let to_boundary = (boundary - (at & boundary)).saturating_add(1);
        let n = (end - at).min(dev.max_segment_size()).min(to_boundary);
        out.push(DmaSegment {
            dma: DmaAddr::new(at),
            len: n,
        });
        at += n;
    }
}

/// A mapped scatter-gather list: the device's segments, and the path each buffer took (one
/// entry per buffer, in list order), so the caller can count them as single mappings.
pub(crate) struct SgMapped {
    pub(crate) segments: Vec<DmaSegment>,
    pub(crate) paths: Vec<MapPath>,
}

/// Maps a scatter-gather list. Without bounces, the whole list takes one IOVA range with
/// the buffers back to back, and buffers that meet on a granule boundary become one
/// device segment (then split only by the device's segment limits). When some buffer must
/// be bounced, each buffer is mapped on its own.
///
/// # Errors
/// Any error of [`map`]; whatever was mapped is unmapped again.
pub(crate) fn map_sg<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    ranges: &[PhysRange],
    dir: Direction,
    ctx: &MapCtx<'_>,
) -> Result<SgMapped, MapFailure> {
    let g = dom.granule;
    let line = p.cache_line_size();
    dom.drain_expired(p.current_cpu());
    let mut out = Vec::with_capacity(ranges.len());
    let mut paths = Vec::with_capacity(ranges.len());
    if ranges
        .iter()
        .any(|r| decision::iommu_bounce_reason(dev, *r, dir, ctx.policy, line, g).is_some())
    {
        let mut keys: Vec<(DmaAddr, u64)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match map(p, dom, dev, *r, dir, ctx) {
                Ok((dma, path)) => {
                    keys.push((dma, r.len()));
                    paths.push(path);
                    push_segments(dev, dma.as_u64(), r.len(), &mut out);
                }
                Err(f) => {
                    for (dma, len) in keys {
                        // Mapped just above with these arguments.
                        let undone = if reintroduce::active(Defect::SgUnwindKeepsHighWater) {
                            unmap(p, dom, dev, dma, len, dir).map(|_| ())
                        } else {
                            undo(p, dom, dev, dma, len, dir)
                        };
                        debug_assert!(undone.is_ok());
                    }
                    return Err(f);
                }
            }
        }
        return Ok(SgMapped {
            segments: out,
            paths,
        });
    }
    let cpu = p.current_cpu();
    let mut spans = Vec::with_capacity(ranges.len());
    let mut total = 0u64;
    for r in ranges {
        let s = r.start().as_u64();
        let (first, span) = granule_span(s, r.len(), g)
            .ok_or_else(|| MapFailure::Failed(overflow(dev, s, r.len())))?;
        total = total
            .checked_add(span)
            .ok_or_else(|| MapFailure::Failed(overflow(dev, s, r.len())))?;
        spans.push((first, span));
    }
    let limit =
        dom.limit_pfn(dev.dma_mask())
            .ok_or(MapFailure::Failed(DmaError::IovaExhausted {
                device: dev.id(),
                len: total,
                mask: dev.dma_mask(),
            }))?;
    let iova = dom
        .alloc_iova(total >> dom.shift, limit, cpu)
        .map_err(|e| MapFailure::Failed(iova_error(dev, total, e)))?;
    let base = dom.iova_addr(iova).as_u64();
    let perm = IommuPerm::for_direction(dir);
    let mut at = base;
    let mut pieces = Vec::with_capacity(ranges.len());
    for (r, &(first, span)) in ranges.iter().zip(&spans) {
        let mapped = dom
            .iommu
            .map(dom.id, DmaAddr::new(at), PhysAddr::new(first), span, perm);
        if let Err(error) = mapped {
            if at > base {
                let undone = dom.iommu.unmap(dom.id, DmaAddr::new(base), at - base);
                debug_assert!(undone.is_ok());
                dom.iommu
                    .flush_iotlb_range(dom.id, DmaAddr::new(base), at - base);
            }
            dom.release(iova, cpu);
            return Err(MapFailure::Failed(DmaError::Iommu {
                device: dev.id(),
                error,
            }));
        }
        pieces.push(Piece {
            dma: at + (r.start().as_u64() - first),
            phys: r.start(),
            len: r.len(),
        });
        at += span;
    }
    if !dev.is_coherent() {
        for r in ranges {
            maintenance::for_device(p, *r, dir);
        }
    }
    let mut run: Option<(u64, u64)> = None;
    for pc in &pieces {
        run = match run {
            Some((s, e)) if e == pc.dma => Some((s, pc.dma + pc.len)),
            Some((s, e)) => {
                push_segments(dev, s, e - s, &mut out);
                Some((pc.dma, pc.dma + pc.len))
            }
            None => Some((pc.dma, pc.dma + pc.len)),
        };
    }
    if let Some((s, e)) = run {
        push_segments(dev, s, e - s, &mut out);
    }
    let key = pieces.first().map_or(base, |pc| pc.dma);
    let end = pieces.last().map_or(base, |pc| pc.dma + pc.len);
    insert(
        dom,
        DmaAddr::new(key),
        Record {
            device: dev.id(),
            iova,
            mapped: total,
            len: end - key,
            dir,
            kind: Kind::Sg { pieces },
        },
    );
    paths.resize(ranges.len(), MapPath::Iommu { domain: dom.id });
    Ok(SgMapped {
        segments: out,
        paths,
    })
}

/// Unmaps every mapping the segments of a [`map_sg`] belong to (each once).
///
/// # Errors
/// [`DmaError::ZeroLength`] for an empty list; the first error met (a segment in no live
/// mapping of `dev`, a wrong direction); the other mappings are still unmapped.
pub(crate) fn unmap_sg<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    segments: &[DmaSegment],
    dir: Direction,
) -> Result<(), DmaError> {
    if segments.is_empty() {
        return Err(DmaError::ZeroLength { device: dev.id() });
    }
    let mut first = Ok(());
    let mut keys: Vec<u64> = Vec::new();
    {
        let recs = dom.records.lock();
        for s in segments {
            match containing(&recs, dev, s.dma.as_u64(), s.len.max(1)) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
    }
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let r = take_record(dom, dev, k, None, dir).and_then(|rec| finish(p, dom, dev, k, rec));
        if let (Err(e), true) = (r, first.is_ok()) {
            first = Err(e);
        }
    }
    first
}
