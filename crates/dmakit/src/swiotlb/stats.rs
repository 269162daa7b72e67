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
//! - an area's used slots never exceed its allowance (both change only under the area's
//!   lock, with plain stores, so no change can slip between the check and the update);
//! - the allowances of all areas add up to at most `H`.
//!
//! Together they give `pool usage <= H` at every instant. An allocation that stays within
//! its area's allowance (the steady state: an area reuses what it freed) touches only its
//! own area's counters, with plain stores under the area lock it holds anyway (no locked
//! instruction). One that would exceed it takes the *grant* path, under a pool-wide lock:
//! it takes the allowance nobody holds (`H` minus all allowances), then the unused
//! allowance of other areas (their allowance above their usage, lowered under their lock,
//! taken with `try_lock` so that, holding its own area's lock, it never waits for another;
//! a busy area is skipped), and raises `H` only by what is still missing. With no call
//! overlapping no lock is busy: when `H` rises, every other area's allowance has been
//! lowered to its usage, so the new `H` is exactly the pool's usage after this allocation.
//! The mark is exact for sequential use and never below the true peak (a skipped busy area
//! only makes it rise more). Under concurrency the other areas' usages are read one by
//! one, so the mark may count two usages that did not coexist (it is then at most the sum
//! of per-area peaks).
//!
//! The grant path is taken when `H` grows or when usage moves from one area to another
//! (a thread migrating between CPUs); it costs one pool-wide lock, and one load and at
//! most one `try_lock` per area.

use super::sync::{AtomicU32, AtomicUsize, Mutex, Ordering};
use crate::addr::PhysAddr;

/// What the usage accounting needs of an area: its counters. An area implements it; the
/// accounting knows nothing else of areas.
pub(crate) trait CountedArea {
    /// The area's usage counters (read without its lock, or written under it).
    fn counter(&self) -> &AreaCounter;
}

/// How the accounting reaches another area's counters under that area's lock: the pool
/// implements it over the locks it has.
pub(crate) trait TryAreaLock<A> {
    /// Runs `f` on `area`'s counters with its lock held: by the caller already, or taken
    /// now if it is free at once. `None` when it is busy.
    fn try_counter<R>(&self, area: &A, f: impl FnOnce(&AreaCounter) -> R) -> Option<R>;
}

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

/// One area's counters. Every field changes only under the area's lock, by plain loads and
/// stores (no locked instruction): used slots and live allocations by the area's own
/// allocations and frees, the allowance also by another area's grant, which holds this
/// area's lock too (taken with `try_lock`, see [`Counters::grant`]). Readers without the
/// lock (snapshots) see each field as of some recent instant.
pub(crate) struct AreaCounter {
    used: AtomicU32,
    /// Never below `used` (checked under the lock), never above the area's usage at some
    /// instant, so it fits 32 bits as the usage does.
    allowance: AtomicU32,
    live: AtomicU32,
}

impl AreaCounter {
    pub(crate) fn new() -> Self {
        Self {
            used: AtomicU32::new(0),
            allowance: AtomicU32::new(0),
            live: AtomicU32::new(0),
        }
    }

    /// Used slots.
    #[inline]
    pub(crate) fn used(&self) -> u32 {
        self.used.load(Ordering::Relaxed)
    }

    /// Live allocations.
    #[inline]
    pub(crate) fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    /// Allowance (for tests and the grant path).
    #[inline]
    pub(crate) fn allowance(&self) -> u32 {
        self.allowance.load(Ordering::Relaxed)
    }

