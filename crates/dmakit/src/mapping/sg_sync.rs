//! Syncs of whole scatter-gather lists: `sync_sg_for_cpu` / `sync_sg_for_device` (Linux
//! `dma_sync_sg_for_*`), each segment synced as a single sync of the whole segment would be,
//! on whatever path the list took.

use core::panic::Location;

use super::{DmaMapper, DmaSegment};
use crate::bounce::path::SyncPart;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::Platform;

impl<P: Platform> DmaMapper<P> {
    /// Passes ownership of every segment of a list mapped by [`DmaMapper::map_sg`] back to
    /// the CPU, which then sees what the device wrote (bounced segments are copied back,
    /// segments in place are invalidated on a non-coherent device). Pass the segments
    /// `map_sg` returned, or a sub-list of them.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`] for an empty list; [`DmaError::AddressOverflow`] for a
    /// segment whose range is invalid — both found before anything is synced. Then, per
    /// segment, the errors of [`DmaMapper::sync_for_cpu`] ([`DmaError::UnknownMapping`],
    /// [`DmaError::OutOfMapping`], [`DmaError::WrongDirection`], [`DmaError::Detached`]):
    /// the first one stops the list, and the segments before it have been synced (a sync
    /// only hands ownership over; doing it again is harmless).
    #[track_caller]
    pub fn sync_sg_for_cpu(
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
    #[track_caller]
    pub fn sync_sg_for_device(
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
        for s in segments {
            self.sync_range(dev, s.dma, 0, s.len)?;
        }
        for s in segments {
            let part = SyncPart {
                dma: s.dma,
                offset: 0,
                len: s.len,
                dir,
            };
            self.sync(dev, part, for_cpu, site)?;
        }
        Ok(())
    }
}
