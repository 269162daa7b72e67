//! A cheap first test of whether an address can be bounce memory.
//!
//! Unmap and sync find a bounced mapping by its DMA address alone, so they must ask each
//! bounce backend about every address — also about the addresses of direct mappings, which
//! are far more common. Asking costs a virtual call and a lookup (in some backends a lock).
//! A backend that keeps a [`MemorySpan`] lets the router answer "no" for most addresses
//! with two loads: the span covers every byte of memory the backend has ever owned, so an
//! address outside it is not the backend's. Buffers mapped directly lie in ordinary memory,
//! outside the bounce memory, and nearly always miss it (Linux's `is_swiotlb_buffer` starts
//! with the same test on its pool bounds).

use core::sync::atomic::{AtomicU64, Ordering};

/// A range `[lo, hi)` that only grows, covering all memory a backend has owned; empty when
/// `lo >= hi`. Shared between the backend, which widens it, and routers, which test it.
#[derive(Debug)]
pub struct MemorySpan {
    lo: AtomicU64,
    hi: AtomicU64,
}

impl Default for MemorySpan {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySpan {
    /// A span that covers nothing.
    pub const fn new() -> Self {
        Self {
            lo: AtomicU64::new(u64::MAX),
            hi: AtomicU64::new(0),
        }
    }

    /// Widens the span to cover `len` bytes at `start`. A backend calls it before any
    /// address in the new memory can be handed out.
    ///
    /// Relaxed is enough: whoever later unmaps or syncs a bounce there learned its address
    /// from a mapping that was made after this call, so this update happens before that
    /// operation's loads, and a load never sees a value older than one that happened
    /// before it.
    pub fn cover(&self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        if self.lo.load(Ordering::Relaxed) > start {
            self.lo.fetch_min(start, Ordering::Relaxed);
        }
        if self.hi.load(Ordering::Relaxed) < end {
            self.hi.fetch_max(end, Ordering::Relaxed);
        }
    }

    /// Whether `addr` may lie in the backend's memory: false only for addresses it never
    /// covered.
    #[inline]
    pub fn may_contain(&self, addr: u64) -> bool {
        addr >= self.lo.load(Ordering::Relaxed) && addr < self.hi.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_span_contains_nothing() {
        let s = MemorySpan::new();
        assert!(!s.may_contain(0));
        assert!(!s.may_contain(u64::MAX));
    }

    #[test]
    fn grows_to_cover_all_memory() {
        let s = MemorySpan::new();
        s.cover(0x1000, 0x40);
        assert!(s.may_contain(0x1000) && s.may_contain(0x103f));
        assert!(!s.may_contain(0xfff) && !s.may_contain(0x1040));
        s.cover(0x8000, 0x10);
        // Everything between is covered too: the span is one range.
        assert!(s.may_contain(0x4000) && s.may_contain(0x800f));
        assert!(!s.may_contain(0x8010));
        s.cover(0x100, 1);
        assert!(s.may_contain(0x100) && !s.may_contain(0xff));
    }

    #[test]
    fn end_of_address_space_saturates() {
        let s = MemorySpan::new();
        s.cover(u64::MAX - 4, 16);
        assert!(s.may_contain(u64::MAX - 1));
        assert!(!s.may_contain(u64::MAX - 5));
    }
}
