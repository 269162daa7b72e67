//! Linear-map translation between physical addresses and CPU addresses.
//!
//! dmakit speaks physical addresses; drivers and driver frameworks (a virtio `Hal`, a
//! kernel's buffer types) hold CPU pointers. A kernel maps RAM at a fixed offset (an
//! identity map, or a "direct map" high in the address space), so the translation is a
//! few windows of `phys + offset`. [`LinearMap`] holds up to [`MAX_LINEAR_WINDOWS`] such
//! windows in a fixed array and translates both ways with checked arithmetic: an address,
//! or a range, outside every window is `None`, never a wrapped value. It allocates
//! nothing, so adapters use it on map paths and in interrupt handlers.

use core::fmt;

use crate::addr::PhysAddr;

/// The most windows one [`LinearMap`] holds.
pub const MAX_LINEAR_WINDOWS: usize = 4;

/// A CPU (virtual) address in a linear map: what a pointer holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct CpuAddr(usize);

impl CpuAddr {
    /// The address `addr`.
    #[inline]
    pub const fn new(addr: usize) -> Self {
        Self(addr)
    }
    /// The address a pointer holds.
    #[inline]
    pub fn of_ptr<T: ?Sized>(ptr: *const T) -> Self {
        Self(ptr.cast::<u8>() as usize)
    }
    /// The raw value.
    #[inline]
    pub const fn as_usize(self) -> usize {
        self.0
    }
    /// The address as a pointer (no provenance beyond the address: the caller's platform
    /// decides whether it may be dereferenced).
    #[inline]
    pub fn as_mut_ptr(self) -> *mut u8 {
        self.0 as *mut u8
    }
    /// `self + bytes`, or `None` if that leaves the address space.
    #[inline]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        if bytes > usize::MAX as u64 {
            return None;
        }
        match self.0.checked_add(bytes as usize) {
            Some(a) => Some(Self(a)),
            None => None,
        }
    }
}

impl fmt::Display for CpuAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cpu:{:#x}", self.0)
    }
}

/// One window: physical `[phys, phys + len)` is seen by the CPU at `[cpu, cpu + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearWindow {
    /// First physical address.
    pub phys: PhysAddr,
    /// CPU address of `phys`.
    pub cpu: CpuAddr,
    /// Length in bytes (non-zero).
    pub len: u64,
}

impl LinearWindow {
    /// Where `[phys, phys + len)` sits at offset `off` of the window, if it lies inside.
    fn offset_of_phys(&self, phys: PhysAddr, len: u64) -> Option<u64> {
        let off = phys.as_u64().checked_sub(self.phys.as_u64())?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }
    fn offset_of_cpu(&self, cpu: CpuAddr, len: u64) -> Option<u64> {
        let off = (cpu.0 as u64).checked_sub(self.cpu.0 as u64)?;
        (off.checked_add(len)? <= self.len).then_some(off)
    }
    /// Whether the two windows overlap in physical or in CPU addresses (both validated:
    /// neither end overflows).
    fn overlaps(&self, other: &LinearWindow) -> bool {
        let (a, b) = (self.phys.as_u64(), other.phys.as_u64());
        let phys = a < b + other.len && b < a + self.len;
        let (c, d) = (self.cpu.0 as u64, other.cpu.0 as u64);
        let cpu = c < d + other.len && d < c + self.len;
        phys || cpu
    }
}

/// Why a [`LinearMap`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearMapError {
    /// No window was given.
    NoWindow,
    /// More than [`MAX_LINEAR_WINDOWS`] windows.
    TooManyWindows(usize),
    /// A window is empty, or its physical or CPU end overflows.
    BadWindow(LinearWindow),
    /// Two windows overlap in physical or in CPU addresses (the translation would not be
    /// one-to-one).
    Overlap(LinearWindow, LinearWindow),
}

impl fmt::Display for LinearMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinearMapError::NoWindow => f.write_str("a linear map needs at least one window"),
            LinearMapError::TooManyWindows(n) => write!(
                f,
                "{n} linear-map windows: at most {MAX_LINEAR_WINDOWS} are supported"
            ),
            LinearMapError::BadWindow(w) => write!(
                f,
                "linear-map window of {:#x} bytes at {} / {} is empty or overflows",
                w.len, w.phys, w.cpu
            ),
            LinearMapError::Overlap(a, b) => write!(
                f,
                "linear-map windows at {} / {} and {} / {} overlap",
                a.phys, a.cpu, b.phys, b.cpu
            ),
        }
    }
}

impl core::error::Error for LinearMapError {}

/// Physical ↔ CPU translation over up to [`MAX_LINEAR_WINDOWS`] fixed windows. See the
/// [module docs](self).
///
/// Invariants (checked by [`LinearMap::new`]): at least one window; each non-empty, with
/// neither end overflowing a `u64` nor, on the CPU side, a `usize`; no two overlapping in
/// physical or in CPU addresses. So every translation is one-to-one and a range is
/// translated only if one window holds all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearMap {
    windows: [Option<LinearWindow>; MAX_LINEAR_WINDOWS],
}

