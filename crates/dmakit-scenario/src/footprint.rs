//! What a small kmalloc minimum alignment saves, computed from `/proc/slabinfo`.
//!
//! The argument for bouncing misaligned DMA instead of aligning every object to the cache
//! line is memory. This module puts a number on it: given the kmalloc caches of a real
//! machine, how much memory would they take if every object were placed under minimum
//! alignment 8, 16, 32, 64 or 128, and what does the bounce pool that makes 8 safe cost.
//!
//! # Model (and the choices it makes)
//!
//! - **Which caches.** Every `kmalloc-<size>` cache of every kmalloc family: plain
//!   `kmalloc-*`, and also `kmalloc-cg-*` (memcg-accounted) and `kmalloc-rcl-*`
//!   (reclaimable), and `kmalloc-rnd-NN-*` where present. They are all ordinary kmalloc
//!   objects created with the same minimum alignment, so all of them pay for it. Objects stay
//!   in their own family. `dma-kmalloc-*` caches are left out: DMA-marked objects are line
//!   aligned under every policy, so they cost the same in every column. `kmalloc_buckets`
//!   and non-kmalloc caches are left out.
//! - **Which objects.** `active_objs`: the live objects. Free slots in partly used slabs
//!   depend on allocation history, not on the alignment, and are not modelled.
//! - **Request sizes.** An object in the `kmalloc-c` cache was a request of `p < s <= c`
//!   bytes, `p` the class below. Under alignment `a` every such request lands in the same
//!   class, the smallest class `>= c` that is a multiple of `a`, because the classes of a
//!   larger alignment are a subset of the classes of a smaller one. So the result is exact
//!   for a snapshot taken under alignment 8 (x86-64's kmalloc alignment, as the shipped
//!   snapshot is); for a snapshot taken under a larger alignment, columns below it would be
//!   guesses.
//! - **Slab pages.** Memory is counted in whole slabs: the live objects of a class need
//!   `ceil(objects / objects_per_slab)` slabs of `pages_per_slab` pages, with the geometry
//!   from [`SlabGeometry::for_object`] (SLUB-like order choice; a test checks that it
//!   reproduces the `objperslab`/`pagesperslab` of every kmalloc cache in the shipped
//!   snapshot). Slabs are assumed fully packed, a lower bound applied equally to every
//!   alignment.
//!
//! # What is and is not monotone
//!
//! Object bytes never decrease as the alignment grows (each object's class can only grow).
//! Slab memory usually follows but need not: rounding to whole slabs can make merged classes
//! *cheaper* (one object each in the 64 and 96 caches takes two slabs, but one slab when
//! both go to the 128 cache). On real data the effect is dwarfed by the growth; the tests
//! check both facts.

use std::collections::BTreeMap;

use dmakit::size_class::{class_for, is_valid_min_align};
use dmakit::PAGE_SIZE;
use dmakit_mem::class_label::parse_class_label;
use dmakit_mem::{MemError, SlabGeometry, SlabOrderPolicy};

use crate::slabinfo::{parse_slabinfo, SlabinfoError, SlabinfoRow};

/// A real `/proc/slabinfo` snapshot: an x86-64 VM running Linux 6.18 (kmalloc alignment 8).
pub const SHIPPED_SLABINFO: &str = include_str!("../../../data/slabinfo-x86_64-vm-6.18.txt");

/// The minimum alignments studied: 8 (dmakit with a bounce pool) up to 128 (arm64's
/// cache-line alignment for non-coherent DMA).
pub const STUDIED_MIN_ALIGNS: [u64; 5] = [8, 16, 32, 64, 128];

/// The family and size class of a kmalloc cache name (`kmalloc-cg-1k` → `("kmalloc-cg",
/// 1024)`), or `None` for any other cache (including `dma-kmalloc-*`).
pub fn kmalloc_cache(name: &str) -> Option<(&str, u64)> {
    if !name.starts_with("kmalloc-") {
        return None;
    }
    let (family, label) = name.rsplit_once('-')?;
    Some((family, parse_class_label(label)?))
}

/// The live objects of one family that land in one class, and the slabs they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassUsage {
    /// Cache family (`kmalloc`, `kmalloc-cg`, ...).
    pub family: String,
    /// Size class under the studied alignment.
    pub class: u64,
    /// Live objects.
    pub objects: u64,
    /// Slabs needed (fully packed).
    pub slabs: u64,
    /// Pages of those slabs.
    pub pages: u64,
}

/// The memory the kmalloc caches of a snapshot take under one minimum alignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmallocFootprint {
    /// The minimum alignment.
    pub min_align: u64,
    /// Live objects counted (the same under every alignment).
    pub objects: u64,
    /// Sum of the objects' class sizes.
    pub object_bytes: u64,
    /// Pages of the slabs holding them.
    pub slab_pages: u64,
    /// `slab_pages * PAGE_SIZE`: the memory figure this module is about.
    pub slab_bytes: u64,
    /// Per family and class, ordered by family then class.
    pub classes: Vec<ClassUsage>,
}

