//! The free space of an IOVA allocator: disjoint, coalesced ranges in tables whose room is
//! allocated when the domain is created.
//!
//! Range-cache misses (first use, sizes above the cached orders, exhaustion) and cache
//! flushes reach this table on map and unmap paths, in interrupt context, so it never
//! allocates: the ranges live in two [`FixedMap`]s, one by start and one by power-of-two
//! length class (so a search looks at a few candidates of the right class instead of every
//! range).
//!
//! **Capacity.** Every page of the space is either free here or in a range this table
//! handed out and has not got back ("out": live, cached, or waiting in a flush queue).
//! Free ranges are coalesced, so between two of them lies at least one page of an out
//! range: free ranges ≤ out + 1. The table refuses an allocation that would make `out`
//! exceed `max_out`, so with room for `max_out + 1` ranges no insert can fail, and a range
//! coming back is never lost. [`super::iova::IovaAllocator`] sets `max_out` to its live
//! bound plus everything its caches can hold.

use crate::fixed_table::FixedMap;

/// Candidates looked at in a length class that may or may not fit, before moving on to the
/// classes that surely fit.
const PROBES: usize = 8;

/// `floor(log2(n))` for `n > 0`.
const fn floor_log2(n: u64) -> u32 {
    63 - n.leading_zeros()
}

/// Why [`FreeRanges::alloc`] found nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No free range holds the block.
    NoRoom,
    /// `max_out` ranges are out already, or (after frees that broke the contract) the
    /// table has no room for another free range.
    TableFull,
}

/// The free space: disjoint, coalesced `[start, end)` ranges, by start and by length class.
pub(crate) struct FreeRanges {
    /// Start → end.
    by_start: FixedMap<u64, u64>,
    /// (length class, start).
    by_class: FixedMap<(u8, u64), ()>,
    /// Ranges per length class.
    class_len: [u32; 64],
    /// Bit `c`: class `c` holds a range.
    nonempty: u64,
    free_pages: u64,
    /// Ranges handed out and not given back.
    out: usize,
    max_out: usize,
}

impl FreeRanges {
    /// All of `first..=last` free, with room for the free ranges of at most `max_out` ranges
    /// out at once. Allocates: call outside atomic context.
    pub(crate) fn new(first: u64, last: u64, max_out: usize) -> Self {
        let room = max_out.saturating_add(1);
        let mut t = Self {
            by_start: FixedMap::with_capacity(room),
            by_class: FixedMap::with_capacity(room),
            class_len: [0; 64],
            nonempty: 0,
            free_pages: 0,
            out: 0,
            max_out: room - 1,
        };
        t.insert(first, last + 1);
        t
    }

    /// Pages free.
    pub(crate) fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Disjoint free ranges.
    pub(crate) fn ranges(&self) -> usize {
        self.by_start.len()
    }

    fn insert(&mut self, start: u64, end: u64) {
        let c = floor_log2(end - start);
        // Within the room reserved at creation (see the module docs): never refused.
        let put = self.by_start.insert(start, end).is_ok()
            && self.by_class.insert((c as u8, start), ()).is_ok();
        debug_assert!(put, "free-range table overflow");
        self.class_len[c as usize] += 1;
        self.nonempty |= 1 << c;
        self.free_pages += end - start;
    }

    fn remove(&mut self, start: u64, end: u64) {
        let c = floor_log2(end - start);
        self.by_start.remove(&start);
        self.by_class.remove(&(c as u8, start));
        self.class_len[c as usize] -= 1;
        if self.class_len[c as usize] == 0 {
            self.nonempty &= !(1 << c);
        }
        self.free_pages -= end - start;
    }

    /// Where an aligned block of `n` pages fits top down in `[start, end)` at or below
    /// `limit`.
    fn fit(start: u64, end: u64, n: u64, align: u64, limit: u64) -> Option<u64> {
        let top = end.min(limit.saturating_add(1));
        let at = top.checked_sub(n)? & !(align - 1);
        (at >= start).then_some(at)
    }

