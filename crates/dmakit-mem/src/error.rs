//! Errors of the allocation side.
//!
//! Page and object allocation fail for two kinds of reasons: the request is wrong (zero
//! size, an address that was never handed out, a bad configuration) or memory ran out.
//! Both are values of [`MemError`]; no allocator in this crate panics on either. A
//! failed call leaves the allocator exactly as it was.

use core::fmt;

use dmakit::dma_alloc::PageAllocError;
use dmakit::{PhysAddr, PhysRange};

/// Why an allocation, a free or an allocator configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemError {
    /// A request for zero pages or zero bytes.
    ZeroSize,
    /// More pages than the largest block the allocator can hand out.
    TooLarge {
        /// Pages requested.
        pages: u64,
        /// The most pages one allocation may have.
        max_pages: u64,
    },
    /// No zone that may serve the request has a free block large enough.
    OutOfMemory {
        /// Pages requested.
        pages: u64,
    },
    /// A device's DMA mask fully reaches no zone that holds memory.
    NoReachableZone {
        /// The device's DMA mask.
        dma_mask: u64,
    },
    /// A page free that does not match a live allocation (unknown base, wrong page count,
    /// or a second free).
    NotAllocated {
        /// Base address given.
        base: PhysAddr,
        /// Page count given.
        pages: u64,
    },
    /// An object free (or size query) of an address that is not a live object.
    UnknownObject {
        /// Address given.
        addr: PhysAddr,
    },
    /// Two RAM ranges given to the page allocator overlap.
    OverlappingRam {
        /// The range being added.
        range: PhysRange,
    },
    /// The DMA zone limit is not a multiple of the page size or exceeds 4 GiB.
    BadDmaLimit(u64),
    /// An alignment that is not a power of two or is outside the supported range.
    BadAlignment(u64),
    /// A cache line size that is not a power of two from 8 to 4096.
    BadCacheLine(u64),
}

impl MemError {
    /// The page allocator's own error, for the page-level refusals (zero size, too large,
    /// out of memory, no reachable zone, not allocated); `None` for the object and
    /// configuration errors, which no page allocation or free returns.
    pub(crate) const fn page_error(self) -> Option<PageAllocError> {
        Some(match self {
            MemError::ZeroSize => PageAllocError::ZeroSize,
            MemError::TooLarge { pages, max_pages } => {
                PageAllocError::TooLarge { pages, max_pages }
            }
            MemError::OutOfMemory { pages } => PageAllocError::OutOfMemory { pages },
            MemError::NoReachableZone { dma_mask } => PageAllocError::NoReachableZone { dma_mask },
            MemError::NotAllocated { base, pages } => PageAllocError::NotAllocated { base, pages },
            MemError::UnknownObject { .. }
            | MemError::OverlappingRam { .. }
            | MemError::BadDmaLimit(_)
            | MemError::BadAlignment(_)
            | MemError::BadCacheLine(_) => return None,
        })
    }
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(page) = self.page_error() {
            return page.fmt(f);
        }
        match *self {
            MemError::UnknownObject { addr } => write!(f, "{addr} is not a live object"),
            MemError::OverlappingRam { range } => {
                write!(f, "RAM range {range:?} overlaps memory already managed")
            }
            MemError::BadDmaLimit(l) => write!(
                f,
                "DMA zone limit {l:#x} must be a multiple of the page size and at most 4 GiB"
            ),
            MemError::BadAlignment(a) => {
                write!(f, "alignment {a} is not a supported power of two")
            }
            MemError::BadCacheLine(l) => {
                write!(
                    f,
                    "cache line size {l} must be a power of two from 8 to 4096"
                )
            }
            // Written by `PageAllocError` above.
            MemError::ZeroSize
            | MemError::TooLarge { .. }
            | MemError::OutOfMemory { .. }
            | MemError::NoReachableZone { .. }
            | MemError::NotAllocated { .. } => Ok(()),
        }
    }
}

impl core::error::Error for MemError {}
