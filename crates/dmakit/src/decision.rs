//! The bounce decision: does this mapping need a bounce buffer, and why?
//!
//! One small function per kind of path, [`bounce_reason`] (direct) and
//! [`iommu_bounce_reason`], so the rule that makes DMA safe can be read in one
//! sitting. A mapping (or one scatter-gather segment) is bounced when
//!
//! - the device is marked force-bounce (confidential guests share only bounce memory);
//! - the device cannot reach it in place: no bus window of the device holds the whole
//!   range, or its last bus address is above the device's DMA mask or bus limit (judged on
//!   the bus address, [`crate::translation`]);
//! - the device does not snoop caches, the device will write the buffer, and the first or
//!   last cache line of the range holds bytes outside it (`(start | end) & (line - 1) != 0`).
//!   Outbound transfers never need this bounce: cleaning a shared line is harmless.
//!
//! Behind an IOMMU ([`iommu_bounce_reason`]) the mask rule gives way to one of its own: an
//! untrusted device whose buffer does not fill whole IOMMU granules is bounced, since it
//! could reach every byte of a granule it is given.
//!
//! The alignment rule has three variants, kept side by side for comparison in the simulator:
//! [`AlignmentPolicy::Exact`] (the default) checks the real address range;
//! [`AlignmentPolicy::SizeOnly`] is Linux 6.5's heuristic, which looks only at the size
//! and so misses a small buffer at an odd offset inside a larger structure;
//! [`AlignmentPolicy::Never`] does no alignment bouncing at all (the control that shows the
//! hazard).

use crate::addr::{DmaAddr, PhysRange};
use crate::device::Device;
use crate::direction::Direction;
use crate::platform::PAGE_SIZE;
use crate::size_class::class_for;
use crate::translation::bus_within;

/// How the alignment rule is applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AlignmentPolicy {
    /// Bounce exactly the inbound mappings whose first or last line is shared.
    #[default]
    Exact,
    /// Linux 6.5's `dma_kmalloc_needs_bounce()`: bounce inbound mappings shorter than two
    /// lines whose kmalloc size class is not a multiple of the line. Ignores the address.
    SizeOnly,
    /// Never bounce for alignment. Unsafe with small kmalloc alignment; for comparison only.
    Never,
}

impl AlignmentPolicy {
    /// Whether this rule bounces `range` mapped by `dev` in `dir` for alignment, on a CPU
    /// whose cache line is `cpu_line` bytes: the rule the mapper applies (the third bullet
    /// of the module docs), without the mask, force and untrusted rules. For tools that
    /// judge recorded mappings (a trace) the way the mapper would.
    pub fn bounces(self, dev: &Device, range: PhysRange, dir: Direction, cpu_line: u64) -> bool {
        needs_alignment_bounce(dev, range, dir, self, cpu_line)
    }
}

/// Why a mapping is bounced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BounceReason {
    /// The device is marked force-bounce.
    Forced,
    /// The device cannot reach the buffer in place: part of it is above the device's DMA
    /// mask or bus limit, or outside its bus windows.
    AboveMask,
    /// An inbound mapping on a non-coherent device shares a cache line with other data.
    Misaligned,
    /// An untrusted device would see other data in the same IOMMU page.
    Untrusted,
}

impl BounceReason {
    /// Every reason, in a stable order (for statistics tables).
    pub const ALL: [BounceReason; 4] = [
        BounceReason::Forced,
        BounceReason::AboveMask,
        BounceReason::Misaligned,
        BounceReason::Untrusted,
    ];

    /// A short lowercase name for reports (`forced`, `above-mask`, `misaligned`, `untrusted`).
    pub const fn name(self) -> &'static str {
        match self {
            BounceReason::Forced => "forced",
            BounceReason::AboveMask => "above-mask",
            BounceReason::Misaligned => "misaligned",
            BounceReason::Untrusted => "untrusted",
        }
    }
}

