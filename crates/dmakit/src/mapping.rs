//! The routing layer: the raw, address-based streaming API.
//!
//! [`DmaMapper`] validates every request once, at this boundary, then decides which path a
//! mapping takes: the direct path, or a bounce through the pool the device uses. Each path
//! owns one mechanism and knows nothing of the others; only this module knows them all.
//! It also owns what spans paths: growth fallbacks, deferred mappings and scatter-gather
//! splitting.

use core::panic::Location;
use core::sync::atomic::{fence, AtomicUsize, Ordering};

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::Mutex;

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::{self as bounce, MapFailure, SyncPart};
use crate::bounce::{BounceAllocError, BounceBackend, BounceMeta, MemorySpan, TransientPool};
use crate::debug::checker::Unmapping;
use crate::debug::{DebugChecker, DebugReport, LiveMapping, MappingFamily};
use crate::decision::{self, AlignmentPolicy, BounceReason};
use crate::device::{BouncePool, Device};
use crate::direct;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu::{self, IommuDma, IommuDomain};
use crate::platform::{PageAllocator, Platform};
use crate::stats::{
    BounceReporter, DeviceCounters, PoolSnapshot, SiteStats, SiteTable, StatsSnapshot,
};

/// Called once when a deferred mapping completes (or fails for a reason other than room).
pub type DeferredCompletion = Box<dyn FnOnce(Result<DmaAddr, DmaError>) + Send>;

/// What [`DmaMapper::map_or_defer`] did.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a deferred mapping completes later through its callback"]
pub enum MapStatus {
    /// Mapped now; the callback was not called and never will be.
    Mapped(DmaAddr),
    /// Queued; the callback runs when bounce room frees up.
    Deferred,
}

/// One element of a scatter-gather list given to [`DmaMapper::map_sg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// First byte.
    pub phys: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

/// One device-visible segment produced by [`DmaMapper::map_sg`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    /// Device address.
    pub dma: DmaAddr,
    /// Length in bytes.
    pub len: u64,
}

/// How a single mapping was made, as reported by [`DmaMapper::map_traced`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapPath {
    /// The device uses the buffer in place.
    Direct,
    /// The buffer was bounced for `reason` through the named backend.
    Bounced {
        /// Why.
        reason: BounceReason,
        /// The backend's name.
        backend: &'static str,
    },
    /// The device reaches the buffer in place through an IOVA of IOMMU domain `domain`.
    Iommu {
        /// The device's domain.
        domain: crate::platform::IommuDomainId,
    },
}

/// A bounce backend as the router keeps it: with its memory span, when it has one.
struct Registered {
    backend: Arc<dyn BounceBackend>,
    span: Option<Arc<MemorySpan>>,
}

impl Registered {
    fn new(backend: Arc<dyn BounceBackend>) -> Self {
        let span = backend.memory_span();
        Self { backend, span }
    }

    /// False when `a` is certainly not in the backend's memory; true when it may be.
    #[inline]
    fn may_hold(&self, a: PhysAddr) -> bool {
        self.span.as_ref().is_none_or(|s| s.may_contain(a.as_u64()))
    }
}

/// The path a mapping takes, as decided by the routing layer.
enum Route {
    /// The device reaches the buffer in place.
    Direct,
    /// Through this IOMMU domain (which may still bounce, by its own rules).
    Iommu(Arc<IommuDomain>),
    /// Through the device's bounce pool, for this reason.
    Bounce(BounceReason),
}

/// Switches that turn a safety mechanism off, so tests and the simulator can show the
/// failure it prevents. Never set them outside such a demonstration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HazardControls {
    /// Do not fill inbound bounces from the original buffer (at map and at
    /// `sync_for_device`): a short device write then copies back whatever the bounce memory
    /// held before — data of an earlier user.
    pub skip_inbound_fill: bool,
}

struct Deferred {
    dev: Device,
    range: PhysRange,
    dir: Direction,
    site: &'static Location<'static>,
    done: DeferredCompletion,
}

