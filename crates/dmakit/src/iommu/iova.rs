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
//! - a **free-range table** ([`super::free_ranges`]): the free space as disjoint, coalesced
//!   ranges in ordered tables allocated when the allocator is made, also indexed by
//!   power-of-two length class, so a search looks at a few candidates of the right class
//!   instead of walking every live range. A free range of about the
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
//!
//! Nothing here allocates after [`IovaAllocator::new`]: the magazines, the depots and the
//! free-range table have their room from the start, so allocation and free run on map and
//! unmap paths in interrupt context. The table's room is derived from
//! [`IovaConfig::max_live`] and the cache sizes (see [`IovaAllocator::new`]).

use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use super::depot::Depot;
use super::free_ranges::{FreeRanges, Refusal};

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
    /// Ranges allocated and not yet freed at once (including ranges waiting for an
    /// invalidation in a flush queue). The free-range table is sized for it; beyond it an
    /// allocation the caches cannot serve may fail with [`IovaError::RangeTableFull`].
    pub max_live: usize,
}

impl IovaConfig {
    /// The defaults for the page frames `first_pfn..=last_pfn`: sizes up to 512 pages
    /// cached, 128-range magazines, 32 depot magazines, `cpus` CPUs, 4096 live ranges.
    pub const fn new(first_pfn: u64, last_pfn: u64, cpus: usize) -> Self {
        Self {
            first_pfn,
            last_pfn,
            rcache_max_order: 9,
            magazine_size: 128,
            depot_magazines: 32,
            cpus,
            max_live: 4096,
        }
    }

    /// Ranges the caches hold at most: per size class, two magazines per CPU and the
    /// depot's magazines.
    pub const fn max_cached(&self) -> usize {
        let per_class = self
            .cpus
            .saturating_mul(2)
            .saturating_add(self.depot_magazines)
            .saturating_mul(self.magazine_size);
        per_class.saturating_mul(self.rcache_max_order as usize + 1)
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
    /// The free-range table is full: more than [`IovaConfig::max_live`] ranges are live, so
    /// the range (allocated or, after frees of parts of ranges, freed) has no room.
    RangeTableFull {
        /// The configured live bound.
        max_live: usize,
    },
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
            IovaError::RangeTableFull { max_live } => write!(
                f,
                "IOVA free-range table full: more than {max_live} ranges live; free some or \
                 configure a larger max_live"
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
    tree: Mutex<FreeRanges>,
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
    /// An allocator over the page frames of `cfg`, all free. Allocates: call outside
    /// atomic context.
    ///
    /// The free-range table gets room for `max_live + max_cached + 1` ranges
    /// ([`IovaConfig::max_cached`]): every range out of the table is live or cached, and
    /// free ranges, being coalesced, are at most one more than the ranges out (a page of
    /// one lies between any two). So while at most `max_live` ranges are live no range
    /// coming back is ever refused, and caches always flush back whole.
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
            tree: Mutex::new(FreeRanges::new(
                cfg.first_pfn,
                cfg.last_pfn,
                cfg.max_live.saturating_add(cfg.max_cached()),
            )),
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
    /// [`IovaError::ZeroPages`]; [`IovaError::Exhausted`] when no such range is free;
    /// [`IovaError::RangeTableFull`] when more than [`IovaConfig::max_live`] ranges are
    /// live and the caches cannot serve this one. Allocates nothing, also when it empties
    /// the caches.
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
        if let Ok(pfn) = self.tree.lock().alloc(n, align, limit) {
            bump(&self.counters.tree_allocs);
            return Ok(IovaRange { pfn, pages: n });
        }
        // Cached ranges may be what is missing (free space, or room in the table): give
        // them all back and try once more.
        self.flush_caches();
        let found = self.tree.lock().alloc(n, align, limit);
        match found {
            Ok(pfn) => {
                bump(&self.counters.tree_allocs);
                Ok(IovaRange { pfn, pages: n })
            }
            Err(Refusal::NoRoom) => Err(exhausted),
            Err(Refusal::TableFull) => Err(self.table_full()),
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
    /// or overlaps free space; [`IovaError::RangeTableFull`] when the table has no room for
    /// it, which only earlier frees of other than whole allocated ranges can cause.
    /// Allocates nothing.
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
        let back = self.tree.lock().free(range.pfn, range.end());
        match back {
            Ok(()) => {}
            Err(Refusal::NoRoom) => return Err(IovaError::NotAllocated(range)),
            Err(Refusal::TableFull) => return Err(self.table_full()),
        }
        bump(&self.counters.tree_frees);
        Ok(())
    }

    fn table_full(&self) -> IovaError {
        IovaError::RangeTableFull {
            max_live: self.cfg.max_live,
        }
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
            let back = tree.free(pfn, pfn + pages);
            debug_assert!(back.is_ok(), "{back:?}");
            bump(&self.counters.tree_frees);
        }
    }

    /// Gives every cached range back to the tree (done automatically before reporting
    /// exhaustion). Allocates nothing: the table has room for every cached range.
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
        self.tree.lock().free_pages()
    }

    /// Number of disjoint free ranges in the tree.
    fn tree_free_ranges(&self) -> usize {
        self.tree.lock().ranges()
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
