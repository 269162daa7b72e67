//! Usage accounting: per-area counters written only by the area's own CPU in the common
//! case, summed when a snapshot is taken.
//!
//! # Why per area
//!
//! A pool-wide `used` counter is one cache line written by every allocation and free on
//! every CPU; with per-CPU areas that line, not the locks, becomes the point where CPUs meet.
//! So each area counts its own used slots and live allocations (in atomics next to its lock,
//! on its own cache lines), and a snapshot adds them up.
//!
//! # The high-water mark without a shared counter
//!
//! The pool-wide high-water mark `H` is the largest pool-wide usage ever reached, and it is
//! kept exact when calls do not overlap, without a shared counter on the hot path. Each area
//! has an *allowance*: a number of slots it may hold without telling anyone. Invariants:
//!
//! - an area's used slots never exceed its allowance (both live in one atomic word, so no
//!   change can slip between the check and the update);
//! - the allowances of all areas add up to at most `H`.
//!
//! Together they give `pool usage <= H` at every instant. An allocation that stays within
//! its area's allowance (the steady state: an area reuses what it freed) touches only its
//! own area's word. One that would exceed it takes the *grant* path, under a pool-wide lock:
//! it takes the allowance nobody holds (`H` minus all allowances), then the unused allowance
//! of other areas (their allowance above their usage, lowered atomically), and raises `H`
//! only by what is still missing. When `H` rises, every other area's allowance has been
//! lowered to its usage, so the new `H` is exactly the pool's usage after this allocation:
//! the mark is exact for sequential use and never below the true peak. Under concurrency
//! the other areas' usages are read one by one, so the mark may count two usages that did
//! not coexist (it is then at most the sum of per-area peaks).
//!
//! The grant path is taken when `H` grows or when usage moves from one area to another
//! (a thread migrating between CPUs); it costs one pool-wide lock and one load per area.

use super::sync::{AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering};
use crate::addr::PhysAddr;

/// A snapshot of pool-wide usage.
///
/// `used_bytes` and `live` are sums of per-area counters read one by one, so while other
/// threads allocate they may come from slightly different instants; when the pool is
/// quiescent every field is exact. `high_water_bytes` is exact for sequential use and never
/// below the true peak (see the module documentation for concurrent use).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Bytes of all regions.
    pub total_bytes: u64,
    /// Bytes of slots held by live allocations (slot granularity). Slots kept in an area's
    /// reuse cache are free and not counted.
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

/// One area's counters. Used slots and live allocations change only under the area's lock;
/// the allowance may also be lowered by another area's grant (atomically, never below the
/// usage).
pub(crate) struct AreaCounter {
    /// Used slots in the low 32 bits, allowance in the high 32 (both fit: an area has fewer
    /// than `u32::MAX` slots, and an allowance never exceeds the area's usage at some
    /// instant).
    word: AtomicU64,
    live: AtomicU32,
}

#[inline]
fn split(word: u64) -> (u32, u32) {
    (word as u32, (word >> 32) as u32)
}

#[inline]
fn join(used: u32, allowance: u32) -> u64 {
    used as u64 | (allowance as u64) << 32
}

