//! Non-coherent pages: cached memory a device can reach, synced by the caller.
//!
//! Linux's `dma_alloc_pages` / `dma_alloc_noncoherent`: the pages behave like any other
//! cached pages for the CPU (fast to read and write), are guaranteed addressable by the
//! device, and ownership passes back and forth with explicit syncs, exactly as for a
//! streaming mapping. Forgetting a sync is the caller's bug; the machine model shows it.

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::{Device, DeviceId};
use crate::direct;
use crate::direction::Direction;
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{page_range, DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, MemoryFault};

/// Cached pages allocated by [`DmaAllocator::alloc_pages`] for transfers in one direction.
/// The CPU owns them after allocation (zeroed, and memory holds the zeros); hand them to
/// the device with [`DmaAllocator::sync_pages_for_device`] and back with
/// [`DmaAllocator::sync_pages_for_cpu`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the pages are lost unless given to free_pages"]
pub struct DmaPages {
    range: PhysRange,
    dma: DmaAddr,
    pages: u64,
    dir: Direction,
    device: DeviceId,
    translated: bool,
    /// Shared with the host for a device that must bounce.
    shared: bool,
    owner: u64,
}

impl DmaPages {
    /// Where the CPU accesses the pages.
    pub fn phys(&self) -> PhysAddr {
        self.range.start()
    }
    /// Where the device accesses them.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Allocates `size` bytes of cached, physically contiguous, zeroed pages `dev` can
    /// reach, for transfers in `dir` (Linux `dma_alloc_pages`). Memory holds the zeros and
    /// no line of the pages is dirty, so the device never sees an earlier owner's data.
    /// With [`DmaAllocator::with_memory_sharing`], the pages of a device that must bounce
    /// are shared with the host before they are zeroed, and made private again by
    /// [`DmaAllocator::free_pages`]. The call may block (it takes pages and may convert
    /// them): never make it in atomic context.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::ZeroSize`], [`DmaAllocError::TooLarge`],
    /// [`DmaAllocError::OutOfMemory`], [`DmaAllocError::NoReachableMemory`],
    /// [`DmaAllocError::Memory`], [`DmaAllocError::NotShared`] (the host refused the
    /// pages), [`DmaAllocError::DeviceSpace`]; nothing is left allocated or shared.
    pub fn alloc_pages(
        &self,
        dev: &Device,
        size: u64,
        dir: Direction,
    ) -> Result<DmaPages, DmaAllocError> {
        let (pages, _) = self.mapped_pages_for(dev, size)?;
        let phys = self.take_contiguous(dev, pages)?;
        let ranges = page_range(phys, pages).and_then(|all| {
            PhysRange::new(phys, size)
                .map(|r| (all, r))
                .ok_or(DmaAllocError::Memory(MemoryFault {
                    addr: phys,
                    len: size,
                }))
        });
        let shared = self.must_share(dev);
        let ranges =
            ranges.and_then(|(all, range)| self.share_if(shared, all).map(|()| (all, range)));
        let (all, range) = match ranges {
            Ok(r) => r,
            Err(e) => {
                self.give_pages(phys, pages);
                return Err(e);
            }
        };
        let made = self.zero_cached(all).and_then(|()| {
            let dma = self.device_address(dev, phys, pages, dir)?;
            Ok(DmaPages {
                range,
                dma,
                pages,
                dir,
                device: dev.id(),
                translated: self.translated(dev),
                shared,
                owner: self.id(),
            })
        });
        if made.is_err() {
            self.unshare_if(shared, all);
            self.give_pages(phys, pages);
        }
        made
    }

    /// Returns pages from [`DmaAllocator::alloc_pages`] (Linux `dma_free_pages`), private
    /// again if they were shared with the host.
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`], [`DmaAllocError::WrongDevice`],
    /// [`DmaAllocError::DeviceSpace`]: the pages are handed back unchanged;
    /// [`DmaAllocError::PageAllocator`] if the zones refuse them.
    #[allow(clippy::result_large_err)]
    pub fn free_pages(&self, dev: &Device, pages: DmaPages) -> Result<(), Rejected<DmaPages>> {
        let checked = self
            .check_owner(pages.owner, pages.device, dev)
            .and_then(|()| self.drop_device_address(dev, pages.dma, pages.pages, pages.translated))
            .and_then(|()| page_range(pages.phys(), pages.pages))
            .and_then(|all| {
                self.unshare_if(pages.shared, all);
                self.zones()
                    .free(pages.phys(), pages.pages)
                    .map_err(DmaAllocError::PageAllocator)
            });
        match checked {
            Ok(()) => Ok(()),
            Err(error) => Err(Rejected {
                error,
                handle: pages,
            }),
        }
    }

    /// Passes `len` bytes at `offset` of the pages to the device (Linux
    /// `dma_sync_single_for_device`): on a non-coherent device, cleans (and for inbound
    /// directions invalidates) their lines.
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`], [`DmaAllocError::WrongDevice`],
    /// [`DmaAllocError::OutOfRange`] when the part leaves the allocation; nothing done then.
    pub fn sync_pages_for_device(
        &self,
        dev: &Device,
        pages: &DmaPages,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaAllocError> {
        let part = self.pages_part(dev, pages, offset, len)?;
        direct::sync_for_device(self.platform(), dev, part, pages.dir);
        Ok(())
    }

    /// Passes `len` bytes at `offset` of the pages back to the CPU (Linux
    /// `dma_sync_single_for_cpu`): on a non-coherent device and an inbound direction,
    /// invalidates their lines so the CPU sees what the device wrote.
    ///
    /// # Errors
    /// As [`DmaAllocator::sync_pages_for_device`].
    pub fn sync_pages_for_cpu(
        &self,
        dev: &Device,
        pages: &DmaPages,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaAllocError> {
        let part = self.pages_part(dev, pages, offset, len)?;
        direct::sync_for_cpu(self.platform(), dev, part, pages.dir);
        Ok(())
    }

    fn pages_part(
        &self,
        dev: &Device,
        pages: &DmaPages,
        offset: u64,
        len: u64,
    ) -> Result<PhysRange, DmaAllocError> {
        self.check_owner(pages.owner, pages.device, dev)?;
        sub_range(pages.range, offset, len)
    }
}

/// `len` bytes at `offset` inside `whole`.
pub(crate) fn sub_range(
    whole: PhysRange,
    offset: u64,
    len: u64,
) -> Result<PhysRange, DmaAllocError> {
    let bad = DmaAllocError::OutOfRange {
        offset,
        len,
        size: whole.len(),
    };
    let end = offset.checked_add(len).ok_or(bad)?;
    if len == 0 || end > whole.len() {
        return Err(bad);
    }
    PhysRange::new(whole.start().add(offset), len).ok_or(bad)
}
