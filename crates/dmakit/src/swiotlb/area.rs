//! One area: a run of whole segments with its own lock, slot allocator and live table.
//!
//! Areas exist so that CPUs allocating and freeing bounces do not meet on one lock (Linux
//! added them after confidential guests spent a fifth of their CPU time on the single pool
//! lock). Everything an allocation needs (its slots and the caller's metadata) lives in the
//! area that owns its slots, behind that area's lock only.

use alloc::vec::Vec;

use super::slots::BuddySlots;
use super::sync::{AtomicU32, Mutex, Ordering};

/// Where, inside an area, an allocation must sit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placement {
    /// Slots to allocate (at least 1).
    pub count: u32,
    /// Required first slot index modulo `2^align_order`.
    pub lead: u32,
    /// Alignment order of the block the run is cut from.
    pub align_order: u32,
    /// Byte offset of the bounce address inside its first slot.
    pub offset: u32,
    /// Bytes requested.
    pub len: u64,
}

/// A live allocation, stored at the index of its first slot.
pub(crate) struct Live<T> {
    /// Slots it holds.
    pub count: u32,
    /// Byte offset of the bounce address inside the first slot.
    pub offset: u32,
    /// Bytes requested.
    pub len: u64,
    /// The caller's metadata.
    pub meta: T,
}

struct AreaInner<T> {
    slots: BuddySlots,
    live: Vec<Option<Live<T>>>,
    live_count: u32,
}

/// Usage of one area, read under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaUsage {
    pub slots: u32,
    pub used_slots: u32,
    pub live: u32,
}

/// An independently locked part of a region.
pub(crate) struct Area<T> {
    /// Index, in the region, of the area's first slot (a segment boundary).
    first_slot: u32,
    /// Copy of the allocator's non-empty order mask, readable without the lock; lets an
    /// allocation skip areas that cannot serve it. Only a hint: it is re-checked under the
    /// lock.
    orders_hint: AtomicU32,
    inner: Mutex<AreaInner<T>>,
}

impl<T> Area<T> {
    /// An area of `segments` free segments of `2^segment_order` slots from `first_slot`.
    pub(crate) fn new(first_slot: u32, segments: u32, segment_order: u32) -> Self {
        let slots = BuddySlots::new(segments, segment_order);
        let mut live = Vec::new();
        live.resize_with(slots.len() as usize, || None);
        Self {
            first_slot,
            orders_hint: AtomicU32::new(slots.nonempty_orders()),
            inner: Mutex::new(AreaInner {
                slots,
                live,
                live_count: 0,
            }),
        }
    }

    /// Index in the region of the first slot.
    #[inline]
    pub(crate) fn first_slot(&self) -> u32 {
        self.first_slot
    }

    /// Whether the area may have a free block of `order`, without locking.
    #[inline]
    pub(crate) fn may_fit(&self, order: u32) -> bool {
        self.orders_hint.load(Ordering::Relaxed) >> order != 0
    }

    /// Allocates per `p` and stores the metadata taken from `meta`. Returns the area-local
    /// index of the first slot, or `None` with nothing changed (and `meta` untouched) when
    /// the area has no room.
    pub(crate) fn alloc(&self, p: &Placement, meta: &mut Option<T>) -> Option<u32> {
        let mut inner = self.inner.lock();
        let first = inner.slots.alloc(p.count, p.lead, p.align_order)?;
        let Some(meta) = meta.take() else {
            inner.slots.release(first, p.count);
            return None;
        };
        inner.live[first as usize] = Some(Live {
            count: p.count,
            offset: p.offset,
            len: p.len,
            meta,
        });
        inner.live_count += 1;
        self.orders_hint
            .store(inner.slots.nonempty_orders(), Ordering::Relaxed);
        Some(first)
    }

    /// Runs `f` on the live allocation whose first slot is `local` and whose bounce address
    /// sits `offset` bytes into it; `None` when there is none.
    pub(crate) fn with_live<R>(
        &self,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        let inner = self.inner.lock();
        match inner.live.get(local as usize) {
            Some(Some(live)) if live.offset == offset => Some(f(live)),
            _ => None,
        }
    }

    /// Removes the live allocation at `local`/`offset` and frees its slots; `None` (nothing
    /// changed) when there is none.
    pub(crate) fn free(&self, local: u32, offset: u32) -> Option<Live<T>> {
        let mut inner = self.inner.lock();
        let entry = inner.live.get_mut(local as usize)?;
        if entry.as_ref()?.offset != offset {
            return None;
        }
        let live = entry.take()?;
        inner.slots.release(local, live.count);
        inner.live_count -= 1;
        self.orders_hint
            .store(inner.slots.nonempty_orders(), Ordering::Relaxed);
        Some(live)
    }

    /// Current usage.
    pub(crate) fn usage(&self) -> AreaUsage {
        let inner = self.inner.lock();
        AreaUsage {
            slots: inner.slots.len(),
            used_slots: inner.slots.len() - inner.slots.free_slots(),
            live: inner.live_count,
        }
    }

    /// Checks the allocator's invariants and that live runs and free blocks partition the
    /// area; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        let inner = self.inner.lock();
        inner.slots.check()?;
        let mut used = 0u32;
        let mut i = 0u32;
        while i < inner.slots.len() {
            match &inner.live[i as usize] {
                Some(l) => {
                    for j in i..i + l.count {
                        if inner.slots.is_free(j) {
                            return Err(alloc::format!("live slot {j} is also free"));
                        }
                        if j != i && inner.live[j as usize].is_some() {
                            return Err(alloc::format!("live runs overlap at {j}"));
                        }
                    }
                    used += l.count;
                    i += l.count;
                }
                None => i += 1,
            }
        }
        if used + inner.slots.free_slots() != inner.slots.len() {
            return Err(alloc::format!(
                "{used} live + {} free != {}",
                inner.slots.free_slots(),
                inner.slots.len()
            ));
        }
        Ok(())
    }
}
