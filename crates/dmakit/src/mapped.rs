//! What a mapping hands back: the path it took and the segments a device sees.
//!
//! A leaf module, so the router ([`crate::mapping`]) and the paths it drives (the IOMMU
//! path in particular) share these types without importing each other.

use crate::addr::DmaAddr;
use crate::decision::BounceReason;
use crate::platform::IommuDomainId;

/// How a single mapping was made, as reported by [`DmaMapper::map_traced`].
///
/// [`DmaMapper::map_traced`]: crate::DmaMapper::map_traced
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
        domain: IommuDomainId,
    },
}

/// One device-visible segment produced by [`DmaMapper::map_sg`].
///
/// [`DmaMapper::map_sg`]: crate::DmaMapper::map_sg
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaSegment {
    /// Device address.
    pub dma: DmaAddr,
    /// Length in bytes.
    pub len: u64,
}
