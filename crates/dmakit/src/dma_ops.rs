//! An object-safe facade over a mapper and an allocator, for global integration.
//!
//! Driver frameworks call their DMA layer through free functions (a virtio `Hal` has no
//! `self`), so the layer is installed once in a global. A global cannot be generic over
//! the platform, the zones and the address space; [`DmaOps`] is the `dyn`-usable face
//! such a global holds (as `&'static (dyn DmaOps + Send + Sync)`; a [`DmaStack`] is
//! `Send + Sync` when its platform, zones and address space are): streaming map and unmap attributed to an
//! explicit call site, coherent allocation handed out and freed by address
//! ([`RawCoherent`]), and the statistics. [`DmaStack`] implements it over a
//! [`DmaMapper`] and a [`DmaAllocator`].

use core::panic::Location;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::direction::Direction;
use crate::dma_alloc::{
    AllocContext, DeviceAddressSpace, DmaAllocError, DmaAllocator, NoTranslation, RawCoherent,
    ZonedPages,
};
use crate::error::DmaError;
use crate::mapping::DmaMapper;
use crate::platform::{CoherentRemap, Platform};
use crate::stats::StatsSnapshot;

/// The DMA operations a driver framework needs, object safe: what a global (a virtio
/// `Hal`, which has no `self`) holds as `&'static (dyn DmaOps + Send + Sync)`, since it
/// cannot be generic over the platform, zones and address space. [`DmaStack`]
/// implements it.
pub trait DmaOps {
    /// Maps as [`DmaMapper::map`], attributed to `site` ([`DmaMapper::map_at_site`]).
    /// Callable from an interrupt handler.
    ///
    /// # Errors
    /// As [`DmaMapper::map`].
    ///
    /// # Safety
    /// As [`DmaMapper::map`].
    unsafe fn map_from(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<DmaAddr, DmaError>;

    /// Unmaps as [`DmaMapper::unmap`], attributed to `site`. Callable from an interrupt
    /// handler.
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`].
    ///
    /// # Safety
    /// As [`DmaMapper::unmap`].
    unsafe fn unmap_from(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError>;

    /// `size` zeroed bytes of coherent memory for `dev`, as
    /// [`DmaAllocator::alloc_coherent`], given as addresses; free them with
    /// [`DmaOps::free_coherent`].
    ///
    /// # Errors
    /// As [`DmaAllocator::alloc_coherent`].
    fn alloc_coherent(
        &self,
        dev: &Device,
        size: u64,
        ctx: AllocContext,
    ) -> Result<RawCoherent, DmaAllocError>;

    /// Frees coherent memory [`DmaOps::alloc_coherent`] returned
    /// ([`DmaAllocator::coherent_from_raw`], then [`DmaAllocator::free_coherent`]).
    ///
    /// # Errors
    /// [`DmaAllocError::NotCoherentBuffer`] for addresses or a size no buffer of `dev`
    /// has, or an error of [`DmaAllocator::free_coherent`]; the memory stays allocated.
    ///
    /// # Safety
    /// As [`DmaAllocator::coherent_from_raw`]: `raw` came from `alloc_coherent` on this
    /// value for `dev` and is freed once.
    unsafe fn free_coherent(&self, dev: &Device, raw: RawCoherent) -> Result<(), DmaAllocError>;

    /// The mapper's statistics ([`DmaMapper::stats`]). Allocates: call outside atomic
    /// context.
    fn stats(&self) -> StatsSnapshot;
}

/// A mapper and an allocator over the same platform, behind [`DmaOps`].
pub struct DmaStack<P: Platform, Z, S = NoTranslation> {
    mapper: DmaMapper<P>,
    allocator: DmaAllocator<P, Z, S>,
}

impl<P: Platform, Z, S> DmaStack<P, Z, S> {
    /// Puts `mapper` and `allocator` behind one facade.
    pub fn new(mapper: DmaMapper<P>, allocator: DmaAllocator<P, Z, S>) -> Self {
        Self { mapper, allocator }
    }
    /// The mapper, for what the facade does not offer.
    pub fn mapper(&self) -> &DmaMapper<P> {
        &self.mapper
    }
    /// The allocator, for what the facade does not offer.
    pub fn allocator(&self) -> &DmaAllocator<P, Z, S> {
        &self.allocator
    }
}

impl<P, Z, S> DmaOps for DmaStack<P, Z, S>
where
    P: Platform + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    unsafe fn map_from(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<DmaAddr, DmaError> {
        // SAFETY: the caller keeps `map`'s contract, which this method's is.
        unsafe { self.mapper.map_at_site(dev, phys, len, dir, site) }
    }

    unsafe fn unmap_from(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        // SAFETY: the caller keeps `unmap`'s contract, which this method's is.
        unsafe { self.mapper.unmap_at_site(dev, dma, len, dir, site) }
    }

    fn alloc_coherent(
        &self,
        dev: &Device,
        size: u64,
        ctx: AllocContext,
    ) -> Result<RawCoherent, DmaAllocError> {
        self.allocator
            .alloc_coherent(dev, size, ctx)
            .map(|b| b.into_raw())
    }

    unsafe fn free_coherent(&self, dev: &Device, raw: RawCoherent) -> Result<(), DmaAllocError> {
        // SAFETY: the caller promises `raw` came from `alloc_coherent` above (which gave a
        // buffer of this allocator up with `into_raw`) for `dev`, and frees it once.
        let buf = unsafe { self.allocator.coherent_from_raw(dev, raw)? };
        // A refused free hands the buffer back: give it up again, still allocated.
        self.allocator.free_coherent(dev, buf).map_err(|r| r.error)
    }

    fn stats(&self) -> StatsSnapshot {
        self.mapper.stats()
    }
}
