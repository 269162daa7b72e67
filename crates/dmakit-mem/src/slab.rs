//! Slab caches: fixed-size objects carved out of runs of pages.
//!
//! A cache serves objects of one size. It takes a slab (2^order contiguous pages) from the
//! page allocator and lays objects out back to back from the slab's page-aligned base, so an
//! object whose size is a multiple of `a` (with `a` at most a page) is `a`-aligned. Free
//! slots are tracked per slab outside the memory (the slab holds physical addresses the
//! cache never dereferences), so a free of an address that is not a live object is caught.
//!
//! The slab order follows the idea of SLUB's order calculation: the smallest order (up to a
//! maximum, 3 by default) that holds at least `min_objects` objects while wasting at most
//! 1/16 of the slab, else the maximum order. With `min_objects = 16` this reproduces the
//! geometry of every kmalloc cache in the shipped x86-64 `/proc/slabinfo` snapshot (checked
//! by a test).

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::error::MemError;
use dmakit::platform::{PageAllocator, PAGE_SIZE};
use dmakit::PhysAddr;

/// How slab sizes are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabOrderPolicy {
    /// Objects a slab should hold at least, if the maximum order allows.
    pub min_objects: u64,
    /// Largest slab order (a slab is at most `2^max_order` pages).
    pub max_order: u32,
}

impl Default for SlabOrderPolicy {
    fn default() -> Self {
        Self {
            min_objects: 16,
            max_order: 3,
        }
    }
}

/// The shape of one cache's slabs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabGeometry {
    /// Object size (the stride between objects).
    pub object_size: u64,
    /// Pages per slab (`2^order`).
    pub pages_per_slab: u64,
    /// Objects per slab (at least 1).
    pub objects_per_slab: u64,
}

impl SlabGeometry {
    /// The geometry of a cache of `object_size`-byte objects under `policy`; `None` when
    /// `object_size` is 0 or larger than a slab of the maximum order.
    pub fn for_object(object_size: u64, policy: &SlabOrderPolicy) -> Option<Self> {
        if object_size == 0 {
            return None;
        }
        let shape = |order: u32| {
            let bytes = PAGE_SIZE << order;
            (bytes, bytes / object_size)
        };
        let chosen = (0..=policy.max_order).find(|&order| {
            let (bytes, n) = shape(order);
            n >= policy.min_objects && (bytes - n * object_size) * 16 <= bytes
        });
        let order = chosen.unwrap_or(policy.max_order);
        let (_, n) = shape(order);
        (n >= 1).then_some(Self {
            object_size,
            pages_per_slab: 1 << order,
            objects_per_slab: n,
        })
    }

    /// Bytes of one slab.
    pub fn slab_bytes(&self) -> u64 {
        self.pages_per_slab * PAGE_SIZE
    }
}

/// Counters of one cache, as `/proc/slabinfo` reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheStats {
    /// Cache name (`kmalloc-64`, `dma-kmalloc-128`).
    pub name: String,
    /// Live objects.
    pub active_objs: u64,
    /// Object slots in all slabs (live or free).
    pub num_objs: u64,
    /// Object size.
    pub object_size: u64,
    /// Objects per slab.
    pub objects_per_slab: u64,
    /// Pages per slab.
    pub pages_per_slab: u64,
    /// Slabs holding at least one live object.
    pub active_slabs: u64,
    /// All slabs.
    pub num_slabs: u64,
}

#[derive(Clone, Debug)]
struct Slab {
    /// Free slot indices; allocation pops the last.
    free: Vec<u32>,
    /// One bit per slot: set while the slot holds a live object.
    live: Vec<u64>,
}

