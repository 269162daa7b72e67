//! What a bounce memory backend provides.

use core::fmt;

use alloc::sync::Arc;

use super::MemorySpan;
use crate::addr::PhysAddr;
use crate::decision::BounceReason;
use crate::device::DeviceId;
use crate::direction::Direction;
use crate::error::DmaError;

/// A request for room for one bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceRequest {
    /// Bytes to bounce (1 or more).
    pub len: u64,
    /// The caller's buffer. The bounce address must equal it under `min_align_mask`.
    pub orig: PhysAddr,
    /// Low address bits to preserve (`2^n - 1`, possibly 0).
    pub min_align_mask: u64,
    /// The last byte of the bounce must be at or below this physical address (the end of
    /// what the device's mask and bus limit reach through its bus windows).
    pub max_addr: u64,
    /// The CPU asking, as a hint for per-CPU structures.
    pub cpu: usize,
}

/// What a backend remembers about a live bounce, returned when it is looked up or freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceMeta {
    /// The device the bounce was made for.
    pub device: DeviceId,
    /// The caller's buffer.
    pub orig: PhysAddr,
    /// Length of the mapping in bytes.
    pub len: u64,
    /// Direction of the mapping.
    pub dir: Direction,
    /// Why it was bounced.
    pub reason: BounceReason,
}

/// Why a backend could not provide room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceAllocError {
    /// No free room of that size right now.
    Full {
        /// Bytes in use.
        used: u64,
        /// Total bytes.
        total: u64,
    },
    /// Larger than the largest bounce the backend supports.
    TooLarge {
        /// The largest supported bounce.
        max: u64,
    },
    /// None of the backend's memory lies below the requested address limit, and the
    /// backend cannot obtain any that would (no growth).
    Unreachable,
    /// The backend cannot honour the request's `min_align_mask` at all (a SWIOTLB pool
    /// whose segments are not larger than the `2^n` boundary the mask asks for): no length
    /// could be bounced for this device.
    AlignUnsupported {
        /// The mask asked for.
        min_align_mask: u64,
        /// The largest mask the backend honours.
        max_mask: u64,
    },
}

impl fmt::Display for BounceAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            BounceAllocError::Full { used, total } => {
                write!(f, "bounce backend full: {used} of {total} bytes in use")
            }
            BounceAllocError::TooLarge { max } => {
                write!(f, "bounce larger than the backend's largest, {max} bytes")
            }
            BounceAllocError::Unreachable => {
                f.write_str("no bounce memory below the device's address limit")
            }
            BounceAllocError::AlignUnsupported {
                min_align_mask,
                max_mask,
            } => write!(
                f,
                "min_align_mask {min_align_mask:#x} is above the largest the backend honours, \
                 {max_mask:#x}"
            ),
        }
    }
}

impl core::error::Error for BounceAllocError {}

/// A snapshot of a backend's occupancy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Bytes of memory the backend owns.
    pub total: u64,
    /// Bytes currently reserved by live bounces (at the backend's granularity).
    pub used: u64,
    /// The largest `used` seen since creation.
    pub high_water: u64,
    /// Live bounces.
    pub live: u64,
}

