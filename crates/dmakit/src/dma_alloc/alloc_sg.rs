//! `alloc_sg`: a scatter-gather table placed where the device can reach it.
//!
//! Proposed on the Linux list in 2018 (Matthew Wilcox, for drivers that build their own
//! page tables from vmalloc memory) and never merged: drivers do not need *physical* memory
//! below the mask, they need *device addresses* below it. So: behind an IOMMU any memory
//! will do; without one, pages below the mask are preferred, and when that memory runs out
//! the table takes pages anywhere and the mapping layer bounces them at map time (the
//! trade-off between low memory and bounce cost is made here, once, not in every driver).
//! The table is mapped and synced through the streaming API ([`crate::DmaMapper::map_sg`]
//! with [`SgTable::entries`]).

use crate::device::Device;
use crate::dma_alloc::sg_table::{Placement, TableShape};
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{
    DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected, SgTable, TableKind,
};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Allocates `size` zeroed bytes of cached memory as a scatter-gather table for `dev`.
    /// Chunks are as large as memory allows up to the device's maximum segment size.
    /// Behind a translating [`DeviceAddressSpace`] they come from anywhere. Without one they
    /// come from the zones the device's mask reaches; when those run out, the rest comes
    /// from anywhere and is marked unreachable ([`SgTable::needs_bounce`]): mapping the
    /// table through [`crate::DmaMapper::map_sg`] then bounces those chunks. With
    /// [`DmaAllocator::with_memory_sharing`], the chunks of a device that must bounce are
    /// shared with the host before they are zeroed, and made private again by
    /// [`DmaAllocator::free_sg`]. The call may block: never make it in atomic context.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::ZeroSize`], [`DmaAllocError::TooLarge`];
    /// [`DmaAllocError::OutOfMemory`] when even the fallback finds no memory;
    /// [`DmaAllocError::Memory`] when zeroing is refused; [`DmaAllocError::NotShared`] when
    /// the host refuses a chunk. Nothing is left allocated or shared.
    pub fn alloc_sg(&self, dev: &Device, size: u64) -> Result<SgTable, DmaAllocError> {
        let pages = self.pages_for(dev, size)?;
        let translated = self.translated(dev);
        let placement = if translated {
            Placement::Anywhere
        } else {
            Placement::ReachableThenAnywhere
        };
        let max_chunk = (dev.max_segment_size() / PAGE_SIZE).max(1);
        let chunks = self.alloc_chunks(dev, pages, 1, max_chunk, placement)?;
        Ok(self.make_table(
            dev,
            chunks,
            TableShape {
                size,
                kind: TableKind::Sg,
                dir: None,
                dma: None,
                translated,
            },
        ))
    }

    /// Frees a table from [`DmaAllocator::alloc_sg`]. Unmap it from the device first.
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] (another allocator's table, or a noncontiguous
    /// one), [`DmaAllocError::WrongDevice`], [`DmaAllocError::StillMapped`] while views
    /// exist: the table is handed back unchanged. [`DmaAllocError::PageAllocator`] if the
    /// zones refuse a chunk.
    #[allow(clippy::result_large_err)]
    pub fn free_sg(&self, dev: &Device, table: SgTable) -> Result<(), Rejected<SgTable>> {
        self.free_table(dev, table, TableKind::Sg)
    }
}
