//! Configuring a [`DmaMapper`] before its first mapping.
//!
//! A mapper's pools, IOMMU layer, checker and statistics are fixed once it maps: map paths
//! run in interrupt context and take no lock to read their configuration. So they are all
//! set here, on a builder that owns the mapper until [`DmaMapperBuilder::build`] hands it
//! over, and the mapper itself has no setters.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::addr::PhysAddr;
use crate::bounce::{BounceBackend, TransientPool};
use crate::debug::{DebugChecker, DebugConfig};
use crate::decision::AlignmentPolicy;
use crate::device::DeviceId;
use crate::iommu::IommuDma;
use crate::platform::{HostSharing, PageAllocator, Platform};
use crate::stats::{BounceReporter, DeviceCounters, SiteTable};
use crate::swiotlb::SwiotlbBounce;
use crate::swiotlb::{PoolConfig, RegionError};

use crate::sync::Mutex;

use super::deferred::DeferQueue;
use super::routes::Registered;
use super::DmaMapper;
#[cfg(feature = "hazard-controls")]
use super::HazardControls;

impl<P: Platform> DmaMapper<P> {
    /// Starts configuring a mapper over `platform`. Without further settings the mapper
    /// uses the exact alignment policy, has no bounce pool and no IOMMU layer, keeps
    /// statistics and has the debug checker off.
    ///
    /// Allocates: call outside atomic context.
    pub fn builder(platform: P) -> DmaMapperBuilder<P> {
        DmaMapperBuilder {
            mapper: DmaMapper::new(platform),
            sharing: HostSharing::default(),
            transient: None,
            made: Vec::new(),
        }
    }
}

/// Configures a [`DmaMapper`]; see [`DmaMapper::builder`]. A setting given twice keeps the
/// second value.
#[must_use = "a builder does nothing until build() is called"]
pub struct DmaMapperBuilder<P> {
    mapper: DmaMapper<P>,
    /// Shares the memory of the pools the builder makes (none by default).
    sharing: HostSharing,
    /// Pages for the transient pool, made at [`DmaMapperBuilder::build`] with `sharing`.
    transient: Option<Arc<dyn PageAllocator + Send + Sync>>,
    /// The SWIOTLB pools this builder made, remade when `sharing` changes.
    made: Vec<MadePool>,
}

/// A SWIOTLB pool the builder made over memory the caller gave it.
struct MadePool {
    /// The device of a restricted pool; `None` for the global pool.
    device: Option<DeviceId>,
    base: PhysAddr,
    bytes: u64,
    pool: Arc<SwiotlbBounce>,
}

/// Makes every region of `pool` (a pool no mapping has used) private again.
fn unshare_regions(pool: &SwiotlbBounce) {
    for r in pool.pool().regions() {
        let removed = pool.remove_region(r.start());
        debug_assert!(removed.is_ok(), "a pool before build holds no bounce");
    }
}

impl<P: Platform> DmaMapperBuilder<P> {
    /// Gives devices that use [`BouncePool::Swiotlb`](crate::BouncePool::Swiotlb) (the
    /// default) a SWIOTLB pool over the `bytes` of memory at `base`, which the caller
    /// reserves for it: 2 KiB slots in 256 KiB segments, per-CPU areas (the CPU count
    /// rounded up to a power of two; one area if that is above the pool's limit of 4,096),
    /// no growth. For another geometry or growth, build a [`SwiotlbBounce`] and give it to
    /// [`Self::swiotlb_backend`].
    ///
    /// # Errors
    /// As [`SwiotlbBounce::add_region`]: [`RegionError::Misaligned`] unless `base` is a
    /// multiple of the page size, [`RegionError::BadSize`] unless `bytes` is a non-zero
    /// multiple of 256 KiB, [`RegionError::TooLarge`] if the range leaves the address
    /// space or holds `u32::MAX` slots or more, [`RegionError::NotShared`] when the
    /// platform refuses to share it (see [`Self::memory_sharing`], before or after this).
    /// The builder is dropped then.
    pub fn swiotlb(mut self, base: PhysAddr, bytes: u64) -> Result<Self, RegionError> {
        let pool = self.default_swiotlb(base, bytes)?;
        self = self.swiotlb_backend(pool.clone());
        self.made.push(MadePool {
            device: None,
            base,
            bytes,
            pool,
        });
        Ok(self)
    }

