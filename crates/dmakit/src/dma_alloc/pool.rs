//! Small-block coherent pools (Linux `dma_pool_create` / `dma_pool_alloc`): many small,
//! equal blocks for one device — descriptors, command blocks — carved out of coherent
//! pages, so each needs neither a page of its own nor cache maintenance.
//!
//! A pool is made for one device with a block size, an alignment and an optional boundary
//! (a power of two no block may cross, for hardware that cannot cross, say, 4 KiB in one
//! descriptor). It takes one coherent page at a time from a [`DmaAllocator`] when it has no
//! free block and may wait for one; every page is cut the same way (boundary windows, each
//! holding as many aligned blocks as fit), and a fixed bitmap per page records the live
//! blocks. Allocating from a page with room therefore takes the pool's spin lock, flips a
//! bit and zeroes the block: no heap allocation. Pages go back only when the pool is
//! destroyed, which it refuses while blocks are live.

use alloc::vec::Vec;

use spin::Mutex;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{
    next_token, AllocContext, CoherentBuffer, DeviceAddressSpace, DmaAllocError, DmaAllocator,
    Rejected,
};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};

/// Most blocks a page can hold (one-byte blocks), and the bitmap words that cover them.
const MAX_BLOCKS: usize = PAGE_SIZE as usize;
const WORDS: usize = MAX_BLOCKS / 64;

/// A block of a [`DmaPool`]: `size` zeroed bytes of coherent memory, at
/// [`DmaBlock::phys`] for the CPU and [`DmaBlock::dma`] for the device, until it is given
/// to [`DmaPool::free`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a pool block is lost unless given to DmaPool::free"]
pub struct DmaBlock {
    phys: PhysAddr,
    dma: DmaAddr,
    size: u64,
    pool: u64,
}

impl DmaBlock {
    /// Where the CPU accesses the block.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }
    /// Where the device accesses the block.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }
    /// The pool's block size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// How full a [`DmaPool`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaPoolUsage {
    /// Coherent pages the pool holds.
    pub pages: usize,
    /// Blocks each page holds.
    pub blocks_per_page: usize,
    /// Blocks handed out and not yet freed.
    pub live: usize,
}

/// How a page is cut: windows of `window` bytes (the boundary, or the alignment when it is
/// larger, at most a page), each holding `per_window` blocks `stride` bytes apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    size: u64,
    stride: u64,
    window: u64,
    per_window: u64,
}

impl Layout {
    fn new(size: u64, align: u64, boundary: Option<u64>) -> Result<Self, DmaAllocError> {
        let bad = |why| DmaAllocError::BadPoolShape {
            size,
            align,
            boundary,
            why,
        };
        if size == 0 || size > PAGE_SIZE {
            return Err(bad("the block size must be 1 to 4096 bytes"));
        }
        if !align.is_power_of_two() || align > PAGE_SIZE {
            return Err(bad(
                "the alignment must be a power of two of at most a page",
            ));
        }
        let window = match boundary {
            Some(b) if !b.is_power_of_two() || b < size => {
                return Err(bad(
                    "the boundary must be a power of two at least the block size",
                ))
            }
            Some(b) => b.max(align).min(PAGE_SIZE),
            None => PAGE_SIZE,
        };
        // `align <= PAGE_SIZE` and `size <= PAGE_SIZE`, so neither overflows.
        let stride = size.next_multiple_of(align);
        Ok(Self {
            size,
            stride,
            window,
            per_window: (window - size) / stride + 1,
        })
    }

    fn blocks(&self) -> usize {
        ((PAGE_SIZE / self.window) * self.per_window) as usize
    }

    /// The offset in its page of block `i`.
    fn offset(&self, i: usize) -> u64 {
        let i = i as u64;
        (i / self.per_window) * self.window + (i % self.per_window) * self.stride
    }

    /// The block starting at `offset` in a page, if one does.
    fn index(&self, offset: u64) -> Option<usize> {
        let (w, within) = (offset / self.window, offset % self.window);
        let k = within / self.stride;
        (within % self.stride == 0 && k < self.per_window && w < PAGE_SIZE / self.window)
            .then_some((w * self.per_window + k) as usize)
    }
}

/// One coherent page of the pool and its live blocks.
struct Page {
    buf: CoherentBuffer,
    used: [u64; WORDS],
    live: usize,
}

