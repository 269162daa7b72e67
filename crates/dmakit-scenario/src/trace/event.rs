//! The `dma:` trace events, with the fields the replay needs.
//!
//! Field names follow the kernel's format files (`events/dma/*/format`). Addresses are
//! kept as the kernel printed them: a DMA address is whatever the device was given (a bus
//! address, an IOVA, a bounce slot), a physical address is the CPU's.

use dmakit::Direction;

/// A direction as the kernel prints it (`__print_symbolic` of `enum dma_data_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TraceDir {
    /// `BIDIRECTIONAL` (0).
    Bidirectional,
    /// `TO_DEVICE` (1).
    ToDevice,
    /// `FROM_DEVICE` (2).
    FromDevice,
    /// `NONE` (3): not a valid direction for a mapping.
    None,
}

impl TraceDir {
    /// The direction printed as `name`; `None` for anything else.
    pub fn from_kernel(name: &str) -> Option<TraceDir> {
        Some(match name {
            "BIDIRECTIONAL" => TraceDir::Bidirectional,
            "TO_DEVICE" => TraceDir::ToDevice,
            "FROM_DEVICE" => TraceDir::FromDevice,
            "NONE" => TraceDir::None,
            _ => return None,
        })
    }

    /// The kernel's spelling.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            TraceDir::Bidirectional => "BIDIRECTIONAL",
            TraceDir::ToDevice => "TO_DEVICE",
            TraceDir::FromDevice => "FROM_DEVICE",
            TraceDir::None => "NONE",
        }
    }

    /// The mapping direction; `None` for `NONE`.
    pub const fn direction(self) -> Option<Direction> {
        match self {
            TraceDir::Bidirectional => Some(Direction::Bidirectional),
            TraceDir::ToDevice => Some(Direction::ToDevice),
            TraceDir::FromDevice => Some(Direction::FromDevice),
            TraceDir::None => None,
        }
    }

    /// The trace spelling of `dir`.
    pub const fn of(dir: Direction) -> TraceDir {
        match dir {
            Direction::Bidirectional => TraceDir::Bidirectional,
            Direction::ToDevice => TraceDir::ToDevice,
            Direction::FromDevice => TraceDir::FromDevice,
        }
    }
}

/// The spelling of a single-range map or unmap event: `dma_map_phys` (Linux 6.18 and
/// later) or the older `dma_map_page` and `dma_map_resource` (same fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SingleKind {
    /// `dma_map_phys` / `dma_unmap_phys`.
    Phys,
    /// `dma_map_page` / `dma_unmap_page`.
    Page,
    /// `dma_map_resource` / `dma_unmap_resource`: MMIO of another device, not RAM.
    Resource,
}

/// Where a sync hands the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncTo {
    /// `dma_sync_*_for_cpu`.
    Cpu,
    /// `dma_sync_*_for_device`.
    Device,
}

/// Which DMA allocator an allocation or free event comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocKind {
    /// `dma_alloc` / `dma_free`: coherent memory.
    Coherent,
    /// `dma_alloc_pages` / `dma_free_pages`.
    Pages,
    /// `dma_alloc_sgt` / `dma_free_sgt`: noncontiguous memory.
    Sgt,
    /// `dma_alloc_sgt_err`: a failed noncontiguous allocation (no free event).
    SgtErr,
}

/// A scatter-gather mapping (`dma_map_sg`).
///
/// The kernel records at most 128 entries of each array (`[TRUNCATED]` says more were
/// mapped). `phys_addrs` has one entry per list entry (`nents`); `dma_addrs` and `sizes`
/// one per DMA segment (`ents`): the same entries on the direct path, fewer when an IOMMU
/// merged them, and then the entries' own sizes are not in the trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SgMap {
    /// `dev_name()`.
    pub device: String,
    /// Direction.
    pub dir: TraceDir,
    /// Entries in the list (`full_nents`).
    pub nents: u32,
    /// DMA segments mapped (`full_ents`).
    pub ents: u32,
    /// Whether the arrays hold only the first 128.
    pub truncated: bool,
    /// DMA address of each segment.
    pub dma_addrs: Vec<u64>,
    /// Length of each segment.
    pub sizes: Vec<u64>,
    /// Physical address of each entry.
    pub phys_addrs: Vec<u64>,
    /// `DMA_ATTR_MMIO`: not RAM.
    pub mmio: bool,
}

