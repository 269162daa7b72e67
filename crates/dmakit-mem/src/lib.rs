//! dmakit-mem: the allocation side of dmakit — pages by zone, small objects by size class.
//!
//! dmakit's mapping layer bounces DMA that shares a cache line, so kmalloc no longer has to
//! align every object to the cache line. This crate is the other half of that trade, as
//! plain `no_std` + `alloc` code testable on a host, kept apart from the mapping core, which
//! needs only the size-class rule ([`dmakit::size_class`]) and a page allocator
//! ([`dmakit::dma_alloc::ZonedPages`]):
//! - [`buddy`] and [`zones`]: a buddy page allocator over a RAM map split into DMA, DMA32
//!   and NORMAL zones, with device-aware zone choice; it implements [`dmakit::PageAllocator`]
//!   and [`dmakit::dma_alloc::ZonedPages`];
//! - [`slab`], [`class_label`], [`policy`] and [`kmalloc`]: small allocations with a
//!   configurable minimum alignment, line-aligned caches for marked DMA buffers, and the
//!   rule that picks the alignment automatically;
//! - [`global`]: kmalloc as a Rust heap ([`core::alloc::GlobalAlloc`]) over a linear map.
//!
//! Nothing here dereferences a physical address except [`global`], which is `unsafe` to
//! construct for exactly that reason.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod auto_align;
pub mod buddy;
pub mod class_label;
pub mod error;
pub mod global;
pub mod kmalloc;
pub mod policy;
pub mod slab;
pub mod zones;

pub use auto_align::AutoMinAlign;
pub use buddy::{BuddyAllocator, BuddyStats, MAX_BLOCK_PAGES, MAX_ORDER};
pub use error::MemError;
pub use global::KmallocHeap;
pub use kmalloc::{AllocKind, Kmalloc, ObjectInfo};
pub use policy::MinAlignPolicy;
pub use slab::{CacheStats, SlabGeometry, SlabOrderPolicy};
pub use zones::{Zone, ZoneLayout, ZoneStats, ZonedPageAllocator};
