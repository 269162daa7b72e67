//! SWIOTLB-style bounce slot pool: where bounced mappings live.
//!
//! When a buffer cannot be given to a device as it is (beyond the device's mask, sharing a
//! cache line on a non-coherent device, or because every mapping must be bounced), the
//! routing layer copies it through memory from this pool. The pool only manages addresses:
//! it never touches the memory, copies data or maintains caches. That is the routing
//! layer's job, using the [`Bounce`] this pool returns. [`SwiotlbBounce`] is the pool as
//! the bounce path's [`BounceBackend`](crate::bounce::BounceBackend), with growth.
//!
//! # Layout
//!
//! A [`Pool`] is one or more *regions* (contiguous physical memory given by the caller, at
//! least page aligned, a whole number of segments), sorted by base. A region is cut into
//! *slots* (2 KiB by default, a power of two and a whole number of cache lines, so two
//! bounces never share a line), grouped in *segments* (128 slots by default; one segment is
//! the largest allocation), grouped in *areas* (whole segments, one lock each, by default
//! as many as CPUs rounded up to a power of two). A slot may also be *packed*: cut into
//! line units (the largest cache line, or a 64th of a slot if that is larger) shared by
//! several small bounces.
//!
//! # Algorithms
//!
//! - **Slots**: best fit over the free runs of each area (see `slots.rs`): a request takes
//!   the shortest free run that holds it, found among size classes in O(log2
//!   slots-per-segment) bit operations and a bounded number of run checks, regardless of
//!   pool size or occupancy, so long runs stay whole for long requests; runs never cross a
//!   segment, and a freed run merges with its free neighbours in O(1). Only when that
//!   bounded search misses are all free runs searched, before the area refuses. In front of
//!   it,
//!   each area caches a few freed small runs per size (see `area.rs`) and reuses them,
//!   O(1), for requests of the same size whose placement they satisfy; the cache is flushed
//!   back into the free runs before an area refuses a request, so it never causes an
//!   exhaustion.
//! - **Packing**: a request below a page whose `min_align_mask` window fits in a slot, in
//!   fewer lines than a slot, takes whole lines of a packed slot instead of a whole slot
//!   (see `area.rs`): the front of the area's list of packed slots with a free line (the
//!   one most recently freed into), a few more of the list, a fresh slot, in that order;
//!   a line bitmap per slot finds an aligned run of free lines in a few word operations.
//!   So a 2-byte transfer holds one line, not 2 KiB, and small bounces stop starving large
//!   ones. The metadata stays bounded: a packed allocation needs a record, and an area has
//!   one per two slots; with none free, the request takes whole slots as any other.
//! - **Placement**: the bounce address keeps `orig & min_align_mask` and the original's
//!   offset within the cache line (so copies in and out do not alias; below a page only
//!   where that needs no further slot), and, for mappings of a page or more, starts on a
//!   page boundary plus those bits (see `request.rs`). The
//!   allocation holds its run from the aligned boundary before the bounce address: the
//!   lead-in slots belong to it, so nothing else can land in the aligned window (an IOMMU
//!   granule, for the IOMMU path's untrusted bounces) in front of its bytes.
//! - **Reach**: `Pool::alloc_below` keeps the whole run at or below a device's mask,
//!   skipping regions and areas above it; it tells "reachable memory full"
//!   ([`SwiotlbError::Exhausted`]) from "no memory within reach" ([`SwiotlbError::Unreachable`]).
//! - **Lookup**: the owning region and area from a lock-free directory of region bounds,
//!   then that area's stripe of the region table, a binary search and arithmetic to the
//!   slot; each area keeps the caller's metadata of its live allocations at the slot of
//!   the bounce address (for a packed slot, in a short chain of records, one per packed
//!   allocation in it), so `get` and `free` take O(log regions) and one lock (the stripe,
//!   which is the area's lock too), and `region_of` usually no lock at all. An unmap with
//!   nothing to copy back checks and frees under that one lock (`Pool::free_if`); one that
//!   must copy back before the slots are free uses `Pool::end`: one lookup claims the
//!   allocation (hidden from every other lookup, still holding its slots), the copy runs
//!   with no lock held, and a second lock of the same stripe frees it, or makes it live
//!   again when the copy failed.
//! - **Concurrency**: no pool-wide lock or shared written cache line on the hot path. The
//!   region table is a striped reader lock with one stripe per area index, which is also
//!   the lock of the areas of that index (see `region_table.rs`); each area has its own
//!   cache lines; usage is counted per area and
//!   summed by snapshots, and the high-water mark is kept exact through per-area
//!   allowances (see `stats.rs`).
//!
//! # Invariants
//!
//! Two live allocations never share a slot, lead-ins included, except packed ones, which
//! share a slot but never a line unit (so never a cache line); free blocks, cached runs,
//! packed slots and live allocations partition every area; a failed call changes nothing
//! observable (an allocation that fails may have returned cached runs and the spare
//! packed slot to the slot allocator, which are free either way); an allocation given back
//! with `Pool::abandon` leaves the statistics, high-water mark included, as they were
//! before it.

mod area;
mod backend;
mod config;
mod error;
mod pool;
mod region;
mod region_table;
mod request;
mod slots;
mod stats;
mod stripe_key;
mod sync;

pub use backend::SwiotlbBounce;
pub use config::{ConfigError, PoolConfig, PoolConfigBuilder};
pub use error::{RegionError, SwiotlbError};
pub use pool::Pool;
pub use request::{Bounce, SlotRequest};
pub use stats::{AreaStats, PoolStats};

#[cfg(all(test, not(loom)))]
mod tests;
