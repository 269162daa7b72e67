//! kmalloc: small physical allocations with a configurable minimum alignment.
//!
//! This is why the allocation side exists in dmakit. Aligning every small object to the
//! cache line (as kernels do so that any object may be DMA'd) makes an 8-byte allocation
//! cost 128 bytes. Here the minimum alignment comes from a [`MinAlignPolicy`]: 8 bytes when
//! the mapping layer can bounce misaligned DMA (or no device needs it), the line size only
//! when nothing could repair a shared line. Callers that know an allocation will be a DMA
//! buffer mark it [`AllocKind::Dma`]; those objects come from separate, line-aligned
//! `dma-kmalloc-*` caches, own their cache lines, and never need a bounce.
//!
//! Requests up to [`KMALLOC_MAX_CACHE_SIZE`] are served from slab caches (see
//! [`crate::slab`]); larger ones take whole pages from the page allocator. The
//! allocator hands out physical addresses and never dereferences them.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;

use crate::class_label::class_label;
use crate::error::MemError;
use crate::policy::MinAlignPolicy;
use crate::slab::{CacheStats, SlabCache, SlabGeometry, SlabOrderPolicy};
use dmakit::platform::{PageAllocator, PAGE_SIZE};
use dmakit::size_class::{classes_for, KMALLOC_MAX_CACHE_SIZE};
use dmakit::PhysAddr;

/// What an allocation will be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocKind {
    /// Ordinary memory: aligned to the policy's minimum alignment. A DMA mapping of it may
    /// share cache lines with neighbours and be bounced.
    Normal,
    /// A DMA buffer: aligned to the cache line and padded to whole lines, so it shares no
    /// line with another object and never needs an alignment bounce.
    Dma,
}

/// What a live allocation is, as [`Kmalloc::usable_size`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Bytes usable at the address (the size class, or whole pages for large allocations).
    pub usable: u64,
    /// The kind it was allocated as.
    pub kind: AllocKind,
}

#[derive(Debug)]
struct State {
    /// Normal caches first, then DMA caches.
    caches: Vec<(AllocKind, SlabCache)>,
    /// Slab base → (slab end, index of the owning cache in `caches`).
    slabs: BTreeMap<u64, (u64, usize)>,
    /// Large allocations: base → (pages, kind).
    large: BTreeMap<u64, (u64, AllocKind)>,
}

/// The kmalloc allocator over a page allocator `A`. Thread-safe: one lock guards the
/// caches; the page allocator is called with it held.
///
/// Guarantees: every object is aligned to the policy's minimum alignment (and to the
/// alignment asked of [`Kmalloc::alloc_aligned`]); [`AllocKind::Dma`] objects are aligned to
/// the cache line and their usable size is a multiple of it; live objects never overlap;
/// every failed call leaves the allocator as it was.
pub struct Kmalloc<A> {
    pages: A,
    policy: MinAlignPolicy,
    slab_policy: SlabOrderPolicy,
    max_addr: u64,
    state: Mutex<State>,
}

impl<A: fmt::Debug> fmt::Debug for Kmalloc<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kmalloc")
            .field("pages", &self.pages)
            .field("policy", &self.policy)
            .field("slab_policy", &self.slab_policy)
            .finish_non_exhaustive()
    }
}

impl<A: PageAllocator> Kmalloc<A> {
    /// A kmalloc over `pages` with `policy` and the default slab order policy, taking pages
    /// anywhere in memory.
    pub fn new(pages: A, policy: MinAlignPolicy) -> Self {
        Self::with_slab_policy(pages, policy, SlabOrderPolicy::default(), u64::MAX)
    }

    /// A kmalloc whose slabs and large allocations lie at or below `max_addr`, with slab
    /// sizes from `slab_policy`. Caches whose objects do not fit a slab of the policy's
    /// maximum order are not created; their requests take whole pages instead.
    pub fn with_slab_policy(
        pages: A,
        policy: MinAlignPolicy,
        slab_policy: SlabOrderPolicy,
        max_addr: u64,
    ) -> Self {
        let mut caches = Vec::new();
        for (kind, prefix, align) in [
            (AllocKind::Normal, "kmalloc-", policy.min_align()),
            (AllocKind::Dma, "dma-kmalloc-", policy.line()),
        ] {
            for size in classes_for(align) {
                if let Some(g) = SlabGeometry::for_object(size, &slab_policy) {
                    let name = format!("{prefix}{}", class_label(size));
                    caches.push((kind, SlabCache::new(name, g)));
                }
            }
        }
        Self {
            pages,
            policy,
            slab_policy,
            max_addr,
            state: Mutex::new(State {
                caches,
                slabs: BTreeMap::new(),
                large: BTreeMap::new(),
            }),
        }
    }

    /// The alignment policy.
    pub fn policy(&self) -> MinAlignPolicy {
        self.policy
    }

    /// The page allocator underneath.
    pub fn page_allocator(&self) -> &A {
        &self.pages
    }

    /// Allocates `size` bytes of kind `kind`; the address is aligned to the minimum
    /// alignment ([`AllocKind::Normal`]) or the cache line ([`AllocKind::Dma`]).
    ///
    /// # Errors
    /// As [`Kmalloc::alloc_aligned`].
    pub fn alloc(&self, size: u64, kind: AllocKind) -> Result<PhysAddr, MemError> {
        self.alloc_aligned(size, 1, kind)
    }

