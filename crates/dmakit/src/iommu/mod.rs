//! The IOMMU path: devices that see I/O virtual addresses.
//!
//! Behind an IOMMU a device emits IOVAs that page tables translate, so scattered pages can
//! look contiguous, a 32-bit device reaches RAM above 4 GiB without a bounce, and a device
//! cannot reach memory it was not given. This module is the mapping layer's side of that:
//!
//! - `iova`: the per-domain IOVA allocator (size aligned, mask bounded, with per-CPU
//!   range caches so the common case does not touch the tree);
//! - `domain`: a domain's bookkeeping (live mappings, strict or lazy invalidation);
//! - `records` and `sg_pieces`: the room for its mapping records and for the pieces of its
//!   scatter-gather mappings, allocated with the domain;
//! - `flush_queue`: lazy mode's batch of IOVAs waiting for one IOTLB invalidation;
//! - `path`: map, unmap, sync and scatter-gather through IOVAs, bouncing where a
//!   non-coherent device would share a cache line or an untrusted one would see a
//!   neighbour's bytes in its IOMMU page;
//! - `alloc_space`: [`IommuDma`] as the DMA allocators' [`DeviceAddressSpace`]
//!   (scattered pages made contiguous in device space for `alloc_noncontiguous`).
//!
//! [`DeviceAddressSpace`]: crate::dma_alloc::DeviceAddressSpace
//!
//! The hardware is reached through the [`Iommu`] platform trait. [`IommuDma`] owns the
//! domains and says which device uses which; give it to
//! [`DmaMapperBuilder::iommu`](crate::DmaMapperBuilder::iommu), and every device attached to a
//! domain is mapped through it, the others as before.

mod alloc_space;
mod depot;
mod domain;
mod flush_queue;
mod free_ranges;
mod iova;
pub(crate) mod path;
mod records;
mod sg_pieces;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::fmt;
use core::ops::Bound;

use crate::sync::{Mutex, RwLock};

pub use domain::{DomainConfig, DomainStats, FlushMode, IommuDomain};
pub use iova::{IovaAllocator, IovaConfig, IovaError, IovaRange, IovaStats};

use crate::device::{Device, DeviceId};
use crate::error::DmaError;
use crate::platform::{Clock, Iommu, IommuDomainId, IommuError, PAGE_SIZE};

/// Why a domain or attachment operation failed. Nothing changed then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IommuDmaError {
    /// The IOMMU refused the operation.
    Platform(IommuError),
    /// The domain's IOVA space could not be set up (an empty window).
    Iova(IovaError),
    /// The IOMMU's granule is not a power of two of at least [`PAGE_SIZE`] and at most
    /// 64 KiB.
    BadGranule(u64),
    /// The device is already attached to a domain (detach it first).
    AlreadyAttached(DeviceId),
    /// The device is not attached to any domain.
    NotAttached(DeviceId),
    /// The device, or the domain, still has live mappings.
    Busy,
    /// A lazy domain with [`DomainConfig::flush_timeout_ns`] needs a clock
    /// ([`IommuDma::with_clock`]) to keep its time bound.
    NoClock,
    /// An untrusted device cannot be attached to an identity domain: it would reach all
    /// memory untranslated ([`DomainConfig::identity`]).
    UntrustedIdentity(DeviceId),
}

impl fmt::Display for IommuDmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IommuDmaError::Platform(e) => write!(f, "IOMMU: {e}"),
            IommuDmaError::Iova(e) => write!(f, "IOVA space: {e}"),
            IommuDmaError::BadGranule(g) => write!(
                f,
                "IOMMU granule {g:#x} must be a power of two from 4 KiB to 64 KiB"
            ),
            IommuDmaError::AlreadyAttached(d) => write!(f, "{d} is already attached to a domain"),
            IommuDmaError::NotAttached(d) => write!(f, "{d} is not attached to a domain"),
            IommuDmaError::Busy => f.write_str("live mappings remain"),
            IommuDmaError::NoClock => {
                f.write_str("a flush timeout needs a clock (IommuDma::with_clock)")
            }
            IommuDmaError::UntrustedIdentity(d) => write!(
                f,
                "{d} is untrusted and cannot be attached to an identity domain; use a translating one"
            ),
        }
    }
}

impl core::error::Error for IommuDmaError {}

impl From<IommuError> for IommuDmaError {
    fn from(e: IommuError) -> Self {
        IommuDmaError::Platform(e)
    }
}

