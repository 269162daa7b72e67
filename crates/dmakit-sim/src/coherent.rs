//! Coherent memory on the simulated machine: pages whose CPU accesses bypass the cache.
//!
//! The core's DMA allocators make ordinary pages coherent for non-coherent devices by
//! remapping them uncached ([`CoherentRemap`]); on the machine that is an uncached region
//! ([`Machine::set_uncached`]), where loads and stores go straight to RAM and speculation
//! cannot pull lines in. [`CoherentPageAllocator`] combines it with the machine's own page
//! allocator, for pools that take coherent pages directly.

use dmakit::{CoherentPageAllocator, CoherentRemap, MemoryFault, PhysAddr, PhysRange, PAGE_SIZE};

use crate::machine::Machine;

/// `range` widened to whole pages, or `None` when that overflows.
fn whole_pages(range: PhysRange) -> Option<PhysRange> {
    let start = range.start().align_down(PAGE_SIZE);
    let end = range.end().checked_align_up(PAGE_SIZE)?;
    PhysRange::new(start, end.as_u64() - start.as_u64())
}

impl CoherentRemap for Machine {
    /// Marks the whole pages overlapping `range` uncached; their cached lines are cleaned
    /// and invalidated first.
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        let fault = MemoryFault {
            addr: range.start(),
            len: range.len(),
        };
        let pages = whole_pages(range).ok_or(fault)?;
        if !self.is_ram(pages.start().as_u64(), pages.len()) {
            return Err(fault);
        }
        self.set_uncached(pages);
        Ok(())
    }

    /// Marks the whole pages overlapping `range` cached again.
    fn make_cached(&self, range: PhysRange) {
        if let Some(pages) = whole_pages(range) {
            self.set_cached(pages);
        }
    }
}

impl CoherentPageAllocator for Machine {
    /// Pages from the machine's page allocator, marked uncached.
    fn alloc_coherent_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        let base = self.alloc_pages_between(pages, 0, max_addr)?;
        match PhysRange::new(base, pages * PAGE_SIZE).map(|r| self.make_uncached(r)) {
            Some(Ok(())) => Some(base),
            _ => {
                // The allocator handed these pages out just now, so the free succeeds.
                let _ = self.free_pages_checked(base, pages);
                None
            }
        }
    }

    /// Marks the pages cached again and frees them; a free that names no live allocation
    /// is ignored and counted in [`crate::MachineStats::bad_frees`].
    fn free_coherent_pages(&self, base: PhysAddr, pages: u64) {
        // The trait has no error channel; a bad free is recorded in the statistics and
        // leaves every region as it was.
        if self.free_pages_checked(base, pages).is_ok() {
            if let Some(r) = PhysRange::new(base, pages * PAGE_SIZE) {
                self.make_cached(r);
            }
        }
    }
}
