//! Address newtypes.
//!
//! A CPU physical address and the address a device emits are different things: with an
//! IOMMU or a bounce buffer they differ in value, and mixing them up is the classic DMA bug.
//! Giving each its own type makes the compiler catch that mix-up.
//!
//! Arithmetic on the types never wraps silently: the `checked_*` methods return `None`
//! where the result would leave the 64-bit address space, and `add` panics there, in every
//! build profile (an address that wrapped would name unrelated memory). Alignments must be
//! powers of two; every alignment dmakit passes is one (a validated device's cache line, a
//! page size), so the check is a debug assertion: in release builds it would cost a
//! seventh of a direct mapping's instructions on the map path.

use core::fmt;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The zero address.
            pub const ZERO: Self = Self(0);

            /// Wraps a raw address value.
            #[inline]
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The raw address value.
            #[inline]
            pub const fn as_u64(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` if that leaves the 64-bit address space.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self + bytes`, for callers that have already checked that this cannot
            /// overflow (for example by validating the range at the API boundary); use
            /// [`Self::checked_add`] where it can.
            ///
            /// # Panics
            /// If the sum leaves the 64-bit address space, in every build profile: it never
            /// wraps.
            #[inline]
            #[track_caller]
            pub const fn add(self, bytes: u64) -> Self {
                match self.0.checked_add(bytes) {
                    Some(v) => Self(v),
                    None => panic!(concat!(
                        stringify!($name),
                        "::add overflows the 64-bit address space"
                    )),
                }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

/// `align - 1`, the mask of the offset inside an `align`-sized block.
///
/// # Panics
/// In debug builds, if `align` is not a power of two (zero included).
#[inline(always)]
const fn align_mask(align: u64) -> u64 {
    debug_assert!(align.is_power_of_two(), "alignment is not a power of two");
    align.wrapping_sub(1)
}

address_type!(
    /// A CPU physical address: what the CPU's caches and the platform's memory map use.
    PhysAddr
);
address_type!(
    /// An address as a device emits it on the bus: a physical address on the direct path,
    /// an I/O virtual address behind an IOMMU, or the address of a bounce slot.
    DmaAddr
);

/// Alignment and offset helpers: cache maintenance, bounce decisions and pool lookups work
/// on the CPU's physical addresses, so only [`PhysAddr`] has them; a device address needs
/// no more than construction, its value and addition.
impl PhysAddr {
    /// Rounds down to a multiple of `align`.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    #[inline]
    pub const fn align_down(self, align: u64) -> Self {
        Self(self.0 & !align_mask(align))
    }

    /// Rounds up to a multiple of `align`; `None` if that leaves the 64-bit address
    /// space.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    #[inline]
    pub const fn checked_align_up(self, align: u64) -> Option<Self> {
        let mask = align_mask(align);
        match self.0.checked_add(mask) {
            Some(v) => Some(Self(v & !mask)),
            None => None,
        }
    }

    /// Whether the address is a multiple of `align`.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        self.0 & align_mask(align) == 0
    }

    /// The offset of the address inside an `align`-sized block.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    #[inline]
    pub const fn offset_in(self, align: u64) -> u64 {
        self.0 & align_mask(align)
    }

    /// Bytes from `base` up to `self`; `None` if `self` is below `base`.
    #[inline]
    pub const fn checked_offset_from(self, base: Self) -> Option<u64> {
        self.0.checked_sub(base.0)
    }
}

/// A half-open byte range `[start, start + len)` of physical memory, validated so that its
/// end does not overflow the address space and its length is not zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhysRange {
    start: PhysAddr,
    len: u64,
}

impl PhysRange {
    /// A range of `len` bytes from `start`; `None` if `len` is zero or the end overflows.
    pub const fn new(start: PhysAddr, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        match start.checked_add(len) {
            Some(_) => Some(Self { start, len }),
            None => None,
        }
    }

    /// First byte.
    #[inline]
    pub const fn start(&self) -> PhysAddr {
        self.start
    }

    /// Length in bytes (never zero).
    #[inline]
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: a range is never empty (kept for API symmetry with `len`).
    #[inline]
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte.
    #[inline]
    pub const fn end(&self) -> PhysAddr {
        // Exact: `new` refused every range whose end overflows, and the fields are private.
        PhysAddr(self.start.0.wrapping_add(self.len))
    }

    /// The last byte.
    #[inline]
    pub const fn last(&self) -> PhysAddr {
        self.start.add(self.len - 1)
    }

    /// Whether the range starts and ends on a multiple of `align`, i.e. whether it owns
    /// every `align`-sized block it touches.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    #[inline]
    pub const fn is_aligned(&self, align: u64) -> bool {
        (self.start.as_u64() | self.end().as_u64()) & align_mask(align) == 0
    }

