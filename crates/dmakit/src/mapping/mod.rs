//! The routing layer: the raw, address-based streaming API.
//!
//! [`DmaMapper`] validates every request once, at this boundary, then decides which path a
//! mapping takes: the direct path, the device's IOMMU domain, or a bounce through the pool
//! the device uses. Each path owns one mechanism and knows nothing of the others; only this
//! module knows them all. It also owns what spans paths: growth fallbacks, deferred
//! mappings and scatter-gather splitting.
//!
//! This file holds the mapper; [`DmaMapperBuilder`] configures it. What the mapper holds is
//! grouped by concern: `routes` (its bounce pools and IOMMU layer) and `observability`
//! (debug checker, statistics, reporter). The operations are split by kind: `route` (the
//! decisions and the paths behind them), `single` (map, unmap, sync), `attributed` (the same
//! with [`crate::MapAttrs`], and `need_sync`), `deferred` (mappings that wait for room), `sg`
//! (scatter-gather lists), `sg_sync` (their syncs) and `resource` (peer device registers).

use core::sync::atomic::{AtomicU64, AtomicUsize};

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::{BounceBackend, TransientPool};
use crate::debug::{DebugChecker, DebugReport};
use crate::decision::AlignmentPolicy;
use crate::device::Device;
use crate::error::DmaError;
use crate::platform::Platform;
use crate::stats::{PoolSnapshot, SiteStats, StatsSnapshot};

mod attributed;
mod builder;
mod deferred;
mod hazard_controls;
mod limits;
mod observability;
mod resource;
mod restricted;
mod route;
mod routes;
mod sg;
mod sg_sync;
mod single;
mod sited;

pub use crate::mapped::{DmaSegment, MapPath, SgEntry};
pub use builder::DmaMapperBuilder;
use deferred::DeferQueue;
#[cfg(feature = "hazard-controls")]
pub use hazard_controls::HazardControls;
#[cfg(not(feature = "hazard-controls"))]
use hazard_controls::HazardControls;
use observability::Observability;
use route::Route;
use routes::Routes;

/// Called once when a deferred mapping completes, fails for a reason other than room, or
/// is ended by the release of its device ([`DmaError::DeviceReleased`]). Never called with
/// a lock of the mapper held.
pub type DeferredCompletion = Box<dyn FnOnce(Result<DmaAddr, DmaError>) + Send>;

/// What [`DmaMapper::map_or_defer`] did.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a deferred mapping completes later through its callback"]
pub enum MapStatus {
    /// Mapped now; the callback was not called and never will be.
    Mapped(DmaAddr),
    /// Queued; the callback runs when bounce room frees up (or the device is released).
    Deferred,
}

/// The streaming DMA mapping layer for one platform, configured once by
/// [`DmaMapper::builder`].
///
/// All methods take `&self`, validate their input and never panic on bad input. A failed
/// operation leaves the caller's buffer and every pool exactly as they were.
pub struct DmaMapper<P> {
    platform: P,
    policy: AlignmentPolicy,
    routes: Routes,
    deferred: Mutex<DeferQueue>,
    /// Deferred mappings queued, plus `map_or_defer` attempts under way: frees look at it
    /// (not at the queue's lock) to decide whether anyone may be waiting for room.
    waiting: AtomicUsize,
    /// Room events so far (frees, explicit retries): a deferred attempt that saw one during
    /// its attempt tries again instead of waiting for the next.
    room_events: AtomicU64,
    controls: HazardControls,
    /// Every device bounces every mapping (the builder's `force_bounce_all`).
    force_bounce_all: bool,
    /// No restricted pool (or the hazard control ignores them), no IOMMU layer and no
    /// `force_bounce_all`: the routing decisions look at the device alone. Set by
    /// [`DmaMapperBuilder::build`].
    plain: bool,
    obs: Observability,
}

impl<P: Platform> DmaMapper<P> {
    /// A mapper over `platform` with the exact alignment policy and no bounce pools: the
    /// builder's starting point, which [`DmaMapperBuilder`] then configures field by field.
    fn new(platform: P) -> Self {
        Self {
            policy: AlignmentPolicy::Exact,
            routes: Routes::new(),
            deferred: Mutex::new(DeferQueue::new(DeferQueue::DEFAULT_CAPACITY)),
            waiting: AtomicUsize::new(0),
            room_events: AtomicU64::new(0),
            controls: HazardControls::default(),
            force_bounce_all: false,
            plain: true,
            obs: Observability::new(platform.cpu_count()),
            platform,
        }
    }

    /// A snapshot of the statistics: per device, per pool. Reads atomics only.
    pub fn stats(&self) -> StatsSnapshot {
        let pools = self
            .routes
            .backends()
            .map(|b| PoolSnapshot {
                name: b.name(),
                usage: b.usage(),
                growth_events: b.growth_events(),
            })
            .collect();
        StatsSnapshot {
            devices: self.obs.counters.snapshot(),
            pools,
            untracked_site_bounces: self.obs.sites.untracked(),
        }
    }

    /// Bounced mappings and bytes copied to and from bounces so far, over every device:
    /// `stats().total()`'s `bounces_total()` and `bytes_to_bounce + bytes_from_bounce`,
    /// without building the snapshot (for a caller that reads them after every
    /// operation). Reads atomics only.
    pub fn bounce_totals(&self) -> (u64, u64) {
        self.obs.counters.bounce_totals()
    }

