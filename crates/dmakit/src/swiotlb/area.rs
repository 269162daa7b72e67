//! One area: a run of whole segments with its own slot allocator, run cache, live table
//! and usage counters, under a lock of its own: the region table's stripe of its index
//! (see `region_table.rs`), which only that index's areas share, one per region.
//!
//! Areas exist so that CPUs allocating and freeing bounces do not meet on one lock (Linux
//! added them after confidential guests spent a fifth of their CPU time on the single pool
//! lock). Everything an allocation needs (its slots and the caller's metadata) lives in the
//! area that owns its slots, behind that area's lock only (reached with a `StripeKey`);
//! each area sits on its own cache lines, so CPUs working in different areas share none.
//!
//! # The run cache
//!
//! Streaming bounces are mostly small and short-lived: a one-slot bounce taken from an
//! empty segment splits a whole segment down to one slot (seven splits with the defaults)
//! and merges it all back when freed, only for the next bounce to split it again. So an
//! area keeps a small LIFO cache of freed runs of up to [`CACHE_MAX_SLOTS`] slots
//! ([`CACHE_DEPTH`] per size), like Linux's IOVA range caches, and serves a request of the
//! same size from it without touching the slot allocator's free runs. Rules:
//!
//! - a cached run is reused only for a request of exactly its size whose placement it
//!   satisfies (first slot congruent to the request's `lead` modulo `2^align_order`), so
//!   every placement guarantee holds for reused runs as for fresh ones;
//! - cached slots are free: usage and statistics never count them;
//! - when the slot allocator cannot serve a request, the area first returns every cached
//!   run to it (merging as usual) and tries again, so caching never makes an allocation fail
//!   that would succeed without it (with eager merging, the free runs are a function of the
//!   set of free slots);
//! - a full cache sends further frees of that size straight to the slot allocator.
//!
//! # Packed slots
//!
//! A request smaller than a slot (see `request.rs` for which) takes whole line units of a
//! *packed* slot: a slot taken from the slot allocator like any other and cut into at most 64
//! lines, with a bitmap of the lines held. The area keeps its packed slots that have a free
//! line in a list, the slot most recently freed into at the front; an allocation tries the
//! front, then a few more (`PACKED_SCAN` in `packed.rs`), then cuts a fresh slot, and
//! searches the whole list only when no fresh slot is left, so it never fails while some
//! packed slot has room.
//! Finding a run in a slot is a few word operations on the bitmap (the positions where
//! `count` free lines start, at the alignment asked). Rules:
//!
//! - a packed run holds every line from its `min_align_mask` window's boundary to the end of
//!   its bytes, so no two allocations share a line (and, with lines as large as the
//!   largest cache line, a cache line), and the lead-in is the run's as for whole slots;
//! - free lines of packed slots are free as far as usage goes: usage counts line units;
//! - a packed allocation's metadata is a record chained from its slot's entry; an area has
//!   one record per two slots, and with none free a packable request takes whole slots;
//! - a packed slot whose last line is freed goes back as a free slot, except one per area
//!   (the spare), kept so that a bounce mapped and unmapped in a loop does not cut a slot
//!   each time; the spare is given back before the area refuses a request, as the run
//!   cache is.

#[cfg(test)]
mod check;
mod packed;
mod run_cache;

use alloc::vec::Vec;

use packed::{Hit, Record, SlotEntry, NIL};
use run_cache::RunCache;

use super::slots::SlotRuns;
use super::stats::{AreaCounter, CountedArea};
use super::stripe_key::StripeKey;
use super::sync::{AtomicU32, LockedElsewhere, Ordering};

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
    /// Lines (line units) of a packed run, lead-in included, or 0 when the request takes
    /// whole slots (see `request.rs`); then also:
    pub lines: u32,
    /// Alignment order, in lines, of the packed run's first line.
    pub line_align_order: u32,
    /// Bytes from the packed run's first line to the bounce address.
    pub line_offset: u32,
}