/// A pool of small coherent blocks for one device (Linux `dma_pool_*`): equal blocks cut
/// out of coherent pages it takes from a [`DmaAllocator`] one at a time, only where waiting
/// is allowed. A block from a page with room costs a spin lock and a bitmap bit, never a
/// heap allocation; pages go back at [`DmaPool::destroy`], refused while blocks are live.
///
/// All methods take `&self` except [`DmaPool::destroy`]. The pages come from the
/// [`DmaAllocator`] given to [`DmaPool::alloc`]; give the same one to every call.
pub struct DmaPool {
    device: Device,
    layout: Layout,
    pages: Mutex<Vec<Page>>,
    id: u64,
}

impl core::fmt::Debug for DmaPool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DmaPool")
            .field("device", &self.device.id())
            .field("usage", &self.usage())
            .finish()
    }
}

impl DmaPool {
    /// A pool of `size`-byte blocks for `dev`, each aligned to `align` bytes and, with a
    /// `boundary`, never crossing a multiple of it (in the device's address space). Holds
    /// no memory until the first [`DmaPool::alloc`].
    ///
    /// # Errors
    /// [`DmaAllocError::BadPoolShape`] when `size` is 0 or above a page, `align` is not a
    /// power of two of at most a page, or `boundary` is not a power of two at least `size`.
    pub fn new(
        dev: &Device,
        size: u64,
        align: u64,
        boundary: Option<u64>,
    ) -> Result<Self, DmaAllocError> {
        Ok(Self {
            device: dev.clone(),
            layout: Layout::new(size, align, boundary)?,
            pages: Mutex::new(Vec::new()),
            id: next_token(),
        })
    }

    /// What the pool holds now.
    pub fn usage(&self) -> DmaPoolUsage {
        let pages = self.pages.lock();
        DmaPoolUsage {
            pages: pages.len(),
            blocks_per_page: self.layout.blocks(),
            live: pages.iter().map(|p| p.live).sum(),
        }
    }

    /// A zeroed block (Linux `dma_pool_zalloc`). From a page with a free block this takes
    /// the pool's spin lock only and allocates nothing, in either context. When every page
    /// is full, [`AllocContext::MayBlock`] adds a coherent page from `alloc` (and the
    /// pool's page list may grow on the heap); [`AllocContext::Atomic`] fails.
    ///
    /// # Errors
    /// [`DmaAllocError::DmaPoolEmpty`] in atomic context with no free block; any error of
    /// [`DmaAllocator::alloc_coherent`] for the new page; [`DmaAllocError::Memory`] when
    /// zeroing the block is refused. The pool is unchanged then.
    pub fn alloc<P, Z, S>(
        &self,
        alloc: &DmaAllocator<P, Z, S>,
        ctx: AllocContext,
    ) -> Result<DmaBlock, DmaAllocError>
    where
        P: CacheMaintenance + CpuMemory + CoherentRemap,
        Z: ZonedPages,
        S: DeviceAddressSpace,
    {
        let block = match self.take_free() {
            Some(b) => b,
            None if ctx == AllocContext::Atomic => {
                return Err(DmaAllocError::DmaPoolEmpty {
                    device: self.device.id(),
                    size: self.layout.size,
                })
            }
            None => self.grow(alloc)?,
        };
        if let Err(fault) = alloc.platform().fill(block.phys, 0, block.size) {
            let given_back = self.release(&block);
            debug_assert!(given_back.is_ok());
            return Err(DmaAllocError::Memory(fault));
        }
        Ok(block)
    }