/// Decides whether `range` mapped by `dev` in `dir` must be bounced on the direct path.
///
/// `cpu_line` is the CPU's cache line size; the larger of it and the device's line is the
/// unit that must not be shared. Returns the bus address at which the device reaches the
/// range in place when no bounce is needed, else the first reason that applies, in the
/// order forced, above mask (out of reach), misaligned.
#[inline]
pub(crate) fn direct_or_bounce(
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    policy: AlignmentPolicy,
    cpu_line: u64,
) -> Result<DmaAddr, BounceReason> {
    if dev.force_bounce() {
        return Err(BounceReason::Forced);
    }
    let Some(dma) = bus_within(dev, range, dev.streaming_limit()) else {
        return Err(BounceReason::AboveMask);
    };
    if needs_alignment_bounce(dev, range, dir, policy, cpu_line) {
        return Err(BounceReason::Misaligned);
    }
    Ok(dma)
}

/// Decides whether `range` mapped by `dev` in `dir` must be bounced on the IOMMU path,
/// whose page tables map whole granules of `granule` bytes.
///
/// The mask does not matter there (the IOMMU translates), but every byte of a mapped
/// granule is reachable: an untrusted device whose buffer does not fill whole granules is
/// bounced so it never sees a neighbour's bytes. Returns the first reason that applies, in
/// the order forced, untrusted, misaligned (the alignment rule as on the direct path).
#[inline]
pub(crate) fn iommu_bounce_reason(
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    policy: AlignmentPolicy,
    cpu_line: u64,
    granule: u64,
) -> Option<BounceReason> {
    if dev.force_bounce() {
        Some(BounceReason::Forced)
    } else if !dev.is_trusted() && !range.is_aligned(granule) {
        Some(BounceReason::Untrusted)
    } else if needs_alignment_bounce(dev, range, dir, policy, cpu_line) {
        Some(BounceReason::Misaligned)
    } else {
        None
    }
}

/// The alignment rule alone (the third bullet of the module docs).
#[inline]
pub(crate) fn needs_alignment_bounce(
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    policy: AlignmentPolicy,
    cpu_line: u64,
) -> bool {
    if dev.is_coherent() || !dir.device_writes() {
        return false;
    }
    let line = dev.cache_line().max(cpu_line);
    match policy {
        AlignmentPolicy::Exact => !range.is_aligned(line),
        AlignmentPolicy::SizeOnly => {
            let size = range.len();
            size < 2 * line && kmalloc_size_roundup(size) % line != 0
        }
        AlignmentPolicy::Never => false,
    }
}

