//! The operations a fuzz case is made of, and the seeded generator.
//!
//! An operation names devices and buffers by index and picks live mappings by a number
//! taken modulo what is live when it runs, so any subsequence of a case is a valid case
//! (that is what shrinking needs): an operation with nothing to act on does nothing.

use dmakit::Direction;
use dmakit_sim::SimRng;

/// Classes of operations, so a run can leave some out (each is one bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    Map,
    Defer,
    Sg,
    Sync,
    DeviceAccess,
    Hostile,
    BadUnmap,
    Invalid,
    Release,
    Flush,
    Growth,
    Detach,
    Alloc,
    Fault,
    Churn,
    Boundary,
}

impl Class {
    pub const ALL: [Class; 16] = [
        Class::Map,
        Class::Defer,
        Class::Sg,
        Class::Sync,
        Class::DeviceAccess,
        Class::Hostile,
        Class::BadUnmap,
        Class::Invalid,
        Class::Release,
        Class::Flush,
        Class::Growth,
        Class::Detach,
        Class::Alloc,
        Class::Fault,
        Class::Churn,
        Class::Boundary,
    ];
}

/// A set of [`Class`]es.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Classes(pub u32);

impl Classes {
    pub const ALL: Classes = Classes(u32::MAX);
    pub fn has(self, c: Class) -> bool {
        self.0 & (1 << c as u8) != 0
    }
    pub fn without(self, c: Class) -> Classes {
        Classes(self.0 & !(1 << c as u8))
    }
}

/// Kinds of invalid call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalid {
    ZeroLength,
    Overflow,
    /// `map(0, u64::MAX)`: the end lies beyond every DMA address.
    Huge,
    EmptySg,
    ZeroLengthSgEntry,
    /// `unmap_sg(&[])`: must answer the same on every path.
    EmptyUnmapSg,
    /// A sync that leaves its mapping.
    SyncOutOfRange,
    /// `dma_bits(65)`.
    DmaBits65,
    /// A map near `u64::MAX` (valid or not, it must not panic).
    NearTop,
}

/// Kinds of wrong unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadUnmap {
    WrongSize,
    WrongDirection,
    /// Unmap, then the same unmap again.
    Double,
    /// An address no live mapping of the device starts at.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Map buffer `buf` for device `dev`.
    Map {
        dev: u8,
        buf: u16,
        dir: Direction,
    },
    /// `map_or_defer` of buffer `buf`.
    MapOrDefer {
        dev: u8,
        buf: u16,
        dir: Direction,
    },
    /// `map_sg` of up to three buffers.
    MapSg {
        dev: u8,
        bufs: Vec<u16>,
        dir: Direction,
    },
    /// Correct unmap (or `unmap_sg`) of a live mapping.
    Unmap {
        pick: u32,
    },
    /// Partial or full sync of a live single mapping: to the CPU (it checks what the device
    /// wrote), CPU writes, back to the device.
    Sync {
        pick: u32,
        off: u32,
        len: u32,
    },
    /// The device writes inside its mapping.
    DeviceWrite {
        pick: u32,
        seed: u8,
    },
    /// The device reads its mapping and must see the buffer.
    DeviceRead {
        pick: u32,
    },
    /// An untrusted device reads every granule it can reach (and beyond what was granted).
    HostileRead {
        dev: u8,
    },
    /// An untrusted device writes the whole granules of a writable mapping.
    HostileWrite {
        pick: u32,
    },
    /// The CPU writes an idle buffer.
    CpuTouch {
        buf: u16,
        seed: u8,
    },
    BadUnmap {
        pick: u32,
        kind: BadUnmap,
    },
    Invalid {
        dev: u8,
        kind: Invalid,
    },
    /// Unmaps everything of the device, then `release_device`.
    Release {
        dev: u8,
    },
    /// `flush_queues` on every IOMMU.
    Flush,
    /// Serves the oldest growth request.
    Grow,
    /// `retry_deferred` on every mapper.
    Retry,
    /// Unmaps everything of an IOMMU device, then `IommuDma::detach`.
    Detach {
        dev: u8,
    },
    /// `alloc_coherent` of 4 KiB or `alloc_pages` of 8 KiB behind a large-granule IOMMU.
    AllocDma {
        unit: u8,
        pages: bool,
    },
    /// Maps the buffer outside RAM on a device that must bounce it: the copy faults.
    FaultMap {
        dev: u8,
    },
    /// Maps the device's largest idle buffers until a map fails (at most 16): pool pressure.
    Fill {
        dev: u8,
    },
    /// A write-only bounce of memory outside RAM whose copy back faults at unmap.
    FaultUnmap,
    /// A map by the device whose `min_align_mask` no segment of its pool can honour.
    BoundaryMap {
        buf: u16,
    },
    /// 64 KiB through the coherent pool (it fits a fully free pool), by one of the two
    /// devices that use it.
    BigCoherent {
        second: bool,
    },
    /// `n` map/unmap pairs on a device (lazy domains park their bounces).
    Churn {
        dev: u8,
        n: u8,
    },
}

