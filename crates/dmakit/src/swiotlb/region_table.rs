//! The region table: sorted regions, read on every operation, changed only by growth; and
//! the locks of the areas.
//!
//! Readers must not meet on one lock or one shared counter, yet regions can be added and
//! removed while others allocate. The table is a *striped reader lock* (a "big-reader"
//! lock): one copy of the sorted region list per stripe, each behind its own cache-line
//! sized mutex. A reader locks one stripe, which no other CPU touches in the common case,
//! so the read side writes no shared cache line. A writer locks every stripe in index order
//! and updates each copy; writes are rare (pool growth) and may be slow. A `spin::RwLock`
//! would make every reader increment one shared counter, and an RCU-style pointer swap
//! would need `unsafe` or a reclamation scheme; stripes need neither.
//!
//! One stripe per area index, and stripe `i` is also the lock of area `i` of every region:
//! an area's state is reached only through a [`StripeKey`] of its index, which only a
//! locked stripe hands out. So an operation takes one lock where it would otherwise take
//! two (the stripe that keeps its region alive, then the area): an allocation locks its
//! CPU's stripe (the CPU hint is the area it starts in), a lookup by address the stripe of
//! the area owning the address. A CPU that allocates and frees in its own area keeps to its
//! own stripe, and a writer, holding every stripe, holds every area.
//!
//! To find that area, and to answer "is this address in the pool" without any lock, the
//! table also keeps a [`Directory`]: the bounds of up to [`DIRECTORY_REGIONS`] regions,
//! published by writers under a sequence counter (a seqlock made of atomics only). A reader
//! loads the counter, the bounds, and the counter again; if nothing changed in between its
//! answer is the table's state at that instant. A reader that meets a writer, or a pool
//! with more regions, falls back to locking a stripe: the directory is a fast path only,
//! never the authority for anything a lock protects.
//!
//! Lock order: one stripe (readers) or all stripes ascending (writers), then the
//! statistics' grant lock. A reader takes another stripe only after releasing its own;
//! under the grant lock, other stripes are only tried (`try_lock`), never waited for.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use super::region::Region;
use super::stripe_key::StripeKey;
use super::sync::{fence, AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// The sorted list of regions one stripe holds.
pub(crate) type Regions<T> = Vec<Entry<T>>;

/// A region in a stripe's list, alone on its cache lines: the lists are read on every
/// operation, and a small heap block could otherwise share a line with data other CPUs
/// write.
#[repr(align(128))]
pub(crate) struct Entry<T>(pub(crate) Arc<Region<T>>);

impl<T> core::ops::Deref for Entry<T> {
    type Target = Region<T>;

    #[inline]
    fn deref(&self) -> &Region<T> {
        &self.0
    }
}

/// Regions the lock-free directory describes; a pool with more uses the stripes for every
/// lookup.
pub(crate) const DIRECTORY_REGIONS: usize = 8;

/// One stripe, alone on its cache lines.
#[repr(align(128))]
struct Stripe<T>(Mutex<Regions<T>>);

/// What the directory says about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The region `[start, start + len)` contained the address.
    In { start: u64, len: u64 },
    /// No region contained the address.
    Outside,
    /// No consistent answer (a writer was active, or too many regions): lock a stripe.
    Unknown,
}

/// Lock-free copy of the regions' bounds, sorted by base.
#[repr(align(128))]
struct Directory {
    /// Even when stable, odd while a writer updates the bounds.
    seq: AtomicUsize,
    /// Regions described, or `usize::MAX` when there are more than fit.
    count: AtomicUsize,
    start: [AtomicU64; DIRECTORY_REGIONS],
    len: [AtomicU64; DIRECTORY_REGIONS],
}

impl Directory {
    fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            count: AtomicUsize::new(0),
            start: core::array::from_fn(|_| AtomicU64::new(0)),
            len: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Republishes the bounds of `regions`. Writers are serialized by the stripe locks.
    fn publish<T>(&self, regions: &[Entry<T>]) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd counter before the bound stores below (pairs with the reader's
        // acquire fence).
        fence(Ordering::Release);
        if regions.len() > DIRECTORY_REGIONS {
            self.count.store(usize::MAX, Ordering::Relaxed);
        } else {
            for (i, r) in regions.iter().enumerate() {
                self.start[i].store(r.range().start().as_u64(), Ordering::Relaxed);
                self.len[i].store(r.range().len(), Ordering::Relaxed);
            }
            self.count.store(regions.len(), Ordering::Relaxed);
        }
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    fn lookup(&self, addr: u64) -> Lookup {
        let seq = self.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return Lookup::Unknown;
        }
        let count = self.count.load(Ordering::Relaxed);
        if count > DIRECTORY_REGIONS {
            return Lookup::Unknown;
        }
        let mut found = Lookup::Outside;
        for i in 0..count {
            let start = self.start[i].load(Ordering::Relaxed);
            if addr < start {
                break;
            }
            let len = self.len[i].load(Ordering::Relaxed);
            if addr - start < len {
                found = Lookup::In { start, len };
                break;
            }
        }
        // Orders the loads above before the counter check (pairs with the writer's release
        // fence): an unchanged counter means no store of a writer was seen.
        fence(Ordering::Acquire);
        if self.seq.load(Ordering::Relaxed) != seq {
            return Lookup::Unknown;
        }
        found
    }
}