/// The size class an 8-byte-aligned kmalloc gives a request of `size` bytes (Linux's
/// `kmalloc_size_roundup()` with the smallest minimum alignment), which is all the size-only
/// heuristic looks at; requests beyond the largest class take whole pages.
fn kmalloc_size_roundup(size: u64) -> u64 {
    class_for(size, 8).unwrap_or_else(|| size.next_multiple_of(PAGE_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;
    use crate::device::DeviceId;

    /// The reason alone, as the tests below judge it.
    fn bounce_reason(
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        policy: AlignmentPolicy,
        cpu_line: u64,
    ) -> Option<BounceReason> {
        direct_or_bounce(dev, range, dir, policy, cpu_line).err()
    }

    #[test]
    fn reach_is_judged_on_the_bus_address() {
        // Physical 0x1_0000_0000.. is bus 0x1000_0000..: a 32-bit device reaches it in
        // place, and nothing outside the window.
        let d = Device::builder(DeviceId(0), "win")
            .dma_bits(32)
            .coherent(true)
            .dma_range(
                PhysAddr::new(0x1_0000_0000),
                DmaAddr::new(0x1000_0000),
                0x1000,
            )
            .build()
            .unwrap();
        let direct = direct_or_bounce(
            &d,
            r(0x1_0000_0100, 64),
            Direction::FromDevice,
            AlignmentPolicy::Exact,
            64,
        );
        assert_eq!(direct, Ok(DmaAddr::new(0x1000_0100)));
        for (a, l) in [(0x1000, 64), (0x1_0000_0fc0, 128)] {
            assert_eq!(
                bounce_reason(
                    &d,
                    r(a, l),
                    Direction::FromDevice,
                    AlignmentPolicy::Exact,
                    64
                ),
                Some(BounceReason::AboveMask)
            );
        }
        // The bus limit caps the mask.
        let limited = Device::builder(DeviceId(0), "lim")
            .coherent(true)
            .bus_dma_limit(0xffff)
            .build()
            .unwrap();
        assert_eq!(
            bounce_reason(
                &limited,
                r(0xfff0, 32),
                Direction::ToDevice,
                AlignmentPolicy::Exact,
                64
            ),
            Some(BounceReason::AboveMask)
        );
    }

    fn dev() -> Device {
        Device::builder(DeviceId(0), "d")
            .cache_line(128)
            .dma_bits(32)
            .build()
            .unwrap()
    }
    fn r(a: u64, l: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(a), l).unwrap()
    }
    use Direction::*;

    #[test]
    fn exact_rule_looks_at_both_ends() {
        let d = dev();
        let p = AlignmentPolicy::Exact;
        assert_eq!(bounce_reason(&d, r(0x1000, 128), FromDevice, p, 64), None);
        assert_eq!(
            bounce_reason(&d, r(0x1008, 120), FromDevice, p, 64),
            Some(BounceReason::Misaligned)
        );
        assert_eq!(
            bounce_reason(&d, r(0x1000, 120), Bidirectional, p, 64),
            Some(BounceReason::Misaligned)
        );
        // Outbound never bounces for alignment.
        assert_eq!(bounce_reason(&d, r(0x1008, 13), ToDevice, p, 64), None);
        // The CPU's larger line wins over the device's smaller one.
        assert_eq!(
            bounce_reason(&d, r(0x1080, 128), FromDevice, p, 256),
            Some(BounceReason::Misaligned)
        );
    }

    #[test]
    fn coherent_devices_never_bounce_for_alignment() {
        let d = Device::builder(DeviceId(0), "c")
            .coherent(true)
            .build()
            .unwrap();
        assert_eq!(
            bounce_reason(&d, r(0x1003, 5), FromDevice, AlignmentPolicy::Exact, 64),
            None
        );
    }

    #[test]
    fn mask_and_force_come_first() {
        let d = dev();
        assert_eq!(
            bounce_reason(
                &d,
                r(0xffff_ff00, 0x200),
                ToDevice,
                AlignmentPolicy::Never,
                64
            ),
            Some(BounceReason::AboveMask)
        );
        let f = Device::builder(DeviceId(0), "f")
            .force_bounce(true)
            .build()
            .unwrap();
        assert_eq!(
            bounce_reason(&f, r(0x1000, 4096), ToDevice, AlignmentPolicy::Never, 64),
            Some(BounceReason::Forced)
        );
    }

    #[test]
    fn size_only_misses_an_inner_buffer_exact_catches() {
        let d = dev();
        // A 128-byte buffer at offset 0x48 inside a larger structure: size-only sees a
        // line-sized request and lets it through; the exact rule sees both shared lines.
        let inner = r(0x2048, 128);
        assert!(!needs_alignment_bounce(
            &d,
            inner,
            FromDevice,
            AlignmentPolicy::SizeOnly,
            64
        ));
        assert!(needs_alignment_bounce(
            &d,
            inner,
            FromDevice,
            AlignmentPolicy::Exact,
            64
        ));
        // Small odd sizes bounce under size-only wherever they are.
        assert!(needs_alignment_bounce(
            &d,
            r(0x2000, 13),
            FromDevice,
            AlignmentPolicy::SizeOnly,
            64
        ));
        // Large buffers never bounce under size-only.
        assert!(!needs_alignment_bounce(
            &d,
            r(0x2008, 4000),
            FromDevice,
            AlignmentPolicy::SizeOnly,
            64
        ));
        assert!(!needs_alignment_bounce(
            &d,
            inner,
            FromDevice,
            AlignmentPolicy::Never,
            64
        ));
    }
}
