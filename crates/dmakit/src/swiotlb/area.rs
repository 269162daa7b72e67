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
//!
//! # Packed slots
//!
//! A request smaller than a slot (see `request.rs` for which) takes whole line units of a
//! *packed* slot: a slot taken from the buddy lists like any other and cut into at most 64
//! lines, with a bitmap of the lines held. The area keeps its packed slots that have a free
//! line in a list, the slot most recently freed into at the front; an allocation tries the
//! front, then a few more ([`PACKED_SCAN`]), then cuts a fresh slot, and searches the whole
//! list only when no fresh slot is left, so it never fails while some packed slot has room.
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

/// No slot, record or list entry.
const NIL: u32 = u32::MAX;
/// Packed slots with a free line tried, from the front of the list, before a fresh slot
/// is cut; the rest of the list is searched only when no fresh slot is left.
const PACKED_SCAN: usize = 4;

/// What a slot's entry holds.
enum SlotEntry<T> {
    /// No live allocation has its bounce address in this slot: it is free, cached, or
    /// another slot of a whole-slot allocation (its lead-in or its tail).
    Empty,
    /// The whole-slot allocation whose bounce address lies in this slot.
    Whole(Live<T>),
    /// The slot is cut into lines for packed allocations.
    Packed(Packed),
}

/// A packed slot: which of its lines are held, and by whom.
///
/// Invariant: `used` is the union of the lines its chain's records hold, and is 0 only for
/// the area's spare; the slot is in the area's list of packed slots with a free line (`prev`/`next`) exactly
/// when `used` is not every line.
struct Packed {
    used: u64,
    /// First record of its allocations.
    head: u32,
    prev: u32,
    next: u32,
}

/// A packed allocation, or a free record.
struct Record<T> {
    live: Option<Live<T>>,
    /// Next record of the same slot, or of the free list.
    next: u32,
}

/// Where a live allocation's entry is.
#[derive(Clone, Copy)]
enum Hit {
    /// In its slot's entry.
    Whole,
    /// In record `rec`, which follows record `prev` (or the slot's head, when `NIL`).
    Record { rec: u32, prev: u32 },
}

struct AreaInner<T> {
    slots: BuddySlots,
    cache: RunCache,
    entries: Vec<SlotEntry<T>>,
    records: Vec<Record<T>>,
    free_record: u32,
    /// First packed slot with a free line, the one most recently freed into first.
    partial: u32,
    /// Free lines of packed slots: free, but neither in the buddy lists nor cached.
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

/// Positions `j` of a `u64` with `j % 2^order == 0` (`order <= 6`).
#[inline]
fn every(order: u32) -> u64 {
    match order {
        0 => u64::MAX,
        1..=5 => u64::MAX / ((1u64 << (1u32 << order)) - 1),
        _ => 1,
    }
}

/// Lowest line `j` of a slot whose lines are the bits `all`, with `used` held, such that lines
/// `j .. j + count` are free and `j % 2^align_order == residue`.
#[inline(always)]
fn fit(used: u64, all: u64, count: u32, residue: u32, align_order: u32) -> Option<u32> {
    // Bit j of `starts`: lines j .. j + have are free (bits past the slot shift in as 0).
    let (mut starts, mut have) = (!used & all, 1);
    while have < count {
        let step = have.min(count - have);
        starts &= starts >> step;
        have += step;
    }
    starts &= every(align_order) << residue;
    (starts != 0).then(|| starts.trailing_zeros())
}

impl<T> AreaInner<T> {
    /// The allocation hint: the buddy lists' non-empty orders, with order 0 when a packed
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

    /// Slots that are free, in the buddy lists or cached.
    #[inline]
    fn free_slots(&self) -> u32 {
        self.slots.free_slots() + self.cache.slots
    }

    /// Takes `total` slots from a `2^align_order` boundary plus `residue`, ending at or
    /// before slot `last`: from the run cache, else a buddy block, else a buddy block after
    /// the cache and then the spare packed slot are returned to the buddy lists, else a run
    /// spanning several free blocks. `None` with nothing changed but those returns.
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
        // No free block is large enough: a run of free slots spanning several.
        self.slots.alloc_spanning(total, residue, align_order, last)
    }

