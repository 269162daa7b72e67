//! Transient bounces: exact-size page allocations that serve a mapping while a full pool
//! waits for growth, and are returned to the page allocator at unmap. In a confidential
//! guest the pages are shared with the host as they are taken and made private again
//! before they are returned.

use alloc::sync::Arc;

use crate::sync::Mutex;

use super::backend::{BounceAllocError, BounceBackend, BounceMeta, BounceRequest, PoolUsage};
use super::MemorySpan;
use crate::addr::{PhysAddr, PhysRange};
use crate::fixed_table::FixedMap;
use crate::platform::{HostSharing, PageAllocator, PAGE_SIZE};

struct Live {
    base: u64,
    pages: u64,
    /// Bytes by which this bounce raised the high-water mark.
    raised: u64,
    meta: BounceMeta,
}

/// Live transient bounces a pool keeps records for (room made when the pool is built).
pub const TRANSIENT_BOUNCES: usize = 256;

struct State {
    live: FixedMap<u64, Live>,
    used: u64,
    high_water: u64,
}

/// A backend that takes whole pages per bounce from a page allocator. Pages own their cache
/// lines, so bounces never share one. Used only as a stop-gap: every bounce costs a page
/// allocation (from the page allocator, never from the heap).
///
/// At most [`TRANSIENT_BOUNCES`] bounces are live at once: their records are made when the
/// pool is, so bouncing, looking up and ending a bounce never allocate; one more is
/// refused as [`BounceAllocError::Full`].
pub struct TransientPool {
    pages: Arc<dyn PageAllocator + Send + Sync>,
    sharing: HostSharing,
    state: Mutex<State>,
    span: Arc<MemorySpan>,
}

impl TransientPool {
    /// A transient backend over `pages`, sharing them with the host through `sharing`
    /// while they serve a bounce. Allocates its records: call outside atomic context.
    pub(crate) fn new(pages: Arc<dyn PageAllocator + Send + Sync>, sharing: HostSharing) -> Self {
        Self {
            pages,
            sharing,
            state: Mutex::new(State {
                live: FixedMap::with_capacity(TRANSIENT_BOUNCES),
                used: 0,
                high_water: 0,
            }),
            span: Arc::new(MemorySpan::new()),
        }
    }

    /// Covers every page the backend has handed out (see [`MemorySpan`]).
    #[inline]
    pub(crate) fn span(&self) -> &MemorySpan {
        &self.span
    }
}

impl TransientPool {
    /// Ends the bounce at `addr` and returns its pages; an `unused` one also takes back
    /// what it added to the high-water mark (never below the current usage).
    fn release(&self, addr: PhysAddr, unused: bool) -> Option<BounceMeta> {
        let live = {
            let mut s = self.state.lock();
            let live = s.live.remove(&addr.as_u64())?;
            s.used -= live.pages * PAGE_SIZE;
            if unused
                && !crate::reintroduce::active(
                    crate::reintroduce::Defect::FailedBounceRaisesHighWater,
                )
            {
                s.high_water = s.high_water.saturating_sub(live.raised).max(s.used);
            }
            live
        };
        self.give_back(PhysAddr::new(live.base), live.pages);
        Some(live.meta)
    }

    /// Makes `pages` pages at `base` private again and returns them to the page allocator.
    fn give_back(&self, base: PhysAddr, pages: u64) {
        if let Some(range) = PhysRange::new(base, pages * PAGE_SIZE) {
            self.sharing.unshare(range);
        }
        self.pages.free_pages(base, pages);
    }
}

impl BounceBackend for TransientPool {
    fn name(&self) -> &'static str {
        "transient"
    }

    fn is_cached(&self) -> bool {
        true
    }

    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError> {
        let offset = req.orig.as_u64() & req.min_align_mask;
        let align = (req.min_align_mask + 1).max(PAGE_SIZE);
        // Extra pages let us find an `align`-aligned start inside the allocation.
        let extra = align / PAGE_SIZE - 1;
        let pages = (offset + req.len).div_ceil(PAGE_SIZE) + extra;
        let full = || {
            let s = self.state.lock();
            BounceAllocError::Full {
                used: s.used,
                total: s.used,
            }
        };
        let records_full = || {
            let s = self.state.lock();
            s.live.len() == s.live.capacity()
        };
        // Checked first so that a full table costs no page allocation.
        if records_full() {
            return Err(full());
        }
        let base = self
            .pages
            .alloc_pages(pages, req.max_addr)
            .ok_or_else(full)?;
        // Pages handed out are a valid range; a refused share makes them useless here.
        let shared = PhysRange::new(base, pages * PAGE_SIZE)
            .is_some_and(|range| self.sharing.share(range).is_ok());
        if !shared {
            self.pages.free_pages(base, pages);
            return Err(full());
        }
        // Covered before the bounce's address is handed out.
        self.span.cover(base.as_u64(), pages * PAGE_SIZE);
        let start = base.as_u64().next_multiple_of(align);
        let slot = start + offset;
        let mut s = self.state.lock();
        let used = s.used + pages * PAGE_SIZE;
        let raised = used.saturating_sub(s.high_water);
        let live = Live {
            base: base.as_u64(),
            pages,
            raised,
            meta,
        };
        if s.live.insert(slot, live).is_err() {
            // Another bounce took the last record since the check above.
            drop(s);
            self.give_back(base, pages);
            return Err(full());
        }
        s.used = used;
        s.high_water += raised;
        Ok(PhysAddr::new(slot))
    }

    fn get(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.state.lock().live.get(&addr.as_u64()).map(|l| l.meta)
    }

    fn free(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.release(addr, false)
    }

    fn abandon(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.release(addr, true)
    }

    /// Whether `addr` lies in the pages of a live transient bounce at or after its bounce
    /// address (the lead-in kept for `min_align_mask` is not looked at: the router only
    /// asks with the addresses mappings start at).
    fn contains(&self, addr: PhysAddr) -> bool {
        let a = addr.as_u64();
        let s = self.state.lock();
        s.live
            .at_or_below(&a)
            .is_some_and(|(_, l)| a >= l.base && a < l.base + l.pages * PAGE_SIZE)
    }

    fn memory_span(&self) -> Option<Arc<MemorySpan>> {
        Some(self.span.clone())
    }

    fn usage(&self) -> PoolUsage {
        let s = self.state.lock();
        PoolUsage {
            total: s.used,
            used: s.used,
            high_water: s.high_water,
            live: s.live.len() as u64,
        }
    }
}