    /// Gives `device` a restricted DMA pool (Linux `restricted-dma-pool`) over the `bytes`
    /// of memory at `base`, which the caller reserves for this device alone: a SWIOTLB pool
    /// of the geometry [`Self::swiotlb`] builds, without growth. Every mapping of the
    /// device then bounces through it, whatever its alignment (never in place, never
    /// through a global pool); bounces of other devices never land in it. A second pool
    /// for the same device replaces the first. The device must not be attached to an
    /// IOMMU domain: its mappings are refused then
    /// ([`DmaError::RestrictedPoolBehindIommu`](crate::DmaError::RestrictedPoolBehindIommu)).
    ///
    /// # Errors
    /// As [`Self::swiotlb`]; the builder is dropped then.
    pub fn restricted_pool(
        mut self,
        device: DeviceId,
        base: PhysAddr,
        bytes: u64,
    ) -> Result<Self, RegionError> {
        let pool = self.default_swiotlb(base, bytes)?;
        self.forget_made(Some(device));
        self.mapper
            .routes
            .restricted
            .insert(device, Registered::new(pool.clone()));
        self.made.push(MadePool {
            device: Some(device),
            base,
            bytes,
            pool,
        });
        Ok(self)
    }

    /// A SWIOTLB pool of the default geometry over `bytes` at `base`, without growth,
    /// shared through the builder's sharing.
    fn default_swiotlb(
        &self,
        base: PhysAddr,
        bytes: u64,
    ) -> Result<Arc<SwiotlbBounce>, RegionError> {
        let config = PoolConfig::builder()
            .cpu_count(self.mapper.platform().cpu_count())
            .build()
            .unwrap_or_default();
        let pool = SwiotlbBounce::new(config, None, 0, u64::MAX).with_sharing(self.sharing.clone());
        pool.add_region(base, bytes)?;
        Ok(Arc::new(pool))
    }

    /// Bounces of devices that use [`BouncePool::Swiotlb`](crate::BouncePool::Swiotlb) go
    /// to `pool` (a pool [`Self::swiotlb`] made before is dropped, private again).
    pub fn swiotlb_backend(mut self, pool: Arc<dyn BounceBackend>) -> Self {
        self.forget_made(None);
        self.mapper.routes.swiotlb = Some(Registered::new(pool));
        self
    }

    /// Drops the pool this builder made for `device` (`None`: the global pool), private
    /// again.
    fn forget_made(&mut self, device: Option<DeviceId>) {
        self.made.retain(|m| {
            let keep = m.device != device;
            if !keep {
                unshare_regions(&m.pool);
            }
            keep
        });
    }

    /// Bounces of devices that use [`BouncePool::Coherent`](crate::BouncePool::Coherent)
    /// go to `pool`.
    pub fn coherent_backend(mut self, pool: Arc<dyn BounceBackend>) -> Self {
        self.mapper.routes.coherent = Some(Registered::new(pool));
        self
    }

    /// While a full pool waits for growth, bounces are served with exact-size page
    /// allocations from `pages` (shared with the host while they serve a bounce when the
    /// mapper has [`Self::memory_sharing`]).
    pub fn transient_pages(mut self, pages: Arc<dyn PageAllocator + Send + Sync>) -> Self {
        self.transient = Some(pages);
        self
    }

    /// Confidential guests: the memory of the pools this builder makes ([`Self::swiotlb`],
    /// [`Self::restricted_pool`] and [`Self::transient_pages`], given before or after this)
    /// is shared with the host through `sharing` before a device uses it: pools made
    /// earlier are remade over the same memory and shared now (memory an earlier sharing
    /// shared is made private through it). Pools made elsewhere take their own
    /// ([`SwiotlbBounce::with_sharing`],
    /// [`CoherentBouncePool::with_sharing`](crate::coherent_pool::CoherentBouncePool::with_sharing)).
    /// A confidential guest also sets [`Self::force_bounce_all`]: its devices reach no
    /// private memory, so no buffer may be mapped in place.
    ///
    /// # Errors
    /// [`RegionError::NotShared`] when the platform refuses to share the memory of a pool
    /// made earlier; the builder is dropped then, every pool it made private.
    pub fn memory_sharing(mut self, sharing: HostSharing) -> Result<Self, RegionError> {
        self.sharing = sharing;
        // The old pools give their memory up first: it may be the same hook's.
        self.made.iter().for_each(|m| unshare_regions(&m.pool));
        let mut remade = Vec::with_capacity(self.made.len());
        for m in &self.made {
            match self.default_swiotlb(m.base, m.bytes) {
                Ok(pool) => remade.push(pool),
                Err(e) => {
                    remade.iter().for_each(|p| unshare_regions(p));
                    return Err(e);
                }
            }
        }
        for (m, pool) in self.made.iter_mut().zip(remade) {
            let route = Registered::new(pool.clone());
            match m.device {
                Some(d) => self.mapper.routes.restricted.insert(d, route),
                None => self.mapper.routes.swiotlb = Some(route),
            }
            m.pool = pool;
        }
        Ok(self)
    }

