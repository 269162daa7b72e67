//! Physical memory split into zones by what devices can address.
//!
//! A device with a 24-bit or 32-bit DMA mask cannot reach all of RAM, so memory is split the
//! way Linux splits it: **DMA** below a small limit (16 MiB by default, configurable: arm64
//! sizes it to the smallest device mask), **DMA32** from there to 4 GiB, **NORMAL** above.
//! Each zone is its own [`BuddyAllocator`] behind its own lock, so a block never straddles
//! two zones and allocations in different zones do not contend.
//!
//! A device allocation tries the zones the device can fully reach, highest first, and falls
//! back downwards, so low memory stays free for the devices that need it.

use alloc::vec::Vec;

use spin::Mutex;

use dmakit::dma_alloc::{PageAllocError, ZonedPages};
use dmakit::platform::{PageAllocator, PAGE_SIZE};
use dmakit::Device;
use dmakit::{PhysAddr, PhysRange};

use crate::buddy::{BuddyAllocator, BuddyStats, MAX_BLOCK_PAGES};
use crate::error::MemError;

/// One of the three memory zones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Zone {
    /// Below the DMA limit (16 MiB by default): for devices with very small masks.
    Dma,
    /// From the DMA limit to 4 GiB: for 32-bit devices.
    Dma32,
    /// 4 GiB and above.
    Normal,
}

impl Zone {
    /// All zones, lowest first.
    pub const ALL: [Zone; 3] = [Zone::Dma, Zone::Dma32, Zone::Normal];

    /// The zone's name as Linux prints it.
    pub fn name(self) -> &'static str {
        match self {
            Zone::Dma => "DMA",
            Zone::Dma32 => "DMA32",
            Zone::Normal => "Normal",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Where the zone boundaries lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneLayout {
    dma_limit: u64,
}

/// The DMA32 zone ends at 4 GiB.
pub const DMA32_LIMIT: u64 = 1 << 32;

impl ZoneLayout {
    /// The default DMA zone limit, 16 MiB (the ISA DMA limit).
    pub const DEFAULT_DMA_LIMIT: u64 = 16 << 20;

    /// A layout whose DMA zone is `[0, dma_limit)`. A limit of 0 leaves the DMA zone empty;
    /// a limit of 4 GiB leaves DMA32 empty.
    ///
    /// # Errors
    /// [`MemError::BadDmaLimit`] unless `dma_limit` is a multiple of [`PAGE_SIZE`] and at
    /// most 4 GiB.
    pub const fn new(dma_limit: u64) -> Result<Self, MemError> {
        if dma_limit % PAGE_SIZE != 0 || dma_limit > DMA32_LIMIT {
            return Err(MemError::BadDmaLimit(dma_limit));
        }
        Ok(Self { dma_limit })
    }

    /// The DMA zone limit.
    pub const fn dma_limit(&self) -> u64 {
        self.dma_limit
    }

    /// The zone an address belongs to.
    pub const fn zone_of(&self, addr: PhysAddr) -> Zone {
        let a = addr.as_u64();
        if a < self.dma_limit {
            Zone::Dma
        } else if a < DMA32_LIMIT {
            Zone::Dma32
        } else {
            Zone::Normal
        }
    }

    /// The address span `[start, end)` of a zone; `end` is `None` for NORMAL (unbounded).
    pub const fn span(&self, zone: Zone) -> (u64, Option<u64>) {
        match zone {
            Zone::Dma => (0, Some(self.dma_limit)),
            Zone::Dma32 => (self.dma_limit, Some(DMA32_LIMIT)),
            Zone::Normal => (DMA32_LIMIT, None),
        }
    }
}

impl Default for ZoneLayout {
    fn default() -> Self {
        Self {
            dma_limit: Self::DEFAULT_DMA_LIMIT,
        }
    }
}

/// Counters of one zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneStats {
    /// The zone.
    pub zone: Zone,
    /// Lowest to highest managed byte of the zone, `None` if the zone has no memory.
    pub extent: Option<PhysRange>,
    /// The zone's buddy counters (managed, free, used, largest free block, free blocks
    /// per order).
    pub pages: BuddyStats,
}

/// A thread-safe page allocator over a RAM map, split into zones.
///
/// Guarantees: every allocation lies inside one zone and inside the RAM map; two live
/// allocations never overlap; a failed call changes nothing.
#[derive(Debug)]
pub struct ZonedPageAllocator {
    layout: ZoneLayout,
    zones: [Mutex<BuddyAllocator>; 3],
    /// Managed extent per zone, fixed at construction (read without locking).
    extents: [Option<PhysRange>; 3],
}

impl ZonedPageAllocator {
    /// An allocator over the RAM ranges `ram` with the default layout (DMA below 16 MiB).
    /// Partial pages at the ends of a range are not used.
    ///
    /// # Errors
    /// [`MemError::OverlappingRam`] if two ranges share a page.
    pub fn new(ram: &[PhysRange]) -> Result<Self, MemError> {
        Self::with_layout(ram, ZoneLayout::default())
    }

