//! A simple page allocator over the RAM map.
//!
//! The mapping layer needs contiguous pages for bounce pools, and the workloads need pages
//! for their buffers, and the two must never overlap. This first-fit free-list allocator is
//! all the model needs; it hands out the lowest suitable address so runs are deterministic.

use std::collections::BTreeMap;

use dmakit::PAGE_SIZE;

use crate::error::SimError;
use crate::memory::RamMap;

/// First-fit allocator of contiguous, page-aligned runs of pages.
#[derive(Clone, Debug)]
pub struct PageAlloc {
    /// Free extents: start → number of pages.
    free: BTreeMap<u64, u64>,
    /// Live allocations: start → number of pages.
    used: BTreeMap<u64, u64>,
}

impl PageAlloc {
    /// All RAM of `ram` at or above `reserve_below` is free.
    pub fn new(ram: &RamMap, reserve_below: u64) -> Self {
        let mut free = BTreeMap::new();
        for &(s, e) in ram.ranges() {
            let s = s.max(reserve_below.next_multiple_of(PAGE_SIZE));
            if s < e {
                free.insert(s, (e - s) / PAGE_SIZE);
            }
        }
        Self {
            free,
            used: BTreeMap::new(),
        }
    }

    /// `pages` contiguous pages starting at or above `min_addr`, whose last byte is at or
    /// below `max_addr`; the lowest such run. `None` when there is none or `pages` is zero.
    pub fn alloc(&mut self, pages: u64, min_addr: u64, max_addr: u64) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let bytes = pages.checked_mul(PAGE_SIZE)?;
        let min = min_addr.checked_next_multiple_of(PAGE_SIZE)?;
        let (ext, start) = self.free.iter().find_map(|(&s, &n)| {
            let start = s.max(min);
            let end = start.checked_add(bytes)?;
            (end <= s + n * PAGE_SIZE && end - 1 <= max_addr).then_some((s, start))
        })?;
        let ext_pages = self.free.remove(&ext)?;
        let ext_end = ext + ext_pages * PAGE_SIZE;
        if start > ext {
            self.free.insert(ext, (start - ext) / PAGE_SIZE);
        }
        if start + bytes < ext_end {
            self.free
                .insert(start + bytes, (ext_end - start - bytes) / PAGE_SIZE);
        }
        self.used.insert(start, pages);
        Some(start)
    }

    /// Returns an allocation.
    ///
    /// # Errors
    /// [`SimError::BadRange`] when `base` is not a live allocation of exactly `pages` pages;
    /// nothing changes then.
    pub fn free(&mut self, base: u64, pages: u64) -> Result<(), SimError> {
        if self.used.get(&base) != Some(&pages) {
            return Err(SimError::BadRange {
                addr: base,
                len: pages.saturating_mul(PAGE_SIZE),
            });
        }
        self.used.remove(&base);
        let mut start = base;
        let mut n = pages;
        if let Some((&ps, &pn)) = self.free.range(..base).next_back() {
            if ps + pn * PAGE_SIZE == base {
                self.free.remove(&ps);
                start = ps;
                n += pn;
            }
        }
        let end = base + pages * PAGE_SIZE;
        if let Some(nn) = self.free.remove(&end) {
            n += nn;
        }
        self.free.insert(start, n);
        Ok(())
    }

    /// Pages currently allocated.
    pub fn used_pages(&self) -> u64 {
        self.used.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_fit_with_limits_and_merging_free() {
        let ram = RamMap::new(&[(0, 16 * PAGE_SIZE), (1 << 32, 16 * PAGE_SIZE)]).unwrap();
        let mut a = PageAlloc::new(&ram, PAGE_SIZE);
        assert_eq!(a.alloc(0, 0, u64::MAX), None);
        let p1 = a.alloc(2, 0, u64::MAX).unwrap();
        assert_eq!(p1, PAGE_SIZE);
        let p2 = a.alloc(3, 0, u64::MAX).unwrap();
        assert_eq!(p2, 3 * PAGE_SIZE);
        // Too big for low RAM: goes high, unless the limit forbids it.
        assert_eq!(a.alloc(12, 0, u32::MAX as u64), None);
        assert_eq!(a.alloc(12, 0, u64::MAX), Some(1 << 32));
        assert_eq!(
            a.alloc(1, 1 << 32, u64::MAX),
            Some((1 << 32) + 12 * PAGE_SIZE)
        );
        assert!(a.free(p1, 3).is_err(), "wrong size");
        assert!(a.free(p1 + PAGE_SIZE, 1).is_err(), "not a base");
        a.free(p1, 2).unwrap();
        a.free(p2, 3).unwrap();
        assert!(a.free(p2, 3).is_err(), "double free");
        // Merged back: 15 pages from PAGE_SIZE.
        assert_eq!(a.alloc(15, 0, u32::MAX as u64), Some(PAGE_SIZE));
        assert_eq!(a.used_pages(), 15 + 12 + 1);
    }
}
