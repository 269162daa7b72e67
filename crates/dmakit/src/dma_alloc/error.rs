//! Errors of the DMA allocators.
//!
//! Every shortage and every misuse of an allocation handle is a value of [`DmaAllocError`],
//! never a panic. A failed allocation leaves nothing behind: whatever pages, pool objects,
//! remaps or device mappings it had taken are given back before the error is returned. A
//! refused free hands the handle back inside [`Rejected`], so memory is never lost.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::DeviceId;
use crate::dma_alloc::space::DeviceSpaceError;
use crate::dma_alloc::zones::PageAllocError;
use crate::platform::MemoryFault;

/// Why a DMA allocation, free, sync or view operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaAllocError {
    /// A request for zero bytes.
    ZeroSize {
        /// The device asked for.
        device: DeviceId,
    },
    /// The request is larger than the largest allocation of its kind.
    TooLarge {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        size: u64,
        /// The largest allocation of this kind, in bytes.
        max: u64,
    },
    /// No memory the device can reach is free in a large enough piece.
    OutOfMemory {
        /// The device asked for.
        device: DeviceId,
        /// Pages requested (contiguous, or in total for a table).
        pages: u64,
    },
    /// The device's DMA mask fully reaches no zone that holds memory.
    NoReachableMemory {
        /// The device asked for.
        device: DeviceId,
        /// Its DMA mask.
        dma_mask: u64,
    },
    /// An atomic-context allocation found the atomic pool without a free object the device
    /// can reach. The pool never waits; growth (if requested) comes later.
    AtomicPoolExhausted {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        size: u64,
        /// Bytes of the pool in live objects.
        used: u64,
        /// Bytes of the pool.
        total: u64,
        /// Whether a growth request is outstanding.
        growth_pending: bool,
    },
    /// The platform refused a CPU access or a remap: the memory is not memory it knows.
    Memory(MemoryFault),
    /// The device address space (IOMMU) refused to map or unmap.
    DeviceSpace {
        /// The device asked for.
        device: DeviceId,
        /// What the address space said.
        error: DeviceSpaceError,
    },
    /// The platform could not make a contiguous virtual view.
    VmapFailed {
        /// Pages to be mapped.
        pages: u64,
    },
    /// A handle was given with a different device than it was allocated for.
    WrongDevice {
        /// The device the handle belongs to.
        expected: DeviceId,
        /// The device given.
        got: DeviceId,
    },
    /// A handle was given to an allocator that did not make it, or to the wrong free
    /// function (a noncontiguous table to `free_sg` or the reverse), or a view with a table
    /// it was not made from.
    ForeignHandle,
    /// [`DmaAllocator::coherent_from_raw`](crate::DmaAllocator::coherent_from_raw) was
    /// given addresses or a size that no coherent buffer of this allocator for the device
    /// can have; nothing was freed.
    NotCoherentBuffer {
        /// The device given.
        device: DeviceId,
        /// The CPU-side physical address given.
        phys: PhysAddr,
        /// The device address given.
        dma: DmaAddr,
        /// The size given.
        size: u64,
    },
    /// A table is freed while contiguous CPU views of it are still mapped.
    StillMapped {
        /// Views still mapped.
        views: u64,
    },
    /// A sub-range of an allocation leaves it.
    OutOfRange {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: u64,
        /// Size of the allocation.
        size: u64,
    },
    /// The allocator cannot be torn down while allocations from its atomic pool or its
    /// declared regions are live.
    LiveAllocations {
        /// Live atomic pool objects.
        live: u64,
    },
    /// Growing the atomic pool found no memory.
    GrowthFailed {
        /// Bytes the growth wanted at least.
        bytes: u64,
        /// Highest address the memory had to end at.
        max_addr: u64,
    },
    /// A region given to [`crate::dma_alloc::DmaAllocator::declare_coherent`] is empty, not
    /// page aligned or a whole number of pages, not inside one of the device's bus windows
    /// at or below its coherent limit, or overlaps a region already declared.
    BadDeclaredRegion {
        /// The device it was declared for.
        device: DeviceId,
        /// Its first byte.
        base: PhysAddr,
        /// Its length.
        len: u64,
    },
    /// The device already has a declared coherent region.
    AlreadyDeclared {
        /// The device.
        device: DeviceId,
    },
    /// The device's declared coherent region has no free piece of the size asked for.
    /// Allocations of a device with a declared region never fall back to other memory.
    DeclaredRegionExhausted {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        size: u64,
        /// Bytes of the region in live allocations.
        used: u64,
        /// Bytes of the region.
        total: u64,
    },
    /// The allocator configuration breaks a rule of [`crate::dma_alloc::DmaAllocatorConfig`].
    BadConfig(&'static str),
    /// The page allocator refused a free: the allocator's records and the page allocator
    /// disagree (memory was freed behind the allocator's back).
    PageAllocator(PageAllocError),
    /// The platform refused to share memory with the host (a confidential guest's devices
    /// reach only shared memory); nothing was allocated.
    NotShared(MemoryFault),
    /// A [`crate::dma_alloc::DmaPool`] shape breaks a rule of [`crate::dma_alloc::DmaPool::new`].
    BadPoolShape {
        /// Block size asked for.
        size: u64,
        /// Alignment asked for.
        align: u64,
        /// Boundary asked for.
        boundary: Option<u64>,
        /// The rule broken.
        why: &'static str,
    },
    /// An atomic-context [`crate::dma_alloc::DmaPool::alloc`] found no free block; the pool
    /// only grows where waiting is allowed.
    DmaPoolEmpty {
        /// The pool's device.
        device: DeviceId,
        /// The pool's block size.
        size: u64,
    },
    /// A [`crate::dma_alloc::DmaPool`] cannot be destroyed while blocks are live.
    DmaPoolBusy {
        /// Live blocks.
        live: usize,
    },
    /// A range given as an [`crate::dma_alloc::UncachedWindow`] is empty, overflows, or is
    /// not whole, page-aligned pages (or not split at a page boundary inside it).
    BadWindow {
        /// Its first byte.
        base: PhysAddr,
        /// Its length.
        len: u64,
    },
    /// The allocator's uncached window has no free piece of the size asked for that the
    /// device reaches. A window is fixed: it never grows, and coherent allocations of
    /// non-coherent devices never fall back to remapping other memory.
    WindowExhausted {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        size: u64,
        /// Bytes of the window in live allocations.
        used: u64,
        /// Bytes of the window.
        total: u64,
    },
    /// The device reaches no byte of the allocator's uncached window at a bus address its
    /// coherent mask and bus limit allow.
    WindowOutOfReach {
        /// The device asked for.
        device: DeviceId,
        /// The window's first byte.
        base: PhysAddr,
        /// Its coherent DMA mask.
        coherent_mask: u64,
    },
}

