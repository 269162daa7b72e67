//! Scatter-gather lists: entries split at the device's segment size and boundary, a bounce
//! decision per segment, and complete unwinding when any segment fails.

use core::panic::Location;

use alloc::vec::Vec;

use super::route::{Owner, Route};
use super::{checked_extent, checked_range, DmaMapper, DmaSegment, MapPath, SgEntry};
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
    /// Allocates the returned list; in atomic context use [`DmaMapper::map_sg_into`].
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
        // Room for every segment the list can map to: a buffer of `len` bytes is cut into
        // at most `len / unit + 2` segments, whether on its own or merged with its
        // neighbours on the IOMMU path.
        let unit = dev
            .max_segment_size()
            .min(dev.seg_boundary_mask().saturating_add(1))
            .max(1);
        let room = entries
            .iter()
            .map(|e| usize::try_from((e.len / unit).saturating_add(2)).unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add);
        let mut out = alloc::vec![
            DmaSegment {
                dma: DmaAddr::new(0),
                len: 0,
            };
            room
        ];
        // SAFETY: the caller's contract for `map_sg` is `map_sg_into`'s.
        let n = unsafe { self.map_sg_into(dev, entries, dir, &mut out) }?;
        out.truncate(n);
        Ok(out)
    }

    /// Maps a scatter-gather list as [`DmaMapper::map_sg`] does, writing the
    /// device-visible segments to the front of `out` and returning how many there are.
    /// Allocates nothing, on any path (in atomic context too): behind an IOMMU, the list's
    /// pieces take room its domain was created with
    /// ([`crate::DomainConfig::max_sg_pieces`]).
    ///
    /// # Errors
    /// As [`DmaMapper::map_sg`]; [`DmaError::SegmentListTooShort`] when the segments do not
    /// fit in `out`; behind an IOMMU, [`DmaError::SgPieceTableFull`] when its domain has
    /// too few free pieces for the list. On any error nothing is left mapped and the pools are as before the
    /// call (what `out` holds then is unspecified).
    ///
    /// # Safety
    /// As [`DmaMapper::map_sg`].
    #[track_caller]
    pub unsafe fn map_sg_into(
        &self,
        dev: &Device,
        entries: &[SgEntry],
        dir: Direction,
        out: &mut [DmaSegment],
    ) -> Result<usize, DmaError> {
        self.controls.with_bus_view(dev, (), |dev, ()| {
            let Some(first) = entries.first() else {
                return Err(DmaError::ZeroLength { device: dev.id() });
            };
            for e in entries {
                checked_range(dev, e.phys, e.len)?;
            }
            // Every entry was validated above, so this yields one range for each.
            let ranges = || {
                entries
                    .iter()
                    .filter_map(|e| checked_range(dev, e.phys, e.len).ok())
            };
            let first = checked_range(dev, first.phys, first.len)?;
            let site = Location::caller();
            let result = self.map_sg_ranges(dev, first, ranges, dir, site, out);
            if let Some(d) = &self.obs.debug {
                match &result {
                    Ok((n, iommu)) => {
                        let group = d.next_group();
                        // The CPU range of each segment: the piece it was mapped from on the
                        // direct and bounced paths; none for IOMMU segments (possibly merged).
                        let mut pieces = ranges().flat_map(|r| split_segment(dev, r));
                        for seg in &out[..*n] {
                            let phys = match iommu {
                                true => None,
                                false => pieces.next().map(|p| p.start()),
                            };
                            let m = LiveMapping {
                                device: dev.id(),
                                dma: seg.dma,
                                phys,
                                len: seg.len,
                                dir,
                                family: MappingFamily::Sg { nents: *n, group },
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
            result.map(|(n, _)| n)
        })
    }

    /// Maps validated sg ranges (`first` is the first of `ranges()`) into `out`; returns the
    /// number of segments and whether they went through the IOMMU.
    fn map_sg_ranges<I: Iterator<Item = PhysRange>>(
        &self,
        dev: &Device,
        first: PhysRange,
        ranges: impl Fn() -> I,
        dir: Direction,
        site: &'static Location<'static>,
        out: &mut [DmaSegment],
    ) -> Result<(usize, bool), DmaError> {
        // The list's first buffer says which way the device goes; the direct and bounce
        // segments then get their own decisions below.
        let dom = match self.route(dev, first, dir) {
            Route::Iommu(dom) => Some(dom),
            Route::Refused(e) => return Err(e),
            Route::Direct(_) | Route::Bounce(_) => None,
        };
        if let Some(dom) = dom {
            return self.map_sg_iommu(dev, &dom, first, ranges, dir, site, out);
        }
        let mut n = 0;
        let too_short = DmaError::SegmentListTooShort {
            device: dev.id(),
            room: out.len(),
        };
        for range in ranges() {
            for piece in split_segment(dev, range) {
                if n == out.len() {
                    self.unwind(dev, &out[..n], dir);
                    return Err(too_short);
                }
                match self.map_range(dev, piece, dir, site) {
                    Ok((dma, _)) => {
                        out[n] = DmaSegment {
                            dma,
                            len: piece.len(),
                        };
                        n += 1;
                        if crosses_boundary(dev, dma, piece.len()) {
                            self.unwind(dev, &out[..n], dir);
                            return Err(DmaError::OutOfMapping {
                                device: dev.id(),
                                dma,
                                len: piece.len(),
                                mapped_len: dev.seg_boundary_mask().saturating_add(1),
                            });
                        }
                    }
                    Err(f) => {
                        self.unwind(dev, &out[..n], dir);
                        return Err(self.failure_to_error(dev, piece, f));
                    }
                }
            }
        }
        Ok((n, false))
    }

    /// Maps sg ranges (`first` is the first of `ranges()`) through the device's IOMMU
    /// domain into `out`.
    #[allow(clippy::too_many_arguments)]
    fn map_sg_iommu<I: Iterator<Item = PhysRange>>(
        &self,
        dev: &Device,
        dom: &iommu::IommuDomain,
        first: PhysRange,
        ranges: impl Fn() -> I,
        dir: Direction,
        site: &'static Location<'static>,
        out: &mut [DmaSegment],
    ) -> Result<(usize, bool), DmaError> {
        let ctx = self.iommu_ctx(dev);
        // Every buffer counts as one mapping, bounced or not, as on the direct path.
        let mut count = |range: PhysRange, path: MapPath| {
            if !reintroduce::active(Defect::IommuSgUncounted) {
                self.count_iommu(dev, range, dir, site, Ok(path));
            }
        };
        let p = &self.platform;
        let mut mapped = iommu::path::map_sg(p, dom, dev, &ranges, dir, &ctx, out, &mut count);
        if super::route::is_full(&mapped) && self.reclaim_parked_bounces() {
            mapped = iommu::path::map_sg(p, dom, dev, &ranges, dir, &ctx, out, &mut count);
        }
        match mapped {
            Ok(n) => Ok((n, true)),
            Err(f) => {
                // Counted once, for the list, like a failed single mapping.
                if !reintroduce::active(Defect::IommuSgUncounted) {
                    self.count_iommu(dev, first, dir, site, Err(&f));
                }
                Err(self.failure_to_error(dev, first, f))
            }
        }
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
        self.controls.with_bus_view(dev, (), |dev, ()| {
            // The put-back defect: the direct path accepted an empty list (the IOMMU path
            // below refuses it on its own).
            // (Only whether the device is behind the IOMMU matters there, so any address does.)
            let old_empty_rule = reintroduce::active(Defect::EmptyUnmapSgInconsistent)
                && matches!(
                    self.owner_of(dev, DmaAddr::new(0)),
                    Ok(Owner::Bounce(..) | Owner::Direct)
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
        })
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
