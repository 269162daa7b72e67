//! Non-overlapping address ranges, each with a value, found by any address they cover: how
//! the oracle finds the tracked allocations a store, a device access or a check touches.
//!
//! Values are kept by start address in a hash map; an index lists, for every 4 KiB page,
//! the ranges overlapping it in address order, so the ranges overlapping an access are
//! found with one index lookup per page it spans and a binary search, whatever the number
//! of ranges. Ranges longer than [`LONG_PAGES`] pages are listed apart, not per page, so
//! inserting one costs no more than inserting a short one. Address order, where asked for
//! (the starts before or after an address), comes from an ordered set kept only on request
//! ([`RangeMap::keep_order`]).

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

/// log2 of the index's page size.
const PAGE_SHIFT: u32 = 12;

/// Ranges spanning more pages than this are not indexed per page.
const LONG_PAGES: u64 = 64;

/// Queries spanning more pages than this look at every range instead of the index.
const WIDE_QUERY_PAGES: u64 = 4096;

/// A range `[start, end)`.
type Span = (u64, u64);

/// Non-overlapping, non-empty ranges with values. See the [module docs](self).
pub(crate) struct RangeMap<V> {
    values: FxHashMap<u64, (u64, V)>,
    /// Page number → the short ranges overlapping that page, ascending (by start, hence
    /// also by end, as ranges do not overlap).
    pages: FxHashMap<u64, Vec<Span>>,
    /// The long ranges, ascending.
    long: Vec<Span>,
    /// Every start, when [`RangeMap::keep_order`] asked for them in order.
    ordered: Option<BTreeSet<u64>>,
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        Self {
            values: FxHashMap::default(),
            pages: FxHashMap::default(),
            long: Vec::new(),
            ordered: None,
        }
    }
}

/// The pages `[a, b)` (non-empty) overlaps, first and last.
fn page_span(a: u64, b: u64) -> (u64, u64) {
    (a >> PAGE_SHIFT, (b - 1) >> PAGE_SHIFT)
}

