//! The mapping layer's errors.
//!
//! Every bad input and every resource shortage is a value of [`DmaError`], never a panic.
//! A failed operation leaves the caller's buffer and every pool exactly as they were.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::DeviceId;
use crate::direction::Direction;
use crate::platform::{IommuError, MemoryFault};

/// Why a mapping operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DmaError {
    /// A mapping or sync of zero bytes.
    ZeroLength {
        /// The device asked for.
        device: DeviceId,
    },
    /// `addr + len` leaves the 64-bit address space, or reaches into its last page (whose
    /// end no address can hold; see [`crate::DmaMapper::map`]).
    AddressOverflow {
        /// The device asked for.
        device: DeviceId,
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// The buffer must be bounced (above the device's mask, misaligned on a non-coherent
    /// device, or forced) but there is no bounce pool the device can use.
    NoBouncePool {
        /// The device asked for.
        device: DeviceId,
        /// The buffer.
        phys: PhysAddr,
        /// Its length.
        len: u64,
    },
    /// The bounce pool has no room for the mapping right now.
    PoolExhausted {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        len: u64,
        /// Bytes of the pool in use when the request failed.
        used: u64,
        /// Total bytes of the pool.
        total: u64,
    },
    /// The mapping is larger than one bounce may be (one pool segment, less the lead-in
    /// the device's `min_align_mask` may need). `max` is the largest length the pool can
    /// bounce for this device, never 0 (see [`DmaError::AlignMaskUnsupported`]).
    TooLargeToBounce {
        /// The device asked for.
        device: DeviceId,
        /// Bytes requested.
        len: u64,
        /// Largest bounce the pool supports for this device.
        max: u64,
    },
    /// The device's `min_align_mask` asks for a boundary the bounce pool cannot give at
    /// all (its segments are not larger than `min_align_mask + 1`), so no mapping of this
    /// device can be bounced there, whatever its length.
    AlignMaskUnsupported {
        /// The device asked for.
        device: DeviceId,
        /// The device's `min_align_mask`, as the pool was asked for it.
        min_align_mask: u64,
        /// The largest mask the pool supports.
        max_mask: u64,
    },
    /// Unmap or sync of an address that is not a live mapping.
    UnknownMapping {
        /// The device asked for.
        device: DeviceId,
        /// The address given.
        dma: DmaAddr,
    },
    /// Unmap or sync whose size or offset does not fit the mapping.
    OutOfMapping {
        /// The device asked for.
        device: DeviceId,
        /// The address given.
        dma: DmaAddr,
        /// The length given.
        len: u64,
        /// The length of the mapping.
        mapped_len: u64,
    },
    /// Unmap or sync in a direction the mapping does not allow.
    WrongDirection {
        /// The device asked for.
        device: DeviceId,
        /// The mapping's direction.
        mapped: Direction,
        /// The direction given.
        requested: Direction,
    },
    /// A CPU copy for a bounce touched memory the platform does not know.
    Memory(MemoryFault),
    /// The device's IOMMU domain has no free I/O virtual address range of the needed size
    /// within the device's DMA mask (capped by its bus limit), even after releasing cached
    /// and flush-queued ranges.
    IovaExhausted {
        /// The device asked for.
        device: DeviceId,
        /// Bytes of IOVA space needed (whole granules).
        len: u64,
        /// The highest address the search could use: the device's DMA mask, or its bus
        /// limit where that is lower.
        mask: u64,
    },
    /// A deferred mapping was still waiting when its device was released
    /// ([`crate::DmaMapper::release_device`]): it was taken out of the queue, never mapped.
    DeviceReleased {
        /// The device released.
        device: DeviceId,
    },
    /// The IOMMU refused a page-table operation for a mapping of the device.
    Iommu {
        /// The device asked for.
        device: DeviceId,
        /// What the IOMMU said.
        error: IommuError,
    },
    /// [`crate::DmaMapper::map_resource`]: the device, with no IOMMU to translate, cannot
    /// reach the register range at its bus address with its DMA mask. Resources are never
    /// bounced.
    ResourceUnreachable {
        /// The device asked for.
        device: DeviceId,
        /// The first register byte.
        phys: PhysAddr,
        /// The range's length.
        len: u64,
        /// The device's DMA mask.
        mask: u64,
    },
    /// The device was detached from its IOMMU domain ([`crate::IommuDma::detach`]): the
    /// IOMMU blocks it, so no address handed to it could work, and no mapping of it is live.
    /// Attach it to a domain again to map for it.
    Detached {
        /// The device asked for.
        device: DeviceId,
    },
    /// The device has a restricted DMA pool
    /// ([`crate::DmaMapperBuilder::restricted_pool`]) and is also attached to an IOMMU
    /// domain: a configuration error, refused on every map, unmap and sync of the device.
    /// Give it one or the other.
    RestrictedPoolBehindIommu {
        /// The device asked for.
        device: DeviceId,
    },
    /// The bounce the mapping needs cannot be reached by the device: no memory below the
    /// device's limit (its mask capped by its bus limit) lies in its bus windows, or the
    /// slot the pool chose lies outside them. Nothing was mapped and the pool is as it was.
    BounceUnreachable {
        /// The device asked for.
        device: DeviceId,
        /// The slot the pool chose (none was taken when no memory could do).
        slot: Option<PhysAddr>,
        /// Bytes requested.
        len: u64,
    },
    /// The device's IOMMU domain already records as many live mappings as it was given
    /// room for ([`crate::DomainConfig::max_mappings`]): nothing was mapped.
    MappingTableFull {
        /// The device asked for.
        device: DeviceId,
        /// Mappings the domain records at once.
        capacity: usize,
    },
    /// The device's IOMMU domain has too few free scatter-gather pieces for the list (one
    /// per entry; [`crate::DomainConfig::max_sg_pieces`]): nothing was mapped.
    SgPieceTableFull {
        /// The device asked for.
        device: DeviceId,
        /// Pieces the list needed.
        needed: usize,
        /// Pieces the domain records at once.
        capacity: usize,
    },
    /// [`crate::DmaMapper::map_or_defer`] found no room and the queue of deferred mappings
    /// already holds as many as it was given room for
    /// ([`crate::DmaMapperBuilder::deferred_capacity`]): nothing was mapped or queued.
    DeferQueueFull {
        /// The device asked for.
        device: DeviceId,
        /// Deferred mappings the queue holds.
        capacity: usize,
    },
    /// [`crate::DmaMapper::map_sg_into`] was given an output list too short for the
    /// segments the scatter-gather list maps to: nothing was left mapped.
    SegmentListTooShort {
        /// The device.
        device: DeviceId,
        /// Segments the output list holds.
        room: usize,
    },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DmaError::ZeroLength { device } => write!(f, "{device}: zero-length DMA request"),
            DmaError::AddressOverflow { device, addr, len } => write!(
                f,
                "{device}: range of {len} bytes at {addr:#x} overflows the address space (it must end by 2^64 - 4096)"
            ),
            DmaError::NoBouncePool { device, phys, len } => write!(
                f,
                "{device}: {len} bytes at {phys} must be bounced but no bounce pool serves this device"
            ),
            DmaError::PoolExhausted {
                device,
                len,
                used,
                total,
            } => write!(
                f,
                "{device}: bounce pool exhausted mapping {len} bytes ({used} of {total} bytes in use)"
            ),
            DmaError::TooLargeToBounce { device, len, max } => write!(
                f,
                "{device}: {len} bytes exceed the largest bounce of {max} bytes"
            ),
            DmaError::AlignMaskUnsupported {
                device,
                min_align_mask,
                max_mask,
            } => write!(
                f,
                "{device}: min_align_mask {min_align_mask:#x} is beyond the bounce pool's largest of {max_mask:#x}"
            ),
            DmaError::UnknownMapping { device, dma } => {
                write!(f, "{device}: {dma} is not a live mapping")
            }
            DmaError::OutOfMapping {
                device,
                dma,
                len,
                mapped_len,
            } => write!(
                f,
                "{device}: {len} bytes at {dma} fall outside the mapping of {mapped_len} bytes"
            ),
            DmaError::WrongDirection {
                device,
                mapped,
                requested,
            } => write!(
                f,
                "{device}: {requested} operation on a {mapped} mapping"
            ),
            DmaError::Memory(fault) => write!(f, "bounce copy failed: {fault}"),
            DmaError::IovaExhausted { device, len, mask } => write!(
                f,
                "{device}: IOVA space exhausted: no free range of {len} bytes at or below {mask:#x}"
            ),
            DmaError::Iommu { device, error } => write!(f, "{device}: IOMMU refused: {error}"),
            DmaError::Detached { device } => write!(
                f,
                "{device}: detached from its IOMMU domain, so the IOMMU blocks it; attach it again"
            ),
            DmaError::RestrictedPoolBehindIommu { device } => write!(
                f,
                "{device}: has a restricted DMA pool and is attached to an IOMMU domain; \
                 configure one or the other"
            ),
            DmaError::ResourceUnreachable {
                device,
                phys,
                len,
                mask,
            } => write!(
                f,
                "{device}: cannot reach the {len} register bytes at {phys} with DMA mask {mask:#x}; MMIO is never bounced"
            ),
            DmaError::DeviceReleased { device } => write!(
                f,
                "{device}: released while a deferred mapping waited; it was never mapped"
            ),
            DmaError::BounceUnreachable {
                device,
                slot: Some(slot),
                len,
            } => write!(
                f,
                "{device}: the {len}-byte bounce slot at {slot} has no bus address the device can emit (outside its DMA ranges, or above its mask or bus limit)"
            ),
            DmaError::BounceUnreachable {
                device,
                slot: None,
                len,
            } => write!(
                f,
                "{device}: no memory a {len}-byte bounce could use has a bus address the device can emit"
            ),
            DmaError::MappingTableFull { device, capacity } => write!(
                f,
                "{device}: its IOMMU domain's mapping table is full ({capacity} live mappings); unmap some or create the domain with a larger max_mappings"
            ),
            DmaError::SgPieceTableFull {
                device,
                needed,
                capacity,
            } => write!(
                f,
                "{device}: its IOMMU domain has no room for the {needed} pieces of this scatter-gather list ({capacity} in all); unmap some lists or create the domain with a larger max_sg_pieces"
            ),
            DmaError::DeferQueueFull { device, capacity } => write!(
                f,
                "{device}: no bounce room, and the deferred-mapping queue is full ({capacity} waiting); nothing was queued"
            ),
            DmaError::SegmentListTooShort { device, room } => write!(
                f,
                "{device}: the scatter-gather list maps to more than the {room} segments the output list holds; nothing was left mapped"
            ),
        }
    }
}

impl core::error::Error for DmaError {}

impl From<MemoryFault> for DmaError {
    fn from(f: MemoryFault) -> Self {
        DmaError::Memory(f)
    }
}
