//! Errors of the machine model.
//!
//! Bad configuration and bad requests to the model are values of [`SimError`]; the model
//! never panics on them. CPU accesses outside RAM use the core crate's
//! [`dmakit::MemoryFault`], and device accesses that the hardware would refuse are recorded
//! as [`crate::DeviceFault`]s rather than returned as errors of the model itself.

use std::fmt;

use dmakit::DeviceId;

use crate::device_fault::DeviceFault;

/// Why the model refused a configuration or a request.
#[derive(Clone, Debug, PartialEq)]
pub enum SimError {
    /// The RAM map has no ranges.
    EmptyRamMap,
    /// A RAM range is empty or its end overflows the address space.
    BadRamRange {
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// The cache line size is not 32, 64 or 128.
    BadLineSize(u64),
    /// Capacity and associativity do not give a whole, non-zero number of sets.
    BadCacheGeometry {
        /// Capacity in bytes.
        capacity: u64,
        /// Ways per set.
        ways: u64,
        /// Line size in bytes.
        line: u64,
    },
    /// A hazard rate is not a probability in `[0, 1]`.
    BadRate(f64),
    /// The machine must have at least one CPU.
    ZeroCpus,
    /// `set_current_cpu` with a CPU number that does not exist.
    NoSuchCpu {
        /// The CPU asked for.
        cpu: usize,
        /// Number of CPUs.
        count: usize,
    },
    /// A device with this id is already attached.
    DuplicateDevice(DeviceId),
    /// No device with this id is attached.
    UnknownDevice(DeviceId),
    /// A range of zero bytes or one whose end overflows the address space.
    BadRange {
        /// Start of the range.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// `revoke` of a window that was never granted to the device.
    NoSuchGrant {
        /// The device.
        device: DeviceId,
        /// Start of the window.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// A device access was refused by the bus (mask, grants, translation, memory); it is
    /// also in the machine's fault log.
    DeviceFault(DeviceFault),
    /// An oracle allocation overlapping one already tracked, or one not in RAM.
    BadAllocation {
        /// Start of the allocation.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// No tracked allocation starts at this address.
    UnknownAllocation(u64),
    /// Stamp and data buffers of different lengths.
    LengthMismatch {
        /// Bytes of data.
        data: usize,
        /// Stamps given.
        owners: usize,
    },
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::EmptyRamMap => f.write_str("the RAM map has no ranges"),
            SimError::BadRamRange { start, len } => {
                write!(f, "RAM range of {len} bytes at {start:#x} is empty or overflows")
            }
            SimError::BadLineSize(l) => write!(f, "cache line size {l} is not 32, 64 or 128"),
            SimError::BadCacheGeometry {
                capacity,
                ways,
                line,
            } => write!(
                f,
                "a cache of {capacity} bytes with {ways} ways of {line}-byte lines has no whole number of sets"
            ),
            SimError::BadRate(r) => write!(f, "hazard rate {r} is not a probability"),
            SimError::ZeroCpus => f.write_str("the machine needs at least one CPU"),
            SimError::NoSuchCpu { cpu, count } => {
                write!(f, "CPU {cpu} does not exist (the machine has {count})")
            }
            SimError::DuplicateDevice(d) => write!(f, "{d} is already attached"),
            SimError::UnknownDevice(d) => write!(f, "{d} is not attached"),
            SimError::BadRange { addr, len } => {
                write!(f, "range of {len} bytes at {addr:#x} is empty or overflows")
            }
            SimError::NoSuchGrant { device, addr, len } => {
                write!(f, "{device} holds no grant of {len} bytes at {addr:#x}")
            }
            SimError::DeviceFault(fault) => write!(f, "device fault: {fault}"),
            SimError::BadAllocation { addr, len } => write!(
                f,
                "allocation of {len} bytes at {addr:#x} is empty, overlaps a tracked one or is not RAM"
            ),
            SimError::UnknownAllocation(a) => write!(f, "no tracked allocation at {a:#x}"),
            SimError::LengthMismatch { data, owners } => {
                write!(f, "{data} data bytes but {owners} stamps")
            }
        }
    }
}

impl std::error::Error for SimError {}
