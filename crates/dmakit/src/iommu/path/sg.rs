//! Scatter-gather lists on the IOMMU path: one IOVA range for a list without bounces,
//! each buffer on its own when some must be bounced; unmapping every mapping a list's
//! segments belong to.
//!
//! Nothing here allocates: the device's segments go straight into the caller's array, a
//! list's pieces into the room its domain was created with
//! ([`super::super::DomainConfig::max_sg_pieces`]), and what a failing list must undo is
//! found again from the list and the segments already written.

use super::super::domain::{IommuDomain, Kind, Record};
use super::super::sg_pieces::Piece;
use super::end::{finish, take_record, undo};
use super::single::{map, unmap};
use super::sync::containing;
use super::{granule_span, iova_error, overflow, reserve, MapCtx};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::MapFailure;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::maintenance;
use crate::mapped::{DmaSegment, MapPath};
use crate::platform::{IommuPerm, Platform};
use crate::reintroduce::{self, Defect};

/// The caller's segment array, filled from the front.
struct Segments<'a> {
    out: &'a mut [DmaSegment],
    n: usize,
}

impl Segments<'_> {
    /// Appends `[start, start + len)` as segments the device accepts (at most its maximum
    /// segment size, never crossing its segment boundary).
    ///
    /// # Errors
    /// [`DmaError::SegmentListTooShort`] when the array is full (what was appended stays).
    fn push(&mut self, dev: &Device, start: u64, len: u64) -> Result<(), DmaError> {
        let (mut at, end) = (start, start + len);
        while at < end {
            let boundary = dev.seg_boundary_mask();
            let to_boundary = (boundary - (at & boundary)).saturating_add(1);
            let n = (end - at).min(dev.max_segment_size()).min(to_boundary);
            let Some(slot) = self.out.get_mut(self.n) else {
                return Err(DmaError::SegmentListTooShort {
                    device: dev.id(),
                    room: self.out.len(),
                });
            };
            *slot = DmaSegment {
                dma: DmaAddr::new(at),
                len: n,
            };
            self.n += 1;
            at += n;
        }
        Ok(())
    }
}

/// Where each buffer of a list lies in one IOVA range from `base`: the granules holding it
/// (`(IOVA, first physical byte, length)`, back to back) and its piece. Ends early at a
/// buffer whose granules overflow.
fn layout(
    ranges: impl Iterator<Item = PhysRange>,
    base: u64,
    g: u64,
) -> impl Iterator<Item = (u64, u64, u64, Piece)> {
    ranges.scan(base, move |at, r| {
        let start = r.start().as_u64();
        let (first, span) = granule_span(start, r.len(), g)?;
        let here = *at;
        *at = here.checked_add(span)?;
        let piece = Piece {
            dma: here + (start - first),
            phys: r.start(),
            len: r.len(),
        };
        Some((here, first, span, piece))
    })
}

/// The first device address and length of each buffer of a list whose buffers were
/// mapped one by one, their segments written back to back in list order to `segs`.
fn buffer_keys<'a>(
    segs: &'a [DmaSegment],
    ranges: impl Iterator<Item = PhysRange> + 'a,
) -> impl Iterator<Item = (DmaAddr, u64)> + 'a {
    let mut at = 0;
    ranges.map_while(move |r| {
        let key = segs.get(at)?.dma;
        let mut covered = 0;
        while covered < r.len() {
            covered += segs.get(at)?.len;
            at += 1;
        }
        Some((key, r.len()))
    })
}

