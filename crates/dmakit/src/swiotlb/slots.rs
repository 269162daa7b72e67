//! The slot allocator of one area: best fit over the free runs of each segment.
//!
//! Why best fit: the pool serves requests from one slot to a whole segment out of the same
//! slots, and what refuses a long request is free space cut into short runs. Taking each
//! request from the shortest free run that holds it keeps long runs whole for long requests
//! even when the area is nearly full (on the benchmark stream, `BENCHMARKS.md`, a binary
//! buddy allocator with the same slots refused 17 % of requests at 90 % held, best fit
//! under 1 %). A buddy allocator looks only at aligned power-of-two blocks, so a 3-slot request
//! split a 4-slot block out of a long run while an exact 3-slot run stood free elsewhere.
//!
//! How: the area's free slots form maximal free runs, none crossing a segment (runs are
//! cut at segment boundaries and never merged across them, so no allocation crosses one:
//! devices with a segment boundary mask rely on that). Each run is listed in a size class
//! (`classes.rs`, two-level segregated fit as in TLSF: classes a power of two apart split
//! into eight), and its first and last slots record its length and start, so a freed run
//! merges with its free neighbours in O(1). An allocation of `count` slots at a residue
//! modulo `2^align_order`:
//!
//! 1. looks at up to [`FIT_TRIES`] runs in the classes from `count`'s up to the class from
//!    which every run holds the request wherever it starts (`count + 2^align_order - 1`
//!    slots), shortest class first, and takes the first that holds it;
//! 2. else takes the first run of the first non-empty class from there on, which holds it.
//!
//! Both steps cost O(classes) bit operations and at most [`FIT_TRIES`] run checks, whatever
//! the pool size or how full it is. They miss a run only when it is shorter than `count +
//! 2^align_order - 1`, lies past the runs looked at in step 1, and no longer run exists;
//! [`SlotRuns::alloc_within`] then searches every listed run (O(free runs)), on the slow
//! path the area takes before refusing. The run is cut on a boundary of the request's
//! power of two where the free run holds it there (so equal large requests tile a segment
//! as buddy blocks did, see [`SlotRuns::alloc`]), else at its first slot with the right
//! residue; what lies before and after it goes back into the lists.
//!
//! The pool's bounces ask for their lead-in too (the slots from the aligned boundary to the
//! bounce address belong to the bounce, see `area.rs`), so they allocate from the boundary
//! (a residue of 0), and the whole run is theirs.
//!
//! A bitmap of handed-out slots tells a freed run whether its neighbours are free, and a
//! free count per segment is kept for the checks. Nothing is allocated after construction.

mod classes;

use alloc::vec;
use alloc::vec::Vec;

use classes::{class_at_least, class_of, ClassLists, NIL};

/// Largest segment order: segments have at most `2^MAX_ORDER` slots.
pub(crate) const MAX_ORDER: u32 = 16;

/// Runs an allocation looks at, in classes whose runs may be too short for it depending on
/// where they start, before it takes a run that holds it wherever it starts.
pub(crate) const FIT_TRIES: u32 = 8;

/// Slot allocator over `segments << max_order` slots.
///
/// Invariant: the free slots are the disjoint maximal runs listed in `lists` (each in the
/// class of its length, inside one segment, with a used slot or a segment boundary on each
/// side); `run_len[i]` is the length of the run starting at `i` and 0 for every other slot;
/// `run_start[j]` is the first slot of the run ending at `j` when one does; a slot's bit in
/// `used` is set exactly when it is in no run; `free` and `segment_free` count free slots.
pub(crate) struct SlotRuns {
    max_order: u32,
    lists: ClassLists,
    run_len: Vec<u32>,
    run_start: Vec<u32>,
    /// Bit `i % 64` of word `i / 64` set when slot `i` is handed out (in no free run).
    used: Vec<u64>,
    segment_free: Vec<u32>,
    free: u32,
}

impl SlotRuns {
    /// An allocator with every slot free. `segments << max_order` must fit in a `u32` below
    /// `u32::MAX` and `max_order <= MAX_ORDER` (the pool checks both).
    pub(crate) fn new(segments: u32, max_order: u32) -> Self {
        debug_assert!(max_order <= MAX_ORDER);
        let len = (segments as usize) << max_order;
        let mut s = Self {
            max_order,
            lists: ClassLists::new(len),
            run_len: vec![0; len],
            run_start: vec![NIL; len],
            used: vec![0; len.div_ceil(64)],
            segment_free: vec![1 << max_order; segments as usize],
            free: segments << max_order,
        };
        // In reverse, so the lowest segment is handed out first.
        for seg in (0..segments).rev() {
            s.insert(seg << max_order, 1 << max_order);
        }
        s
    }