    /// Gives the spare packed slot (empty) back to the buddy lists.
    #[inline]
    fn release_spare(&mut self) {
        let slot = core::mem::replace(&mut self.spare, NIL);
        self.unlink_partial(slot);
        self.entries[slot as usize] = SlotEntry::Empty;
        self.packed_free -= 1 << self.lines_order;
        self.slots.release(slot, 1);
    }

    /// [`AreaInner::take_slots`] from one buddy block, without the spare packed slot.
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
        // Every free slot into the buddy lists, so the searches below see them all.
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
        // Only part of the area is within reach: a block low enough.
        self.slots.alloc_below(total, residue, align_order, last)
    }

    /// Gives back `count` slots from `first`: to the run cache when it has room for them,
    /// else to the buddy lists.
    #[inline]
    fn give_slots(&mut self, first: u32, count: u32) {
        if !self.cache.put(first, count) {
            self.slots.release(first, count);
        }
    }

    #[inline]
    fn packed(&self, slot: u32) -> &Packed {
        match &self.entries[slot as usize] {
            SlotEntry::Packed(p) => p,
            _ => unreachable!("slot {slot} of the packed list is not packed"),
        }
    }

    #[inline]
    fn packed_mut(&mut self, slot: u32) -> &mut Packed {
        match &mut self.entries[slot as usize] {
            SlotEntry::Packed(p) => p,
            _ => unreachable!("slot {slot} of the packed list is not packed"),
        }
    }

    /// Puts packed slot `slot` at the front of the list of slots with a free line.
    #[inline]
    fn push_partial(&mut self, slot: u32) {
        let head = self.partial;
        if head != NIL {
            self.packed_mut(head).prev = slot;
        }
        let p = self.packed_mut(slot);
        (p.prev, p.next) = (NIL, head);
        self.partial = slot;
    }

    /// Takes packed slot `slot` out of the list of slots with a free line.
    #[inline]
    fn unlink_partial(&mut self, slot: u32) {
        let (prev, next) = {
            let p = self.packed(slot);
            (p.prev, p.next)
        };
        match prev {
            NIL => self.partial = next,
            _ => self.packed_mut(prev).next = next,
        }
        if next != NIL {
            self.packed_mut(next).prev = prev;
        }
    }

    /// The first of `limit` packed slots from `from` in the list (at or before slot
    /// `last`) with room for `count` lines at `residue` modulo `2^align_order`: the slot
    /// and line, or where the search stopped.
    #[inline]
    fn scan_packed(
        &self,
        mut from: u32,
        limit: usize,
        (count, residue, align_order): (u32, u32, u32),
        last: u32,
    ) -> Result<(u32, u32), u32> {
        for _ in 0..limit {
            if from == NIL {
                break;
            }
            let p = self.packed(from);
            if from <= last {
                if let Some(j) = fit(p.used, self.all_lines, count, residue, align_order) {
                    return Ok((from, j));
                }
            }
            from = p.next;
        }
        Err(from)
    }

    /// Finds room for a packed run of `count` lines at `residue` modulo `2^align_order` in
    /// a slot at or before `last`: in a packed slot with free lines (the first few of the
    /// list, then a fresh slot, then the rest of the list). Returns the slot and its first
    /// line; a fresh slot is packed (empty) when this returns. `None` (nothing changed but
    /// the cache's return to the buddy lists) when there is no room or no free record.
    #[inline]
    fn find_packed(
        &mut self,
        count: u32,
        residue: u32,
        align_order: u32,
        last: u32,
    ) -> Option<(u32, u32)> {
        let head = self.partial;
        if self.free_record == NIL {
            return None;
        }
        // The front of the list: the slot most recently freed into (or the spare).
        if head != NIL && head <= last {
            if let Some(j) = fit(
                self.packed(head).used,
                self.all_lines,
                count,
                residue,
                align_order,
            ) {
                return Some((head, j));
            }
        }
        self.find_packed_further(head, (count, residue, align_order), last)
    }

    /// [`AreaInner::find_packed`] past the front of the list.
    #[inline(never)]
    fn find_packed_further(
        &mut self,
        head: u32,
        want: (u32, u32, u32),
        last: u32,
    ) -> Option<(u32, u32)> {
        let next = if head == NIL {
            NIL
        } else {
            self.packed(head).next
        };
        let rest = match self.scan_packed(next, PACKED_SCAN - 1, want, last) {
            Ok(found) => return Some(found),
            Err(rest) => rest,
        };
        let Some(slot) = self.take_slots(1, 0, 0, last) else {
            return self.scan_packed(rest, usize::MAX, want, last).ok();
        };
        let (count, residue, align_order) = want;
        let line = fit(0, self.all_lines, count, residue, align_order)?;
        self.entries[slot as usize] = SlotEntry::Packed(Packed {
            used: 0,
            head: NIL,
            prev: NIL,
            next: NIL,
        });
        self.push_partial(slot);
        self.packed_free += 1 << self.lines_order;
        Some((slot, line))
    }

    /// Stores `live` (of `live.units` lines from `line`) in packed slot `slot`.
    #[inline]
    fn commit_packed(&mut self, slot: u32, line: u32, live: Live<T>) {
        let rec = self.free_record;
        let all = self.all_lines;
        let bits = (u64::MAX >> (64 - live.units)) << line;
        self.packed_free -= live.units;
        self.free_record = self.records[rec as usize].next;
        let p = self.packed_mut(slot);
        let head = core::mem::replace(&mut p.head, rec);
        p.used |= bits;
        let full = p.used == all;
        self.records[rec as usize] = Record {
            live: Some(live),
            next: head,
        };
        if full {
            self.unlink_partial(slot);
        }
        if slot == self.spare {
            self.spare = NIL;
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
    /// holds: whole slots to the run cache or buddy lists; packed lines to their slot,
    /// which goes back as a free slot when no line of it is held any more.
    #[inline]
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

/// An independently locked part of a region, alone on its cache lines.
#[repr(align(128))]
pub(crate) struct Area<T> {
    /// Index, in the region, of the area's first slot (a segment boundary).
    first_slot: u32,
    /// Orders the area may serve, readable without the lock (see [`AreaInner::hint`]);
    /// lets an allocation skip areas that cannot serve it. Only a hint: it is re-checked
    /// under the lock.
    orders_hint: AtomicU32,
    /// Used line units and live allocations, for lock-free statistics.
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
    /// An area of `segments` free segments of `2^segment_order` slots from `first_slot`,
    /// slots of `2^lines_order` line units of `2^unit_shift` bytes. Its metadata is one
    /// entry per slot and, with `packing`, one packed-allocation record per two slots; when
    /// the records are all in use, further packable requests take whole slots.
    pub(crate) fn new(
        first_slot: u32,
        segments: u32,
        segment_order: u32,
        lines_order: u32,
        unit_shift: u32,
        packing: bool,
    ) -> Self {
        let slots = BuddySlots::new(segments, segment_order);
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
            orders_hint: AtomicU32::new(slots.nonempty_orders()),
            counter: AreaCounter::new(),
            inner: Mutex::new(AreaInner {
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
    /// room below `last` even after returning its cached runs to the buddy lists.
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
        let lead_in_freed =
            crate::reintroduce::active(crate::reintroduce::Defect::LeadInSlotsFreed);
        let meta_in = meta.take()?;
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let lo = inner.lines_order;
        if p.lines != 0 {
            // Without the lead-in, the run starts at the bounce address's line.
            let lead = if lead_in_freed {
                p.line_offset >> inner.unit_shift
            } else {
                0
            };
            let units = p.lines - lead;
            if let Some((slot, line)) = inner.find_packed(units, lead, p.line_align_order, last) {
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
    }

    /// Runs `f` on the live allocation whose bounce address sits `offset` bytes into slot
    /// `local`; `None` when there is none (or it is claimed).
    pub(crate) fn with_live<R>(
        &self,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        let mut inner = self.inner.lock();
        let hit = inner.find(local, offset, false)?;
        inner.live_mut(local, hit).map(|l| f(l))
    }

    /// Removes the live allocation whose bounce address is at `local`/`offset` and frees
    /// what it holds, lead-in included (into the run cache when it has room for whole
    /// slots); `None` (nothing changed) when there is none or it is claimed.
    pub(crate) fn free(&self, local: u32, offset: u32) -> Option<Live<T>> {
        let mut guard = self.inner.lock();
        let hit = guard.find(local, offset, false)?;
        let live = guard.remove(local, hit)?;
        self.freed(&guard, &live);
        Some(live)
    }

    /// Claims the live allocation whose bounce address is at `local`/`offset` for the
    /// caller alone and runs `f` on it: until the caller's [`Area::finish`] or
    /// [`Area::unclaim`], lookups, frees and claims of it find nothing, and it keeps what it
    /// holds and stays counted as used and live (so its region cannot be removed). `None`
    /// (nothing changed) when there is no such allocation or it is claimed already.
    pub(crate) fn claim<R>(
        &self,
        local: u32,
        offset: u32,
        f: impl FnOnce(&Live<T>) -> R,
    ) -> Option<R> {
        let mut inner = self.inner.lock();
        let hit = inner.find(local, offset, false)?;
        let live = inner.live_mut(local, hit)?;
        live.claimed = true;
        Some(f(live))
    }

    /// Frees the allocation at `local`/`offset` that the caller claimed, as [`Area::free`]
    /// does; `false` (nothing changed) when there is no such claimed allocation.
    pub(crate) fn finish(&self, local: u32, offset: u32) -> bool {
        let mut guard = self.inner.lock();
        let Some(hit) = guard.find(local, offset, true) else {
            return false;
        };
        let Some(live) = guard.remove(local, hit) else {
            return false;
        };
        self.freed(&guard, &live);
        true
    }

    /// Makes the allocation at `local`/`offset` that the caller claimed live again, as it
    /// was.
    pub(crate) fn unclaim(&self, local: u32, offset: u32) {
        let mut inner = self.inner.lock();
        if let Some(hit) = inner.find(local, offset, true) {
            if let Some(live) = inner.live_mut(local, hit) {
                live.claimed = false;
            }
        }
    }

    /// Counts `live`, just removed, as freed; the caller holds the lock.
    #[inline]
    fn freed(&self, inner: &AreaInner<T>, live: &Live<T>) {
        self.counter.freed(live.units);
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
        let held_slots = inner.slots.len() - inner.free_slots();
        AreaUsage {
            slots: inner.slots.len(),
            used_units: (held_slots << inner.lines_order) - inner.packed_free,
            live: self.counter.live(),
        }
    }

    /// Returns every cached run and the spare packed slot to the buddy lists; for tests.
    #[cfg(test)]
    pub(crate) fn flush_cache(&self) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        if inner.spare != NIL {
            inner.release_spare();
        }
        let slots = &mut inner.slots;
        inner.cache.drain(|s, n| slots.release(s, n));
        self.orders_hint.store(inner.hint(), Ordering::Relaxed);
    }

    /// Slots in the run cache; for tests.
    #[cfg(test)]
    pub(crate) fn cached_slots(&self) -> u32 {
        self.inner.lock().cache.slots
    }

    /// Checks the allocator's invariants: that live allocations, packed slots, cached runs
    /// and free blocks partition the area, that no two live allocations share a line unit,
    /// that the packed list and records are consistent, and that the counters agree; for
    /// tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let inner = self.inner.lock();
        inner.slots.check()?;
        let lo = inner.lines_order;
        let per_slot = 1u32 << lo;
        let all = u64::MAX >> (64 - per_slot);
        let n = inner.slots.len();
        let free_or_cached = |j: u32| inner.slots.is_free(j) || inner.cache.holds(j);
        let mut cached = 0u32;
        for (k, runs) in inner.cache.runs.iter().enumerate() {
            let c = k as u32 + 1;
            for &f in &runs[..inner.cache.depth[k] as usize] {
                if f >> inner.slots.max_order() != (f + c - 1) >> inner.slots.max_order() {
                    return Err(format!("cached run {f}+{c} crosses a segment"));
                }
                for j in f..f + c {
                    if inner.slots.is_free(j)
                        || !matches!(inner.entries[j as usize], SlotEntry::Empty)
                    {
                        return Err(format!("cached slot {j} is also free or live"));
                    }
                }
                cached += c;
            }
        }
        if cached != inner.cache.slots {
            return Err(format!("cache counts {} of {cached}", inner.cache.slots));
        }
        let (mut used, mut live, mut packed_free, mut partial, mut records) =
            (0u32, 0u32, 0u32, 0u32, 0u32);
        let mut held = alloc::vec![false; n as usize];
        let mut hold = |j: u32, what: &str| -> Result<(), alloc::string::String> {
            if free_or_cached(j) {
                return Err(format!("{what} slot {j} is also free"));
            }
            if core::mem::replace(&mut held[j as usize], true) {
                return Err(format!("{what} slot {j} is held twice"));
            }
            Ok(())
        };
        for (i, e) in inner.entries.iter().enumerate() {
            let i = i as u32;
            match e {
                SlotEntry::Empty => {}
                SlotEntry::Whole(l) => {
                    if l.claimed {
                        return Err(format!("run at {i} is still claimed"));
                    }
                    let (first, count) = (l.first >> lo, l.units >> lo);
                    if l.first % per_slot != 0
                        || l.units % per_slot != 0
                        || !(first..first + count).contains(&i)
                    {
                        return Err(format!("run at {i} holds {}+{} units", l.first, l.units));
                    }
                    if first + count > n {
                        return Err(format!("run at {i} leaves the area"));
                    }
                    for j in first..first + count {
                        hold(j, "live")?;
                    }
                    used += l.units;
                    live += 1;
                }
                SlotEntry::Packed(p) => {
                    hold(i, "packed")?;
                    let mut lines = 0u64;
                    let mut rec = p.head;
                    while rec != NIL {
                        let r = &inner.records[rec as usize];
                        let Some(l) = &r.live else {
                            return Err(format!("packed slot {i} chains free record {rec}"));
                        };
                        if l.claimed {
                            return Err(format!("packed run at {i} is still claimed"));
                        }
                        let line = l.first.wrapping_sub(i << lo);
                        if l.units == 0 || line >= per_slot || line + l.units > per_slot {
                            return Err(format!(
                                "packed run {}+{} is not in slot {i}",
                                l.first, l.units
                            ));
                        }
                        let bits = (u64::MAX >> (64 - l.units)) << line;
                        if lines & bits != 0 {
                            return Err(format!("packed runs of slot {i} share a line"));
                        }
                        if (l.offset >> inner.unit_shift) < line
                            || (l.offset as u64 + l.len) > (per_slot as u64) << inner.unit_shift
                        {
                            return Err(format!(
                                "packed bounce at {i}+{} is outside its slot or lines",
                                l.offset
                            ));
                        }
                        lines |= bits;
                        used += l.units;
                        live += 1;
                        records += 1;
                        rec = r.next;
                    }
                    if lines != p.used || (lines == 0) != (inner.spare == i) {
                        return Err(format!(
                            "packed slot {i}: lines {:#x}, records {lines:#x}",
                            p.used
                        ));
                    }
                    packed_free += per_slot - p.used.count_ones();
                    partial += u32::from(p.used != all);
                }
            }
        }
        let mut listed = 0u32;
        let (mut prev, mut s) = (NIL, inner.partial);
        while s != NIL {
            let SlotEntry::Packed(p) = &inner.entries[s as usize] else {
                return Err(format!("listed slot {s} is not packed"));
            };
            if p.prev != prev || p.used == all {
                return Err(format!("packed list broken at {s}"));
            }
            listed += 1;
            (prev, s) = (s, p.next);
        }
        if listed != partial {
            return Err(format!(
                "{listed} listed packed slots of {partial} with a free line"
            ));
        }
        let mut free_records = 0u32;
        let mut r = inner.free_record;
        while r != NIL {
            if inner.records[r as usize].live.is_some() {
                return Err(format!("free record {r} is live"));
            }
            free_records += 1;
            r = inner.records[r as usize].next;
        }
        if free_records + records != inner.records.len() as u32 {
            return Err(format!(
                "{free_records} free + {records} live records of {}",
                inner.records.len()
            ));
        }
        if packed_free != inner.packed_free {
            return Err(format!(
                "packed free lines {} counted {packed_free}",
                inner.packed_free
            ));
        }
        let held_slots = held.iter().filter(|&&h| h).count() as u32;
        if held_slots + inner.free_slots() != n {
            return Err(format!(
                "{held_slots} held + {} free + {cached} cached != {n}",
                inner.slots.free_slots()
            ));
        }
        if used + packed_free + (inner.free_slots() << lo) != n << lo {
            return Err(format!(
                "{used} used + {packed_free} packed free units do not fill the area"
            ));
        }
        if (used, live) != (self.counter.used(), self.counter.live()) {
            return Err(format!(
                "counters say {} units in {} allocations, table {used} in {live}",
                self.counter.used(),
                self.counter.live()
            ));
        }
        if self.counter.allowance() < used {
            return Err(format!("allowance below usage {used}"));
        }
        if self.orders_hint.load(Ordering::Relaxed) != inner.hint() {
            return Err(alloc::string::String::from("stale allocation hint"));
        }
        Ok(())
    }
}
