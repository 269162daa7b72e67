//! The seam where an IOMMU plugs into the DMA allocators.
//!
//! Without an IOMMU a device emits physical addresses, so an allocation for it must lie
//! below its DMA mask and be physically contiguous wherever the device needs contiguity.
//! Behind an IOMMU neither holds: scattered pages anywhere in memory can be made
//! contiguous in the device's address space. The allocators ask a [`DeviceAddressSpace`]
//! whether a device is translated and, if so, to map the pages they took; the IOMMU layer
//! implements the trait. [`NoTranslation`] is the direct case: no device is translated.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::direction::Direction;

/// Why a device address space refused an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceSpaceError {
    /// No free range of device addresses of the needed size below the device's mask.
    NoSpace {
        /// Pages that were to be mapped.
        pages: u64,
    },
    /// An unmap of a range that is not a live mapping of this device.
    NotMapped {
        /// Device address given.
        dma: DmaAddr,
    },
    /// The page tables could not be updated (no memory for a table page, a hardware error).
    TablesFailed,
    /// The device was detached from its IOMMU domain, which now blocks it: nothing can be
    /// mapped for it until it is attached again.
    Detached,
}

impl fmt::Display for DeviceSpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DeviceSpaceError::NoSpace { pages } => {
                write!(f, "no free device address range of {pages} pages")
            }
            DeviceSpaceError::NotMapped { dma } => write!(f, "{dma} is not a live mapping"),
            DeviceSpaceError::TablesFailed => f.write_str("page tables could not be updated"),
            DeviceSpaceError::Detached => {
                f.write_str("the device is detached from its IOMMU domain (blocked)")
            }
        }
    }
}

impl core::error::Error for DeviceSpaceError {}

/// A device's address space when it sits behind a translation (an IOMMU).
///
/// Contract for implementors:
/// - [`DeviceAddressSpace::translates`] is fixed for a device while allocations for it are
///   live.
/// - [`DeviceAddressSpace::map_pages_contiguous`] maps `pages[i]` (each a page-aligned
///   physical page of [`crate::PAGE_SIZE`] bytes; the list may be in any order and need not
///   be physically contiguous) at `dma + i * PAGE_SIZE`, with the permissions `dir` needs
///   (`ToDevice`: device reads; `FromDevice`: device writes; `Bidirectional`: both), and
///   returns `dma`, page aligned, with the whole range at or below the device's DMA mask.
///   On error nothing stays mapped.
/// - [`DeviceAddressSpace::unmap_pages`] removes exactly such a mapping (same `dma`, same
///   page count) and any translation caches for it; afterwards the device faults on it.
/// - `map_pages_contiguous` and `unmap_pages` may be called in atomic context (from
///   [`crate::dma_alloc::DmaAllocator::alloc_coherent`] with
///   [`crate::dma_alloc::AllocContext::Atomic`], and the matching free): they must not
///   sleep; failing with [`DeviceSpaceError::TablesFailed`] is allowed.
pub trait DeviceAddressSpace {
    /// Whether `dev`'s addresses are translated. `false`: allocations for `dev` use
    /// physical addresses and must lie below its mask.
    fn translates(&self, dev: &Device) -> bool;

    /// The smallest unit the space maps for a translated `dev`, in bytes: a power of two of
    /// at least [`crate::PAGE_SIZE`] (an IOMMU's granule). The allocators round translated
    /// allocations up to it and take their pages in naturally aligned groups of it, so
    /// [`DeviceAddressSpace::map_pages_contiguous`] can map them. The default, one page,
    /// suits spaces that map single pages.
    fn granule(&self, _dev: &Device) -> u64 {
        crate::platform::PAGE_SIZE
    }

    /// Maps `pages` at consecutive device addresses for `dev`; returns the first.
    ///
    /// # Errors
    /// [`DeviceSpaceError::NoSpace`], [`DeviceSpaceError::TablesFailed`] or
    /// [`DeviceSpaceError::Detached`]; nothing is mapped then.
    fn map_pages_contiguous(
        &self,
        dev: &Device,
        pages: &[PhysAddr],
        dir: Direction,
    ) -> Result<DmaAddr, DeviceSpaceError>;

    /// Unmaps `pages` pages at `dma` mapped for `dev` by
    /// [`DeviceAddressSpace::map_pages_contiguous`].
    ///
    /// # Errors
    /// [`DeviceSpaceError::NotMapped`] if that is not a live mapping; nothing changes then.
    fn unmap_pages(&self, dev: &Device, dma: DmaAddr, pages: u64) -> Result<(), DeviceSpaceError>;
}

/// No translation: every device emits physical addresses (no IOMMU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoTranslation;

impl DeviceAddressSpace for NoTranslation {
    fn translates(&self, _dev: &Device) -> bool {
        false
    }

    /// Never called for an untranslated device; refuses.
    fn map_pages_contiguous(
        &self,
        _dev: &Device,
        pages: &[PhysAddr],
        _dir: Direction,
    ) -> Result<DmaAddr, DeviceSpaceError> {
        Err(DeviceSpaceError::NoSpace {
            pages: pages.len() as u64,
        })
    }

    /// Never called for an untranslated device; refuses.
    fn unmap_pages(
        &self,
        _dev: &Device,
        dma: DmaAddr,
        _pages: u64,
    ) -> Result<(), DeviceSpaceError> {
        Err(DeviceSpaceError::NotMapped { dma })
    }
}

/// Forwards [`DeviceAddressSpace`] through a reference or a shared pointer, as
/// `crate::platform` does for the platform traits.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<T: DeviceAddressSpace + ?Sized> DeviceAddressSpace for $ptr {
            fn translates(&self, dev: &Device) -> bool {
                (**self).translates(dev)
            }
            fn granule(&self, dev: &Device) -> u64 {
                (**self).granule(dev)
            }
            fn map_pages_contiguous(
                &self,
                dev: &Device,
                pages: &[PhysAddr],
                dir: Direction,
            ) -> Result<DmaAddr, DeviceSpaceError> {
                (**self).map_pages_contiguous(dev, pages, dir)
            }
            fn unmap_pages(
                &self,
                dev: &Device,
                dma: DmaAddr,
                pages: u64,
            ) -> Result<(), DeviceSpaceError> {
                (**self).unmap_pages(dev, dma, pages)
            }
        }
    )*};
}

forward!(&T, alloc::sync::Arc<T>);
