//! The SWIOTLB slot pool as a bounce backend, with growth.
//!
//! Glue between [`crate::swiotlb::Pool`] (addresses only) and the bounce path: it keeps each
//! bounce's [`BounceMeta`] in the pool, refuses room the device cannot reach, and asks the
//! growth hook for another region when the pool runs out.

use alloc::sync::Arc;

use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::{
    BounceAllocError, BounceBackend, BounceMeta, BounceRequest, MemorySpan, PoolUsage,
};
use crate::growth::{Growth, GrowthHook, GrowthRequest};
use crate::swiotlb::{self, Pool, PoolConfig, PoolError, RegionError};

/// A SWIOTLB-style bounce backend.
pub struct SwiotlbBounce {
    pool: Pool<BounceMeta>,
    growth: Growth,
    grow_bytes: u64,
    reach: u64,
}

impl SwiotlbBounce {
    /// A backend with `config`'s geometry and no memory yet. Growth, when `hook` is given,
    /// asks for regions of `grow_bytes` (a multiple of the segment size) at or below `reach`.
    pub fn new(
        config: PoolConfig,
        hook: Option<Arc<dyn GrowthHook>>,
        grow_bytes: u64,
        reach: u64,
    ) -> Self {
        Self {
            pool: Pool::new(config),
            growth: Growth::new(hook),
            grow_bytes,
            reach,
        }
    }

    /// Adds a region of memory (initial memory, or the answer to a growth request).
    ///
    /// # Errors
    /// As [`Pool::add_region`]; the pool is unchanged then.
    pub fn add_region(&self, base: PhysAddr, bytes: u64) -> Result<PhysRange, RegionError> {
        let r = self.pool.add_region(base, bytes);
        match r {
            Ok(_) => self.growth.grew(),
            Err(_) => self.growth.completed(),
        }
        r
    }

    /// The grower could not find memory: the next shortage may ask again.
    pub fn growth_failed(&self) {
        self.growth.completed();
    }

    /// The slot pool itself (statistics, regions, per-area usage).
    pub fn pool(&self) -> &Pool<BounceMeta> {
        &self.pool
    }

    /// Bytes a growth request asks for.
    pub fn grow_bytes(&self) -> u64 {
        self.grow_bytes
    }
}

impl BounceBackend for SwiotlbBounce {
    fn name(&self) -> &'static str {
        "swiotlb"
    }

    fn is_cached(&self) -> bool {
        true
    }

    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError> {
        let request = swiotlb::BounceRequest::new(req.orig, req.len, req.min_align_mask);
        match self.pool.alloc(req.cpu, request, meta) {
            Ok(b) if b.addr.as_u64() + (req.len - 1) <= req.max_addr => Ok(b.addr),
            Ok(b) => {
                // Room out of the device's reach: give it back untouched.
                let _ = self.pool.free(b.addr);
                Err(BounceAllocError::Unreachable)
            }
            Err(PoolError::Exhausted { used, total, .. }) => {
                self.growth.request(GrowthRequest {
                    pool: "swiotlb",
                    min_bytes: self.grow_bytes,
                    max_addr: self.reach,
                });
                Err(BounceAllocError::Full { used, total })
            }
            Err(_) => Err(BounceAllocError::TooLarge {
                max: self.pool.max_mapping_size(req.min_align_mask),
            }),
        }
    }

    fn get(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.pool.get(addr).ok().map(|(_, m)| m)
    }

    fn free(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.pool.free(addr).ok().map(|(_, m)| m)
    }

    fn contains(&self, addr: PhysAddr) -> bool {
        self.pool.region_of(addr).is_some()
    }

    fn memory_span(&self) -> Option<Arc<MemorySpan>> {
        Some(self.pool.memory_span().clone())
    }

    fn usage(&self) -> PoolUsage {
        let s = self.pool.stats();
        PoolUsage {
            total: s.total_bytes,
            used: s.used_bytes,
            high_water: s.high_water_bytes,
            live: s.live,
        }
    }

    fn max_bounce(&self, min_align_mask: u64) -> Option<u64> {
        Some(self.pool.max_mapping_size(min_align_mask))
    }

    fn growth_pending(&self) -> bool {
        self.growth.is_pending()
    }

    fn growth_events(&self) -> u64 {
        self.growth.events()
    }
}
