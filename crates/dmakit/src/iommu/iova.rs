//! The IOVA allocator: ranges of I/O virtual address space for one IOMMU domain.
//!
//! Every IOMMU mapping needs a free range of device-visible addresses. Ranges are counted
//! in granule-sized pages (page frame numbers, "pfns") and are **size aligned**: a range of
//! `n` pages starts on a multiple of the next power of two of `n`, so large mappings can use
//! large IOMMU pages and sizes do not fragment each other. Each allocation is bounded by a
//! limit (the device's DMA mask): a 32-bit device gets IOVAs below 4 GiB wherever its RAM is.
//!
//! Two layers, as in Linux's `iova.c`:
//!
//! - a **free-range tree**: the free space as disjoint, coalesced ranges in a `BTreeMap`,
//!   also indexed by power-of-two length class, so a search looks at a few candidates of
//!   the right class instead of walking every live range. A free range of about the
//!   requested size is used first (best fit); otherwise allocation is top down (the highest
//!   fitting address), which keeps low addresses for devices with small masks;
//! - **range caches** ("rcaches"): per power-of-two size class, per CPU, two magazines of
//!   recently freed ranges, plus a bounded depot of full magazines shared by the CPUs. The
//!   common case (a range of the same size was freed recently) is a push or pop on the
//!   CPU's magazine and never touches the tree, so its cost does not depend on how many
//!   ranges are live. Cacheable sizes are rounded up to their power of two, so a cached
//!   range always has exactly the size its class promises.
//!
//! When the tree has no room, the caches are emptied back into it and the search is
//! repeated once; only then is the space reported exhausted.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use super::depot::Depot;

/// A range of IOVA pages: `pages` granules from page frame number `pfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IovaRange {
    /// First page frame number (IOVA divided by the granule).
    pub pfn: u64,
    /// Number of pages reserved (may exceed the number asked for, see [`IovaAllocator::alloc`]).
    pub pages: u64,
}

impl IovaRange {
    /// One past the last page frame number.
    pub const fn end(&self) -> u64 {
        self.pfn + self.pages
    }
}

/// The shape of an IOVA space and its caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IovaConfig {
    /// First usable page frame number (at least 1: IOVA 0 is never handed out).
    pub first_pfn: u64,
    /// Last usable page frame number (inclusive).
    pub last_pfn: u64,
    /// Sizes up to `2^rcache_max_order` pages are cached (and rounded to a power of two);
    /// at most 20.
    pub rcache_max_order: u32,
    /// Ranges per magazine (at least 1).
    pub magazine_size: usize,
    /// Full magazines the shared depot of each size class may hold.
    pub depot_magazines: usize,
    /// Number of per-CPU magazine pairs per size class (at least 1); CPU numbers are taken
    /// modulo this.
    pub cpus: usize,
}

impl IovaConfig {
    /// The defaults for the page frames `first_pfn..=last_pfn`: sizes up to 512 pages
    /// cached, 128-range magazines, 32 depot magazines, `cpus` CPUs.
    pub const fn new(first_pfn: u64, last_pfn: u64, cpus: usize) -> Self {
        Self {
            first_pfn,
            last_pfn,
            rcache_max_order: 9,
            magazine_size: 128,
            depot_magazines: 32,
            cpus,
        }
    }
}

/// Why an IOVA operation failed. A failed operation changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IovaError {
    /// The configuration is unusable: `first_pfn` is 0 or above `last_pfn`, zero CPUs or
    /// magazine size, or `rcache_max_order` above 20.
    BadConfig,
    /// A request for zero pages.
    ZeroPages,
    /// No free range of `pages` pages at or below `limit_pfn`, even after emptying the
    /// caches.
    Exhausted {
        /// Pages requested (after rounding).
        pages: u64,
        /// The highest page frame number the range could use.
        limit_pfn: u64,
    },
    /// A free of a range that is outside the space or overlaps free space (not allocated,
    /// or freed twice).
    NotAllocated(IovaRange),
}

