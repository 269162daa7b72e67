//! The pool: regions, allocation across areas, and lookup and free by address.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::convert::Infallible;

use super::area::{Area, Live};
use super::config::PoolConfig;
use super::error::{RegionError, SwiotlbError};
use super::region::{area_index, Location, Region};
use super::region_table::{find, Entry, Held, Lookup, RegionTable};
use super::request::{max_mapping_size, Bounce, Shape, SlotRequest};
use super::stats::{AreaCounter, AreaStats, CountedArea, Counters, PoolStats, TryAreaLock};
use super::stripe_key::StripeKey;
use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::MemorySpan;
use crate::platform::PAGE_SIZE;

/// A SWIOTLB-style bounce slot pool over caller-provided physical memory, storing a `T` of
/// caller metadata per live allocation.
///
/// The pool hands out addresses only; it never reads or writes the memory. All methods
/// take `&self` and may be called from any number of threads at once (the pool is `Sync`
/// when `T: Send`). Allocation, lookup and free lock one stripe of the region table, which
/// is also the lock of the areas of its index, never a pool-wide lock, and allocate no
/// memory; the stripe is the one of the CPU hint (allocation, moving on to the others
/// only when its areas have no room) or of the area owning the address (lookup, free), so
/// CPUs that work in their own areas share no lock and write no shared cache line. (The
/// one exception is the rare grant path of the high-water mark, see [`PoolStats`].)
pub struct Pool<T> {
    config: PoolConfig,
    table: RegionTable<T>,
    counters: Counters,
    span: Arc<MemorySpan>,
    /// Model-checking control: see [`Pool::without_locked_pass`].
    #[cfg(all(loom, test))]
    no_locked_pass: core::sync::atomic::AtomicBool,
    /// Model-checking control: see [`Pool::without_busy_check`].
    #[cfg(all(loom, test))]
    no_busy_check: core::sync::atomic::AtomicBool,
}