/// Maps a scatter-gather list (`ranges()` yields its buffers, at least one), writing the
/// device's segments to the front of `out` and returning how many there are; on success
/// tells `mapped` the path of each buffer, in list order. Without bounces, the whole list
/// takes one IOVA range with the buffers back to back, and buffers that meet on a granule
/// boundary become one device segment (then split only by the device's segment limits).
/// When some buffer must be bounced, each buffer is mapped on its own.
///
/// # Errors
/// Any error of [`map`]; [`DmaError::SgPieceTableFull`] when the domain has too few free
/// pieces for an unbounced list; [`DmaError::SegmentListTooShort`] when the segments do not
/// fit in `out`. Whatever was mapped is unmapped again, and every table, IOVA and pool is
/// as before.
#[allow(clippy::too_many_arguments)]
pub(crate) fn map_sg<P, I>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    ranges: impl Fn() -> I,
    dir: Direction,
    ctx: &MapCtx<'_>,
    out: &mut [DmaSegment],
    mut mapped: impl FnMut(PhysRange, MapPath),
) -> Result<usize, MapFailure>
where
    P: Platform + ?Sized,
    I: Iterator<Item = PhysRange>,
{
    let g = dom.granule();
    let line = p.cache_line_size();
    dom.drain_expired(p.current_cpu());
    let mut segs = Segments { out, n: 0 };
    let reason = |r: PhysRange| ctx.bounce_reason(dev, r, dir, line, g);
    if ranges().any(|r| reason(r).is_some()) {
        map_each(p, dom, dev, &ranges, dir, ctx, &mut segs)?;
        for r in ranges() {
            mapped(r, ctx.path(dom.id(), reason(r)));
        }
        return Ok(segs.n);
    }
    let cpu = p.current_cpu();
    let room = reserve(dom, dev).map_err(MapFailure::Failed)?;
    let count = ranges().count();
    let pieces = dom
        .lease_pieces(count + usize::from(reintroduce::active(Defect::SgPieceTableOvercounts)))
        .ok_or(MapFailure::Failed(DmaError::SgPieceTableFull {
            device: dev.id(),
            needed: count,
            capacity: dom.max_sg_pieces(),
        }))?;
    let (mut laid, mut total) = (0, 0);
    for (at, _, span, _) in layout(ranges(), 0, g) {
        (laid, total) = (laid + 1, at + span);
    }
    // The first buffer whose granules overflow, if one does.
    if let Some(r) = ranges().nth(laid) {
        let overflows = overflow(dev, r.start().as_u64(), r.len());
        return Err(MapFailure::Failed(overflows));
    }
    let limit = dom
        .limit_pfn(dev.streaming_limit())
        .ok_or(MapFailure::Failed(DmaError::IovaExhausted {
            device: dev.id(),
            len: total,
            mask: dev.streaming_limit(),
        }))?;
    let iova = dom
        .alloc_iova(total, limit, cpu)
        .map_err(|e| MapFailure::Failed(iova_error(dev, total, e)))?;
    let base = dom.iova_addr(iova).as_u64();
    let perm = IommuPerm::for_direction(dir);
    // Page tables granule run by granule run; device segments run of touching pieces by
    // run. The first piece starts the mapping (its key); the last ends it.
    let mut at = base;
    let mut laid_out = || -> Result<(u64, u64), DmaError> {
        let mut extent: Option<(u64, u64)> = None;
        let mut run: Option<(u64, u64)> = None;
        for (here, first, span, pc) in layout(ranges(), base, g) {
            let tables = dom.map_tables(DmaAddr::new(here), PhysAddr::new(first), span, perm);
            tables.map_err(|error| DmaError::Iommu {
                device: dev.id(),
                error,
            })?;
            at = here + span;
            let end = pc.dma + pc.len;
            extent = Some((extent.map_or(pc.dma, |(key, _)| key), end));
            run = match run {
                Some((s, e)) if e == pc.dma => Some((s, end)),
                Some((s, e)) => {
                    segs.push(dev, s, e - s)?;
                    Some((pc.dma, end))
                }
                None => Some((pc.dma, end)),
            };
        }
        if let Some((s, e)) = run {
            segs.push(dev, s, e - s)?;
        }
        // Every buffer was laid out below `total` bytes from `base`, inside the domain.
        match extent {
            Some(extent) if at - base == total => Ok(extent),
            _ => Err(overflow(dev, base, total)),
        }
    };
    let (key, end) = match laid_out() {
        Ok(extent) => extent,
        Err(e) => {
            if at > base {
                let undone = dom.unmap_tables(DmaAddr::new(base), at - base);
                debug_assert!(undone.is_ok());
                dom.flush_range(DmaAddr::new(base), at - base);
            }
            dom.release(iova, cpu);
            return Err(MapFailure::Failed(e));
        }
    };
    if !dev.is_coherent() {
        for r in ranges() {
            maintenance::for_device(p, r, dir);
        }
    }
    let pieces = pieces.fill(layout(ranges(), base, g).map(|(_, _, _, pc)| pc));
    room.insert(
        key,
        Record {
            device: dev.id(),
            iova,
            mapped: total,
            len: end - key,
            dir,
            kind: Kind::Sg { pieces },
        },
    );
    for r in ranges() {
        mapped(r, ctx.path(dom.id(), None));
    }
    Ok(segs.n)
}

