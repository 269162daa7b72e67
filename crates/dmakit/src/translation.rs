//! Translation between CPU physical addresses and bus addresses.
//!
//! A [`PhysAddr`] and a [`DmaAddr`] are different address spaces that happen to share
//! values on most machines today. This module is the only place where one becomes the
//! other, so the assumption that makes them equal is written down once and changes in one
//! place.
//!
//! The assumption: a device with no IOMMU between it and memory reaches memory at its CPU
//! physical address, with no bus offset (an identity bus mapping). The direct path, the
//! address a device is given for a bounce slot, the DMA allocators' buffers for such a
//! device, and the reverse lookup of which bounce pool holds a DMA address all rely on it.
//! Per-device bus offsets (a devicetree's `dma-ranges`) will plug in here; the functions
//! then take the device.
//!
//! An I/O virtual address behind an IOMMU is not a translation of this kind: the IOMMU's
//! page tables define it, and the IOMMU path keeps it.

use crate::addr::{DmaAddr, PhysAddr};

/// The bus address at which a device that sees memory at its physical address (no IOMMU,
/// no bus offset) reaches `phys`.
///
/// Identity today: the result has the value of `phys`. Never fails.
#[inline]
pub(crate) const fn bus_of(phys: PhysAddr) -> DmaAddr {
    DmaAddr::new(phys.as_u64())
}

/// The physical address that such a device reaches at the bus address `dma`: the inverse
/// of [`bus_of`], so `phys_of_bus(bus_of(p)) == p` for every `p`.
///
/// Identity today: the result has the value of `dma`. Never fails; whether memory, a
/// bounce slot or a live mapping is there is for the caller to check.
#[inline]
pub(crate) const fn phys_of_bus(dma: DmaAddr) -> PhysAddr {
    PhysAddr::new(dma.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_conversions_are_inverse() {
        for v in [0, 0x1000, 0x8000_0008, u64::MAX] {
            let p = PhysAddr::new(v);
            assert_eq!(phys_of_bus(bus_of(p)), p);
            assert_eq!(bus_of(phys_of_bus(DmaAddr::new(v))), DmaAddr::new(v));
        }
    }
}
