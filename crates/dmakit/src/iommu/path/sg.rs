//! Scatter-gather lists on the IOMMU path: one IOVA range for a list without bounces,
//! each buffer on its own when some must be bounced; unmapping every mapping a list's
//! segments belong to.

use alloc::vec::Vec;

use super::super::domain::{IommuDomain, Kind, Piece, Record};
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
    let g = dom.granule();
    let line = p.cache_line_size();
    dom.drain_expired(p.current_cpu());
    let mut out = Vec::with_capacity(ranges.len());
    let mut paths = Vec::with_capacity(ranges.len());
    if ranges
        .iter()
        .any(|r| ctx.bounce_reason(dev, *r, dir, line, g).is_some())
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
                            unmap(p, dom, dev, dma, len, dir, true).map(|_| ())
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
    let room = reserve(dom, dev).map_err(MapFailure::Failed)?;
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
    let mut at = base;
    let mut pieces = Vec::with_capacity(ranges.len());
    for (r, &(first, span)) in ranges.iter().zip(&spans) {
        let mapped = dom.map_tables(DmaAddr::new(at), PhysAddr::new(first), span, perm);
        if let Err(error) = mapped {
            if at > base {
                let undone = dom.unmap_tables(DmaAddr::new(base), at - base);
                debug_assert!(undone.is_ok());
                dom.flush_range(DmaAddr::new(base), at - base);
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
    paths.resize(ranges.len(), MapPath::Iommu { domain: dom.id() });
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
    dom.with_records(|recs| {
        for s in segments {
            match containing(recs, dev, s.dma.as_u64(), s.len.max(1)) {
                Ok(k) => keys.push(k),
                Err(e) => {
                    if first.is_ok() {
                        first = Err(e);
                    }
                }
            }
        }
    });
    keys.sort_unstable();
    keys.dedup();
    for k in keys {
        let r = take_record(dom, dev, k, None, dir, false)
            .and_then(|rec| finish(p, dom, dev, k, rec, true));
        if let (Err(e), true) = (r, first.is_ok()) {
            first = Err(e);
        }
    }
    first
}
