//! Contiguous CPU views of allocated tables, kept coherent on aliasing caches.
//!
//! A table's pages are scattered in the linear map; drivers often want one contiguous view
//! (Linux `dma_vmap_noncontiguous`). On a cache that aliases by virtual address that view
//! caches the pages in other lines than the linear map, and the maintenance the DMA syncs
//! do (by physical address, on the linear map's lines) does not reach it. So data written
//! through the view must be flushed before the device reads it ([`DmaAllocator::flush_vmap`],
//! Linux `flush_kernel_vmap_range`), and the view's lines invalidated before reading what
//! the device wrote ([`DmaAllocator::invalidate_vmap`], `invalidate_kernel_vmap_range`).
//! The machine model has an aliasing mode that shows the corruption a missing flush causes.

use crate::addr::{PhysAddr, PhysRange};
use crate::dma_alloc::pages::sub_range;
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected, SgTable};
use crate::platform::{
    CacheMaintenance, CoherentRemap, CpuMemory, VirtAddr, VirtualMapping, PAGE_SIZE,
};

/// A contiguous CPU view of a table, made by [`DmaAllocator::vmap`]: byte `i` of the table
/// is at `addr() + i`. Lives until [`DmaAllocator::vunmap`]; the table cannot be freed
/// before.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the view stays mapped (and its table unfreeable) until vunmap"]
pub struct Vmap {
    addr: VirtAddr,
    pages: u64,
    size: u64,
    table: u64,
    owner: u64,
}

impl Vmap {
    /// First byte of the view.
    pub fn addr(&self) -> VirtAddr {
        self.addr
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap + VirtualMapping,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Maps the pages of `table` at one contiguous CPU virtual range (Linux
    /// `dma_vmap_noncontiguous`).
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] for another allocator's table;
    /// [`DmaAllocError::VmapFailed`] when the platform has no virtual range. Nothing is
    /// mapped then.
    pub fn vmap(&self, table: &SgTable) -> Result<Vmap, DmaAllocError> {
        if table.owner() != self.id() {
            return Err(DmaAllocError::ForeignHandle);
        }
        let pages = table.pages();
        let addr = self
            .platform()
            .vmap(&pages)
            .ok_or(DmaAllocError::VmapFailed {
                pages: pages.len() as u64,
            })?;
        table.view_added();
        Ok(Vmap {
            addr,
            pages: pages.len() as u64,
            size: table.size(),
            table: table.token(),
            owner: self.id(),
        })
    }

    /// Writes back what the view still holds, then removes it (Linux
    /// `dma_vunmap_noncontiguous`, with the flush aliasing caches need before a view goes).
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] when `view` was not made from `table` by this
    /// allocator; the view is handed back, still mapped.
    #[allow(clippy::result_large_err)]
    pub fn vunmap(&self, table: &SgTable, view: Vmap) -> Result<(), Rejected<Vmap>> {
        if view.owner != self.id() || view.table != table.token() {
            return Err(Rejected {
                error: DmaAllocError::ForeignHandle,
                handle: view,
            });
        }
        let bytes = view.pages * PAGE_SIZE;
        self.platform().flush_virt(view.addr, bytes);
        self.platform().vunmap(view.addr, view.pages as usize);
        table.view_removed();
        Ok(())
    }

    /// Writes back the view's dirty lines (Linux `flush_kernel_vmap_range`): call after
    /// writing through the view and before the device reads (with the table's sync for
    /// the device).
    pub fn flush_vmap(&self, view: &Vmap) {
        self.platform().flush_virt(view.addr, view.size);
    }

    /// Drops the view's lines (Linux `invalidate_kernel_vmap_range`): call after the device
    /// wrote (with the table's sync for the CPU) and before reading through the view.
    pub fn invalidate_vmap(&self, view: &Vmap) {
        self.platform().invalidate_virt(view.addr, view.size);
    }

    /// [`DmaAllocator::flush_vmap`] of `len` bytes at `offset` only.
    ///
    /// # Errors
    /// [`DmaAllocError::OutOfRange`] when the part leaves the view; nothing done then.
    pub fn flush_vmap_range(
        &self,
        view: &Vmap,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaAllocError> {
        let at = view_part(view, offset, len)?;
        self.platform().flush_virt(at, len);
        Ok(())
    }

    /// [`DmaAllocator::invalidate_vmap`] of `len` bytes at `offset` only.
    ///
    /// # Errors
    /// [`DmaAllocError::OutOfRange`] when the part leaves the view; nothing done then.
    pub fn invalidate_vmap_range(
        &self,
        view: &Vmap,
        offset: u64,
        len: u64,
    ) -> Result<(), DmaAllocError> {
        let at = view_part(view, offset, len)?;
        self.platform().invalidate_virt(at, len);
        Ok(())
    }
}

/// The virtual address of `len` bytes at `offset` inside the view.
fn view_part(view: &Vmap, offset: u64, len: u64) -> Result<VirtAddr, DmaAllocError> {
    // Reuse the range check of the physical helpers on a stand-in range of the view's size.
    let whole = PhysRange::new(PhysAddr::ZERO, view.size).ok_or(DmaAllocError::OutOfRange {
        offset,
        len,
        size: view.size,
    })?;
    sub_range(whole, offset, len)?;
    view.addr
        .checked_add(offset)
        .ok_or(DmaAllocError::OutOfRange {
            offset,
            len,
            size: view.size,
        })
}
