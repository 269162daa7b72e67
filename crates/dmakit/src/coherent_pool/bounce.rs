//! The coherent object pool as a bounce backend.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::sync::Mutex;

use super::objects::{ObjectPool, ObjectPoolConfig, ObjectPoolError};
use crate::addr::PhysAddr;
use crate::bounce::{
    BounceAllocError, BounceBackend, BounceMeta, BounceRequest, MemorySpan, PoolUsage,
};
use crate::fixed_table::FixedMap;
use crate::growth::GrowthHook;
use crate::platform::{HostSharing, PAGE_SIZE};

/// Bounces in coherent memory: no cache maintenance on the bounce side, growth before the
/// pool runs dry. The original of every bounce is kept in a map keyed by its DMA address,
/// with room for one record per `min_object` of the pool's memory (made when a chunk is
/// added), so allocating, looking up and freeing a bounce never allocates and a record
/// never lacks room.
///
/// [`BounceBackend::usage`] reports the high-water mark of the bounces kept: a bounce given
/// back with [`BounceBackend::abandon`] does not count in it (the object pool's own
/// [`ObjectPool::usage`] counts every object ever allocated). It is read after each
/// allocation, so it is exact for sequential use and may miss a peak that concurrent calls
/// reached only between two reads.
pub struct CoherentBouncePool {
    objects: ObjectPool,
    /// Live bounces: bounce address → (object start, metadata, bytes the bounce raised the
    /// high-water mark by).
    live: Mutex<FixedMap<u64, (u64, BounceMeta, u64)>>,
    high_water: AtomicU64,
    sharing: HostSharing,
}

impl CoherentBouncePool {
    /// An empty pool with the given shape; memory arrives through [`Self::add_chunk`]
    /// (directly, or from the growth hook's answer).
    ///
    /// # Errors
    /// [`ObjectPoolError::BadConfig`] if sizes are not powers of two, `min_object` is below 64,
    /// `max_object` exceeds `chunk_bytes`, or `chunk_bytes` is not a multiple of a page.
    pub fn new(
        cfg: ObjectPoolConfig,
        hook: Option<Arc<dyn GrowthHook>>,
    ) -> Result<Self, ObjectPoolError> {
        Ok(Self {
            objects: ObjectPool::new(cfg, hook)?,
            live: Mutex::new(FixedMap::with_capacity(0)),
            high_water: AtomicU64::new(0),
            sharing: HostSharing::default(),
        })
    }

    /// The same pool, sharing every chunk it receives with the host through `sharing`
    /// before the chunk is used (confidential guests; the pool never shrinks, so nothing is
    /// made private again). Give it before the first chunk.
    pub fn with_sharing(mut self, sharing: HostSharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// Adds `[base, base + bytes)` of coherent memory, cut into the largest aligned free
    /// blocks that fit it, after sharing it with the host when the pool has sharing (see
    /// [`Self::with_sharing`]), with room for its bounces' records. Completes an
    /// outstanding growth request. Allocates: call outside atomic context (growth does,
    /// from its worker or hook).
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`ObjectPoolError::BadChunk`] if the chunk is empty, not aligned to or not a multiple of
    /// a page (or of `min_object` when that is larger), overflows, or overlaps a chunk the
    /// pool has; [`ObjectPoolError::NotShared`] when the platform refuses to share it;
    /// nothing changed (a chunk that overlaps another one added at the same moment stays
    /// shared, since part of it is the other chunk's).
    pub fn add_chunk(&self, base: PhysAddr, bytes: u64) -> Result<(), ObjectPoolError> {
        let range = self.objects.check_chunk(base, bytes)?;
        self.sharing
            .share(range)
            .map_err(ObjectPoolError::NotShared)?;
        // Room before the chunk can hand out objects: at most one bounce per `min_object`.
        // Room made for a chunk refused below stays, unused.
        let objects = usize::try_from(bytes / self.objects.config().min_object)
            .map_err(|_| ObjectPoolError::BadChunk)?;
        {
            let mut live = self.live.lock();
            let room = live.capacity().saturating_add(objects);
            live.grow_to(room);
        }
        self.objects.add_chunk(base, bytes)
    }