/// Pushes the starts of the ranges of `sorted` overlapping `[a, b)` onto `out`, ascending,
/// skipping one equal to the last start already there.
fn push_overlapping(sorted: &[Span], a: u64, b: u64, out: &mut Vec<u64>) {
    let from = sorted.partition_point(|&(_, e)| e <= a);
    for &(s, _) in sorted[from..].iter().take_while(|&&(s, _)| s < b) {
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
}

/// Where `span` goes in `sorted`, or is.
fn position(sorted: &[Span], start: u64) -> Result<usize, usize> {
    sorted.binary_search_by_key(&start, |&(s, _)| s)
}

impl<V> RangeMap<V> {
    /// Number of ranges.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// The value of the range starting at `start`.
    pub(crate) fn get(&self, start: u64) -> Option<&V> {
        self.values.get(&start).map(|(_, v)| v)
    }

    /// The value of the range starting at `start`, to change.
    pub(crate) fn get_mut(&mut self, start: u64) -> Option<&mut V> {
        self.values.get_mut(&start).map(|(_, v)| v)
    }

    fn is_long(start: u64, end: u64) -> bool {
        let (p0, p1) = page_span(start, end);
        p1 - p0 >= LONG_PAGES
    }

    /// Adds `[start, end)` with `value`. The caller guarantees the range is non-empty and
    /// overlaps none already there ([`RangeMap::first_overlapping`] is `None`).
    pub(crate) fn insert(&mut self, start: u64, end: u64, value: V) {
        debug_assert!(start < end && self.first_overlapping(start, end).is_none());
        self.values.insert(start, (end, value));
        if let Some(o) = &mut self.ordered {
            o.insert(start);
        }
        if Self::is_long(start, end) {
            let at = position(&self.long, start).unwrap_or_else(|i| i);
            self.long.insert(at, (start, end));
            return;
        }
        let (p0, p1) = page_span(start, end);
        for p in p0..=p1 {
            let bucket = self.pages.entry(p).or_default();
            let at = position(bucket, start).unwrap_or_else(|i| i);
            bucket.insert(at, (start, end));
        }
    }

    /// Removes the range starting at `start` and returns its value.
    pub(crate) fn remove(&mut self, start: u64) -> Option<V> {
        let (end, value) = self.values.remove(&start)?;
        if let Some(o) = &mut self.ordered {
            o.remove(&start);
        }
        if Self::is_long(start, end) {
            if let Ok(at) = position(&self.long, start) {
                self.long.remove(at);
            }
            return Some(value);
        }
        let (p0, p1) = page_span(start, end);
        for p in p0..=p1 {
            if let Some(bucket) = self.pages.get_mut(&p) {
                if let Ok(at) = position(bucket, start) {
                    bucket.remove(at);
                }
            }
        }
        Some(value)
    }

    /// The starts of the ranges overlapping `[a, b)`, ascending, into `out` (cleared first;
    /// nothing for an empty query).
    pub(crate) fn overlapping(&self, a: u64, b: u64, out: &mut Vec<u64>) {
        out.clear();
        if b <= a {
            return;
        }
        let (p0, p1) = page_span(a, b);
        if p1 - p0 > WIDE_QUERY_PAGES {
            out.extend(
                self.values
                    .iter()
                    .filter(|(&s, &(e, _))| s < b && e > a)
                    .map(|(&s, _)| s),
            );
            out.sort_unstable();
            return;
        }
        for p in p0..=p1 {
            if let Some(bucket) = self.pages.get(&p) {
                push_overlapping(bucket, a, b, out);
            }
        }
        let short = out.len();
        push_overlapping(&self.long, a, b, out);
        if short > 0 && out.len() > short {
            out.sort_unstable();
        }
    }

    /// The start of some range overlapping `[a, b)`, if any (`None` for an empty query).
    pub(crate) fn first_overlapping(&self, a: u64, b: u64) -> Option<u64> {
        if b <= a {
            return None;
        }
        let first_in = |sorted: &[Span]| {
            let from = sorted.partition_point(|&(_, e)| e <= a);
            sorted.get(from).filter(|&&(s, _)| s < b).map(|&(s, _)| s)
        };
        let (p0, p1) = page_span(a, b);
        if p1 - p0 > WIDE_QUERY_PAGES {
            return self
                .values
                .iter()
                .find(|(&s, &(e, _))| s < b && e > a)
                .map(|(&s, _)| s);
        }
        (p0..=p1)
            .find_map(|p| self.pages.get(&p).and_then(|bucket| first_in(bucket)))
            .or_else(|| first_in(&self.long))
    }

    /// Every start, ascending.
    pub(crate) fn starts(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.values.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Keeps the starts in order from now on, for [`RangeMap::starts_before`] and
    /// [`RangeMap::starts_from`].
    pub(crate) fn keep_order(&mut self) {
        if self.ordered.is_none() {
            self.ordered = Some(self.values.keys().copied().collect());
        }
    }

    /// The starts below `at`, descending. Empty unless [`RangeMap::keep_order`] was asked.
    pub(crate) fn starts_before(&self, at: u64) -> impl Iterator<Item = u64> + '_ {
        self.ordered
            .iter()
            .flat_map(move |o| o.range(..at).rev().copied())
    }

    /// The starts at or above `at`, ascending. Empty unless [`RangeMap::keep_order`] was
    /// asked.
    pub(crate) fn starts_from(&self, at: u64) -> impl Iterator<Item = u64> + '_ {
        self.ordered
            .iter()
            .flat_map(move |o| o.range(at..).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(m: &RangeMap<u32>, a: u64, b: u64) -> Vec<u64> {
        let mut v = Vec::new();
        m.overlapping(a, b, &mut v);
        v
    }

    /// The ranges overlapping `[a, b)` by brute force.
    fn brute(ranges: &[(u64, u64)], a: u64, b: u64) -> Vec<u64> {
        let mut v: Vec<u64> = ranges
            .iter()
            .filter(|&&(s, e)| s < b && e > a)
            .map(|&(s, _)| s)
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn finds_short_spanning_and_long_ranges_in_order() {
        let mut m = RangeMap::default();
        // Small objects in one page, one crossing into the next, a long one, one after.
        let ranges = [
            (0x1000, 0x1008),
            (0x1008, 0x1010),
            (0x1ff0, 0x2010),
            (0x3000, 0x3000 + 100 * 4096),
            (0x3000 + 100 * 4096, 0x3000 + 100 * 4096 + 8),
        ];
        for (i, &(s, e)) in ranges.iter().enumerate() {
            assert_eq!(m.first_overlapping(s, e), None);
            m.insert(s, e, i as u32);
        }
        assert_eq!(m.len(), 5);
        for (a, b) in [
            (0, 0x1_0000_0000),
            (0x1004, 0x100c),
            (0x1fff, 0x2001),
            (0x2010, 0x3001),
            (0x50000, 0x50001),
            (0x3000 + 100 * 4096 - 1, 0x3000 + 100 * 4096 + 1),
            (0x1010, 0x1ff0),
            (0x1008, 0x1008),
        ] {
            assert_eq!(found(&m, a, b), brute(&ranges, a, b), "[{a:#x}, {b:#x})");
        }
        assert_eq!(m.first_overlapping(0x1009, 0x100a), Some(0x1008));
        assert_eq!(m.get(0x1ff0), Some(&2));
        assert_eq!(m.remove(0x1ff0), Some(2));
        assert_eq!(m.remove(0x3000), Some(3));
        assert_eq!(m.remove(0x3000), None);
        let left = [ranges[0], ranges[1], ranges[4]];
        for (a, b) in [(0, 0x1_0000_0000), (0x1fff, 0x2001), (0x3000, 0x4000)] {
            assert_eq!(found(&m, a, b), brute(&left, a, b));
        }
        assert_eq!(m.starts(), vec![0x1000, 0x1008, 0x3000 + 100 * 4096]);
    }

    #[test]
    fn ordered_neighbours_only_on_request() {
        let mut m = RangeMap::default();
        for s in [0x100u64, 0x200, 0x300] {
            m.insert(s, s + 0x10, ());
        }
        assert_eq!(m.starts_before(0x300).count(), 0);
        m.keep_order();
        m.insert(0x400, 0x410, ());
        assert_eq!(m.starts_before(0x300).collect::<Vec<_>>(), [0x200, 0x100]);
        assert_eq!(m.starts_from(0x300).collect::<Vec<_>>(), [0x300, 0x400]);
        m.remove(0x200);
        assert_eq!(m.starts_before(0x300).collect::<Vec<_>>(), [0x100]);
    }
}