    /// Counts `n` more used slots if that stays within the allowance; `false` (nothing
    /// changed) otherwise. Caller holds the area lock.
    #[inline]
    fn try_add(&self, n: u32) -> bool {
        match self.used().checked_add(n) {
            Some(u) if u <= self.allowance() => {
                self.used.store(u, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Counts `n` fewer used slots and one fewer live allocation. Caller holds the area
    /// lock and the slots were counted by [`Counters::allocated`].
    #[inline]
    pub(crate) fn freed(&self, n: u32) {
        self.used.store(self.used() - n, Ordering::Relaxed);
        self.live.store(self.live() - 1, Ordering::Relaxed);
    }

    /// Lowers the allowance by up to `want`, never below the usage; returns how much.
    /// Caller holds the area lock (so the usage cannot grow meanwhile) and the grant lock
    /// (so no other grant moves the allowance).
    fn take_slack(&self, want: u32) -> u32 {
        let allowance = self.allowance();
        let take = want.min(allowance - self.used());
        if take != 0 {
            self.allowance.store(allowance - take, Ordering::Relaxed);
        }
        take
    }

    /// Counts `n` more used slots and raises the allowance to cover them. Caller holds the
    /// area lock (so the usage cannot change) and the grant lock (so the allowance cannot).
    fn add_raising(&self, n: u32) {
        let used = self.used() + n;
        self.used.store(used, Ordering::Relaxed);
        self.allowance.store(used, Ordering::Relaxed);
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
    /// Model-checking control: see [`Counters::without_area_lock_for_slack`].
    #[cfg(all(loom, test))]
    unlocked_slack: core::sync::atomic::AtomicBool,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            total: AtomicUsize::new(0),
            regions: AtomicUsize::new(0),
            high_water: AtomicUsize::new(0),
            grant: Mutex::new(()),
            #[cfg(all(loom, test))]
            unlocked_slack: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Lets grants lower other areas' allowances without their lock, for the model
    /// checker's control that the grant model can fail.
    #[cfg(all(loom, test))]
    pub(crate) fn without_area_lock_for_slack(&self) {
        self.unlocked_slack
            .store(true, core::sync::atomic::Ordering::Relaxed);
    }

    /// Lowers `area`'s allowance by up to `want` under its lock, if `locks` holds it or
    /// it is free at once; returns how much (0 when the lock is busy). The caller holds the
    /// grant lock.
    #[inline]
    fn slack_of<A: CountedArea>(&self, locks: &impl TryAreaLock<A>, area: &A, want: u32) -> u32 {
        #[cfg(all(loom, test))]
        if self
            .unlocked_slack
            .load(core::sync::atomic::Ordering::Relaxed)
        {
            return area.counter().take_slack(want);
        }
        locks.try_counter(area, |c| c.take_slack(want)).unwrap_or(0)
    }

    /// Counts an allocation of `n` slots in the area counted by `mine`. Caller holds that
    /// area's lock. `all` lists every area of the pool (including `mine`'s), and no area
    /// may be removed while this runs; `locks` reaches their locks. Returns by how many
    /// slots the high-water mark rose.
    #[inline]
    pub(crate) fn allocated<'a, A: CountedArea + 'a, I>(
        &self,
        mine: &AreaCounter,
        n: u32,
        all: impl Fn() -> I,
        locks: &impl TryAreaLock<A>,
    ) -> u32
    where
        I: Iterator<Item = &'a A>,
    {
        mine.live.store(mine.live() + 1, Ordering::Relaxed);
        if mine.try_add(n) {
            0
        } else {
            self.grant(mine, n, all, locks)
        }
    }

    /// Undoes the rise of the high-water mark by `raised` slots that an allocation in
    /// `mine` caused, after that allocation was freed unused: takes back up to `raised`
    /// slots of `mine`'s allowance (never below its usage) and lowers the mark by what it
    /// took back. With no call overlapping, the mark is then exactly what it was before
    /// the allocation; under concurrency (`mine`'s lock busy) it may stay higher, and it
    /// stays at or above every usage reached.
    pub(crate) fn unraise<A: CountedArea>(
        &self,
        locks: &impl TryAreaLock<A>,
        mine: &A,
        raised: u32,
    ) {
        if raised == 0 {
            return;
        }
        let _g = self.grant.lock();
        // Lock order is area, then grant: only try the area's lock here.
        let back = self.slack_of(locks, mine, raised) as usize;
        let high = self.high_water.load(Ordering::Relaxed);
        // The allowances add up to at most the mark and included `back`: no underflow.
        self.high_water.store(high - back, Ordering::Relaxed);
    }

    /// The slow path of [`Counters::allocated`]: under the grant lock, takes the allowance
    /// nobody holds, then other areas' unused allowance, and raises the mark by what is
    /// still missing. Another area's allowance is lowered only under that area's lock,
    /// taken with `try_lock` (this thread holds its own area's lock already, so waiting
    /// could deadlock against that area's grant); a busy area is skipped, which can only
    /// raise the mark more than needed while calls overlap, never lower it below a usage.
    #[cold]
    fn grant<'a, A: CountedArea + 'a, I>(
        &self,
        mine: &AreaCounter,
        n: u32,
        all: impl Fn() -> I,
        locks: &impl TryAreaLock<A>,
    ) -> u32
    where
        I: Iterator<Item = &'a A>,
    {
        let _g = self.grant.lock();
        let (used, allowance) = (mine.used(), mine.allowance());
        // `try_add` failed and only this lock's holder raises allowances: `need > 0`.
        let mut need = (used as u64 + n as u64).saturating_sub(allowance as u64) as usize;
        let high = self.high_water.load(Ordering::Relaxed);
        // Allowances move only under the grant lock: this sum is exact.
        let held: usize = all().map(|a| a.counter().allowance() as usize).sum();
        need -= need.min(high.saturating_sub(held));
        for other in all() {
            if need == 0 {
                break;
            }
            if !core::ptr::eq(other.counter(), mine) {
                let want = need.min(u32::MAX as usize) as u32;
                need -= self.slack_of(locks, other, want) as usize;
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

    pub(crate) fn region_added(&self, units: usize) {
        self.total.fetch_add(units, Ordering::Relaxed);
        self.regions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn region_removed(&self, units: usize) {
        self.total.fetch_sub(units, Ordering::Relaxed);
        self.regions.fetch_sub(1, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn high_water_units(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    pub(crate) fn total_units(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A snapshot, given every area's counters.
    pub(crate) fn snapshot<'a>(
        &self,
        unit_shift: u32,
        areas: impl Iterator<Item = &'a AreaCounter>,
    ) -> PoolStats {
        let (mut used, mut live) = (0u64, 0u64);
        for a in areas {
            used += a.used() as u64;
            live += a.live() as u64;
        }
        PoolStats {
            total_bytes: (self.total.load(Ordering::Relaxed) as u64) << unit_shift,
            used_bytes: used << unit_shift,
            high_water_bytes: (self.high_water.load(Ordering::Relaxed) as u64) << unit_shift,
            live,
            regions: self.regions.load(Ordering::Relaxed),
        }
    }
}
