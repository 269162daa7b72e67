//! The routing decisions and the paths behind them.
//!
//! Two decisions, each made once per operation: [`DmaMapper::route`] (forward) decides
//! whether a mapping or sg segment goes direct, through the device's IOMMU domain, or
//! through a bounce pool (and why); [`DmaMapper::owner_of`] (reverse) finds, at unmap and
//! sync, which of those holds a device address. Only `Routes::iommu_domain` asks whether a device
//! is behind the IOMMU, and only these two call it. The direct path is small enough to
//! inline into `map`; the IOMMU and bounce paths are out of line. The reverse lookup tests
//! each pool's memory span first, so direct mappings cost no lookup.

use core::panic::Location;

use alloc::sync::Arc;

use super::routes::Registered;
use super::{DmaMapper, MapPath};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::attrs::MapAttrs;
use crate::bounce::path::{self as bounce, MapFailure, Placement};
use crate::bounce::{BounceAllocError, BounceBackend, BounceMeta};
use crate::decision::{self, BounceReason};
use crate::device::Device;
use crate::direct;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu::{self, IommuDomain};
use crate::platform::Platform;
use crate::translation::{bus_within, highest_phys_within, phys_of_bus};

/// The path a mapping takes, as decided by the routing layer.
pub(super) enum Route {
    /// The device reaches the buffer in place, at this bus address.
    Direct(DmaAddr),
    /// Through this IOMMU domain (which may still bounce, by its own rules).
    Iommu(Arc<IommuDomain>),
    /// Through the device's bounce pool, for this reason.
    Bounce(BounceReason),
    /// Nowhere: the device cannot be mapped for (it was detached from its IOMMU domain).
    Refused(DmaError),
}

/// Who holds a live mapping, as the reverse routing decision finds it.
pub(super) enum Owner<'a> {
    /// The device's IOMMU domain (which knows whether it bounced).
    Iommu(Arc<IommuDomain>),
    /// This bounce backend: the address is one of its slots, the one at this physical
    /// address.
    Bounce(&'a dyn BounceBackend, PhysAddr),
    /// Nobody: the device uses the buffer in place.
    Direct,
}

impl<P: Platform> DmaMapper<P> {
    /// The restricted pool of `dev`, if it has one (and the hazard control does not
    /// ignore restricted pools).
    #[inline]
    pub(super) fn restricted_pool(&self, dev: &Device) -> Option<&Registered> {
        if self.controls.ignores_restricted_pools() {
            return None;
        }
        self.routes.restricted.of(dev.id())
    }

    /// The route of a device with a restricted pool: always a bounce into that pool (for
    /// the first reason of the bounce decision that applies, else because the device is
    /// confined to its pool, [`BounceReason::Forced`]); refused behind an IOMMU.
    #[inline(never)]
    fn route_restricted(&self, dev: &Device, range: PhysRange, dir: Direction) -> Route {
        if let Err(e) = self.restricted_not_behind_iommu(dev) {
            return Route::Refused(e);
        }
        let decided = decision::direct_or_bounce(dev, range, dir, self.policy, self.line());
        Route::Bounce(decided.err().unwrap_or(BounceReason::Forced))
    }

    /// A device with a restricted pool must not be attached to an IOMMU domain.
    ///
    /// # Errors
    /// [`DmaError::RestrictedPoolBehindIommu`] when it is; [`DmaError::Detached`] when it
    /// was detached from one.
    pub(super) fn restricted_not_behind_iommu(&self, dev: &Device) -> Result<(), DmaError> {
        match self.routes.iommu_domain(dev)? {
            Some(_) => Err(DmaError::RestrictedPoolBehindIommu { device: dev.id() }),
            None => Ok(()),
        }
    }

    /// The bounce backend of `dev` whose memory holds `phys` (where the device reaches a
    /// mapping's address), if any: its restricted pool for a device that has one (and no
    /// other pool), else the global pool whose memory holds it.
    pub(super) fn bounce_owning(&self, dev: &Device, phys: PhysAddr) -> Option<&dyn BounceBackend> {
        match self.restricted_pool(dev) {
            Some(pool) => pool.holds(phys).then_some(pool.backend.as_ref()),
            None => self.routes.backend_owning(phys),
        }
    }