/// A live allocation, found from the slot its bounce address lies in: in that slot's entry
/// for a whole-slot allocation, in a record chained from it for a packed one.
///
/// It holds the line units `[first, first + units)` of its area (see
/// `PoolConfig::unit_shift`): whole slots inside one segment, or lines of one packed slot.
/// The lead-in before the bounce address (from the `2^align_order` boundary the placement
/// aligns to) belongs to it as much as the units its bytes occupy, so no other allocation
/// can land inside its aligned window.
pub(crate) struct Live<T> {
    /// Area-local index of the first line unit held.
    pub first: u32,
    /// Line units held, lead-in included.
    pub units: u32,
    /// Byte offset of the bounce address inside its slot.
    pub offset: u32,
    /// Bytes requested.
    pub len: u64,
    /// Units by which this allocation raised the pool's high-water mark (so that an
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
    /// Byte offset of the bounce address inside that slot.
    pub offset: u32,
    /// Area-local index of the first line unit held.
    pub first: u32,
    /// Line units held, lead-in included.
    pub units: u32,
}

struct AreaInner<T> {
    slots: SlotRuns,
    cache: RunCache,
    entries: Vec<SlotEntry<T>>,
    records: Vec<Record<T>>,
    free_record: u32,
    /// First packed slot with a free line, the one most recently freed into first.
    partial: u32,
    /// Free lines of packed slots: free, but neither in the slot allocator's runs nor cached.
    packed_free: u32,
    /// The one packed slot kept while empty (or `NIL`), so that a bounce freed and mapped
    /// again does not give its slot back and cut it again; given back before the area
    /// refuses a request.
    spare: u32,
    /// Log2 of line units per slot.
    lines_order: u32,
    /// Every line of a slot, as bits.
    all_lines: u64,
    /// Log2 of the bytes of a line unit.
    unit_shift: u32,
}

impl<T> AreaInner<T> {
    /// The allocation hint: the slot allocator's non-empty orders, with order 0 when a packed
    /// slot has a free line, or every order while runs are cached (a flush may merge them
    /// into any block).
    #[inline]
    fn hint(&self) -> u32 {
        if self.cache.slots == 0 {
            self.slots.nonempty_orders() | u32::from(self.partial != NIL)
        } else {
            u32::MAX
        }
    }

    /// Slots that are free, in the slot allocator's runs or cached.
    #[inline]
    fn free_slots(&self) -> u32 {
        self.slots.free_slots() + self.cache.slots
    }

    /// Takes `total` slots from a `2^align_order` boundary plus `residue`, ending at or
    /// before slot `last`: from the run cache, else the slot allocator's bounded search,
    /// else that search after the cache and then the spare packed slot are returned to the
    /// slot allocator, else a search of every free run. `None` with nothing changed but
    /// those returns: exactly when no free run holds the request.
    #[inline]
    fn take_slots(&mut self, total: u32, residue: u32, align_order: u32, last: u32) -> Option<u32> {
        if let Some(first) = self.take_block(total, residue, align_order, last) {
            return Some(first);
        }
        if self.spare != NIL {
            self.release_spare();
            if let Some(first) = self.take_block(total, residue, align_order, last) {
                return Some(first);
            }
        }
        // The bounded search missed: every free run.
        self.slots.alloc_within(total, residue, align_order, last)
    }

    /// [`AreaInner::take_slots`] without the spare packed slot and the search of every run.
    #[inline]
    fn take_block(&mut self, total: u32, residue: u32, align_order: u32, last: u32) -> Option<u32> {
        let whole_area = last >= self.slots.len() - 1;
        if whole_area {
            if let Some(first) = self.cache.take(total, residue, align_order) {
                return Some(first);
            }
            if let Some(first) = self.slots.alloc(total, residue, align_order) {
                return Some(first);
            }
        }
        // Every free slot into the slot allocator, so the searches below see them all.
        if self.cache.slots != 0 {
            let slots = &mut self.slots;
            self.cache.drain(|s, n| slots.release(s, n));
            if whole_area {
                if let Some(first) = self.slots.alloc(total, residue, align_order) {
                    return Some(first);
                }
            }
        }
        if whole_area {
            return None;
        }
        // Only part of the area is within reach: a run low enough.
        self.slots.alloc_within(total, residue, align_order, last)
    }

