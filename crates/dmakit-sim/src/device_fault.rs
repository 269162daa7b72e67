//! What a refused device access is: the fault records of the DMA engines.
//!
//! A leaf of its own because both the engines ([`crate::device`]), which record faults, and
//! the model's error ([`crate::error::SimError::DeviceFault`]), which carries one, need it.

use std::fmt;

use dmakit::{DeviceId, DmaAddr};

/// Why a device access was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultReason {
    /// Some address of the access is above the device's DMA mask.
    AboveMask,
    /// The access is not inside any window currently granted to the device.
    NotGranted,
    /// The translation (the device's bus windows, or an IOMMU) has no mapping for the
    /// address.
    NoTranslation,
    /// The translated physical range is not RAM.
    NotMemory,
    /// The translation (an IOMMU) forbids this kind of access (a write to a read-only
    /// mapping, or a read of a write-only one).
    PermissionDenied,
    /// The translated physical range is memory private to a confidential guest: the
    /// guest has not shared it with the host (see [`crate::sharing`]).
    PrivateMemory,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultReason::AboveMask => "address above the device's DMA mask",
            FaultReason::NotGranted => "access outside the windows granted to the device",
            FaultReason::NoTranslation => "no translation for the address",
            FaultReason::NotMemory => "translated address is not memory",
            FaultReason::PermissionDenied => "the translation forbids this access",
            FaultReason::PrivateMemory => "memory private to the guest (not shared with the host)",
        })
    }
}

/// A refused device access, as recorded by the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceFault {
    /// The device that emitted the access.
    pub device: DeviceId,
    /// First bus address of the access.
    pub addr: DmaAddr,
    /// Its length.
    pub len: u64,
    /// Whether it was a write.
    pub write: bool,
    /// Why it was refused.
    pub reason: FaultReason,
}

impl fmt::Display for DeviceFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} of {} bytes at {}: {}",
            self.device,
            if self.write { "write" } else { "read" },
            self.len,
            self.addr,
            self.reason
        )
    }
}
