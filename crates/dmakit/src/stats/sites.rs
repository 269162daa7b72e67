//! Bounces by call site: the driver line that asked for each bounced mapping.
//!
//! Public mapping entry points are `#[track_caller]`, so the caller's
//! `core::panic::Location` is known without walking the stack. Sites live in a fixed
//! open-addressed table keyed by the location's address (locations are `'static`), claimed
//! with one compare-and-swap the first time a site bounces: no lock, no allocation.

use core::panic::Location;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use alloc::boxed::Box;
use alloc::vec::Vec;

/// How many distinct call sites are tracked; bounces from further sites are counted as
/// untracked.
pub const MAX_TRACKED_SITES: usize = 1024;

/// Bounces attributed to one call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteStats {
    /// Where the mapping was requested.
    pub location: &'static Location<'static>,
    /// Bounced mappings requested there.
    pub bounces: u64,
    /// Bytes of those mappings.
    pub bytes: u64,
    /// This site's share of all tracked bounces, in parts per million.
    pub share_ppm: u64,
    /// Whether the share is above the mapper's suggestion threshold: the allocation behind
    /// this mapping should be made a DMA buffer (line aligned) so it stops bouncing.
    pub suggest_dma_alloc: bool,
}

impl SiteStats {
    /// `file:line:column`.
    pub fn site(&self) -> alloc::string::String {
        alloc::format!(
            "{}:{}:{}",
            self.location.file(),
            self.location.line(),
            self.location.column()
        )
    }
}

struct Entry {
    key: AtomicPtr<Location<'static>>,
    bounces: AtomicU64,
    bytes: AtomicU64,
}

pub(crate) struct SiteTable {
    entries: Box<[Entry]>,
    untracked: AtomicU64,
}

impl SiteTable {
    pub(crate) fn new() -> Self {
        Self {
            entries: (0..MAX_TRACKED_SITES)
                .map(|_| Entry {
                    key: AtomicPtr::new(core::ptr::null_mut()),
                    bounces: AtomicU64::new(0),
                    bytes: AtomicU64::new(0),
                })
                .collect(),
            untracked: AtomicU64::new(0),
        }
    }

    /// A table that records nothing (statistics off).
    pub(crate) fn disabled() -> Self {
        Self {
            entries: Box::new([]),
            untracked: AtomicU64::new(0),
        }
    }

    pub(crate) fn record(&self, site: &'static Location<'static>, bytes: u64) {
        if self.entries.is_empty() {
            return;
        }
        let key = site as *const Location<'static> as *mut Location<'static>;
        let start = (key as usize >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) % MAX_TRACKED_SITES;
        for i in 0..MAX_TRACKED_SITES {
            let e = &self.entries[(start + i) % MAX_TRACKED_SITES];
            let k = e.key.load(Ordering::Acquire);
            let mine = k == key
                || (k.is_null()
                    && match e.key.compare_exchange(
                        core::ptr::null_mut(),
                        key,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => true,
                        Err(other) => other == key,
                    });
            if mine {
                e.bounces.fetch_add(1, Ordering::Relaxed);
                e.bytes.fetch_add(bytes, Ordering::Relaxed);
                return;
            }
        }
        self.untracked.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// The `n` sites with most bounces, most first (ties by file and line), with their share
    /// and whether it reaches `suggest_ppm`.
    pub(crate) fn top(&self, n: usize, suggest_ppm: u64) -> Vec<SiteStats> {
        let mut all: Vec<SiteStats> = self
            .entries
            .iter()
            .filter_map(|e| {
                let k = e.key.load(Ordering::Acquire);
                // SAFETY: non-null keys are only ever stored from `&'static Location`
                // references in `record`, so they point to live, immutable locations.
                let location: &'static Location<'static> = unsafe { k.as_ref() }?;
                Some(SiteStats {
                    location,
                    bounces: e.bounces.load(Ordering::Relaxed),
                    bytes: e.bytes.load(Ordering::Relaxed),
                    share_ppm: 0,
                    suggest_dma_alloc: false,
                })
            })
            .collect();
        let total: u64 = all.iter().map(|s| s.bounces).sum::<u64>() + self.untracked();
        for s in all.iter_mut() {
            s.share_ppm = (s.bounces as u128 * 1_000_000 / (total.max(1) as u128)) as u64;
            s.suggest_dma_alloc = s.share_ppm >= suggest_ppm;
        }
        all.sort_by(|a, b| {
            b.bounces
                .cmp(&a.bounces)
                .then_with(|| a.location.file().cmp(b.location.file()))
                .then_with(|| a.location.line().cmp(&b.location.line()))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn here() -> &'static Location<'static> {
        Location::caller()
    }

    #[test]
    fn ranks_sites_and_suggests_the_hot_one() {
        let t = SiteTable::new();
        let (hot, cold) = (here(), here());
        for _ in 0..90 {
            t.record(hot, 13);
        }
        for _ in 0..10 {
            t.record(cold, 100);
        }
        let top = t.top(5, 500_000);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].location, hot);
        assert_eq!((top[0].bounces, top[0].bytes), (90, 90 * 13));
        assert_eq!(top[0].share_ppm, 900_000);
        assert!(top[0].suggest_dma_alloc && !top[1].suggest_dma_alloc);
        assert!(top[0].site().contains("sites.rs"));
        assert_eq!(t.top(1, 0).len(), 1);
    }
}