    /// Gives back `count` slots from `first`: to the run cache when it has room for them,
    /// else to the slot allocator.
    #[inline]
    fn give_slots(&mut self, first: u32, count: u32) {
        if !self.cache.put(first, count) {
            self.slots.release(first, count);
        }
    }

    /// Where the live allocation whose bounce address is `offset` bytes into slot `local`
    /// is, if its `claimed` flag is `claimed`.
    #[inline]
    fn find(&self, local: u32, offset: u32, claimed: bool) -> Option<Hit> {
        match self.entries.get(local as usize)? {
            SlotEntry::Whole(l) => {
                (l.offset == offset && l.claimed == claimed).then_some(Hit::Whole)
            }
            SlotEntry::Packed(p) => {
                let (mut prev, mut rec) = (NIL, p.head);
                while rec != NIL {
                    let r = &self.records[rec as usize];
                    if let Some(l) = &r.live {
                        if l.offset == offset {
                            return (l.claimed == claimed).then_some(Hit::Record { rec, prev });
                        }
                    }
                    (prev, rec) = (rec, r.next);
                }
                None
            }
            SlotEntry::Empty => None,
        }
    }

    #[inline]
    fn live_mut(&mut self, local: u32, hit: Hit) -> Option<&mut Live<T>> {
        match hit {
            Hit::Whole => match &mut self.entries[local as usize] {
                SlotEntry::Whole(l) => Some(l),
                _ => None,
            },
            Hit::Record { rec, .. } => self.records[rec as usize].live.as_mut(),
        }
    }

    /// Takes the allocation at `hit` of slot `local` out of the table and frees what it
    /// holds: whole slots to the run cache or slot allocator; packed lines to their slot,
    /// which goes back as a free slot when no line of it is held any more.
    #[inline(always)]
    fn remove(&mut self, local: u32, hit: Hit) -> Option<Live<T>> {
        let Hit::Record { rec, prev } = hit else {
            let SlotEntry::Whole(live) =
                core::mem::replace(&mut self.entries[local as usize], SlotEntry::Empty)
            else {
                return None;
            };
            self.give_slots(
                live.first >> self.lines_order,
                live.units >> self.lines_order,
            );
            return Some(live);
        };
        let r = &mut self.records[rec as usize];
        let (live, next) = (r.live.take()?, r.next);
        r.next = self.free_record;
        self.free_record = rec;
        let lines_order = self.lines_order;
        let all = self.all_lines;
        let line = live.first & ((1 << lines_order) - 1);
        let bits = (u64::MAX >> (64 - live.units)) << line;
        self.packed_free += live.units;
        match prev {
            NIL => self.packed_mut(local).head = next,
            _ => self.records[prev as usize].next = next,
        }
        let p = self.packed_mut(local);
        let was_full = p.used == all;
        p.used &= !bits;
        let empty = p.used == 0;
        if empty && self.spare != NIL {
            // An empty packed slot is kept already: this one goes back as a free slot.
            if !was_full {
                self.unlink_partial(local);
            }
            self.entries[local as usize] = SlotEntry::Empty;
            self.packed_free -= 1 << lines_order;
            self.give_slots(local, 1);
            return Some(live);
        }
        if empty {
            // Kept for the next packed allocation, which then cuts no slot.
            self.spare = local;
        }
        if was_full || self.partial != local {
            // Most recently freed into first: the next packed allocation finds room here.
            if !was_full {
                self.unlink_partial(local);
            }
            self.push_partial(local);
        }
        Some(live)
    }
}

