//! Pool geometry: slot size, segment size and number of per-CPU areas.
//!
//! The geometry is validated once here so that the allocator can rely on it: slots are a
//! power of two of at least 64 bytes and a whole number of cache lines (so two bounces never
//! share a line), segments are a power of two of slots (so the slot allocator's class lists
//! cover every run a segment can hold), and there is at least one area.

use core::fmt;

use super::slots::MAX_ORDER;

/// Validated geometry of a [`Pool`](super::Pool).
///
/// Invariants: `slot_size` is a power of two in `64..=1 MiB` and a multiple of the largest
/// cache line given to the builder; `segment_slots` is a power of two in `1..=2^16`;
/// `areas` is in `1..=4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    slot_shift: u32,
    segment_order: u32,
    areas: usize,
    line_shift: u32,
    /// See [`PoolConfig::unit_shift`].
    unit_shift: u32,
    packing: bool,
}

/// Log2 of the line unit of slots of `2^slot_shift` bytes and lines of `2^line_shift`.
const fn unit_shift(slot_shift: u32, line_shift: u32) -> u32 {
    let fewest = slot_shift - MAX_SLOT_LINES.trailing_zeros();
    if line_shift > fewest {
        line_shift
    } else {
        fewest
    }
}

/// Why a pool geometry was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The cache line size is not a power of two.
    BadCacheLine(u64),
    /// The slot size is not a power of two in `64..=1 MiB`, or not a multiple of the cache
    /// line.
    BadSlotSize {
        /// Slot size asked for.
        slot_size: u64,
        /// Largest cache line it must be a multiple of.
        cache_line: u64,
    },
    /// The number of slots per segment is not a power of two in `1..=65536`.
    BadSegmentSlots(u64),
    /// The CPU or area count is zero or above 4096.
    BadAreaCount(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ConfigError::BadCacheLine(l) => write!(f, "cache line size {l} is not a power of two"),
            ConfigError::BadSlotSize {
                slot_size,
                cache_line,
            } => write!(
                f,
                "bounce slot size {slot_size} must be a power of two from 64 bytes to 1 MiB \
                 and a multiple of the {cache_line}-byte cache line"
            ),
            ConfigError::BadSegmentSlots(n) => write!(
                f,
                "slots per segment {n} must be a power of two from 1 to 65536"
            ),
            ConfigError::BadAreaCount(n) => {
                write!(f, "area count {n} must be between 1 and {MAX_AREAS}")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

/// Most areas a pool may have.
const MAX_AREAS: usize = 4096;
/// Largest slot size accepted.
const MAX_SLOT_SIZE: u64 = 1 << 20;

impl PoolConfig {
    /// Default slot size in bytes (as Linux SWIOTLB).
    pub(crate) const DEFAULT_SLOT_SIZE: u64 = 2048;
    /// Default number of slots per segment (as Linux SWIOTLB: 256 KiB segments).
    pub const DEFAULT_SEGMENT_SLOTS: u64 = 128;
    /// Default largest cache line in bytes.
    pub(crate) const DEFAULT_CACHE_LINE: u64 = 64;

    /// Starts a geometry with the defaults: 2 KiB slots, 128-slot segments, one CPU, 64-byte
    /// cache lines, packing on.
    pub fn builder() -> PoolConfigBuilder {
        PoolConfigBuilder {
            slot_size: Self::DEFAULT_SLOT_SIZE,
            segment_slots: Self::DEFAULT_SEGMENT_SLOTS,
            cpu_count: 1,
            areas: None,
            cache_line: Self::DEFAULT_CACHE_LINE,
            packing: true,
        }
    }

    /// Bytes per slot, the granularity of allocation (a power of two).
    #[inline]
    pub(crate) fn slot_size(&self) -> u64 {
        1 << self.slot_shift
    }

    /// Slots per segment (a power of two).
    #[inline]
    pub fn segment_slots(&self) -> u64 {
        1 << self.segment_order
    }

    /// Bytes per segment: the largest single allocation, and the unit regions are sized in.
    #[inline]
    pub fn segment_size(&self) -> u64 {
        1 << (self.slot_shift + self.segment_order)
    }

    /// Areas (independently locked parts) each region is split into, at most; a region with
    /// fewer segments gets one area per segment.
    #[inline]
    pub(crate) fn areas(&self) -> usize {
        self.areas
    }

    #[inline]
    pub(crate) fn slot_shift(&self) -> u32 {
        self.slot_shift
    }

    /// The largest cache line given to the builder (a power of two, at most a slot).
    #[inline]
    pub(crate) fn cache_line(&self) -> u64 {
        1 << self.line_shift
    }

    #[inline]
    pub(crate) fn segment_order(&self) -> u32 {
        self.segment_order
    }

    /// Log2 of the line unit: the granularity of packed bounces and of usage accounting.
    /// The unit is the largest cache line, or a 64th of a slot if that is larger, so a slot
    /// has at most [`MAX_SLOT_LINES`] units and its packed lines fit one bitmap word.
    #[inline]
    pub(crate) fn unit_shift(&self) -> u32 {
        self.unit_shift
    }

    /// Whether requests below a slot are packed into lines (see
    /// [`PoolConfigBuilder::packing`]).
    #[inline]
    pub(crate) fn packing(&self) -> bool {
        self.packing
    }

    /// Log2 of the line units per slot (at most 6).
    #[inline]
    pub(crate) fn lines_order(&self) -> u32 {
        self.slot_shift - self.unit_shift()
    }
}

/// Most line units a slot is cut into for packed bounces: one bit each in a `u64`.
pub(crate) const MAX_SLOT_LINES: u64 = 64;

impl Default for PoolConfig {
    /// 2 KiB slots, 128-slot segments, one area.
    fn default() -> Self {
        Self {
            slot_shift: Self::DEFAULT_SLOT_SIZE.trailing_zeros(),
            segment_order: Self::DEFAULT_SEGMENT_SLOTS.trailing_zeros(),
            areas: 1,
            line_shift: Self::DEFAULT_CACHE_LINE.trailing_zeros(),
            unit_shift: unit_shift(
                Self::DEFAULT_SLOT_SIZE.trailing_zeros(),
                Self::DEFAULT_CACHE_LINE.trailing_zeros(),
            ),
            packing: true,
        }
    }
}

/// Builds a [`PoolConfig`]; see [`PoolConfig::builder`].
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolConfigBuilder {
    slot_size: u64,
    segment_slots: u64,
    cpu_count: usize,
    areas: Option<usize>,
    cache_line: u64,
    packing: bool,
}

impl PoolConfigBuilder {
    /// Bytes per slot (power of two, at least 64, a multiple of the cache line).
    pub fn slot_size(mut self, bytes: u64) -> Self {
        self.slot_size = bytes;
        self
    }

    /// Slots per segment (power of two, at most 65536).
    pub fn segment_slots(mut self, slots: u64) -> Self {
        self.segment_slots = slots;
        self
    }

    /// Number of CPUs; the area count defaults to this rounded up to a power of two.
    pub fn cpu_count(mut self, cpus: usize) -> Self {
        self.cpu_count = cpus;
        self
    }

    /// Sets the area count directly instead of deriving it from the CPU count.
    pub fn areas(mut self, areas: usize) -> Self {
        self.areas = Some(areas);
        self
    }

    /// The largest cache line of the CPU and of any device using the pool; slots must be a
    /// multiple of it so no two bounces share a line.
    pub fn max_cache_line(mut self, bytes: u64) -> Self {
        self.cache_line = bytes;
        self
    }

    /// Whether requests smaller than a slot are packed into lines of a shared slot (the
    /// default; see [`Pool`](super::Pool)). Off, every allocation takes whole slots, as in
    /// Linux's SWIOTLB, and areas keep no packed-allocation records.
    pub fn packing(mut self, on: bool) -> Self {
        self.packing = on;
        self
    }

    /// Validates the geometry.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first value that violates the invariants on
    /// [`PoolConfig`].
    pub fn build(self) -> Result<PoolConfig, ConfigError> {
        if !self.cache_line.is_power_of_two() {
            return Err(ConfigError::BadCacheLine(self.cache_line));
        }
        let s = self.slot_size;
        if !s.is_power_of_two() || !(64..=MAX_SLOT_SIZE).contains(&s) || s % self.cache_line != 0 {
            return Err(ConfigError::BadSlotSize {
                slot_size: s,
                cache_line: self.cache_line,
            });
        }
        let n = self.segment_slots;
        if !n.is_power_of_two() || n > 1 << MAX_ORDER {
            return Err(ConfigError::BadSegmentSlots(n));
        }
        let areas = match self.areas {
            Some(a) => a,
            None => self.cpu_count.checked_next_power_of_two().unwrap_or(0),
        };
        if areas == 0 || areas > MAX_AREAS || self.cpu_count == 0 {
            return Err(ConfigError::BadAreaCount(if self.cpu_count == 0 {
                0
            } else {
                areas
            }));
        }
        Ok(PoolConfig {
            slot_shift: s.trailing_zeros(),
            segment_order: n.trailing_zeros(),
            areas,
            line_shift: self.cache_line.trailing_zeros(),
            unit_shift: unit_shift(s.trailing_zeros(), self.cache_line.trailing_zeros()),
            packing: self.packing,
        })
    }
}
