//! Peer device registers (MMIO) on the IOMMU path: mapped with the IOMMU's MMIO
//! permission, never bounced, never maintained.

use super::super::domain::{IommuDomain, Kind, Record};
use super::end::{finish, take_record};
use super::single::map_granules;
use super::{granule_span, overflow, reserve};
use crate::addr::{DmaAddr, PhysRange};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::{IommuPerm, Platform};

/// Maps the register range `range` for `dev` in `dom`: the granules holding it, with
/// [`IommuPerm::mmio`], at an IOVA below the device's mask. Returns the IOVA of the first
/// register byte.
///
/// # Errors
/// [`DmaError::AddressOverflow`], [`DmaError::IovaExhausted`], [`DmaError::Iommu`];
/// nothing changed then.
pub(crate) fn map_resource<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
) -> Result<DmaAddr, DmaError> {
    let cpu = p.current_cpu();
    dom.drain_expired(cpu);
    let start = range.start().as_u64();
    let (first, span) =
        granule_span(start, range.len(), dom.granule()).ok_or(overflow(dev, start, range.len()))?;
    let perm = IommuPerm::for_mmio(dir);
    let room = reserve(dom, dev)?;
    let iova = map_granules(dom, dev, first, span, perm, cpu)?;
    let dma = dom.iova_addr(iova).add(start - first);
    room.insert(
        dma.as_u64(),
        Record {
            device: dev.id(),
            iova,
            mapped: span,
            len: range.len(),
            dir,
            kind: Kind::Resource,
        },
    );
    Ok(dma)
}

/// Ends the resource mapping at `dma` of `len` bytes in `dir`: page tables, IOTLB (as the
/// domain's mode says), IOVA. Nothing on the CPU side.
///
/// # Errors
/// [`DmaError::UnknownMapping`] (no live resource mapping of `dev` there — a memory mapping
/// is refused too), [`DmaError::OutOfMapping`], [`DmaError::WrongDirection`],
/// [`DmaError::Iommu`]: the mapping stays live then.
pub(crate) fn unmap_resource<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    dma: DmaAddr,
    len: u64,
    dir: Direction,
) -> Result<(), DmaError> {
    let rec = take_record(dom, dev, dma.as_u64(), Some(len), dir, true)?;
    finish(p, dom, dev, dma.as_u64(), rec, false).map(|_| ())
}
