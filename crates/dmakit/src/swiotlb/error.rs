//! Errors of the bounce pool. Every failure is a value; a failed call changes nothing.

use core::fmt;

use crate::addr::{PhysAddr, PhysRange};
use crate::platform::MemoryFault;

/// Why an allocation, lookup or free failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwiotlbError {
    /// A request of zero bytes.
    ZeroLength,
    /// The request, with the lead-in its `min_align_mask` offset needs, does not fit in one
    /// segment.
    TooLarge {
        /// Bytes requested.
        len: u64,
        /// Largest request the pool accepts with this `min_align_mask`.
        max: u64,
    },
    /// `min_align_mask` is not of the form `2^n - 1`, or is not smaller than a segment.
    BadAlignMask {
        /// The mask given.
        mask: u64,
        /// Bytes per segment.
        segment: u64,
    },
    /// No area of any region has a free run that fits right now.
    Exhausted {
        /// Bytes requested.
        len: u64,
        /// Bytes in use (slot granularity) when the request failed.
        used: u64,
        /// Total bytes of the pool.
        total: u64,
    },
    /// No slot of the pool lies at or below the address limit of the request
    /// (the pool's allocation below a device's mask): only new memory within reach can
    /// serve it.
    Unreachable {
        /// The highest address the device reaches.
        max_addr: u64,
    },
    /// The address is not the bounce address of a live allocation (unknown, inside an
    /// allocation rather than at its start, or already freed).
    NotMapped {
        /// The address given.
        addr: PhysAddr,
    },
}

impl fmt::Display for SwiotlbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SwiotlbError::ZeroLength => f.write_str("zero-length bounce request"),
            SwiotlbError::TooLarge { len, max } => write!(
                f,
                "bounce of {len} bytes exceeds the largest of {max} bytes for this alignment"
            ),
            SwiotlbError::BadAlignMask { mask, segment } => write!(
                f,
                "min_align_mask {mask:#x} must be 2^n-1 and below the {segment}-byte segment"
            ),
            SwiotlbError::Exhausted { len, used, total } => write!(
                f,
                "bounce pool exhausted allocating {len} bytes ({used} of {total} bytes in use)"
            ),
            SwiotlbError::Unreachable { max_addr } => {
                write!(f, "no bounce slot lies at or below {max_addr:#x}")
            }
            SwiotlbError::NotMapped { addr } => {
                write!(f, "{addr} is not the start of a live bounce allocation")
            }
        }
    }
}

/// Why a region could not be added or removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegionError {
    /// The base is not aligned to `align` (the page size, or the slot size if larger).
    Misaligned {
        /// Base given.
        base: PhysAddr,
        /// Alignment required.
        align: u64,
    },
    /// The size is zero or not a multiple of the segment size.
    BadSize {
        /// Size given.
        size: u64,
        /// Bytes per segment.
        segment: u64,
    },
    /// `base + size` leaves the address space, or the region has `u32::MAX` line units (cache
    /// lines, the unit of usage accounting) or more.
    TooLarge {
        /// Base given.
        base: PhysAddr,
        /// Size given.
        size: u64,
    },
    /// The region overlaps one already in the pool.
    Overlaps {
        /// The region asked for.
        new: PhysRange,
        /// The region it overlaps.
        existing: PhysRange,
    },
    /// No region starts at this address.
    NotFound {
        /// Base given.
        base: PhysAddr,
    },
    /// The region still holds live allocations.
    Busy {
        /// The region.
        region: PhysRange,
        /// Live allocations in it.
        live: u64,
    },
    /// The platform refused to share the region with the host (a confidential guest's
    /// devices reach only shared memory); it stays private and out of the pool.
    NotShared {
        /// The region.
        region: PhysRange,
        /// The page the platform could not convert.
        fault: MemoryFault,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RegionError::Misaligned { base, align } => {
                write!(f, "region base {base} is not {align}-byte aligned")
            }
            RegionError::BadSize { size, segment } => write!(
                f,
                "region size {size} is not a non-zero multiple of the {segment}-byte segment"
            ),
            RegionError::TooLarge { base, size } => {
                write!(f, "region of {size} bytes at {base} is too large")
            }
            RegionError::Overlaps { new, existing } => {
                write!(f, "region {new:?} overlaps region {existing:?}")
            }
            RegionError::NotFound { base } => write!(f, "no region starts at {base}"),
            RegionError::Busy { region, live } => {
                write!(f, "region {region:?} still holds {live} live allocations")
            }
            RegionError::NotShared { region, fault } => {
                write!(
                    f,
                    "region {region:?} could not be shared with the host: {fault}"
                )
            }
        }
    }
}

impl core::error::Error for SwiotlbError {}
impl core::error::Error for RegionError {}