/// Memory that bounces live in.
///
/// Contract: `alloc` returns an address `a` such that `[a, a + len)` lies in memory the
/// backend owns, below `max_addr`, shares no cache line with any other live bounce,
/// satisfies `a & min_align_mask == orig & min_align_mask`, and is page aligned when
/// `len >= PAGE_SIZE` and `min_align_mask` does not demand an offset. The lead-in
/// `[a - (orig & min_align_mask), a)` belongs to the bounce too (no other live bounce uses
/// it), so a bounce asked with a mask of `2^n - 1` owns its memory from a `2^n` boundary
/// (the IOMMU path relies on this to give untrusted devices whole granules). It stays
/// reserved, with its [`BounceMeta`], until `free(a)`, `abandon(a)` or an `end(a, ..)`
/// that succeeds releases it whole, lead-in included. On error nothing changed, usage and
/// high-water mark included. Implementations are thread-safe and must not block: they may be called in
/// atomic context.
pub trait BounceBackend: Send + Sync {
    /// A short name for reports.
    fn name(&self) -> &'static str;
    /// Whether CPU accesses to this memory are cached (non-coherent devices then need
    /// maintenance on the bounce).
    fn is_cached(&self) -> bool;
    /// Reserves room for one bounce.
    ///
    /// # Errors
    /// [`BounceAllocError`] when there is no room; nothing changed.
    fn alloc(&self, req: &BounceRequest, meta: BounceMeta) -> Result<PhysAddr, BounceAllocError>;
    /// The metadata of the live bounce starting at `addr`, if any.
    fn get(&self, addr: PhysAddr) -> Option<BounceMeta>;
    /// Releases the live bounce starting at `addr`; `None` (and nothing changed) if there is
    /// none.
    fn free(&self, addr: PhysAddr) -> Option<BounceMeta>;
    /// Ends the live bounce starting at `addr`: runs `end` on its metadata, with no lock of
    /// the backend held (it may copy memory), and releases the bounce as
    /// [`BounceBackend::free`] does when `end` returns `Ok`. Returns the metadata and
    /// `end`'s value; `Some(Err(e))` with `end`'s error, the bounce then still live and
    /// unchanged; `None` if there is no live bounce at `addr` (`end` then did not run, or
    /// the bounce was released by another call while it ran).
    ///
    /// The default looks the bounce up with [`BounceBackend::get`] and releases it with
    /// [`BounceBackend::free`]. A backend that can reserve the bounce for this call
    /// overrides it to look it up once; while `end` runs, `get`, `free` and other ends of
    /// `addr` may then find no live bounce.
    fn end(
        &self,
        addr: PhysAddr,
        end: &mut dyn FnMut(&BounceMeta) -> Result<u64, DmaError>,
    ) -> Option<Result<(BounceMeta, u64), DmaError>> {
        let meta = self.get(addr)?;
        match end(&meta) {
            Ok(value) => self.free(addr).map(|meta| Ok((meta, value))),
            Err(e) => Some(Err(e)),
        }
    }
    /// Releases the live bounce starting at `addr`, as [`BounceBackend::free`] does, if
    /// `accept` says yes to its metadata; for an end with nothing to copy back. `accept`
    /// must be short and must not call into the backend: a backend may run it under its
    /// own lock. Returns the metadata: `Some(Ok(meta))` released, `Some(Err(meta))`
    /// refused by `accept` (the bounce still live and unchanged); `None` (nothing changed)
    /// if there is no live bounce at `addr`.
    ///
    /// The default looks the bounce up with [`BounceBackend::get`] and releases it with
    /// [`BounceBackend::free`]. A backend that can decide and release under one lock
    /// overrides it to do so.
    fn take(
        &self,
        addr: PhysAddr,
        accept: &mut dyn FnMut(&BounceMeta) -> bool,
    ) -> Option<Result<BounceMeta, BounceMeta>> {
        let meta = self.get(addr)?;
        if !accept(&meta) {
            return Some(Err(meta));
        }
        self.free(addr).map(Ok)
    }
    /// Releases the live bounce starting at `addr` that [`BounceBackend::alloc`] reserved
    /// for an operation that then failed (a copy fault) before any device could use it.
    /// Guarantee: with no other call in between, [`BounceBackend::usage`] is then exactly
    /// what it was before that `alloc` — used, live and high-water — as a failed operation
    /// must leave every pool; under concurrency the high-water mark stays at or above every
    /// usage reached by bounces that were kept. `None` (and nothing changed) if there is no
    /// such bounce.
    ///
    /// The default calls [`BounceBackend::free`], which is right only for a backend whose
    /// high-water mark no single bounce can raise; every backend of this crate overrides it.
    fn abandon(&self, addr: PhysAddr) -> Option<BounceMeta> {
        self.free(addr)
    }
    /// Whether `addr` lies in memory this backend owns (live or not).
    fn contains(&self, addr: PhysAddr) -> bool;
    /// A span covering all memory the backend has ever owned (every `addr` for which
    /// [`BounceBackend::contains`] is true lies inside it), kept up to date by the backend.
    /// Routers test it first and skip `contains` for addresses outside. `None` (the
    /// default): no span is kept and every address is looked up.
    fn memory_span(&self) -> Option<Arc<MemorySpan>> {
        None
    }
    /// Current occupancy.
    fn usage(&self) -> PoolUsage;
    /// The longest bounce a request with `min_align_mask` could ever get, however much room
    /// frees up (without growth of its segments); `None` (the default) when the backend
    /// cannot say. Deferred mappings use it to refuse at once what no free could satisfy.
    fn max_bounce(&self, _min_align_mask: u64) -> Option<u64> {
        None
    }
    /// Whether the backend asked for more memory and is still waiting for it.
    fn growth_pending(&self) -> bool {
        false
    }
    /// How many times the backend grew in answer to its own request.
    fn growth_events(&self) -> u64 {
        0
    }
}
