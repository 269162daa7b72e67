//! The policies a scenario is run under, and the bounce pool each gets.
//!
//! A policy is three choices: the kmalloc minimum alignment (the allocation side, a real
//! [`dmakit_mem::Kmalloc`] with [`MinAlignPolicy::fixed`], or the automatic rule of
//! [`dmakit_mem::AutoMinAlign`] over the mapper's devices), the mapping layer's alignment
//! rule ([`AlignmentPolicy`]), and the pool bounces go to (SWIOTLB, or a growable
//! coherent pool).

use std::fmt;

use dmakit::AlignmentPolicy;
use dmakit_mem::{MemError, MinAlignPolicy};

use crate::model::{MachineModel, PoolSize};

/// A policy under comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Policy {
    /// The old way: every kmalloc object aligned to the cache line, no alignment bouncing.
    MinAlign128,
    /// 8-byte kmalloc and Linux 6.5's size-only bounce test.
    LinuxSizeOnly,
    /// 8-byte kmalloc and dmakit's exact test (the default).
    Exact,
    /// 8-byte kmalloc and no alignment bouncing: the control that shows the hazard.
    NoBounce,
    /// 8-byte kmalloc and the exact test, bouncing through a small coherent pool grown by
    /// its refill worker instead of SWIOTLB (see [`crate::refill`]).
    CoherentPool,
    /// The exact test, with the machine's SWIOTLB, and kmalloc's minimum alignment chosen
    /// from the mapper's devices and pools ([`dmakit_mem::AutoMinAlign`]): line aligned
    /// while a non-coherent device has no pool, 8 bytes otherwise.
    Auto,
}

