//! Partial syncs on the IOMMU path: ownership of a part of a live mapping passes to the
//! device or back to the CPU.

use super::super::domain::{IommuDomain, Kind, Record};
use super::super::records::Records;
use super::super::sg_pieces::Piece;
use super::overflow;
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::{self as bounce, SyncPart};
use crate::device::Device;
use crate::error::DmaError;
use crate::maintenance;
use crate::platform::Platform;
use crate::reintroduce::{self, Defect};

/// The key of the live mapping of `dev` holding `[addr, addr + len)`.
pub(super) fn containing(
    recs: &Records<Record>,
    dev: &Device,
    addr: u64,
    len: u64,
) -> Result<u64, DmaError> {
    let (key, r) = recs
        .at_or_below(addr)
        .filter(|&(k, r)| r.device == dev.id() && addr - k < r.len)
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

/// The key and record of the live mapping of `dev` that `part` (whose first byte is at
/// `addr`) syncs, checked as every sync checks it.
fn checked_record<'r>(
    recs: &'r Records<Record>,
    dev: &Device,
    part: SyncPart,
    addr: u64,
) -> Result<(u64, &'r Record), DmaError> {
    let SyncPart { dma, len, dir, .. } = part;
    // The mapping the caller names is the one holding `dma`; the synced part must lie
    // in it, even where another mapping of the device starts right after it.
    let key = if reintroduce::active(Defect::IommuSyncStraysIntoNeighbour) {
        containing(recs, dev, addr, len)?
    } else {
        containing(recs, dev, dma.as_u64(), 1)?
    };
    let Some(r) = recs.get(key) else {
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
    Ok((key, r))
}

/// The first byte a sync of `part` touches.
fn part_start(dev: &Device, part: SyncPart) -> Result<u64, DmaError> {
    let dma = part.dma.as_u64();
    dma.checked_add(part.offset)
        .ok_or(overflow(dev, dma, part.offset))
}

/// Whether [`sync`] of `part` would be accepted, without touching anything.
///
/// # Errors
/// The refusals of [`sync`] other than a copy fault.
pub(crate) fn check(dom: &IommuDomain, dev: &Device, part: SyncPart) -> Result<(), DmaError> {
    let addr = part_start(dev, part)?;
    dom.with_records(|recs| checked_record(recs, dev, part, addr).map(|_| ()))
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
    let SyncPart { len, dir, .. } = part;
    let addr = part_start(dev, part)?;
    // A bounce is synced after the records' lock is dropped; the rest under it.
    let bounced = dom.with_records(|recs| -> Result<_, DmaError> {
        let (key, r) = checked_record(recs, dev, part, addr)?;
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
        // The part of a piece (of a list or an allocation) that the synced bytes cover.
        let (lo, hi) = (addr, addr + len);
        let overlap = |pc: Piece| {
            let (s, e) = (pc.dma.max(lo), (pc.dma + pc.len).min(hi));
            if s < e {
                maintain(pc.phys.add(s - pc.dma), e - s);
            }
        };
        match &r.kind {
            Kind::Single { phys } => {
                maintain(phys.add(at), len);
                Ok(None)
            }
            Kind::Resource => Ok(None),
            Kind::Sg { pieces } => {
                dom.for_each_piece(pieces, overlap);
                Ok(None)
            }
            Kind::Pages { pieces } => {
                pieces.iter().copied().for_each(overlap);
                Ok(None)
            }
            Kind::Bounced { backend, slot } => {
                // The bounce path finds the slot by its physical address; the IOVA names
                // the mapping in its errors.
                let part = SyncPart {
                    dma: DmaAddr::new(key),
                    offset: at,
                    len,
                    dir,
                };
                Ok(Some((backend.clone(), *slot, part)))
            }
        }
    })?;
    let Some((backend, slot, part)) = bounced else {
        return Ok(0);
    };
    match to {
        SyncTo::Device { fill_inbound } => {
            bounce::sync_for_device(p, backend.as_ref(), dev, slot, part, fill_inbound)
        }
        SyncTo::Cpu => bounce::sync_for_cpu(p, backend.as_ref(), dev, slot, part),
    }
}

/// Whether a sync of the mapping of `dev` holding `dma` would copy a bounce: true for a
/// bounced mapping, and for an address in no live mapping of `dev` (so a driver asking
/// about a wrong address never skips a sync it needs).
pub(crate) fn is_bounced(dom: &IommuDomain, dev: &Device, dma: DmaAddr) -> bool {
    dom.with_records(|recs| {
        containing(recs, dev, dma.as_u64(), 1)
            .ok()
            .and_then(|key| recs.get(key))
            .is_none_or(|r| matches!(r.kind, Kind::Bounced { .. }))
    })
}
