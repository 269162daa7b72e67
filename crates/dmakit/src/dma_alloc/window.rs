//! Coherent memory from a window the platform mapped uncached in advance.
//!
//! [`CoherentRemap`] makes pages uncached one allocation at a time. A kernel that maps RAM
//! in large blocks (an identity map of write-back 2 MiB or 1 GiB blocks) cannot change one
//! page's attributes without splitting its block, so it reserves a window of physical
//! memory at boot, maps that window non-cacheable once, and keeps it out of its page
//! allocator (as a device-tree `shared-dma-pool` region with `no-map` is kept).
//! [`UncachedWindow`] names such a window, and [`DmaAllocator::with_uncached_window`] builds
//! an allocator whose atomic pool *is* the window: every coherent allocation of a
//! non-coherent device, in either context, is an object of the window, and nothing is ever
//! remapped. The window is bounded (it never grows; a full window is
//! [`DmaAllocError::WindowExhausted`], never a fallback to other memory) and, for a device
//! without an IOMMU, its allocation and free paths allocate nothing (the pool's records are
//! made once, when the allocator is built). Coherent devices keep getting cached pages from the zones, which
//! they see alike without any remap.

use crate::addr::{PhysAddr, PhysRange};
use crate::coherent_pool::ObjectPoolConfig;
use crate::dma_alloc::ZonedPages;
use crate::dma_alloc::{DeviceAddressSpace, DmaAllocError, DmaAllocator, DmaAllocatorConfig};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};

/// A fixed range of physical memory that the platform maps so that CPU accesses through
/// [`CpuMemory`] bypass write-back caches (the [`CoherentRemap`] contract for uncached
/// pages, holding for the whole window, all the time), reserved for coherent DMA
/// allocations: no one else allocates from it.
///
/// For kernels that cannot remap single pages (RAM mapped in write-back blocks): they map
/// one window non-cacheable at boot, keep it out of their page allocator, and build the
/// allocator with [`DmaAllocator::with_uncached_window`]. Every coherent allocation of a
/// non-coherent device then comes from the window, in either context, and nothing is
/// remapped. The window is bounded (a full one is [`DmaAllocError::WindowExhausted`], never
/// a fallback to other memory) and allocating or freeing in it for a device without an
/// IOMMU allocates nothing.
///
/// To share one window between the allocator and a mapper's coherent bounce pool
/// ([`crate::coherent_pool::CoherentBouncePool`], which takes its memory as chunks), give
/// the allocator a window over one part and add the other part to the bounce pool.
///
/// The allocator trusts the mapping: a window that is in fact cached gives non-coherent
/// devices stale data, as the machine model's control test shows.
///
/// ```
/// use dmakit::dma_alloc::UncachedWindow;
/// use dmakit::PhysAddr;
///
/// // 2 MiB at 0x4800_0000, mapped non-cacheable by the kernel's boot page tables.
/// let window = UncachedWindow::new(PhysAddr::new(0x4800_0000), 2 << 20)?;
/// assert_eq!(window.range().len(), 2 << 20);
/// # Ok::<(), dmakit::dma_alloc::DmaAllocError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UncachedWindow {
    range: PhysRange,
}

impl UncachedWindow {
    /// The window of `len` bytes at `base`.
    ///
    /// # Errors
    /// [`DmaAllocError::BadWindow`] when it is empty, overflows the address space, or is
    /// not whole, page-aligned pages.
    pub fn new(base: PhysAddr, len: u64) -> Result<Self, DmaAllocError> {
        match PhysRange::new(base, len) {
            Some(range) if range.is_aligned(PAGE_SIZE) => Ok(Self { range }),
            _ => Err(DmaAllocError::BadWindow { base, len }),
        }
    }

    /// The physical range of the window.
    pub fn range(&self) -> PhysRange {
        self.range
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// An allocator whose atomic pool is `window` (see [`UncachedWindow`]): coherent
    /// allocations of non-coherent devices, in either context, are objects of the window,
    /// zeroed through the CPU, with no remap; everything else is as with
    /// [`DmaAllocator::new`]. The largest such allocation is the largest power of two
    /// that fits the window; `cfg.atomic_min_object` is the smallest object, and
    /// `cfg.atomic_pool_bytes` and `cfg.atomic_pool_reach` are not used (the window does
    /// not grow, and [`DmaAllocator::grow_atomic_pool`] refuses).
    ///
    /// The allocator never calls [`CoherentRemap`] for the window or for coherent
    /// allocations; only [`DmaAllocator::declare_coherent`] for a non-coherent device still
    /// does, so a platform that cannot remap single pages may implement
    /// [`CoherentRemap::make_uncached`] by refusing.
    ///
    /// Allocates the pool's records: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::BadConfig`] for an `atomic_min_object` that breaks the rules on
    /// [`DmaAllocatorConfig`] or exceeds the window; [`DmaAllocError::BadWindow`] when
    /// the window is not aligned to `atomic_min_object`.
    pub fn with_uncached_window(
        platform: P,
        zones: Z,
        space: S,
        window: UncachedWindow,
        cfg: DmaAllocatorConfig,
    ) -> Result<Self, DmaAllocError> {
        let range = window.range;
        let pool_cfg = ObjectPoolConfig {
            min_object: cfg.atomic_min_object,
            max_object: 1 << range.len().ilog2(),
            chunk_bytes: range.len(),
            refill_below: 0,
            name: "dma-uncached-window",
        };
        let this = Self::with_pool(platform, zones, space, cfg, pool_cfg, None, Some(range))?;
        this.atomic
            .add_chunk(range.start(), range.len())
            .map_err(|_| DmaAllocError::BadWindow {
                base: range.start(),
                len: range.len(),
            })?;
        this.atomic_chunks.lock().push(range);
        Ok(this)
    }

    /// The uncached window the atomic pool is made of, if it is one.
    pub fn uncached_window(&self) -> Option<UncachedWindow> {
        self.window.map(|range| UncachedWindow { range })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_whole_aligned_pages() {
        let w = UncachedWindow::new(PhysAddr::new(0x4000_0000), 1 << 20).unwrap();
        assert_eq!(w.range().len(), 1 << 20);
        for (base, len) in [
            (0x4000_0000, 0),
            (0x4000_0800, 1 << 20),
            (0x4000_0000, 5000),
            (u64::MAX - 0xfff, 0x2000),
        ] {
            let e = UncachedWindow::new(PhysAddr::new(base), len).unwrap_err();
            assert_eq!(
                e,
                DmaAllocError::BadWindow {
                    base: PhysAddr::new(base),
                    len
                }
            );
            assert!(alloc::format!("{e}").contains("uncached window"), "{e}");
        }
    }
}
