//! What the mapping layer must know about a device.
//!
//! Every decision the layer makes (bounce or not, which maintenance, where a bounce may sit)
//! depends on a handful of device properties. They are gathered here and validated once, at
//! construction, so the map path can trust them.

use core::fmt;

/// Identifies a device to statistics, the debug checker and error messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub u32);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dev{}", self.0)
    }
}

/// A validated device description.
///
/// Invariants (checked by [`DeviceBuilder::build`]): the DMA mask is a non-zero contiguous low
/// bit mask (`2^n - 1`, so 1 to 64 address bits); the cache line size is a power of two between 8 and 4096; the maximum
/// segment size is non-zero; the segment boundary mask is `2^n - 1`; `min_align_mask` is
/// `2^n - 1` (possibly zero) and smaller than 64 KiB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    id: DeviceId,
    name: &'static str,
    dma_mask: u64,
    coherent: bool,
    cache_line: u64,
    min_align_mask: u64,
    max_segment_size: u64,
    seg_boundary_mask: u64,
    trusted: bool,
    force_bounce: bool,
    bounce_pool: BouncePool,
}

/// Which kind of memory a device's bounces use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BouncePool {
    /// The SWIOTLB-style slot pool in cached memory (the default).
    #[default]
    Swiotlb,
    /// The coherent object pool (no maintenance on the bounce side).
    Coherent,
}

/// Why a device description was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The DMA mask is zero or not of the form `2^n - 1`.
    BadDmaMask(u64),
    /// The cache line size is not a power of two in `8..=4096`.
    BadCacheLine(u64),
    /// The maximum segment size is zero.
    ZeroSegmentSize,
    /// The segment boundary mask is not of the form `2^n - 1`.
    BadSegmentBoundary(u64),
    /// `min_align_mask` is not of the form `2^n - 1`, or is 64 KiB or more.
    BadMinAlignMask(u64),
    /// [`DeviceBuilder::dma_bits`] was given more than 64 bits.
    BadDmaBits(u32),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::BadDmaMask(m) => {
                write!(f, "DMA mask {m:#x} must be non-zero and of the form 2^n-1")
            }
            DeviceError::BadCacheLine(l) => {
                write!(
                    f,
                    "cache line size {l} must be a power of two from 8 to 4096"
                )
            }
            DeviceError::ZeroSegmentSize => f.write_str("maximum segment size must not be zero"),
            DeviceError::BadSegmentBoundary(m) => {
                write!(f, "segment boundary mask {m:#x} must be of the form 2^n-1")
            }
            DeviceError::BadMinAlignMask(m) => write!(
                f,
                "min_align_mask {m:#x} must be of the form 2^n-1 and below 64 KiB"
            ),
            DeviceError::BadDmaBits(b) => {
                write!(f, "{b} DMA address bits: a device has 1 to 64")
            }
        }
    }
}

impl core::error::Error for DeviceError {}

/// Whether `m` is `2^n - 1` for some `n` (zero included).
const fn is_low_mask(m: u64) -> bool {
    m & m.wrapping_add(1) == 0
}

impl Device {
    /// Starts a description with defaults: 64-bit mask, non-coherent, 64-byte lines, no
    /// `min_align_mask`, 64 KiB segments, no segment boundary, trusted, no forced bouncing.
    pub fn builder(id: DeviceId, name: &'static str) -> DeviceBuilder {
        DeviceBuilder {
            dev: Device {
                id,
                name,
                dma_mask: u64::MAX,
                coherent: false,
                cache_line: 64,
                min_align_mask: 0,
                max_segment_size: 64 * 1024,
                seg_boundary_mask: u64::MAX,
                trusted: true,
                force_bounce: false,
                bounce_pool: BouncePool::Swiotlb,
            },
            bad_bits: None,
        }
    }

