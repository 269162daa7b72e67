//! Single mappings on the IOMMU path: map (in place or through a bounce slot) and unmap.

use super::super::domain::{IommuDomain, Kind, Record};
use super::super::iova::IovaRange;
use super::end::{finish, take_record, Ended};
use super::{granule_span, iova_error, overflow, reserve, MapCtx};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::{self as bounce, MapFailure, Placement};
use crate::bounce::{BounceBackend, BounceMeta};
use crate::decision::BounceReason;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::maintenance;
use crate::mapped::MapPath;
use crate::platform::{IommuPerm, Platform};

/// Reserves IOVA pages for `len` granule-aligned bytes at `phys` and maps them.
pub(super) fn map_granules(
    dom: &IommuDomain,
    dev: &Device,
    phys: u64,
    len: u64,
    perm: IommuPerm,
    cpu: usize,
) -> Result<IovaRange, DmaError> {
    let limit = dom
        .limit_pfn(dev.streaming_limit())
        .ok_or(DmaError::IovaExhausted {
            device: dev.id(),
            len,
            mask: dev.streaming_limit(),
        })?;
    let iova = dom
        .alloc_iova(len, limit, cpu)
        .map_err(|e| iova_error(dev, len, e))?;
    if let Err(error) = dom.map_tables(dom.iova_addr(iova), PhysAddr::new(phys), len, perm) {
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
/// [`DmaError::MappingTableFull`], [`DmaError::NoBouncePool`], [`DmaError::IovaExhausted`],
/// [`DmaError::Iommu`], [`DmaError::AddressOverflow`] or a bounce copy fault. Nothing
/// changed then.
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
    let room = reserve(dom, dev).map_err(MapFailure::Failed)?;
    let g = dom.granule();
    let perm = IommuPerm::for_direction(dir);
    let reason = ctx.bounce_reason(dev, range, dir, p.cache_line_size(), g);
    let Some(reason) = reason else {
        let start = range.start().as_u64();
        let (first, span) = granule_span(start, range.len(), g)
            .ok_or_else(|| MapFailure::Failed(overflow(dev, start, range.len())))?;
        let iova = map_granules(dom, dev, first, span, perm, cpu).map_err(MapFailure::Failed)?;
        if !dev.is_coherent() && !ctx.attrs.skips_cpu_sync() {
            maintenance::for_device(p, range, dir);
        }
        let dma = dom.iova_addr(iova).add(start - first);
        room.insert(
            dma.as_u64(),
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
        return Ok((dma, ctx.path(dom.id(), None)));
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
    room.insert(
        dma.as_u64(),
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
    Ok((dma, ctx.path(dom.id(), Some(reason))))
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

/// Ends the mapping at `dma` of `len` bytes in `dir`; without `cpu_sync` (the mapping's
/// `SKIP_CPU_SYNC`) the CPU side — maintenance, a bounce's copy back — is left to the
/// caller. Returns whether a bounce slot was released (deferred mappings may fit now).
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
    cpu_sync: bool,
) -> Result<Ended, DmaError> {
    let rec = take_record(dom, dev, dma.as_u64(), Some(len), dir, false)?;
    finish(p, dom, dev, dma.as_u64(), rec, cpu_sync)
}