    pub(super) fn iommu_ctx<'a>(&'a self, dev: &Device) -> iommu::path::MapCtx<'a> {
        iommu::path::MapCtx {
            backend: self.bounce_backend(dev),
            policy: self.policy,
            fill_inbound: !self.controls.skips_inbound_fill(),
            force_bounce: self.force_bounce_all,
            attrs: MapAttrs::NONE,
        }
    }

    /// Which path a mapping of `range` by `dev` in `dir` takes: the forward routing
    /// decision. A mapper without restricted pools, IOMMU or `force_bounce_all` decides
    /// on the device alone, inline; the others out of line.
    #[inline(always)]
    pub(super) fn route(&self, dev: &Device, range: PhysRange, dir: Direction) -> Route {
        match self.plain_decision(dev, range, dir) {
            Some(Ok(dma)) => Route::Direct(dma),
            Some(Err(reason)) => Route::Bounce(reason),
            None => self.route_configured(dev, range, dir),
        }
    }

    /// The decision of a mapper without restricted pools, IOMMU layer or
    /// `force_bounce_all` (`None` for any other mapper: ask
    /// [`DmaMapper::route_configured`]): the direct path's bus address, or why the buffer
    /// bounces. The same decision as [`DmaMapper::route`], returned in registers.
    #[inline(always)]
    pub(super) fn plain_decision(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
    ) -> Option<Result<DmaAddr, BounceReason>> {
        if !self.plain {
            return None;
        }
        Some(decision::direct_or_bounce(
            dev,
            range,
            dir,
            self.policy,
            self.line(),
        ))
    }

    /// [`DmaMapper::route`] for a mapper with restricted pools, an IOMMU layer or
    /// `force_bounce_all`.
    #[inline(never)]
    pub(super) fn route_configured(&self, dev: &Device, range: PhysRange, dir: Direction) -> Route {
        if self.restricted_pool(dev).is_some() {
            return self.route_restricted(dev, range, dir);
        }
        match self.routes.iommu_domain(dev) {
            Ok(Some(dom)) => return Route::Iommu(dom),
            Err(e) => return Route::Refused(e),
            Ok(None) => {}
        }
        if self.force_bounce_all {
            return Route::Bounce(BounceReason::Forced);
        }
        direct_or_bounce(dev, range, dir, self.policy, self.line())
    }

    /// Maps `range` on the path [`DmaMapper::route`] chooses, and counts the outcome.
    pub(super) fn map_range(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        let route = self.route(dev, range, dir);
        self.map_routed(dev, range, dir, site, route, MapAttrs::NONE)
    }

    /// Maps `range` on the path `route` with `attrs`, and counts the outcome. `map` takes
    /// the direct path without it. A bounce skips nothing at map time (see
    /// [`MapAttrs::SKIP_CPU_SYNC`]), so only the direct and IOMMU paths see `attrs`.
    #[inline]
    pub(super) fn map_routed(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        route: Route,
        attrs: MapAttrs,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        match route {
            Route::Direct(dma) => Ok((
                self.map_direct_attrs(dev, range, dir, dma, attrs),
                MapPath::Direct,
            )),
            Route::Iommu(dom) => self.map_iommu(&dom, dev, range, dir, site, attrs),
            Route::Bounce(reason) => self.map_bounced(dev, range, dir, site, reason),
            Route::Refused(e) => Err(MapFailure::Failed(e)),
        }
    }

    /// The direct path and its one counter, for `range`, which `dev` reaches at `dma`;
    /// small enough to inline into `map`.
    #[inline]
    pub(super) fn map_direct(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        dma: DmaAddr,
    ) -> DmaAddr {
        self.map_direct_attrs(dev, range, dir, dma, MapAttrs::NONE)
    }

    /// The direct path with `attrs`, and its one counter.
    #[inline]
    pub(super) fn map_direct_attrs(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        dma: DmaAddr,
        attrs: MapAttrs,
    ) -> DmaAddr {
        direct::map(&self.platform, dev, range, dir, attrs);
        self.obs
            .counters
            .mapped(self.platform.current_cpu(), dev.id(), dir, None, 0);
        dma
    }

    #[inline]
    fn map_iommu(
        &self,
        dom: &IommuDomain,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        attrs: MapAttrs,
    ) -> Result<(DmaAddr, MapPath), MapFailure> {
        let ctx = iommu::path::MapCtx {
            attrs,
            ..self.iommu_ctx(dev)
        };
        let mut mapped = iommu::path::map(&self.platform, dom, dev, range, dir, &ctx);
        if is_full(&mapped) && self.reclaim_parked_bounces() {
            mapped = iommu::path::map(&self.platform, dom, dev, range, dir, &ctx);
        }
        self.count_iommu(
            dev,
            range,
            dir,
            site,
            mapped.as_ref().map(|(_, path)| *path),
        );
        mapped
    }

    /// Counts the outcome of one buffer mapped on the IOMMU path (a single mapping or one
    /// buffer of a scatter-gather list), as [`DmaMapper::map_bounced`] counts its own.
    pub(super) fn count_iommu(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        outcome: Result<MapPath, &MapFailure>,
    ) {
        let cpu = self.platform.current_cpu();
        match outcome {
            Ok(path) => {
                // The IOMMU path fills its bounces by the bounce path's rule.
                let filled = dir.device_reads() || !self.controls.skips_inbound_fill();
                let copied = if filled { range.len() } else { 0 };
                self.obs
                    .record_mapped(cpu, dev, range, dir, site, path, copied);
            }
            Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {
                self.obs.counters.exhausted(cpu, dev.id())
            }
            Err(_) => {}
        }
    }

    #[inline]
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
        let mut first = self.bounce_into(backend.as_ref(), dev, range, meta);
        if is_full(&first) && self.reclaim_parked_bounces() {
            first = self.bounce_into(backend.as_ref(), dev, range, meta);
        }
        let (used, mapped) = match first {
            Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) if backend.growth_pending() => {
                // While growth is on its way, an exact-size transient bounce bridges the gap.
                match &self.routes.transient {
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
                self.obs
                    .record_mapped(cpu, dev, range, dir, site, path, copied);
                Ok((dma, path))
            }
            Err(e) => {
                if let MapFailure::NoRoom(BounceAllocError::Full { .. }) = e {
                    self.obs.counters.exhausted(cpu, dev.id());
                }
                Err(e)
            }
        }
    }

    /// A bounce pool is full: releases the bounce slots lazy IOMMU domains hold for
    /// unmapped IOVAs (after invalidating their IOTLBs). Returns whether any was released,
    /// so the failed map may be tried once more.
    pub(super) fn reclaim_parked_bounces(&self) -> bool {
        self.routes
            .iommu
            .as_ref()
            .is_some_and(|i| i.reclaim_bounces(self.platform.current_cpu()) > 0)
    }

    /// Bounces `range` into `backend` for `dev`, below the physical address whose bus
    /// address is the device's streaming limit, and checks that the device reaches the
    /// slot: in one of its bus windows, at or below its mask and bus limit.
    ///
    /// # Errors
    /// As [`bounce::map`]; [`DmaError::BounceUnreachable`] when the device reaches no
    /// memory below its limit, or the slot chosen lies outside its bus windows (the slot
    /// is abandoned then, so the backend is as it was).
    fn bounce_into(
        &self,
        backend: &dyn BounceBackend,
        dev: &Device,
        range: PhysRange,
        meta: BounceMeta,
    ) -> Result<(DmaAddr, u64), MapFailure> {
        let limit = dev.streaming_limit();
        let unreachable = |slot| {
            MapFailure::Failed(DmaError::BounceUnreachable {
                device: dev.id(),
                slot,
                len: range.len(),
            })
        };
        let max_addr = highest_phys_within(dev, limit).ok_or_else(|| unreachable(None))?;
        let fill = !self.controls.skips_inbound_fill();
        let place = Placement {
            max_addr,
            granule_pad: None,
        };
        let b = bounce::map(&self.platform, backend, dev, range, meta, fill, place)?;
        let reached = PhysRange::new(b.slot, range.len()).and_then(|s| bus_within(dev, s, limit));
        match reached {
            Some(dma) => Ok((dma, b.copied)),
            None => {
                let undone = backend.abandon(b.slot);
                debug_assert!(undone.is_some(), "the slot was just taken");
                Err(unreachable(Some(b.slot)))
            }
        }
    }

    /// Who holds the mapping `dma` of `dev`: the reverse routing decision, made once by
    /// unmap, sync and `unmap_sg`. For a device behind the IOMMU its domain, whatever
    /// `dma` is; otherwise the backend whose memory holds the physical address the
    /// device reaches at `dma`, or the direct path.
    ///
    /// # Errors
    /// [`DmaError::Detached`] for a device detached from its IOMMU domain: an old IOVA is
    /// never taken for a physical address. [`DmaError::UnknownMapping`] when `dma` lies in
    /// none of the device's bus windows (no mapping can be there).
    ///
    /// A device with a restricted pool never maps in place: `dma` is looked up in its pool
    /// alone, and an address outside it is [`DmaError::UnknownMapping`];
    /// [`DmaError::RestrictedPoolBehindIommu`] when the device is also behind an IOMMU.
    #[inline(always)]
    pub(super) fn owner_of(&self, dev: &Device, dma: DmaAddr) -> Result<Owner<'_>, DmaError> {
        if !self.plain {
            return self.owner_configured(dev, dma);
        }
        let phys = phys_of_bus(dev, dma).ok_or(DmaError::UnknownMapping {
            device: dev.id(),
            dma,
        })?;
        Ok(match self.routes.backend_owning(phys) {
            Some(backend) => Owner::Bounce(backend, phys),
            None => Owner::Direct,
        })
    }

    /// [`DmaMapper::owner_of`] for a mapper with restricted pools, an IOMMU layer or
    /// `force_bounce_all`.
    #[inline(never)]
    fn owner_configured(&self, dev: &Device, dma: DmaAddr) -> Result<Owner<'_>, DmaError> {
        let restricted = self.restricted_pool(dev).is_some();
        if restricted {
            self.restricted_not_behind_iommu(dev)?;
        } else if let Some(dom) = self.routes.iommu_domain(dev)? {
            return Ok(Owner::Iommu(dom));
        }
        let unknown = DmaError::UnknownMapping {
            device: dev.id(),
            dma,
        };
        let phys = phys_of_bus(dev, dma).ok_or(unknown)?;
        match self.bounce_owning(dev, phys) {
            Some(backend) => Ok(Owner::Bounce(backend, phys)),
            None if restricted => Err(unknown),
            None => Ok(Owner::Direct),
        }
    }

    pub(super) fn failure_to_error(
        &self,
        dev: &Device,
        range: PhysRange,
        f: MapFailure,
    ) -> DmaError {
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
            MapFailure::NoRoom(BounceAllocError::AlignUnsupported {
                min_align_mask,
                max_mask,
            }) => DmaError::AlignMaskUnsupported {
                device: dev.id(),
                min_align_mask,
                max_mask,
            },
            MapFailure::NoRoom(BounceAllocError::Unreachable) => DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            },
        }
    }
}

/// The route of a device without restricted pool or IOMMU domain: direct where it reaches
/// the buffer in place and nothing forces a bounce, else a bounce for the first reason.
#[inline(always)]
fn direct_or_bounce(
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    policy: decision::AlignmentPolicy,
    line: u64,
) -> Route {
    match decision::direct_or_bounce(dev, range, dir, policy, line) {
        Ok(dma) => Route::Direct(dma),
        Err(reason) => Route::Bounce(reason),
    }
}

/// Whether a map failed because its bounce pool is full.
pub(super) fn is_full<T>(r: &Result<T, MapFailure>) -> bool {
    matches!(r, Err(MapFailure::NoRoom(BounceAllocError::Full { .. })))
}