    /// The device's identifier.
    #[inline]
    pub fn id(&self) -> DeviceId {
        self.id
    }
    /// A human-readable name for reports.
    #[inline]
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Highest address the device can emit, as a mask (`2^bits - 1`).
    #[inline]
    pub fn dma_mask(&self) -> u64 {
        self.dma_mask
    }
    /// Whether the device snoops CPU caches (no maintenance, no alignment bounce needed).
    #[inline]
    pub fn is_coherent(&self) -> bool {
        self.coherent
    }
    /// The cache line size whose sharing must be avoided for inbound transfers.
    #[inline]
    pub fn cache_line(&self) -> u64 {
        self.cache_line
    }
    /// Low address bits a bounced address must keep from the original.
    #[inline]
    pub fn min_align_mask(&self) -> u64 {
        self.min_align_mask
    }
    /// Largest segment the device accepts in a scatter-gather list.
    #[inline]
    pub fn max_segment_size(&self) -> u64 {
        self.max_segment_size
    }
    /// No segment may cross a `seg_boundary_mask + 1` boundary.
    #[inline]
    pub fn seg_boundary_mask(&self) -> u64 {
        self.seg_boundary_mask
    }
    /// Whether the device may see neighbouring data in the same IOMMU page.
    #[inline]
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }
    /// Whether every mapping must be bounced (confidential guests: the device may only see
    /// shared memory).
    #[inline]
    pub fn force_bounce(&self) -> bool {
        self.force_bounce
    }

    /// Which pool the device's bounces come from.
    #[inline]
    pub fn bounce_pool(&self) -> BouncePool {
        self.bounce_pool
    }

    /// Whether the device can emit every address of `[addr, addr + len)`.
    #[inline]
    pub fn can_address(&self, addr: u64, len: u64) -> bool {
        len != 0
            && addr <= self.dma_mask
            && match addr.checked_add(len - 1) {
                Some(last) => last <= self.dma_mask,
                None => false,
            }
    }
}

/// Builds a [`Device`]; see [`Device::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct DeviceBuilder {
    dev: Device,
    /// A `dma_bits` count above 64, reported by `build`.
    bad_bits: Option<u32>,
}

impl DeviceBuilder {
    /// The device can address `bits` address bits (1..=64). `build` rejects 0 as
    /// [`DeviceError::BadDmaMask`] and more than 64 as [`DeviceError::BadDmaBits`].
    pub fn dma_bits(mut self, bits: u32) -> Self {
        self.bad_bits = None;
        self.dev.dma_mask = match bits {
            0 => 0,
            64 => u64::MAX,
            65.. if crate::reintroduce::active(
                crate::reintroduce::Defect::DmaBitsAbove64Accepted,
            ) =>
            {
                u64::MAX
            }
            65.. => {
                self.bad_bits = Some(bits);
                u64::MAX
            }
            b => (1u64 << b) - 1,
        };
        self
    }
    /// Sets the DMA mask directly (validated by `build`); replaces an earlier `dma_bits`.
    pub fn dma_mask(mut self, mask: u64) -> Self {
        self.bad_bits = None;
        self.dev.dma_mask = mask;
        self
    }
    /// Whether the device snoops the CPU caches.
    pub fn coherent(mut self, coherent: bool) -> Self {
        self.dev.coherent = coherent;
        self
    }
    /// The cache line size to respect (power of two, 8..=4096).
    pub fn cache_line(mut self, bytes: u64) -> Self {
        self.dev.cache_line = bytes;
        self
    }
    /// Low address bits a bounce must preserve (`2^n - 1`).
    pub fn min_align_mask(mut self, mask: u64) -> Self {
        self.dev.min_align_mask = mask;
        self
    }
    /// Largest scatter-gather segment (non-zero).
    pub fn max_segment_size(mut self, bytes: u64) -> Self {
        self.dev.max_segment_size = bytes;
        self
    }
    /// Segment boundary mask (`2^n - 1`).
    pub fn seg_boundary_mask(mut self, mask: u64) -> Self {
        self.dev.seg_boundary_mask = mask;
        self
    }
    /// Whether the device is trusted (internal) or not (external, hot-pluggable).
    pub fn trusted(mut self, trusted: bool) -> Self {
        self.dev.trusted = trusted;
        self
    }
    /// Bounce every mapping (confidential guests).
    pub fn force_bounce(mut self, force: bool) -> Self {
        self.dev.force_bounce = force;
        self
    }

