//! The slot allocator of one area: a binary buddy allocator over slot indices.
//!
//! Why buddy: the pool must place runs of slots at a given alignment (for `min_align_mask`
//! and page alignment) and never across a segment, in time that does not depend on the pool
//! size or how full it is. A buddy allocator gives exactly that: blocks are naturally
//! aligned to their size, a segment is one block of the largest order (so no block ever
//! crosses a segment, and merging stops there), and allocation and release touch one free
//! list per order, O(orders) = O(log2 slots-per-segment), 7 steps with the defaults.
//! TLSF would also be O(1) but handles alignment by over-allocation and search, which is
//! what the buddy layout gives for free.
//!
//! To keep usage at slot granularity, an allocation takes the smallest aligned block that
//! covers the request and immediately gives back the slots in front of and behind the run
//! it uses (split into aligned blocks, merged with their buddies as usual). A run of `n`
//! slots therefore costs `n` slots, not the next power of two.
//!
//! The pool's bounces ask for their lead-in too (the slots from the aligned boundary to
//! the bounce address belong to the bounce, see `area.rs`), so they call `alloc` with a
//! `lead` of 0 and a `count` that includes the lead-in: only the tail is given back. The
//! `lead` parameter places a run off the boundary for callers that do not hold the lead-in.
//!
//! The price of alignment: a run of `count` slots aligned to a large `min_align_mask`
//! needs a free block of at least `2^align_order` slots, so a fragmented area can refuse it
//! while enough scattered slots are free. The pool then tries the other areas and
//! regions, and reports exhaustion only when none can serve.
//!
//! When no free block is large enough, a run may still fit across several free blocks (a
//! fragmented area can hold 3 free slots as a block of 1 and a block of 2). Each allocation
//! and free keeps a bitmap of handed-out slots and a free count per segment, so
//! [`BuddySlots::alloc_spanning`] can find the lowest such run at the required alignment
//! and cut it out of the blocks it spans; it is the slow path, taken only when the buddy
//! lists refuse.
//!
//! Free lists are intrusive: `next`/`prev` index arrays with one entry per slot, used only
//! at the head slot of a free block. Nothing is allocated after construction.

use alloc::vec;
use alloc::vec::Vec;

/// Largest block order: segments have at most `2^MAX_ORDER` slots.
pub(crate) const MAX_ORDER: u32 = 16;

const NIL: u32 = u32::MAX;
/// `head_order` value of a slot that is not the head of a free block.
const NOT_HEAD: u8 = u8::MAX;

/// Buddy allocator over `segments << max_order` slots.
///
/// Invariant: `head_order[i] == k` exactly when slot `i` heads a free block of `2^k` slots
/// linked in list `k`; `nonempty` has bit `k` set exactly when list `k` is not empty;
/// `free` is the number of slots in free blocks. Free blocks never overlap and never cross
/// a segment.
pub(crate) struct BuddySlots {
    max_order: u32,
    heads: [u32; MAX_ORDER as usize + 1],
    next: Vec<u32>,
    prev: Vec<u32>,
    head_order: Vec<u8>,
    /// Bit `i % 64` of word `i / 64` set when slot `i` is handed out (not in a free block).
    used: Vec<u64>,
    /// Free slots of each segment, so a search for a run skips segments without room.
    segment_free: Vec<u32>,
    /// An upper bound of the longest run of free slots of each segment: exact after a
    /// search went through the segment without finding a run, the segment size again once
    /// slots of it are released (handing slots out only shortens runs). A search skips
    /// segments whose bound is too short, so repeated searches of a fragmented area cost a
    /// compare per segment and a scan of only the segments that changed.
    segment_run: Vec<u32>,
    nonempty: u32,
    free: u32,
}

