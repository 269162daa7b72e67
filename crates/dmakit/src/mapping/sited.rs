//! Map and unmap with the call site given explicitly.
//!
//! [`DmaMapper::map`] records its caller (`#[track_caller]`) so statistics and the debug
//! checker name the driver's line. An adapter between a driver framework and the mapper
//! (a virtio `Hal`, a dynamic facade) is not the driver: had it called `map`, every
//! bounce behind it would be attributed to one line of the adapter. These variants take
//! the site from the adapter, which gets it from its own caller
//! (`core::panic::Location::caller()` in a `#[track_caller]` function).

use core::panic::Location;

use super::single::dma_only;
use super::DmaMapper;
use crate::addr::{DmaAddr, PhysAddr};
use crate::attrs::MapAttrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::Platform;

impl<P: Platform> DmaMapper<P> {
    /// [`DmaMapper::map`], attributed to `site` instead of the caller. Callable from an
    /// interrupt handler, as `map` is.
    ///
    /// # Errors
    /// As [`DmaMapper::map`].
    ///
    /// # Safety
    /// As [`DmaMapper::map`].
    #[inline]
    pub unsafe fn map_at_site(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<DmaAddr, DmaError> {
        self.map_at(dev, phys, len, dir, MapAttrs::NONE, site, dma_only)
    }

    /// [`DmaMapper::unmap`], attributed to `site` instead of the caller (the debug
    /// checker names it in its reports).
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`].
    ///
    /// # Safety
    /// As [`DmaMapper::unmap`].
    #[inline]
    pub unsafe fn unmap_at_site(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        self.unmap_at(dev, dma, len, dir, MapAttrs::NONE, site)
    }
}
