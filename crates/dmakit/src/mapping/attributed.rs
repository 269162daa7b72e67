//! Mappings made with attributes ([`MapAttrs`]) and the question drivers ask before they
//! skip a sync ([`DmaMapper::need_sync`]).
//!
//! A driver that recycles its buffers maps each once with [`MapAttrs::SKIP_CPU_SYNC`] and
//! syncs only the bytes each transfer uses; `need_sync` lets it skip even those syncs where
//! they would do nothing.

use core::panic::Location;

use super::route::Owner;
use super::DmaMapper;
use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::MapAttrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu;
use crate::mapped::MapPath;
use crate::platform::Platform;

impl<P: Platform> DmaMapper<P> {
    /// As [`DmaMapper::map_traced`], with attributes (Linux `dma_map_phys` with `attrs`).
    /// [`MapAttrs::SKIP_CPU_SYNC`] leaves the cache maintenance of a buffer mapped in place
    /// to the caller's [`DmaMapper::sync_for_device`]; a bounce is still filled from the
    /// buffer and cleaned (see the flag for exactly what each path skips). Unmap it with
    /// [`DmaMapper::unmap_attrs`] and the same attributes.
    ///
    /// # Errors
    /// As [`DmaMapper::map`]; nothing was changed then.
    ///
    /// # Safety
    /// As [`DmaMapper::map`]. With [`MapAttrs::SKIP_CPU_SYNC`] the caller also makes the
    /// buffer's cache state right itself (`sync_for_device` before the device reads).
    #[inline]
    #[track_caller]
    pub unsafe fn map_attrs(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        attrs: MapAttrs,
    ) -> Result<(DmaAddr, MapPath), DmaError> {
        self.map_at(dev, phys, len, dir, attrs, Location::caller(), |m| m)
    }

    /// As [`DmaMapper::unmap`], with the attributes the mapping was made with.
    /// [`MapAttrs::SKIP_CPU_SYNC`] skips the maintenance of a buffer mapped in place and a
    /// bounce's copy back: the device's bytes reach the buffer only through the caller's
    /// [`DmaMapper::sync_for_cpu`] before this call.
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`]; a refused unmap leaves the mapping live.
    ///
    /// # Safety
    /// As [`DmaMapper::unmap`].
    #[inline]
    #[track_caller]
    pub unsafe fn unmap_attrs(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: MapAttrs,
    ) -> Result<(), DmaError> {
        self.unmap_at(dev, dma, len, dir, attrs, Location::caller())
    }

    /// Whether a `sync_for_cpu` / `sync_for_device` of the mapping `dma` of `dev` would do
    /// anything (Linux `dma_need_sync`): true for a non-coherent device (maintenance) and
    /// for a bounced mapping (copies), false for a coherent device's mapping in place. When
    /// the answer is unknown — `dma` names no live mapping behind the IOMMU, or the device
    /// was detached from its domain — it is true, so a driver never skips a sync it needs.
    /// Reads the router's state only; changes nothing.
    pub fn need_sync(&self, dev: &Device, dma: DmaAddr) -> bool {
        if !dev.is_coherent() {
            return true;
        }
        match self.owner_of(dev, dma) {
            Ok(Owner::Direct) => false,
            Ok(Owner::Bounce(..)) | Err(_) => true,
            Ok(Owner::Iommu(dom)) => iommu::path::is_bounced(&dom, dev, dma),
        }
    }
}
