//! Translation between CPU physical addresses and a device's bus addresses.
//!
//! A [`PhysAddr`] and a [`DmaAddr`] are different address spaces. A device with no IOMMU
//! between it and memory reaches memory through its bus windows ([`crate::bus_ranges`],
//! a devicetree's `dma-ranges`): physical `[cpu, cpu + size)` at bus `[dma, dma + size)`;
//! with no window it reaches memory at its physical address. This module is the only place
//! where one address space becomes the other, and every path goes through it: the direct
//! path, the address a device is given for a bounce slot, the DMA allocators' buffers for
//! such a device, the reverse lookup at unmap and sync, and the reach a bounce pool must
//! place into.
//!
//! An I/O virtual address behind an IOMMU is not a translation of this kind: the IOMMU's
//! page tables define it, and the IOMMU path keeps it. Its page tables hold physical
//! addresses, so a device behind an IOMMU does not use its bus windows.

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bus_ranges::BusRanges;
use crate::device::Device;

/// The bus address at which `dev` (no IOMMU) reaches `phys`; `None` when no window of the
/// device covers `phys`.
#[inline]
pub(crate) fn bus_of(dev: &Device, phys: PhysAddr) -> Option<DmaAddr> {
    let ranges = dev.bus_ranges();
    if ranges.is_identity() {
        return Some(DmaAddr::new(phys.as_u64()));
    }
    ranges.entries().iter().find_map(|e| {
        let off = phys.checked_offset_from(e.cpu())?;
        (off < e.size()).then(|| e.dma().add(off))
    })
}

/// The physical address `dev` (no IOMMU) reaches at the bus address `dma`: the inverse of
/// [`bus_of`], so `phys_of_bus(d, bus_of(d, p)?) == Some(p)`. `None` when no window of the
/// device covers `dma`; whether memory, a bounce slot or a live mapping is there is for the
/// caller to check.
#[inline]
pub(crate) fn phys_of_bus(dev: &Device, dma: DmaAddr) -> Option<PhysAddr> {
    let ranges = dev.bus_ranges();
    if ranges.is_identity() {
        return Some(PhysAddr::new(dma.as_u64()));
    }
    phys_through_windows(ranges, dma)
}

/// [`phys_of_bus`] for a device with bus windows: out of line, so that the identity
/// translation's answer is known to be there where the caller tests it.
#[inline(never)]
fn phys_through_windows(ranges: &BusRanges, dma: DmaAddr) -> Option<PhysAddr> {
    ranges.entries().iter().find_map(|e| {
        let off = dma.as_u64().checked_sub(e.dma().as_u64())?;
        (off < e.size()).then(|| e.cpu().add(off))
    })
}

/// The bus address of the first byte of `range` for `dev`, when the device reaches the
/// whole range contiguously on the bus (one window holds it) and its last bus address is
/// at or below `limit` (a mask, capped by the bus limit). `None` otherwise: the range must
/// be bounced, or the memory is no use to the device.
#[inline]
pub(crate) fn bus_within(dev: &Device, range: PhysRange, limit: u64) -> Option<DmaAddr> {
    if dev.bus_ranges().is_identity() {
        let start = range.start().as_u64();
        // The last byte, as `range.last()` but from the exact `end` (at least 1), without
        // the checked add.
        return (range.end().as_u64() - 1 <= limit).then_some(DmaAddr::new(start));
    }
    let first = bus_of(dev, range.start())?;
    let last = bus_of(dev, range.last())?;
    let contiguous = last.as_u64().checked_sub(first.as_u64()) == Some(range.len() - 1);
    (contiguous && last.as_u64() <= limit).then_some(first)
}