impl fmt::Display for IovaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IovaError::BadConfig => f.write_str("unusable IOVA allocator configuration"),
            IovaError::ZeroPages => f.write_str("IOVA request for zero pages"),
            IovaError::Exhausted { pages, limit_pfn } => write!(
                f,
                "IOVA space exhausted: no {pages} free pages at or below pfn {limit_pfn:#x}"
            ),
            IovaError::NotAllocated(r) => write!(
                f,
                "IOVA range of {} pages at pfn {:#x} is not allocated",
                r.pages, r.pfn
            ),
        }
    }
}

impl core::error::Error for IovaError {}

/// Counters of an allocator (monotonic, relaxed) and its free space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IovaStats {
    /// Allocations served by a range cache.
    pub rcache_hits: u64,
    /// Allocations served by the tree.
    pub tree_allocs: u64,
    /// Frees that went to a range cache.
    pub rcache_frees: u64,
    /// Frees that went to the tree (uncacheable sizes and spilled magazines).
    pub tree_frees: u64,
    /// Times the caches were emptied into the tree to make room.
    pub cache_flushes: u64,
    /// Pages free in the tree (not counting cached ranges).
    pub tree_free_pages: u64,
    /// Number of disjoint free ranges in the tree.
    pub tree_free_ranges: usize,
    /// Ranges currently held by the caches.
    pub cached_ranges: usize,
}

#[derive(Default)]
struct Counters {
    rcache_hits: AtomicU64,
    tree_allocs: AtomicU64,
    rcache_frees: AtomicU64,
    tree_frees: AtomicU64,
    cache_flushes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Candidates looked at in a length class that may or may not fit, before moving on to the
/// classes that surely fit.
const PROBES: usize = 8;

/// `floor(log2(n))` for `n > 0`.
const fn floor_log2(n: u64) -> u32 {
    63 - n.leading_zeros()
}

/// The free space: disjoint, coalesced `[start, end)` ranges, by start and by length class.
struct FreeTree {
    by_start: BTreeMap<u64, u64>,
    classes: [BTreeSet<u64>; 64],
    nonempty: u64,
    free_pages: u64,
}

impl FreeTree {
    fn new(first: u64, last: u64) -> Self {
        let mut t = Self {
            by_start: BTreeMap::new(),
            classes: core::array::from_fn(|_| BTreeSet::new()),
            nonempty: 0,
            free_pages: 0,
        };
        t.insert(first, last + 1);
        t
    }

    fn insert(&mut self, start: u64, end: u64) {
        let c = floor_log2(end - start) as usize;
        self.by_start.insert(start, end);
        self.classes[c].insert(start);
        self.nonempty |= 1 << c;
        self.free_pages += end - start;
    }

    fn remove(&mut self, start: u64, end: u64) {
        let c = floor_log2(end - start) as usize;
        self.by_start.remove(&start);
        self.classes[c].remove(&start);
        if self.classes[c].is_empty() {
            self.nonempty &= !(1 << c);
        }
        self.free_pages -= end - start;
    }

    /// Where an aligned block of `n` pages fits top down in `[start, end)` at or below
    /// `limit`.
    fn fit(start: u64, end: u64, n: u64, align: u64, limit: u64) -> Option<u64> {
        let top = end.min(limit.saturating_add(1));
        let at = top.checked_sub(n)? & !(align - 1);
        (at >= start).then_some(at)
    }

    fn try_class(
        &self,
        c: usize,
        n: u64,
        align: u64,
        limit: u64,
        probes: usize,
    ) -> Option<(u64, u64, u64)> {
        self.classes[c]
            .range(..=limit)
            .rev()
            .take(probes)
            .find_map(|&s| {
                let e = self.by_start[&s];
                Self::fit(s, e, n, align, limit).map(|at| (s, e, at))
            })
    }

