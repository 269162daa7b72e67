//! The region table: sorted regions, read on every operation, changed only by growth.
//!
//! Readers must not meet on one lock or one shared counter, yet regions can be added and
//! removed while others allocate. The table is a *striped reader lock* (a "big-reader"
//! lock): one copy of the sorted region list per stripe, each behind its own cache-line
//! sized mutex. A reader locks one stripe (chosen from its CPU hint or from the address),
//! which no other CPU touches in the common case, so the read side writes no shared cache
//! line. A writer locks every stripe in index order and updates each copy; writes are rare
//! (pool growth) and may be slow. A `spin::RwLock` would make every reader increment one
//! shared counter, and an RCU-style pointer swap would need `unsafe` or a reclamation
//! scheme; stripes need neither.
//!
//! Lock order: one stripe (readers) or all stripes ascending (writers), then area locks.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::region::Region;
use super::sync::{Mutex, MutexGuard};

/// The sorted list of regions one stripe holds.
pub(crate) type Regions<T> = Vec<Arc<Region<T>>>;

/// One stripe, alone on its cache lines.
#[repr(align(128))]
struct Stripe<T>(Mutex<Regions<T>>);

/// Striped, sorted region table.
pub(crate) struct RegionTable<T> {
    stripes: Box<[Stripe<T>]>,
}

impl<T> RegionTable<T> {
    /// An empty table with `stripes >= 1` stripes.
    pub(crate) fn new(stripes: usize) -> Self {
        let stripes: Vec<Stripe<T>> = (0..stripes.max(1))
            .map(|_| Stripe(Mutex::new(Vec::new())))
            .collect();
        Self {
            stripes: stripes.into_boxed_slice(),
        }
    }

    /// Locks the stripe for `key` (any number; reduced modulo the stripe count) for reading.
    #[inline]
    pub(crate) fn read(&self, key: usize) -> MutexGuard<'_, Regions<T>> {
        self.stripes[key % self.stripes.len()].0.lock()
    }

    /// Locks every stripe, in order, for a change. All copies are identical; a writer reads
    /// the first and must apply the same change to each.
    pub(crate) fn write(&self) -> Vec<MutexGuard<'_, Regions<T>>> {
        self.stripes.iter().map(|s| s.0.lock()).collect()
    }
}

/// Index of the region containing `addr`, by binary search over bases.
#[inline]
pub(crate) fn find<T>(regions: &[Arc<Region<T>>], addr: u64) -> Option<usize> {
    let i = regions.partition_point(|r| r.range().start().as_u64() <= addr);
    let i = i.checked_sub(1)?;
    (addr < regions[i].range().end().as_u64()).then_some(i)
}
