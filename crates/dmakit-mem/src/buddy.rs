//! A binary buddy allocator over physical page frames it never touches.
//!
//! The pages it manages are physical memory that the allocator cannot (and must not)
//! dereference, so none of its bookkeeping lives in them: free blocks are kept in one ordered
//! set of frame numbers per order, and live allocations in an ordered map, all in `alloc`
//! collections. That also makes every free checkable: a base or page count that does not
//! match a live allocation is an error value, not silent corruption.
//!
//! # Why not an existing crate
//!
//! `buddy_system_allocator`'s `FrameAllocator` (the well-kept `no_std` candidate; it also
//! keeps its free lists in `BTreeSet`s outside the managed memory) was evaluated and does
//! not fit:
//! - its free lists are private, so the per-zone statistics this layer must report (largest
//!   free block, free blocks per order) cannot be computed;
//! - `dealloc` trusts the caller: an unknown base or a second free is merged into the free
//!   lists (handing the same pages out twice later) and its counter can underflow, which is a
//!   panic in debug builds; we need an error value, so a second map of live allocations would
//!   be needed beside it anyway;
//! - it rounds every request up to a power of two and keeps the tail, where we return the
//!   tail pages to the free lists (as Linux's exact page allocation does);
//! - it has no way to bound an allocation by an address limit, which the
//!   [`dmakit::PageAllocator`] contract (`max_addr`) needs.
//!
//! What remains once those are added is the split and merge loops, which are short.
//!
//! # Algorithm
//!
//! A block of order `k` is `2^k` pages whose first frame number is a multiple of `2^k`. Its
//! buddy is the block whose frame number differs only in bit `k`. Allocation takes the
//! lowest-addressed free block of the smallest order that fits, splits it down keeping the
//! lower half, and returns the pages past the request to the free lists. Free merges each
//! block with its buddy while the buddy is free, up to [`MAX_ORDER`].

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::error::MemError;
use dmakit::platform::PAGE_SIZE;
use dmakit::{PhysAddr, PhysRange};

/// The largest block order: one allocation is at most `2^MAX_ORDER` pages (4 GiB with
/// 4 KiB pages).
pub const MAX_ORDER: u32 = 20;

/// Pages in the largest block.
pub const MAX_BLOCK_PAGES: u64 = 1 << MAX_ORDER;

/// Counters of one buddy allocator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuddyStats {
    /// Pages under management.
    pub managed_pages: u64,
    /// Pages in free blocks.
    pub free_pages: u64,
    /// Pages handed out and not yet freed (`managed_pages - free_pages`).
    pub used_pages: u64,
    /// Pages in the largest free block (0 when nothing is free). An allocation of up to this
    /// many pages succeeds.
    pub largest_free_pages: u64,
    /// Number of free blocks of each order, index = order (like `/proc/buddyinfo`).
    pub free_blocks: Vec<u64>,
}

/// A buddy allocator over page frames of physical memory. Not synchronised: see
/// [`crate::ZonedPageAllocator`] for the locked, zoned allocator built on it.
#[derive(Clone, Debug)]
pub struct BuddyAllocator {
    /// Free block start frames, per order.
    free: Vec<BTreeSet<u64>>,
    /// Live allocations: start frame → page count.
    live: BTreeMap<u64, u64>,
    /// Managed frame ranges `[start, end)`, sorted by start, never overlapping.
    ranges: Vec<(u64, u64)>,
    managed_pages: u64,
    free_pages: u64,
}

impl Default for BuddyAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// Order of the smallest block holding `pages` (> 0, <= MAX_BLOCK_PAGES).
fn order_for(pages: u64) -> u32 {
    pages.next_power_of_two().trailing_zeros()
}

impl BuddyAllocator {
    /// An allocator managing no memory.
    pub fn new() -> Self {
        Self {
            free: (0..=MAX_ORDER).map(|_| BTreeSet::new()).collect(),
            live: BTreeMap::new(),
            ranges: Vec::new(),
            managed_pages: 0,
            free_pages: 0,
        }
    }