/// Usage of one area, read under its lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AreaUsage {
    pub slots: u32,
    /// Line units held by live allocations.
    pub used_units: u32,
    pub live: u32,
}

/// An independently locked part of a region, alone on its cache lines. Its lock is the
/// region table's stripe of its index (see `region_table.rs`): its state is reached only
/// with that stripe's [`StripeKey`].
#[repr(align(128))]
pub(crate) struct Area<T> {
    /// Index, in the region, of the area's first slot (a segment boundary).
    first_slot: u32,
    /// Index of the area in its region: the stripe whose key reaches its state.
    index: u32,
    /// Orders the area may serve, readable without the lock (see [`AreaInner::hint`]);
    /// lets an allocation skip areas that cannot serve it. Only a hint: it is re-checked
    /// under the lock.
    orders_hint: AtomicU32,
    /// Used line units and live allocations, for lock-free statistics.
    counter: AreaCounter,
    inner: LockedElsewhere<AreaInner<T>>,
}

// SAFETY: the state in `inner` is reached only through `Area::with_inner`, with the key of
// the stripe of the area's index, which only the thread holding that stripe's lock has: the
// lock makes those accesses one at a time, as a mutex around the state would, and orders
// them (acquire and release). Everything else is atomics or never written. So sharing an
// area shares its metadata (`T`) only as a mutex does: it needs `T: Send`.
unsafe impl<T: Send> Sync for Area<T> {}

impl<T> CountedArea for Area<T> {
    #[inline]
    fn counter(&self) -> &AreaCounter {
        &self.counter
    }
}

impl<T> Area<T> {
    /// An area of `segments` free segments of `2^segment_order` slots from `first_slot`,
    /// slots of `2^lines_order` line units of `2^unit_shift` bytes. Its metadata is one
    /// entry per slot and, with `packing`, one packed-allocation record per two slots; when
    /// the records are all in use, further packable requests take whole slots.
    pub(crate) fn new(
        index: u32,
        first_slot: u32,
        segments: u32,
        segment_order: u32,
        lines_order: u32,
        unit_shift: u32,
        packing: bool,
    ) -> Self {
        let slots = SlotRuns::new(segments, segment_order);
        let mut entries = Vec::new();
        entries.resize_with(slots.len() as usize, || SlotEntry::Empty);
        let n = if packing { (slots.len() / 2).max(1) } else { 0 };
        let records = (0..n)
            .map(|i| Record {
                live: None,
                next: if i + 1 < n { i + 1 } else { NIL },
            })
            .collect();
        Self {
            first_slot,
            index,
            orders_hint: AtomicU32::new(slots.nonempty_orders()),
            counter: AreaCounter::new(),
            inner: LockedElsewhere::new(AreaInner {
                slots,
                cache: RunCache::new(),
                entries,
                records,
                free_record: if n == 0 { NIL } else { 0 },
                partial: NIL,
                packed_free: 0,
                spare: NIL,
                lines_order,
                all_lines: u64::MAX >> (64 - (1u32 << lines_order)),
                unit_shift,
            }),
        }
    }

    /// Index in the region of the first slot.
    #[inline]
    pub(crate) fn first_slot(&self) -> u32 {
        self.first_slot
    }

    /// Index of the area in its region: the stripe that is its lock.
    #[inline]
    pub(crate) fn index(&self) -> usize {
        self.index as usize
    }

    /// Runs `f` on the area's state, reached with `key`, which must be the key of the
    /// stripe of the area's index (anything else is a bug of the caller, and panics).
    #[inline(always)]
    fn with_inner<R>(&self, key: &mut StripeKey, f: impl FnOnce(&mut AreaInner<T>) -> R) -> R {
        assert_eq!(
            key.index(),
            self.index(),
            "an area reached with another stripe's key"
        );
        // SAFETY: the key is that of this area's stripe, which its holder has locked, so no
        // other thread reaches this state; `key` is borrowed for the whole call, so this
        // thread reaches no other state of the stripe meanwhile, and `f` reaches this one
        // only through its argument.
        unsafe { self.inner.with_mut(f) }
    }

