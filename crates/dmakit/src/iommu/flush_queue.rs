//! The flush queue of a lazy domain: unmapped IOVAs waiting for one batched IOTLB
//! invalidation before they may be used again.
//!
//! Invalidating the IOTLB on every unmap (strict mode) costs a round trip to the IOMMU each
//! time. Lazy mode instead removes the page-table entries at unmap, parks the IOVA (and any
//! bounce slot the mapping used) here, and when the queue fills up, or the owner asks,
//! invalidates the whole domain once and only then returns everything to the allocators.
//! An IOVA therefore never reaches the allocator, and can never be handed out again, while
//! a stale IOTLB entry may still translate it. What lazy mode gives up is the window between
//! unmap and that invalidation, during which a device may still reach the old memory through
//! the IOTLB; untrusted devices are never given that window (their unmaps are strict).

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use super::iova::IovaRange;
use crate::addr::PhysAddr;
use crate::bounce::BounceBackend;

/// One unmapped mapping waiting for invalidation.
pub(crate) struct FlushEntry {
    /// The IOVA range to return to the allocator.
    pub(crate) iova: IovaRange,
    /// The bounce slot to release, with its backend, if the mapping was bounced.
    pub(crate) bounce: Option<(Arc<dyn BounceBackend>, PhysAddr)>,
}

/// A bounded queue of [`FlushEntry`]s.
pub(crate) struct FlushQueue {
    entries: Mutex<Vec<FlushEntry>>,
    capacity: usize,
    flushes: AtomicU64,
}

impl FlushQueue {
    /// A queue that asks to be drained once it holds `capacity` entries (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
            flushes: AtomicU64::new(0),
        }
    }

    /// Queues `entry`; returns whether the queue is now full and should be drained.
    pub(crate) fn push(&self, entry: FlushEntry) -> bool {
        let mut q = self.entries.lock();
        q.push(entry);
        q.len() >= self.capacity
    }

    /// Takes every queued entry. The caller must invalidate the IOTLB of the domain before
    /// releasing any of them.
    pub(crate) fn take(&self) -> Vec<FlushEntry> {
        let mut q = self.entries.lock();
        if q.is_empty() {
            return Vec::new();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        core::mem::replace(&mut *q, Vec::with_capacity(self.capacity))
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Drains performed so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}
