//! Single mappings: `map`, `unmap` and the partial syncs, each validated once at entry and
//! sent down the path the router chose.

use core::panic::Location;

use super::route::Owner;
use super::{checked_extent, checked_range, DmaMapper, MapPath, Route};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::attrs::MapAttrs;
use crate::bounce::path::{self as bounce, SyncPart};
use crate::bounce::BounceBackend;
use crate::debug::checker::Unmapping;
use crate::debug::MappingFamily;
use crate::device::Device;
use crate::direct;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu::{self, IommuDomain};
use crate::platform::Platform;
use crate::translation::phys_of_bus;

impl<P: Platform> DmaMapper<P> {
    /// Lends `len` bytes at `phys` to `dev` for one transfer in `dir` (Linux
    /// `dma_map_phys`). Returns the address the device must use.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range (one whose
    /// end overflows, or lies beyond `2^64 - 4096`: no mapping may reach into the last page
    /// of the address space, whose end no address can hold — so `map(0, u64::MAX)` fails
    /// on every device); [`DmaError::NoBouncePool`] when the buffer must be bounced and the
    /// device has no pool, or none it can reach and no way to grow one;
    /// [`DmaError::PoolExhausted`] or [`DmaError::TooLargeToBounce`] when the pool cannot
    /// take it; [`DmaError::AlignMaskUnsupported`] when the pool cannot honour the device's
    /// `min_align_mask`; a memory fault from the bounce copy; [`DmaError::Detached`] for a
    /// device detached from its IOMMU domain. On error nothing was changed, every pool's
    /// usage and high-water mark included.
    ///
    /// # Safety
    /// `[phys, phys + len)` is memory the caller owns and will not touch (read, write or
    /// free) while the device may use it: from this call until the mapping is unmapped. The
    /// device reads the buffer, or writes it, at any time in between, and for a bounced
    /// inbound mapping the unmap writes it. The caller stops the device from using the
    /// returned address before unmapping it.
    #[inline]
    #[track_caller]
    pub unsafe fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<DmaAddr, DmaError> {
        self.map_at(
            dev,
            phys,
            len,
            dir,
            MapAttrs::NONE,
            Location::caller(),
            dma_only,
        )
    }

    /// As [`DmaMapper::map`], also saying which path the mapping took.
    ///
    /// # Errors
    /// As [`DmaMapper::map`].
    ///
    /// # Safety
    /// As [`DmaMapper::map`].
    #[inline]
    #[track_caller]
    pub unsafe fn map_traced(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(DmaAddr, MapPath), DmaError> {
        self.map_at(
            dev,
            phys,
            len,
            dir,
            MapAttrs::NONE,
            Location::caller(),
            |m| m,
        )
    }

    /// The body of [`DmaMapper::map`], [`DmaMapper::map_traced`] and
    /// [`DmaMapper::map_attrs`], inlined into each; `keep` takes from the address and the
    /// path what the caller returns, so that `map` never moves the [`MapPath`] it drops.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn map_at<T>(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        attrs: MapAttrs,
        site: &'static Location<'static>,
        keep: impl FnOnce((DmaAddr, MapPath)) -> T,
    ) -> Result<T, DmaError> {
        let args = (phys, len, dir, attrs, site);
        self.controls
            .with_bus_view(dev, args, move |dev, (phys, len, dir, attrs, site)| {
                let range = checked_range(dev, phys, len)?;
                let route = match self.plain_decision(dev, range, dir) {
                    // Returned on its own, so a direct mapping's result stays in registers
                    // and no route is built for it.
                    Some(Ok(dma)) => {
                        return Ok(keep(
                            self.map_direct_traced(dev, range, dir, site, dma, attrs),
                        ))
                    }
                    Some(Err(reason)) => Route::Bounce(reason),
                    None => match self.route_configured(dev, range, dir) {
                        Route::Direct(dma) => {
                            return Ok(keep(
                                self.map_direct_traced(dev, range, dir, site, dma, attrs),
                            ))
                        }
                        route => route,
                    },
                };
                self.map_routed_checked(dev, range, dir, site, route, attrs)
                    .map(keep)
            })
    }

    /// A single mapping on the direct path to `dma`, counted and told to the debug checker.
    #[inline(always)]
    fn map_direct_traced(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        dma: DmaAddr,
        attrs: MapAttrs,
    ) -> (DmaAddr, MapPath) {
        let mapped = (
            self.map_direct_attrs(dev, range, dir, dma, attrs),
            MapPath::Direct,
        );
        self.obs.debug_mapped_ok(dev, range, dir, site, mapped);
        mapped
    }