    /// Whether the area may have room for a block of `order`, without locking.
    #[inline]
    pub(crate) fn may_fit(&self, order: u32) -> bool {
        self.orders_hint.load(Ordering::Relaxed) >> order != 0
    }

    /// Allocates per `p` a run that ends at or before area-local slot `last` (pass
    /// `u32::MAX` for no limit) and stores the metadata taken from `meta`; `count(counter,
    /// n)` runs under the lock to count the `n` line units and returns by how many units
    /// that raised the high-water mark. The run covers the placement's lead-in and its
    /// bytes, from a `2^align_order` boundary: lines of a packed slot for a packed
    /// placement while a record is free, else whole slots. Returns where it landed, or
    /// `None` with nothing observable changed (and `meta` untouched) when the area has no
    /// room below `last` even after returning its cached runs to the slot allocator.
    ///
    /// An area wholly within `last` costs what the module documentation says; one that
    /// `last` cuts first returns its cached runs to the slot allocator and searches every
    /// free run for one low enough (O(free runs)).
    pub(crate) fn alloc(
        &self,
        key: &mut StripeKey,
        p: &Placement,
        last: u32,
        meta: &mut Option<T>,
        count: impl FnOnce(&AreaCounter, u32) -> u32,
    ) -> Option<Run> {
        let lead_in_freed =
            crate::reintroduce::active(crate::reintroduce::Defect::LeadInSlotsFreed);
        let meta_in = meta.take()?;
        self.with_inner(key, |inner| {
            let lo = inner.lines_order;
            if p.lines != 0 {
                // Without the lead-in, the run starts at the bounce address's line.
                let lead = if lead_in_freed {
                    p.line_offset >> inner.unit_shift
                } else {
                    0
                };
                let units = p.lines - lead;
                if let Some((slot, line)) = inner.find_packed(units, lead, p.line_align_order, last)
                {
                    let first = (slot << lo) + line;
                    let run = Run {
                        slot,
                        offset: ((line - lead) << inner.unit_shift) + p.line_offset,
                        first,
                        units,
                    };
                    let live = Live {
                        first,
                        units,
                        offset: run.offset,
                        len: p.len,
                        raised: count(&self.counter, units),
                        claimed: false,
                        meta: meta_in,
                    };
                    inner.commit_packed(slot, line, live);
                    self.orders_hint.store(inner.hint(), Ordering::Relaxed);
                    return Some(run);
                }
            }
            let lead = if lead_in_freed { 0 } else { p.lead };
            // The run starts `p.lead - lead` slots past an aligned boundary: on it when the
            // lead-in is held.
            let (total, residue) = (lead + p.count, p.lead - lead);
            let taken = inner.take_slots(total, residue, p.align_order, last);
            self.orders_hint.store(inner.hint(), Ordering::Relaxed);
            let Some(first) = taken else {
                *meta = Some(meta_in);
                return None;
            };
            let run = Run {
                slot: first + lead,
                offset: p.offset,
                first: first << lo,
                units: total << lo,
            };
            inner.entries[run.slot as usize] = SlotEntry::Whole(Live {
                first: run.first,
                units: run.units,
                offset: p.offset,
                len: p.len,
                raised: count(&self.counter, run.units),
                claimed: false,
                meta: meta_in,
            });
            Some(run)
        })
    }

    /// Runs `f` on the live allocation whose bounce address sits `offset` bytes into slot
    /// `local`; `None` when there is none (or it is claimed).
    pub(crate) fn with_live<R>(
        &self,
        key: &mut StripeKey,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        self.with_inner(key, |inner| {
            let hit = inner.find(local, offset, false)?;
            inner.live_mut(local, hit).map(|l| f(l))
        })
    }

