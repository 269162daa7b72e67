//! Scatter-gather lists: entries split at the device's segment size and boundary, a bounce
//! decision per segment, and complete unwinding when any segment fails.

use core::panic::Location;

use alloc::vec::Vec;

use super::route::{Owner, Route};
use super::{checked_extent, checked_range, DmaMapper, DmaSegment, SgEntry};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::attrs::MapAttrs;
use crate::debug::checker::Unmapping;
use crate::debug::{LiveMapping, MappingFamily};
use crate::device::Device;
use crate::direct;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu;
use crate::platform::Platform;
use crate::reintroduce::{self, Defect};
use crate::translation::{bus_of, phys_of_bus};

impl<P: Platform> DmaMapper<P> {
    /// Maps a scatter-gather list. Entries longer than the device's maximum segment size,
    /// or crossing its segment boundary, are split; every resulting segment gets its own
    /// bounce decision. Returns the device-visible segments (possibly more than entries).
    ///
    /// # Errors
    /// Any error of [`DmaMapper::map`] for any segment; segments already mapped are unmapped
    /// again, so nothing is left behind. [`DmaError::ZeroLength`] for an empty list.
    ///
    /// # Safety
    /// As [`DmaMapper::map`], for every entry: each is memory the caller owns and will not
    /// touch until the list is unmapped.
    #[track_caller]
    pub unsafe fn map_sg(
        &self,
        dev: &Device,
        entries: &[SgEntry],
        dir: Direction,
    ) -> Result<Vec<DmaSegment>, DmaError> {
        let dev = &*self.controls.bus_view(dev);
        if entries.is_empty() {
            return Err(DmaError::ZeroLength { device: dev.id() });
        }
        let ranges = entries
            .iter()
            .map(|e| checked_range(dev, e.phys, e.len))
            .collect::<Result<Vec<_>, _>>()?;
        let site = Location::caller();
        let result = self.map_sg_ranges(dev, &ranges, dir, site);
        if let Some(d) = &self.obs.debug {
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
                            bounced: phys.is_some_and(|p| bus_of(dev, p) != Some(seg.dma)),
                            coherent_device: dev.is_coherent(),
                            cpu_owned: crate::debug::CpuParts::EMPTY,
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
        // The list's first buffer says which way the device goes; the direct and bounce
        // segments then get their own decisions below.
        let dom = match self.route(dev, ranges[0], dir) {
            Route::Iommu(dom) => Some(dom),
            Route::Refused(e) => return Err(e),
            Route::Direct(_) | Route::Bounce(_) => None,
        };
        if let Some(dom) = dom {
            let ctx = self.iommu_ctx(dev);
            let mut mapped = iommu::path::map_sg(&self.platform, &dom, dev, ranges, dir, &ctx);
            if super::route::is_full(&mapped) && self.reclaim_parked_bounces() {
                mapped = iommu::path::map_sg(&self.platform, &dom, dev, ranges, dir, &ctx);
            }
            let mapped = match mapped {
                Ok(m) => m,
                Err(f) => {
                    // Counted once, for the list, like a failed single mapping.
                    if !reintroduce::active(Defect::IommuSgUncounted) {
                        self.count_iommu(dev, ranges[0], dir, site, Err(&f));
                    }
                    return Err(self.failure_to_error(dev, ranges[0], f));
                }
            };
            // Every buffer counts as one mapping, bounced or not, as on the direct path.
            if !reintroduce::active(Defect::IommuSgUncounted) {
                for (&range, &path) in ranges.iter().zip(&mapped.paths) {
                    self.count_iommu(dev, range, dir, site, Ok(path));
                }
            }
            let phys = alloc::vec![None; mapped.segments.len()];
            return Ok((mapped.segments, phys));
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
    /// [`DmaError::ZeroLength`] for an empty list, on every path (direct, bounced, IOMMU):
    /// `map_sg` never returns one, so an empty list is a caller's mistake, refused as an
    /// empty `map_sg` is; nothing is done then. Otherwise the first error of
    /// [`DmaMapper::unmap`]; the remaining segments are still unmapped.
    ///
    /// # Safety
    /// As [`DmaMapper::unmap`], for the list returned by [`DmaMapper::map_sg`].
    #[track_caller]
    pub unsafe fn unmap_sg(
        &self,
        dev: &Device,
        segments: &[DmaSegment],
        dir: Direction,
    ) -> Result<(), DmaError> {
        let dev = &*self.controls.bus_view(dev);
        // The put-back defect: the direct path accepted an empty list (the IOMMU path
        // below refuses it on its own).
        // (Only whether the device is behind the IOMMU matters there, so any address does.)
        let old_empty_rule = reintroduce::active(Defect::EmptyUnmapSgInconsistent)
            && matches!(
                self.owner_of(dev, DmaAddr::new(0)),
                Ok(Owner::Bounce(..) | Owner::Direct(_))
            );
        let Some(first_seg) = segments.first() else {
            if old_empty_rule {
                return Ok(());
            }
            return Err(DmaError::ZeroLength { device: dev.id() });
        };
        let owner = self.owner_of(dev, first_seg.dma);
        if let Some(d) = &self.obs.debug {
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
        if let Owner::Iommu(dom) = owner? {
            let r = iommu::path::unmap_sg(&self.platform, &dom, dev, segments, dir);
            self.room_freed();
            return r;
        }
        let mut first = Ok(());
        for s in segments {
            let r = match checked_extent(dev, s.dma.as_u64(), s.len) {
                Ok(()) => self.unmap_range(dev, s.dma, s.len, dir),
                Err(e) => Err(e),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }

    /// Gives back the segments a failing `map_sg` already mapped. The device never saw the
    /// list, so nothing was transferred: a bounce is abandoned (no copy back, and the pool's
    /// usage and high-water mark are as before the call); a direct segment gets the unmap
    /// maintenance of its direction.
    fn unwind(&self, dev: &Device, mapped: &[DmaSegment], dir: Direction) {
        let mut freed = false;
        for s in mapped {
            if reintroduce::active(Defect::SgUnwindKeepsHighWater) {
                let _ = self.unmap_range(dev, s.dma, s.len, dir);
                continue;
            }
            // These segments were mapped by this call with these exact arguments: the
            // device reaches each, and each is a valid range.
            let range = phys_of_bus(dev, s.dma).and_then(|p| PhysRange::new(p, s.len));
            let Some(range) = range else {
                debug_assert!(false, "a segment this call mapped is a valid range");
                continue;
            };
            match self.bounce_owning(dev, range.start()) {
                Some(backend) => {
                    let undone = backend.abandon(range.start());
                    debug_assert!(undone.is_some());
                    freed = true;
                }
                None => direct::unmap(&self.platform, dev, range, dir, MapAttrs::NONE),
            }
        }
        if freed {
            self.room_freed();
        }
    }
}

/// Splits `range` into pieces that respect the device's maximum segment size and segment
/// boundary. The boundary is judged on the bus address at which the device reaches each
/// piece in place (a piece it cannot reach in place is bounced, and its slot's bus address
/// is checked after mapping, [`crosses_boundary`]).
fn split_segment(dev: &Device, range: PhysRange) -> impl Iterator<Item = PhysRange> + '_ {
    let mut at = range.start().as_u64();
    let end = range.end().as_u64();
    core::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let boundary = dev.seg_boundary_mask();
        let here = PhysAddr::new(at);
        let bus = bus_of(dev, here).map_or(at, |d| d.as_u64());
        let to_boundary = (boundary - (bus & boundary)).saturating_add(1);
        let len = (end - at).min(dev.max_segment_size()).min(to_boundary);
        let piece = PhysRange::new(here, len);
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