    /// The `n` call sites that requested the most bounced mappings, most first.
    pub fn top_sites(&self, n: usize) -> Vec<SiteStats> {
        self.obs.sites.top(n, self.obs.suggest_ppm)
    }

    /// Drains the flush queues of every lazy IOMMU domain ([`crate::iommu::IommuDma::flush_queues`]:
    /// one IOTLB invalidation per domain, then the queued IOVAs and bounce slots are
    /// released) and, when bounce slots were released, completes deferred mappings that
    /// now fit. Call it from a timer in lazy mode. Returns the bounce slots released (0
    /// without an IOMMU).
    pub fn flush_iommu_queues(&self) -> usize {
        let Some(iommu) = &self.routes.iommu else {
            return 0;
        };
        let released = iommu.flush_queues(self.platform.current_cpu());
        if released > 0
            && !crate::reintroduce::active(crate::reintroduce::Defect::LazyDomainParksBounces)
        {
            self.room_freed();
        }
        released
    }

    /// The debug checker, when enabled.
    pub fn debug_checker(&self) -> Option<&DebugChecker> {
        self.obs.debug.as_ref()
    }

    /// The device is going away. Its deferred mappings still waiting are taken out of the
    /// queue and their callbacks called, on this thread and outside every lock of the
    /// mapper, with [`DmaError::DeviceReleased`] (one another thread is trying at this
    /// moment gets the same from that thread); none completes later. With the debug
    /// checker on, every mapping the device still has is reported as a leak (and
    /// returned); otherwise nothing is known and nothing returned.
    pub fn release_device(&self, dev: &Device) -> Vec<DebugReport> {
        self.cancel_deferred(dev);
        self.obs
            .debug
            .as_ref()
            .map_or_else(Vec::new, |d| d.release_device(dev))
    }

    /// The platform this mapper drives.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The pool bounces of `dev` go to, if there is one: its restricted pool when it has
    /// one, else the global pool its [`crate::BouncePool`] names.
    pub fn bounce_backend(&self, dev: &Device) -> Option<&Arc<dyn BounceBackend>> {
        match self.restricted_pool(dev) {
            Some(pool) => Some(&pool.backend),
            None => self.routes.bounce_backend(dev),
        }
    }

    /// The transient backend, if enabled.
    pub fn transient(&self) -> Option<&TransientPool> {
        self.routes.transient.as_ref()
    }

    /// Whether kmalloc must keep cache-line alignment for safety on this platform: some
    /// device is non-coherent and has no bounce pool to fix misaligned buffers.
    pub fn needs_line_aligned_kmalloc<'a>(
        &self,
        devices: impl IntoIterator<Item = &'a Device>,
    ) -> bool {
        devices
            .into_iter()
            .any(|d| !d.is_coherent() && self.bounce_backend(d).is_none())
    }

    fn line(&self) -> u64 {
        self.platform.cache_line_size()
    }
}

/// Validates a caller's range once, at the API boundary.
///
/// The rule: the range must not be empty, and every page it touches must lie inside the
/// 64-bit address space with an end the address types can hold, that is
/// `addr + len <= 2^64 - PAGE_SIZE`. Maintenance, bounces and IOMMU mappings all work on
/// whole lines or pages, and the last page of the address space has no such end (the IOVA
/// allocator never hands it out either), so a range reaching into it — or one as absurd as
/// `map(0, u64::MAX)` — is [`DmaError::AddressOverflow`] on every device, whatever its mask.
/// Unmap and sync apply the same rule to the device address they are given
/// ([`checked_extent`]).
#[inline]
fn checked_range(dev: &Device, start: PhysAddr, len: u64) -> Result<PhysRange, DmaError> {
    match PhysRange::new(start, len) {
        Some(range) if end_in_bounds(range.end().as_u64()) => Ok(range),
        _ => Err(range_error(dev, start.as_u64(), len)),
    }
}

/// The rule of [`checked_range`] for `len` bytes at the raw address `start` (a physical or
/// a device address).
#[inline]
fn checked_extent(dev: &Device, start: u64, len: u64) -> Result<(), DmaError> {
    match start.checked_add(len) {
        Some(end) if len != 0 && end_in_bounds(end) => Ok(()),
        _ => Err(range_error(dev, start, len)),
    }
}

/// Whether a range ending (exclusively) at `end` keeps clear of the last page of the
/// address space: `end <= 2^64 - PAGE_SIZE`, the highest end whose page rounding still
/// fits in 64 bits.
#[inline(always)]
fn end_in_bounds(end: u64) -> bool {
    const LAST_END: u64 = 0u64.wrapping_sub(crate::platform::PAGE_SIZE);
    end <= LAST_END || crate::reintroduce::active(crate::reintroduce::Defect::HugeRangeAccepted)
}

/// The error for a range [`checked_extent`] refuses: [`DmaError::ZeroLength`] when it is
/// empty, else [`DmaError::AddressOverflow`]. Out of line, so a valid range's check stays
/// a few compares.
#[cold]
#[inline(never)]
fn range_error(dev: &Device, start: u64, len: u64) -> DmaError {
    if len == 0 {
        DmaError::ZeroLength { device: dev.id() }
    } else {
        DmaError::AddressOverflow {
            device: dev.id(),
            addr: start,
            len,
        }
    }
}
