//! Peer device registers (MMIO): `map_resource` / `unmap_resource` (Linux
//! `dma_map_resource`), for a device that must reach another device's registers — a DMA
//! engine writing a peripheral's FIFO.
//!
//! Registers are not memory: no cache holds them and no copy of them means anything, so a
//! resource is never maintained and never bounced. Without an IOMMU the device reaches the
//! registers at their bus address or not at all; behind one they are mapped with the
//! IOMMU's MMIO permission.

use super::{checked_extent, checked_range, DmaMapper};
use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu;
use crate::platform::Platform;
use crate::translation::bus_within;

impl<P: Platform> DmaMapper<P> {
    /// Lends the `len` register bytes at `phys` (another device's MMIO) to `dev` for
    /// accesses in `dir`; returns the address `dev` must use. No cache maintenance, never a
    /// bounce. Behind an IOMMU the registers get an IOVA below the device's mask, mapped
    /// with [`crate::IommuPerm::mmio`]; otherwise the device uses their bus address, which
    /// its mask must reach. The debug checker does not track resources.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range;
    /// [`DmaError::ResourceUnreachable`] without an IOMMU when the mask does not reach the
    /// whole range; [`DmaError::IovaExhausted`], [`DmaError::Iommu`],
    /// [`DmaError::Detached`] behind one. Nothing changed then.
    ///
    /// # Safety
    /// `[phys, phys + len)` is MMIO (a peer device's registers) that the caller controls
    /// and that `dev` may reach for as long as the mapping lives: the device's accesses
    /// there are not checked by anything but the IOMMU, if one is present.
    pub unsafe fn map_resource(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<DmaAddr, DmaError> {
        let range = checked_range(dev, phys, len)?;
        if let Some(dom) = self.routes.iommu_domain(dev)? {
            return iommu::path::map_resource(&self.platform, &dom, dev, range, dir);
        }
        bus_within(dev, range, dev.streaming_limit()).ok_or(DmaError::ResourceUnreachable {
            device: dev.id(),
            phys,
            len,
            mask: dev.dma_mask(),
        })
    }

    /// Ends a [`DmaMapper::map_resource`] mapping. Behind an IOMMU its IOVA is unmapped
    /// (and invalidated as the domain's mode says); without one there is nothing to undo
    /// beyond checking the range.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range; behind an
    /// IOMMU [`DmaError::UnknownMapping`], [`DmaError::OutOfMapping`],
    /// [`DmaError::WrongDirection`] when `dma`, `len`, `dir` do not name a live resource
    /// mapping as it was made (a memory mapping is refused: [`DmaMapper::unmap`] ends it),
    /// [`DmaError::Iommu`], [`DmaError::Detached`]. A refused unmap leaves the mapping
    /// live.
    ///
    /// # Safety
    /// `dma`, `len` and `dir` name a live resource mapping of `dev`, and the device has
    /// stopped using it.
    pub unsafe fn unmap_resource(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        checked_extent(dev, dma.as_u64(), len)?;
        match self.routes.iommu_domain(dev)? {
            Some(dom) => iommu::path::unmap_resource(&self.platform, &dom, dev, dma, len, dir),
            None => Ok(()),
        }
    }
}
