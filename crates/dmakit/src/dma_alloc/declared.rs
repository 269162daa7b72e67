//! Per-device coherent memory: a region declared for one device.
//!
//! Some devices may only reach, or must only use, one window of memory (Linux's
//! `shared-dma-pool` reserved regions, `dma_declare_coherent_memory`): on-chip SRAM, a
//! carve-out a firewall opens to the device alone. [`DmaAllocator::declare_coherent`] gives
//! the device such a region; from then on its `alloc_coherent` calls are served from the
//! region, in either context (the region is prepared once, so no allocation waits), and
//! its frees go back there.
//!
//! Choice: no fallback. When the region is full the allocation fails
//! ([`DmaAllocError::DeclaredRegionExhausted`]) rather than taking other memory, as Linux
//! does for `no-map` regions: a device was given a region because other memory is not
//! for it, and a fallback would hand it memory it may not be allowed to reach. Regions are
//! for devices without address translation (their device address is the region's bus
//! address).

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::addr::PhysRange;
use crate::coherent_pool::{ObjectPool, ObjectPoolConfig, ObjectPoolUsage};
use crate::device::{Device, DeviceId};
use crate::dma_alloc::{DeviceAddressSpace, DmaAllocError, DmaAllocator, ZonedPages};
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};
use crate::translation::bus_within;

/// One declared region: its device, its memory and the objects handed out of it.
pub(super) struct Declared {
    pub(super) device: DeviceId,
    pub(super) range: PhysRange,
    /// Whether the region was remapped uncached (for a non-coherent device).
    pub(super) uncached: bool,
    pub(super) objects: ObjectPool,
}

/// The declared regions of an allocator.
#[derive(Default)]
pub(super) struct DeclaredRegions {
    regions: Mutex<Vec<Arc<Declared>>>,
}

impl DeclaredRegions {
    /// The region declared for `device`, if any.
    pub(super) fn of(&self, device: DeviceId) -> Option<Arc<Declared>> {
        self.regions
            .lock()
            .iter()
            .find(|r| r.device == device)
            .cloned()
    }

    /// Whether `region` may be declared for `device` now.
    fn check_free(
        &self,
        device: DeviceId,
        region: PhysRange,
        bad: DmaAllocError,
    ) -> Result<(), DmaAllocError> {
        check(&self.regions.lock(), device, region, bad)
    }

    /// Live objects in all regions.
    pub(super) fn live(&self) -> u64 {
        self.regions
            .lock()
            .iter()
            .map(|r| r.objects.usage().live)
            .sum()
    }

    /// Takes every region out (for teardown).
    pub(super) fn take_all(&self) -> Vec<Arc<Declared>> {
        core::mem::take(&mut *self.regions.lock())
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Declares `region` as `dev`'s coherent memory (Linux `dma_declare_coherent_memory`):
    /// [`DmaAllocator::alloc_coherent`] for `dev` is served from it from now on, in
    /// power-of-two pieces aligned to their size, and never from other memory — a full
    /// region fails the allocation ([`DmaAllocError::DeclaredRegionExhausted`]), as Linux's
    /// `no-map` regions do, since the device was given the region because other memory is
    /// not for it. The caller reserves the region for this use; it is remapped uncached
    /// for a non-coherent device, and made cached again by [`DmaAllocator::release`].
    ///
    /// # Errors
    /// [`DmaAllocError::BadDeclaredRegion`] for a region that is not whole, page-aligned
    /// pages within the device's DMA mask, or that overlaps another declared region;
    /// [`DmaAllocError::AlreadyDeclared`]; [`DmaAllocError::BadConfig`] for a device behind
    /// a translating address space; [`DmaAllocError::Memory`] when the platform refuses
    /// the remap. Nothing changed then.
    pub fn declare_coherent(&self, dev: &Device, region: PhysRange) -> Result<(), DmaAllocError> {
        let bad = DmaAllocError::BadDeclaredRegion {
            device: dev.id(),
            base: region.start(),
            len: region.len(),
        };
        if self.translated(dev) {
            return Err(DmaAllocError::BadConfig(
                "declared coherent memory is for devices without address translation",
            ));
        }
        let unit = PAGE_SIZE.max(self.config().atomic_min_object);
        if !region.start().is_aligned(unit)
            || region.len() % unit != 0
            || bus_within(dev, region, dev.coherent_limit()).is_none()
        {
            return Err(bad);
        }
        let max_object = 1 << region.len().ilog2();
        let cfg = ObjectPoolConfig {
            min_object: self.config().atomic_min_object,
            max_object,
            chunk_bytes: region.len(),
            refill_below: 0,
            name: "declared-coherent",
        };
        let objects = ObjectPool::new(cfg, None).map_err(|_| bad)?;
        objects
            .add_chunk(region.start(), region.len())
            .map_err(|_| bad)?;
        self.declared.check_free(dev.id(), region, bad)?;
        // The remap may wait: it is done outside the lock, and the checks made again after.
        let uncached = !dev.is_coherent();
        if uncached {
            self.platform()
                .make_uncached(region)
                .map_err(DmaAllocError::Memory)?;
        }
        let mut regions = self.declared.regions.lock();
        if let Err(e) = check(&regions, dev.id(), region, bad) {
            drop(regions);
            if uncached {
                self.platform().make_cached(region);
            }
            return Err(e);
        }
        regions.push(Arc::new(Declared {
            device: dev.id(),
            range: region,
            uncached,
            objects,
        }));
        Ok(())
    }

    /// Occupancy of `dev`'s declared coherent region, if it has one.
    pub fn declared_coherent_usage(&self, dev: &Device) -> Option<ObjectPoolUsage> {
        self.declared.of(dev.id()).map(|r| r.objects.usage())
    }
}

/// `bad` when `region` overlaps one of `regions`; [`DmaAllocError::AlreadyDeclared`] when
/// `device` has one.
fn check(
    regions: &[Arc<Declared>],
    device: DeviceId,
    region: PhysRange,
    bad: DmaAllocError,
) -> Result<(), DmaAllocError> {
    if regions.iter().any(|r| r.device == device) {
        return Err(DmaAllocError::AlreadyDeclared { device });
    }
    if regions.iter().any(|r| r.range.overlaps(&region)) {
        return Err(bad);
    }
    Ok(())
}