    fn try_class(
        &self,
        c: u32,
        n: u64,
        align: u64,
        limit: u64,
        probes: usize,
    ) -> Option<(u64, u64, u64)> {
        self.by_class
            .at_or_below_rev(&(c as u8, limit))
            .take_while(|&((class, _), _)| u32::from(class) == c)
            .take(probes)
            .find_map(|((_, s), _)| {
                let e = *self.by_start.get(&s)?;
                Self::fit(s, e, n, align, limit).map(|at| (s, e, at))
            })
    }

    /// Takes an aligned block of `n` pages at or below `limit`: a free range of about that
    /// size first (best fit), else the highest placement. Nothing changes when refused.
    pub(crate) fn alloc(&mut self, n: u64, align: u64, limit: u64) -> Result<u64, Refusal> {
        if self.out >= self.max_out {
            return Err(Refusal::TableFull);
        }
        let min_class = floor_log2(n);
        // A free range of at least n + align - 1 pages holds an aligned block anywhere.
        let sure = (n - 1)
            .checked_add(align)
            .and_then(u64::checked_next_power_of_two)
            .map_or(64, u64::trailing_zeros);
        let mut found = None;
        // Classes that may fit: a few candidates each (best fit first).
        for c in min_class..sure.min(64) {
            if self.nonempty & (1 << c) != 0 {
                found = self.try_class(c, n, align, limit, PROBES);
                if found.is_some() {
                    break;
                }
            }
        }
        // Classes that surely fit below the limit: at most two candidates each (the one
        // straddling the limit may not have room under it; the next lower one does), and
        // the highest placement among the classes wins, keeping low addresses free for
        // devices with small masks.
        if found.is_none() {
            let mut rest = if sure >= 64 {
                0
            } else {
                self.nonempty >> sure << sure
            };
            while rest != 0 {
                let c = rest.trailing_zeros();
                rest &= rest - 1;
                if let Some(f) = self.try_class(c, n, align, limit, 2) {
                    if found.is_none_or(|(_, _, at)| f.2 > at) {
                        found = Some(f);
                    }
                }
            }
        }
        // Near exhaustion: every candidate of the uncertain classes.
        if found.is_none() {
            for c in min_class..sure.min(64) {
                if self.nonempty & (1 << c) != 0 {
                    found = self.try_class(c, n, align, limit, usize::MAX);
                    if found.is_some() {
                        break;
                    }
                }
            }
        }
        let (s, e, at) = found.ok_or(Refusal::NoRoom)?;
        if at > s && at + n < e && !self.has_room() {
            // Only after frees that broke the contract (see `free`).
            return Err(Refusal::TableFull);
        }
        self.remove(s, e);
        if at > s {
            self.insert(s, at);
        }
        if at + n < e {
            self.insert(at + n, e);
        }
        self.out += 1;
        Ok(at)
    }

    /// Whether one more free range fits.
    fn has_room(&self) -> bool {
        self.by_start.len() < self.by_start.capacity()
    }

    /// Gives `[start, end)` back, coalescing it with its free neighbours. Nothing changes
    /// when refused.
    ///
    /// # Errors
    /// [`Refusal::NoRoom`] when the range overlaps free space; [`Refusal::TableFull`] when
    /// it would be a new free range and the table is full, which only frees of ranges
    /// other than those handed out (parts of one, say) can bring about.
    pub(crate) fn free(&mut self, start: u64, end: u64) -> Result<(), Refusal> {
        let pred = self.by_start.at_or_below(&start).map(|(s, &e)| (s, e));
        let succ = self.by_start.above(&start).map(|(s, &e)| (s, e));
        if pred.is_some_and(|(_, e)| e > start) || succ.is_some_and(|(s, _)| s < end) {
            return Err(Refusal::NoRoom);
        }
        let touches = pred.is_some_and(|(_, e)| e == start) || succ.is_some_and(|(s, _)| s == end);
        if !touches && !self.has_room() {
            return Err(Refusal::TableFull);
        }
        let (mut lo, mut hi) = (start, end);
        if let Some((s, e)) = pred.filter(|&(_, e)| e == start) {
            self.remove(s, e);
            lo = s;
        }
        if let Some((s, e)) = succ.filter(|&(s, _)| s == end) {
            self.remove(s, e);
            hi = e;
        }
        self.insert(lo, hi);
        self.out = self.out.saturating_sub(1);
        Ok(())
    }
}