    /// A single mapping on any route but the direct one, its failure turned into the
    /// caller's error and the outcome told to the debug checker.
    #[inline(never)]
    fn map_routed_checked(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        route: Route,
        attrs: MapAttrs,
    ) -> Result<(DmaAddr, MapPath), DmaError> {
        let result = self
            .map_routed(dev, range, dir, site, route, attrs)
            .map_err(|f| self.failure_to_error(dev, range, f));
        self.obs.debug_mapped(dev, range, dir, site, &result);
        result
    }

    /// Ends the mapping `dma` of `len` bytes made with `dir`; the CPU owns the buffer again
    /// and sees what the device wrote.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range. For a
    /// bounced mapping also [`DmaError::UnknownMapping`] (not live, or another device's),
    /// [`DmaError::OutOfMapping`] (a different length), [`DmaError::WrongDirection`].
    /// Direct mappings keep no record; the debug checker catches their misuse. A refused
    /// unmap leaves the mapping live, and with the debug checker on, its record too.
    /// [`DmaError::Detached`] for a device detached from its IOMMU domain (it has no live
    /// mapping, and an old IOVA is never taken for a physical address).
    ///
    /// # Safety
    /// `dma` and `len` name a live mapping of `dev` made by this mapper, whose buffer the
    /// caller still owns untouched, and the device has stopped using it: an unmap writes
    /// what the device wrote into that buffer (for a bounced mapping, by copying it back),
    /// and it frees the bounce memory, which may at once be lent to another device.
    #[inline]
    #[track_caller]
    pub unsafe fn unmap(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.unmap_at(dev, dma, len, dir, MapAttrs::NONE, Location::caller())
    }

    /// The body of [`DmaMapper::unmap`] and [`DmaMapper::unmap_attrs`].
    #[inline(always)]
    pub(super) fn unmap_at(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: MapAttrs,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        let args = (dma, len, dir, attrs, site);
        self.controls
            .with_bus_view(dev, args, move |dev, (dma, len, dir, attrs, site)| {
                checked_extent(dev, dma.as_u64(), len)?;
                let Some(d) = &self.obs.debug else {
                    return self.unmap_range_attrs(dev, dma, len, dir, attrs);
                };
                let u = Unmapping {
                    dma,
                    len,
                    dir,
                    family: MappingFamily::Single,
                };
                let record = d.unmapping(dev, u, site);
                let result = self.unmap_range_attrs(dev, dma, len, dir, attrs);
                if let (Some(m), Err(e)) = (record, &result) {
                    if unmap_refused(e) {
                        d.unmap_rejected(m);
                    }
                }
                result
            })
    }

    /// Unmaps the `len` bytes at `dma` (validated by [`checked_extent`]) without consulting
    /// the debug checker (the caller did, or is undoing its own work).
    #[inline]
    pub(super) fn unmap_range(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.unmap_range_attrs(dev, dma, len, dir, MapAttrs::NONE)
    }

