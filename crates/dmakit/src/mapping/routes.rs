//! The routes a mapper sends mappings down, grouped: its bounce pools (global and
//! restricted to one device) and its IOMMU layer, with the lookups the router makes in them.

use alloc::sync::Arc;

use crate::addr::PhysAddr;
use crate::bounce::{BounceBackend, MemorySpan, TransientPool};
use crate::device::{BouncePool, Device};
use crate::error::DmaError;
use crate::iommu::{IommuDma, IommuDomain};

use super::restricted::RestrictedPools;

/// A bounce backend as the router keeps it: with its memory span, when it has one.
pub(super) struct Registered {
    pub(super) backend: Arc<dyn BounceBackend>,
    span: Option<Arc<MemorySpan>>,
}

impl Registered {
    pub(super) fn new(backend: Arc<dyn BounceBackend>) -> Self {
        let span = backend.memory_span();
        Self { backend, span }
    }

    /// False when `a` is certainly not in the backend's memory; true when it may be.
    #[inline]
    fn may_hold(&self, a: PhysAddr) -> bool {
        self.span.as_ref().is_none_or(|s| s.may_contain(a.as_u64()))
    }

    /// Whether `a` lies in the backend's memory.
    #[inline]
    pub(super) fn holds(&self, a: PhysAddr) -> bool {
        self.may_hold(a) && self.backend.contains(a)
    }
}

/// The mapper's bounce pools and IOMMU layer (each optional).
pub(super) struct Routes {
    pub(super) swiotlb: Option<Registered>,
    /// Pools that serve one device each, and no other.
    pub(super) restricted: RestrictedPools<Registered>,
    pub(super) coherent: Option<Registered>,
    pub(super) transient: Option<TransientPool>,
    pub(super) iommu: Option<Arc<IommuDma>>,
}

impl Routes {
    /// No pools, no IOMMU.
    pub(super) const fn new() -> Self {
        Self {
            swiotlb: None,
            restricted: RestrictedPools::new(),
            coherent: None,
            transient: None,
            iommu: None,
        }
    }

    /// The pool bounces of `dev` go to, if there is one.
    pub(super) fn bounce_backend(&self, dev: &Device) -> Option<&Arc<dyn BounceBackend>> {
        match dev.bounce_pool() {
            BouncePool::Swiotlb => self.swiotlb.as_ref().map(|r| &r.backend),
            BouncePool::Coherent => self.coherent.as_ref().map(|r| &r.backend),
        }
    }

    /// Every bounce backend: the registered pools, the restricted ones, then the transient
    /// one.
    pub(super) fn backends(&self) -> impl Iterator<Item = &dyn BounceBackend> {
        [&self.swiotlb, &self.coherent]
            .into_iter()
            .flatten()
            .chain(self.restricted.iter())
            .map(|r| r.backend.as_ref())
            .chain(self.transient.as_ref().map(|t| t as &dyn BounceBackend))
    }

    /// The IOMMU domain `dev` is mapped through, if any.
    ///
    /// # Errors
    /// [`DmaError::Detached`] when `dev` was detached from its domain: the IOMMU blocks it,
    /// so it is not mapped at all (never directly).
    #[inline]
    pub(super) fn iommu_domain(&self, dev: &Device) -> Result<Option<Arc<IommuDomain>>, DmaError> {
        match &self.iommu {
            Some(iommu) => iommu.route_of(dev.id()),
            None => Ok(None),
        }
    }

    /// The global backend whose memory holds `a` (the physical address a device without an
    /// IOMMU reaches at its DMA address, [`crate::translation::phys_of_bus`]), if any;
    /// restricted pools are never searched here (only their own device's lookups find
    /// them). Direct mappings, whose buffers lie outside every backend's span, cost no
    /// lookup.
    #[inline]
    pub(super) fn backend_owning(&self, a: PhysAddr) -> Option<&dyn BounceBackend> {
        if let Some(r) = held(&self.swiotlb, a).or_else(|| held(&self.coherent, a)) {
            return Some(r.backend.as_ref());
        }
        self.transient
            .as_ref()
            .filter(|t| t.span().may_contain(a.as_u64()) && t.contains(a))
            .map(|t| t as &dyn BounceBackend)
    }
}

/// `r` when it is a backend whose memory holds `a`.
#[inline(always)]
fn held(r: &Option<Registered>, a: PhysAddr) -> Option<&Registered> {
    r.as_ref().filter(|r| r.holds(a))
}