impl Policy {
    /// All of them, in report order.
    pub const ALL: [Policy; 6] = [
        Policy::MinAlign128,
        Policy::LinuxSizeOnly,
        Policy::Exact,
        Policy::NoBounce,
        Policy::CoherentPool,
        Policy::Auto,
    ];

    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Policy::MinAlign128 => "minalign128",
            Policy::LinuxSizeOnly => "linux-size-only",
            Policy::Exact => "exact",
            Policy::NoBounce => "no-bounce",
            Policy::CoherentPool => "coherent-pool",
            Policy::Auto => "auto",
        }
    }

    /// One line on what it is.
    pub const fn describe(self) -> &'static str {
        match self {
            Policy::MinAlign128 => "kmalloc aligned to the cache line, no alignment bouncing",
            Policy::LinuxSizeOnly => "8-byte kmalloc, Linux 6.5 size-only bounce test",
            Policy::Exact => "8-byte kmalloc, dmakit's exact bounce test",
            Policy::NoBounce => "8-byte kmalloc, no alignment bouncing (hazard control)",
            Policy::CoherentPool => {
                "8-byte kmalloc, exact test, bounces in a growable coherent pool (no SWIOTLB)"
            }
            Policy::Auto => {
                "exact test; kmalloc line aligned only if a non-coherent device has no pool"
            }
        }
    }

    /// The policy named `name`.
    pub fn from_name(name: &str) -> Option<Policy> {
        Policy::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The kmalloc minimum alignment on a machine whose largest line is `line` bytes
    /// (`minalign128` aligns to the line: 128 bytes on the arm64 phone). For `auto` it is
    /// the choice before any device is added (8 bytes); the run re-evaluates it as the
    /// devices are added to the mapper.
    ///
    /// # Errors
    /// [`MemError`] for a line size kmalloc cannot use.
    pub fn kmalloc_policy(self, line: u64) -> Result<MinAlignPolicy, MemError> {
        match self {
            Policy::MinAlign128 => MinAlignPolicy::fixed(line, line),
            _ => MinAlignPolicy::fixed(8, line),
        }
    }

    /// The mapping layer's alignment rule.
    pub const fn alignment(self) -> AlignmentPolicy {
        match self {
            Policy::MinAlign128 | Policy::NoBounce => AlignmentPolicy::Never,
            Policy::LinuxSizeOnly => AlignmentPolicy::SizeOnly,
            Policy::Exact | Policy::CoherentPool | Policy::Auto => AlignmentPolicy::Exact,
        }
    }

    /// Whether the policy bounces kmalloc buffers for alignment through SWIOTLB (and so
    /// needs a SWIOTLB pool even when no device is limited by its mask).
    pub const fn bounces_for_alignment(self) -> bool {
        matches!(self, Policy::LinuxSizeOnly | Policy::Exact | Policy::Auto)
    }

    /// Whether bounces go to the growable coherent pool instead of SWIOTLB.
    pub const fn uses_coherent_pool(self) -> bool {
        matches!(self, Policy::CoherentPool)
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const MIB: u64 = 1 << 20;
/// Linux's default SWIOTLB size (`IO_TLB_DEFAULT_SIZE`).
pub const LINUX_DEFAULT_SWIOTLB: u64 = 64 * MIB;
/// The DMA zone limit of the modelled arm64 machine: 32-bit devices (ZONE_DMA32).
pub const ARM64_DMA_LIMIT: u64 = 1 << 32;

/// The SWIOTLB size Linux on arm64 (6.5+, `arch/arm64/mm/init.c: mem_init`) chooses for
/// `ram`: the full default (64 MiB) when RAM extends beyond the DMA zone limit, since
/// devices limited to it may need to bounce; otherwise, when kmalloc buffers are bounced
/// for alignment, 1 MiB per GiB of RAM (at most the default); otherwise no pool.
pub fn linux_arm64_swiotlb_bytes(ram: &[(u64, u64)], kmalloc_bouncing: bool) -> u64 {
    let beyond = ram.iter().any(|&(s, l)| s + l > ARM64_DMA_LIMIT);
    if beyond {
        return LINUX_DEFAULT_SWIOTLB;
    }
    if !kmalloc_bouncing {
        return 0;
    }
    let total: u64 = ram.iter().map(|r| r.1).sum();
    // 1 MiB per GiB, whole 256 KiB segments.
    total
        .div_ceil(1024)
        .next_multiple_of(256 * 1024)
        .min(LINUX_DEFAULT_SWIOTLB)
}

/// The SWIOTLB pool `policy` gets on `machine`, in bytes (0: none; always 0 for
/// `coherent-pool`, whose bounces go to its coherent pool). `untrusted`: the
/// machine has an untrusted device behind the IOMMU, whose buffers are bounced whatever the
/// policy, so it gets at least the pool kmalloc bouncing would (Linux sizes SWIOTLB before
/// it knows its devices; without RAM above 4 GiB it would have none for them).
pub fn pool_bytes(policy: Policy, machine: &MachineModel, untrusted: bool) -> u64 {
    if policy.uses_coherent_pool() {
        return 0;
    }
    match machine.bounce_pool {
        PoolSize::None => 0,
        PoolSize::Bytes(b) => b,
        PoolSize::LinuxArm64 => {
            linux_arm64_swiotlb_bytes(&machine.ram, policy.bounces_for_alignment() || untrusted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_rules() {
        for p in Policy::ALL {
            assert_eq!(Policy::from_name(p.name()), Some(p));
        }
        assert_eq!(Policy::from_name("fast"), None);
        assert!(Policy::MinAlign128
            .kmalloc_policy(128)
            .unwrap()
            .is_line_aligned());
        assert_eq!(Policy::Exact.kmalloc_policy(128).unwrap().min_align(), 8);
        assert_eq!(Policy::NoBounce.alignment(), AlignmentPolicy::Never);
    }

    #[test]
    fn linux_arm64_pool_sizes() {
        const GIB: u64 = 1 << 30;
        let phone = [(0, 4 * GIB), (4 * GIB, 4 * GIB)];
        assert_eq!(linux_arm64_swiotlb_bytes(&phone, false), 64 * MIB);
        let small = [(0x8000_0000, 2 * GIB)];
        assert_eq!(linux_arm64_swiotlb_bytes(&small, true), 2 * MIB);
        assert_eq!(linux_arm64_swiotlb_bytes(&small, false), 0);
    }
}