    fn alloc(&mut self, n: u64, align: u64, limit: u64) -> Option<u64> {
        let min_class = floor_log2(n);
        // A free range of at least n + align - 1 pages holds an aligned block anywhere.
        let sure = (n - 1)
            .checked_add(align)
            .and_then(u64::checked_next_power_of_two)
            .map_or(64, u64::trailing_zeros);
        let mut found = None;
        // Classes that may fit: a few candidates each (best fit first).
        for c in min_class..sure.min(64) {
            if self.nonempty & (1 << c) != 0 {
                found = self.try_class(c as usize, n, align, limit, PROBES);
                if found.is_some() {
                    break;
                }
            }
        }
        // Classes that surely fit below the limit: at most two candidates each (the one
        // straddling the limit may not have room under it; the next lower one does), and
        // the highest placement among the classes wins, keeping low addresses free for
        // devices with small masks.
        if found.is_none() {
            let mut rest = if sure >= 64 {
                0
            } else {
                self.nonempty >> sure << sure
            };
            while rest != 0 {
                let c = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                if let Some(f) = self.try_class(c, n, align, limit, 2) {
                    if found.is_none_or(|(_, _, at)| f.2 > at) {
                        found = Some(f);
                    }
                }
            }
        }
        // Near exhaustion: every candidate of the uncertain classes.
        if found.is_none() {
            for c in min_class..sure.min(64) {
                if self.nonempty & (1 << c) != 0 {
                    found = self.try_class(c as usize, n, align, limit, usize::MAX);
                    if found.is_some() {
                        break;
                    }
                }
            }
        }
        let (s, e, at) = found?;
        self.remove(s, e);
        if at > s {
            self.insert(s, at);
        }
        if at + n < e {
            self.insert(at + n, e);
        }
        Some(at)
    }