    /// Allocates `size` bytes aligned to at least `align` (a power of two up to
    /// [`PAGE_SIZE`]) and to what `kind` guarantees.
    ///
    /// # Errors
    /// [`MemError::ZeroSize`]; [`MemError::BadAlignment`] if `align` is not a power of two
    /// or exceeds a page; [`MemError::OutOfMemory`] / [`MemError::TooLarge`] from the page
    /// allocator. Nothing changes on error.
    pub fn alloc_aligned(
        &self,
        size: u64,
        align: u64,
        kind: AllocKind,
    ) -> Result<PhysAddr, MemError> {
        if size == 0 {
            return Err(MemError::ZeroSize);
        }
        if !align.is_power_of_two() || align > PAGE_SIZE {
            return Err(MemError::BadAlignment(align));
        }
        let align = align.max(match kind {
            AllocKind::Normal => self.policy.min_align(),
            AllocKind::Dma => self.policy.line(),
        });
        let mut st = self.state.lock();
        let cache = (size <= KMALLOC_MAX_CACHE_SIZE)
            .then(|| {
                st.caches.iter().position(|(k, c)| {
                    let s = c.geometry().object_size;
                    *k == kind && s >= size && s % align == 0
                })
            })
            .flatten();
        match cache {
            Some(idx) => {
                let (obj, added) = st.caches[idx].1.alloc(&self.pages, self.max_addr)?;
                if let Some(base) = added {
                    let bytes = st.caches[idx].1.geometry().slab_bytes();
                    st.slabs.insert(base.as_u64(), (base.as_u64() + bytes, idx));
                }
                Ok(obj)
            }
            None => {
                let pages = size.div_ceil(PAGE_SIZE);
                let base = self
                    .pages
                    .alloc_pages(pages, self.max_addr)
                    .ok_or(MemError::OutOfMemory { pages })?;
                st.large.insert(base.as_u64(), (pages, kind));
                Ok(base)
            }
        }
    }

    /// Frees the allocation at `addr` and returns its usable size.
    ///
    /// # Errors
    /// [`MemError::UnknownObject`] if `addr` is not a live allocation (never allocated,
    /// already freed, or inside an object); nothing changes then.
    pub fn free(&self, addr: PhysAddr) -> Result<u64, MemError> {
        let mut st = self.state.lock();
        if let Some((pages, _)) = st.large.remove(&addr.as_u64()) {
            self.pages.free_pages(addr, pages);
            return Ok(pages * PAGE_SIZE);
        }
        let idx = owner_of(&st, addr).ok_or(MemError::UnknownObject { addr })?;
        let size = st.caches[idx].1.geometry().object_size;
        if let Some(released) = st.caches[idx].1.free(&self.pages, addr)? {
            st.slabs.remove(&released.as_u64());
        }
        Ok(size)
    }

    /// The usable size and kind of the live allocation at `addr` (Linux `ksize`).
    ///
    /// # Errors
    /// [`MemError::UnknownObject`] if `addr` is not a live allocation.
    pub fn usable_size(&self, addr: PhysAddr) -> Result<ObjectInfo, MemError> {
        let st = self.state.lock();
        if let Some(&(pages, kind)) = st.large.get(&addr.as_u64()) {
            return Ok(ObjectInfo {
                usable: pages * PAGE_SIZE,
                kind,
            });
        }
        let unknown = MemError::UnknownObject { addr };
        let idx = owner_of(&st, addr).ok_or(unknown)?;
        let (kind, cache) = &st.caches[idx];
        if !cache.is_live(addr) {
            return Err(unknown);
        }
        Ok(ObjectInfo {
            usable: cache.geometry().object_size,
            kind: *kind,
        })
    }

    /// Returns every cache's kept empty slab to the page allocator; returns how many slabs
    /// went back.
    pub fn shrink(&self) -> usize {
        let mut st = self.state.lock();
        let mut released = 0;
        for i in 0..st.caches.len() {
            if let Some(base) = st.caches[i].1.shrink(&self.pages) {
                st.slabs.remove(&base.as_u64());
                released += 1;
            }
        }
        released
    }

    /// Per-cache counters, normal caches (ascending size) then DMA caches.
    pub fn cache_stats(&self) -> Vec<CacheStats> {
        self.state
            .lock()
            .caches
            .iter()
            .map(|(_, c)| c.stats())
            .collect()
    }

    /// Pages held by large (page-sized) allocations.
    pub fn large_pages(&self) -> u64 {
        self.state.lock().large.values().map(|&(p, _)| p).sum()
    }

    /// Writes the per-cache counters in `/proc/slabinfo` version 2.1 format (header line,
    /// column comment, one line per cache; tunables and shared counts are 0 as in SLUB).
    ///
    /// # Errors
    /// Only those of `out`.
    pub fn write_slabinfo<W: fmt::Write>(&self, out: &mut W) -> fmt::Result {
        write_slabinfo(out, &self.cache_stats())
    }

    /// [`Kmalloc::write_slabinfo`] into a new string.
    pub fn slabinfo(&self) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_slabinfo(&mut s);
        s
    }
}

fn owner_of(st: &State, addr: PhysAddr) -> Option<usize> {
    let a = addr.as_u64();
    let (_, &(end, owner)) = st.slabs.range(..=a).next_back()?;
    (a < end).then_some(owner)
}

/// Writes `stats` in `/proc/slabinfo` version 2.1 format.
///
/// # Errors
/// Only those of `out`.
pub fn write_slabinfo<W: fmt::Write>(out: &mut W, stats: &[CacheStats]) -> fmt::Result {
    out.write_str("slabinfo - version: 2.1\n")?;
    out.write_str(
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> \
         : tunables <limit> <batchcount> <sharedfactor> \
         : slabdata <active_slabs> <num_slabs> <sharedavail>\n",
    )?;
    for s in stats {
        writeln!(
            out,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            s.name,
            s.active_objs,
            s.num_objs,
            s.object_size,
            s.objects_per_slab,
            s.pages_per_slab,
            0,
            0,
            0,
            s.active_slabs,
            s.num_slabs,
            0
        )?;
    }
    Ok(())
}