    /// An allocator over `ram` with zone boundaries from `layout`.
    ///
    /// # Errors
    /// [`MemError::OverlappingRam`] if two ranges share a page.
    pub fn with_layout(ram: &[PhysRange], layout: ZoneLayout) -> Result<Self, MemError> {
        let mut zones = [
            BuddyAllocator::new(),
            BuddyAllocator::new(),
            BuddyAllocator::new(),
        ];
        for r in ram {
            for zone in Zone::ALL {
                let (lo, hi) = layout.span(zone);
                let start = r.start().as_u64().max(lo);
                let end = match hi {
                    Some(h) => r.end().as_u64().min(h),
                    None => r.end().as_u64(),
                };
                if start >= end {
                    continue;
                }
                // `start < end` and both lie inside `r`, so the range is valid.
                let Some(part) = PhysRange::new(PhysAddr::new(start), end - start) else {
                    continue;
                };
                zones[zone.index()]
                    .add_range(part)
                    .map_err(|_| MemError::OverlappingRam { range: *r })?;
            }
        }
        let extents = [zones[0].extent(), zones[1].extent(), zones[2].extent()];
        let [a, b, c] = zones;
        Ok(Self {
            layout,
            zones: [Mutex::new(a), Mutex::new(b), Mutex::new(c)],
            extents,
        })
    }

    /// The zone boundaries.
    pub fn layout(&self) -> ZoneLayout {
        self.layout
    }

    /// Allocates `pages` contiguous pages from `zone` only.
    ///
    /// # Errors
    /// [`MemError::ZeroSize`], [`MemError::TooLarge`], or [`MemError::OutOfMemory`] when the
    /// zone has no free block large enough. Nothing changes then.
    pub fn alloc_in(&self, zone: Zone, pages: u64) -> Result<PhysAddr, MemError> {
        self.zones[zone.index()].lock().alloc(pages)
    }

    /// The zones holding memory whose every managed byte a device with `dma_mask` can
    /// address, highest first: the order in which [`ZonedPageAllocator::alloc_for_device`]
    /// tries them.
    pub fn zones_for_mask(&self, dma_mask: u64) -> Vec<Zone> {
        Zone::ALL
            .iter()
            .rev()
            .copied()
            .filter(|z| self.extents[z.index()].is_some_and(|e| e.last().as_u64() <= dma_mask))
            .collect()
    }

