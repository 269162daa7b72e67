//! What the mapping layer must know about a device.
//!
//! Every decision the layer makes (bounce or not, which maintenance, where a bounce may sit)
//! depends on a handful of device properties. They are gathered here and validated once, at
//! construction, so the map path can trust them.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};
use crate::bus_ranges::{BusRangeError, BusRanges};

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
/// `2^n - 1` (possibly zero) and smaller than 64 KiB; the coherent mask is a mask of the
/// same form; the bus windows ([`BusRanges`]) neither overflow nor overlap.
///
/// Masks and the bus limit are judged on **bus** addresses (what the device emits), which
/// differ from physical ones when the device has bus windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    id: DeviceId,
    name: &'static str,
    dma_mask: u64,
    coherent_dma_mask: u64,
    bus_dma_limit: u64,
    /// `dma_mask.min(bus_dma_limit)`, derived by [`DeviceBuilder::build`] (the map path
    /// reads it on every mapping).
    streaming_limit: u64,
    bus_ranges: BusRanges,
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
    /// The coherent DMA mask is zero or not of the form `2^n - 1`.
    BadCoherentDmaMask(u64),
    /// [`DeviceBuilder::coherent_dma_bits`] was given more than 64 bits.
    BadCoherentDmaBits(u32),
    /// The bus DMA limit is zero.
    ZeroBusDmaLimit,
    /// A bus window ([`DeviceBuilder::dma_range`]) was refused.
    BadDmaRange {
        /// Its first CPU physical address.
        cpu: PhysAddr,
        /// Its first bus address.
        dma: DmaAddr,
        /// Its length.
        size: u64,
        /// What is wrong with it.
        error: BusRangeError,
    },
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
            DeviceError::BadCoherentDmaMask(m) => write!(
                f,
                "coherent DMA mask {m:#x} must be non-zero and of the form 2^n-1"
            ),
            DeviceError::BadCoherentDmaBits(b) => {
                write!(f, "{b} coherent DMA address bits: a device has 1 to 64")
            }
            DeviceError::ZeroBusDmaLimit => f.write_str("bus DMA limit must not be zero"),
            DeviceError::BadDmaRange {
                cpu,
                dma,
                size,
                error,
            } => write!(
                f,
                "DMA range of {size:#x} bytes from CPU {cpu} to bus {dma}: {error}"
            ),
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
                coherent_dma_mask: u64::MAX,
                bus_dma_limit: u64::MAX,
                streaming_limit: u64::MAX,
                bus_ranges: BusRanges::IDENTITY,
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
            coherent_mask: None,
            bad_range: None,
        }
    }

    /// A builder holding this description, to derive a device from it (the same device
    /// with [`DeviceBuilder::force_bounce`], say). A coherent mask that equals the DMA
    /// mask follows a later `dma_bits`/`dma_mask` as in a fresh builder; one set apart
    /// stays. Nothing else changes until a setter is called.
    pub fn to_builder(&self) -> DeviceBuilder {
        let apart = self.coherent_dma_mask != self.dma_mask;
        DeviceBuilder {
            dev: self.clone(),
            bad_bits: None,
            coherent_mask: apart.then_some(Ok(self.coherent_dma_mask)),
            bad_range: None,
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

    /// The same device with its bounces in `pool` (a machine that bounces through the
    /// coherent pool instead of SWIOTLB); every other property is kept.
    pub fn with_bounce_pool(&self, pool: BouncePool) -> Device {
        Device {
            bounce_pool: pool,
            ..self.clone()
        }
    }

    /// The mask for coherent allocations (Linux `coherent_dma_mask`); the streaming mask
    /// unless set apart.
    #[inline]
    pub fn coherent_dma_mask(&self) -> u64 {
        self.coherent_dma_mask
    }
    /// The highest bus address the interconnect carries for the device, whatever its
    /// masks (Linux `bus_dma_limit`); `u64::MAX` when there is no such limit.
    #[inline]
    pub fn bus_dma_limit(&self) -> u64 {
        self.bus_dma_limit
    }
    /// The windows through which the device sees memory (empty: identity).
    #[inline]
    pub fn bus_ranges(&self) -> &BusRanges {
        &self.bus_ranges
    }
    /// The highest bus address a streaming mapping may use: the lower of the DMA mask
    /// and the bus limit.
    #[inline]
    pub fn streaming_limit(&self) -> u64 {
        self.streaming_limit
    }
    /// The highest bus address a coherent allocation may use: the lower of the coherent
    /// mask and the bus limit.
    #[inline]
    pub fn coherent_limit(&self) -> u64 {
        self.coherent_dma_mask.min(self.bus_dma_limit)
    }

    /// Whether the device can emit every bus address of `[addr, addr + len)` for a
    /// streaming mapping: none is above [`Self::streaming_limit`].
    #[inline]
    pub fn can_address(&self, addr: u64, len: u64) -> bool {
        fits(addr, len, self.streaming_limit())
    }

    /// Whether the device can emit every bus address of `[addr, addr + len)` for a
    /// coherent allocation: none is above [`Self::coherent_limit`].
    #[inline]
    pub fn can_address_coherent(&self, addr: u64, len: u64) -> bool {
        fits(addr, len, self.coherent_limit())
    }

    /// The same device seeing memory at its physical addresses (its bus windows dropped).
    #[cfg(feature = "hazard-controls")]
    pub(crate) fn without_bus_ranges(&self) -> Device {
        Device {
            bus_ranges: BusRanges::IDENTITY,
            ..self.clone()
        }
    }
}

/// Whether `[addr, addr + len)` is non-empty and ends at or below `limit`.
#[inline]
const fn fits(addr: u64, len: u64, limit: u64) -> bool {
    len != 0
        && addr <= limit
        && match addr.checked_add(len - 1) {
            Some(last) => last <= limit,
            None => false,
        }
}

/// Builds a [`Device`]; see [`Device::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct DeviceBuilder {
    dev: Device,
    /// A `dma_bits` count above 64, reported by `build`.
    bad_bits: Option<u32>,
    /// The coherent mask when set apart from the streaming one: the mask, or a bit count
    /// above 64 (reported by `build`).
    coherent_mask: Option<Result<u64, u32>>,
    /// The first refused bus window, reported by `build`.
    bad_range: Option<DeviceError>,
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

    /// The mask for coherent allocations, as address bits (1..=64); without it the
    /// coherent mask is the streaming mask. `build` rejects 0 as
    /// [`DeviceError::BadCoherentDmaMask`] and more than 64 as
    /// [`DeviceError::BadCoherentDmaBits`].
    pub fn coherent_dma_bits(mut self, bits: u32) -> Self {
        self.coherent_mask = Some(match bits {
            0 => Ok(0),
            64 => Ok(u64::MAX),
            65.. => Err(bits),
            b => Ok((1u64 << b) - 1),
        });
        self
    }
    /// Sets the coherent mask directly (validated by `build`); replaces an earlier
    /// `coherent_dma_bits`.
    pub fn coherent_dma_mask(mut self, mask: u64) -> Self {
        self.coherent_mask = Some(Ok(mask));
        self
    }
    /// The highest bus address the interconnect carries for the device (non-zero); masks
    /// above it are capped by it.
    pub fn bus_dma_limit(mut self, limit: u64) -> Self {
        self.dev.bus_dma_limit = limit;
        self
    }
    /// Adds a bus window: the device reaches CPU physical `[cpu, cpu + size)` at bus
    /// addresses `[dma, dma + size)`. With no window the device sees memory at its physical
    /// addresses; with windows it reaches only the memory they cover. `build` reports the
    /// first refused window as [`DeviceError::BadDmaRange`] (empty, overflowing,
    /// overlapping an earlier one, or more than [`crate::bus_ranges::MAX_BUS_RANGES`]).
    pub fn dma_range(mut self, cpu: PhysAddr, dma: DmaAddr, size: u64) -> Self {
        if let Err(error) = self.dev.bus_ranges.push(cpu, dma, size) {
            self.bad_range.get_or_insert(DeviceError::BadDmaRange {
                cpu,
                dma,
                size,
                error,
            });
        }
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
        if let Some(e) = self.bad_range {
            return Err(e);
        }
        let mut d = self.dev;
        if d.dma_mask == 0 || !is_low_mask(d.dma_mask) {
            return Err(DeviceError::BadDmaMask(d.dma_mask));
        }
        d.coherent_dma_mask = match self.coherent_mask {
            None => d.dma_mask,
            Some(Err(bits)) => return Err(DeviceError::BadCoherentDmaBits(bits)),
            Some(Ok(m)) if m == 0 || !is_low_mask(m) => {
                return Err(DeviceError::BadCoherentDmaMask(m))
            }
            Some(Ok(m)) => m,
        };
        if d.bus_dma_limit == 0 {
            return Err(DeviceError::ZeroBusDmaLimit);
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
        d.streaming_limit = d.dma_mask.min(d.bus_dma_limit);
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
    fn to_builder_derives_the_same_device() {
        let d = b()
            .dma_bits(40)
            .coherent_dma_bits(32)
            .cache_line(128)
            .min_align_mask(0xfff)
            .dma_range(PhysAddr::new(0x8000_0000), DmaAddr::new(0), 0x1000_0000)
            .build()
            .unwrap();
        assert_eq!(d.to_builder().build(), Ok(d.clone()));
        let forced = d.to_builder().force_bounce(true).build().unwrap();
        assert!(forced.force_bounce() && !d.force_bounce());
        assert_eq!((forced.id(), forced.name()), (d.id(), d.name()));
        assert_eq!(forced.bus_ranges(), d.bus_ranges());
        assert_eq!(forced.coherent_dma_mask(), (1 << 32) - 1);
        // A coherent mask that followed the DMA mask keeps following it.
        let plain = b().dma_bits(40).build().unwrap();
        let narrowed = plain.to_builder().dma_bits(32).build().unwrap();
        assert_eq!(narrowed.coherent_dma_mask(), (1 << 32) - 1);
        // A derived description is validated again.
        assert_eq!(
            d.to_builder().cache_line(3).build(),
            Err(DeviceError::BadCacheLine(3))
        );
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

    #[test]
    fn coherent_mask_and_bus_limit() {
        let d = b().dma_bits(40).build().unwrap();
        assert_eq!(d.coherent_dma_mask(), (1 << 40) - 1);
        assert_eq!(d.bus_dma_limit(), u64::MAX);
        let d = b()
            .dma_bits(40)
            .coherent_dma_bits(32)
            .bus_dma_limit(0x3_ffff_ffff)
            .build()
            .unwrap();
        assert_eq!(d.coherent_limit(), 0xffff_ffff);
        assert_eq!(d.streaming_limit(), 0x3_ffff_ffff);
        // Derived again by every build: a device made from this one follows its new mask.
        let narrower = d.to_builder().dma_bits(32).build().unwrap();
        assert_eq!(narrower.streaming_limit(), 0xffff_ffff);
        let unlimited = d.to_builder().bus_dma_limit(u64::MAX).build().unwrap();
        assert_eq!(unlimited.streaming_limit(), (1 << 40) - 1);
        assert!(d.can_address(0x3_ffff_fff0, 16));
        assert!(!d.can_address(0x3_ffff_fff0, 17));
        assert!(!d.can_address_coherent(0xffff_fff0, 17));
        assert!(d.can_address_coherent(0xffff_fff0, 16));
        assert_eq!(
            b().coherent_dma_mask(0xf0).build(),
            Err(DeviceError::BadCoherentDmaMask(0xf0))
        );
        assert_eq!(
            b().coherent_dma_bits(0).build(),
            Err(DeviceError::BadCoherentDmaMask(0))
        );
        assert_eq!(
            b().coherent_dma_bits(65).build(),
            Err(DeviceError::BadCoherentDmaBits(65))
        );
        assert_eq!(
            b().bus_dma_limit(0).build(),
            Err(DeviceError::ZeroBusDmaLimit)
        );
    }

    #[test]
    fn bus_windows_are_validated_by_build() {
        let (c, d) = (PhysAddr::new(0x8000_0000), DmaAddr::new(0));
        let dev = b().dma_range(c, d, 0x4000_0000).build().unwrap();
        assert_eq!(dev.bus_ranges().entries().len(), 1);
        let e = b()
            .dma_range(c, d, 0x4000_0000)
            .dma_range(PhysAddr::new(0), DmaAddr::new(0x1000), 0x1000)
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            DeviceError::BadDmaRange {
                cpu: PhysAddr::new(0),
                dma: DmaAddr::new(0x1000),
                size: 0x1000,
                error: BusRangeError::Overlap,
            }
        );
        assert!(alloc::format!("{e}").contains("overlaps"));
        assert!(matches!(
            b().dma_range(c, d, 0).build(),
            Err(DeviceError::BadDmaRange {
                error: BusRangeError::ZeroSize,
                ..
            })
        ));
    }
}