/// Smallest `k` with `2^k >= n`, for `n >= 1`.
#[inline]
pub(crate) fn order_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl BuddySlots {
    /// An allocator with every slot free. `segments << max_order` must fit in a `u32` below
    /// `u32::MAX` and `max_order <= MAX_ORDER` (the pool checks both).
    pub(crate) fn new(segments: u32, max_order: u32) -> Self {
        debug_assert!(max_order <= MAX_ORDER);
        let len = (segments as usize) << max_order;
        let mut s = Self {
            max_order,
            heads: [NIL; MAX_ORDER as usize + 1],
            next: vec![NIL; len],
            prev: vec![NIL; len],
            head_order: vec![NOT_HEAD; len],
            used: vec![0; len.div_ceil(64)],
            segment_free: vec![1 << max_order; segments as usize],
            segment_run: vec![1 << max_order; segments as usize],
            nonempty: 0,
            free: 0,
        };
        // Push in reverse so the lowest segment is handed out first.
        for seg in (0..segments).rev() {
            s.push(seg << max_order, max_order);
        }
        s.free = segments << max_order;
        s
    }

    /// Slots managed.
    #[inline]
    pub(crate) fn len(&self) -> u32 {
        self.next.len() as u32
    }

    /// Slots currently free.
    #[inline]
    pub(crate) fn free_slots(&self) -> u32 {
        self.free
    }

    /// Bit `k` set when a free block of order `k` exists; a request for order `o` can be
    /// served exactly when `nonempty_orders() >> o != 0`.
    #[inline]
    pub(crate) fn nonempty_orders(&self) -> u32 {
        self.nonempty
    }

    /// Order of the block `alloc` takes for `count` slots starting `lead` slots into a block
    /// aligned to `2^align_order` slots; `None` when it exceeds a segment.
    #[inline]
    pub(crate) fn block_order(&self, count: u32, lead: u32, align_order: u32) -> Option<u32> {
        let need = lead.checked_add(count)?;
        let o = order_for(need).max(align_order);
        (o <= self.max_order).then_some(o)
    }

    /// Allocates `count >= 1` contiguous slots whose first index is congruent to `lead`
    /// modulo `2^align_order` (`lead < 2^align_order`, or `align_order == 0` and
    /// `lead == 0`), inside one segment. Returns the first index, or `None` (nothing
    /// changed) when no free block is large enough.
    pub(crate) fn alloc(&mut self, count: u32, lead: u32, align_order: u32) -> Option<u32> {
        if count == 0 {
            return None;
        }
        let order = self.block_order(count, lead, align_order)?;
        let block = self.take(order)?;
        let size = 1u32 << order;
        self.release_range(block, lead);
        self.release_range(block + lead + count, size - lead - count);
        self.handed_out(block + lead, count);
        Some(block + lead)
    }

    /// As [`BuddySlots::alloc`] with the run ending at or before slot `last`, for when no
    /// free block is large enough but a run of free slots spanning several blocks may be:
    /// searches the used-slot bitmap for the lowest such run inside one segment (skipping
    /// segments whose free count or longest-run bound is too small; the rest cost a word
    /// operation per 64 slots and per run of used slots) and cuts it out of the blocks it
    /// spans. `None` (nothing changed) when there is no such run.
    pub(crate) fn alloc_spanning(
        &mut self,
        count: u32,
        lead: u32,
        align_order: u32,
        last: u32,
    ) -> Option<u32> {
        if count == 0 || count > self.free || count > 1 << self.max_order {
            return None;
        }
        let start = self.find_run(count, lead, align_order, last)?;
        let end = start + count;
        let mut p = start;
        while p < end {
            let (head, k) = self.block_containing(p)?;
            self.unlink(head, k);
            let block_end = head + (1 << k);
            // Only the first and last blocks stick out of the run; what sticks out is
            // freed again (its buddies lie inside its own block, none of it free now).
            self.release_range(head, p - head);
            if block_end > end {
                self.release_range(end, block_end - end);
            }
            p = block_end;
        }
        self.handed_out(start, count);
        Some(start)
    }

    /// The lowest `r` with `r % 2^align_order == lead`, slots `r .. r + count` free and in
    /// one segment, and `r + count - 1 <= last`: the free runs of each segment with at
    /// least `count` free slots, in address order.
    fn find_run(&mut self, count: u32, lead: u32, align_order: u32, last: u32) -> Option<u32> {
        let align = 1u32 << align_order;
        for seg in 0..self.segment_free.len() {
            if self.segment_free[seg] < count || self.segment_run[seg] < count {
                continue;
            }
            let (start, end) = (
                (seg as u32) << self.max_order,
                (seg as u32 + 1) << self.max_order,
            );
            let (mut at, mut longest) = (start, 0);
            while at < end {
                // The next free run [a, b) of the segment.
                let Some(a) = self.next_bit(at, false).filter(|&a| a < end) else {
                    break;
                };
                let b = self.next_bit(a, true).map_or(end, |b| b.min(end));
                let r = a + (lead.wrapping_sub(a) & (align - 1));
                if r.checked_add(count - 1)? > last {
                    return None;
                }
                if r + count <= b {
                    return Some(r);
                }
                longest = longest.max(b - a);
                at = b;
            }
            self.segment_run[seg] = longest;
        }
        None
    }

    /// The first slot at or after `from` whose used bit is `set`.
    fn next_bit(&self, from: u32, set: bool) -> Option<u32> {
        let mut i = (from / 64) as usize;
        let flip = if set { 0 } else { u64::MAX };
        let mut word = (self.used.get(i)? ^ flip) & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let bit = i as u32 * 64 + word.trailing_zeros();
                return (bit < self.len()).then_some(bit);
            }
            i += 1;
            word = self.used.get(i)? ^ flip;
        }
    }

    /// The free block `(head, order)` containing slot `i`.
    fn block_containing(&self, i: u32) -> Option<(u32, u32)> {
        (0..=self.max_order).find_map(|k| {
            let head = i & !((1 << k) - 1);
            (self.head_order[head as usize] == k as u8).then_some((head, k))
        })
    }

    /// Marks `count` slots from `start` (inside one segment) handed out.
    #[inline]
    fn handed_out(&mut self, start: u32, count: u32) {
        self.mark(start, count, true);
        self.segment_free[(start >> self.max_order) as usize] -= count;
        self.free -= count;
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

    /// As [`BuddySlots::alloc`], with the run ending at or before slot `last`. Walks the
    /// free lists for a block low enough, so it costs O(free blocks) instead of
    /// O(orders): for an area only part of which a device reaches.
    pub(crate) fn alloc_below(
        &mut self,
        count: u32,
        lead: u32,
        align_order: u32,
        last: u32,
    ) -> Option<u32> {
        if count == 0 {
            return None;
        }
        let order = self.block_order(count, lead, align_order)?;
        // The latest block start whose run still ends by `last`.
        let latest = last.checked_sub(lead + count - 1)?;
        for mut k in order..=self.max_order {
            let mut idx = self.heads[k as usize];
            while idx != NIL && idx > latest {
                idx = self.next[idx as usize];
            }
            if idx == NIL {
                continue;
            }
            self.unlink(idx, k);
            // Keep the low half: the block still starts at `idx`.
            while k > order {
                k -= 1;
                self.push(idx + (1 << k), k);
            }
            let size = 1u32 << order;
            self.release_range(idx, lead);
            self.release_range(idx + lead + count, size - lead - count);
            self.handed_out(idx + lead, count);
            return Some(idx + lead);
        }
        None
    }

    /// Returns `count` slots from `start` that an earlier `alloc` handed out. The caller
    /// guarantees they are allocated (the area checks that against its live table).
    pub(crate) fn release(&mut self, start: u32, count: u32) {
        self.release_range(start, count);
        self.mark(start, count, false);
        let seg = (start >> self.max_order) as usize;
        self.segment_free[seg] += count;
        self.segment_run[seg] = 1 << self.max_order;
        self.free += count;
    }

    fn push(&mut self, idx: u32, order: u32) {
        let head = self.heads[order as usize];
        self.next[idx as usize] = head;
        self.prev[idx as usize] = NIL;
        if head != NIL {
            self.prev[head as usize] = idx;
        }
        self.heads[order as usize] = idx;
        self.head_order[idx as usize] = order as u8;
        self.nonempty |= 1 << order;
    }

    fn unlink(&mut self, idx: u32, order: u32) {
        let (p, n) = (self.prev[idx as usize], self.next[idx as usize]);
        if p == NIL {
            self.heads[order as usize] = n;
        } else {
            self.next[p as usize] = n;
        }
        if n != NIL {
            self.prev[n as usize] = p;
        }
        self.head_order[idx as usize] = NOT_HEAD;
        if self.heads[order as usize] == NIL {
            self.nonempty &= !(1 << order);
        }
    }

    /// Removes a free block of exactly `order`, splitting a larger one if needed.
    fn take(&mut self, order: u32) -> Option<u32> {
        let avail = self.nonempty & !((1u32 << order) - 1);
        if avail == 0 {
            return None;
        }
        let mut k = avail.trailing_zeros();
        let idx = self.heads[k as usize];
        self.unlink(idx, k);
        while k > order {
            k -= 1;
            self.push(idx + (1 << k), k);
        }
        Some(idx)
    }

    /// Frees the aligned block `idx` of `2^order` slots, merging with free buddies up to a
    /// whole segment.
    fn release_block(&mut self, mut idx: u32, mut order: u32) {
        while order < self.max_order {
            let buddy = idx ^ (1 << order);
            if self.head_order[buddy as usize] != order as u8 {
                break;
            }
            self.unlink(buddy, order);
            idx &= !(1 << order);
            order += 1;
        }
        self.push(idx, order);
    }

    /// Frees an arbitrary run inside one segment as maximal aligned blocks.
    fn release_range(&mut self, mut start: u32, mut count: u32) {
        while count > 0 {
            let align = start.trailing_zeros().min(self.max_order);
            let fit = 31 - count.leading_zeros();
            let k = align.min(fit);
            self.release_block(start, k);
            start += 1 << k;
            count -= 1 << k;
        }
    }

    /// Checks every invariant; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        use alloc::format;
        let mut covered = vec![false; self.next.len()];
        let mut total = 0u32;
        for k in 0..=MAX_ORDER {
            let mut i = self.heads[k as usize];
            let mut prev = NIL;
            if (i != NIL) != (self.nonempty & (1 << k) != 0) {
                return Err(format!("nonempty bit {k} wrong"));
            }
            while i != NIL {
                if k > self.max_order || i % (1 << k) != 0 {
                    return Err(format!("block {i} misaligned for order {k}"));
                }
                if self.prev[i as usize] != prev || self.head_order[i as usize] != k as u8 {
                    return Err(format!("block {i} links or head wrong"));
                }
                for j in i..i + (1 << k) {
                    if core::mem::replace(&mut covered[j as usize], true) {
                        return Err(format!("slot {j} in two free blocks"));
                    }
                }
                total += 1 << k;
                prev = i;
                i = self.next[i as usize];
            }
        }
        let heads = self.head_order.iter().filter(|&&h| h != NOT_HEAD).count();
        let listed = (0..=MAX_ORDER)
            .map(|k| {
                let mut n = 0;
                let mut i = self.heads[k as usize];
                while i != NIL {
                    n += 1;
                    i = self.next[i as usize];
                }
                n
            })
            .sum::<usize>();
        if heads != listed {
            return Err(format!("{heads} head marks but {listed} listed blocks"));
        }
        if total != self.free {
            return Err(format!("free count {} but lists hold {total}", self.free));
        }
        for (j, &free) in covered.iter().enumerate() {
            if (self.used[j / 64] >> (j % 64)) & 1 == u64::from(free) {
                return Err(format!("used bit of slot {j} wrong"));
            }
        }
        for (seg, &n) in self.segment_free.iter().enumerate() {
            let slots = (seg << self.max_order)..((seg + 1) << self.max_order);
            let free = covered[slots].iter().filter(|&&f| f).count() as u32;
            if n != free {
                return Err(format!("segment {seg} counts {n} free slots of {free}"));
            }
            let (mut run, mut longest) = (0u32, 0u32);
            for &f in &covered[(seg << self.max_order)..((seg + 1) << self.max_order)] {
                run = if f { run + 1 } else { 0 };
                longest = longest.max(run);
            }
            if self.segment_run[seg] < longest {
                return Err(format!(
                    "segment {seg} bounds its longest free run {longest} by {}",
                    self.segment_run[seg]
                ));
            }
        }
        Ok(())
    }

    /// Order of a segment; for tests.
    #[cfg(test)]
    pub(crate) fn max_order(&self) -> u32 {
        self.max_order
    }

    /// Whether slot `i` lies in a free block; for tests.
    #[cfg(test)]
    pub(crate) fn is_free(&self, i: u32) -> bool {
        (0..=self.max_order).any(|k| {
            let head = i & !((1 << k) - 1);
            self.head_order[head as usize] == k as u8
        })
    }
}