    /// Allocates `pages` contiguous pages that `dev` can reach: from the highest zone the
    /// device's mask fully reaches, falling back to lower zones when it is exhausted.
    ///
    /// # Errors
    /// [`MemError::ZeroSize`], [`MemError::TooLarge`]; [`MemError::NoReachableZone`] when
    /// the mask fully reaches no zone holding memory; [`MemError::OutOfMemory`] when every
    /// reachable zone lacks a large enough block. Nothing changes on error.
    pub fn alloc_for_device(&self, dev: &Device, pages: u64) -> Result<PhysAddr, MemError> {
        let zones = self.zones_for_mask(dev.dma_mask());
        if zones.is_empty() {
            // Report a malformed request before the reachability problem.
            check_request(pages)?;
            return Err(MemError::NoReachableZone {
                dma_mask: dev.dma_mask(),
            });
        }
        let mut last = MemError::OutOfMemory { pages };
        for zone in zones {
            match self.alloc_in(zone, pages) {
                Ok(base) => return Ok(base),
                Err(e @ MemError::OutOfMemory { .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Allocates `pages` contiguous pages whose last byte is at or below `max_addr`. Zones are
    /// tried highest first; a zone only partly below `max_addr` is searched for a block that
    /// ends low enough (unlike [`ZonedPageAllocator::alloc_for_device`], which only uses
    /// zones the mask fully reaches).
    ///
    /// # Errors
    /// [`MemError::ZeroSize`], [`MemError::TooLarge`], [`MemError::OutOfMemory`].
    pub fn alloc_below(&self, pages: u64, max_addr: u64) -> Result<PhysAddr, MemError> {
        check_request(pages)?;
        for zone in Zone::ALL.iter().rev() {
            let Some(ext) = self.extents[zone.index()] else {
                continue;
            };
            if ext.start().as_u64() > max_addr {
                continue;
            }
            if let Ok(base) = self.zones[zone.index()].lock().alloc_below(pages, max_addr) {
                return Ok(base);
            }
        }
        Err(MemError::OutOfMemory { pages })
    }

    /// Returns `pages` pages at `base`, exactly as allocated.
    ///
    /// # Errors
    /// [`MemError::NotAllocated`] if they are not a live allocation; nothing changes then.
    pub fn free(&self, base: PhysAddr, pages: u64) -> Result<(), MemError> {
        let zone = self.layout.zone_of(base);
        self.zones[zone.index()].lock().free(base, pages)
    }

    /// Counters of one zone.
    pub fn zone_stats(&self, zone: Zone) -> ZoneStats {
        ZoneStats {
            zone,
            extent: self.extents[zone.index()],
            pages: self.zones[zone.index()].lock().stats(),
        }
    }

    /// Counters of all zones, lowest first.
    pub fn stats(&self) -> [ZoneStats; 3] {
        Zone::ALL.map(|z| self.zone_stats(z))
    }
}

fn check_request(pages: u64) -> Result<(), MemError> {
    if pages == 0 {
        return Err(MemError::ZeroSize);
    }
    if pages > MAX_BLOCK_PAGES {
        return Err(MemError::TooLarge {
            pages,
            max_pages: MAX_BLOCK_PAGES,
        });
    }
    Ok(())
}

/// The platform-facing view: `alloc_pages` is [`ZonedPageAllocator::alloc_below`]; a
/// `free_pages` that does not match a live allocation cannot report an error through the
/// trait, so it is logged and ignored (the allocator's state is unchanged).
impl PageAllocator for ZonedPageAllocator {
    fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        self.alloc_below(pages, max_addr).ok()
    }

    fn free_pages(&self, base: PhysAddr, pages: u64) {
        if let Err(e) = self.free(base, pages) {
            log::error!("free_pages ignored: {e}");
        }
    }
}

/// The DMA allocators' view: the inherent methods of the same names, with their page-level
/// errors.
impl ZonedPages for ZonedPageAllocator {
    const MAX_BLOCK_PAGES: u64 = MAX_BLOCK_PAGES;

    fn alloc_for_device(&self, dev: &Device, pages: u64) -> Result<PhysAddr, PageAllocError> {
        ZonedPageAllocator::alloc_for_device(self, dev, pages).map_err(|e| page_error(e, pages))
    }

    fn alloc_below(&self, pages: u64, max_addr: u64) -> Result<PhysAddr, PageAllocError> {
        ZonedPageAllocator::alloc_below(self, pages, max_addr).map_err(|e| page_error(e, pages))
    }

    fn free(&self, base: PhysAddr, pages: u64) -> Result<(), PageAllocError> {
        ZonedPageAllocator::free(self, base, pages).map_err(|e| page_error(e, pages))
    }
}

/// The page-level error of a zone allocation or free of `pages` pages. Those return only
/// page-level [`MemError`]s (see their `# Errors`); anything else would be a defect of this
/// crate, caught by debug builds and reported as a refusal (never a panic) in release.
fn page_error(e: MemError, pages: u64) -> PageAllocError {
    e.page_error().unwrap_or_else(|| {
        debug_assert!(false, "a zone allocation or free returned {e}");
        PageAllocError::OutOfMemory { pages }
    })
}