/// The highest physical address whose bus address for `dev` is at or below `limit`:
/// the upper end of the physical window a pool or an allocator must place into for the
/// device. `None` when no window of the device reaches below `limit`. Memory below the
/// result may still lie outside every window (a gap between windows), so a placement
/// below it is checked with [`bus_within`] afterwards.
pub(crate) fn highest_phys_within(dev: &Device, limit: u64) -> Option<u64> {
    let ranges = dev.bus_ranges();
    if ranges.is_identity() {
        return Some(limit);
    }
    ranges
        .entries()
        .iter()
        .filter_map(|e| {
            let room = limit.checked_sub(e.dma().as_u64())?;
            Some(e.cpu().as_u64() + room.min(e.size() - 1))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceId;

    fn identity() -> Device {
        Device::builder(DeviceId(1), "id").build().unwrap()
    }

    /// A Raspberry-Pi-4-like window (`dma = cpu + 0xc000_0000`) and a window below it on
    /// the bus (`dma = cpu - 0x8000_0000`).
    fn windows() -> Device {
        Device::builder(DeviceId(2), "win")
            .dma_range(PhysAddr::new(0), DmaAddr::new(0xc000_0000), 0x4000_0000)
            .dma_range(
                PhysAddr::new(0x1_0000_0000),
                DmaAddr::new(0x8000_0000),
                0x1000_0000,
            )
            .build()
            .unwrap()
    }

    #[test]
    fn the_two_conversions_are_inverse() {
        let d = identity();
        for v in [0, 0x1000, 0x8000_0008, u64::MAX] {
            let p = PhysAddr::new(v);
            assert_eq!(phys_of_bus(&d, bus_of(&d, p).unwrap()), Some(p));
        }
        let w = windows();
        for (p, b) in [
            (0, 0xc000_0000u64),
            (0x3fff_ffff, 0xffff_ffff),
            (0x1_0000_0000, 0x8000_0000),
            (0x1_0fff_ffff, 0x8fff_ffff),
        ] {
            assert_eq!(bus_of(&w, PhysAddr::new(p)), Some(DmaAddr::new(b)));
            assert_eq!(phys_of_bus(&w, DmaAddr::new(b)), Some(PhysAddr::new(p)));
        }
    }

    #[test]
    fn addresses_outside_every_window_have_no_translation() {
        let w = windows();
        assert_eq!(bus_of(&w, PhysAddr::new(0x4000_0000)), None);
        assert_eq!(bus_of(&w, PhysAddr::new(0x1_1000_0000)), None);
        assert_eq!(phys_of_bus(&w, DmaAddr::new(0x4000_0000)), None);
        assert_eq!(phys_of_bus(&w, DmaAddr::new(0x9000_0000)), None);
    }

    #[test]
    fn a_range_must_sit_in_one_window_below_the_limit() {
        let w = windows();
        let r = |a, l| PhysRange::new(PhysAddr::new(a), l).unwrap();
        assert_eq!(
            bus_within(&w, r(0x1000, 64), u64::MAX),
            Some(DmaAddr::new(0xc000_1000))
        );
        // Runs off the end of its window.
        assert_eq!(bus_within(&w, r(0x3fff_fff0, 32), u64::MAX), None);
        // Fits its window but not a 32-bit limit... then fits one.
        assert_eq!(bus_within(&w, r(0x3fff_fff0, 16), 0xffff_fffe), None);
        assert!(bus_within(&w, r(0x3fff_fff0, 16), 0xffff_ffff).is_some());
        let id = identity();
        assert_eq!(bus_within(&id, r(0xffff_fff0, 17), 0xffff_ffff), None);
    }

    #[test]
    fn the_physical_window_below_a_limit() {
        let w = windows();
        // Below bus 0x8000_0000 nothing; the low end of the second window; all of both.
        assert_eq!(highest_phys_within(&w, 0x7fff_ffff), None);
        assert_eq!(highest_phys_within(&w, 0x8000_0fff), Some(0x1_0000_0fff));
        assert_eq!(highest_phys_within(&w, u64::MAX), Some(0x1_0fff_ffff));
        assert_eq!(highest_phys_within(&identity(), 0xffff), Some(0xffff));
    }
}
