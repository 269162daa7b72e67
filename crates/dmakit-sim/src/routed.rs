//! A bus where only some devices sit behind an IOMMU.
//!
//! Real SoCs put one device behind an IOMMU and leave its neighbours on the plain bus (or
//! behind another IOMMU instance). Mixed machines like that are where isolation defects
//! show, so the scenario runner and the tests build them from this one translation.

use dmakit::{Device, DeviceId, DmaAddr, PhysAddr};

use crate::device::{BusWindowTranslation, DmaTranslation, FaultReason};
use crate::iommu::SimIommu;

/// Each routed device goes through its own IOMMU; every other device reaches physical
/// memory through its bus windows ([`BusWindowTranslation`]).
#[derive(Default)]
pub struct RoutedTranslation {
    routes: Vec<(DeviceId, SimIommu)>,
}

impl RoutedTranslation {
    /// No device behind any IOMMU yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` behind `iommu` (a later route of the same device replaces it).
    pub fn route(&mut self, device: DeviceId, iommu: &SimIommu) {
        self.routes.retain(|(d, _)| *d != device);
        self.routes.push((device, iommu.clone()));
    }
}

impl DmaTranslation for RoutedTranslation {
    fn translate(
        &self,
        device: &Device,
        dma: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<(PhysAddr, u64), FaultReason> {
        match self.routes.iter().find(|(d, _)| *d == device.id()) {
            Some((_, iommu)) => iommu.translate(device, dma, len, write),
            None => BusWindowTranslation.translate(device, dma, len, write),
        }
    }
}
