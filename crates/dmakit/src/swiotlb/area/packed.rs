//! Packed slots of an area: slots cut into line units shared by small bounces (see the
//! parent module's "Packed slots"), their records, and the list of those with room.

use super::{AreaInner, Live};

/// No slot, record or list entry.
pub(super) const NIL: u32 = u32::MAX;
/// Packed slots with a free line tried, from the front of the list, before a fresh slot
/// is cut; the rest of the list is searched only when no fresh slot is left.
const PACKED_SCAN: usize = 4;

/// What a slot's entry holds.
pub(super) enum SlotEntry<T> {
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
/// the area's spare; the slot is in the area's list of packed slots with a free line
/// (`prev`/`next`) exactly when `used` is not every line.
pub(super) struct Packed {
    pub(super) used: u64,
    /// First record of its allocations.
    pub(super) head: u32,
    pub(super) prev: u32,
    pub(super) next: u32,
}

/// A packed allocation, or a free record.
pub(super) struct Record<T> {
    pub(super) live: Option<Live<T>>,
    /// Next record of the same slot, or of the free list.
    pub(super) next: u32,
}

/// Where a live allocation's entry is.
#[derive(Clone, Copy)]
pub(super) enum Hit {
    /// In its slot's entry.
    Whole,
    /// In record `rec`, which follows record `prev` (or the slot's head, when `NIL`).
    Record { rec: u32, prev: u32 },
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

/// Lowest line `j` of a slot whose lines are the bits `all`, with `used` held, such that
/// lines `j .. j + count` are free and `j % 2^align_order == residue`.
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
    /// Packed slot `slot` (which must be one: every caller got it from the list or an
    /// entry it checked).
    #[inline]
    pub(super) fn packed(&self, slot: u32) -> &Packed {
        match &self.entries[slot as usize] {
            SlotEntry::Packed(p) => p,
            _ => unreachable!("slot {slot} of the packed list is not packed"),
        }
    }

    /// Packed slot `slot`, to change (see [`AreaInner::packed`]).
    #[inline]
    pub(super) fn packed_mut(&mut self, slot: u32) -> &mut Packed {
        match &mut self.entries[slot as usize] {
            SlotEntry::Packed(p) => p,
            _ => unreachable!("slot {slot} of the packed list is not packed"),
        }
    }

    /// Puts packed slot `slot` at the front of the list of slots with a free line.
    #[inline]
    pub(super) fn push_partial(&mut self, slot: u32) {
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
    pub(super) fn unlink_partial(&mut self, slot: u32) {
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
    pub(super) fn scan_packed(
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
    /// the cache's return to the slot allocator) when there is no room or no free record.
    #[inline]
    pub(super) fn find_packed(
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
    pub(super) fn find_packed_further(
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
        // Where the run goes in a fresh slot, found before the slot is taken, so no slot is
        // ever taken for a run that cannot fit it.
        let (count, residue, align_order) = want;
        let line = fit(0, self.all_lines, count, residue, align_order)?;
        let Some(slot) = self.take_slots(1, 0, 0, last) else {
            return self.scan_packed(rest, usize::MAX, want, last).ok();
        };
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
    pub(super) fn commit_packed(&mut self, slot: u32, line: u32, live: Live<T>) {
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

    /// Gives the spare packed slot (empty) back to the slot allocator.
    #[inline]
    pub(super) fn release_spare(&mut self) {
        let slot = core::mem::replace(&mut self.spare, NIL);
        self.unlink_partial(slot);
        self.entries[slot as usize] = SlotEntry::Empty;
        self.packed_free -= 1 << self.lines_order;
        self.slots.release(slot, 1);
    }
}