    /// Which pool the device's bounces come from.
    pub fn bounce_pool(mut self, pool: BouncePool) -> Self {
        self.dev.bounce_pool = pool;
        self
    }

    /// Validates the description.
    ///
    /// # Errors
    /// A [`DeviceError`] naming the first property that violates the invariants listed on
    /// [`Device`].
    pub fn build(self) -> Result<Device, DeviceError> {
        if let Some(bits) = self.bad_bits {
            return Err(DeviceError::BadDmaBits(bits));
        }
        let d = self.dev;
        if d.dma_mask == 0 || !is_low_mask(d.dma_mask) {
            return Err(DeviceError::BadDmaMask(d.dma_mask));
        }
        if !d.cache_line.is_power_of_two() || !(8..=4096).contains(&d.cache_line) {
            return Err(DeviceError::BadCacheLine(d.cache_line));
        }
        if d.max_segment_size == 0 {
            return Err(DeviceError::ZeroSegmentSize);
        }
        if !is_low_mask(d.seg_boundary_mask) {
            return Err(DeviceError::BadSegmentBoundary(d.seg_boundary_mask));
        }
        if !is_low_mask(d.min_align_mask) || d.min_align_mask >= 64 * 1024 {
            return Err(DeviceError::BadMinAlignMask(d.min_align_mask));
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> DeviceBuilder {
        Device::builder(DeviceId(1), "t")
    }

    #[test]
    fn defaults_are_valid() {
        let d = b().build().unwrap();
        assert_eq!(d.dma_mask(), u64::MAX);
        assert!(!d.is_coherent());
        assert_eq!(d.cache_line(), 64);
    }

    #[test]
    fn rejects_bad_descriptions() {
        assert_eq!(b().dma_bits(0).build(), Err(DeviceError::BadDmaMask(0)));
        assert_eq!(
            b().dma_mask(0xff00).build(),
            Err(DeviceError::BadDmaMask(0xff00))
        );
        assert_eq!(
            b().cache_line(48).build(),
            Err(DeviceError::BadCacheLine(48))
        );
        assert_eq!(b().cache_line(4).build(), Err(DeviceError::BadCacheLine(4)));
        assert_eq!(
            b().max_segment_size(0).build(),
            Err(DeviceError::ZeroSegmentSize)
        );
        assert_eq!(
            b().seg_boundary_mask(0x1000).build(),
            Err(DeviceError::BadSegmentBoundary(0x1000))
        );
        assert_eq!(
            b().min_align_mask(0x10000 - 1 + 0x10000).build(),
            Err(DeviceError::BadMinAlignMask(0x1ffff))
        );
    }

    #[test]
    fn addressing() {
        let d = b().dma_bits(32).build().unwrap();
        assert!(d.can_address(0xffff_fff0, 16));
        assert!(!d.can_address(0xffff_fff0, 17));
        assert!(!d.can_address(0, 0));
        assert!(!d.can_address(u64::MAX, 2));
        assert_eq!(b().dma_bits(64).build().unwrap().dma_mask(), u64::MAX);
    }

    #[test]
    fn more_than_64_address_bits_are_refused() {
        for bits in [65, 128, u32::MAX] {
            assert_eq!(
                b().dma_bits(bits).build(),
                Err(DeviceError::BadDmaBits(bits))
            );
        }
        assert_eq!(b().dma_bits(1).build().unwrap().dma_mask(), 1);
        // The last setting wins, as for every other property.
        assert_eq!(
            b().dma_bits(65).dma_bits(40).build().unwrap().dma_mask(),
            (1 << 40) - 1
        );
        assert!(alloc::format!("{}", DeviceError::BadDmaBits(65)).contains("65"));
    }
}
