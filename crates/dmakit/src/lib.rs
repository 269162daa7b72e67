//! dmakit: a DMA mapping layer that keeps small allocations small and DMA safe.
//!
//! Devices that do DMA without snooping CPU caches corrupt memory when a buffer shares a
//! cache line with other data. Instead of aligning every allocation to the cache line,
//! dmakit looks at the exact address range of every mapping and bounces the ones that share
//! a line, through memory that owns whole lines.
//!
//! The crate is `no_std` + `alloc`. It reaches hardware only through the traits in
//! [`platform`]; implement them for your machine and drive [`DmaMapper`].
//!
//! # Bouncing one buffer
//!
//! [`prelude`] holds the names this needs. A platform gives the mapper cache maintenance,
//! CPU copies and the CPU count; here a tiny one over a byte array whose caches are
//! coherent, so maintenance does nothing:
//!
//! ```
//! use dmakit::prelude::*;
//! use std::sync::Mutex;
//!
//! struct Ram(Mutex<Vec<u8>>);
//!
//! impl Ram {
//!     fn bytes(&self, at: PhysAddr, len: u64) -> Result<core::ops::Range<usize>, MemoryFault> {
//!         let fault = MemoryFault { addr: at, len };
//!         let end = at.checked_add(len).ok_or(fault)?.as_u64();
//!         let size = self.0.lock().unwrap().len() as u64;
//!         if end > size {
//!             return Err(fault);
//!         }
//!         Ok(at.as_u64() as usize..end as usize)
//!     }
//! }
//!
//! impl CacheMaintenance for Ram {
//!     fn cache_line_size(&self) -> u64 {
//!         64
//!     }
//!     fn clean(&self, _: PhysRange) {}
//!     fn invalidate(&self, _: PhysRange) {}
//!     fn clean_invalidate(&self, _: PhysRange) {}
//! }
//!
//! // SAFETY: `bytes` bounds every access to the array; anything outside it is a fault.
//! unsafe impl CpuMemory for Ram {
//!     fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
//!         let (d, s) = (self.bytes(dst, len)?, self.bytes(src, len)?);
//!         self.0.lock().unwrap().copy_within(s, d.start);
//!         Ok(())
//!     }
//!     fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
//!         let d = self.bytes(dst, len)?;
//!         self.0.lock().unwrap()[d].fill(byte);
//!         Ok(())
//!     }
//! }
//!
//! impl CpuTopology for Ram {
//!     fn cpu_count(&self) -> usize {
//!         1
//!     }
//!     fn current_cpu(&self) -> usize {
//!         0
//!     }
//! }
//!
//! /// Receives into the 100 bytes at `buf`, which share their cache lines with other data:
//! /// the device writes a bounce slot in the pool at `pool`, and unmap copies it back.
//! ///
//! /// # Safety
//! /// `buf` is 100 bytes of the platform's memory that the caller owns and leaves alone
//! /// until this returns.
//! unsafe fn receive<P: Platform>(
//!     platform: P,
//!     pool: PhysAddr,
//!     buf: PhysAddr,
//! ) -> Result<DmaAddr, Box<dyn core::error::Error>> {
//!     let mapper = DmaMapper::builder(platform).swiotlb(pool, 256 * 1024)?.build();
//!     let nic = Device::builder(DeviceId(1), "nic").build()?;
//!     // SAFETY: the caller lends `buf` to us until we return; we unmap before that.
//!     let dma = unsafe { mapper.map(&nic, buf, 100, Direction::FromDevice)? };
//!     // ... the device writes up to 100 bytes at `dma` ...
//!     // SAFETY: `dma` is the live mapping made above, and the device is done with it.
//!     unsafe { mapper.unmap(&nic, dma, 100, Direction::FromDevice)? };
//!     Ok(dma)
//! }
//!
//! let ram = Ram(Mutex::new(vec![0; 1 << 20]));
//! let (pool, buf) = (PhysAddr::new(0), PhysAddr::new(512 * 1024 + 8));
//! // SAFETY: nothing else uses the array while `receive` runs.
//! let dma = unsafe { receive(&ram, pool, buf) }.unwrap();
//! assert!(dma.as_u64() < 256 * 1024, "bounced through the pool");
//! ```
//!
//! # Atomic context
//!
//! A kernel maps from interrupt handlers and with spin locks held, where the heap may not
//! be used and nothing may wait. What may run there takes only the core's interrupt-masking
//! locks and allocates nothing; what may not says "Allocates: call outside atomic
//! context." in its docs.
//!
//! - **Callable from an interrupt handler**: the mapper's map, unmap and sync calls
//!   ([`DmaMapper::map`], `map_attrs`, `map_at_site`, `map_sg_into`, `map_resource`,
//!   `map_or_defer` and their unmaps, `sync_*`, `sync_sg_*`, and the same through
//!   [`DmaOps::map_from`] / `unmap_from`) on the direct, SWIOTLB, coherent-pool, transient
//!   and IOMMU paths, with statistics and with the debug checker, and
//!   [`DmaMapper::flush_iommu_queues`]; underneath them IOVA
//!   allocation and free ([`iommu::IovaAllocator`]), including sizes above the cached
//!   orders, a fragmented space and exhaustion; [`DmaAllocator::alloc_coherent`] with
//!   [`dma_alloc::AllocContext::Atomic`] (the atomic pool; it requests growth, never
//!   waits for it). Scatter-gather lists behind an IOMMU included: `map_sg_into` writes
//!   the caller's array, and a list's pieces take room its domain was created with
//!   ([`iommu::DomainConfig::max_sg_pieces`]). A bound reached (mapping table, piece
//!   table, IOVA space, deferred queue, pool) is an error, never an allocation.
//! - **Not callable there** (they allocate or wait): building a mapper
//!   ([`DmaMapper::builder`]), [`iommu::IommuDma::new`], [`iommu::IommuDma::create_domain`]
//!   and [`iommu::IommuDma::attach`] (a domain gets all its room when it is created),
//!   adding or growing pool memory (SWIOTLB `add_region`, the coherent pool's `add_chunk`,
//!   [`DmaAllocator::grow_atomic_pool`], the growth worker), and the [`DmaAllocator`]
//!   page allocations that may wait (`alloc_pages`, `alloc_sg`, `alloc_noncontiguous`,
//!   `alloc_coherent` with [`dma_alloc::AllocContext::MayBlock`]).
//! - **Allocates on a map path by design**: `map_sg`, the list it returns (on every path;
//!   `map_sg_into` is its atomic form). The transient pool takes its pages from the
//!   platform's [`PageAllocator`] at map time, so that allocator must not allocate
//!   either.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod addr;
mod attrs;
pub mod bounce;
pub mod bus_ranges;
pub mod coherent_pool;
pub mod debug;
mod decision;
mod device;
mod direct;
mod direction;
pub mod dma_alloc;
mod dma_ops;
mod error;
mod fixed_table;
pub mod growth;
pub mod iommu;
pub mod linear_map;
mod maintenance;
mod mapped;
mod mapping;
pub mod platform;
pub mod prelude;
pub mod reintroduce;
pub mod size_class;
pub mod stats;
pub mod swiotlb;
mod sync;
mod translation;
pub mod typed;

pub use addr::{DmaAddr, PhysAddr, PhysRange};
pub use attrs::MapAttrs;
pub use decision::{AlignmentPolicy, BounceReason};
pub use device::{BouncePool, Device, DeviceBuilder, DeviceError, DeviceId};
pub use direction::Direction;
pub use dma_alloc::{AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig};
pub use dma_ops::{DmaOps, DmaStack};
pub use error::DmaError;
pub use iommu::{DomainConfig, FlushMode, IommuDma};
#[cfg(feature = "hazard-controls")]
pub use mapping::HazardControls;
pub use mapping::{
    DeferredCompletion, DmaMapper, DmaMapperBuilder, DmaSegment, MapPath, MapStatus, SgEntry,
};
pub use platform::{
    CacheMaintenance, Clock, CoherentPageAllocator, CpuMemory, CpuTopology, MemoryFault,
    PageAllocator, Platform, PAGE_SIZE,
};
pub use platform::{CoherentRemap, VirtAddr, VirtualMapping};
pub use platform::{HostSharing, MemorySharing};
pub use platform::{Iommu, IommuDomainId, IommuError, IommuPerm};