    /// Adds the whole pages inside `range` to the free memory and returns how many there
    /// were. Partial pages at either end are left out (0 is returned if none is whole).
    ///
    /// # Errors
    /// [`MemError::OverlappingRam`] if any of those pages is already managed; nothing is
    /// added then.
    pub fn add_range(&mut self, range: PhysRange) -> Result<u64, MemError> {
        let start = range.start().as_u64().div_ceil(PAGE_SIZE);
        let end = range.end().as_u64() / PAGE_SIZE;
        if start >= end {
            return Ok(0);
        }
        let idx = self.ranges.partition_point(|&(s, _)| s < start);
        let clashes_prev = idx > 0 && self.ranges[idx - 1].1 > start;
        let clashes_next = idx < self.ranges.len() && self.ranges[idx].0 < end;
        if clashes_prev || clashes_next {
            return Err(MemError::OverlappingRam { range });
        }
        self.ranges.insert(idx, (start, end));
        self.managed_pages += end - start;
        self.release(start, end);
        Ok(end - start)
    }

    /// Allocates `pages` contiguous pages; the base is `PAGE_SIZE` aligned (and aligned to
    /// the next power of two of `pages`, a property callers may use but the
    /// [`dmakit::PageAllocator`] contract does not promise).
    ///
    /// # Errors
    /// [`MemError::ZeroSize`], [`MemError::TooLarge`] above [`MAX_BLOCK_PAGES`],
    /// [`MemError::OutOfMemory`] when no free block is large enough. Nothing changes then.
    pub fn alloc(&mut self, pages: u64) -> Result<PhysAddr, MemError> {
        self.alloc_below(pages, u64::MAX)
    }

    /// As [`BuddyAllocator::alloc`], but the last byte of the allocation is at or below
    /// `max_addr`.
    ///
    /// # Errors
    /// As [`BuddyAllocator::alloc`]; [`MemError::OutOfMemory`] also when blocks exist but
    /// none low enough.
    pub fn alloc_below(&mut self, pages: u64, max_addr: u64) -> Result<PhysAddr, MemError> {
        if pages == 0 {
            return Err(MemError::ZeroSize);
        }
        if pages > MAX_BLOCK_PAGES {
            return Err(MemError::TooLarge {
                pages,
                max_pages: MAX_BLOCK_PAGES,
            });
        }
        let want = order_for(pages);
        // The lowest block of an order is the best candidate of that order; take the
        // smallest order whose lowest block ends low enough.
        let fits = |frame: u64| {
            frame
                .checked_add(pages)
                .and_then(|end| end.checked_mul(PAGE_SIZE))
                .is_some_and(|end_byte| end_byte - 1 <= max_addr)
        };
        let found = (want..=MAX_ORDER).find_map(|order| {
            self.free[order as usize]
                .first()
                .copied()
                .filter(|&f| fits(f))
                .map(|f| (order, f))
        });
        let Some((order, frame)) = found else {
            return Err(MemError::OutOfMemory { pages });
        };
        self.free[order as usize].remove(&frame);
        // Split down to the wanted order, keeping the lower half each time.
        for o in (want..order).rev() {
            self.free[o as usize].insert(frame + (1 << o));
        }
        self.free_pages -= 1 << want;
        // Give back the pages past the request.
        let block_end = frame + (1 << want);
        if frame + pages < block_end {
            self.release(frame + pages, block_end);
        }
        self.live.insert(frame, pages);
        Ok(PhysAddr::new(frame * PAGE_SIZE))
    }

    /// Returns `pages` pages at `base`, which must be exactly a live allocation.
    ///
    /// # Errors
    /// [`MemError::NotAllocated`] if `base` is not the base of a live allocation of exactly
    /// `pages` pages (unknown, double free, wrong count). Nothing changes then.
    pub fn free(&mut self, base: PhysAddr, pages: u64) -> Result<(), MemError> {
        let bad = MemError::NotAllocated { base, pages };
        if !base.is_aligned(PAGE_SIZE) {
            return Err(bad);
        }
        let frame = base.as_u64() / PAGE_SIZE;
        match self.live.get(&frame) {
            Some(&n) if n == pages => {}
            _ => return Err(bad),
        }
        self.live.remove(&frame);
        self.release(frame, frame + pages);
        Ok(())
    }

    /// Whether `addr` lies in memory this allocator manages (free or not).
    pub fn manages(&self, addr: PhysAddr) -> bool {
        let frame = addr.as_u64() / PAGE_SIZE;
        let idx = self.ranges.partition_point(|&(s, _)| s <= frame);
        idx > 0 && self.ranges[idx - 1].1 > frame
    }

    /// The lowest and highest managed byte, or `None` when nothing is managed.
    pub fn extent(&self) -> Option<PhysRange> {
        let first = self.ranges.first()?.0 * PAGE_SIZE;
        let end = self.ranges.last()?.1 * PAGE_SIZE;
        PhysRange::new(PhysAddr::new(first), end - first)
    }