/// One `dma:` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A single range mapped. A failed mapping is traced too, with `dma_addr`
    /// `ffffffffffffffff` (`DMA_MAPPING_ERROR`).
    Map {
        /// Which spelling.
        kind: SingleKind,
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// Where the device was told to find it.
        dma_addr: u64,
        /// Bytes.
        size: u64,
        /// The CPU's physical address of the buffer.
        phys_addr: u64,
        /// `DMA_ATTR_MMIO`: not RAM.
        mmio: bool,
    },
    /// A single range unmapped.
    Unmap {
        /// Which spelling.
        kind: SingleKind,
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// The mapping's DMA address.
        dma_addr: u64,
        /// Bytes.
        size: u64,
    },
    /// A scatter-gather list mapped.
    MapSg(SgMap),
    /// A scatter-gather list that could not be mapped.
    MapSgErr {
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// Physical address of each entry (the kernel labels them `dma_addrs`).
        phys_addrs: Vec<u64>,
        /// The error (`-ENOMEM`, ...).
        err: i64,
    },
    /// A scatter-gather list unmapped.
    UnmapSg {
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// Physical address of each entry.
        phys_addrs: Vec<u64>,
    },
    /// `dma_sync_single_for_{cpu,device}`.
    SyncSingle {
        /// Which way.
        to: SyncTo,
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// DMA address synced.
        dma_addr: u64,
        /// Bytes synced.
        size: u64,
    },
    /// `dma_sync_sg_for_{cpu,device}`.
    SyncSg {
        /// Which way.
        to: SyncTo,
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// DMA address of each segment.
        dma_addrs: Vec<u64>,
        /// Length of each segment.
        sizes: Vec<u64>,
    },
    /// An allocation of DMA memory (never bounced).
    Alloc {
        /// Which allocator.
        kind: AllocKind,
        /// `dev_name()`.
        device: String,
        /// Direction (`BIDIRECTIONAL` for coherent memory).
        dir: TraceDir,
        /// The device's address of it.
        dma_addr: u64,
        /// Bytes.
        size: u64,
    },
    /// A free of DMA memory.
    Free {
        /// Which allocator (never [`AllocKind::SgtErr`]).
        kind: AllocKind,
        /// `dev_name()`.
        device: String,
        /// Direction.
        dir: TraceDir,
        /// The device's address of it.
        dma_addr: u64,
        /// Bytes.
        size: u64,
    },
}

/// `DMA_MAPPING_ERROR`: the DMA address a failed single mapping is traced with.
pub const DMA_MAPPING_ERROR: u64 = u64::MAX;

impl Event {
    /// The kernel's name of the event.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Map { kind, .. } => match kind {
                SingleKind::Phys => "dma_map_phys",
                SingleKind::Page => "dma_map_page",
                SingleKind::Resource => "dma_map_resource",
            },
            Event::Unmap { kind, .. } => match kind {
                SingleKind::Phys => "dma_unmap_phys",
                SingleKind::Page => "dma_unmap_page",
                SingleKind::Resource => "dma_unmap_resource",
            },
            Event::MapSg(_) => "dma_map_sg",
            Event::MapSgErr { .. } => "dma_map_sg_err",
            Event::UnmapSg { .. } => "dma_unmap_sg",
            Event::SyncSingle {
                to: SyncTo::Cpu, ..
            } => "dma_sync_single_for_cpu",
            Event::SyncSingle { .. } => "dma_sync_single_for_device",
            Event::SyncSg {
                to: SyncTo::Cpu, ..
            } => "dma_sync_sg_for_cpu",
            Event::SyncSg { .. } => "dma_sync_sg_for_device",
            Event::Alloc { kind, .. } => match kind {
                AllocKind::Coherent => "dma_alloc",
                AllocKind::Pages => "dma_alloc_pages",
                AllocKind::Sgt => "dma_alloc_sgt",
                AllocKind::SgtErr => "dma_alloc_sgt_err",
            },
            Event::Free { kind, .. } => match kind {
                AllocKind::Pages => "dma_free_pages",
                AllocKind::Sgt => "dma_free_sgt",
                AllocKind::Coherent | AllocKind::SgtErr => "dma_free",
            },
        }
    }

    /// The device (`dev_name()`).
    pub fn device(&self) -> &str {
        match self {
            Event::Map { device, .. }
            | Event::Unmap { device, .. }
            | Event::MapSg(SgMap { device, .. })
            | Event::MapSgErr { device, .. }
            | Event::UnmapSg { device, .. }
            | Event::SyncSingle { device, .. }
            | Event::SyncSg { device, .. }
            | Event::Alloc { device, .. }
            | Event::Free { device, .. } => device,
        }
    }
}
