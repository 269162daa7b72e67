//! Coherent buffers as plain addresses, and back.
//!
//! Driver frameworks free DMA memory by address: a virtio `Hal::dma_dealloc` gets the
//! device address, the CPU pointer and the page count, never the handle
//! [`DmaAllocator::alloc_coherent`] returned. [`CoherentBuffer::into_raw`] gives the handle
//! up as its addresses and size ([`RawCoherent`]), and
//! [`DmaAllocator::coherent_from_raw`] rebuilds it from them, so an adapter keeps no side
//! table. Where the memory came from (the atomic pool, the device's declared region or the
//! zones) is found again from the address, and every fact the allocator can check against
//! its own records is checked before anything is freed.

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::Device;
use crate::dma_alloc::coherent::{CoherentBuffer, Source};
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{coherent_bus_address, DeviceAddressSpace, DmaAllocError, DmaAllocator};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};
use crate::translation::bus_within;

/// A coherent buffer given up by [`CoherentBuffer::into_raw`]: what the CPU and the device
/// address, and the size requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCoherent {
    /// Where the CPU accesses the buffer ([`CoherentBuffer::phys`]).
    pub phys: PhysAddr,
    /// Where the device accesses it ([`CoherentBuffer::dma`]).
    pub dma: DmaAddr,
    /// Bytes requested ([`CoherentBuffer::size`]).
    pub size: u64,
}

impl CoherentBuffer {
    /// Gives the handle up as plain addresses. The memory stays allocated: only
    /// [`DmaAllocator::coherent_from_raw`] followed by [`DmaAllocator::free_coherent`]
    /// gives it back.
    pub fn into_raw(self) -> RawCoherent {
        RawCoherent {
            phys: self.phys(),
            dma: self.dma(),
            size: self.size(),
        }
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Rebuilds the handle [`CoherentBuffer::into_raw`] gave up, to free it.
    ///
    /// Checks, before anything changes: the size is non-zero; an address in the atomic
    /// pool or in `dev`'s declared region is a live object there that holds `size` bytes;
    /// an address elsewhere is page aligned (as the zones hand out memory); and, for a
    /// device that sees memory without an IOMMU, `raw.dma` is the address the allocator
    /// gives that memory for `dev`. Allocates nothing.
    ///
    /// # Errors
    /// [`DmaAllocError::NotCoherentBuffer`] when a check fails; nothing is freed and no
    /// state changes.
    ///
    /// # Safety
    /// `raw` is what `into_raw` returned for a buffer this allocator made for `dev` with
    /// [`DmaAllocator::alloc_coherent`], and no handle for it has been rebuilt since. The
    /// checks above cannot tell a live page allocation of the zones from a stale one, nor
    /// an IOMMU address from another, so a wrong `raw` that passes them would free memory
    /// someone else owns.
    pub unsafe fn coherent_from_raw(
        &self,
        dev: &Device,
        raw: RawCoherent,
    ) -> Result<CoherentBuffer, DmaAllocError> {
        let refused = DmaAllocError::NotCoherentBuffer {
            device: dev.id(),
            phys: raw.phys,
            dma: raw.dma,
            size: raw.size,
        };
        if raw.size == 0 {
            return Err(refused);
        }
        let range = PhysRange::new(raw.phys, raw.size).ok_or(refused)?;
        let translated = self.translated(dev);
        let holds = |object: Option<u64>| object.is_some_and(|s| s >= raw.size);
        let declared = self
            .declared
            .of(dev.id())
            .filter(|r| r.range.contains_range(&range));
        let (source, expected) = if self.atomic.contains(raw.phys) {
            if !holds(self.atomic.object_size(raw.phys)) {
                return Err(refused);
            }
            let bus = (!translated).then(|| bus_within(dev, range, dev.coherent_limit()));
            (Source::AtomicPool, bus)
        } else if let Some(region) = declared {
            if !holds(region.objects.object_size(raw.phys)) {
                return Err(refused);
            }
            let bus = bus_within(dev, range, dev.coherent_limit());
            (Source::Declared, Some(bus))
        } else {
            if !raw.phys.is_aligned(PAGE_SIZE) {
                return Err(refused);
            }
            let pages = raw.size.div_ceil(PAGE_SIZE);
            let source = Source::Pages {
                pages,
                uncached: !dev.is_coherent(),
                shared: self.must_share(dev),
            };
            let bus = (!translated).then(|| coherent_bus_address(dev, raw.phys, pages));
            (source, bus)
        };
        if expected.is_some_and(|bus| bus != Some(raw.dma)) {
            return Err(refused);
        }
        Ok(CoherentBuffer {
            range,
            dma: raw.dma,
            device: dev.id(),
            source,
            translated: translated && source != Source::Declared,
            owner: self.id(),
        })
    }
}