impl LinearMap {
    /// A map of `windows`.
    ///
    /// # Errors
    /// [`LinearMapError::NoWindow`], [`LinearMapError::TooManyWindows`],
    /// [`LinearMapError::BadWindow`] for an empty or overflowing window,
    /// [`LinearMapError::Overlap`] for two overlapping ones.
    pub fn new(windows: &[LinearWindow]) -> Result<Self, LinearMapError> {
        if windows.is_empty() {
            return Err(LinearMapError::NoWindow);
        }
        if windows.len() > MAX_LINEAR_WINDOWS {
            return Err(LinearMapError::TooManyWindows(windows.len()));
        }
        let mut map = Self {
            windows: [None; MAX_LINEAR_WINDOWS],
        };
        for (i, w) in windows.iter().enumerate() {
            let phys_ok = w.phys.as_u64().checked_add(w.len).is_some();
            if w.len == 0 || !phys_ok || w.cpu.checked_add(w.len).is_none() {
                return Err(LinearMapError::BadWindow(*w));
            }
            if let Some(o) = windows[..i].iter().find(|o| o.overlaps(w)) {
                return Err(LinearMapError::Overlap(*o, *w));
            }
            map.windows[i] = Some(*w);
        }
        Ok(map)
    }

    /// The identity map of physical `[0, len)` (CPU address equals physical address), as
    /// on a kernel that identity-maps RAM or a host whose "physical" addresses are
    /// pointers.
    ///
    /// # Errors
    /// [`LinearMapError::BadWindow`] when `len` is zero or beyond the CPU address space.
    pub fn identity(len: u64) -> Result<Self, LinearMapError> {
        Self::new(&[LinearWindow {
            phys: PhysAddr::new(0),
            cpu: CpuAddr::new(0),
            len,
        }])
    }

    /// The windows, in the order given.
    pub fn windows(&self) -> impl Iterator<Item = &LinearWindow> {
        self.windows.iter().flatten()
    }

    /// The CPU address of `phys`, if a window holds all of `[phys, phys + len)` (`len` 0
    /// asks for `phys` alone).
    pub fn cpu_of(&self, phys: PhysAddr, len: u64) -> Option<CpuAddr> {
        self.windows().find_map(|w| {
            let off = w.offset_of_phys(phys, len.max(1))?;
            w.cpu.checked_add(off)
        })
    }

    /// The physical address of `cpu`, if a window holds all of `[cpu, cpu + len)` (`len`
    /// 0 asks for `cpu` alone).
    pub fn phys_of(&self, cpu: CpuAddr, len: u64) -> Option<PhysAddr> {
        self.windows().find_map(|w| {
            let off = w.offset_of_cpu(cpu, len.max(1))?;
            w.phys.checked_add(off)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    fn win(phys: u64, cpu: usize, len: u64) -> LinearWindow {
        LinearWindow {
            phys: PhysAddr::new(phys),
            cpu: CpuAddr::new(cpu),
            len,
        }
    }

    #[test]
    fn translates_both_ways_inside_windows() {
        let m = LinearMap::new(&[win(0x4000_0000, 0xffff_0000_0000, 0x1000_0000)]).unwrap();
        let p = PhysAddr::new(0x4000_1234);
        let c = m.cpu_of(p, 16).unwrap();
        assert_eq!(c, CpuAddr::new(0xffff_0000_1234));
        assert_eq!(m.phys_of(c, 16), Some(p));
        // The last byte of the window translates; one past it does not.
        assert!(m.cpu_of(PhysAddr::new(0x4fff_ffff), 1).is_some());
        assert_eq!(m.cpu_of(PhysAddr::new(0x4fff_ffff), 2), None);
        assert_eq!(m.cpu_of(PhysAddr::new(0x3fff_ffff), 1), None);
        assert_eq!(m.phys_of(CpuAddr::new(0xffff_1000_0000), 1), None);
    }

    #[test]
    fn a_range_must_lie_in_one_window() {
        let m =
            LinearMap::new(&[win(0, 0x10_0000, 0x1000), win(0x1000, 0x20_0000, 0x1000)]).unwrap();
        assert_eq!(
            m.cpu_of(PhysAddr::new(0x1800), 8),
            Some(CpuAddr::new(0x20_0800))
        );
        // Physically contiguous across the two windows, but not for the CPU.
        assert_eq!(m.cpu_of(PhysAddr::new(0xff0), 0x20), None);
        assert_eq!(m.windows().count(), 2);
    }

    #[test]
    fn overflowing_queries_are_none() {
        let m = LinearMap::identity(usize::MAX as u64).unwrap();
        assert_eq!(m.cpu_of(PhysAddr::new(u64::MAX - 4), 16), None);
        assert_eq!(m.phys_of(CpuAddr::new(usize::MAX - 4), 16), None);
        assert_eq!(m.cpu_of(PhysAddr::new(42), 0), Some(CpuAddr::new(42)));
    }

    #[test]
    fn bad_maps_are_refused() {
        assert_eq!(LinearMap::new(&[]), Err(LinearMapError::NoWindow));
        assert_eq!(
            LinearMap::new(&[win(0, 0, 1); 5]),
            Err(LinearMapError::TooManyWindows(5))
        );
        let empty = win(0, 0, 0);
        assert_eq!(
            LinearMap::new(&[empty]),
            Err(LinearMapError::BadWindow(empty))
        );
        let wraps = win(u64::MAX, 0, 2);
        assert_eq!(
            LinearMap::new(&[wraps]),
            Err(LinearMapError::BadWindow(wraps))
        );
        let (a, b) = (win(0, 0x1000, 0x100), win(0x80, 0x9000, 0x100));
        assert_eq!(LinearMap::new(&[a, b]), Err(LinearMapError::Overlap(a, b)));
        let c = win(0x9000, 0x10ff, 0x10);
        assert_eq!(LinearMap::new(&[a, c]), Err(LinearMapError::Overlap(a, c)));
        assert!(LinearMapError::Overlap(a, c)
            .to_string()
            .contains("overlap"));
    }
}
