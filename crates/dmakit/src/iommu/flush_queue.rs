//! The flush queue of a lazy domain: unmapped IOVAs waiting for one batched IOTLB
//! invalidation before they may be used again.
//!
//! Invalidating the IOTLB on every unmap (strict mode) costs a round trip to the IOMMU each
//! time. Lazy mode instead removes the page-table entries at unmap, parks the IOVA (and any
//! bounce slot the mapping used) here, and invalidates the whole domain once before
//! returning everything to the allocators: when the queue fills up, when its oldest entry
//! has waited longer than the domain's time bound, when a bounce pool or the IOVA space
//! runs short, or when the owner asks. An IOVA or bounce slot therefore never reaches its
//! allocator, and can never be handed out again, while a stale IOTLB entry may still
//! translate it. What lazy mode gives up is the window between unmap and that
//! invalidation, during which a device may still reach the old memory through the IOTLB;
//! untrusted devices are never given that window (their unmaps are strict).

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::sync::Mutex;

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

/// No entry is queued: the oldest-entry time reads this.
const EMPTY: u64 = u64::MAX;

/// A bounded queue of [`FlushEntry`]s, allocated once: queueing and draining (on unmap
/// paths, in interrupt context) never allocate.
///
/// Every entry carries the number of pushes before it. A drain first *seals* the queue
/// (notes that number), then invalidates the IOTLB, then pops only entries pushed before
/// the seal, one at a time with the lock dropped in between: whatever a drain releases was
/// unmapped before its own invalidation, even when several drains and pushes interleave.
pub(crate) struct FlushQueue {
    entries: Mutex<Ring>,
    capacity: usize,
    flushes: AtomicU64,
    /// Bounce slots parked in the queue (read without the lock: "is there any room to win
    /// by draining?").
    bounces: AtomicUsize,
    /// When the oldest queued entry was queued (clock nanoseconds), or [`EMPTY`].
    oldest_ns: AtomicU64,
}

/// The queued entries, oldest first, each with its push number and time.
struct Ring {
    queued: VecDeque<(u64, u64, FlushEntry)>,
    pushes: u64,
}

impl FlushQueue {
    /// A queue of `capacity` entries (at least 1), which asks to be drained once full.
    /// Allocates: called when the domain is created.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            entries: Mutex::new(Ring {
                queued: VecDeque::with_capacity(capacity),
                pushes: 0,
            }),
            capacity,
            flushes: AtomicU64::new(0),
            bounces: AtomicUsize::new(0),
            oldest_ns: AtomicU64::new(EMPTY),
        }
    }

    /// Queues `entry` at time `now_ns` (0 without a clock); returns whether the queue is
    /// now full and should be drained.
    ///
    /// # Errors
    /// `Err(entry)`, nothing queued, when the queue is already full: drain, then push again.
    pub(crate) fn push(&self, entry: FlushEntry, now_ns: u64) -> Result<bool, FlushEntry> {
        let mut q = self.entries.lock();
        if q.queued.len() >= self.capacity {
            return Err(entry);
        }
        if q.queued.is_empty() {
            self.oldest_ns
                .store(now_ns.min(EMPTY - 1), Ordering::Relaxed);
        }
        if entry.bounce.is_some() {
            self.bounces.fetch_add(1, Ordering::Relaxed);
        }
        let seq = q.pushes;
        q.pushes += 1;
        q.queued.push_back((seq, now_ns, entry));
        Ok(q.queued.len() >= self.capacity)
    }

    /// Starts a drain: `None` when nothing is queued, else the seal to give
    /// [`FlushQueue::pop_sealed`]. The caller must invalidate the IOTLB of the domain after
    /// this and before popping.
    pub(crate) fn seal(&self) -> Option<u64> {
        let q = self.entries.lock();
        if q.queued.is_empty() {
            return None;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Some(q.pushes)
    }

    /// The oldest entry if it was pushed before `seal`.
    pub(crate) fn pop_sealed(&self, seal: u64) -> Option<FlushEntry> {
        let mut q = self.entries.lock();
        if q.queued.front().is_none_or(|&(seq, _, _)| seq >= seal) {
            return None;
        }
        let (_, _, entry) = q.queued.pop_front()?;
        if entry.bounce.is_some() {
            self.bounces.fetch_sub(1, Ordering::Relaxed);
        }
        let oldest = q
            .queued
            .front()
            .map_or(EMPTY, |&(_, t, _)| t.min(EMPTY - 1));
        self.oldest_ns.store(oldest, Ordering::Relaxed);
        Some(entry)
    }

    /// Entries waiting.
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().queued.len()
    }

    /// Bounce slots waiting (a hint: read without the queue's lock).
    pub(crate) fn parked_bounces(&self) -> usize {
        self.bounces.load(Ordering::Relaxed)
    }

    /// Whether anything is queued (a hint: read without the queue's lock).
    pub(crate) fn queued_hint(&self) -> bool {
        self.oldest_ns.load(Ordering::Relaxed) != EMPTY
    }

    /// Whether the oldest entry was queued at or before `deadline_ns` (a hint: read
    /// without the queue's lock).
    pub(crate) fn oldest_at_or_before(&self, deadline_ns: u64) -> bool {
        let oldest = self.oldest_ns.load(Ordering::Relaxed);
        oldest != EMPTY && oldest <= deadline_ns
    }

    /// Drains performed so far.
    pub(crate) fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }
}