    /// The smallest `align`-aligned range containing this one; `None` if that overflows.
    ///
    /// # Panics
    /// In debug builds, if `align` is not a power of two.
    pub const fn expand_to(&self, align: u64) -> Option<Self> {
        let start = self.start.align_down(align);
        match self.end().checked_align_up(align) {
            Some(end) => Self::new(start, end.as_u64() - start.as_u64()),
            None => None,
        }
    }

    /// Whether `other` lies entirely inside this range.
    #[inline]
    pub const fn contains_range(&self, other: &PhysRange) -> bool {
        other.start.as_u64() >= self.start.as_u64() && other.end().as_u64() <= self.end().as_u64()
    }

    /// Whether the two ranges share at least one byte.
    #[inline]
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start.as_u64() < other.end().as_u64() && other.start.as_u64() < self.end().as_u64()
    }
}

impl fmt::Debug for PhysRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#x}, {:#x})",
            self.start.as_u64(),
            self.end().as_u64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn alignment_helpers() {
        let a = PhysAddr::new(0x1234);
        assert_eq!(a.align_down(0x100), PhysAddr::new(0x1200));
        assert_eq!(a.checked_align_up(0x100), Some(PhysAddr::new(0x1300)));
        assert!(!a.is_aligned(8));
        assert!(PhysAddr::new(0x1200).is_aligned(0x200));
        assert_eq!(a.offset_in(0x100), 0x34);
        assert_eq!(PhysAddr::new(u64::MAX).checked_align_up(2), None);
        assert_eq!(PhysAddr::new(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn debug_is_hex() {
        assert_eq!(format!("{:?}", PhysAddr::new(255)), "PhysAddr(0xff)");
        assert_eq!(format!("{:?}", DmaAddr::new(16)), "DmaAddr(0x10)");
        assert_eq!(
            format!("{:?}", PhysRange::new(PhysAddr::new(16), 16).unwrap()),
            "[0x10, 0x20)"
        );
    }

    #[test]
    fn ranges_validate_and_align() {
        assert!(PhysRange::new(PhysAddr::new(0), 0).is_none());
        assert!(PhysRange::new(PhysAddr::new(u64::MAX), 2).is_none());
        let r = PhysRange::new(PhysAddr::new(0x1008), 0x10).unwrap();
        assert!(!r.is_aligned(64));
        let e = r.expand_to(64).unwrap();
        assert_eq!((e.start().as_u64(), e.len()), (0x1000, 64));
        assert!(e.contains_range(&r));
        assert!(r.overlaps(&e));
        assert_eq!(r.last(), PhysAddr::new(0x1017));
        assert!(PhysRange::new(PhysAddr::new(0x1000), 64)
            .unwrap()
            .is_aligned(64));
    }

    #[test]
    fn add_adds_up_to_the_top_of_the_address_space() {
        assert_eq!(PhysAddr::new(0x1000).add(0x10), PhysAddr::new(0x1010));
        assert_eq!(PhysAddr::new(u64::MAX - 1).add(1), PhysAddr::new(u64::MAX));
        assert_eq!(DmaAddr::new(u64::MAX).add(0), DmaAddr::new(u64::MAX));
    }

    // Runs in every profile: `cargo test --release -p dmakit --lib addr` shows that the sum
    // panics there too instead of wrapping to a low address.
    #[test]
    #[should_panic(expected = "PhysAddr::add overflows the 64-bit address space")]
    fn phys_add_overflow_panics_in_every_profile() {
        let _ = PhysAddr::new(u64::MAX).add(1);
    }

    #[test]
    #[should_panic(expected = "DmaAddr::add overflows the 64-bit address space")]
    fn dma_add_overflow_panics_in_every_profile() {
        let _ = DmaAddr::new(u64::MAX - 0xfff).add(0x1000);
    }

    #[test]
    fn checked_add_reports_overflow_without_panicking() {
        assert_eq!(
            PhysAddr::new(u64::MAX - 1).checked_add(1),
            Some(PhysAddr::new(u64::MAX))
        );
        assert_eq!(DmaAddr::new(1).checked_add(u64::MAX), None);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "alignment is not a power of two")]
    fn zero_alignment_panics_instead_of_wrapping() {
        let _ = PhysAddr::new(0x1234).align_down(0);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "alignment is not a power of two")]
    fn range_alignment_must_be_a_power_of_two() {
        let _ = PhysRange::new(PhysAddr::new(0x1000), 64)
            .unwrap()
            .is_aligned(48);
    }
}