impl fmt::Display for DmaAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DmaAllocError::ZeroSize { device } => {
                write!(f, "{device}: DMA allocation of zero bytes")
            }
            DmaAllocError::TooLarge { device, size, max } => write!(
                f,
                "{device}: DMA allocation of {size} bytes exceeds the largest of {max} bytes"
            ),
            DmaAllocError::OutOfMemory { device, pages } => write!(
                f,
                "{device}: out of reachable memory allocating {pages} pages"
            ),
            DmaAllocError::NoReachableMemory { device, dma_mask } => write!(
                f,
                "{device}: DMA mask {dma_mask:#x} fully reaches no zone with memory"
            ),
            DmaAllocError::AtomicPoolExhausted {
                device,
                size,
                used,
                total,
                growth_pending,
            } => write!(
                f,
                "{device}: atomic pool has no reachable room for {size} bytes ({used} of {total} bytes used{})",
                if growth_pending { ", growth pending" } else { "" }
            ),
            DmaAllocError::Memory(fault) => write!(f, "{fault}"),
            DmaAllocError::DeviceSpace { device, error } => {
                write!(f, "{device}: device address space: {error}")
            }
            DmaAllocError::VmapFailed { pages } => {
                write!(f, "no contiguous virtual view of {pages} pages available")
            }
            DmaAllocError::WrongDevice { expected, got } => write!(
                f,
                "allocation belongs to {expected}, was given with {got}"
            ),
            DmaAllocError::ForeignHandle => f.write_str(
                "handle was not made by this allocator or is given to the wrong function",
            ),
            DmaAllocError::NotCoherentBuffer {
                device,
                phys,
                dma,
                size,
            } => write!(
                f,
                "no coherent buffer of {size} bytes for {device} at {phys} (device address \
                 {dma}) was made by this allocator; nothing freed"
            ),
            DmaAllocError::StillMapped { views } => write!(
                f,
                "table still has {views} contiguous CPU views mapped; vunmap them first"
            ),
            DmaAllocError::OutOfRange { offset, len, size } => write!(
                f,
                "{len} bytes at offset {offset} leave the {size}-byte allocation"
            ),
            DmaAllocError::LiveAllocations { live } => write!(
                f,
                "{live} allocations from the atomic pool or declared regions are still live"
            ),
            DmaAllocError::GrowthFailed { bytes, max_addr } => write!(
                f,
                "atomic pool growth found no {bytes} bytes of memory below {max_addr:#x}"
            ),
            DmaAllocError::BadDeclaredRegion { device, base, len } => write!(
                f,
                "{device}: cannot declare {len} bytes at {base} as its coherent memory: the \
                 region must be whole pages the device reaches, apart from every other \
                 declared region"
            ),
            DmaAllocError::AlreadyDeclared { device } => {
                write!(f, "{device}: already has a declared coherent region")
            }
            DmaAllocError::DeclaredRegionExhausted {
                device,
                size,
                used,
                total,
            } => write!(
                f,
                "{device}: declared coherent region has no room for {size} bytes ({used} of \
                 {total} bytes used)"
            ),
            DmaAllocError::BadConfig(why) => write!(f, "bad DMA allocator configuration: {why}"),
            DmaAllocError::PageAllocator(e) => write!(f, "page allocator refused a free: {e}"),
            DmaAllocError::NotShared(fault) => {
                write!(f, "memory could not be shared with the host: {fault}")
            }
            DmaAllocError::BadPoolShape {
                size,
                align,
                boundary,
                why,
            } => write!(
                f,
                "bad DMA pool shape (block {size} bytes, alignment {align}, boundary {boundary:?}): {why}"
            ),
            DmaAllocError::DmaPoolEmpty { device, size } => write!(
                f,
                "{device}: DMA pool of {size}-byte blocks has no free block and may not grow in atomic context"
            ),
            DmaAllocError::DmaPoolBusy { live } => {
                write!(f, "DMA pool still has {live} live blocks; free them first")
            }
            DmaAllocError::BadWindow { base, len } => write!(
                f,
                "cannot use {len} bytes at {base} as an uncached window: it must be whole, \
                 page-aligned pages"
            ),
            DmaAllocError::WindowExhausted {
                device,
                size,
                used,
                total,
            } => write!(
                f,
                "{device}: uncached window has no reachable room for {size} bytes ({used} of \
                 {total} bytes used)"
            ),
            DmaAllocError::WindowOutOfReach {
                device,
                base,
                coherent_mask,
            } => write!(
                f,
                "{device}: coherent mask {coherent_mask:#x} reaches none of the uncached \
                 window at {base}"
            ),
        }
    }
}

impl core::error::Error for DmaAllocError {}

/// A refused free or unmap: the error, and the handle given back so its memory is not lost.
#[derive(Debug)]
pub struct Rejected<T> {
    /// Why it was refused.
    pub error: DmaAllocError,
    /// The handle, unchanged.
    pub handle: T,
}

impl<T> fmt::Display for Rejected<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused: {}", self.error)
    }
}

impl<T: fmt::Debug> core::error::Error for Rejected<T> {}