impl<T> Pool<T> {
    /// An empty pool with geometry `config`; add memory with [`Pool::add_region`].
    pub fn new(config: PoolConfig) -> Self {
        Self {
            config,
            table: RegionTable::new(config.areas()),
            counters: Counters::new(),
            span: Arc::new(MemorySpan::new()),
            #[cfg(all(loom, test))]
            no_locked_pass: core::sync::atomic::AtomicBool::new(false),
            #[cfg(all(loom, test))]
            no_busy_check: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A pool over one region.
    ///
    /// # Errors
    /// As [`Pool::add_region`].
    pub fn with_region(config: PoolConfig, base: PhysAddr, size: u64) -> Result<Self, RegionError> {
        let pool = Self::new(config);
        pool.add_region(base, size)?;
        Ok(pool)
    }

    /// Alignment a region base needs: the page size, or the slot size if larger.
    #[inline]
    pub fn region_alignment(&self) -> u64 {
        PAGE_SIZE.max(self.config.slot_size())
    }

    /// Largest `len` an allocation with `min_align_mask` may ask for: the segment size minus
    /// `min_align_mask` (0 for a mask that is not smaller than a segment).
    #[inline]
    pub fn max_mapping_size(&self, min_align_mask: u64) -> u64 {
        if min_align_mask >= self.config.segment_size() {
            return 0;
        }
        max_mapping_size(&self.config, min_align_mask)
    }

    /// Adds `size` bytes of memory at `base` to the pool. Safe while other threads allocate
    /// and free; the new region is usable as soon as this returns. Returns its range.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`RegionError::Misaligned`] unless `base` is a multiple of
    /// [`Pool::region_alignment`]; [`RegionError::BadSize`] unless `size` is a non-zero
    /// multiple of the segment size; [`RegionError::TooLarge`] if the range overflows or has
    /// `u32::MAX` line units (cache lines, see [`PoolStats`]) or more;
    /// [`RegionError::Overlaps`] if it overlaps a region of the pool. On error the pool is
    /// unchanged.
    pub fn add_region(&self, base: PhysAddr, size: u64) -> Result<PhysRange, RegionError> {
        let range = self.region_shape(base, size)?;
        // Build the region (the only allocation) before taking any lock.
        let region = Arc::new(Region::new(range, &self.config));
        let units = (region.slots() as usize) << self.config.lines_order();
        let mut table = self.table.write();
        let first = table.first();
        let at = first.partition_point(|r| r.range().start() < base);
        for neighbour in [at.checked_sub(1), Some(at)].into_iter().flatten() {
            if let Some(existing) = first.get(neighbour) {
                if existing.range().overlaps(&range) {
                    return Err(RegionError::Overlaps {
                        new: range,
                        existing: existing.range(),
                    });
                }
            }
        }
        // Covered before the region is published: no bounce there can precede it.
        self.span.cover(base.as_u64(), size);
        table.update(|stripe| stripe.insert(at, Entry(Arc::clone(&region))));
        self.counters.region_added(units);
        Ok(range)
    }

    /// The range of a region of `size` bytes at `base`, if the pool's geometry allows one
    /// there (the checks of [`Pool::add_region`] but the overlap).
    pub(crate) fn region_shape(&self, base: PhysAddr, size: u64) -> Result<PhysRange, RegionError> {
        let align = self.region_alignment();
        if !base.is_aligned(align) {
            return Err(RegionError::Misaligned { base, align });
        }
        let segment = self.config.segment_size();
        if size == 0 || size % segment != 0 {
            return Err(RegionError::BadSize { size, segment });
        }
        match PhysRange::new(base, size) {
            Some(r) if size >> self.config.unit_shift() < u32::MAX as u64 => Ok(r),
            _ => Err(RegionError::TooLarge { base, size }),
        }
    }

    /// Removes the region that starts at `base`, which must hold no live allocation, and
    /// returns its range so the caller can release the memory. Safe while other threads
    /// allocate and free.
    ///
    /// # Errors
    /// [`RegionError::NotFound`] if no region starts at `base`; [`RegionError::Busy`] if it
    /// holds live allocations. On error the pool is unchanged.
    pub fn remove_region(&self, base: PhysAddr) -> Result<PhysRange, RegionError> {
        let mut table = self.table.write();
        let first = table.first();
        let at = match find(first, base.as_u64()) {
            Some(i) if first[i].range().start() == base => i,
            _ => return Err(RegionError::NotFound { base }),
        };
        let region = Arc::clone(&first[at].0);
        // Holding every stripe, this call holds every area's lock: no allocation or free
        // can reach the region. An `end` that claimed an allocation before keeps it counted
        // as live until it frees it under its area's stripe, after which it touches the
        // region no more; so a count of 0, read under every stripe, means no call touches
        // the region any more.
        let live: u64 = region
            .areas()
            .iter()
            .map(|a| a.counter().live() as u64)
            .sum();
        if live != 0 && !self.skips_busy_check() {
            return Err(RegionError::Busy {
                region: region.range(),
                live,
            });
        }
        table.update(|stripe| {
            stripe.remove(at);
        });
        self.counters
            .region_removed((region.slots() as usize) << self.config.lines_order());
        Ok(region.range())
    }

    /// The regions' address ranges, sorted by base.
    pub fn regions(&self) -> Vec<PhysRange> {
        self.table.read(0).iter().map(|r| r.range()).collect()
    }

    /// A span covering every region the pool has had (see [`MemorySpan`]).
    pub fn memory_span(&self) -> &Arc<MemorySpan> {
        &self.span
    }

    /// The region containing `addr`, if any. Takes no lock while the pool has at most
    /// [`DIRECTORY_REGIONS`](super::region_table::DIRECTORY_REGIONS) regions and none is being added or removed.
    #[inline]
    pub(crate) fn region_of(&self, addr: PhysAddr) -> Option<PhysRange> {
        match self.table.lookup(addr.as_u64()) {
            Lookup::In { start, len } => PhysRange::new(PhysAddr::new(start), len),
            Lookup::Outside => None,
            Lookup::Unknown => {
                let regions = self.table.read(self.fallback_stripe(addr));
                find(&regions, addr.as_u64()).map(|i| regions[i].range())
            }
        }
    }

    /// Allocates a bounce for `request`, storing `meta` with it until it is freed.
    /// `cpu` is a hint (the caller's CPU): the search starts in that CPU's area of each
    /// region and moves on to the other areas' stripes.
    ///
    /// The allocation holds its whole run, the lead-in before the bounce address included
    /// ([`Bounce::slot_start`]): whole slots, or, for a request below a page whose mask
    /// window fits in a slot, whole cache lines of a slot shared with other small bounces
    /// (never a line of theirs). With a `min_align_mask` of `2^n - 1` no other live
    /// allocation lies in the `2^n`-aligned window the bounce address sits in, before the
    /// bounce's end.
    ///
    /// Cost: the CPU's stripe lock, then for each area tried O(log2 segment slots) work
    /// (O(1) when the area's run cache holds a freed run of the same size and placement, or
    /// a packed slot near the front of its list has room); areas whose hint says they cannot
    /// fit the request are skipped without locking. An area of another index costs one more
    /// lock, its stripe's, taken after the one held is released. An area whose bounded
    /// search of its free runs finds none that holds the request searches all of them
    /// before refusing it. No memory is allocated.
    ///
    /// # Errors
    /// [`SwiotlbError::BadAlignMask`], [`SwiotlbError::ZeroLength`], [`SwiotlbError::TooLarge`] (see
    /// [`Pool::max_mapping_size`]) for a bad request; [`SwiotlbError::Exhausted`] with current
    /// usage when no area has room. On error nothing changed and `meta` is dropped.
    pub fn alloc(&self, cpu: usize, request: SlotRequest, meta: T) -> Result<Bounce, SwiotlbError> {
        self.alloc_below(cpu, request, u64::MAX, meta)
    }

    /// As [`Pool::alloc`], for a device that reaches only addresses up to `max_addr`
    /// (its DMA mask): the whole run held, lead-in included, ends at or below `max_addr`.
    /// Regions and areas wholly above `max_addr` are not tried; an area that `max_addr`
    /// cuts is searched for a run below it (O(its free blocks) instead of O(1)).
    ///
    /// # Errors
    /// As [`Pool::alloc`], and [`SwiotlbError::Unreachable`] when the pool has memory but no
    /// slot of it lies at or below `max_addr` (it cannot ever serve this device without new
    /// memory); [`SwiotlbError::Exhausted`] when some memory is within reach but has no room,
    /// or the pool has no memory at all. On error
    /// nothing changed and `meta` is dropped.
    #[inline]
    pub(crate) fn alloc_below(
        &self,
        cpu: usize,
        request: SlotRequest,
        max_addr: u64,
        meta: T,
    ) -> Result<Bounce, SwiotlbError> {
        let shape = Shape::new(&self.config, &request)?;
        let mut meta = Some(meta);
        let home = cpu % self.table.stripes();
        let mut held = self.table.read(home);
        let mut reachable = false;
        // First pass: skip areas whose hint says they cannot fit. Second pass, only when
        // the first found nothing: try every reachable area under its lock, hint or not.
        // A failure is thus decided from state read under every area's lock, so a free
        // that completed (under its area's lock) before this call's lock of that area is
        // always seen; a waiter that announced itself before allocating relies on it (see
        // `mapping/deferred.rs`).
        for locked_pass in [false, true] {
            if locked_pass && self.skips_locked_pass() {
                break;
            }
            // Regions in address order, each from the CPU's area on; `cursor` is where the
            // next region may start, since another stripe's list is read after a hop.
            let mut cursor = 0u64;
            loop {
                let at = held.partition_point(|r| r.range().start().as_u64() < cursor);
                let Some(region) = held.get(at) else {
                    break;
                };
                let base = region.range().start().as_u64();
                cursor = region.range().end().as_u64();
                if self.slots_within(base, max_addr) == 0 {
                    // Regions are sorted by base: the rest lie higher still.
                    break;
                }
                reachable = true;
                let tried = self.try_region(
                    held,
                    at,
                    cpu,
                    &shape,
                    &request,
                    max_addr,
                    &mut meta,
                    locked_pass,
                );
                held = match tried {
                    Ok(b) => return Ok(b),
                    Err(h) => h,
                };
            }
            if !reachable {
                break;
            }
        }
        if !reachable && !held.is_empty() {
            return Err(SwiotlbError::Unreachable { max_addr });
        }
        let used: u64 = counters_of(&held).map(|c| c.used() as u64).sum();
        drop(held);
        let unit_shift = self.config.unit_shift();
        Err(SwiotlbError::Exhausted {
            len: request.len,
            used: used << unit_shift,
            total: (self.counters.total_units() as u64) << unit_shift,
        })
    }

    /// Slots of the region at `base` that end at or below `max_addr`.
    #[inline]
    fn slots_within(&self, base: u64, max_addr: u64) -> u64 {
        let shift = self.config.slot_shift();
        let slot_mask = self.config.slot_size() - 1;
        max_addr
            .checked_sub(base)
            .map_or(0, |d| (d >> shift) + u64::from(d & slot_mask == slot_mask))
    }

    /// One region's part of a pass of [`Pool::alloc_below`]: tries the region at index
    /// `at` of the locked stripe `held`, from the CPU's area on, each area under its own
    /// stripe (moving there: the stripe held is released first, so no two are held at
    /// once), skipping areas that the region's slots within `max_addr` do not reach and,
    /// unless `ignore_hint`, those whose hint says they cannot fit (read before moving,
    /// under the stripe held, which keeps the region alive). Returns the bounce, or the
    /// stripe it holds at the end; stops early when the region is gone from the list of a
    /// stripe it moved to.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn try_region<'a>(
        &'a self,
        mut held: Held<'a, T>,
        mut at: usize,
        cpu: usize,
        shape: &Shape,
        request: &SlotRequest,
        max_addr: u64,
        meta: &mut Option<T>,
        ignore_hint: bool,
    ) -> Result<Bounce, Held<'a, T>> {
        let region = &held[at];
        let base = region.range().start().as_u64();
        let last = self.slots_within(base, max_addr) - 1;
        let placement = shape.place(region.base_slot());
        let order = Shape::hint_order(&placement);
        let areas = region.areas().len();
        let start = cpu % areas;
        for i in (start..areas).chain(0..start) {
            let area = &held[at].areas()[i];
            let Some(local_last) =
                (last.min(u64::from(u32::MAX)) as u32).checked_sub(area.first_slot())
            else {
                continue;
            };
            if !ignore_hint && !area.may_fit(order) {
                continue;
            }
            if held.key().index() != i {
                drop(held);
                held = self.table.read(i);
                // The list may have changed while no stripe was held: the region may have
                // moved in it, or be gone.
                match find(&held, base) {
                    Some(j) if held[j].range().start().as_u64() == base => at = j,
                    _ => return Err(held),
                }
                if held[at].areas().len() != areas {
                    return Err(held);
                }
            }
            let (regions, key) = held.split();
            let region = &regions[at];
            let area = &region.areas()[i];
            let locks = StripeLocks {
                table: &self.table,
                held: Some(i),
            };
            let count =
                |c: &AreaCounter, n| self.counters.allocated(c, n, || areas_of(regions), &locks);
            if let Some(run) = area.alloc(key, &placement, local_last, meta, count) {
                let addr = region.addr_of(i, run.slot, run.offset);
                return Ok(self.bounce(region, i, addr, request.len, run.first, run.units));
            }
        }
        Err(held)
    }

