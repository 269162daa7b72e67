//! A pool of small objects in device-coherent memory.
//!
//! Coherent memory needs no cache maintenance, so bounces made in it skip the maintenance
//! the SWIOTLB pool needs on its cached slots, and allocations made from it in atomic
//! context never wait. The pool starts small and grows: when what it can still hand out falls
//! below a threshold (it could no longer serve one object of the threshold size, or its free
//! bytes are below it) it asks a [`GrowthHook`](crate::growth::GrowthHook) for another
//! chunk, before it runs out, so a steady allocation rate rarely meets an empty pool. It
//! never shrinks.
//!
//! [`ObjectPool`] is the allocator, a buddy allocator: freed objects merge with their free
//! buddies, so a pool whose objects are all freed serves any request up to its largest
//! block, and two live objects never overlap. [`CoherentBouncePool`] makes it a bounce backend,
//! remembering the original address of every bounce in a map keyed by DMA address; the
//! same allocator serves the atomic pool of
//! [`DmaAllocator`](crate::dma_alloc::DmaAllocator).

mod bounce;
mod objects;

pub use bounce::CoherentBouncePool;
pub use objects::{ObjectPool, ObjectPoolConfig, ObjectPoolError, ObjectPoolUsage};