impl Slab {
    fn new(objects: u64) -> Self {
        Self {
            free: (0..objects as u32).rev().collect(),
            live: vec![0; objects.div_ceil(64) as usize],
        }
    }
    fn in_use(&self, objects: u64) -> u64 {
        objects - self.free.len() as u64
    }
    fn is_live(&self, i: u32) -> bool {
        self.live[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set_live(&mut self, i: u32, on: bool) {
        let word = &mut self.live[(i / 64) as usize];
        if on {
            *word |= 1 << (i % 64);
        } else {
            *word &= !(1 << (i % 64));
        }
    }
}

/// One slab cache. Not synchronised: [`crate::Kmalloc`] locks it.
///
/// Guarantees: objects never overlap; every object lies inside a slab obtained from the page
/// allocator; an object's address is `base + i * object_size` for a page-aligned slab base.
/// At most one empty slab is kept for reuse; further empty slabs go back to the page
/// allocator at once.
#[derive(Clone, Debug)]
pub struct SlabCache {
    name: String,
    geometry: SlabGeometry,
    /// Slab base address → slab.
    slabs: BTreeMap<u64, Slab>,
    /// Bases of slabs with at least one free slot.
    partial: BTreeSet<u64>,
    /// The empty slab kept for reuse, if any.
    spare: Option<u64>,
    active_objs: u64,
}

impl SlabCache {
    /// An empty cache named `name` with slabs of shape `geometry`.
    pub fn new(name: String, geometry: SlabGeometry) -> Self {
        Self {
            name,
            geometry,
            slabs: BTreeMap::new(),
            partial: BTreeSet::new(),
            spare: None,
            active_objs: 0,
        }
    }

    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The slab shape.
    pub fn geometry(&self) -> SlabGeometry {
        self.geometry
    }

    /// Allocates one object, taking a new slab from `pages` (below `max_addr`) when every
    /// slab is full. Returns the object's address and, if a slab was added, its base.
    ///
    /// # Errors
    /// [`MemError::OutOfMemory`] when a new slab is needed and `pages` has none; nothing
    /// changes then.
    pub fn alloc<A: PageAllocator + ?Sized>(
        &mut self,
        pages: &A,
        max_addr: u64,
    ) -> Result<(PhysAddr, Option<PhysAddr>), MemError> {
        let g = self.geometry;
        let (base, added) = match self.partial.first() {
            Some(&b) => (b, None),
            None => {
                let base =
                    pages
                        .alloc_pages(g.pages_per_slab, max_addr)
                        .ok_or(MemError::OutOfMemory {
                            pages: g.pages_per_slab,
                        })?;
                let b = base.as_u64();
                self.slabs.insert(b, Slab::new(g.objects_per_slab));
                self.partial.insert(b);
                (b, Some(base))
            }
        };
        // `partial` only holds bases of slabs in `slabs` with a free slot, so both lookups
        // succeed; should that invariant ever break, the request fails as out of memory
        // rather than handing out a slot twice.
        let slot = self
            .slabs
            .get_mut(&base)
            .and_then(|slab| slab.free.pop().map(|i| (slab, i)));
        let Some((slab, i)) = slot else {
            return Err(MemError::OutOfMemory {
                pages: g.pages_per_slab,
            });
        };
        slab.set_live(i, true);
        if slab.free.is_empty() {
            self.partial.remove(&base);
        }
        if self.spare == Some(base) {
            self.spare = None;
        }
        self.active_objs += 1;
        Ok((PhysAddr::new(base + u64::from(i) * g.object_size), added))
    }

    /// Whether `addr` is the address of a live object of this cache.
    pub fn is_live(&self, addr: PhysAddr) -> bool {
        self.locate(addr)
            .is_some_and(|(b, i)| self.slabs[&b].is_live(i))
    }

    /// Frees the object at `addr`. If that empties a slab and another empty slab is already
    /// kept, the slab's pages go back to `pages`; its base is returned then.
    ///
    /// # Errors
    /// [`MemError::UnknownObject`] if `addr` is not a live object of this cache; nothing
    /// changes then.
    pub fn free<A: PageAllocator + ?Sized>(
        &mut self,
        pages: &A,
        addr: PhysAddr,
    ) -> Result<Option<PhysAddr>, MemError> {
        let unknown = MemError::UnknownObject { addr };
        let (base, i) = self.locate(addr).ok_or(unknown)?;
        let objects = self.geometry.objects_per_slab;
        let slab = self.slabs.get_mut(&base).ok_or(unknown)?;
        if !slab.is_live(i) {
            return Err(unknown);
        }
        slab.set_live(i, false);
        slab.free.push(i);
        let now_empty = slab.in_use(objects) == 0;
        self.partial.insert(base);
        self.active_objs -= 1;
        if !now_empty {
            return Ok(None);
        }
        if self.spare.is_none() {
            self.spare = Some(base);
            return Ok(None);
        }
        self.release(pages, base);
        Ok(Some(PhysAddr::new(base)))
    }

    /// Returns the kept empty slab, if any, to `pages`, and returns its base.
    pub fn shrink<A: PageAllocator + ?Sized>(&mut self, pages: &A) -> Option<PhysAddr> {
        let base = self.spare.take()?;
        self.release(pages, base);
        Some(PhysAddr::new(base))
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let g = self.geometry;
        let num_slabs = self.slabs.len() as u64;
        CacheStats {
            name: self.name.clone(),
            active_objs: self.active_objs,
            num_objs: num_slabs * g.objects_per_slab,
            object_size: g.object_size,
            objects_per_slab: g.objects_per_slab,
            pages_per_slab: g.pages_per_slab,
            active_slabs: num_slabs - u64::from(self.spare.is_some()),
            num_slabs,
        }
    }

    fn release<A: PageAllocator + ?Sized>(&mut self, pages: &A, base: u64) {
        self.slabs.remove(&base);
        self.partial.remove(&base);
        pages.free_pages(PhysAddr::new(base), self.geometry.pages_per_slab);
    }

    /// The slab base and slot index of an object address, if `addr` is a slot start in one
    /// of this cache's slabs.
    fn locate(&self, addr: PhysAddr) -> Option<(u64, u32)> {
        let a = addr.as_u64();
        let (&base, _) = self.slabs.range(..=a).next_back()?;
        let off = a - base;
        let g = self.geometry;
        if off % g.object_size != 0 || off / g.object_size >= g.objects_per_slab {
            return None;
        }
        Some((base, (off / g.object_size) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_linux_for_kmalloc_sizes() {
        let p = SlabOrderPolicy::default();
        let g = |s| {
            let g = SlabGeometry::for_object(s, &p).unwrap();
            (g.objects_per_slab, g.pages_per_slab)
        };
        assert_eq!(g(8), (512, 1));
        assert_eq!(g(96), (42, 1));
        assert_eq!(g(192), (21, 1));
        assert_eq!(g(512), (16, 2));
        assert_eq!(g(2048), (16, 8));
        assert_eq!(g(4096), (8, 8));
        assert_eq!(g(8192), (4, 8));
        assert_eq!(SlabGeometry::for_object(0, &p), None);
        assert_eq!(SlabGeometry::for_object(64 * 1024, &p), None);
    }
}