    /// The [`Bounce`] at `addr` of `len` bytes holding `units` line units from area-local
    /// unit `first` of area `area` of `region`.
    #[inline]
    fn bounce(
        &self,
        region: &Region<T>,
        area: usize,
        addr: PhysAddr,
        len: u64,
        first: u32,
        units: u32,
    ) -> Bounce {
        Bounce {
            addr,
            len,
            slot_start: region.unit_addr(area, first),
            slot_bytes: (units as u64) << self.config.unit_shift(),
        }
    }

    /// The [`Bounce`] of `live`, whose bounce address is `addr`, in area `area` of `region`.
    #[inline]
    fn bounce_of(&self, region: &Region<T>, area: usize, addr: PhysAddr, live: &Live<T>) -> Bounce {
        self.bounce(region, area, addr, live.len, live.first, live.units)
    }

    /// Whether the model checker asked for the locked second pass of a failed allocation
    /// to be left out (to show its model fails without it); `false` in every other build.
    #[inline]
    fn skips_locked_pass(&self) -> bool {
        #[cfg(all(loom, test))]
        return self
            .no_locked_pass
            .load(core::sync::atomic::Ordering::Relaxed);
        #[cfg(not(all(loom, test)))]
        false
    }

    /// Whether the model checker asked `remove_region` to remove a region whatever it
    /// holds (to show its model fails then); `false` in every other build.
    #[inline]
    fn skips_busy_check(&self) -> bool {
        #[cfg(all(loom, test))]
        return self
            .no_busy_check
            .load(core::sync::atomic::Ordering::Relaxed);
        #[cfg(not(all(loom, test)))]
        false
    }

