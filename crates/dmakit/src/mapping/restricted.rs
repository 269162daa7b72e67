//! Restricted DMA pools: bounce memory that belongs to one device alone.
//!
//! Some platforms (Linux's `restricted-dma-pool` device-tree regions) let a device reach
//! only one window of memory, set aside for it; everything it transfers is bounced through
//! that window, whatever its alignment, and no other device's bounces land there. The map
//! path runs in interrupt context, so the table is built once by the builder and only read
//! afterwards: a binary search over a sorted slice, no lock, no allocation.
//!
//! Linux ignores a restricted pool on a device behind an IOMMU (the IOMMU already confines
//! it). Here that combination is a configuration error the router reports on every map,
//! unmap and sync of the device ([`crate::DmaError::RestrictedPoolBehindIommu`]): a
//! device described as confined to a window must not silently reach anything else.

use alloc::vec::Vec;

use crate::device::DeviceId;

/// The restricted pools (`T`: a pool as the router keeps it), one per device, sorted by
/// device.
pub(super) struct RestrictedPools<T> {
    pools: Vec<(DeviceId, T)>,
}

impl<T> RestrictedPools<T> {
    /// No restricted pools.
    pub(super) const fn new() -> Self {
        Self { pools: Vec::new() }
    }

    /// Gives `device` the pool `pool`, replacing one it had. Builder only.
    pub(super) fn insert(&mut self, device: DeviceId, pool: T) {
        match self.pools.binary_search_by_key(&device, |(d, _)| *d) {
            Ok(i) => self.pools[i].1 = pool,
            Err(i) => self.pools.insert(i, (device, pool)),
        }
    }

    /// Whether no device has a restricted pool.
    pub(super) fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The restricted pool of `device`, if it has one. O(log n), no lock.
    #[inline]
    pub(super) fn of(&self, device: DeviceId) -> Option<&T> {
        if self.pools.is_empty() {
            return None;
        }
        self.pools
            .binary_search_by_key(&device, |(d, _)| *d)
            .ok()
            .map(|i| &self.pools[i].1)
    }

    /// Every restricted pool, by device.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.pools.iter().map(|(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_each_device_and_a_second_pool_replaces_the_first() {
        let mut t = RestrictedPools::new();
        assert_eq!(t.of(DeviceId(1)), None);
        for (d, p) in [(7, 70), (2, 20), (5, 50), (2, 21)] {
            t.insert(DeviceId(d), p);
        }
        assert_eq!(t.of(DeviceId(2)), Some(&21));
        assert_eq!(t.of(DeviceId(5)), Some(&50));
        assert_eq!(t.of(DeviceId(7)), Some(&70));
        assert_eq!(t.of(DeviceId(3)), None);
        assert_eq!(t.iter().copied().collect::<Vec<_>>(), [21, 50, 70]);
    }
}
