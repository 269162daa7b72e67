//! The check every unmap makes against the record of the mapping it names, whichever path
//! keeps that record (a bounce backend, an IOMMU domain): the same device, the same length,
//! the same direction, each refusal reported the same way on every path.

use crate::addr::DmaAddr;
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::error::DmaError;

/// What a live mapping's record says it was made with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Recorded {
    /// The device the mapping was made for.
    pub(crate) device: DeviceId,
    /// Its length in bytes.
    pub(crate) len: u64,
    /// Its direction.
    pub(crate) dir: Direction,
}

/// Checks an unmap of `dma` by `dev` for `len` bytes (`None`: the caller names no length)
/// in `dir` against the record `rec`.
///
/// # Errors
/// [`DmaError::UnknownMapping`] when the mapping is another device's;
/// [`DmaError::OutOfMapping`] for a different length; [`DmaError::WrongDirection`] for a
/// different direction. Checked in that order; the first that fails is returned.
#[inline(always)]
pub(crate) fn check_unmap(
    dev: &Device,
    dma: DmaAddr,
    len: Option<u64>,
    dir: Direction,
    rec: Recorded,
) -> Result<(), DmaError> {
    let len_ok = len.is_none_or(|l| l == rec.len);
    if rec.device == dev.id() && len_ok && rec.dir == dir {
        Ok(())
    } else {
        Err(refusal(dev, dma, len, dir, rec))
    }
}

/// The error [`check_unmap`] returns when some check failed (out of line: a refused unmap
/// is a driver bug, not the usual path).
#[cold]
#[inline(never)]
fn refusal(
    dev: &Device,
    dma: DmaAddr,
    len: Option<u64>,
    dir: Direction,
    rec: Recorded,
) -> DmaError {
    let device = dev.id();
    if rec.device != device {
        return DmaError::UnknownMapping { device, dma };
    }
    if let Some(len) = len.filter(|&l| l != rec.len) {
        return DmaError::OutOfMapping {
            device,
            dma,
            len,
            mapped_len: rec.len,
        };
    }
    DmaError::WrongDirection {
        device,
        mapped: rec.dir,
        requested: dir,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: u32) -> Device {
        Device::builder(DeviceId(id), "check").build().unwrap()
    }

    const REC: Recorded = Recorded {
        device: DeviceId(1),
        len: 64,
        dir: Direction::FromDevice,
    };
    const DMA: DmaAddr = DmaAddr::new(0x1000);

    #[test]
    fn accepts_the_mapping_as_made() {
        let d = dev(1);
        assert_eq!(
            check_unmap(&d, DMA, Some(64), Direction::FromDevice, REC),
            Ok(())
        );
        assert_eq!(
            check_unmap(&d, DMA, None, Direction::FromDevice, REC),
            Ok(())
        );
    }

    #[test]
    fn refuses_in_order_device_length_direction() {
        let other = dev(2);
        // Everything wrong: the device is reported first.
        assert_eq!(
            check_unmap(&other, DMA, Some(32), Direction::ToDevice, REC),
            Err(DmaError::UnknownMapping {
                device: DeviceId(2),
                dma: DMA
            })
        );
        let d = dev(1);
        assert_eq!(
            check_unmap(&d, DMA, Some(32), Direction::ToDevice, REC),
            Err(DmaError::OutOfMapping {
                device: DeviceId(1),
                dma: DMA,
                len: 32,
                mapped_len: 64
            })
        );
        assert_eq!(
            check_unmap(&d, DMA, Some(64), Direction::ToDevice, REC),
            Err(DmaError::WrongDirection {
                device: DeviceId(1),
                mapped: Direction::FromDevice,
                requested: Direction::ToDevice
            })
        );
        // No length named: only the direction is wrong.
        assert_eq!(
            check_unmap(&d, DMA, None, Direction::ToDevice, REC),
            Err(DmaError::WrongDirection {
                device: DeviceId(1),
                mapped: Direction::FromDevice,
                requested: Direction::ToDevice
            })
        );
    }
}
