//! Bounces by call site: the driver line that asked for each bounced mapping.
//!
//! Public mapping entry points are `#[track_caller]`, so the caller's
//! `core::panic::Location` is known without walking the stack. Sites live in a fixed
//! open-addressed table keyed by the location's address (locations are `'static`), claimed
//! with one compare-and-swap the first time a site bounces: no lock, no allocation; after that
//! a bounce adds to its site's counters without a locked instruction
//! (`stats::per_cpu_add`).

use core::panic::Location;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::per_cpu_add;

/// How many distinct call sites are tracked; bounces from further sites are counted as
/// untracked.
pub(crate) const MAX_TRACKED_SITES: usize = 1024;

/// The share of all bounces, in parts per million, from which a call site gets the
/// "make this allocation a DMA buffer" suggestion unless the mapper is told otherwise
/// (`DmaMapperBuilder::site_suggestion_threshold`): a tenth.
pub const DEFAULT_SUGGEST_PPM: u64 = 100_000;

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

/// One CPU's table, alone on its cache lines.
#[repr(align(128))]
struct Stripe {
    entries: Box<[Entry]>,
    untracked: AtomicU64,
}

impl Stripe {
    fn new() -> Self {
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

    fn record(&self, site: &'static Location<'static>, bytes: u64) {
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
                per_cpu_add(&e.bounces, 1);
                per_cpu_add(&e.bytes, bytes);
                return;
            }
        }
        per_cpu_add(&self.untracked, 1);
    }
}

/// Per-site counters, one table per CPU (so CPUs bouncing from the same driver line write
/// different cache lines), merged when read.
pub(crate) struct SiteTable {
    stripes: Box<[Stripe]>,
}

impl SiteTable {
    /// A table with one stripe per CPU (rounded up to a power of two), at most 16.
    pub(crate) fn new(cpus: usize) -> Self {
        Self {
            stripes: (0..cpus.clamp(1, 16).next_power_of_two())
                .map(|_| Stripe::new())
                .collect(),
        }
    }

    /// A table that records nothing (statistics off).
    pub(crate) fn disabled() -> Self {
        Self {
            stripes: Box::new([]),
        }
    }

    pub(crate) fn record(&self, cpu: usize, site: &'static Location<'static>, bytes: u64) {
        let n = self.stripes.len();
        if n > 0 {
            // `n` is a power of two.
            self.stripes[cpu & (n - 1)].record(site, bytes);
        }
    }

    pub(crate) fn untracked(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.untracked.load(Ordering::Relaxed))
            .sum()
    }

    /// The `n` sites with most bounces, most first (ties by file and line), with their share
    /// and whether it reaches `suggest_ppm`.
    pub(crate) fn top(&self, n: usize, suggest_ppm: u64) -> Vec<SiteStats> {
        // Keyed by the location's address: one row per site across the stripes.
        let mut merged: BTreeMap<usize, SiteStats> = BTreeMap::new();
        for e in self.stripes.iter().flat_map(|s| s.entries.iter()) {
            let k = e.key.load(Ordering::Acquire);
            // SAFETY: non-null keys are only ever stored from `&'static Location`
            // references in `Stripe::record`, so they point to live, immutable locations.
            let Some(location) = (unsafe { k.as_ref() }) else {
                continue;
            };
            let (bounces, bytes) = (
                e.bounces.load(Ordering::Relaxed),
                e.bytes.load(Ordering::Relaxed),
            );
            let row = merged.entry(k as usize).or_insert(SiteStats {
                location,
                bounces: 0,
                bytes: 0,
                share_ppm: 0,
                suggest_dma_alloc: false,
            });
            row.bounces += bounces;
            row.bytes += bytes;
        }
        let mut all: Vec<SiteStats> = merged.into_values().collect();
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
        let t = SiteTable::new(4);
        let (hot, cold) = (here(), here());
        for i in 0..90 {
            t.record(i, hot, 13);
        }
        for i in 0..10 {
            t.record(i, cold, 100);
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