/// The streaming DMA mapping layer for one platform.
///
/// All methods take `&self`, validate their input and never panic on bad input. A failed
/// operation leaves the caller's buffer and every pool exactly as they were.
pub struct DmaMapper<P> {
    platform: P,
    policy: AlignmentPolicy,
    swiotlb: Option<Registered>,
    coherent: Option<Registered>,
    transient: Option<TransientPool>,
    deferred: Mutex<VecDeque<Deferred>>,
    /// Deferred mappings queued, plus `map_or_defer` attempts under way: frees look at it
    /// (not at the queue's lock) to decide whether anyone may be waiting for room.
    waiting: AtomicUsize,
    controls: HazardControls,
    iommu: Option<Arc<IommuDma>>,
    debug: Option<DebugChecker>,
    counters: DeviceCounters,
    sites: SiteTable,
    suggest_ppm: u64,
    reporter: Option<BounceReporter>,
}

impl<P: Platform> DmaMapper<P> {
    /// A mapper over `platform` with the exact alignment policy and no bounce pools.
    pub fn new(platform: P) -> Self {
        Self {
            policy: AlignmentPolicy::Exact,
            swiotlb: None,
            coherent: None,
            transient: None,
            deferred: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            controls: HazardControls::default(),
            iommu: None,
            debug: None,
            counters: DeviceCounters::new(platform.cpu_count()),
            sites: SiteTable::new(platform.cpu_count()),
            suggest_ppm: 100_000,
            reporter: None,
            platform,
        }
    }

    /// Call sites with at least this share of all bounces, in parts per million, get the
    /// "make this allocation a DMA buffer" suggestion in [`DmaMapper::top_sites`]
    /// (default 100,000: a tenth).
    pub fn with_site_suggestion_threshold(mut self, ppm: u64) -> Self {
        self.suggest_ppm = ppm;
        self
    }

    /// Turns statistics and call-site attribution off: [`DmaMapper::stats`] then reports
    /// no devices and [`DmaMapper::top_sites`] nothing, and the map path does no counting.
    pub fn without_statistics(mut self) -> Self {
        self.counters = DeviceCounters::disabled();
        self.sites = SiteTable::disabled();
        self
    }