/// The memory the kmalloc caches in `rows` would take under minimum alignment `min_align`,
/// with slab shapes from `slab_policy`. See the module docs for the model.
///
/// # Errors
/// [`MemError::BadAlignment`] unless `min_align` is a power of two from 8 to 4096.
pub fn kmalloc_footprint(
    rows: &[SlabinfoRow<'_>],
    min_align: u64,
    slab_policy: &SlabOrderPolicy,
) -> Result<KmallocFootprint, MemError> {
    if !is_valid_min_align(min_align) {
        return Err(MemError::BadAlignment(min_align));
    }
    let mut by_class: BTreeMap<(&str, u64), u64> = BTreeMap::new();
    for row in rows {
        let Some((family, class)) = kmalloc_cache(row.name) else {
            continue;
        };
        // 8192 is a multiple of every valid alignment up to 4096, so a class always exists.
        let target = class_for(class, min_align).ok_or(MemError::BadAlignment(min_align))?;
        *by_class.entry((family, target)).or_default() += row.active_objs;
    }
    let mut fp = KmallocFootprint {
        min_align,
        objects: 0,
        object_bytes: 0,
        slab_pages: 0,
        slab_bytes: 0,
        classes: Vec::new(),
    };
    for ((family, class), objects) in by_class {
        let g = SlabGeometry::for_object(class, slab_policy)
            .ok_or(MemError::BadAlignment(min_align))?;
        let slabs = objects.div_ceil(g.objects_per_slab);
        let pages = slabs * g.pages_per_slab;
        fp.objects += objects;
        fp.object_bytes += objects * class;
        fp.slab_pages += pages;
        fp.classes.push(ClassUsage {
            family: String::from(family),
            class,
            objects,
            slabs,
            pages,
        });
    }
    fp.slab_bytes = fp.slab_pages * PAGE_SIZE;
    Ok(fp)
}

/// [`kmalloc_footprint`] at each of [`STUDIED_MIN_ALIGNS`] with the default slab policy.
pub fn kmalloc_footprints(rows: &[SlabinfoRow<'_>]) -> Vec<KmallocFootprint> {
    STUDIED_MIN_ALIGNS
        .iter()
        .filter_map(|&a| kmalloc_footprint(rows, a, &SlabOrderPolicy::default()).ok())
        .collect()
}

/// [`kmalloc_footprints`] of [`SHIPPED_SLABINFO`].
///
/// # Errors
/// Only if the shipped snapshot failed to parse (a test guards against that).
pub fn shipped_footprints() -> Result<Vec<KmallocFootprint>, SlabinfoError> {
    Ok(kmalloc_footprints(&parse_slabinfo(SHIPPED_SLABINFO)?))
}

/// Memory the snapshot's kmalloc caches actually held: `num_slabs * pagesperslab` pages
/// per cache, in bytes (including the free slots and partly used slabs the model ignores).
pub fn observed_kmalloc_bytes(rows: &[SlabinfoRow<'_>]) -> u64 {
    rows.iter()
        .filter(|r| kmalloc_cache(r.name).is_some())
        .map(|r| r.num_slabs * r.pagesperslab * PAGE_SIZE)
        .sum()
}

/// Size of one bounce slot: pools hand out whole slots.
pub const BOUNCE_SLOT_BYTES: u64 = 2048;

/// Estimated bookkeeping per bounce slot, kept outside the pool: the original buffer's
/// address (8 bytes), the mapped length (4) and the free-run length used to find room (4).
pub const BOUNCE_SLOT_METADATA_BYTES: u64 = 16;

/// What a bounce pool of a given size costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BouncePoolCost {
    /// Pool memory: the requested bytes rounded up to whole pages (whole slots too, as a
    /// page holds a whole number of slots).
    pub pool_bytes: u64,
    /// Slots in the pool.
    pub slots: u64,
    /// Bookkeeping: [`BOUNCE_SLOT_METADATA_BYTES`] per slot.
    pub metadata_bytes: u64,
    /// `pool_bytes + metadata_bytes`.
    pub total_bytes: u64,
}

/// The cost of a bounce pool of `pool_bytes` bytes (0 for no pool). Saturates instead of
/// overflowing for absurd sizes.
pub fn bounce_pool_cost(pool_bytes: u64) -> BouncePoolCost {
    let pool = pool_bytes
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX / PAGE_SIZE * PAGE_SIZE);
    let slots = pool / BOUNCE_SLOT_BYTES;
    let metadata_bytes = slots.saturating_mul(BOUNCE_SLOT_METADATA_BYTES);
    BouncePoolCost {
        pool_bytes: pool,
        slots,
        metadata_bytes,
        total_bytes: pool.saturating_add(metadata_bytes),
    }
}

/// The trade between line-aligned kmalloc without a bounce pool and 8-byte kmalloc with one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlignmentTradeoff {
    /// kmalloc under minimum alignment 8.
    pub small: KmallocFootprint,
    /// kmalloc under minimum alignment `line`.
    pub line_aligned: KmallocFootprint,
    /// The bounce pool that makes alignment 8 safe.
    pub pool: BouncePoolCost,
    /// `line_aligned.slab_bytes - small.slab_bytes - pool.total_bytes`: positive when small
    /// alignment plus the pool takes less memory.
    pub net_saving_bytes: i128,
}

/// Compares the two configurations on `rows` for cache line `line` and a pool of
/// `pool_bytes`.
///
/// # Errors
/// [`MemError::BadCacheLine`] unless `line` is a power of two from 8 to 4096.
pub fn alignment_tradeoff(
    rows: &[SlabinfoRow<'_>],
    line: u64,
    pool_bytes: u64,
) -> Result<AlignmentTradeoff, MemError> {
    if !is_valid_min_align(line) {
        return Err(MemError::BadCacheLine(line));
    }
    let policy = SlabOrderPolicy::default();
    let small = kmalloc_footprint(rows, 8, &policy)?;
    let line_aligned = kmalloc_footprint(rows, line, &policy)?;
    let pool = bounce_pool_cost(pool_bytes);
    let net_saving_bytes = i128::from(line_aligned.slab_bytes)
        - i128::from(small.slab_bytes)
        - i128::from(pool.total_bytes);
    Ok(AlignmentTradeoff {
        small,
        line_aligned,
        pool,
        net_saving_bytes,
    })
}
