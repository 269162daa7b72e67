//! Shared set-up of the IOMMU model tests: a machine whose devices go through a modelled
//! IOMMU, the mapping layer's IOMMU state, and a SWIOTLB pool for bounces.

#![allow(dead_code)]

use std::sync::Arc;

use dmakit::bounce::BounceBackend;
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{DomainConfig, IommuDma, IommuDomainId, PageAllocator};
use dmakit_sim::{Granule, HazardConfig, Machine, MachineConfig, SimIommu, SimIommuConfig};

pub struct Rig {
    pub m: Machine,
    pub iommu: SimIommu,
    pub dma: Arc<IommuDma>,
}

pub fn rig(seed: u64, granule: Granule, hazards: HazardConfig) -> Rig {
    let m = Machine::new(MachineConfig {
        seed,
        hazards,
        ..MachineConfig::default()
    })
    .unwrap();
    let iommu = SimIommu::new(SimIommuConfig {
        granule,
        ..SimIommuConfig::default()
    })
    .unwrap();
    m.set_translation(Box::new(iommu.clone()));
    let dma = Arc::new(IommuDma::new(Arc::new(iommu.clone()), 1).unwrap());
    Rig { m, iommu, dma }
}

impl Rig {
    pub fn domain(&self, cfg: DomainConfig) -> IommuDomainId {
        self.dma.create_domain(cfg).unwrap()
    }

    /// A SWIOTLB pool of `pages` pages below 4 GiB.
    pub fn swiotlb(&self, pages: u64) -> Arc<dyn BounceBackend> {
        let base = self.m.alloc_pages(pages, u32::MAX as u64).unwrap();
        // Whole slots for every bounce (no packing): the scenarios count slots.
        let cfg = PoolConfig::builder().packing(false).build().unwrap();
        let b = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
        b.add_region(base, pages * 4096).unwrap();
        Arc::new(b)
    }
}
