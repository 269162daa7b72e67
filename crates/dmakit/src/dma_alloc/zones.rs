//! What the DMA allocators need from a page allocator: pages by device reach.
//!
//! The allocators place memory where a device can reach it, so they need more than
//! [`crate::PageAllocator`]: contiguous pages from the zones a device's DMA mask fully
//! reaches, pages below an address, and frees that report a mismatch instead of ignoring
//! it. [`ZonedPages`] is that seam; `dmakit-mem`'s `ZonedPageAllocator` implements it, and
//! so do `&T` and `Arc<T>` for any implementation `T`.

use alloc::sync::Arc;
use core::fmt;

use crate::addr::PhysAddr;
use crate::device::Device;

/// A page allocator that knows which of its memory a device can reach.
///
/// Implementations hand out each page to one owner at a time: a block they return is not
/// returned again until it is freed. They never touch the memory.
pub trait ZonedPages {
    /// The most pages one allocation may have.
    const MAX_BLOCK_PAGES: u64;

    /// `pages` contiguous pages whose every byte `dev`'s DMA mask reaches at its physical
    /// address. The DMA allocators ask this only for a device that sees memory at its
    /// physical addresses (no bus windows) with no coherent mask or bus limit below its
    /// DMA mask; for any other they take pages with [`ZonedPages::alloc_below`] and check
    /// the bus addresses themselves.
    ///
    /// # Errors
    /// [`PageAllocError::ZeroSize`], [`PageAllocError::TooLarge`] above
    /// [`Self::MAX_BLOCK_PAGES`]; [`PageAllocError::NoReachableZone`] when the mask reaches
    /// no memory; [`PageAllocError::OutOfMemory`] when no reachable block is large enough.
    /// Nothing is allocated on error.
    fn alloc_for_device(&self, dev: &Device, pages: u64) -> Result<PhysAddr, PageAllocError>;

    /// `pages` contiguous pages whose last byte is at or below `max_addr`.
    ///
    /// # Errors
    /// [`PageAllocError::ZeroSize`], [`PageAllocError::TooLarge`],
    /// [`PageAllocError::OutOfMemory`]. Nothing is allocated on error.
    fn alloc_below(&self, pages: u64, max_addr: u64) -> Result<PhysAddr, PageAllocError>;

    /// Gives back `pages` pages at `base`, exactly as allocated.
    ///
    /// # Errors
    /// [`PageAllocError::NotAllocated`] if they are not a live allocation; nothing changes
    /// then.
    fn free(&self, base: PhysAddr, pages: u64) -> Result<(), PageAllocError>;
}

impl<T: ZonedPages + ?Sized> ZonedPages for &T {
    const MAX_BLOCK_PAGES: u64 = T::MAX_BLOCK_PAGES;

    fn alloc_for_device(&self, dev: &Device, pages: u64) -> Result<PhysAddr, PageAllocError> {
        (**self).alloc_for_device(dev, pages)
    }

    fn alloc_below(&self, pages: u64, max_addr: u64) -> Result<PhysAddr, PageAllocError> {
        (**self).alloc_below(pages, max_addr)
    }

    fn free(&self, base: PhysAddr, pages: u64) -> Result<(), PageAllocError> {
        (**self).free(base, pages)
    }
}

impl<T: ZonedPages + ?Sized> ZonedPages for Arc<T> {
    const MAX_BLOCK_PAGES: u64 = T::MAX_BLOCK_PAGES;

    fn alloc_for_device(&self, dev: &Device, pages: u64) -> Result<PhysAddr, PageAllocError> {
        (**self).alloc_for_device(dev, pages)
    }

    fn alloc_below(&self, pages: u64, max_addr: u64) -> Result<PhysAddr, PageAllocError> {
        (**self).alloc_below(pages, max_addr)
    }

    fn free(&self, base: PhysAddr, pages: u64) -> Result<(), PageAllocError> {
        (**self).free(base, pages)
    }
}

/// Why a [`ZonedPages`] allocation or free was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageAllocError {
    /// A request for zero pages.
    ZeroSize,
    /// More pages than the largest block the allocator can hand out.
    TooLarge {
        /// Pages requested.
        pages: u64,
        /// The most pages one allocation may have.
        max_pages: u64,
    },
    /// No memory that may serve the request has a free block large enough.
    OutOfMemory {
        /// Pages requested.
        pages: u64,
    },
    /// A device's DMA mask fully reaches no zone that holds memory.
    NoReachableZone {
        /// The device's DMA mask.
        dma_mask: u64,
    },
    /// A free that does not match a live allocation (unknown base, wrong page count, or a
    /// second free).
    NotAllocated {
        /// Base address given.
        base: PhysAddr,
        /// Page count given.
        pages: u64,
    },
}

impl fmt::Display for PageAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PageAllocError::ZeroSize => f.write_str("allocation of zero size"),
            PageAllocError::TooLarge { pages, max_pages } => write!(
                f,
                "{pages} pages exceed the largest allocation of {max_pages} pages"
            ),
            PageAllocError::OutOfMemory { pages } => {
                write!(f, "out of memory allocating {pages} contiguous pages")
            }
            PageAllocError::NoReachableZone { dma_mask } => write!(
                f,
                "DMA mask {dma_mask:#x} fully reaches no zone with memory"
            ),
            PageAllocError::NotAllocated { base, pages } => {
                write!(f, "{pages} pages at {base} are not a live allocation")
            }
        }
    }
}

#[cfg(feature = "std")]
extern crate std;
#[cfg(feature = "std")]
impl std::error::Error for PageAllocError {}
