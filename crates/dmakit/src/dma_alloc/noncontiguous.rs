//! Noncontiguous allocation: memory contiguous in the device's address space.
//!
//! Linux's `dma_alloc_noncontiguous`. A device that wants one large buffer does not care
//! whether the CPU sees it contiguous. Without an IOMMU the device emits physical
//! addresses, so the buffer must be one physical chunk within its mask. Behind an IOMMU
//! scattered pages anywhere are mapped at consecutive device addresses, which succeeds even
//! when physical memory is too fragmented for one chunk. The CPU reaches the pages through
//! their linear addresses, or one contiguous view from [`super::vmap`].

use alloc::vec;

use crate::device::Device;
use crate::direct;
use crate::direction::Direction;
use crate::dma_alloc::sg_table::{Placement, TableShape};
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{
    DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected, SgTable, TableKind,
};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory};

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Allocates `size` zeroed bytes that `dev` sees at one contiguous device address
    /// ([`SgTable::dma_addr`]), for transfers in `dir`, as a table of cached pages (Linux
    /// `dma_alloc_noncontiguous`). Without translation: one physical chunk from the zones
    /// the device's mask reaches. With translation: chunks anywhere (as large as memory
    /// allows, down to single pages), mapped contiguously through the
    /// [`DeviceAddressSpace`]. The CPU owns the memory after allocation; pass it to the
    /// device with [`DmaAllocator::sync_noncontiguous_for_device`]. With
    /// [`DmaAllocator::with_memory_sharing`], the chunks of a device that must bounce are
    /// shared with the host before they are zeroed, and made private again when the table
    /// is freed. The call may block: never make it in atomic context.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::ZeroSize`], [`DmaAllocError::TooLarge`],
    /// [`DmaAllocError::OutOfMemory`], [`DmaAllocError::NoReachableMemory`],
    /// [`DmaAllocError::Memory`], [`DmaAllocError::NotShared`] (the host refused a chunk),
    /// [`DmaAllocError::DeviceSpace`]; nothing is left allocated, mapped or shared.
    pub fn alloc_noncontiguous(
        &self,
        dev: &Device,
        size: u64,
        dir: Direction,
    ) -> Result<SgTable, DmaAllocError> {
        let (pages, unit) = self.mapped_pages_for(dev, size)?;
        let translated = self.translated(dev);
        let chunks = if translated {
            self.alloc_chunks(dev, pages, unit, Z::MAX_BLOCK_PAGES, Placement::Anywhere)?
        } else {
            let phys = self.take_contiguous(dev, pages)?;
            match self.prepare_chunk(dev, phys, pages, true) {
                Ok(chunk) => vec![chunk],
                Err(e) => {
                    self.give_pages(phys, pages);
                    return Err(e);
                }
            }
        };
        let shape = |dma| TableShape {
            size,
            kind: TableKind::Noncontiguous,
            dir: Some(dir),
            dma: Some(dma),
            translated,
        };
        if !translated {
            // `take_contiguous` found memory the device reaches.
            return match self.device_address(dev, chunks[0].phys(), pages, dir) {
                Ok(dma) => Ok(self.make_table(dev, chunks, shape(dma))),
                Err(e) => {
                    self.free_chunks(&chunks);
                    Err(e)
                }
            };
        }
        let table = self.make_table(dev, chunks, shape(crate::addr::DmaAddr::ZERO));
        let list = table.pages();
        match self.address_space().map_pages_contiguous(dev, &list, dir) {
            Ok(dma) => Ok(table.with_dma(dma)),
            Err(error) => {
                self.free_chunks(table.chunks());
                Err(DmaAllocError::DeviceSpace {
                    device: dev.id(),
                    error,
                })
            }
        }
    }

    /// Unmaps and frees a table from [`DmaAllocator::alloc_noncontiguous`] (Linux
    /// `dma_free_noncontiguous`).
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] (another allocator's table, or an sg table),
    /// [`DmaAllocError::WrongDevice`], [`DmaAllocError::StillMapped`] while views exist,
    /// [`DmaAllocError::DeviceSpace`]: the table is handed back unchanged.
    /// [`DmaAllocError::PageAllocator`] if the zones refuse a chunk.
    #[allow(clippy::result_large_err)]
    pub fn free_noncontiguous(
        &self,
        dev: &Device,
        table: SgTable,
    ) -> Result<(), Rejected<SgTable>> {
        self.free_table(dev, table, TableKind::Noncontiguous)
    }

    /// Passes a noncontiguous table to the device (Linux `dma_sync_sgtable_for_device`):
    /// on a non-coherent device, maintenance of every chunk's lines through the linear map
    /// in the table's direction. A contiguous CPU view needs
    /// [`DmaAllocator::flush_vmap`] as well.
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] (another allocator's table, or an sg table, which
    /// the streaming API syncs), [`DmaAllocError::WrongDevice`]; nothing done then.
    pub fn sync_noncontiguous_for_device(
        &self,
        dev: &Device,
        table: &SgTable,
    ) -> Result<(), DmaAllocError> {
        let dir = self.check_noncontiguous(dev, table)?;
        for r in Self::table_ranges(table) {
            direct::sync_for_device(self.platform(), dev, r, dir);
        }
        Ok(())
    }

    /// Passes a noncontiguous table back to the CPU (Linux `dma_sync_sgtable_for_cpu`):
    /// for inbound directions on a non-coherent device, invalidates the chunks' lines in
    /// the linear map. A contiguous CPU view needs [`DmaAllocator::invalidate_vmap`] as
    /// well.
    ///
    /// # Errors
    /// As [`DmaAllocator::sync_noncontiguous_for_device`].
    pub fn sync_noncontiguous_for_cpu(
        &self,
        dev: &Device,
        table: &SgTable,
    ) -> Result<(), DmaAllocError> {
        let dir = self.check_noncontiguous(dev, table)?;
        for r in Self::table_ranges(table) {
            direct::sync_for_cpu(self.platform(), dev, r, dir);
        }
        Ok(())
    }

    fn check_noncontiguous(
        &self,
        dev: &Device,
        table: &SgTable,
    ) -> Result<Direction, DmaAllocError> {
        if table.owner() != self.id() {
            return Err(DmaAllocError::ForeignHandle);
        }
        if table.device() != dev.id() {
            return Err(DmaAllocError::WrongDevice {
                expected: table.device(),
                got: dev.id(),
            });
        }
        table.direction().ok_or(DmaAllocError::ForeignHandle)
    }
}
