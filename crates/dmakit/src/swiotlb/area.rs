//! One area: a run of whole segments with its own lock, slot allocator, run cache, live
//! table and usage counters.
//!
//! Areas exist so that CPUs allocating and freeing bounces do not meet on one lock (Linux
//! added them after confidential guests spent a fifth of their CPU time on the single pool
//! lock). Everything an allocation needs (its slots and the caller's metadata) lives in the
//! area that owns its slots, behind that area's lock only; each area sits on its own cache
//! lines, so CPUs working in different areas share none.
//!
//! # The run cache
//!
//! Streaming bounces are mostly small and short-lived: a one-slot bounce taken from an
//! empty segment splits a whole segment down to one slot (seven splits with the defaults)
//! and merges it all back when freed, only for the next bounce to split it again. So an
//! area keeps a small LIFO cache of freed runs of up to [`CACHE_MAX_SLOTS`] slots
//! ([`CACHE_DEPTH`] per size), like Linux's IOVA range caches, and serves a request of the
//! same size from it without touching the buddy lists. Rules:
//!
//! - a cached run is reused only for a request of exactly its size whose placement it
//!   satisfies (first slot congruent to the request's `lead` modulo `2^align_order`), so
//!   every placement guarantee holds for reused runs as for fresh ones;
//! - cached slots are free: usage and statistics never count them;
//! - when the buddy lists cannot serve a request, the area first returns every cached run
//!   to them (merging as usual) and tries again, so caching never makes an allocation fail
//!   that would succeed without it (with eager merging, the buddy lists' blocks are a
//!   function of the set of free slots);
//! - a full cache sends further frees of that size straight to the buddy lists.

use alloc::vec::Vec;

use super::slots::BuddySlots;
use super::stats::{AreaCounter, CountedArea};
use super::sync::{AtomicU32, Mutex, Ordering};

/// Largest run, in slots, the run cache keeps.
pub(crate) const CACHE_MAX_SLOTS: u32 = 8;
/// Runs the run cache keeps per size.
pub(crate) const CACHE_DEPTH: usize = 8;

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

/// A live allocation, stored at the index of the slot its bounce address lies in.
///
/// It holds the run `[i - lead, i - lead + count)` around that slot `i`: the `lead` slots
/// before it (the lead-in a `min_align_mask` offset puts in front of the bounce address,
/// from the `2^align_order` boundary the placement aligns to) belong to it as much as the
/// slots the bytes occupy, so no other allocation can land inside its aligned window.
pub(crate) struct Live<T> {
    /// Slots it holds, lead-in included.
    pub count: u32,
    /// Slots of the lead-in, before the slot of the bounce address.
    pub lead: u32,
    /// Byte offset of the bounce address inside its slot.
    pub offset: u32,
    /// Bytes requested.
    pub len: u64,
    /// Slots by which this allocation raised the pool's high-water mark (so that an
    /// allocation given back unused can lower it again).
    pub raised: u32,
    /// Whether one caller is ending it ([`Area::claim`]): every other lookup and free then
    /// finds no live allocation here, and only that caller's [`Area::finish`] or
    /// [`Area::unclaim`] may touch it.
    pub claimed: bool,
    /// The caller's metadata.
    pub meta: T,
}

/// Where an allocation landed in its area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    /// Area-local index of the slot the bounce address lies in.
    pub slot: u32,
    /// Slots of the lead-in before it (the run starts at `slot - lead`).
    pub lead: u32,
    /// Slots held, lead-in included.
    pub count: u32,
}

/// Freed runs kept for reuse, by size; see the module documentation.
///
/// Invariant: `runs[c - 1][..depth[c - 1]]` are the first slots of disjoint free runs of
/// `c` slots, each inside one segment, newest last; `slots` is their total size. The buddy
/// lists do not know these slots.
struct RunCache {
    runs: [[u32; CACHE_DEPTH]; CACHE_MAX_SLOTS as usize],
    depth: [u8; CACHE_MAX_SLOTS as usize],
    slots: u32,
}

impl RunCache {
    fn new() -> Self {
        Self {
            runs: [[0; CACHE_DEPTH]; CACHE_MAX_SLOTS as usize],
            depth: [0; CACHE_MAX_SLOTS as usize],
            slots: 0,
        }
    }