    /// Every device bounces every mapping, whatever its own
    /// [`Device::force_bounce`](crate::Device::force_bounce) flag says (Linux
    /// `swiotlb=force`): on the direct path and behind the IOMMU, with reason
    /// [`BounceReason::Forced`](crate::BounceReason::Forced). Mappings then fail with
    /// [`DmaError::NoBouncePool`](crate::DmaError::NoBouncePool) for a device whose pool is
    /// not configured. A confidential guest turns it on together with
    /// [`Self::memory_sharing`].
    pub fn force_bounce_all(mut self) -> Self {
        self.mapper.force_bounce_all = true;
        self
    }

    /// Devices attached to a domain of `iommu` are mapped through it (IOVAs, page tables,
    /// IOTLB invalidation); the others as without it.
    pub fn iommu(mut self, iommu: Arc<IommuDma>) -> Self {
        self.mapper.routes.iommu = Some(iommu);
        self
    }

    /// Uses `policy` for the alignment rule (default [`AlignmentPolicy::Exact`]).
    pub fn policy(mut self, policy: AlignmentPolicy) -> Self {
        self.mapper.policy = policy;
        self
    }

    /// Checks every operation against a shadow table of live mappings and reports driver
    /// bugs (see [`crate::debug`]), with the default [`DebugConfig`] capacities.
    /// Behaviour is otherwise unchanged.
    pub fn debug_checker(self) -> Self {
        self.debug_checker_with(DebugConfig::default())
    }

    /// As [`DmaMapperBuilder::debug_checker`], with the checker's tables sized by `cfg`
    /// (allocated here, once: checking never allocates).
    pub fn debug_checker_with(mut self, cfg: DebugConfig) -> Self {
        self.mapper.obs.debug = Some(DebugChecker::new(self.mapper.line(), cfg));
        self
    }

    /// Samples bounces through `reporter` (at most one report per its interval).
    pub fn bounce_reporter(mut self, reporter: BounceReporter) -> Self {
        self.mapper.obs.reporter = Some(reporter);
        self
    }

    /// Call sites with at least this share of all bounces, in parts per million, get the
    /// "make this allocation a DMA buffer" suggestion in [`DmaMapper::top_sites`]
    /// (default 100,000: a tenth).
    pub fn site_suggestion_threshold(mut self, ppm: u64) -> Self {
        self.mapper.obs.suggest_ppm = ppm;
        self
    }

    /// Room for `capacity` deferred mappings waiting at once (default 256). The queue is
    /// allocated here, so [`DmaMapper::map_or_defer`] never allocates; when it is full,
    /// `map_or_defer` refuses with [`crate::DmaError::DeferQueueFull`]. Zero turns deferral
    /// off: every request that would wait is refused so.
    pub fn deferred_capacity(mut self, capacity: usize) -> Self {
        self.mapper.deferred = Mutex::new(DeferQueue::new(capacity));
        self
    }

    /// Turns statistics and call-site attribution off: [`DmaMapper::stats`] then reports
    /// no devices and [`DmaMapper::top_sites`] nothing, and the map path does no counting.
    pub fn without_statistics(mut self) -> Self {
        self.mapper.obs.counters = DeviceCounters::disabled();
        self.mapper.obs.sites = SiteTable::disabled();
        self
    }

    /// Turns safety mechanisms off for a demonstration (model/test-only feature
    /// `hazard-controls`); see [`HazardControls`].
    #[cfg(feature = "hazard-controls")]
    pub fn hazard_controls(mut self, controls: HazardControls) -> Self {
        self.mapper.controls = controls;
        self
    }

    /// The configured mapper. Never fails: every setting was checked when it was given.
    ///
    /// Allocates: call outside atomic context.
    pub fn build(mut self) -> DmaMapper<P> {
        if let Some(pages) = self.transient {
            self.mapper.routes.transient = Some(TransientPool::new(pages, self.sharing));
        }
        let m = &mut self.mapper;
        let no_restricted = m.routes.restricted.is_empty() || m.controls.ignores_restricted_pools();
        m.plain = no_restricted && m.routes.iommu.is_none() && !m.force_bounce_all;
        self.mapper
    }
}
