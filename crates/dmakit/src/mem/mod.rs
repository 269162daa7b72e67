//! The allocation side: pages by zone, small objects by size class, and what alignment costs.
//!
//! dmakit's mapping layer bounces DMA that shares a cache line, so kmalloc no longer has to
//! align every object to the cache line. This module is the other half of that trade, as
//! plain code testable on a host:
//! - [`buddy`] and [`zones`]: a buddy page allocator over a RAM map split into DMA, DMA32
//!   and NORMAL zones, with device-aware zone choice; it implements [`crate::PageAllocator`];
//! - [`slab`], [`size_class`], [`policy`] and [`kmalloc`]: small allocations with a
//!   configurable minimum alignment, line-aligned caches for marked DMA buffers, and the
//!   rule that picks the alignment automatically;
//! - [`global`]: kmalloc as a Rust heap ([`core::alloc::GlobalAlloc`]) over a linear map;
//! - [`slabinfo`] and [`footprint`]: `/proc/slabinfo` parsing, and the memory the kmalloc
//!   caches of a real machine take under each minimum alignment.
//!
//! Nothing here dereferences a physical address except [`global`], which is `unsafe` to
//! construct for exactly that reason.

pub mod buddy;
pub mod error;
pub mod footprint;
pub mod global;
pub mod kmalloc;
pub mod policy;
pub mod size_class;
pub mod slab;
pub mod slabinfo;
pub mod zones;

pub use buddy::{BuddyAllocator, BuddyStats, MAX_BLOCK_PAGES, MAX_ORDER};
pub use error::MemError;
pub use footprint::{
    alignment_tradeoff, bounce_pool_cost, kmalloc_footprint, kmalloc_footprints, AlignmentTradeoff,
    BouncePoolCost, KmallocFootprint, SHIPPED_SLABINFO, STUDIED_MIN_ALIGNS,
};
pub use global::KmallocHeap;
pub use kmalloc::{AllocKind, Kmalloc, ObjectInfo};
pub use policy::MinAlignPolicy;
pub use slab::{CacheStats, SlabGeometry, SlabOrderPolicy};
pub use slabinfo::{parse_slabinfo, SlabinfoError, SlabinfoErrorKind, SlabinfoRow};
pub use zones::{Zone, ZoneLayout, ZoneStats, ZonedPageAllocator};