/// The domains of one IOMMU and the devices attached to them.
///
/// A device is mapped through the IOMMU exactly while it is attached here; attaching also
/// tells the hardware ([`Iommu::attach_device`]). Several devices may share a domain (one
/// address space, like a Linux IOMMU group); each device's mappings stay its own.
///
/// A device that was attached and then [detached](IommuDma::detach) sits behind the IOMMU
/// still, which now blocks it: the mapper refuses to map, unmap or sync for it
/// ([`crate::DmaError::Detached`]) and the DMA allocators refuse to allocate for it
/// ([`crate::dma_alloc::DeviceSpaceError::Detached`]) until it is attached again. It is
/// never mapped directly: a physical address would not reach memory through the blocking
/// IOMMU, and an old IOVA is never taken for a physical address.
pub struct IommuDma {
    iommu: Arc<dyn Iommu + Send + Sync>,
    cpus: usize,
    clock: Option<Arc<dyn Clock + Send + Sync>>,
    domains: Mutex<BTreeMap<IommuDomainId, Arc<IommuDomain>>>,
    /// Every device ever attached: its domain, or `None` once detached (blocked). Map,
    /// unmap and sync look their device up under the shared read side; only attach and
    /// detach write.
    devices: RwLock<BTreeMap<DeviceId, Option<Arc<IommuDomain>>>>,
}

impl fmt::Debug for IommuDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IommuDma")
            .field("granule", &self.iommu.granule())
            .field("domains", &self.domains.lock().len())
            .field("devices", &self.devices.read().len())
            .finish()
    }
}

impl IommuDma {
    /// The mapping layer's view of `iommu`, with range caches for `cpus` CPUs.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`IommuDmaError::BadGranule`] when the IOMMU's granule is unusable.
    pub fn new(iommu: Arc<dyn Iommu + Send + Sync>, cpus: usize) -> Result<Self, IommuDmaError> {
        let g = iommu.granule();
        if !g.is_power_of_two() || !(PAGE_SIZE..=64 * 1024).contains(&g) {
            return Err(IommuDmaError::BadGranule(g));
        }
        Ok(Self {
            iommu,
            cpus: cpus.max(1),
            clock: None,
            domains: Mutex::new(BTreeMap::new()),
            devices: RwLock::new(BTreeMap::new()),
        })
    }

    /// Domains created from now on measure their flush queue's time bound
    /// ([`DomainConfig::flush_timeout_ns`]) with `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock + Send + Sync>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Creates a domain with `cfg` (an identity one with [`DomainConfig::identity`]).
    ///
    /// Allocates: call outside atomic context. (The domain's records, range caches and
    /// free-range table get all their room here.)
    ///
    /// # Errors
    /// [`IommuDmaError::Platform`] when the IOMMU cannot create one (for an identity
    /// domain [`IommuError::IdentityUnsupported`] when it has none);
    /// [`IommuDmaError::Iova`] when the IOVA window is empty (the hardware domain is
    /// destroyed again); [`IommuDmaError::NoClock`] for a lazy domain with a flush timeout
    /// but no clock (nothing created).
    pub fn create_domain(&self, cfg: DomainConfig) -> Result<IommuDomainId, IommuDmaError> {
        let timed = matches!(cfg.mode, FlushMode::Lazy { .. }) && cfg.flush_timeout_ns.is_some();
        if timed && self.clock.is_none() {
            return Err(IommuDmaError::NoClock);
        }
        let id = if cfg.identity {
            self.iommu.create_identity_domain()?
        } else {
            self.iommu.create_domain()?
        };
        match IommuDomain::new(id, self.iommu.clone(), &cfg, self.cpus, self.clock.clone()) {
            Ok(d) => {
                self.domains.lock().insert(id, Arc::new(d));
                Ok(id)
            }
            Err(e) => {
                // Just created, nothing attached: destroying it cannot be refused.
                let _ = self.iommu.destroy_domain(id);
                Err(IommuDmaError::Iova(e))
            }
        }
    }

    /// Destroys a domain with no devices attached and no live mappings (queued IOVAs are
    /// invalidated and released first).
    ///
    /// # Errors
    /// [`IommuDmaError::Platform`] with [`IommuError::NoSuchDomain`] or
    /// [`IommuError::DomainBusy`]; [`IommuDmaError::Busy`] when mappings are live.
    pub fn destroy_domain(&self, id: IommuDomainId) -> Result<(), IommuDmaError> {
        let mut domains = self.domains.lock();
        let d = domains
            .get(&id)
            .ok_or(IommuError::NoSuchDomain(id))?
            .clone();
        if self.devices.read().values().flatten().any(|a| a.id() == id) {
            return Err(IommuError::DomainBusy(id).into());
        }
        if d.has_mappings() {
            return Err(IommuDmaError::Busy);
        }
        d.drain(0);
        self.iommu.destroy_domain(id)?;
        domains.remove(&id);
        Ok(())
    }

