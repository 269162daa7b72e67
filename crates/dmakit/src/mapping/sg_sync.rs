//! Syncs of whole scatter-gather lists: `sync_sg_for_cpu` / `sync_sg_for_device` (Linux
//! `dma_sync_sg_for_*`), each segment synced as a single sync of the whole segment would be,
//! on whatever path the list took.

use core::panic::Location;

use super::route::Owner;
use super::{DmaMapper, DmaSegment};
use crate::bounce::path::{self as bounce, SyncPart};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::iommu;
use crate::platform::Platform;

impl<P: Platform> DmaMapper<P> {
    /// Passes ownership of every segment of a list mapped by [`DmaMapper::map_sg`] back to
    /// the CPU, which then sees what the device wrote (bounced segments are copied back,
    /// segments in place are invalidated on a non-coherent device). Pass the segments
    /// `map_sg` returned, or a sub-list of them.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`] for an empty list; for any segment [`DmaError::AddressOverflow`]
    /// (an invalid range) or a refusal of [`DmaMapper::sync_for_cpu`]
    /// ([`DmaError::UnknownMapping`], [`DmaError::OutOfMapping`],
    /// [`DmaError::WrongDirection`], [`DmaError::Detached`]). Every segment is checked
    /// before any is synced, so a refused list syncs nothing. A bounce copy fault stops
    /// the list there (the segments before it are synced).
    ///
    /// # Safety
    /// As [`DmaMapper::sync_for_cpu`], for every segment of a list [`DmaMapper::map_sg`]
    /// returned.
    #[track_caller]
    pub unsafe fn sync_sg_for_cpu(
        &self,
        dev: &Device,
        segments: &[DmaSegment],
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.sync_sg(dev, segments, dir, true, Location::caller())
    }

    /// Passes ownership of every segment of a list mapped by [`DmaMapper::map_sg`] to the
    /// device: what the CPU wrote reaches memory or the bounce slots (inbound bounces are
    /// refilled from the buffer, as [`DmaMapper::sync_for_device`] does).
    ///
    /// # Errors
    /// As [`DmaMapper::sync_sg_for_cpu`].
    ///
    /// # Safety
    /// As [`DmaMapper::sync_for_device`], for every segment of a list [`DmaMapper::map_sg`]
    /// returned.
    #[track_caller]
    pub unsafe fn sync_sg_for_device(
        &self,
        dev: &Device,
        segments: &[DmaSegment],
        dir: Direction,
    ) -> Result<(), DmaError> {
        self.sync_sg(dev, segments, dir, false, Location::caller())
    }

    fn sync_sg(
        &self,
        dev: &Device,
        segments: &[DmaSegment],
        dir: Direction,
        for_cpu: bool,
        site: &'static Location<'static>,
    ) -> Result<(), DmaError> {
        if segments.is_empty() {
            return Err(DmaError::ZeroLength { device: dev.id() });
        }
        let part = |s: &DmaSegment| SyncPart {
            dma: s.dma,
            offset: 0,
            len: s.len,
            dir,
        };
        for s in segments {
            self.check_sync(dev, part(s))?;
        }
        for s in segments {
            self.sync(dev, part(s), for_cpu, site)?;
        }
        Ok(())
    }

    /// Whether a sync of `part` would be accepted, on the path that holds it, without
    /// touching anything.
    fn check_sync(&self, dev: &Device, part: SyncPart) -> Result<(), DmaError> {
        let start = self.sync_start(dev, part.dma, part.offset, part.len)?;
        match self.owner_of(dev, part.dma)? {
            Owner::Iommu(dom) => iommu::path::check_sync(&dom, dev, part),
            Owner::Bounce(backend, slot) => bounce::check_part(backend, dev, slot, part),
            Owner::Direct => self.direct_range(dev, start, part.len).map(|_| ()),
        }
    }
}
