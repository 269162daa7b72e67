//! How large a mapping a device can take: `max_mapping_size` and `opt_mapping_size`.
//!
//! A bounce is one run of pool slots, so a device whose mappings may bounce cannot be
//! given more than its pool's largest bounce in one call; a block layer asks for the limit
//! and splits its requests instead of failing them ([`DmaError::TooLargeToBounce`]). The
//! limit depends on the device's path, as the router decides it, and on its
//! `min_align_mask` (the offset a bounce keeps costs room in its segment). dmakit does not
//! know where RAM ends, so a DMA mask narrower than 64 bits counts as one that may bounce
//! (Linux asks `dma_addressing_limited`, which compares the mask with the end of RAM).
//!
//! [`DmaError::TooLargeToBounce`]: crate::DmaError::TooLargeToBounce

use super::DmaMapper;
use crate::bounce::BounceBackend;
use crate::decision::AlignmentPolicy;
use crate::device::Device;
use crate::platform::Platform;

impl<P: Platform> DmaMapper<P> {
    /// The largest mapping `dev` can be given in one `map` (Linux `dma_max_mapping_size`):
    /// a mapping of at most this many bytes never fails with
    /// [`DmaError::TooLargeToBounce`](crate::DmaError::TooLargeToBounce), whatever its
    /// address, alignment and direction. Larger requests must be split.
    ///
    /// - A device with a restricted pool: the largest bounce that pool holds for its
    ///   `min_align_mask`.
    /// - Without an IOMMU: the same for its global pool when its mappings may bounce
    ///   (force-bounce; a mask narrower than 64 bits; a non-coherent device under
    ///   [`AlignmentPolicy::Exact`], which bounces misaligned inbound buffers of any size);
    ///   otherwise `u64::MAX`.
    /// - Behind an IOMMU: for force-bounce and untrusted devices, whose bounces are padded
    ///   to whole granules, the pool's largest bounce less a granule; for a non-coherent
    ///   device under the exact policy the pool's largest bounce; otherwise `u64::MAX`
    ///   (the domain's IOVA space is then the only bound).
    ///
    /// `u64::MAX` also when the device has no pool or its pool cannot say (size is then
    /// not what limits it); 0 when no mapping of the device can succeed (detached from its
    /// IOMMU domain, or a restricted pool behind an IOMMU).
    pub fn max_mapping_size(&self, dev: &Device) -> u64 {
        if let Some(pool) = self.restricted_pool(dev) {
            if self.restricted_not_behind_iommu(dev).is_err() {
                return 0;
            }
            return bounce_limit(pool.backend.as_ref(), dev.min_align_mask());
        }
        let exact_noncoherent = !dev.is_coherent() && self.policy == AlignmentPolicy::Exact;
        let Some(backend) = self.bounce_backend(dev) else {
            return match self.routes.iommu_domain(dev) {
                Err(_) => 0,
                Ok(_) => u64::MAX,
            };
        };
        match self.routes.iommu_domain(dev) {
            Err(_) => 0,
            Ok(Some(dom)) => {
                if dev.force_bounce() || !dev.is_trusted() {
                    let g = dom.granule();
                    let mask = (g - 1).max(dev.min_align_mask());
                    // A padded slot is at most the buffer plus `g - 1` bytes.
                    bounce_limit(backend.as_ref(), mask).saturating_sub(g - 1)
                } else if exact_noncoherent {
                    bounce_limit(backend.as_ref(), dev.min_align_mask())
                } else {
                    u64::MAX
                }
            }
            Ok(None) => {
                if dev.force_bounce() || dev.dma_mask() != u64::MAX || exact_noncoherent {
                    bounce_limit(backend.as_ref(), dev.min_align_mask())
                } else {
                    u64::MAX
                }
            }
        }
    }

    /// The largest mapping of `dev` that takes no slow path (Linux `dma_opt_mapping_size`):
    /// [`DmaMapper::max_mapping_size`], and behind an IOMMU at most the largest IOVA range
    /// its domain serves from the per-CPU range caches (2^`rcache_max_order` granules),
    /// since larger ones search the IOVA tree under its lock.
    pub fn opt_mapping_size(&self, dev: &Device) -> u64 {
        let max = self.max_mapping_size(dev);
        match self.routes.iommu_domain(dev) {
            Ok(Some(dom)) if self.restricted_pool(dev).is_none() => max.min(
                dom.granule()
                    .saturating_mul(dom.iova().largest_cached_pages()),
            ),
            _ => max,
        }
    }
}

/// The largest bounce `backend` takes for `min_align_mask` (`u64::MAX` when it cannot say).
fn bounce_limit(backend: &dyn BounceBackend, min_align_mask: u64) -> u64 {
    backend.max_bounce(min_align_mask).unwrap_or(u64::MAX)
}
