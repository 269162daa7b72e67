//! A pool of small objects in device-coherent memory.
//!
//! Coherent memory needs no cache maintenance, so bounces made in it skip the maintenance
//! the SWIOTLB pool needs on its cached slots, and allocations made from it in atomic
//! context never wait. The pool starts small and grows: when its free space falls below a
//! threshold it asks a [`GrowthHook`](crate::growth::GrowthHook) for another chunk, before it
//! runs out, so a steady allocation rate rarely meets an empty pool. It never shrinks.
//!
//! [`objects`] is the allocator; [`bounce`] makes it a bounce backend, remembering the
//! original address of every bounce in a map keyed by DMA address.

pub mod bounce;
pub mod objects;

pub use bounce::CoherentBouncePool;
pub use objects::{ObjectPool, ObjectPoolConfig, ObjectPoolUsage, PoolError};
