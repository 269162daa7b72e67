//! The IOMMU path: devices that see I/O virtual addresses.
//!
//! Behind an IOMMU a device emits IOVAs that page tables translate, so scattered pages can
//! look contiguous, a 32-bit device reaches RAM above 4 GiB without a bounce, and a device
//! cannot reach memory it was not given. This module is the mapping layer's side of that:
//!
//! - [`iova`]: the per-domain IOVA allocator (size aligned, mask bounded, with per-CPU
//!   range caches so the common case does not touch the tree);
//! - [`domain`]: a domain's bookkeeping (live mappings, strict or lazy invalidation);
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
//! [`DmaMapper::with_iommu`](crate::DmaMapper::with_iommu), and every device attached to a
//! domain is mapped through it, the others as before.

mod alloc_space;
pub mod domain;
mod flush_queue;
pub mod iova;
pub(crate) mod path;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use spin::Mutex;

pub use domain::{DomainConfig, DomainStats, FlushMode, IommuDomain};
pub use iova::{IovaAllocator, IovaConfig, IovaError, IovaRange, IovaStats};

use crate::device::{Device, DeviceId};
use crate::platform::{Iommu, IommuDomainId, IommuError, PAGE_SIZE};

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
        }
    }
}

#[cfg(feature = "std")]
extern crate std;
#[cfg(feature = "std")]
impl std::error::Error for IommuDmaError {}

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
pub struct IommuDma {
    iommu: Arc<dyn Iommu + Send + Sync>,
    cpus: usize,
    domains: Mutex<BTreeMap<IommuDomainId, Arc<IommuDomain>>>,
    devices: Mutex<BTreeMap<DeviceId, Arc<IommuDomain>>>,
}

impl fmt::Debug for IommuDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IommuDma")
            .field("granule", &self.iommu.granule())
            .field("domains", &self.domains.lock().len())
            .field("devices", &self.devices.lock().len())
            .finish()
    }
}

impl IommuDma {
    /// The mapping layer's view of `iommu`, with range caches for `cpus` CPUs.
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
            domains: Mutex::new(BTreeMap::new()),
            devices: Mutex::new(BTreeMap::new()),
        })
    }

    /// The IOMMU.
    pub fn iommu(&self) -> &Arc<dyn Iommu + Send + Sync> {
        &self.iommu
    }

    /// Creates a domain with `cfg`.
    ///
    /// # Errors
    /// [`IommuDmaError::Platform`] when the IOMMU cannot create one;
    /// [`IommuDmaError::Iova`] when the IOVA window is empty (the hardware domain is
    /// destroyed again).
    pub fn create_domain(&self, cfg: DomainConfig) -> Result<IommuDomainId, IommuDmaError> {
        let id = self.iommu.create_domain()?;
        match IommuDomain::new(id, self.iommu.clone(), &cfg, self.cpus) {
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
        if self.devices.lock().values().any(|a| a.id == id) {
            return Err(IommuError::DomainBusy(id).into());
        }
        if !d.records.lock().is_empty() {
            return Err(IommuDmaError::Busy);
        }
        d.drain(0);
        self.iommu.destroy_domain(id)?;
        domains.remove(&id);
        Ok(())
    }

    /// Attaches `dev` to domain `id`: from now on its mappings go through the domain.
    ///
    /// # Errors
    /// [`IommuDmaError::AlreadyAttached`]; [`IommuDmaError::Platform`] with
    /// [`IommuError::NoSuchDomain`] or whatever the IOMMU refused.
    pub fn attach(&self, dev: &Device, id: IommuDomainId) -> Result<(), IommuDmaError> {
        let domain = self
            .domains
            .lock()
            .get(&id)
            .cloned()
            .ok_or(IommuError::NoSuchDomain(id))?;
        let mut devices = self.devices.lock();
        if devices.contains_key(&dev.id()) {
            return Err(IommuDmaError::AlreadyAttached(dev.id()));
        }
        self.iommu.attach_device(id, dev.id())?;
        devices.insert(dev.id(), domain);
        Ok(())
    }

    /// Detaches `dev` (the hardware then blocks it); it is mapped without the IOMMU again.
    ///
    /// # Errors
    /// [`IommuDmaError::NotAttached`]; [`IommuDmaError::Busy`] while it has live mappings.
    pub fn detach(&self, dev: &Device) -> Result<(), IommuDmaError> {
        let mut devices = self.devices.lock();
        let d = devices
            .get(&dev.id())
            .ok_or(IommuDmaError::NotAttached(dev.id()))?;
        if d.has_mappings_of(dev.id()) {
            return Err(IommuDmaError::Busy);
        }
        self.iommu.detach_device(dev.id());
        devices.remove(&dev.id());
        Ok(())
    }

    /// The domain `dev` is attached to.
    pub fn domain_of(&self, dev: DeviceId) -> Option<Arc<IommuDomain>> {
        self.devices.lock().get(&dev).cloned()
    }

    /// The domain with this id.
    pub fn domain(&self, id: IommuDomainId) -> Option<Arc<IommuDomain>> {
        self.domains.lock().get(&id).cloned()
    }

    /// Drains the flush queue of every domain: one IOTLB invalidation per domain with
    /// queued IOVAs, then they are released. Call it periodically in lazy mode (Linux does
    /// it from a timer) so unmapped memory does not stay reachable for long.
    pub fn flush_queues(&self, cpu: usize) {
        let all: Vec<Arc<IommuDomain>> = self.domains.lock().values().cloned().collect();
        for d in all {
            d.drain(cpu);
        }
    }
}