    /// Current counters.
    pub fn stats(&self) -> BuddyStats {
        let free_blocks: Vec<u64> = self.free.iter().map(|s| s.len() as u64).collect();
        let largest_free_pages = free_blocks
            .iter()
            .rposition(|&n| n > 0)
            .map_or(0, |o| 1u64 << o);
        BuddyStats {
            managed_pages: self.managed_pages,
            free_pages: self.free_pages,
            used_pages: self.managed_pages - self.free_pages,
            largest_free_pages,
            free_blocks,
        }
    }

    /// Puts the frames `[start, end)` on the free lists as naturally aligned blocks, merging
    /// each with free buddies.
    fn release(&mut self, start: u64, end: u64) {
        let mut frame = start;
        while frame < end {
            let align_order = if frame == 0 {
                MAX_ORDER
            } else {
                frame.trailing_zeros().min(MAX_ORDER)
            };
            let fit_order = (end - frame).ilog2().min(MAX_ORDER);
            let order = align_order.min(fit_order);
            self.insert_merging(frame, order);
            self.free_pages += 1 << order;
            frame += 1 << order;
        }
    }

    fn insert_merging(&mut self, mut frame: u64, mut order: u32) {
        while order < MAX_ORDER {
            let buddy = frame ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            frame = frame.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    #[test]
    fn split_and_merge_restore_the_free_lists() {
        let mut b = BuddyAllocator::new();
        assert_eq!(b.add_range(range(0, 16 * PAGE_SIZE)), Ok(16));
        let before = b.stats();
        assert_eq!(before.largest_free_pages, 16);
        let a = b.alloc(1).unwrap();
        let c = b.alloc(3).unwrap();
        assert_eq!(a, PhysAddr::new(0));
        assert_eq!(c, PhysAddr::new(4 * PAGE_SIZE));
        let s = b.stats();
        assert_eq!(s.used_pages, 4);
        // The tail page of the 3-page request went back: frame 7 is free at order 0.
        assert_eq!(s.free_blocks[0], 2);
        b.free(c, 3).unwrap();
        b.free(a, 1).unwrap();
        assert_eq!(b.stats(), before);
    }

    #[test]
    fn bad_frees_are_errors() {
        let mut b = BuddyAllocator::new();
        b.add_range(range(0, 8 * PAGE_SIZE)).unwrap();
        let a = b.alloc(2).unwrap();
        let err = MemError::NotAllocated { base: a, pages: 1 };
        assert_eq!(b.free(a, 1), Err(err));
        b.free(a, 2).unwrap();
        assert_eq!(
            b.free(a, 2),
            Err(MemError::NotAllocated { base: a, pages: 2 })
        );
        assert!(b.free(PhysAddr::new(17), 1).is_err());
    }

    #[test]
    fn partial_pages_are_trimmed_and_overlaps_refused() {
        let mut b = BuddyAllocator::new();
        assert_eq!(b.add_range(range(100, 3 * PAGE_SIZE)), Ok(2));
        assert_eq!(b.add_range(range(10, 100)), Ok(0));
        assert!(matches!(
            b.add_range(range(2 * PAGE_SIZE, PAGE_SIZE)),
            Err(MemError::OverlappingRam { .. })
        ));
        assert!(b.manages(PhysAddr::new(PAGE_SIZE)));
        assert!(!b.manages(PhysAddr::new(0)));
        assert!(!b.manages(PhysAddr::new(3 * PAGE_SIZE)));
    }

    #[test]
    fn bounded_allocation_respects_the_limit() {
        let mut b = BuddyAllocator::new();
        b.add_range(range(0, 4 * PAGE_SIZE)).unwrap();
        b.add_range(range(64 * PAGE_SIZE, 64 * PAGE_SIZE)).unwrap();
        // The big block is high; a 4-page request below 16 pages must take the low one.
        let low = b.alloc_below(4, 16 * PAGE_SIZE - 1).unwrap();
        assert_eq!(low, PhysAddr::new(0));
        assert_eq!(
            b.alloc_below(1, 16 * PAGE_SIZE - 1),
            Err(MemError::OutOfMemory { pages: 1 })
        );
        assert_eq!(b.alloc(0), Err(MemError::ZeroSize));
        assert!(matches!(
            b.alloc(MAX_BLOCK_PAGES + 1),
            Err(MemError::TooLarge { .. })
        ));
    }
}
