//! A validated scenario: the machine, its devices, its drivers and their DMA patterns.
//!
//! Built from a scenario file by [`crate::config`]; everything here has been
//! checked, so the runner trusts it.

use std::path::PathBuf;

use dmakit::{Device, Direction};

use dmakit_sim::cache::CacheConfig;
use dmakit_sim::hazard::HazardConfig;
use dmakit_sim::iommu::Granule;

/// How large the SWIOTLB bounce pool is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolSize {
    /// As Linux on arm64 sizes it for the machine's RAM (see
    /// [`crate::policy::linux_arm64_swiotlb_bytes`]).
    LinuxArm64,
    /// A fixed size in bytes (non-zero, a multiple of the 256 KiB segment).
    Bytes(u64),
    /// No bounce pool at all.
    None,
}

/// Where the background allocations take their size distribution from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlabinfoSource {
    /// `/proc/slabinfo` when readable, else the snapshot shipped with dmakit.
    Auto,
    /// The host's `/proc/slabinfo` (an error when it cannot be read).
    Live,
    /// The snapshot shipped with dmakit ([`crate::footprint::SHIPPED_SLABINFO`]).
    Shipped,
    /// A slabinfo file.
    File(PathBuf),
}

/// The modelled machine.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineModel {
    /// CPUs (each transfer runs on a random one; bounce pool areas follow them).
    pub cpus: usize,
    /// The CPU data cache.
    pub cache: CacheConfig,
    /// RAM as `(start, len)`.
    pub ram: Vec<(u64, u64)>,
    /// Cache misbehaviour.
    pub hazards: HazardConfig,
    /// The bounce pool.
    pub bounce_pool: PoolSize,
    /// The IOMMU's page-table granule (used when a device sits behind the IOMMU).
    pub iommu_granule: Granule,
}

/// How a device's IOMMU domain invalidates the IOTLB after an unmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuMode {
    /// Every unmap invalidates at once ([`dmakit::DomainConfig::STRICT`]).
    Strict,
    /// Unmaps are queued and invalidated in batches ([`dmakit::DomainConfig::LAZY`]);
    /// untrusted devices' unmaps stay strict.
    Lazy,
}

/// The background kmalloc traffic.
#[derive(Clone, Debug, PartialEq)]
pub struct ChurnModel {
    /// Where the size distribution comes from.
    pub slabinfo: SlabinfoSource,
    /// Objects kept live.
    pub live_objects: u64,
    /// Average free+allocate pairs between two transfers.
    pub churn_per_transfer: f64,
}

/// Where a driver's DMA buffer sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferModel {
    /// A standalone kmalloc object of the transfer's size, allocated for the transfer.
    Kmalloc,
    /// A kmalloc object marked as a DMA buffer (line aligned, whole lines).
    DmaKmalloc,
    /// A field of the driver's private structure, kmalloc'd once when the driver starts.
    StructField {
        /// Size of the structure.
        struct_size: u64,
        /// Offset of the buffer field.
        offset: u64,
        /// Room of the field (the largest transfer).
        field_size: u64,
        /// Offset of the next field (the gap after the field is padding).
        next_field: u64,
    },
    /// A page fragment, as network drivers allocate receive buffers.
    PageFrag {
        /// Fragment alignment (raised to the kmalloc minimum alignment of the policy).
        align: u64,
        /// Bytes before the buffer in the fragment (headroom, never written while mapped).
        headroom: u64,
        /// Bytes after the buffer in the fragment, used by the CPU (`skb_shared_info`).
        tail: u64,
        /// Fragments kept alive after their transfer (packets being processed).
        in_flight: usize,
    },
    /// Whole pages anywhere in RAM (page cache, user buffers).
    Pages,
    /// Buffers from `DmaAllocator::alloc_noncontiguous` (scattered pages at one
    /// contiguous IOVA range), allocated once and reused frame after frame, as a display
    /// engine's framebuffers. The device must sit behind the IOMMU.
    Noncontiguous {
        /// Buffers, used in turn (2: double buffering).
        frames: usize,
    },
}

/// One DMA transfer a driver operation makes.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferModel {
    /// The driver code that maps it, as reports name it.
    pub site: String,
    /// Directions to pick from.
    pub directions: Vec<Direction>,
    /// Smallest and largest size, inclusive.
    pub size: (u64, u64),
    /// Sizes are multiples of this.
    pub step: u64,
    /// Where the buffer sits.
    pub buffer: BufferModel,
    /// Probability that an operation makes this transfer.
    pub chance: f64,
    /// Size of each device access (burst), inclusive range.
    pub burst: (u64, u64),
    /// Transfers of this pattern in flight at once: the driver maps this many buffers
    /// (a receive ring, a command queue), the device works on them, and they are unmapped
    /// as they complete. 1: one at a time.
    pub queue_depth: usize,
}

/// A driver: operations of one or more transfers on one device.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverModel {
    /// Name.
    pub name: String,
    /// Index into [`Scenario::devices`].
    pub device: usize,
    /// Relative frequency of its operations.
    pub weight: f64,
    /// Operations per second on the real machine, if the scenario gives one: turns the
    /// simulated bounces into bounces, bytes copied and CPU time per second.
    pub rate: Option<f64>,
    /// The transfers of one operation, in order.
    pub transfers: Vec<TransferModel>,
}

/// A complete, validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// What it models.
    pub description: String,
    /// The machine.
    pub machine: MachineModel,
    /// Background allocations.
    pub churn: ChurnModel,
    /// Devices, in file order (ids are their index + 1).
    pub devices: Vec<Device>,
    /// For each device (same order), the IOMMU domain it sits behind, if any.
    pub iommu: Vec<Option<IommuMode>>,
    /// Drivers.
    pub drivers: Vec<DriverModel>,
}

impl Scenario {
    /// The largest cache line any mapping must respect.
    pub fn line(&self) -> u64 {
        self.devices
            .iter()
            .map(Device::cache_line)
            .fold(self.machine.cache.line_size, u64::max)
    }

    /// Every transfer pattern, in driver then file order (the runner's site numbering).
    pub fn transfer_sites(&self) -> impl Iterator<Item = (&DriverModel, &TransferModel)> {
        self.drivers
            .iter()
            .flat_map(|d| d.transfers.iter().map(move |t| (d, t)))
    }
}