impl AreaCounter {
    pub(crate) fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            live: AtomicU32::new(0),
        }
    }

    /// Used slots.
    #[inline]
    pub(crate) fn used(&self) -> u32 {
        split(self.word.load(Ordering::Relaxed)).0
    }

    /// Live allocations.
    #[inline]
    pub(crate) fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// Allowance (for tests and the grant path).
    #[inline]
    pub(crate) fn allowance(&self) -> u32 {
        split(self.word.load(Ordering::Relaxed)).1
    }

    /// Counts `n` more used slots if that stays within the allowance; `false` (nothing
    /// changed) otherwise. Caller holds the area lock.
    #[inline]
    fn try_add(&self, n: u32) -> bool {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let (used, allowance) = split(cur);
            match used.checked_add(n) {
                Some(u) if u <= allowance => {}
                _ => return false,
            }
            // Fails only when a grant lowered the allowance meanwhile: look again.
            match self.word.compare_exchange_weak(
                cur,
                cur + n as u64,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Counts `n` fewer used slots and one fewer live allocation. Caller holds the area
    /// lock and the slots were counted by [`Counters::allocated`].
    #[inline]
    pub(crate) fn freed(&self, n: u32) {
        // The low half holds at least `n` (counted at allocation), so no borrow reaches the
        // allowance.
        self.word.fetch_sub(n as u64, Ordering::Relaxed);
        self.live
            .store(self.live.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
    }

    /// Lowers the allowance by up to `want`, never below the usage; returns how much.
    fn take_slack(&self, want: u32) -> u32 {
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let (used, allowance) = split(cur);
            let take = want.min(allowance - used);
            if take == 0 {
                return 0;
            }
            match self.word.compare_exchange_weak(
                cur,
                join(used, allowance - take),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take,
                Err(now) => cur = now,
            }
        }
    }

    /// Counts `n` more used slots and raises the allowance to cover them. Caller holds the
    /// area lock (so the usage cannot change) and the grant lock (so the allowance cannot).
    fn add_raising(&self, n: u32) {
        let (used, _) = split(self.word.load(Ordering::Relaxed));
        let used = used + n;
        self.word.store(join(used, used), Ordering::Relaxed);
    }
}

/// Pool-wide counters, in slots: totals that change only with regions, and the high-water
/// mark with the lock of its grant path.
pub(crate) struct Counters {
    total: AtomicUsize,
    regions: AtomicUsize,
    high_water: AtomicUsize,
    /// Serializes grants: allowances are raised, and the mark moved, only under it.
    grant: Mutex<()>,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            total: AtomicUsize::new(0),
            regions: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            grant: Mutex::new(()),
        }
    }

    /// Counts an allocation of `n` slots in the area counted by `mine`. Caller holds that
    /// area's lock. `all` lists the counters of every area of the pool (including `mine`),
    /// and no area may be added or removed while this runs (the caller holds a stripe of
    /// the region table). Returns by how many slots the high-water mark rose.
    #[inline]
    pub(crate) fn allocated<'a, I>(&self, mine: &AreaCounter, n: u32, all: impl Fn() -> I) -> u32
    where
        I: Iterator<Item = &'a AreaCounter>,
    {
        mine.live
            .store(mine.live.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        if mine.try_add(n) {
            0
        } else {
            self.grant(mine, n, all)
        }
    }

    /// Undoes the rise of the high-water mark by `raised` slots that an allocation in the
    /// area counted by `mine` caused, after that allocation was freed unused: takes back up
    /// to `raised` slots of `mine`'s allowance (never below its usage) and lowers the mark
    /// by what it took back. With no call overlapping, the mark is then exactly what it was
    /// before the allocation; under concurrency it stays at or above every usage reached.
    pub(crate) fn unraise(&self, mine: &AreaCounter, raised: u32) {
        if raised == 0 {
            return;
        }
        let _g = self.grant.lock();
        let back = mine.take_slack(raised) as usize;
        let high = self.high_water.load(Ordering::Relaxed);
        // The allowances add up to at most the mark and included `back`: no underflow.
        self.high_water.store(high - back, Ordering::Relaxed);
    }

    #[cold]
    fn grant<'a, I>(&self, mine: &AreaCounter, n: u32, all: impl Fn() -> I) -> u32
    where
        I: Iterator<Item = &'a AreaCounter>,
    {
        let _g = self.grant.lock();
        let (used, allowance) = split(mine.word.load(Ordering::Relaxed));
        // `try_add` failed and only this lock's holder raises allowances: `need > 0`.
        let mut need = (used as u64 + n as u64).saturating_sub(allowance as u64) as usize;
        let high = self.high_water.load(Ordering::Relaxed);
        let held: usize = all().map(|c| c.allowance() as usize).sum();
        need -= need.min(high.saturating_sub(held));
        for other in all() {
            if need == 0 {
                break;
            }
            if !core::ptr::eq(other, mine) {
                need -= other.take_slack(need.min(u32::MAX as usize) as u32) as usize;
            }
        }
        // Raise the mark before the allowance, so usage never exceeds the mark.
        if need > 0 {
            self.high_water.store(high + need, Ordering::Relaxed);
        }
        mine.add_raising(n);
        // At most `n` (the slots of this allocation).
        need as u32
    }

    pub(crate) fn region_added(&self, slots: usize) {
        self.total.fetch_add(slots, Ordering::Relaxed);
        self.regions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn region_removed(&self, slots: usize) {
        self.total.fetch_sub(slots, Ordering::Relaxed);
        self.regions.fetch_sub(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn high_water_slots(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    pub(crate) fn total_slots(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A snapshot, given every area's counters.
    pub(crate) fn snapshot<'a>(
        &self,
        slot_shift: u32,
        areas: impl Iterator<Item = &'a AreaCounter>,
    ) -> PoolStats {
        let (mut used, mut live) = (0u64, 0u64);
        for a in areas {
            used += a.used() as u64;
            live += a.live() as u64;
        }
        PoolStats {
            total_bytes: (self.total.load(Ordering::Relaxed) as u64) << slot_shift,
            used_bytes: used << slot_shift,
            high_water_bytes: (self.high_water.load(Ordering::Relaxed) as u64) << slot_shift,
            live,
            regions: self.regions.load(Ordering::Relaxed),
        }
    }
}
