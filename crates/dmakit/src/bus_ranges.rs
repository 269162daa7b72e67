//! A device's view of memory: which CPU physical ranges it reaches at which bus addresses.
//!
//! Many SoCs put an interconnect between a device and memory that shifts addresses (a
//! devicetree's `dma-ranges`): the device reaches CPU physical range `[cpu, cpu + size)` at
//! bus addresses `[dma, dma + size)`. A [`BusRanges`] table holds those windows for one
//! device; an empty table means the device sees memory at its physical addresses. The table
//! is an inline array (at most [`MAX_BUS_RANGES`] windows), so a [`crate::Device`] carries it
//! without heap memory and the map path reads it without allocating.
//!
//! The table only stores and validates windows; the translation itself lives in the
//! crate's one translation module, which every path uses.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr};

/// The most windows one device's table holds.
pub const MAX_BUS_RANGES: usize = 8;

/// One window: CPU physical `[cpu, cpu + size)` is bus `[dma, dma + size)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRange {
    cpu: PhysAddr,
    dma: DmaAddr,
    size: u64,
}

impl BusRange {
    const EMPTY: Self = Self {
        cpu: PhysAddr::ZERO,
        dma: DmaAddr::ZERO,
        size: 0,
    };

    /// The window's first CPU physical address.
    #[inline]
    pub const fn cpu(&self) -> PhysAddr {
        self.cpu
    }
    /// The bus address at which the device reaches [`Self::cpu`].
    #[inline]
    pub const fn dma(&self) -> DmaAddr {
        self.dma
    }
    /// The window's length in bytes (never zero).
    #[inline]
    pub const fn size(&self) -> u64 {
        self.size
    }
    /// The window's last byte on each side, `(cpu, dma)`; a validated window has them.
    #[inline]
    pub(crate) const fn last(&self) -> (u64, u64) {
        (
            self.cpu.as_u64() + (self.size - 1),
            self.dma.as_u64() + (self.size - 1),
        )
    }
}

/// Why a window was refused (reported by [`crate::DeviceBuilder::build`] as
/// [`crate::DeviceError::BadDmaRange`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusRangeError {
    /// The window is empty.
    ZeroSize,
    /// The window runs past the end of the 64-bit address space on the CPU or bus side.
    Overflow,
    /// The window overlaps an earlier one on the CPU or the bus side.
    Overlap,
    /// The table already holds [`MAX_BUS_RANGES`] windows.
    TooMany,
}

impl fmt::Display for BusRangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusRangeError::ZeroSize => f.write_str("the window is empty"),
            BusRangeError::Overflow => {
                f.write_str("the window runs past the end of the address space")
            }
            BusRangeError::Overlap => f.write_str("the window overlaps an earlier one"),
            BusRangeError::TooMany => write!(f, "a device has at most {MAX_BUS_RANGES} windows"),
        }
    }
}

/// A device's windows; empty means identity (bus address = physical address).
///
/// Invariants: every window is non-empty, ends inside the 64-bit address space on both
/// sides, and no two windows overlap on either side, so each physical address has at most
/// one bus address and each bus address at most one physical address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRanges {
    entries: [BusRange; MAX_BUS_RANGES],
    len: usize,
}

impl Default for BusRanges {
    fn default() -> Self {
        Self::IDENTITY
    }
}

impl BusRanges {
    /// No windows: the device sees memory at its physical addresses.
    pub const IDENTITY: Self = Self {
        entries: [BusRange::EMPTY; MAX_BUS_RANGES],
        len: 0,
    };

    /// Whether the table is empty (identity translation).
    #[inline]
    pub const fn is_identity(&self) -> bool {
        self.len == 0
    }

    /// The windows, in the order they were added.
    #[inline]
    pub fn entries(&self) -> &[BusRange] {
        &self.entries[..self.len]
    }

    /// Adds the window `[cpu, cpu + size)` → `[dma, dma + size)`.
    ///
    /// # Errors
    /// A [`BusRangeError`]; the table is unchanged then.
    pub fn push(&mut self, cpu: PhysAddr, dma: DmaAddr, size: u64) -> Result<(), BusRangeError> {
        if size == 0 {
            return Err(BusRangeError::ZeroSize);
        }
        if cpu.checked_add(size - 1).is_none() || dma.checked_add(size - 1).is_none() {
            return Err(BusRangeError::Overflow);
        }
        let new = BusRange { cpu, dma, size };
        let (cpu_last, dma_last) = new.last();
        let overlaps = self.entries().iter().any(|e| {
            let (c, d) = e.last();
            (cpu.as_u64() <= c && e.cpu.as_u64() <= cpu_last)
                || (dma.as_u64() <= d && e.dma.as_u64() <= dma_last)
        });
        if overlaps {
            return Err(BusRangeError::Overlap);
        }
        if self.len == MAX_BUS_RANGES {
            return Err(BusRangeError::TooMany);
        }
        self.entries[self.len] = new;
        self.len += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: u64) -> PhysAddr {
        PhysAddr::new(v)
    }
    fn d(v: u64) -> DmaAddr {
        DmaAddr::new(v)
    }

    #[test]
    fn windows_are_validated() {
        let mut t = BusRanges::IDENTITY;
        assert!(t.is_identity());
        assert_eq!(t.push(p(0), d(0), 0), Err(BusRangeError::ZeroSize));
        assert_eq!(t.push(p(u64::MAX), d(0), 2), Err(BusRangeError::Overflow));
        assert_eq!(t.push(p(0), d(u64::MAX), 2), Err(BusRangeError::Overflow));
        t.push(p(0x1000), d(0xc000_1000), 0x1000).unwrap();
        // Overlaps on the CPU side, then on the bus side; touching is fine.
        assert_eq!(t.push(p(0x1fff), d(0), 1), Err(BusRangeError::Overlap));
        assert_eq!(
            t.push(p(0x9000), d(0xc000_0fff), 2),
            Err(BusRangeError::Overlap)
        );
        t.push(p(0x2000), d(0xc000_2000), 0x1000).unwrap();
        assert_eq!(t.entries().len(), 2);
        assert!(!t.is_identity());
        // The last address of the space is a valid last byte.
        t.push(p(u64::MAX), d(0), 1).unwrap();
    }

    #[test]
    fn a_full_table_refuses_more_and_stays_as_it_was() {
        let mut t = BusRanges::IDENTITY;
        for i in 0..MAX_BUS_RANGES as u64 {
            t.push(p(i * 0x1000), d(0x10_0000 + i * 0x1000), 0x1000)
                .unwrap();
        }
        let before = t;
        assert_eq!(
            t.push(p(0x100_0000), d(0x100_0000), 1),
            Err(BusRangeError::TooMany)
        );
        assert_eq!(t, before);
        assert!(alloc::format!("{}", BusRangeError::TooMany).contains('8'));
    }
}
