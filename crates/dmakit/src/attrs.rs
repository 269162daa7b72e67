//! Mapping attributes: how a driver asks the mapping layer to do less than a plain `map`.
//!
//! A plain [`crate::DmaMapper::map`] / [`crate::DmaMapper::unmap`] pair does every bit of
//! cache maintenance and bounce copying the transfer needs. Drivers that map a buffer once
//! and reuse it for many transfers (receive rings recycling their pages) do that work
//! themselves, with `sync_for_device` before each transfer and `sync_for_cpu` after it, and
//! ask the map and unmap to skip it (Linux `DMA_ATTR_SKIP_CPU_SYNC`). One flag today; a
//! dependency on `bitflags` would cost more than these few lines.

use core::ops::BitOr;

/// Attributes of one mapping, given to [`crate::DmaMapper::map_attrs`] and again to
/// [`crate::DmaMapper::unmap_attrs`]. Combine with `|`; [`MapAttrs::NONE`] is a plain map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapAttrs(u32);

impl MapAttrs {
    /// No attribute: the map and unmap do all the work a plain call does.
    pub const NONE: Self = Self(0);

    /// Map and unmap without the CPU-side work a sync would do; the driver syncs the parts
    /// it uses with `sync_for_device` / `sync_for_cpu` (or `sync_sg_for_*`).
    ///
    /// What is skipped, path by path:
    /// - **direct** (and in place behind an IOMMU): the cache maintenance at map and at
    ///   unmap — on a coherent device there is none anyway;
    /// - **bounced**: at unmap, the copy of the device's bytes back to the buffer and the
    ///   slot's maintenance (the driver's `sync_for_cpu` before the unmap brings them). At
    ///   map nothing is skipped: the slot is always filled from the buffer and cleaned, so
    ///   a device never sees what the slot held for an earlier user (the rule of
    ///   CVE-2022-0854's fix), whatever the driver syncs later.
    ///
    /// Page-table and IOTLB work behind an IOMMU is never skipped.
    pub const SKIP_CPU_SYNC: Self = Self(1);

    /// Whether every attribute of `other` is set in `self`.
    #[inline]
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether [`MapAttrs::SKIP_CPU_SYNC`] is set.
    #[inline]
    pub(crate) const fn skips_cpu_sync(self) -> bool {
        self.contains(Self::SKIP_CPU_SYNC)
    }
}

impl BitOr for MapAttrs {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_combine_and_are_found() {
        assert!(!MapAttrs::NONE.skips_cpu_sync());
        assert!(MapAttrs::SKIP_CPU_SYNC.skips_cpu_sync());
        let both = MapAttrs::NONE | MapAttrs::SKIP_CPU_SYNC;
        assert!(both.contains(MapAttrs::SKIP_CPU_SYNC));
        assert!(both.contains(MapAttrs::NONE));
        assert!(!MapAttrs::NONE.contains(MapAttrs::SKIP_CPU_SYNC));
        assert_eq!(MapAttrs::default(), MapAttrs::NONE);
    }
}
