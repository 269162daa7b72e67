//! The kmalloc minimum alignment, and when it must be the cache line.
//!
//! Small alignment is safe only if something repairs the DMA mappings it makes unsafe: a
//! non-coherent device writing into a buffer that shares a cache line with a neighbour
//! object corrupts the neighbour unless the mapping is bounced. So:
//! - no non-coherent device: nothing to repair, objects stay 8-byte aligned;
//! - non-coherent devices and a bounce pool: misaligned mappings are bounced, objects stay
//!   8-byte aligned;
//! - non-coherent devices and no bounce pool: nothing can repair a shared line, so every
//!   object must own its lines and the minimum alignment is raised to the line size (the
//!   fallback the seed discussion settled on for machines without a bounce pool).

use crate::error::MemError;
use dmakit::size_class::is_valid_min_align;
use dmakit::Device;

/// The smallest minimum alignment: every class is a multiple of 8.
pub const SMALL_MIN_ALIGN: u64 = 8;

/// A validated minimum object alignment together with the cache line size that
/// DMA-marked objects are aligned to.
///
/// Invariant: both are powers of two, `8 <= min_align <= line <= 4096`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinAlignPolicy {
    min_align: u64,
    line: u64,
}

fn check_line(line: u64) -> Result<(), MemError> {
    if is_valid_min_align(line) {
        Ok(())
    } else {
        Err(MemError::BadCacheLine(line))
    }
}

impl MinAlignPolicy {
    /// The automatic choice: the minimum alignment is `line` exactly when
    /// `has_noncoherent_device && !has_bounce_pool`, and 8 otherwise.
    ///
    /// # Errors
    /// [`MemError::BadCacheLine`] unless `line` is a power of two from 8 to 4096.
    pub fn auto(
        has_noncoherent_device: bool,
        has_bounce_pool: bool,
        line: u64,
    ) -> Result<Self, MemError> {
        check_line(line)?;
        let min_align = if has_noncoherent_device && !has_bounce_pool {
            line
        } else {
            SMALL_MIN_ALIGN
        };
        Ok(Self { min_align, line })
    }

    /// [`MinAlignPolicy::auto`] for a set of devices: non-coherent if any device is, and the
    /// line is the largest of `cpu_line` and the devices' own line sizes.
    ///
    /// # Errors
    /// [`MemError::BadCacheLine`] if `cpu_line` is not a power of two from 8 to 4096.
    pub fn for_devices(
        devices: &[Device],
        has_bounce_pool: bool,
        cpu_line: u64,
    ) -> Result<Self, MemError> {
        check_line(cpu_line)?;
        let line = devices
            .iter()
            .map(Device::cache_line)
            .fold(cpu_line, u64::max);
        let noncoherent = devices.iter().any(|d| !d.is_coherent());
        Self::auto(noncoherent, has_bounce_pool, line)
    }

    /// A fixed minimum alignment.
    ///
    /// # Errors
    /// [`MemError::BadCacheLine`] for a bad `line`; [`MemError::BadAlignment`] unless
    /// `min_align` is a power of two from 8 to `line`.
    pub fn fixed(min_align: u64, line: u64) -> Result<Self, MemError> {
        check_line(line)?;
        if !is_valid_min_align(min_align) || min_align > line {
            return Err(MemError::BadAlignment(min_align));
        }
        Ok(Self { min_align, line })
    }

    /// The alignment of every object.
    pub fn min_align(&self) -> u64 {
        self.min_align
    }

    /// The cache line size: the alignment of DMA-marked objects.
    pub fn line(&self) -> u64 {
        self.line
    }

    /// Whether ordinary objects own whole cache lines under this policy.
    pub fn is_line_aligned(&self) -> bool {
        self.min_align == self.line
    }
}