impl Op {
    pub fn class(&self) -> Class {
        match self {
            Op::Map { .. } | Op::Unmap { .. } | Op::CpuTouch { .. } | Op::BigCoherent { .. } => {
                Class::Map
            }
            Op::MapOrDefer { .. } | Op::Retry => Class::Defer,
            Op::MapSg { .. } => Class::Sg,
            Op::Sync { .. } => Class::Sync,
            Op::DeviceWrite { .. } | Op::DeviceRead { .. } => Class::DeviceAccess,
            Op::HostileRead { .. } | Op::HostileWrite { .. } => Class::Hostile,
            Op::BadUnmap { .. } => Class::BadUnmap,
            Op::Invalid { .. } => Class::Invalid,
            Op::Release { .. } => Class::Release,
            Op::Flush => Class::Flush,
            Op::Grow => Class::Growth,
            Op::Detach { .. } => Class::Detach,
            Op::AllocDma { .. } => Class::Alloc,
            Op::FaultMap { .. } | Op::FaultUnmap => Class::Fault,
            Op::Fill { .. } => Class::Map,
            Op::BoundaryMap { .. } => Class::Boundary,
            Op::Churn { .. } => Class::Churn,
        }
    }
}

/// Names the buffer larger than any bounce.
pub const HUGE: u16 = u16::MAX;

const DIRS: [Direction; 3] = [
    Direction::ToDevice,
    Direction::FromDevice,
    Direction::Bidirectional,
];

/// Generates `n` operations for a rig of `devices` devices and `buffers` buffers.
/// `devices` lists the device indices operations may name.
pub fn generate(seed: u64, n: usize, devices: &[u8], buffers: u16, classes: Classes) -> Vec<Op> {
    let mut r = SimRng::new(seed ^ 0x5eed_f0cc);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let op = one(&mut r, devices, buffers);
        if classes.has(op.class()) {
            out.push(op);
        }
    }
    out
}

fn one(r: &mut SimRng, devices: &[u8], buffers: u16) -> Op {
    let dev = devices[r.below(devices.len() as u64) as usize];
    let buf = r.below(buffers as u64) as u16;
    let dir = DIRS[r.below(3) as usize];
    let pick = r.next_u64() as u32;
    match r.below(100) {
        0..=17 => Op::Map { dev, buf, dir },
        18..=20 => Op::Fill { dev },
        21 => Op::BoundaryMap { buf },
        22..=27 => Op::MapOrDefer {
            dev,
            buf: if r.chance(0.1) { HUGE } else { buf },
            dir,
        },
        28..=32 => {
            let k = 1 + r.below(3) as usize;
            let bufs = (0..k).map(|_| r.below(buffers as u64) as u16).collect();
            Op::MapSg { dev, bufs, dir }
        }
        33..=50 => Op::Unmap { pick },
        51..=55 => Op::Sync {
            pick,
            off: r.next_u64() as u32,
            len: r.next_u64() as u32,
        },
        56..=59 => Op::DeviceWrite {
            pick,
            seed: r.below(256) as u8,
        },
        60..=62 => Op::DeviceRead { pick },
        63..=65 => Op::HostileRead { dev },
        66..=67 => Op::HostileWrite { pick },
        68..=71 => Op::CpuTouch {
            buf,
            seed: r.below(256) as u8,
        },
        72..=75 => Op::BadUnmap {
            pick,
            kind: [
                BadUnmap::WrongSize,
                BadUnmap::WrongDirection,
                BadUnmap::Double,
                BadUnmap::Unknown,
            ][r.below(4) as usize],
        },
        76..=80 => Op::Invalid {
            dev,
            kind: [
                Invalid::ZeroLength,
                Invalid::Overflow,
                Invalid::Huge,
                Invalid::EmptySg,
                Invalid::ZeroLengthSgEntry,
                Invalid::EmptyUnmapSg,
                Invalid::SyncOutOfRange,
                Invalid::DmaBits65,
                Invalid::NearTop,
            ][r.below(9) as usize],
        },
        81..=82 => Op::Release { dev },
        83..=85 => Op::Flush,
        86..=87 => Op::Grow,
        88 => Op::Retry,
        89 => Op::Detach { dev },
        90..=91 => Op::AllocDma {
            unit: 1 + r.below(2) as u8,
            pages: r.chance(0.5),
        },
        92 => Op::FaultMap { dev },
        93 => Op::FaultUnmap,
        94..=95 => Op::BigCoherent {
            second: r.chance(0.5),
        },
        _ => Op::Churn {
            dev,
            n: 1 + r.below(64) as u8,
        },
    }
}