    /// Samples bounces through `reporter` (at most one report per its interval).
    pub fn with_bounce_reporter(mut self, reporter: BounceReporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// A snapshot of the statistics: per device, per pool. Reads atomics only.
    pub fn stats(&self) -> StatsSnapshot {
        let pools = [&self.swiotlb, &self.coherent]
            .into_iter()
            .flatten()
            .map(|r| r.backend.as_ref())
            .chain(self.transient.as_ref().map(|t| t as &dyn BounceBackend))
            .map(|b| PoolSnapshot {
                name: b.name(),
                usage: b.usage(),
                growth_events: b.growth_events(),
            })
            .collect();
        StatsSnapshot {
            devices: self.counters.snapshot(),
            pools,
            untracked_site_bounces: self.sites.untracked(),
        }
    }

    /// The `n` call sites that requested the most bounced mappings, most first.
    pub fn top_sites(&self, n: usize) -> Vec<SiteStats> {
        self.sites.top(n, self.suggest_ppm)
    }

    /// Devices attached to a domain of `iommu` are mapped through it (IOVAs, page tables,
    /// IOTLB invalidation); the others as before.
    pub fn with_iommu(mut self, iommu: Arc<IommuDma>) -> Self {
        self.iommu = Some(iommu);
        self
    }

    /// The IOMMU layer, if there is one.
    pub fn iommu(&self) -> Option<&Arc<IommuDma>> {
        self.iommu.as_ref()
    }

    /// The IOMMU domain `dev` is mapped through, if any.
    #[inline]
    fn iommu_domain(&self, dev: &Device) -> Option<Arc<IommuDomain>> {
        self.iommu.as_ref()?.domain_of(dev.id())
    }

    fn iommu_ctx<'a>(&'a self, dev: &Device) -> iommu::path::MapCtx<'a> {
        iommu::path::MapCtx {
            backend: self.bounce_backend(dev),
            policy: self.policy,
            fill_inbound: !self.controls.skip_inbound_fill,
        }
    }

    /// Checks every operation against a shadow table of live mappings and reports driver
    /// bugs (see [`crate::debug`]). Behaviour is otherwise unchanged.
    pub fn with_debug_checker(mut self) -> Self {
        self.debug = Some(DebugChecker::new(self.line(), 10_000));
        self
    }

    /// The debug checker, when enabled.
    pub fn debug_checker(&self) -> Option<&DebugChecker> {
        self.debug.as_ref()
    }

    /// The device is going away: with the debug checker on, every mapping it still has is
    /// reported as a leak (and returned); otherwise nothing is known and nothing returned.
    pub fn release_device(&self, dev: &Device) -> Vec<DebugReport> {
        self.debug
            .as_ref()
            .map_or_else(Vec::new, |d| d.release_device(dev))
    }

    #[inline]
    fn debug_mapped(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        result: &Result<(DmaAddr, MapPath), DmaError>,
    ) {
        if let Some(d) = &self.debug {
            debug_record_mapped(d, dev, range, dir, site, result);
        }
    }

    /// Turns safety mechanisms off for a demonstration; see [`HazardControls`].
    pub fn with_hazard_controls(mut self, controls: HazardControls) -> Self {
        self.controls = controls;
        self
    }

    /// Uses `policy` for the alignment rule.
    pub fn with_policy(mut self, policy: AlignmentPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Bounces of devices that use [`BouncePool::Swiotlb`] go to `pool`.
    pub fn with_swiotlb(mut self, pool: Arc<dyn BounceBackend>) -> Self {
        self.swiotlb = Some(Registered::new(pool));
        self
    }

    /// Bounces of devices that use [`BouncePool::Coherent`] go to `pool`.
    pub fn with_coherent_pool(mut self, pool: Arc<dyn BounceBackend>) -> Self {
        self.coherent = Some(Registered::new(pool));
        self
    }

    /// While a full pool waits for growth, serve bounces with exact-size page allocations
    /// from `pages`.
    pub fn with_transient_pages(mut self, pages: Arc<dyn PageAllocator + Send + Sync>) -> Self {
        self.transient = Some(TransientPool::new(pages));
        self
    }

    /// The platform this mapper drives.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The alignment policy in force.
    pub fn policy(&self) -> AlignmentPolicy {
        self.policy
    }

    /// The pool bounces of `dev` go to, if there is one.
    pub fn bounce_backend(&self, dev: &Device) -> Option<&Arc<dyn BounceBackend>> {
        match dev.bounce_pool() {
            BouncePool::Swiotlb => self.swiotlb.as_ref().map(|r| &r.backend),
            BouncePool::Coherent => self.coherent.as_ref().map(|r| &r.backend),
        }
    }

    /// The transient backend, if enabled.
    pub fn transient(&self) -> Option<&TransientPool> {
        self.transient.as_ref()
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

    /// Lends `len` bytes at `phys` to `dev` for one transfer in `dir` (Linux
    /// `dma_map_phys`). Returns the address the device must use.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range;
    /// [`DmaError::NoBouncePool`] when the buffer must be bounced and the device has no
    /// pool; [`DmaError::PoolExhausted`] or [`DmaError::TooLargeToBounce`] when the pool
    /// cannot take it; a memory fault from the bounce copy. On error nothing was changed.
    #[inline]
    #[track_caller]
    pub fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<DmaAddr, DmaError> {
        self.map_at(dev, phys, len, dir, Location::caller())
            .map(|(dma, _)| dma)
    }

    /// As [`DmaMapper::map`], also saying which path the mapping took.
    ///
    /// # Errors
    /// As [`DmaMapper::map`].
    #[inline]
    #[track_caller]
    pub fn map_traced(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(DmaAddr, MapPath), DmaError> {
        self.map_at(dev, phys, len, dir, Location::caller())
    }

    /// The body of [`DmaMapper::map`] and [`DmaMapper::map_traced`], inlined into each so
    /// that `map` never builds the [`MapPath`] it drops.
    #[inline(always)]
    fn map_at(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(DmaAddr, MapPath), DmaError> {
        let range = checked_range(dev, phys.as_u64(), len)?;
        let route = self.route(dev, range, dir);
        if let Route::Direct = route {
            // Returned on its own, so a direct mapping's result stays in registers.
            let mapped = (self.map_direct(dev, range, dir), MapPath::Direct);
            self.debug_mapped(dev, range, dir, site, &Ok(mapped));
            return Ok(mapped);
        }
        let result = self
            .map_routed(dev, range, dir, site, route)
            .map_err(|f| self.failure_to_error(dev, range, f));
        self.debug_mapped(dev, range, dir, site, &result);
        result
    }

    /// Maps like [`DmaMapper::map`], but when the bounce pool is full the request waits in
    /// a FIFO queue instead of failing, and `done` is called with the result once room frees
    /// up (FreeBSD's `BUS_DMA_WAITOK` loads). While requests wait, new ones queue behind
    /// them, so completions come in request order. `done` runs on the thread whose unmap
    /// (or [`DmaMapper::retry_deferred`] call) made room.
    ///
    /// # Errors
    /// Every error of [`DmaMapper::map`] except exhaustion; then `done` is dropped uncalled.
    #[track_caller]
    pub fn map_or_defer(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        done: DeferredCompletion,
    ) -> Result<MapStatus, DmaError> {
        let range = checked_range(dev, phys.as_u64(), len)?;
        let site = Location::caller();
        let mut queue = self.deferred.lock();
        // Announce the waiter before trying, so a free racing with a failed attempt either
        // sees the announcement (and retries the queue) or happened before the attempt
        // (which then found its room): the fences order both sides.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if queue.is_empty() {
            match self.map_range(dev, range, dir, site) {
                Ok(mapped) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.debug_mapped(dev, range, dir, site, &Ok(mapped));
                    return Ok(MapStatus::Mapped(mapped.0));
                }
                Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {}
                Err(f) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(self.failure_to_error(dev, range, f));
                }
            }
        } else if decision::bounce_reason(dev, range, dir, self.policy, self.line()).is_some()
            && self.bounce_backend(dev).is_none()
        {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            });
        }
        queue.push_back(Deferred {
            dev: dev.clone(),
            range,
            dir,
            site,
            done,
        });
        self.counters
            .deferred(self.platform.current_cpu(), dev.id());
        Ok(MapStatus::Deferred)
    }

    /// Room was freed: completes deferred mappings if any may be waiting. Takes no shared
    /// lock when nobody waits.
    fn room_freed(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.retry_deferred();
        }
    }

    /// Number of deferred mappings waiting for room.
    pub fn deferred_len(&self) -> usize {
        self.deferred.lock().len()
    }

    /// Completes waiting deferred mappings, in order, while they fit. Called automatically
    /// after every bounced unmap; call it after adding memory to a pool.
    pub fn retry_deferred(&self) {
        loop {
            let mut queue = self.deferred.lock();
            let Some(head) = queue.pop_front() else {
                return;
            };
            match self.map_range(&head.dev, head.range, head.dir, head.site) {
                Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {
                    queue.push_front(head);
                    return;
                }
                result => {
                    drop(queue);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let result =
                        result.map_err(|f| self.failure_to_error(&head.dev, head.range, f));
                    self.debug_mapped(&head.dev, head.range, head.dir, head.site, &result);
                    (head.done)(result.map(|(dma, _)| dma));
                }
            }
        }
    }

    /// Ends the mapping `dma` of `len` bytes made with `dir`; the CPU owns the buffer again
    /// and sees what the device wrote.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range. For a
    /// bounced mapping also [`DmaError::UnknownMapping`] (not live, or another device's),
    /// [`DmaError::OutOfMapping`] (a different length), [`DmaError::WrongDirection`].
    /// Direct mappings keep no record; the debug checker catches their misuse.
    #[inline]
    #[track_caller]
    pub fn unmap(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let range = checked_range(dev, dma.as_u64(), len)?;
        if let Some(d) = &self.debug {
            let u = Unmapping {
                dma,
                len,
                dir,
                family: MappingFamily::Single,
            };
            d.unmapping(dev, u, Location::caller());
        }
        self.unmap_range(dev, dma, range, dir)
    }

    /// Unmaps without consulting the debug checker (the caller did, or is undoing its own
    /// work).
    #[inline]
    fn unmap_range(
        &self,
        dev: &Device,
        dma: DmaAddr,
        range: PhysRange,
        dir: Direction,
    ) -> Result<(), DmaError> {
        if let Some(dom) = self.iommu_domain(dev) {
            return self.unmap_iommu(&dom, dev, dma, range.len(), dir);
        }
        match self.backend_owning(dma) {
            Some(backend) => self.unmap_bounced(backend, dev, dma, range.len(), dir),
            None => {
                direct::unmap(&self.platform, dev, range, dir);
                Ok(())
            }
        }
    }

    #[inline(never)]
    fn unmap_iommu(
        &self,
        dom: &IommuDomain,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let ended = iommu::path::unmap(&self.platform, dom, dev, dma, len, dir)?;
        self.counters
            .copied_from_bounce(self.platform.current_cpu(), dev.id(), ended.copied);
        if ended.freed_room {
            self.room_freed();
        }
        Ok(())
    }

    #[inline(never)]
    fn unmap_bounced(
        &self,
        backend: &dyn BounceBackend,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let (_, copied) = bounce::unmap(&self.platform, backend, dev, dma, len, dir)?;
        self.counters
            .copied_from_bounce(self.platform.current_cpu(), dev.id(), copied);
        self.room_freed();
        Ok(())
    }

    /// Passes ownership of `len` bytes at `offset` inside the mapping `dma` to the device.
    /// On a bounced mapping only that part is copied.
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`]; for a bounced mapping [`DmaError::OutOfMapping`] when the
    /// part leaves the mapping and [`DmaError::WrongDirection`] when the mapping does not
    /// permit `dir`.
    #[track_caller]
    pub fn sync_for_device(
        &self,
        dev: &Device,
        dma: DmaAddr,
        offset: u64,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let part = SyncPart {
            dma,
            offset,
            len,
            dir,
        };
        self.sync(dev, part, false, Location::caller())
    }

    /// Passes ownership of `len` bytes at `offset` inside the mapping `dma` back to the
    /// CPU, which then sees what the device wrote there.
    ///
    /// # Errors
    /// As [`DmaMapper::sync_for_device`].
    #[track_caller]
    pub fn sync_for_cpu(
        &self,
        dev: &Device,
        dma: DmaAddr,
        offset: u64,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let part = SyncPart {
            dma,
            offset,
            len,
            dir,
        };
        self.sync(dev, part, true, Location::caller())
    }

    /// Both syncs: ownership of `part` passes to the CPU (`for_cpu`) or to the device.
    fn sync(
        &self,
        dev: &Device,
        part: SyncPart,
        for_cpu: bool,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        let SyncPart {
            dma,
            offset,
            len,
            dir,
        } = part;
        let range = self.sync_range(dev, dma, offset, len)?;
        if let Some(d) = &self.debug {
            d.syncing(dev, dma, offset, len, dir, for_cpu, site);
        }
        let fill_inbound = !self.controls.skip_inbound_fill;
        if let Some(dom) = self.iommu_domain(dev) {
            let to = if for_cpu {
                iommu::path::SyncTo::Cpu
            } else {
                iommu::path::SyncTo::Device { fill_inbound }
            };
            let copied = iommu::path::sync(&self.platform, &dom, dev, part, to)?;
            let cpu = self.platform.current_cpu();
            if for_cpu {
                self.counters.copied_from_bounce(cpu, dev.id(), copied);
            } else {
                self.counters.copied_to_bounce(cpu, dev.id(), copied);
            }
            return Ok(());
        }
        let cpu = self.platform.current_cpu();
        match (self.backend_owning(dma), for_cpu) {
            (Some(b), true) => {
                let copied = bounce::sync_for_cpu(&self.platform, b, dev, part)?;
                self.counters.copied_from_bounce(cpu, dev.id(), copied);
            }
            (Some(b), false) => {
                let copied = bounce::sync_for_device(&self.platform, b, dev, part, fill_inbound)?;
                self.counters.copied_to_bounce(cpu, dev.id(), copied);
            }
            (None, true) => direct::sync_for_cpu(&self.platform, dev, range, dir),
            (None, false) => direct::sync_for_device(&self.platform, dev, range, dir),
        }
        Ok(())
    }

    /// Maps a scatter-gather list. Entries longer than the device's maximum segment size,
    /// or crossing its segment boundary, are split; every resulting segment gets its own
    /// bounce decision. Returns the device-visible segments (possibly more than entries).
    ///
    /// # Errors
    /// Any error of [`DmaMapper::map`] for any segment; segments already mapped are unmapped
    /// again, so nothing is left behind. [`DmaError::ZeroLength`] for an empty list.
    #[track_caller]
    pub fn map_sg(
        &self,
        dev: &Device,
        entries: &[SgEntry],
        dir: Direction,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        if entries.is_empty() {
            return Err(DmaError::ZeroLength { device: dev.id() });
        }
        let ranges = entries
            .iter()
            .map(|e| checked_range(dev, e.phys.as_u64(), e.len))
            .collect::<Result<Vec<_>, _>>()?;
        let site = Location::caller();
        let result = self.map_sg_ranges(dev, &ranges, dir, site);
        if let Some(d) = &self.debug {
            match &result {
                Ok((segs, phys)) => {
                    let group = d.next_group();
                    for (seg, phys) in segs.iter().zip(phys) {
                        let m = LiveMapping {
                            device: dev.id(),
                            dma: seg.dma,
                            phys: *phys,
                            len: seg.len,
                            dir,
                            family: MappingFamily::Sg {
                                nents: segs.len(),
                                group,
                            },
                            site,
                            bounced: phys.is_some_and(|p| p.as_u64() != seg.dma.as_u64()),
                            coherent_device: dev.is_coherent(),
                            cpu_owned: Vec::new(),
                        };
                        d.mapped(dev, m);
                    }
                }
                Err(e) => d.map_failed(dev, site, *e),
            }
        }
        result.map(|(segs, _)| segs)
    }

    /// Maps validated sg ranges; also returns each segment's CPU range where it is one
    /// contiguous range (not for IOMMU-merged segments).
    #[allow(clippy::type_complexity)]
    fn map_sg_ranges(
        &self,
        dev: &Device,
        ranges: &[PhysRange],
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(Vec<DmaSegment>, Vec<Option<PhysAddr>>), DmaError> {
        if let Some(dom) = self.iommu_domain(dev) {
            let ctx = self.iommu_ctx(dev);
            let segs = iommu::path::map_sg(&self.platform, &dom, dev, ranges, dir, &ctx)
                .map_err(|f| self.failure_to_error(dev, ranges[0], f))?;
            let phys = alloc::vec![None; segs.len()];
            return Ok((segs, phys));
        }
        let mut out = Vec::with_capacity(ranges.len());
        let mut phys = Vec::with_capacity(ranges.len());
        for &range in ranges {
            for piece in split_segment(dev, range) {
                match self.map_range(dev, piece, dir, site) {
                    Ok((dma, _)) if crosses_boundary(dev, dma, piece.len()) => {
                        out.push(DmaSegment {
                            dma,
                            len: piece.len(),
                        });
                        self.unwind(dev, &out, dir);
                        return Err(DmaError::OutOfMapping {
                            device: dev.id(),
                            dma,
                            len: piece.len(),
                            mapped_len: dev.seg_boundary_mask().saturating_add(1),
                        });
                    }
                    Ok((dma, _)) => {
                        out.push(DmaSegment {
                            dma,
                            len: piece.len(),
                        });
                        phys.push(Some(piece.start()));
                    }
                    Err(f) => {
                        self.unwind(dev, &out, dir);
                        return Err(self.failure_to_error(dev, piece, f));
                    }
                }
            }
        }
        Ok((out, phys))
    }

    /// Unmaps every segment returned by [`DmaMapper::map_sg`].
    ///
    /// # Errors
    /// The first error of [`DmaMapper::unmap`]; the remaining segments are still unmapped.
    #[track_caller]
    pub fn unmap_sg(
        &self,
        dev: &Device,
        segments: &[DmaSegment],
        dir: Direction,
    ) -> Result<(), DmaError> {
        if let Some(d) = &self.debug {
            let site = Location::caller();
            for seg in segments {
                let u = Unmapping {
                    dma: seg.dma,
                    len: seg.len,
                    dir,
                    family: MappingFamily::Sg {
                        nents: segments.len(),
                        group: 0,
                    },
                };
                d.unmapping(dev, u, site);
            }
        }
        if let Some(dom) = self.iommu_domain(dev) {
            let r = iommu::path::unmap_sg(&self.platform, &dom, dev, segments, dir);
            self.room_freed();
            return r;
        }
        let mut first = Ok(());
        for s in segments {
            let r = match checked_range(dev, s.dma.as_u64(), s.len) {
                Ok(range) => self.unmap_range(dev, s.dma, range, dir),
                Err(e) => Err(e),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    fn unwind(&self, dev: &Device, mapped: &[DmaSegment], dir: Direction) {
        for s in mapped {
            // These segments were mapped by this call with these exact arguments.
            let undone = checked_range(dev, s.dma.as_u64(), s.len)
                .and_then(|range| self.unmap_range(dev, s.dma, range, dir));
            debug_assert!(undone.is_ok());
        }
    }

    fn line(&self) -> u64 {
        self.platform.cache_line_size()
    }

    /// Which path a mapping of `range` by `dev` in `dir` takes: the single routing decision.
    #[inline]
    fn route(&self, dev: &Device, range: PhysRange, dir: Direction) -> Route {
        if let Some(dom) = self.iommu_domain(dev) {
            return Route::Iommu(dom);
        }
        match decision::bounce_reason(dev, range, dir, self.policy, self.line()) {
            None => Route::Direct,
            Some(reason) => Route::Bounce(reason),
        }
    }

    /// Maps `range` on the path [`DmaMapper::route`] chooses, and counts the outcome.
    fn map_range(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        self.map_routed(dev, range, dir, site, self.route(dev, range, dir))
    }

    /// Maps `range` on the path `route`, and counts the outcome. Out of line: `map` takes
    /// the direct path without it.
    #[inline(never)]
    fn map_routed(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        route: Route,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        match route {
            Route::Direct => Ok((self.map_direct(dev, range, dir), MapPath::Direct)),
            Route::Iommu(dom) => self.map_iommu(&dom, dev, range, dir, site),
            Route::Bounce(reason) => self.map_bounced(dev, range, dir, site, reason),
        }
    }

    /// The direct path and its one counter; small enough to inline into `map`.
    #[inline]
    fn map_direct(&self, dev: &Device, range: PhysRange, dir: Direction) -> DmaAddr {
        let dma = direct::map(&self.platform, dev, range, dir);
        self.counters
            .mapped(self.platform.current_cpu(), dev.id(), dir, None, 0);
        dma
    }

    #[inline(never)]
    fn map_iommu(
        &self,
        dom: &IommuDomain,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        let cpu = self.platform.current_cpu();
        let ctx = self.iommu_ctx(dev);
        let mapped = iommu::path::map(&self.platform, dom, dev, range, dir, &ctx);
        match &mapped {
            Ok((_, path)) => {
                // The IOMMU path fills its bounces by the bounce path's rule.
                let filled = dir.device_reads() || ctx.fill_inbound;
                let copied = if filled { range.len() } else { 0 };
                self.record_mapped(cpu, dev, range, dir, site, *path, copied);
            }
            Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {
                self.counters.exhausted(cpu, dev.id())
            }
            Err(_) => {}
        }
        mapped
    }

    #[inline(never)]
    fn map_bounced(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        reason: BounceReason,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        let cpu = self.platform.current_cpu();
        let Some(backend) = self.bounce_backend(dev) else {
            return Err(MapFailure::Failed(DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            }));
        };
        let meta = BounceMeta {
            device: dev.id(),
            orig: range.start(),
            len: range.len(),
            dir,
            reason,
        };
        let (used, mapped) = match self.bounce_into(backend.as_ref(), dev, range, meta) {
            Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) if backend.growth_pending() => {
                // While growth is on its way, an exact-size transient bounce bridges the gap.
                match &self.transient {
                    Some(t) => (
                        t as &dyn BounceBackend,
                        self.bounce_into(t, dev, range, meta),
                    ),
                    None => (
                        backend.as_ref(),
                        self.bounce_into(backend.as_ref(), dev, range, meta),
                    ),
                }
            }
            other => (backend.as_ref(), other),
        };
        match mapped {
            Ok((dma, copied)) => {
                let path = MapPath::Bounced {
                    reason,
                    backend: used.name(),
                };
                self.record_mapped(cpu, dev, range, dir, site, path, copied);
                Ok((dma, path))
            }
            Err(e) => {
                if let MapFailure::NoRoom(BounceAllocError::Full { .. }) = e {
                    self.counters.exhausted(cpu, dev.id());
                }
                Err(e)
            }
        }
    }

    /// Counts a successful mapping; a bounced one is also attributed to its call site and
    /// offered to the reporter.
    #[allow(clippy::too_many_arguments)]
    fn record_mapped(
        &self,
        cpu: usize,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        path: MapPath,
        copied: u64,
    ) {
        let MapPath::Bounced { reason, .. } = path else {
            self.counters.mapped(cpu, dev.id(), dir, None, 0);
            return;
        };
        self.counters
            .mapped(cpu, dev.id(), dir, Some(reason), copied);
        self.sites.record(cpu, site, range.len());
        if let Some(r) = &self.reporter {
            r.bounced(site, dev.id(), reason, range.len(), dir);
        }
        log::trace!(
            "{}: bounced {range:?} ({}) at {site}",
            dev.id(),
            reason.name()
        );
    }

    fn bounce_into(
        &self,
        backend: &dyn BounceBackend,
        dev: &Device,
        range: PhysRange,
        meta: BounceMeta,
    ) -> Result<(DmaAddr, u64), MapFailure> {
        let fill = !self.controls.skip_inbound_fill;
        bounce::map(&self.platform, backend, dev, range, meta, fill)
    }

    /// The backend whose memory holds `dma`, if any. Direct mappings, whose buffers lie
    /// outside every backend's span, cost no lookup.
    #[inline]
    fn backend_owning(&self, dma: DmaAddr) -> Option<&dyn BounceBackend> {
        let a = PhysAddr::new(dma.as_u64());
        for r in [&self.swiotlb, &self.coherent].into_iter().flatten() {
            if r.may_hold(a) && r.backend.contains(a) {
                return Some(r.backend.as_ref());
            }
        }
        self.transient
            .as_ref()
            .filter(|t| t.span().may_contain(a.as_u64()) && t.contains(a))
            .map(|t| t as &dyn BounceBackend)
    }

    fn sync_range(
        &self,
        dev: &Device,
        dma: DmaAddr,
        offset: u64,
        len: u64,
    ) -> Result<PhysRange, DmaError> {
        let start = dma
            .as_u64()
            .checked_add(offset)
            .ok_or(DmaError::AddressOverflow {
                device: dev.id(),
                addr: dma.as_u64(),
                len: offset,
            })?;
        checked_range(dev, start, len)
    }

    fn failure_to_error(&self, dev: &Device, range: PhysRange, f: MapFailure) -> DmaError {
        match f {
            MapFailure::Failed(e) => e,
            MapFailure::NoRoom(BounceAllocError::Full { used, total }) => DmaError::PoolExhausted {
                device: dev.id(),
                len: range.len(),
                used,
                total,
            },
            MapFailure::NoRoom(BounceAllocError::TooLarge { max }) => DmaError::TooLargeToBounce {
                device: dev.id(),
                len: range.len(),
                max,
            },
            MapFailure::NoRoom(BounceAllocError::Unreachable) => DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            },
        }
    }
}

/// Tells the debug checker about a single mapping's outcome (out of line: only a mapper
/// with the checker on gets here).
#[inline(never)]
fn debug_record_mapped(
    d: &DebugChecker,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    site: &'static Location<'static>,
    result: &Result<(DmaAddr, MapPath), DmaError>,
) {
    match result {
        Ok((dma, path)) => d.mapped(
            dev,
            LiveMapping {
                device: dev.id(),
                dma: *dma,
                phys: Some(range.start()),
                len: range.len(),
                dir,
                family: MappingFamily::Single,
                site,
                bounced: matches!(path, MapPath::Bounced { .. }),
                coherent_device: dev.is_coherent(),
                cpu_owned: Vec::new(),
            },
        ),
        Err(e) => d.map_failed(dev, site, *e),
    }
}

/// Splits `range` into pieces that respect the device's maximum segment size and segment
/// boundary (both in the physical address space, which is the DMA space of the direct path).
fn split_segment(dev: &Device, range: PhysRange) -> impl Iterator<Item = PhysRange> + '_ {
    let mut at = range.start().as_u64();
    let end = range.end().as_u64();
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let boundary = dev.seg_boundary_mask();
        let to_boundary = (boundary - (at & boundary)).saturating_add(1);
        let len = (end - at).min(dev.max_segment_size()).min(to_boundary);
        let piece = PhysRange::new(PhysAddr::new(at), len);
        at += len;
        piece
    })
}

fn crosses_boundary(dev: &Device, dma: DmaAddr, len: u64) -> bool {
    let mask = dev.seg_boundary_mask();
    let first = dma.as_u64();
    let last = first + (len - 1);
    (first & !mask) != (last & !mask)
}

/// Validates a caller's range once, at the API boundary.
fn checked_range(dev: &Device, addr: u64, len: u64) -> Result<PhysRange, DmaError> {
    if len == 0 {
        return Err(DmaError::ZeroLength { device: dev.id() });
    }
    PhysRange::new(PhysAddr::new(addr), len).ok_or(DmaError::AddressOverflow {
        device: dev.id(),
        addr,
        len,
    })
}
