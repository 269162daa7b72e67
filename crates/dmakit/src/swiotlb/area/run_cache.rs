//! The run cache of an area: freed small runs kept for reuse (see the parent module).

use super::{CACHE_DEPTH, CACHE_MAX_SLOTS};

/// Freed runs kept for reuse, by size; see the module documentation.
///
/// Invariant: `runs[c - 1][..depth[c - 1]]` are the first slots of disjoint free runs of
/// `c` slots, each inside one segment, newest last; `slots` is their total size. The slot
/// allocator counts these slots as handed out.
pub(super) struct RunCache {
    pub(super) runs: [[u32; CACHE_DEPTH]; CACHE_MAX_SLOTS as usize],
    pub(super) depth: [u8; CACHE_MAX_SLOTS as usize],
    pub(super) slots: u32,
}

impl RunCache {
    pub(super) fn new() -> Self {
        Self {
            runs: [[0; CACHE_DEPTH]; CACHE_MAX_SLOTS as usize],
            depth: [0; CACHE_MAX_SLOTS as usize],
            slots: 0,
        }
    }

    /// Takes the newest cached run of `count` slots whose first slot is `lead` modulo
    /// `2^align_order`.
    #[inline]
    pub(super) fn take(&mut self, count: u32, lead: u32, align_order: u32) -> Option<u32> {
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
    pub(super) fn put(&mut self, first: u32, count: u32) -> bool {
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
    pub(super) fn drain(&mut self, mut f: impl FnMut(u32, u32)) {
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
    pub(super) fn holds(&self, i: u32) -> bool {
        self.runs.iter().enumerate().any(|(k, runs)| {
            runs[..self.depth[k] as usize]
                .iter()
                .any(|&f| (f..f + k as u32 + 1).contains(&i))
        })
    }
}