/// Maps each buffer of a list on its own (some must be bounced), appending its segments
/// to `segs`.
///
/// # Errors
/// Any error of [`map`]; [`DmaError::SegmentListTooShort`] when the segments do not fit.
/// The buffers already mapped are undone.
fn map_each<P, I>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    ranges: impl Fn() -> I,
    dir: Direction,
    ctx: &MapCtx<'_>,
    segs: &mut Segments<'_>,
) -> Result<(), MapFailure>
where
    P: Platform + ?Sized,
    I: Iterator<Item = PhysRange>,
{
    for (done, r) in ranges().enumerate() {
        let before = segs.n;
        let result = match map(p, dom, dev, r, dir, ctx) {
            Ok((dma, _)) => segs.push(dev, dma.as_u64(), r.len()).map_err(|e| {
                let undone = undo(p, dom, dev, dma, r.len(), dir);
                debug_assert!(undone.is_ok());
                MapFailure::Failed(e)
            }),
            Err(f) => Err(f),
        };
        if let Err(f) = result {
            for (dma, len) in buffer_keys(&segs.out[..before], ranges().take(done)) {
                // Mapped just above with these arguments.
                let undone = if reintroduce::active(Defect::SgUnwindKeepsHighWater) {
                    unmap(p, dom, dev, dma, len, dir, true).map(|_| ())
                } else {
                    undo(p, dom, dev, dma, len, dir)
                };
                debug_assert!(undone.is_ok());
            }
            return Err(f);
        }
    }
    Ok(())
}

/// Unmaps every mapping the segments of a [`map_sg`] belong to (each once: the segments
/// of one mapping come together in such a list).
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
    // The segments of one mapping come together: one lookup finds the mapping of a run of
    // them, `[key, end)`, and the rest of the run lies inside it.
    let lookup = |s: &DmaSegment| containing_extent(dom, dev, s);
    let inside = |last: Option<(u64, u64)>, s: &DmaSegment| {
        let a = s.dma.as_u64();
        last.is_some_and(|(key, end)| {
            key <= a && a.checked_add(s.len.max(1)).is_some_and(|e| e <= end)
        })
    };
    // Every segment is judged before any mapping ends.
    let mut last = None;
    let mut first = segments.iter().try_for_each(|s| {
        if !inside(last, s) {
            last = Some(lookup(s)?);
        }
        Ok(())
    });
    let mut last = None;
    for s in segments {
        if inside(last, s) {
            continue;
        }
        // A segment judged above and in no mapping now: refused above, or in a mapping
        // this call ended.
        let Ok((key, end)) = lookup(s) else {
            continue;
        };
        last = Some((key, end));
        let r = take_record(dom, dev, key, None, dir, false)
            .and_then(|rec| finish(p, dom, dev, key, rec, true));
        if let (Err(e), true) = (r, first.is_ok()) {
            first = Err(e);
        }
    }
    first
}

/// The live mapping of `dev` holding segment `s`: `(key, end)` of its device addresses.
fn containing_extent(
    dom: &IommuDomain,
    dev: &Device,
    s: &DmaSegment,
) -> Result<(u64, u64), DmaError> {
    dom.with_records(|recs| {
        let key = containing(recs, dev, s.dma.as_u64(), s.len.max(1))?;
        Ok((key, key + recs.get(key).map_or(0, |r| r.len)))
    })
}
