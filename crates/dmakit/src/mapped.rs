//! The plain values mappings pass around: the buffers of a scatter-gather list, the path
//! a mapping took, and the segments a device sees.
//!
//! A leaf module, so the router and the modules around it (the IOMMU path, the DMA
//! allocators' scatter-gather tables) share these types without importing each other.

use crate::addr::{DmaAddr, PhysAddr};
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

/// One element of a scatter-gather list given to [`DmaMapper::map_sg`].
///
/// [`DmaMapper::map_sg`]: crate::DmaMapper::map_sg
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// First byte.
    pub phys: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}
