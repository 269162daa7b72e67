//! The SWIOTLB slot pool as a bounce backend, with growth.
//!
//! Glue between [`crate::swiotlb::Pool`] (addresses only) and the bounce path: it keeps each
//! bounce's [`BounceMeta`] in the pool, places each bounce within the device's reach, and
//! asks the growth hook for another region, below the device's mask, when the memory the
//! device reaches runs out.

use alloc::sync::Arc;

use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::{
    BounceAllocError, BounceBackend, BounceMeta, BounceRequest, MemorySpan, PoolUsage,
};
use crate::error::DmaError;
use crate::growth::{Growth, GrowthHook, GrowthRequest};
use crate::platform::HostSharing;
use crate::swiotlb::{self, Pool, PoolConfig, RegionError, SwiotlbError};

/// A SWIOTLB-style bounce backend.
pub struct SwiotlbBounce {
    pool: Pool<BounceMeta>,
    growth: Growth,
    grow_bytes: u64,
    reach: u64,
    sharing: HostSharing,
}

impl SwiotlbBounce {
    /// A backend with `config`'s geometry and no memory yet. Growth, when `hook` is given,
    /// asks for regions of `grow_bytes` (a multiple of the segment size) at or below the
    /// lower of `reach` and the mask of the device whose bounce found no room.
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
            sharing: HostSharing::default(),
        }
    }

    /// The same backend, sharing every region it receives with the host through `sharing`
    /// before the region is used, and making it private again when
    /// [`SwiotlbBounce::remove_region`] gives it back (confidential guests). Give it before
    /// the first region.
    pub fn with_sharing(mut self, sharing: HostSharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Adds a region of memory (initial memory, or the answer to a growth request). With
    /// sharing (see [`SwiotlbBounce::with_sharing`]) the region is shared with the host
    /// before any bounce can use it.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// As [`Pool::add_region`]; [`RegionError::NotShared`] when the platform refuses to
    /// share it. The pool is unchanged then and the region private (a region that
    /// overlaps another one added at the same moment stays shared, since part of it is
    /// the other region's).
    pub fn add_region(&self, base: PhysAddr, bytes: u64) -> Result<PhysRange, RegionError> {
        let r = self.share_and_add(base, bytes);
        match r {
            Ok(_) => self.growth.grew(),
            Err(_) => self.growth.completed(),
        }
        r
    }

    /// Removes the region that starts at `base`, which must hold no live bounce, and makes
    /// it private again; returns its range so the caller can release the memory.
    ///
    /// # Errors
    /// As [`Pool::remove_region`]; the pool is unchanged then.
    pub fn remove_region(&self, base: PhysAddr) -> Result<PhysRange, RegionError> {
        let range = self.pool.remove_region(base)?;
        self.sharing.unshare(range);
        Ok(range)
    }

    /// Shares the region (outside every lock of the pool), then adds it.
    fn share_and_add(&self, base: PhysAddr, bytes: u64) -> Result<PhysRange, RegionError> {
        let range = self.pool.region_shape(base, bytes)?;
        if let Some(existing) = self.pool.regions().into_iter().find(|r| r.overlaps(&range)) {
            return Err(RegionError::Overlaps {
                new: range,
                existing,
            });
        }
        self.sharing
            .share(range)
            .map_err(|fault| RegionError::NotShared {
                region: range,
                fault,
            })?;
        self.pool.add_region(base, bytes)
    }

    /// The grower could not find memory: the next shortage may ask again.
    pub fn growth_failed(&self) {
        self.growth.completed();
    }

    /// The slot pool itself (statistics, regions, per-area usage).
    pub fn pool(&self) -> &Pool<BounceMeta> {
        &self.pool
    }
}

impl SwiotlbBounce {
    /// Asks for a region below the lower of the pool's reach and `max_addr`; whether
    /// growth is (now) pending.
    fn grow_below(&self, max_addr: u64) -> bool {
        self.growth.request(GrowthRequest {
            pool: "swiotlb",
            min_bytes: self.grow_bytes,
            max_addr: self.reach.min(max_addr),
        })
    }