    /// The underlying object pool (for occupancy and growth state).
    pub fn objects(&self) -> &ObjectPool {
        &self.objects
    }
}

impl CoherentBouncePool {
    /// Ends the bounce at `addr`; an `unused` one also takes back what it added to the
    /// high-water mark (never below the current usage).
    fn release(&self, addr: PhysAddr, unused: bool) -> Option<BounceMeta> {
        let (obj, meta, raised) = self.live.lock().remove(&addr.as_u64())?;
        // The object was allocated for this bounce and is live until here.
        let freed = self.objects.free(PhysAddr::new(obj));
        debug_assert!(freed.is_ok());
        if unused
            && !crate::reintroduce::active(crate::reintroduce::Defect::FailedBounceRaisesHighWater)
        {
            self.take_back(raised);
        }
        Some(meta)
    }

    /// Takes `raised` bytes back from the high-water mark (never below the current usage).
    fn take_back(&self, raised: u64) {
        let used = self.objects.usage().used;
        let lower = |high: u64| Some(high.saturating_sub(raised).max(used));
        let _ = self
            .high_water
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, lower);
    }
}

impl BounceBackend for CoherentBouncePool {
    fn name(&self) -> &'static str {
        self.objects.config().name
    }

    fn is_cached(&self) -> bool {
        false
    }

    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError> {
        let offset = req.orig.as_u64() & req.min_align_mask;
        let mut align = req.min_align_mask + 1;
        if req.len >= PAGE_SIZE {
            align = align.max(PAGE_SIZE);
        }
        let size = offset + req.len;
        let obj = self
            .objects
            .alloc(size, align, req.max_addr)
            .map_err(|e| match e {
                ObjectPoolError::TooLarge { max } => BounceAllocError::TooLarge { max },
                ObjectPoolError::Exhausted { used, total } => {
                    BounceAllocError::Full { used, total }
                }
                _ => BounceAllocError::Unreachable,
            })?;
        let dma = obj.as_u64() + offset;
        let used = self.objects.usage().used;
        let raised = used.saturating_sub(self.high_water.fetch_max(used, Ordering::Relaxed));
        if self
            .live
            .lock()
            .insert(dma, (obj.as_u64(), meta, raised))
            .is_err()
        {
            // Not reached while every chunk came through `add_chunk`, which makes room for
            // all its objects; refused cleanly all the same.
            let freed = self.objects.free(obj);
            debug_assert!(freed.is_ok());
            self.take_back(raised);
            let u = self.objects.usage();
            return Err(BounceAllocError::Full {
                used: u.used,
                total: u.total,
            });
        }
        Ok(PhysAddr::new(dma))
    }

    fn get(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.live.lock().get(&addr.as_u64()).map(|(_, m, _)| *m)
    }

    fn free(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.release(addr, false)
    }

    fn abandon(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.release(addr, true)
    }

    fn contains(&self, addr: PhysAddr) -> bool {
        self.objects.contains(addr)
    }

    /// The largest object, `max_object`: a bounce whose offset under the mask is 0 fits in
    /// it; a longer one never does, however much is freed or grown.
    fn max_bounce(&self, _min_align_mask: u64) -> Option<u64> {
        Some(self.objects.config().max_object)
    }

    fn memory_span(&self) -> Option<Arc<MemorySpan>> {
        Some(self.objects.memory_span().clone())
    }

    fn growth_pending(&self) -> bool {
        self.objects.growth_pending()
    }

    fn growth_events(&self) -> u64 {
        self.objects.growth_events()
    }

    fn usage(&self) -> PoolUsage {
        let u = self.objects.usage();
        PoolUsage {
            total: u.total,
            used: u.used,
            high_water: self.high_water.load(Ordering::Relaxed),
            live: u.live,
        }
    }
}
