//! Errors of the allocation side.
//!
//! Page and object allocation fail for two kinds of reasons: the request is wrong (zero
//! size, an address that was never handed out, a bad configuration) or memory ran out.
//! Both are values of [`MemError`]; no allocator in [`crate::mem`] panics on either. A
//! failed call leaves the allocator exactly as it was.

use core::fmt;

use crate::addr::{PhysAddr, PhysRange};

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

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemError::ZeroSize => f.write_str("allocation of zero size"),
            MemError::TooLarge { pages, max_pages } => write!(
                f,
                "{pages} pages exceed the largest allocation of {max_pages} pages"
            ),
            MemError::OutOfMemory { pages } => {
                write!(f, "out of memory allocating {pages} contiguous pages")
            }
            MemError::NoReachableZone { dma_mask } => {
                write!(
                    f,
                    "DMA mask {dma_mask:#x} fully reaches no zone with memory"
                )
            }
            MemError::NotAllocated { base, pages } => {
                write!(f, "{pages} pages at {base} are not a live allocation")
            }
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
        }
    }
}

impl core::error::Error for MemError {}