    /// Slots managed.
    #[inline]
    pub(crate) fn len(&self) -> u32 {
        self.run_len.len() as u32
    }

    /// Slots currently free.
    #[inline]
    pub(crate) fn free_slots(&self) -> u32 {
        self.free
    }

    /// Bit `k` set when a free run of `2^k ..= 2^(k+1) - 1` slots exists: a request of
    /// `count` slots can be served only when a bit at or above `floor(log2 count)` is set.
    #[inline]
    pub(crate) fn nonempty_orders(&self) -> u32 {
        self.lists.fl_map()
    }

    /// Allocates `count >= 1` contiguous slots whose first index is congruent to `lead`
    /// modulo `2^align_order` (`lead < 2^align_order`), inside one segment, from the
    /// shortest run that the bounded search of the module documentation finds, placed in it
    /// as `fit` says. Returns the
    /// first index, or `None` (nothing changed) when that search finds no run; it finds one
    /// whenever a free run of `count + 2^align_order - 1` slots exists.
    #[inline]
    pub(crate) fn alloc(&mut self, count: u32, lead: u32, align_order: u32) -> Option<u32> {
        if count == 0 || count > self.free || count > 1 << self.max_order {
            return None;
        }
        let align = 1u32 << align_order;
        let sure = class_at_least(count + align - 1);
        let mut class = self.lists.first_from(class_of(count));
        let mut tries = FIT_TRIES;
        while let Some(c) = class.filter(|&c| c < sure) {
            let mut i = self.lists.head(c);
            while i != NIL && tries > 0 {
                if let Some(r) = self.fit(i, count, lead, align, u32::MAX) {
                    return Some(self.cut(i, r, count));
                }
                tries -= 1;
                i = self.lists.next(i);
            }
            if tries == 0 {
                break;
            }
            class = self.lists.first_after(c);
        }
        let head = self.lists.head(self.lists.first_from(sure)?);
        let r = self.fit(head, count, lead, align, u32::MAX)?;
        Some(self.cut(head, r, count))
    }

    /// As [`SlotRuns::alloc`] with the run ending at or before slot `last`, from the
    /// shortest free run that holds it (the lowest first among runs as short): searches
    /// every listed run at least `count` long, O(free runs). For when the bounded search
    /// found nothing, and for an area only part of which a device reaches. `None` (nothing
    /// changed) when no free run holds it.
    pub(crate) fn alloc_within(
        &mut self,
        count: u32,
        lead: u32,
        align_order: u32,
        last: u32,
    ) -> Option<u32> {
        if count == 0 || count > self.free || count > 1 << self.max_order {
            return None;
        }
        let align = 1u32 << align_order;
        let mut best: Option<(u32, u32, u32)> = None;
        let mut class = self.lists.first_from(class_of(count));
        while let Some(c) = class {
            let mut i = self.lists.head(c);
            while i != NIL {
                if let Some(r) = self.fit(i, count, lead, align, last) {
                    let key = (self.run_len[i as usize], r);
                    if best.is_none_or(|(n, b, _)| key < (n, b)) {
                        best = Some((key.0, key.1, i));
                    }
                }
                i = self.lists.next(i);
            }
            class = self.lists.first_after(c);
        }
        let (_, r, head) = best?;
        Some(self.cut(head, r, count))
    }

    /// Where in the free run at `head` a run of `count` slots at `lead` modulo `align`,
    /// ending at or before slot `last`, starts, if the free run holds it: on a boundary of
    /// `count`'s power of two (plus `lead`) when the free run holds it there, else at the
    /// first slot with the right residue. The boundary makes equal large runs tile a
    /// segment as buddy blocks do: slots that are free but kept out of the lists for a while
    /// (the area's run cache and spare packed slot) then leave whole aligned gaps when they
    /// come back, not pieces of one at each end.
    #[inline]
    fn fit(&self, head: u32, count: u32, lead: u32, align: u32, last: u32) -> Option<u32> {
        let end = (head + self.run_len[head as usize]).min(last.saturating_add(1));
        let r = head + (lead.wrapping_sub(head) & (align - 1));
        if r.checked_add(count)? > end {
            return None;
        }
        let natural = count.next_power_of_two();
        if natural > align {
            let on_boundary = head + (lead.wrapping_sub(head) & (natural - 1));
            if on_boundary + count <= end {
                return Some(on_boundary);
            }
        }
        Some(r)
    }

