//! dmakit: a DMA mapping layer that keeps small allocations small and DMA safe.
//!
//! Devices that do DMA without snooping CPU caches corrupt memory when a buffer shares a
//! cache line with other data. Instead of aligning every allocation to the cache line,
//! dmakit looks at the exact address range of every mapping and bounces the ones that share
//! a line, through memory that owns whole lines.
//!
//! The crate is `no_std` + `alloc`. It reaches hardware only through the traits in
//! [`platform`]; implement them for your machine and drive [`DmaMapper`].

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod addr;
pub mod bounce;
pub mod coherent_pool;
pub mod debug;
pub mod decision;
pub mod device;
mod direct;
pub mod direction;
pub mod dma_alloc;
pub mod error;
pub mod growth;
#[cfg(feature = "std")]
pub mod growth_worker;
pub mod iommu;
mod maintenance;
mod mapped;
pub mod mapping;
pub mod mem;
pub mod platform;
pub mod reintroduce;
pub mod stats;
pub mod swiotlb;
pub mod swiotlb_backend;
pub mod typed;

pub use addr::{DmaAddr, PhysAddr, PhysRange};
pub use decision::{AlignmentPolicy, BounceReason};
pub use device::{BouncePool, Device, DeviceBuilder, DeviceError, DeviceId};
pub use direction::Direction;
pub use dma_alloc::{AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig};
pub use error::DmaError;
pub use iommu::{DomainConfig, FlushMode, IommuDma};
pub use mapping::{
    DeferredCompletion, DmaMapper, DmaSegment, HazardControls, MapPath, MapStatus, SgEntry,
};
pub use platform::{
    CacheMaintenance, Clock, CoherentPageAllocator, CpuMemory, CpuTopology, MemoryFault,
    PageAllocator, Platform, PAGE_SIZE,
};
pub use platform::{CoherentRemap, VirtAddr, VirtualMapping};
pub use platform::{Iommu, IommuDomainId, IommuError, IommuPerm};