    /// Takes the newest cached run of `count` slots whose first slot is `lead` modulo
    /// `2^align_order`.
    #[inline]
    fn take(&mut self, count: u32, lead: u32, align_order: u32) -> Option<u32> {
        let k = count.checked_sub(1)? as usize;
        let depth = *self.depth.get(k)? as usize;
        let runs = &mut self.runs[k];
        let mask = (1u32 << align_order) - 1;
        let i = (0..depth).rev().find(|&i| runs[i] & mask == lead)?;
        let first = runs[i];
        runs.copy_within(i + 1..depth, i);
        self.depth[k] -= 1;
        self.slots -= count;
        Some(first)
    }

    /// Keeps the run of `count` slots at `first`; `false` (nothing kept) when runs of that
    /// size are not cached or the cache for it is full.
    #[inline]
    fn put(&mut self, first: u32, count: u32) -> bool {
        let Some(k) = count.checked_sub(1).map(|k| k as usize) else {
            return false;
        };
        match self.depth.get(k) {
            Some(&d) if (d as usize) < CACHE_DEPTH => {
                self.runs[k][d as usize] = first;
                self.depth[k] = d + 1;
                self.slots += count;
                true
            }
            _ => false,
        }
    }

    /// Empties the cache, handing every run to `f(first, count)`.
    fn drain(&mut self, mut f: impl FnMut(u32, u32)) {
        for (k, runs) in self.runs.iter().enumerate() {
            for &first in &runs[..self.depth[k] as usize] {
                f(first, k as u32 + 1);
            }
        }
        self.depth = [0; CACHE_MAX_SLOTS as usize];
        self.slots = 0;
    }

    /// Whether slot `i` lies in a cached run; for tests.
    #[cfg(test)]
    fn holds(&self, i: u32) -> bool {
        self.runs.iter().enumerate().any(|(k, runs)| {
            runs[..self.depth[k] as usize]
                .iter()
                .any(|&f| (f..f + k as u32 + 1).contains(&i))
        })
    }
}

struct AreaInner<T> {
    slots: BuddySlots,
    cache: RunCache,
    live: Vec<Option<Live<T>>>,
}

impl<T> AreaInner<T> {
    /// The allocation hint: the buddy lists' non-empty orders, or every order while runs
    /// are cached (a flush may merge them into any block).
    #[inline]
    fn hint(&self) -> u32 {
        if self.cache.slots == 0 {
            self.slots.nonempty_orders()
        } else {
            u32::MAX
        }
    }

    /// Slots that are free, in the buddy lists or cached.
    #[inline]
    fn free_slots(&self) -> u32 {
        self.slots.free_slots() + self.cache.slots
    }
}

/// Usage of one area, read under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaUsage {
    pub slots: u32,
    pub used_slots: u32,
    pub live: u32,
}

/// An independently locked part of a region, alone on its cache lines.
#[repr(align(128))]
pub(crate) struct Area<T> {
    /// Index, in the region, of the area's first slot (a segment boundary).
    first_slot: u32,
    /// Orders the area may serve, readable without the lock (see [`AreaInner::hint`]);
    /// lets an allocation skip areas that cannot serve it. Only a hint: it is re-checked
    /// under the lock.
    orders_hint: AtomicU32,
    /// Used slots and live allocations, for lock-free statistics.
    counter: AreaCounter,
    inner: Mutex<AreaInner<T>>,
}

impl<T> CountedArea for Area<T> {
    #[inline]
    fn counter(&self) -> &AreaCounter {
        &self.counter
    }