    fn free(&mut self, r: IovaRange) -> Result<(), IovaError> {
        let (mut start, mut end) = (r.pfn, r.end());
        let pred = self
            .by_start
            .range(..=start)
            .next_back()
            .map(|(&s, &e)| (s, e));
        let succ = self
            .by_start
            .range(start + 1..)
            .next()
            .map(|(&s, &e)| (s, e));
        if pred.is_some_and(|(_, e)| e > start) || succ.is_some_and(|(s, _)| s < end) {
            return Err(IovaError::NotAllocated(r));
        }
        if let Some((s, e)) = pred.filter(|&(_, e)| e == start) {
            self.remove(s, e);
            start = s;
        }
        if let Some((s, e)) = succ.filter(|&(s, _)| s == end) {
            self.remove(s, e);
            end = e;
        }
        self.insert(start, end);
        Ok(())
    }
}

/// One CPU's two magazines for one size class.
struct CpuMags {
    loaded: Vec<u64>,
    prev: Vec<u64>,
}

/// The cache of one power-of-two size class.
struct Rcache {
    cpus: Vec<Mutex<CpuMags>>,
    depot: Mutex<Depot>,
}

/// Takes a cached pfn whose range of `pages` ends at or below `limit`: the most recent one
/// if it fits, else the most recent that does.
fn take_fit(mag: &mut Vec<u64>, pages: u64, limit: u64) -> Option<u64> {
    let fits = |p: u64| p + (pages - 1) <= limit;
    match mag.last() {
        Some(&p) if fits(p) => mag.pop(),
        Some(_) => {
            let i = mag.iter().rposition(|&p| fits(p))?;
            Some(mag.swap_remove(i))
        }
        None => None,
    }
}

/// The IOVA allocator of one domain: size aligned, mask bounded, with per-CPU range caches
/// so the common case does not touch the tree.
///
/// Thread-safe: the tree has one lock, each CPU's magazines of each size class another.
pub struct IovaAllocator {
    cfg: IovaConfig,
    tree: Mutex<FreeTree>,
    rcaches: Vec<Rcache>,
    counters: Counters,
}

impl fmt::Debug for IovaAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaAllocator")
            .field("cfg", &self.cfg)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl IovaAllocator {
    /// An allocator over the page frames of `cfg`, all free.
    ///
    /// # Errors
    /// [`IovaError::BadConfig`] for the configurations listed there.
    pub fn new(cfg: IovaConfig) -> Result<Self, IovaError> {
        if cfg.first_pfn == 0
            || cfg.first_pfn > cfg.last_pfn
            || cfg.last_pfn == u64::MAX
            || cfg.cpus == 0
            || cfg.magazine_size == 0
            || cfg.rcache_max_order > 20
        {
            return Err(IovaError::BadConfig);
        }
        let rcaches = (0..=cfg.rcache_max_order)
            .map(|_| Rcache {
                cpus: (0..cfg.cpus)
                    .map(|_| {
                        Mutex::new(CpuMags {
                            loaded: Vec::with_capacity(cfg.magazine_size),
                            prev: Vec::with_capacity(cfg.magazine_size),
                        })
                    })
                    .collect(),
                depot: Mutex::new(Depot::new(cfg.depot_magazines, cfg.magazine_size)),
            })
            .collect();
        Ok(Self {
            tree: Mutex::new(FreeTree::new(cfg.first_pfn, cfg.last_pfn)),
            cfg,
            rcaches,
            counters: Counters::default(),
        })
    }

    /// The largest allocation, in pages, the per-CPU range caches serve (`2^rcache_max_order`);
    /// larger ones search the tree.
    pub fn largest_cached_pages(&self) -> u64 {
        1 << self.cfg.rcache_max_order
    }

    /// The pages an allocation of `pages` reserves: cacheable sizes round up to a power
    /// of two, larger ones are kept exact.
    pub fn reserved_pages(&self, pages: u64) -> u64 {
        match pages.checked_next_power_of_two() {
            Some(p) if p <= 1 << self.cfg.rcache_max_order => p,
            _ => pages,
        }
    }

    fn class_of(&self, pages: u64) -> Option<usize> {
        (pages.is_power_of_two() && pages <= 1 << self.cfg.rcache_max_order)
            .then(|| pages.trailing_zeros() as usize)
    }

    /// Allocates a size-aligned range of at least `pages` pages whose last page is at or
    /// below `limit_pfn`. `cpu` picks the magazines to use (any number; taken modulo the
    /// configured CPU count).
    ///
    /// Guarantees: the range lies in `first_pfn..=min(last_pfn, limit_pfn)`, starts on a
    /// multiple of `pages.next_power_of_two()`, has [`IovaAllocator::reserved_pages`]
    /// pages, and overlaps no other live range. It is freed with [`IovaAllocator::free`].
    ///
    /// # Errors
    /// [`IovaError::ZeroPages`]; [`IovaError::Exhausted`] when no such range is free.
    pub fn alloc(&self, pages: u64, limit_pfn: u64, cpu: usize) -> Result<IovaRange, IovaError> {
        if pages == 0 {
            return Err(IovaError::ZeroPages);
        }
        let n = self.reserved_pages(pages);
        let limit = limit_pfn.min(self.cfg.last_pfn);
        let exhausted = IovaError::Exhausted {
            pages: n,
            limit_pfn: limit,
        };
        let align = n.checked_next_power_of_two().ok_or(exhausted)?;
        if let Some(c) = self.class_of(n) {
            if let Some(pfn) = self.cache_get(c, n, limit, cpu) {
                bump(&self.counters.rcache_hits);
                return Ok(IovaRange { pfn, pages: n });
            }
        }
        if let Some(pfn) = self.tree.lock().alloc(n, align, limit) {
            bump(&self.counters.tree_allocs);
            return Ok(IovaRange { pfn, pages: n });
        }
        // Cached ranges may be what is missing: give them all back and try once more.
        self.flush_caches();
        match self.tree.lock().alloc(n, align, limit) {
            Some(pfn) => {
                bump(&self.counters.tree_allocs);
                Ok(IovaRange { pfn, pages: n })
            }
            None => Err(exhausted),
        }
    }

    /// Frees a range returned by [`IovaAllocator::alloc`], exactly as returned. The range
    /// may be handed out again at once: the caller must have made sure no device can still
    /// use it (an IOTLB invalidation).
    ///
    /// Ranges of cacheable sizes go to the CPU's magazine without any check (this is what
    /// keeps the common case cheap); a range that reaches the tree is checked against the
    /// free space.
    ///
    /// # Errors
    /// [`IovaError::NotAllocated`] when a range that reaches the tree is outside the space
    /// or overlaps free space.
    pub fn free(&self, range: IovaRange, cpu: usize) -> Result<(), IovaError> {
        if range.pages == 0
            || range.pfn < self.cfg.first_pfn
            || range.pfn > self.cfg.last_pfn
            || self.cfg.last_pfn - range.pfn < range.pages - 1
        {
            return Err(IovaError::NotAllocated(range));
        }
        if let Some(c) = self.class_of(range.pages) {
            self.cache_put(c, range.pfn, cpu);
            bump(&self.counters.rcache_frees);
            return Ok(());
        }
        self.tree.lock().free(range)?;
        bump(&self.counters.tree_frees);
        Ok(())
    }

    fn cache_get(&self, class: usize, pages: u64, limit: u64, cpu: usize) -> Option<u64> {
        let rc = &self.rcaches[class];
        let mut mags = rc.cpus[cpu % rc.cpus.len()].lock();
        let m = &mut *mags;
        if let Some(p) = take_fit(&mut m.loaded, pages, limit) {
            return Some(p);
        }
        if let Some(p) = take_fit(&mut m.prev, pages, limit) {
            core::mem::swap(&mut m.loaded, &mut m.prev);
            return Some(p);
        }
        if !rc.depot.lock().exchange(&mut m.loaded) {
            return None;
        }
        take_fit(&mut m.loaded, pages, limit)
    }

    /// Caches `pfn`. When both of the CPU's magazines are full, the loaded one goes to the
    /// depot, or, the depot full, its ranges go back to the tree. Allocates nothing: the
    /// magazines and the depot were sized when the allocator was made.
    fn cache_put(&self, class: usize, pfn: u64, cpu: usize) {
        let rc = &self.rcaches[class];
        let cap = self.cfg.magazine_size;
        let mut mags = rc.cpus[cpu % rc.cpus.len()].lock();
        let m = &mut *mags;
        if m.loaded.len() >= cap {
            if m.prev.len() < cap {
                core::mem::swap(&mut m.loaded, &mut m.prev);
            } else if !rc.depot.lock().put(&mut m.loaded) {
                // Lock order: a CPU's magazines, then the depot or the tree; never back.
                self.spill(class, m.loaded.drain(..));
            }
        }
        m.loaded.push(pfn);
    }

    /// Gives cached ranges of size class `class` back to the tree.
    fn spill(&self, class: usize, pfns: impl Iterator<Item = u64>) {
        let pages = 1u64 << class;
        let mut tree = self.tree.lock();
        for pfn in pfns {
            // Every cached range was allocated and freed once; the tree takes it.
            let back = tree.free(IovaRange { pfn, pages });
            debug_assert!(back.is_ok(), "{back:?}");
            bump(&self.counters.tree_frees);
        }
    }

    /// Gives every cached range back to the tree (done automatically before reporting
    /// exhaustion).
    pub fn flush_caches(&self) {
        bump(&self.counters.cache_flushes);
        for (class, rc) in self.rcaches.iter().enumerate() {
            for cpu in &rc.cpus {
                let mut m = cpu.lock();
                let m = &mut *m;
                self.spill(class, m.loaded.drain(..).chain(m.prev.drain(..)));
            }
            self.spill(class, rc.depot.lock().drain());
        }
    }

    /// Pages free in the tree (not counting cached ranges).
    fn tree_free_pages(&self) -> u64 {
        self.tree.lock().free_pages
    }

    /// Number of disjoint free ranges in the tree.
    fn tree_free_ranges(&self) -> usize {
        self.tree.lock().by_start.len()
    }

    /// Ranges currently held by the caches.
    fn cached_ranges(&self) -> usize {
        self.rcaches
            .iter()
            .map(|rc| {
                rc.cpus
                    .iter()
                    .map(|c| {
                        let m = c.lock();
                        m.loaded.len() + m.prev.len()
                    })
                    .sum::<usize>()
                    + rc.depot.lock().ranges()
            })
            .sum()
    }

    /// The counters so far and the current free space. Takes the tree's and each range
    /// cache's lock in turn (never two at once), so the parts are each exact but not one
    /// atomic snapshot while other threads allocate.
    pub fn stats(&self) -> IovaStats {
        let c = &self.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        IovaStats {
            rcache_hits: r(&c.rcache_hits),
            tree_allocs: r(&c.tree_allocs),
            rcache_frees: r(&c.rcache_frees),
            tree_frees: r(&c.tree_frees),
            cache_flushes: r(&c.cache_flushes),
            tree_free_pages: self.tree_free_pages(),
            tree_free_ranges: self.tree_free_ranges(),
            cached_ranges: self.cached_ranges(),
        }
    }
}