    /// Hands out `count` slots from `r` of the free run at `head`, which holds them; what
    /// lies before and after goes back into the lists.
    #[inline]
    fn cut(&mut self, head: u32, r: u32, count: u32) -> u32 {
        let end = head + self.run_len[head as usize];
        self.remove(head);
        if r > head {
            self.insert(head, r - head);
        }
        if end > r + count {
            self.insert(r + count, end - r - count);
        }
        self.mark(r, count, true);
        self.segment_free[(r >> self.max_order) as usize] -= count;
        self.free -= count;
        r
    }

    /// Returns `count` slots from `start` that an allocation handed out, merged with the
    /// free runs next to them inside their segment. The caller guarantees they are handed
    /// out (the area checks that against its live table).
    pub(crate) fn release(&mut self, start: u32, count: u32) {
        let seg_mask = (1u32 << self.max_order) - 1;
        let (mut a, end) = (start, start + count);
        let mut b = end;
        if start & seg_mask != 0 && !self.is_used(start - 1) {
            a = self.run_start[start as usize - 1];
            self.remove(a);
        }
        if end & seg_mask != 0 && !self.is_used(end) {
            b = end + self.run_len[end as usize];
            self.remove(end);
        }
        self.insert(a, b - a);
        self.mark(start, count, false);
        self.segment_free[(start >> self.max_order) as usize] += count;
        self.free += count;
    }

    /// Lists the free run of `n >= 1` slots at `a`.
    #[inline]
    fn insert(&mut self, a: u32, n: u32) {
        self.run_len[a as usize] = n;
        self.run_start[(a + n - 1) as usize] = a;
        self.lists.push(a, n);
    }

    /// Takes the free run at `a` off its list.
    #[inline]
    fn remove(&mut self, a: u32) {
        let n = core::mem::replace(&mut self.run_len[a as usize], 0);
        self.lists.unlink(a, n);
    }

    #[inline]
    fn is_used(&self, i: u32) -> bool {
        self.used[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Sets (or clears) the used bits of `count` slots from `start`.
    #[inline]
    fn mark(&mut self, start: u32, count: u32, used: bool) {
        let (mut i, end) = (start, start + count);
        while i < end {
            let bit = i % 64;
            let n = (64 - bit).min(end - i);
            let bits = (u64::MAX >> (64 - n)) << bit;
            let word = &mut self.used[(i / 64) as usize];
            if used {
                *word |= bits;
            } else {
                *word &= !bits;
            }
            i += n;
        }
    }

    /// Checks every invariant; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let seg = 1u32 << self.max_order;
        let mut covered = vec![false; self.run_len.len()];
        let mut total = 0u32;
        let listed = self.lists.listed()?;
        for &(a, c) in &listed {
            let n = self.run_len[a as usize];
            if n == 0 || class_of(n) != c {
                return Err(format!("run {a} of {n} slots listed in class {c:?}"));
            }
            let end = a + n;
            if a / seg != (end - 1) / seg {
                return Err(format!("run {a} of {n} slots crosses a segment"));
            }
            if self.run_start[(end - 1) as usize] != a {
                return Err(format!("run {a} of {n} slots: its last slot names another"));
            }
            if (a % seg != 0 && !self.is_used(a - 1)) || (end % seg != 0 && !self.is_used(end)) {
                return Err(format!("run {a} of {n} slots has a free neighbour"));
            }
            for j in a..end {
                if core::mem::replace(&mut covered[j as usize], true) {
                    return Err(format!("slot {j} in two runs"));
                }
            }
            total += n;
        }
        let heads = self.run_len.iter().filter(|&&n| n != 0).count();
        if heads != listed.len() {
            return Err(format!(
                "{heads} run lengths but {} listed runs",
                listed.len()
            ));
        }
        if total != self.free {
            return Err(format!("free count {} but runs hold {total}", self.free));
        }
        for (j, &free) in covered.iter().enumerate() {
            if self.is_used(j as u32) == free {
                return Err(format!("used bit of slot {j} wrong"));
            }
        }
        for (s, &n) in self.segment_free.iter().enumerate() {
            let slots = (s << self.max_order)..((s + 1) << self.max_order);
            let free = covered[slots].iter().filter(|&&f| f).count() as u32;
            if n != free {
                return Err(format!("segment {s} counts {n} free slots of {free}"));
            }
        }
        Ok(())
    }

    /// The size class of a free run of `n` slots, ordered as the lengths they list; for
    /// tests.
    #[cfg(test)]
    pub(crate) fn class_of_len(n: u32) -> (u32, u32) {
        class_of(n)
    }

    /// Order of a segment; for tests.
    #[cfg(test)]
    pub(crate) fn max_order(&self) -> u32 {
        self.max_order
    }

    /// Whether slot `i` lies in a free run; for tests.
    #[cfg(test)]
    pub(crate) fn is_free(&self, i: u32) -> bool {
        !self.is_used(i)
    }
}