    /// Gives a block back to its page (Linux `dma_pool_free`).
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] for a block of another pool, or one this pool does
    /// not have live; the block is handed back, the pool unchanged.
    #[allow(clippy::result_large_err)]
    pub fn free(&self, block: DmaBlock) -> Result<(), Rejected<DmaBlock>> {
        match self.release(&block) {
            Ok(()) => Ok(()),
            Err(error) => Err(Rejected {
                error,
                handle: block,
            }),
        }
    }

    /// Gives every page back to `alloc` and ends the pool (Linux `dma_pool_destroy`).
    ///
    /// # Errors
    /// [`DmaAllocError::DmaPoolBusy`] while blocks are live: the pool is handed back
    /// unchanged. An error of [`DmaAllocator::free_coherent`] (a pool given another
    /// allocator than the one its pages came from): the pool is handed back holding the
    /// pages not yet freed.
    #[allow(clippy::result_large_err)]
    pub fn destroy<P, Z, S>(self, alloc: &DmaAllocator<P, Z, S>) -> Result<(), Rejected<Self>>
    where
        P: CacheMaintenance + CpuMemory + CoherentRemap,
        Z: ZonedPages,
        S: DeviceAddressSpace,
    {
        let live = self.usage().live;
        if live > 0 {
            return Err(Rejected {
                error: DmaAllocError::DmaPoolBusy { live },
                handle: self,
            });
        }
        let mut pages = core::mem::take(&mut *self.pages.lock());
        while let Some(page) = pages.pop() {
            if let Err(refused) = alloc.free_coherent(&self.device, page.buf) {
                pages.push(Page {
                    buf: refused.handle,
                    ..page
                });
                *self.pages.lock() = pages;
                return Err(Rejected {
                    error: refused.error,
                    handle: self,
                });
            }
        }
        Ok(())
    }

    /// Takes the first free block of a page with room, if there is one.
    fn take_free(&self) -> Option<DmaBlock> {
        let mut pages = self.pages.lock();
        pages.iter_mut().find_map(|p| self.take_in(p))
    }

    fn take_in(&self, page: &mut Page) -> Option<DmaBlock> {
        let blocks = self.layout.blocks();
        if page.live == blocks {
            return None;
        }
        let (w, word) = page
            .used
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)?;
        let i = w * 64 + word.trailing_ones() as usize;
        if i >= blocks {
            return None;
        }
        page.used[w] |= 1 << (i % 64);
        page.live += 1;
        let off = self.layout.offset(i);
        Some(DmaBlock {
            phys: page.buf.phys().add(off),
            dma: page.buf.dma().add(off),
            size: self.layout.size,
            pool: self.id,
        })
    }

    /// Adds a coherent page from `alloc` and takes its first block.
    fn grow<P, Z, S>(&self, alloc: &DmaAllocator<P, Z, S>) -> Result<DmaBlock, DmaAllocError>
    where
        P: CacheMaintenance + CpuMemory + CoherentRemap,
        Z: ZonedPages,
        S: DeviceAddressSpace,
    {
        let buf = alloc.alloc_coherent(&self.device, PAGE_SIZE, AllocContext::MayBlock)?;
        // Every layout has block 0, at offset 0 of the page: the caller gets it.
        let block = DmaBlock {
            phys: buf.phys(),
            dma: buf.dma(),
            size: self.layout.size,
            pool: self.id,
        };
        let mut used = [0; WORDS];
        used[0] = 1;
        self.pages.lock().push(Page { buf, used, live: 1 });
        Ok(block)
    }

    /// Clears `block`'s bit in its page.
    fn release(&self, block: &DmaBlock) -> Result<(), DmaAllocError> {
        if block.pool != self.id {
            return Err(DmaAllocError::ForeignHandle);
        }
        let mut pages = self.pages.lock();
        let at = block.dma.as_u64();
        let page = pages
            .iter_mut()
            .find(|p| (p.buf.dma().as_u64()..p.buf.dma().as_u64() + PAGE_SIZE).contains(&at))
            .ok_or(DmaAllocError::ForeignHandle)?;
        let i = self
            .layout
            .index(at - page.buf.dma().as_u64())
            .ok_or(DmaAllocError::ForeignHandle)?;
        let bit = 1u64 << (i % 64);
        if page.used[i / 64] & bit == 0 {
            return Err(DmaAllocError::ForeignHandle);
        }
        page.used[i / 64] &= !bit;
        page.live -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_keep_blocks_aligned_inside_their_window_and_page() {
        for (size, align, boundary) in [
            (1, 1, None),
            (24, 8, Some(64)),
            (16, 64, Some(32)),
            (100, 32, Some(256)),
            (4096, 4096, None),
            (48, 16, Some(8192)),
        ] {
            let l = Layout::new(size, align, boundary).unwrap();
            assert!(l.blocks() >= 1 && l.blocks() <= MAX_BLOCKS);
            let mut last_end = 0;
            for i in 0..l.blocks() {
                let off = l.offset(i);
                assert_eq!(off % align, 0);
                assert!(off >= last_end, "blocks overlap");
                assert!(off + size <= PAGE_SIZE);
                if let Some(b) = boundary {
                    assert_eq!(off / b, (off + size - 1) / b, "block {i} crosses {b}");
                }
                assert_eq!(l.index(off), Some(i));
                last_end = off + size;
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        for (size, align, boundary) in [
            (0, 8, None),
            (4097, 8, None),
            (8, 3, None),
            (8, 8192, None),
            (64, 8, Some(32)),
            (8, 8, Some(48)),
        ] {
            let e = Layout::new(size, align, boundary).unwrap_err();
            assert!(matches!(e, DmaAllocError::BadPoolShape { .. }), "{e}");
        }
    }
}
