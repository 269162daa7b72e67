//! Usage accounting: pool-wide counters kept with atomics, per-area usage read on demand.
//!
//! The pool-wide counters are updated once per allocation and free (one atomic add, plus
//! one `fetch_max` for the high-water mark on allocation) and read without any lock, so a
//! snapshot is a handful of loads.

use super::sync::{AtomicUsize, Ordering};
use crate::addr::PhysAddr;

/// A snapshot of pool-wide usage. Fields are read one by one without a lock, so while
/// other threads allocate they may come from slightly different instants; when the pool is
/// quiescent they are exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Bytes of all regions.
    pub total_bytes: u64,
    /// Bytes of slots held by live allocations (slot granularity).
    pub used_bytes: u64,
    /// Highest `used_bytes` ever reached.
    pub high_water_bytes: u64,
    /// Live allocations.
    pub live: u64,
    /// Regions.
    pub regions: usize,
}

/// Usage of one area of one region, read under the area's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AreaStats {
    /// Base of the region the area belongs to.
    pub region: PhysAddr,
    /// Index of the area inside its region.
    pub index: usize,
    /// First byte of the area.
    pub start: PhysAddr,
    /// Bytes of the area.
    pub total_bytes: u64,
    /// Bytes of slots held by live allocations.
    pub used_bytes: u64,
    /// Live allocations.
    pub live: u64,
}

/// Pool-wide counters, in slots.
pub(crate) struct Counters {
    total: AtomicUsize,
    used: AtomicUsize,
    high_water: AtomicUsize,
    live: AtomicUsize,
    regions: AtomicUsize,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            total: AtomicUsize::new(0),
            used: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            regions: AtomicUsize::new(0),
        }
    }

    pub(crate) fn allocated(&self, slots: usize) {
        let now = self.used.fetch_add(slots, Ordering::Relaxed) + slots;
        self.high_water.fetch_max(now, Ordering::Relaxed);
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn freed(&self, slots: usize) {
        self.used.fetch_sub(slots, Ordering::Relaxed);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn region_added(&self, slots: usize) {
        self.total.fetch_add(slots, Ordering::Relaxed);
        self.regions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn region_removed(&self, slots: usize) {
        self.total.fetch_sub(slots, Ordering::Relaxed);
        self.regions.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn used_slots(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub(crate) fn total_slots(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn snapshot(&self, slot_shift: u32) -> PoolStats {
        PoolStats {
            total_bytes: (self.total.load(Ordering::Relaxed) as u64) << slot_shift,
            used_bytes: (self.used.load(Ordering::Relaxed) as u64) << slot_shift,
            high_water_bytes: (self.high_water.load(Ordering::Relaxed) as u64) << slot_shift,
            live: self.live.load(Ordering::Relaxed) as u64,
            regions: self.regions.load(Ordering::Relaxed),
        }
    }
}