    /// Lets `remove_region` remove a region that holds live allocations, for the model
    /// checker's control that the removal model can fail.
    #[cfg(all(loom, test))]
    pub(crate) fn without_busy_check(self) -> Self {
        self.no_busy_check
            .store(true, core::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Lets grants lower other areas' allowances without their lock, for the model
    /// checker's control that the grant model can fail.
    #[cfg(all(loom, test))]
    pub(crate) fn without_area_lock_for_slack(self) -> Self {
        self.counters.without_area_lock_for_slack();
        self
    }

    /// Leaves out the locked second pass of a failed allocation, for the model checker's
    /// control that the wake-up model can fail.
    #[cfg(all(loom, test))]
    pub(crate) fn without_locked_pass(self) -> Self {
        self.no_locked_pass
            .store(true, core::sync::atomic::Ordering::Relaxed);
        self
    }

    /// Runs `f` on the allocation whose bounce address is `addr` and its metadata, under the
    /// lock of the area that owns it (so `f` must be short and must not call into this
    /// pool).
    ///
    /// # Errors
    /// [`SwiotlbError::NotMapped`] if `addr` is not the bounce address of a live allocation.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        addr: PhysAddr,
        f: impl FnOnce(&Bounce, &T) -> R,
    ) -> Result<R, SwiotlbError> {
        let not_mapped = SwiotlbError::NotMapped { addr };
        let (mut held, index, loc) = self.locate(addr).ok_or(not_mapped)?;
        let (regions, key) = held.split();
        let region = &regions[index];
        region.areas()[loc.area]
            .with_live(key, loc.local, loc.offset, |live| {
                f(&self.bounce_of(region, loc.area, addr, live), &live.meta)
            })
            .ok_or(not_mapped)
    }

    /// The allocation whose bounce address is `addr` and a copy of its metadata.
    ///
    /// # Errors
    /// [`SwiotlbError::NotMapped`] if `addr` is not the bounce address of a live allocation.
    #[inline]
    pub fn get(&self, addr: PhysAddr) -> Result<(Bounce, T), SwiotlbError>
    where
        T: Clone,
    {
        self.with(addr, |b, m| (*b, m.clone()))
    }

    /// Frees the allocation whose bounce address is `addr` and returns it with its metadata.
    /// Its whole run, lead-in included, is free again.
    ///
    /// # Errors
    /// [`SwiotlbError::NotMapped`] if `addr` is not the bounce address of a live allocation:
    /// an unknown address, an address inside an allocation, or one already freed. Nothing
    /// changes then.
    pub fn free(&self, addr: PhysAddr) -> Result<(Bounce, T), SwiotlbError> {
        let Ok(freed) = self.release(addr, false, |_| Ok::<(), Infallible>(()))?;
        Ok(freed)
    }

    /// Frees the allocation whose bounce address is `addr`, as [`Pool::free`] does, if
    /// `accept` returns `Ok` for its metadata: one lookup and one lock of its area, under
    /// which `accept` runs (so it must be short and must not call into this pool). For an
    /// end that has nothing to copy back; one that has uses [`Pool::end`], which runs its
    /// work with no lock held.
    ///
    /// # Errors
    /// [`SwiotlbError::NotMapped`] (nothing changed, `accept` not run) if `addr` is not the
    /// bounce address of a live allocation; `Ok(Err(r))` (nothing changed) with `accept`'s
    /// refusal.
    #[inline]
    pub(crate) fn free_if<R>(
        &self,
        addr: PhysAddr,
        accept: impl FnOnce(&T) -> Result<(), R>,
    ) -> Result<Result<(Bounce, T), R>, SwiotlbError> {
        self.release(addr, false, accept)
    }

    /// Gives back the allocation whose bounce address is `addr`, which was never used
    /// (the operation it was made for failed), and returns it with its metadata: as
    /// [`Pool::free`], and the high-water mark drops again by what this allocation raised
    /// it, so with no call overlapping [`Pool::stats`] is exactly what it was before the
    /// allocation. Under concurrency the mark stays at or above every usage reached.
    ///
    /// # Errors
    /// As [`Pool::free`].
    pub(crate) fn abandon(&self, addr: PhysAddr) -> Result<(Bounce, T), SwiotlbError> {
        let Ok(freed) = self.release(addr, true, |_| Ok::<(), Infallible>(()))?;
        Ok(freed)
    }

    /// Frees the allocation at `addr` if `accept` returns `Ok` for its metadata; with
    /// `unused`, lowers the high-water mark by what it raised (see [`Pool::abandon`]).
    #[inline]
    fn release<R>(
        &self,
        addr: PhysAddr,
        unused: bool,
        accept: impl FnOnce(&T) -> Result<(), R>,
    ) -> Result<Result<(Bounce, T), R>, SwiotlbError> {
        let not_mapped = SwiotlbError::NotMapped { addr };
        let (mut held, index, loc) = self.locate(addr).ok_or(not_mapped)?;
        let (regions, key) = held.split();
        let region = &regions[index];
        let area = &region.areas()[loc.area];
        let live = match area.free_if(key, loc.local, loc.offset, accept) {
            None => return Err(not_mapped),
            Some(Err(refused)) => return Ok(Err(refused)),
            Some(Ok(live)) => live,
        };
        if unused
            && !crate::reintroduce::active(crate::reintroduce::Defect::FailedBounceRaisesHighWater)
        {
            // Still under the area's stripe (the lock order is area, then grant).
            let locks = StripeLocks {
                table: &self.table,
                held: Some(loc.area),
            };
            self.counters.unraise(&locks, area, live.raised);
        }
        Ok(Ok((
            self.bounce_of(region, loc.area, addr, &live),
            live.meta,
        )))
    }

    /// Ends the allocation whose bounce address is `addr` in one lookup: runs `f` on it and
    /// a copy of its metadata with no lock of the pool held, the allocation reserved for
    /// this call (meanwhile [`Pool::get`], [`Pool::free`] and other ends of `addr` find no
    /// live allocation, and it keeps its slots); then, when `f` returns `Ok`, frees it as
    /// [`Pool::free`] does and returns it with its metadata and `f`'s value, and when `f`
    /// returns `Err`, makes it live again exactly as it was and returns the error.
    ///
    /// Cost: two locks of the owning area's stripe (one to claim, one to free) and one
    /// lookup by address (a [`Pool::get`] then [`Pool::free`] costs two lookups and two
    /// locks too). No memory is allocated.
    ///
    /// # Errors
    /// [`SwiotlbError::NotMapped`] (nothing changed, `f` not run) if `addr` is not the
    /// bounce address of a live allocation; `Ok(Err(e))` with `f`'s error `e`.
    #[inline]
    pub(crate) fn end<R, E>(
        &self,
        addr: PhysAddr,
        f: impl FnOnce(&Bounce, &T) -> Result<R, E>,
    ) -> Result<Result<(Bounce, T, R), E>, SwiotlbError>
    where
        T: Clone,
    {
        let not_mapped = SwiotlbError::NotMapped { addr };
        let (mut held, index, loc) = self.locate(addr).ok_or(not_mapped)?;
        let (regions, key) = held.split();
        let region = &regions[index];
        let area = &region.areas()[loc.area];
        let (bounce, meta) = area
            .claim(key, loc.local, loc.offset, |live| {
                (
                    self.bounce_of(region, loc.area, addr, live),
                    live.meta.clone(),
                )
            })
            .ok_or(not_mapped)?;
        let area: *const Area<T> = area;
        // `f` may copy memory through the platform: no lock of the pool is held around it.
        drop(held);
        // SAFETY: the area lives in its region, which an `Arc` of the table keeps at a fixed
        // address until `remove_region` takes it out of every stripe (or the pool is
        // dropped, which the borrow of `self` excludes). `remove_region` refuses while an
        // area of the region counts a live allocation, reading the counts under every
        // stripe, and the claimed allocation stays counted until `finish` frees it under
        // this area's stripe, after which this call no longer touches the area. So the
        // area outlives every use below.
        let area = unsafe { &*area };
        match f(&bounce, &meta) {
            Ok(value) => {
                let freed = area.finish(self.table.read(loc.area).key(), loc.local, loc.offset);
                if freed {
                    Ok(Ok((bounce, meta, value)))
                } else {
                    Err(not_mapped)
                }
            }
            Err(e) => {
                area.unclaim(self.table.read(loc.area).key(), loc.local, loc.offset);
                Ok(Err(e))
            }
        }
    }

    /// Pool-wide usage: one stripe lock and two atomic loads per area. See [`PoolStats`]
    /// for what the fields guarantee.
    pub fn stats(&self) -> PoolStats {
        let regions = self.table.read(0);
        self.counters
            .snapshot(self.config.unit_shift(), counters_of(&regions))
    }

    /// Usage of every area of every region, in address order. Locks each stripe briefly.
    pub fn area_stats(&self) -> Vec<AreaStats> {
        let (shift, unit_shift) = (self.config.slot_shift(), self.config.unit_shift());
        let mut out = Vec::new();
        self.for_each_area(|region, area, key| {
            let u = area.usage(key);
            out.push(AreaStats {
                region: region.range().start(),
                index: area.index(),
                start: region.addr_of(area.index(), 0, 0),
                total_bytes: (u.slots as u64) << shift,
                used_bytes: (u.used_units as u64) << unit_shift,
                live: u.live as u64,
            });
        });
        out.sort_by_key(|a| a.start);
        out
    }

    /// Runs `f` on every area of every region with its stripe's key, a stripe at a time.
    fn for_each_area(&self, mut f: impl FnMut(&Region<T>, &Area<T>, &mut StripeKey)) {
        for s in 0..self.table.stripes() {
            let mut held = self.table.read(s);
            let (regions, key) = held.split();
            for region in regions.iter() {
                if let Some(area) = region.areas().get(s) {
                    f(region, area, key);
                }
            }
        }
    }

    /// Checks every area's invariants, and that no area holds more than the high-water
    /// mark allows; for tests.
    #[cfg(test)]
    pub(crate) fn check(&self) -> Result<(), alloc::string::String> {
        let mut result = Ok(());
        self.for_each_area(|_, area, key| {
            if result.is_ok() {
                result = area.check(key);
            }
        });
        result?;
        let regions = self.table.read(0);
        let allowed: u64 = counters_of(&regions).map(|c| c.allowance() as u64).sum();
        let high = self.counters.high_water_units() as u64;
        if allowed > high {
            return Err(alloc::format!("allowances {allowed} above the mark {high}"));
        }
        Ok(())
    }

    /// Returns every area's cached runs to its slot allocator; for tests.
    #[cfg(test)]
    pub(crate) fn flush_caches(&self) {
        self.for_each_area(|_, area, key| area.flush_cache(key));
    }

    /// Slots held in run caches; for tests.
    #[cfg(test)]
    pub(crate) fn cached_slots(&self) -> u64 {
        let mut slots = 0;
        self.for_each_area(|_, area, key| slots += area.cached_slots(key) as u64);
        slots
    }

    /// Locks the stripe of the area owning `addr` and finds where `addr` falls: the locked
    /// stripe, the region's index in its list, and the location. `None` when no region
    /// contains `addr`, or the area that does is not the stripe's (a region added or
    /// removed since the stripe was chosen: no live allocation is there then).
    #[inline(always)]
    fn locate(&self, addr: PhysAddr) -> Option<(Held<'_, T>, usize, Location)> {
        let a = addr.as_u64();
        let stripe = match self.table.lookup(a) {
            Lookup::In { start, len } => area_index(&self.config, start, len, a),
            Lookup::Outside => return None,
            Lookup::Unknown => {
                let regions = self.table.read(self.fallback_stripe(addr));
                let index = find(&regions, a)?;
                regions[index].locate(addr)?.area
            }
        };
        if stripe >= self.table.stripes() {
            return None;
        }
        // The directory may be out of date by now: the locked copy is the authority. A
        // live allocation's region cannot go, so for its address the area found under the
        // lock is the one chosen; any other address is not a live allocation's.
        let regions = self.table.read(stripe);
        let index = find(&regions, a)?;
        let loc = regions[index].locate(addr)?;
        (loc.area == stripe).then_some((regions, index, loc))
    }

    /// Stripe for a lookup by address when the directory cannot say which area owns it:
    /// spread by segment.
    #[inline]
    fn fallback_stripe(&self, addr: PhysAddr) -> usize {
        let segment = addr.as_u64() >> (self.config.slot_shift() + self.config.segment_order());
        (segment % self.table.stripes() as u64) as usize
    }
}

/// The locks of the areas as the usage accounting reaches them: the stripe this thread
/// holds (if any) is used as it is, any other is tried.
struct StripeLocks<'a, T> {
    table: &'a RegionTable<T>,
    held: Option<usize>,
}

impl<T> TryAreaLock<Area<T>> for StripeLocks<'_, T> {
    #[inline]
    fn try_counter<R>(&self, area: &Area<T>, f: impl FnOnce(&AreaCounter) -> R) -> Option<R> {
        if self.held == Some(area.index()) {
            return Some(f(area.counter()));
        }
        let _held = self.table.try_read(area.index())?;
        Some(f(area.counter()))
    }
}

/// Every area of `regions`.
#[inline]
fn areas_of<T>(regions: &[Entry<T>]) -> impl Iterator<Item = &Area<T>> {
    regions.iter().flat_map(|r| r.areas().iter())
}

/// The counters of every area of `regions`.
#[inline]
fn counters_of<T>(regions: &[Entry<T>]) -> impl Iterator<Item = &AreaCounter> {
    areas_of(regions).map(|a| a.counter())
}