/// A locked stripe: its copy of the region list, and the key to the areas of its index.
pub(crate) struct Held<'a, T> {
    regions: MutexGuard<'a, Regions<T>>,
    key: StripeKey,
}

impl<T> Held<'_, T> {
    /// The region list and the key, borrowed together.
    #[inline]
    pub(crate) fn split(&mut self) -> (&Regions<T>, &mut StripeKey) {
        (&self.regions, &mut self.key)
    }

    /// The key to the areas of this stripe's index.
    #[inline]
    pub(crate) fn key(&mut self) -> &mut StripeKey {
        &mut self.key
    }
}

impl<T> core::ops::Deref for Held<'_, T> {
    type Target = Regions<T>;

    #[inline]
    fn deref(&self) -> &Regions<T> {
        &self.regions
    }
}

/// Striped, sorted region table.
pub(crate) struct RegionTable<T> {
    stripes: Box<[Stripe<T>]>,
    directory: Directory,
}

/// Every stripe, locked for a change; republishes the directory when dropped.
pub(crate) struct WriteGuard<'a, T> {
    stripes: Vec<MutexGuard<'a, Regions<T>>>,
    directory: &'a Directory,
}

impl<'a, T> WriteGuard<'a, T> {
    /// The first copy (all are identical).
    pub(crate) fn first(&self) -> &Regions<T> {
        &self.stripes[0]
    }

    /// Applies `f` to every copy.
    pub(crate) fn update(&mut self, mut f: impl FnMut(&mut Regions<T>)) {
        for stripe in self.stripes.iter_mut() {
            f(stripe);
        }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.directory.publish(&self.stripes[0]);
        // Unlock in the reverse order of locking, so each stripe restores the interrupt
        // state it saved only after every stripe locked after it is released.
        while self.stripes.pop().is_some() {}
    }
}

impl<T> RegionTable<T> {
    /// An empty table with `stripes >= 1` stripes.
    pub(crate) fn new(stripes: usize) -> Self {
        let stripes: Vec<Stripe<T>> = (0..stripes.max(1))
            .map(|_| Stripe(Mutex::new(Vec::new())))
            .collect();
        Self {
            stripes: stripes.into_boxed_slice(),
            directory: Directory::new(),
        }
    }

    /// Number of stripes (the most areas a region has).
    #[inline]
    pub(crate) fn stripes(&self) -> usize {
        self.stripes.len()
    }

    /// Locks stripe `index` (below [`RegionTable::stripes`]) for reading, and with it area
    /// `index` of every region.
    #[inline]
    pub(crate) fn read(&self, index: usize) -> Held<'_, T> {
        Held {
            regions: self.stripes[index].0.lock(),
            key: StripeKey::new(index),
        }
    }

    /// As [`RegionTable::read`], if the stripe is free at once.
    #[inline]
    pub(crate) fn try_read(&self, index: usize) -> Option<Held<'_, T>> {
        Some(Held {
            regions: self.stripes[index].0.try_lock()?,
            key: StripeKey::new(index),
        })
    }

    /// The region bounds containing `addr`, without locking; see [`Lookup`].
    #[inline]
    pub(crate) fn lookup(&self, addr: u64) -> Lookup {
        self.directory.lookup(addr)
    }

    /// Locks every stripe, in order, for a change. All copies are identical; a writer reads
    /// the first and must apply the same change to each (see [`WriteGuard::update`]).
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        WriteGuard {
            stripes: self.stripes.iter().map(|s| s.0.lock()).collect(),
            directory: &self.directory,
        }
    }
}

/// Index of the region containing `addr`, by binary search over bases.
#[inline]
pub(crate) fn find<T>(regions: &[Entry<T>], addr: u64) -> Option<usize> {
    let i = regions.partition_point(|r| r.range().start().as_u64() <= addr);
    let i = i.checked_sub(1)?;
    (addr < regions[i].range().end().as_u64()).then_some(i)
}
