//! The IOMMU path: map, unmap, sync and scatter-gather through I/O virtual addresses.
//!
//! A mapping reserves IOVA pages in the device's domain (below the device's mask capped by its bus limit, wherever
//! the memory is), maps the granules holding the buffer, and gives the device the IOVA with
//! the buffer's offset inside its first granule. Two cases bounce instead, through the
//! generic bounce machinery, and map the bounce slot
//! ([`crate::decision::iommu_bounce_reason`] says which):
//!
//! - **untrusted** devices (and force-bounce ones) whose buffer does not fill whole
//!   granules: the device can reach every byte of a mapped granule, so it gets a bounce
//!   that owns whole granules, filled with its own bytes and zeros — never a neighbour's;
//! - **non-coherent** devices under the same exact cache-line rule as the direct path
//!   (an inbound buffer whose first or last line is shared).
//!
//! Unmap removes the translations, then in strict mode invalidates them at once; in lazy
//! mode the IOVA (and any bounce slot) waits in the domain's flush queue for one batched
//! invalidation, so it is never reused while a stale IOTLB entry may translate it. The
//! queue drains when full, when its oldest entry outlives the domain's time bound (checked
//! here on every map and unmap), when the pool of a slot it parks is under pressure, and
//! when a map finds its pool full (the routing layer drains every domain's queue before it
//! fails). Unmaps of untrusted devices are always strict. The path knows nothing of the
//! direct path or of any particular bounce pool: the routing layer hands it the device's
//! backend, and gets back plain results ([`crate::mapped`]).
//!
//! Split like the router: `single` (map, unmap), `end` (ending a mapping, shared by unmap
//! and the sg path), `sync`, `sg`, and `resource` (peer device registers); this file holds
//! what they share.

mod end;
mod resource;
mod sg;
mod single;
mod sync;

use alloc::sync::Arc;

pub(crate) use resource::{map_resource, unmap_resource};
pub(crate) use sg::{map_sg, unmap_sg};
pub(crate) use single::{map, unmap};
pub(crate) use sync::{check as check_sync, is_bounced, sync, SyncTo};

use super::domain::{IommuDomain, Record};
use super::iova::IovaError;
use super::records::Reservation;
use crate::addr::PhysRange;
use crate::attrs::MapAttrs;
use crate::bounce::BounceBackend;
use crate::decision::{self, AlignmentPolicy, BounceReason};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::mapped::MapPath;
use crate::platform::IommuDomainId;

/// What the routing layer passes along for a map.
pub(crate) struct MapCtx<'a> {
    /// The device's bounce backend, if it has one.
    pub(crate) backend: Option<&'a Arc<dyn BounceBackend>>,
    /// The alignment policy for non-coherent devices.
    pub(crate) policy: AlignmentPolicy,
    /// Fill inbound bounces from the buffer (off only to demonstrate the hazard).
    pub(crate) fill_inbound: bool,
    /// Every mapping bounces, whatever the device says (the mapper's `force_bounce_all`).
    pub(crate) force_bounce: bool,
    /// The mapping's attributes ([`MapAttrs::SKIP_CPU_SYNC`]: no maintenance for a buffer
    /// mapped in place).
    pub(crate) attrs: MapAttrs,
}

impl MapCtx<'_> {
    /// Why a mapping of `range` by `dev` in `dir` bounces in a domain of `granule`, if it
    /// does: forced by the mapper, else by the IOMMU path's rule.
    pub(crate) fn bounce_reason(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        cpu_line: u64,
        granule: u64,
    ) -> Option<BounceReason> {
        if self.force_bounce {
            return Some(BounceReason::Forced);
        }
        decision::iommu_bounce_reason(dev, range, dir, self.policy, cpu_line, granule)
    }

    /// The path a buffer of domain `domain` took: in place without a `reason`, else
    /// bounced through the device's backend.
    pub(crate) fn path(&self, domain: IommuDomainId, reason: Option<BounceReason>) -> MapPath {
        match reason {
            None => MapPath::Iommu { domain },
            Some(reason) => MapPath::Bounced {
                reason,
                backend: self.backend.map_or("", |b| b.name()),
            },
        }
    }
}

/// The whole granules holding `[start, start + len)`: `(first byte, length)`.
fn granule_span(start: u64, len: u64, granule: u64) -> Option<(u64, u64)> {
    let first = start & !(granule - 1);
    let end = start.checked_add(len)?.checked_next_multiple_of(granule)?;
    Some((first, end - first))
}

fn overflow(dev: &Device, addr: u64, len: u64) -> DmaError {
    DmaError::AddressOverflow {
        device: dev.id(),
        addr,
        len,
    }
}

/// Room for the record of a new mapping of `dev` in `dom`, promised before anything is
/// taken so that a full table refuses the map with nothing to undo.
///
/// # Errors
/// [`DmaError::MappingTableFull`] when the domain records its `max_mappings` already.
fn reserve<'a>(dom: &'a IommuDomain, dev: &Device) -> Result<Reservation<'a, Record>, DmaError> {
    dom.reserve().ok_or(DmaError::MappingTableFull {
        device: dev.id(),
        capacity: dom.max_mappings(),
    })
}

/// The domain had no IOVA range for `len` bytes below the device's mask (capped by its
/// bus limit). (The allocator's
/// other errors cannot happen here: its configuration was checked when the domain was
/// created, and the path frees only what it allocated.)
fn iova_error(dev: &Device, len: u64, _: IovaError) -> DmaError {
    DmaError::IovaExhausted {
        device: dev.id(),
        len,
        mask: dev.streaming_limit(),
    }
}
