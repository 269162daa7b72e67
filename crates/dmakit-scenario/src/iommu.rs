//! The machine's IOMMU in a scenario: the model's page tables and IOTLB in front of the
//! devices a scenario puts behind it (`iommu = "strict" | "lazy"`), one domain per device
//! (as separate IOMMU groups), the others reaching memory directly as before.

use std::sync::Arc;

use dmakit::{DeviceId, DomainConfig, IommuDma};

use crate::model::{IommuMode, Scenario};
use dmakit_sim::iommu::{SimIommu, SimIommuConfig};
use dmakit_sim::machine::Machine;
use dmakit_sim::routed::RoutedTranslation;

/// The IOMMU of a scenario's machine: the model's hardware and the mapping layer's side.
pub struct MachineIommu {
    /// The modelled hardware (fault log, statistics).
    pub hw: SimIommu,
    /// The mapping layer's domains, for [`dmakit::DmaMapperBuilder::iommu`] and the DMA
    /// allocators.
    pub dma: Arc<IommuDma>,
}

/// Puts the IOMMU in front of `machine`'s devices that `sc` places behind it, attached
/// to their domains; `None` when no device is.
///
/// # Errors
/// A description of what the IOMMU model or the mapping layer refused.
pub fn setup(machine: &Machine, sc: &Scenario) -> Result<Option<MachineIommu>, String> {
    let behind: Vec<DeviceId> = sc
        .devices
        .iter()
        .zip(&sc.iommu)
        .filter(|(_, m)| m.is_some())
        .map(|(d, _)| d.id())
        .collect();
    if behind.is_empty() {
        return Ok(None);
    }
    let hw = SimIommu::new(SimIommuConfig {
        granule: sc.machine.iommu_granule,
        ..SimIommuConfig::default()
    })
    .map_err(|e| format!("IOMMU model: {e}"))?;
    let mut routed = RoutedTranslation::new();
    for &dev in &behind {
        routed.route(dev, &hw);
    }
    machine.set_translation(Box::new(routed));
    let dma =
        Arc::new(IommuDma::new(Arc::new(hw.clone()), sc.machine.cpus).map_err(|e| e.to_string())?);
    for (dev, mode) in sc.devices.iter().zip(&sc.iommu) {
        let cfg = match mode {
            None => continue,
            Some(IommuMode::Strict) => DomainConfig::STRICT,
            Some(IommuMode::Lazy) => DomainConfig::LAZY,
        };
        let d = dma
            .create_domain(cfg)
            .map_err(|e| format!("IOMMU domain for `{}`: {e}", dev.name()))?;
        dma.attach(dev, d)
            .map_err(|e| format!("attaching `{}` to the IOMMU: {e}", dev.name()))?;
    }
    Ok(Some(MachineIommu { hw, dma }))
}