    /// As [`DmaMapper::unmap_range`], with the attributes the mapping was made with.
    #[inline(always)]
    fn unmap_range_attrs(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
        attrs: MapAttrs,
    ) -> Result<(), DmaError> {
        let cpu_sync = !attrs.skips_cpu_sync();
        match self.owner_of(dev, dma)? {
            Owner::Iommu(dom) => self.unmap_iommu(&dom, dev, dma, len, dir, cpu_sync),
            Owner::Bounce(backend, phys) => {
                let at = bounce::Slot { dma, phys };
                self.unmap_bounced(backend, dev, at, len, dir, cpu_sync)
            }
            Owner::Direct => {
                let range = self.direct_range(dev, dma, len)?;
                direct::unmap(&self.platform, dev, range, dir, attrs);
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
        cpu_sync: bool,
    ) -> Result<(), DmaError> {
        let ended = match iommu::path::unmap(&self.platform, dom, dev, dma, len, dir, cpu_sync) {
            Ok(ended) => ended,
            Err(e) => {
                // A faulted copy back still ended the mapping and released its slot.
                if matches!(e, DmaError::Memory(_)) {
                    self.room_freed();
                }
                return Err(e);
            }
        };
        self.obs
            .counters
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
        at: bounce::Slot,
        len: u64,
        dir: Direction,
        cpu_sync: bool,
    ) -> Result<(), DmaError> {
        let (_, copied) = bounce::unmap(&self.platform, backend, dev, at, len, dir, cpu_sync)?;
        self.obs
            .counters
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
    ///
    /// # Safety
    /// `dma` names a live mapping of `dev` made by this mapper whose buffer the caller owns,
    /// and the device does not use the synced part during the call: a sync of a bounced
    /// mapping copies between the buffer and the bounce memory.
    #[track_caller]
    pub unsafe fn sync_for_device(
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
    ///
    /// # Safety
    /// `dma` names a live mapping of `dev` made by this mapper whose buffer the caller owns,
    /// and the device does not use the synced part during the call: a sync of a bounced
    /// mapping copies between the buffer and the bounce memory.
    #[track_caller]
    pub unsafe fn sync_for_cpu(
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
    pub(super) fn sync(
        &self,
        dev: &Device,
        part: SyncPart,
        for_cpu: bool,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        self.controls.with_bus_view(dev, (), |dev, ()| {
            let SyncPart {
                dma,
                offset,
                len,
                dir,
            } = part;
            let start = self.sync_start(dev, dma, offset, len)?;
            if let Some(d) = &self.obs.debug {
                d.syncing(dev, dma, offset, len, dir, for_cpu, site);
            }
            let fill_inbound = !self.controls.skips_inbound_fill();
            let copied = match (self.owner_of(dev, dma)?, for_cpu) {
                (Owner::Iommu(dom), true) => {
                    iommu::path::sync(&self.platform, &dom, dev, part, iommu::path::SyncTo::Cpu)?
                }
                (Owner::Iommu(dom), false) => {
                    let to = iommu::path::SyncTo::Device { fill_inbound };
                    iommu::path::sync(&self.platform, &dom, dev, part, to)?
                }
                (Owner::Bounce(b, slot), true) => {
                    bounce::sync_for_cpu(&self.platform, b, dev, slot, part)?
                }
                (Owner::Bounce(b, slot), false) => {
                    bounce::sync_for_device(&self.platform, b, dev, slot, part, fill_inbound)?
                }
                (Owner::Direct, true) => {
                    direct::sync_for_cpu(
                        &self.platform,
                        dev,
                        self.direct_range(dev, start, len)?,
                        dir,
                    );
                    0
                }
                (Owner::Direct, false) => {
                    direct::sync_for_device(
                        &self.platform,
                        dev,
                        self.direct_range(dev, start, len)?,
                        dir,
                    );
                    0
                }
            };
            let cpu = self.platform.current_cpu();
            if for_cpu {
                self.obs.counters.copied_from_bounce(cpu, dev.id(), copied);
            } else {
                self.obs.counters.copied_to_bounce(cpu, dev.id(), copied);
            }
            Ok(())
        })
    }

    /// The device address of the synced part, validated by [`checked_extent`].
    pub(super) fn sync_start(
        &self,
        dev: &Device,
        dma: DmaAddr,
        offset: u64,
        len: u64,
    ) -> Result<DmaAddr, DmaError> {
        let start = dma.checked_add(offset).ok_or(DmaError::AddressOverflow {
            device: dev.id(),
            addr: dma.as_u64(),
            len: offset,
        })?;
        checked_extent(dev, start.as_u64(), len)?;
        Ok(start)
    }

    /// The CPU range of `len` bytes of a direct mapping at the device address `start`: the
    /// whole mapping at unmap, the synced part at a sync. Translated here from the device
    /// address rather than carried out of [`DmaMapper::owner_of`]: for a device without bus
    /// windows that costs one test, and the reverse lookup's answer for the direct path
    /// holds nothing.
    ///
    /// # Errors
    /// [`DmaError::UnknownMapping`] when `start` lies in none of the device's bus windows;
    /// as [`checked_range`] for the CPU range.
    pub(super) fn direct_range(
        &self,
        dev: &Device,
        start: DmaAddr,
        len: u64,
    ) -> Result<PhysRange, DmaError> {
        let phys = phys_of_bus(dev, start).ok_or(DmaError::UnknownMapping {
            device: dev.id(),
            dma: start,
        })?;
        checked_range(dev, phys, len)
    }
}

/// The device address of a mapping, without the path it took.
#[inline(always)]
pub(super) fn dma_only((dma, _): (DmaAddr, MapPath)) -> DmaAddr {
    dma
}

/// Whether an unmap failed because it was refused (it did not name the live mapping as it
/// was made), leaving the mapping live. Other failures (a memory fault of the copy back)
/// end the mapping or not depending on the path, and the checker's record goes with it.
fn unmap_refused(e: &DmaError) -> bool {
    matches!(
        e,
        DmaError::UnknownMapping { .. }
            | DmaError::OutOfMapping { .. }
            | DmaError::WrongDirection { .. }
    )
}