    /// Attaches `dev` to domain `id`: from now on its mappings go through the domain (for
    /// an identity domain: as if there were no IOMMU).
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`IommuDmaError::AlreadyAttached`]; [`IommuDmaError::UntrustedIdentity`] for an
    /// untrusted device and an identity domain; [`IommuDmaError::Platform`] with
    /// [`IommuError::NoSuchDomain`] or whatever the IOMMU refused.
    pub fn attach(&self, dev: &Device, id: IommuDomainId) -> Result<(), IommuDmaError> {
        let domain = self
            .domains
            .lock()
            .get(&id)
            .cloned()
            .ok_or(IommuError::NoSuchDomain(id))?;
        if domain.is_identity() && !dev.is_trusted() {
            return Err(IommuDmaError::UntrustedIdentity(dev.id()));
        }
        let mut devices = self.devices.write();
        if let Some(Some(_)) = devices.get(&dev.id()) {
            return Err(IommuDmaError::AlreadyAttached(dev.id()));
        }
        self.iommu.attach_device(id, dev.id())?;
        devices.insert(dev.id(), Some(domain));
        Ok(())
    }

    /// Detaches `dev`: the hardware blocks it from now on. It stays known here as blocked:
    /// the mapper refuses its mappings, unmaps and syncs with [`crate::DmaError::Detached`]
    /// and the allocators its allocations, until it is attached again (see [`IommuDma`]).
    ///
    /// # Errors
    /// [`IommuDmaError::NotAttached`]; [`IommuDmaError::Busy`] while it has live mappings
    /// (streaming ones or DMA allocations): unmap and free them first. Nothing changed then.
    pub fn detach(&self, dev: &Device) -> Result<(), IommuDmaError> {
        let mut devices = self.devices.write();
        let Some(Some(d)) = devices.get(&dev.id()) else {
            return Err(IommuDmaError::NotAttached(dev.id()));
        };
        if d.has_mappings_of(dev.id()) {
            return Err(IommuDmaError::Busy);
        }
        self.iommu.detach_device(dev.id());
        if crate::reintroduce::active(crate::reintroduce::Defect::DetachGoesDirect) {
            // The put-back defect: forgotten, so mapped directly from now on.
            devices.remove(&dev.id());
        } else {
            devices.insert(dev.id(), None);
        }
        Ok(())
    }

    /// The domain `dev` is attached to (`None` when it is not attached, including when
    /// it was detached).
    pub fn domain_of(&self, dev: DeviceId) -> Option<Arc<IommuDomain>> {
        self.devices.read().get(&dev).cloned().flatten()
    }

    /// How the mapper reaches `dev`: through its domain (`Ok(Some)`), without the IOMMU
    /// (`Ok(None)`: never attached, or attached to an identity domain), or not at all
    /// ([`crate::DmaError::Detached`]). The read side of one lock, taken once per
    /// operation: CPUs looking up at once share it.
    pub(crate) fn route_of(&self, dev: DeviceId) -> Result<Option<Arc<IommuDomain>>, DmaError> {
        match self.devices.read().get(&dev) {
            Some(Some(d)) if d.is_identity() => Ok(None),
            Some(Some(d)) => Ok(Some(d.clone())),
            Some(None) => Err(DmaError::Detached { device: dev }),
            None => Ok(None),
        }
    }

    /// The domain with this id.
    pub fn domain(&self, id: IommuDomainId) -> Option<Arc<IommuDomain>> {
        self.domains.lock().get(&id).cloned()
    }

    /// Drains the flush queue of every domain: one IOTLB invalidation per domain with
    /// queued IOVAs, then they are released. Call it periodically in lazy mode (Linux does
    /// it from a timer) so unmapped memory does not stay reachable for long. Returns the
    /// bounce slots released; [`crate::DmaMapper::flush_iommu_queues`] does the same and
    /// also completes deferred mappings that now fit.
    ///
    /// Allocates nothing, and drains each domain with the domain list's lock dropped: the
    /// next domain is looked up after the previous one's drain.
    pub fn flush_queues(&self, cpu: usize) -> usize {
        let mut released = 0;
        let mut after = None;
        loop {
            let next = {
                let domains = self.domains.lock();
                let mut rest = match after {
                    None => domains.range(..),
                    Some(id) => domains.range((Bound::Excluded(id), Bound::Unbounded)),
                };
                rest.next().map(|(&id, d)| (id, d.clone()))
            };
            let Some((id, dom)) = next else {
                return released;
            };
            released += dom.drain(cpu);
            after = Some(id);
        }
    }

    /// A bounce pool is full: drains the flush queues that hold bounce slots (each after
    /// its IOTLB invalidation), so parked slots are used before a map fails. Returns the
    /// slots released. Runs on a failing map, so it allocates nothing: it drains under the
    /// domain list's lock, which no map, unmap or sync takes (only domain creation,
    /// destruction and attachment do).
    pub(crate) fn reclaim_bounces(&self, cpu: usize) -> usize {
        if crate::reintroduce::active(crate::reintroduce::Defect::LazyDomainParksBounces) {
            return 0;
        }
        self.domains
            .lock()
            .values()
            .filter(|d| d.parked_bounces() > 0)
            .map(|d| d.drain(cpu))
            .sum()
    }
}
