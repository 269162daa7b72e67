//! `virtio_drivers::Hal` over the installed DMA layer: the released 0.13 signature, or
//! with the `access-platform` feature the development head's.

#[cfg(feature = "access-platform")]
mod access_platform;
#[cfg(not(feature = "access-platform"))]
mod released;

use dmakit::Direction;
use virtio_drivers::BufferDirection;

/// dmakit's direction for virtio-drivers' (for kernels that wrap [`DmakitHal`] in a `Hal`
/// of their own and call [`crate::VirtioDma`] directly).
pub fn direction(d: BufferDirection) -> Direction {
    match d {
        BufferDirection::DriverToDevice => Direction::ToDevice,
        BufferDirection::DeviceToDriver => Direction::FromDevice,
        BufferDirection::Both => Direction::Bidirectional,
    }
}

/// The `Hal` to give virtio-drivers (`VirtIOBlk::<DmakitHal, _>`): every method goes to
/// the DMA layer [`crate::install`] installed, and panics if there is none.
#[derive(Clone, Copy, Debug)]
pub struct DmakitHal;