    /// Removes the live allocation whose bounce address is at `local`/`offset` and frees
    /// what it holds, lead-in included (into the run cache when it has room for whole
    /// slots), if `accept` returns `Ok` for its metadata: `accept` runs under the lock (so
    /// it must be short and must not call into the pool). `None` (nothing changed, `accept`
    /// not run) when there is no such allocation or it is claimed; `Some(Err(r))` (nothing
    /// changed) with `accept`'s refusal.
    pub(crate) fn free_if<R>(
        &self,
        key: &mut StripeKey,
        local: u32,
        offset: u32,
        accept: impl FnOnce(&T) -> Result<(), R>,
    ) -> Option<Result<Live<T>, R>> {
        self.with_inner(key, |inner| {
            let hit = inner.find(local, offset, false)?;
            if let Err(refused) = accept(&inner.live_mut(local, hit)?.meta) {
                return Some(Err(refused));
            }
            let live = inner.remove(local, hit)?;
            self.freed(inner, &live);
            Some(Ok(live))
        })
    }

    /// Claims the live allocation whose bounce address is at `local`/`offset` for the
    /// caller alone and runs `f` on it: until the caller's [`Area::finish`] or
    /// [`Area::unclaim`], lookups, frees and claims of it find nothing, and it keeps what it
    /// holds and stays counted as used and live (so its region cannot be removed). `None`
    /// (nothing changed) when there is no such allocation or it is claimed already.
    pub(crate) fn claim<R>(
        &self,
        key: &mut StripeKey,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        self.with_inner(key, |inner| {
            let hit = inner.find(local, offset, false)?;
            let live = inner.live_mut(local, hit)?;
            live.claimed = true;
            Some(f(live))
        })
    }

    /// Frees the allocation at `local`/`offset` that the caller claimed, as [`Area::free`]
    /// does; `false` (nothing changed) when there is no such claimed allocation.
    pub(crate) fn finish(&self, key: &mut StripeKey, local: u32, offset: u32) -> bool {
        self.with_inner(key, |inner| {
            let Some(hit) = inner.find(local, offset, true) else {
                return false;
            };
            let Some(live) = inner.remove(local, hit) else {
                return false;
            };
            self.freed(inner, &live);
            true
        })
    }

    /// Makes the allocation at `local`/`offset` that the caller claimed live again, as it
    /// was.
    pub(crate) fn unclaim(&self, key: &mut StripeKey, local: u32, offset: u32) {
        self.with_inner(key, |inner| {
            if let Some(hit) = inner.find(local, offset, true) {
                if let Some(live) = inner.live_mut(local, hit) {
                    live.claimed = false;
                }
            }
        })
    }

    /// Counts `live`, just removed, as freed; the caller holds the lock.
    #[inline]
    fn freed(&self, inner: &AreaInner<T>, live: &Live<T>) {
        self.counter.freed(live.units);
        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
    }

    /// Current usage.
    pub(crate) fn usage(&self, key: &mut StripeKey) -> AreaUsage {
        self.with_inner(key, |inner| {
            let held_slots = inner.slots.len() - inner.free_slots();
            AreaUsage {
                slots: inner.slots.len(),
                used_units: (held_slots << inner.lines_order) - inner.packed_free,
                live: self.counter.live(),
            }
        })
    }

    /// Returns every cached run and the spare packed slot to the slot allocator; for tests.
    #[cfg(test)]
    pub(crate) fn flush_cache(&self, key: &mut StripeKey) {
        self.with_inner(key, |inner| {
            if inner.spare != NIL {
                inner.release_spare();
            }
            let slots = &mut inner.slots;
            inner.cache.drain(|s, n| slots.release(s, n));
            self.orders_hint.store(inner.hint(), Ordering::Relaxed);
        })
    }

    /// Slots in the run cache; for tests.
    #[cfg(test)]
    pub(crate) fn cached_slots(&self, key: &mut StripeKey) -> u32 {
        self.with_inner(key, |inner| inner.cache.slots)
    }
}
