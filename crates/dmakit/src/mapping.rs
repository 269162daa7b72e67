//! The routing layer: the raw, address-based streaming API.
//!
//! [`DmaMapper`] validates every request once, at this boundary, then decides which path a
//! mapping takes. Each path owns one mechanism and knows nothing of the others.

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::Device;
use crate::direct;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::Platform;

/// The streaming DMA mapping layer for one platform.
///
/// All methods take `&self` and validate their input; none panics on bad input.
pub struct DmaMapper<P> {
    platform: P,
}

impl<P: Platform> DmaMapper<P> {
    /// A mapper over `platform`.
    pub fn new(platform: P) -> Self {
        Self { platform }
    }

    /// The platform this mapper drives.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// Lends `len` bytes at `phys` to `dev` for one transfer in `dir` (Linux
    /// `dma_map_phys`). Returns the address the device must use.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range;
    /// [`DmaError::NoBouncePool`] when the device cannot reach the buffer and nothing can
    /// bounce it. On error nothing was changed.
    pub fn map(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<DmaAddr, DmaError> {
        let range = checked_range(dev, phys.as_u64(), len)?;
        if !dev.can_reach(phys, len) {
            return Err(DmaError::NoBouncePool {
                device: dev.id(),
                phys,
                len,
            });
        }
        Ok(direct::map(&self.platform, dev, range, dir))
    }

    /// Ends the mapping `dma` of `len` bytes made with `dir`; the CPU owns the buffer again
    /// and sees what the device wrote.
    ///
    /// # Errors
    /// [`DmaError::ZeroLength`], [`DmaError::AddressOverflow`] for a bad range.
    pub fn unmap(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let range = checked_dma_range(dev, dma, len)?;
        direct::unmap(&self.platform, dev, range, dir);
        Ok(())
    }

    /// Passes ownership of `len` bytes at `dma` (inside a live mapping) to the device.
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`].
    pub fn sync_for_device(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let range = checked_dma_range(dev, dma, len)?;
        direct::sync_for_device(&self.platform, dev, range, dir);
        Ok(())
    }

    /// Passes ownership of `len` bytes at `dma` (inside a live mapping) back to the CPU.
    ///
    /// # Errors
    /// As [`DmaMapper::unmap`].
    pub fn sync_for_cpu(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), DmaError> {
        let range = checked_dma_range(dev, dma, len)?;
        direct::sync_for_cpu(&self.platform, dev, range, dir);
        Ok(())
    }
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

fn checked_dma_range(dev: &Device, dma: DmaAddr, len: u64) -> Result<PhysRange, DmaError> {
    checked_range(dev, dma.as_u64(), len)?;
    direct::phys_range(dma, len).ok_or(DmaError::AddressOverflow {
        device: dev.id(),
        addr: dma.as_u64(),
        len,
    })
}
