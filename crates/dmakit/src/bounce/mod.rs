//! Bouncing: lending a device a copy of the caller's buffer that owns whole cache lines.
//!
//! A bounce has two halves. A *backend* owns memory the device can use and hands out room
//! for one mapping at a time ([`BounceBackend`]: the SWIOTLB-style slot pool, or the
//! coherent-memory object pool). This module owns the other half, the same for every
//! backend: filling the bounce from the caller's buffer, the cache maintenance the bounce
//! memory needs, and copying back what the device wrote.
//!
//! Two rules make this safe:
//! - the bounce is filled from the original at map time and at every `sync_for_device`
//!   **whatever the direction**, so a device that writes fewer bytes than mapped copies back
//!   the caller's own latest bytes, never stale data of an earlier user of the same memory
//!   (Linux CVE-2022-0854);
//! - only the bytes of the mapping are ever copied back to the original, so bytes of other
//!   objects that share its first or last cache line are never touched by the device or by
//!   maintenance.

mod backend;
pub(crate) mod path;
pub(crate) mod record_check;
mod span;
mod transient;

pub use backend::{BounceAllocError, BounceBackend, BounceMeta, BounceRequest, PoolUsage};
pub use span::MemorySpan;
pub use transient::{TransientPool, TRANSIENT_BOUNCES};