    /// The allocation before mask-limited devices were served within their reach (kept to
    /// put defect 6 back, see [`crate::reintroduce`]).
    fn alloc_ignoring_mask(
        &self,
        req: &BounceRequest,
        request: swiotlb::SlotRequest,
        meta: BounceMeta,
    ) -> Result<PhysAddr, BounceAllocError> {
        match self.pool.alloc(req.cpu, request, meta) {
            Ok(b) if b.addr.as_u64() + (req.len - 1) <= req.max_addr => Ok(b.addr),
            Ok(b) => {
                let _ = self.pool.free(b.addr);
                Err(BounceAllocError::Unreachable)
            }
            Err(SwiotlbError::Exhausted { used, total, .. }) => {
                self.grow_below(u64::MAX);
                Err(BounceAllocError::Full { used, total })
            }
            Err(e) => Err(self.refusal(req, e)),
        }
    }

    /// What an allocation refused for a reason other than room says.
    fn refusal(&self, req: &BounceRequest, e: SwiotlbError) -> BounceAllocError {
        match e {
            SwiotlbError::TooLarge { max, .. } => BounceAllocError::TooLarge { max },
            SwiotlbError::BadAlignMask { mask, segment }
                if !crate::reintroduce::active(crate::reintroduce::Defect::TooLargeReportsZero) =>
            {
                BounceAllocError::AlignUnsupported {
                    min_align_mask: mask,
                    max_mask: segment - 1,
                }
            }
            _ => BounceAllocError::TooLarge {
                max: self.pool.max_mapping_size(req.min_align_mask),
            },
        }
    }
}

impl BounceBackend for SwiotlbBounce {
    fn name(&self) -> &'static str {
        "swiotlb"
    }

    fn is_cached(&self) -> bool {
        true
    }

    /// Reserves room within the device's reach (`req.max_addr`), lead-in included.
    ///
    /// When the memory the device reaches is full, or the pool has none below its mask,
    /// a growth request asks for memory below the lower of the pool's reach and the
    /// device's mask, and the answer is [`BounceAllocError::Full`] (the mapping may be
    /// deferred). Errors: `Full` as said; [`BounceAllocError::Unreachable`] only when no
    /// memory of the pool lies within reach and the pool cannot grow (no hook);
    /// [`BounceAllocError::TooLarge`] with the largest length this device's
    /// `min_align_mask` allows; [`BounceAllocError::AlignUnsupported`] when the mask is not
    /// smaller than a segment (nothing could be bounced).
    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError> {
        let request = swiotlb::SlotRequest::new(req.orig, req.len, req.min_align_mask);
        if crate::reintroduce::active(crate::reintroduce::Defect::MaskLimitedNoGrowth) {
            return self.alloc_ignoring_mask(req, request, meta);
        }
        match self.pool.alloc_below(req.cpu, request, req.max_addr, meta) {
            Ok(b) => Ok(b.addr),
            Err(SwiotlbError::Exhausted { used, total, .. }) => {
                self.grow_below(req.max_addr);
                Err(BounceAllocError::Full { used, total })
            }
            Err(SwiotlbError::Unreachable { .. }) => {
                if self.grow_below(req.max_addr) {
                    let s = self.pool.stats();
                    Err(BounceAllocError::Full {
                        used: s.used_bytes,
                        total: s.total_bytes,
                    })
                } else {
                    Err(BounceAllocError::Unreachable)
                }
            }
            Err(e) => Err(self.refusal(req, e)),
        }
    }

    fn get(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.pool.get(addr).ok().map(|(_, m)| m)
    }

    fn free(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.pool.free(addr).ok().map(|(_, m)| m)
    }

    /// One lookup: the bounce is claimed (hidden from `get`, `free` and other ends, still
    /// holding its slots) while `end` runs, then freed under a second lock of its area.
    #[inline]
    fn end(
        &self,
        addr: PhysAddr,
        end: &mut dyn FnMut(&BounceMeta) -> Result<u64, DmaError>,
    ) -> Option<Result<(BounceMeta, u64), DmaError>> {
        match self.pool.end(addr, |_, meta| end(meta)) {
            Ok(Ok((_, meta, value))) => Some(Ok((meta, value))),
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => None,
        }
    }

    /// One lookup and one lock of the bounce's area, under which `accept` runs.
    #[inline]
    fn take(
        &self,
        addr: PhysAddr,
        accept: &mut dyn FnMut(&BounceMeta) -> bool,
    ) -> Option<Result<BounceMeta, BounceMeta>> {
        let taken = self
            .pool
            .free_if(addr, |meta| if accept(meta) { Ok(()) } else { Err(*meta) });
        match taken {
            Ok(Ok((_, meta))) => Some(Ok(meta)),
            Ok(Err(meta)) => Some(Err(meta)),
            Err(_) => None,
        }
    }

    fn abandon(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.pool.abandon(addr).ok().map(|(_, m)| m)
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