    /// Takes the lock with `try_lock`: the high-water grants must not wait for an area's
    /// lock while holding another.
    #[inline]
    fn try_counter<R>(&self, f: impl FnOnce(&AreaCounter) -> R) -> Option<R> {
        let _inner = self.inner.try_lock()?;
        Some(f(&self.counter))
    }
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
            counter: AreaCounter::new(),
            inner: Mutex::new(AreaInner {
                slots,
                cache: RunCache::new(),
                live,
            }),
        }
    }

    /// Index in the region of the first slot.
    #[inline]
    pub(crate) fn first_slot(&self) -> u32 {
        self.first_slot
    }

    /// Whether the area may have room for a block of `order`, without locking.
    #[inline]
    pub(crate) fn may_fit(&self, order: u32) -> bool {
        self.orders_hint.load(Ordering::Relaxed) >> order != 0
    }

    /// Allocates per `p` a run that ends at or before area-local slot `last` (pass
    /// `u32::MAX` for no limit) and stores the metadata taken from `meta`; `count(counter,
    /// n)` runs under the lock to count the `n` slots and returns by how many slots that
    /// raised the high-water mark. The run covers the placement's lead-in and its data
    /// slots, from a `2^align_order` boundary. Returns where it landed, or `None` with
    /// nothing observable changed (and `meta` untouched) when the area has no room below
    /// `last` even after returning its cached runs to the buddy lists.
    ///
    /// An area wholly within `last` costs what the module documentation says; one that
    /// `last` cuts first returns its cached runs to the buddy lists and walks them for a
    /// low enough block (O(free blocks)).
    pub(crate) fn alloc(
        &self,
        p: &Placement,
        last: u32,
        meta: &mut Option<T>,
        count: impl FnOnce(&AreaCounter, u32) -> u32,
    ) -> Option<Run> {
        let lead = if crate::reintroduce::active(crate::reintroduce::Defect::LeadInSlotsFreed) {
            0
        } else {
            p.lead
        };
        // The run starts `p.lead - lead` slots past an aligned boundary: on it when the
        // lead-in is held.
        let (total, residue) = (lead + p.count, p.lead - lead);
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let first = if last < inner.slots.len() - 1 {
            // Only part of the area is within reach: search the buddy lists, with every
            // cached run returned to them so the search sees all free slots.
            let slots = &mut inner.slots;
            inner.cache.drain(|s, n| slots.release(s, n));
            let first = inner.slots.alloc_below(total, residue, p.align_order, last);
            self.orders_hint.store(inner.hint(), Ordering::Relaxed);
            first?
        } else {
            match inner.cache.take(total, residue, p.align_order) {
                Some(first) => first,
                None => match inner.slots.alloc(total, residue, p.align_order) {
                    Some(first) => first,
                    None if inner.cache.slots != 0 => {
                        let slots = &mut inner.slots;
                        inner.cache.drain(|s, n| slots.release(s, n));
                        let first = inner.slots.alloc(total, residue, p.align_order);
                        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
                        first?
                    }
                    None => return None,
                },
            }
        };
        let Some(meta) = meta.take() else {
            inner.slots.release(first, total);
            self.orders_hint.store(inner.hint(), Ordering::Relaxed);
            return None;
        };
        let raised = count(&self.counter, total);
        inner.live[(first + lead) as usize] = Some(Live {
            count: total,
            lead,
            offset: p.offset,
            len: p.len,
            raised,
            claimed: false,
            meta,
        });
        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
        Some(Run {
            slot: first + lead,
            lead,
            count: total,
        })
    }

    /// Runs `f` on the live allocation whose first slot is `local` and whose bounce address
    /// sits `offset` bytes into it; `None` when there is none (or it is claimed).
    pub(crate) fn with_live<R>(
        &self,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        let inner = self.inner.lock();
        match inner.live.get(local as usize) {
            Some(Some(live)) if live.offset == offset && !live.claimed => Some(f(live)),
            _ => None,
        }
    }

    /// Removes the live allocation whose bounce address is at `local`/`offset` and frees
    /// its slots, lead-in included (into the run cache when it has room for them); `None`
    /// (nothing changed) when there is none or it is claimed.
    pub(crate) fn free(&self, local: u32, offset: u32) -> Option<Live<T>> {
        let mut guard = self.inner.lock();
        let entry = guard.live.get_mut(local as usize)?;
        if !matches!(entry, Some(live) if live.offset == offset && !live.claimed) {
            return None;
        }
        let live = entry.take()?;
        self.release(&mut guard, local, &live);
        Some(live)
    }

    /// Claims the live allocation whose bounce address is at `local`/`offset` for the
    /// caller alone and runs `f` on it: until the caller's [`Area::finish`] or
    /// [`Area::unclaim`], lookups, frees and claims of it find nothing, and it keeps its
    /// slots and stays counted as used and live (so its region cannot be removed). `None`
    /// (nothing changed) when there is no such allocation or it is claimed already.
    pub(crate) fn claim<R>(
        &self,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        let mut inner = self.inner.lock();
        match inner.live.get_mut(local as usize) {
            Some(Some(live)) if live.offset == offset && !live.claimed => {
                live.claimed = true;
                Some(f(live))
            }
            _ => None,
        }
    }

    /// Frees the allocation at `local` that the caller claimed, as [`Area::free`] does;
    /// `false` (nothing changed) when `local` holds no claimed allocation.
    pub(crate) fn finish(&self, local: u32) -> bool {
        let mut guard = self.inner.lock();
        let Some(entry) = guard.live.get_mut(local as usize) else {
            return false;
        };
        let Some(live) = entry.take_if(|live| live.claimed) else {
            return false;
        };
        self.release(&mut guard, local, &live);
        true
    }

    /// Makes the allocation at `local` that the caller claimed live again, as it was.
    pub(crate) fn unclaim(&self, local: u32) {
        let mut inner = self.inner.lock();
        if let Some(Some(live)) = inner.live.get_mut(local as usize) {
            live.claimed = false;
        }
    }

    /// Frees the slots of `live`, just taken out of the table at `local`, and counts them
    /// free; the caller holds the lock.
    #[inline]
    fn release(&self, inner: &mut AreaInner<T>, local: u32, live: &Live<T>) {
        let first = local - live.lead;
        if !inner.cache.put(first, live.count) {
            inner.slots.release(first, live.count);
        }
        self.counter.freed(live.count);
        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
    }

    /// Live allocations, read under the lock: once this returns 0, no call that had
    /// found an allocation of this area touches it any more (for region removal).
    pub(crate) fn live_locked(&self) -> u32 {
        let _inner = self.inner.lock();
        self.counter.live()
    }

    /// Current usage.
    pub(crate) fn usage(&self) -> AreaUsage {
        let inner = self.inner.lock();
        AreaUsage {
            slots: inner.slots.len(),
            used_slots: inner.slots.len() - inner.free_slots(),
            live: self.counter.live(),
        }
    }

    /// Returns every cached run to the buddy lists; for tests.
    #[cfg(test)]
    pub(crate) fn flush_cache(&self) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let slots = &mut inner.slots;
        inner.cache.drain(|s, n| slots.release(s, n));
        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
    }

    /// Slots in the run cache; for tests.
    #[cfg(test)]
    pub(crate) fn cached_slots(&self) -> u32 {
        self.inner.lock().cache.slots
    }

    /// Checks the allocator's invariants, that live runs, cached runs and free blocks
    /// partition the area, and that the counters agree; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        let inner = self.inner.lock();
        inner.slots.check()?;
        let mut cached = 0u32;
        for (k, runs) in inner.cache.runs.iter().enumerate() {
            let n = k as u32 + 1;
            for &f in &runs[..inner.cache.depth[k] as usize] {
                if f >> inner.slots.max_order() != (f + n - 1) >> inner.slots.max_order() {
                    return Err(alloc::format!("cached run {f}+{n} crosses a segment"));
                }
                for j in f..f + n {
                    if inner.slots.is_free(j) || inner.live[j as usize].is_some() {
                        return Err(alloc::format!("cached slot {j} is also free or live"));
                    }
                }
                cached += n;
            }
        }
        if cached != inner.cache.slots {
            return Err(alloc::format!(
                "cache counts {} of {cached}",
                inner.cache.slots
            ));
        }
        let mut used = 0u32;
        let mut live = 0u32;
        let mut held = alloc::vec![false; inner.slots.len() as usize];
        for (i, l) in inner.live.iter().enumerate() {
            let Some(l) = l else { continue };
            if l.claimed {
                return Err(alloc::format!("run at {i} is still claimed"));
            }
            let Some(first) = (i as u32).checked_sub(l.lead) else {
                return Err(alloc::format!("lead-in of the run at {i} leaves the area"));
            };
            if l.lead >= l.count {
                return Err(alloc::format!("run at {i} holds no slot after its lead-in"));
            }
            for j in first..first + l.count {
                if inner.slots.is_free(j) || inner.cache.holds(j) {
                    return Err(alloc::format!("live slot {j} is also free"));
                }
                if core::mem::replace(&mut held[j as usize], true) {
                    return Err(alloc::format!("live runs overlap at {j}"));
                }
            }
            used += l.count;
            live += 1;
        }
        if used + inner.free_slots() != inner.slots.len() {
            return Err(alloc::format!(
                "{used} live + {} free + {cached} cached != {}",
                inner.slots.free_slots(),
                inner.slots.len()
            ));
        }
        if (used, live) != (self.counter.used(), self.counter.live()) {
            return Err(alloc::format!(
                "counters say {} slots in {} allocations, table {used} in {live}",
                self.counter.used(),
                self.counter.live()
            ));
        }
        if self.counter.allowance() < used {
            return Err(alloc::format!("allowance below usage {used}"));
        }
        if self.orders_hint.load(Ordering::Relaxed) != inner.hint() {
            return Err(alloc::string::String::from("stale allocation hint"));
        }
        Ok(())
    }
}
