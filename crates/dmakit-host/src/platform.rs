//! dmakit's platform traits over the host arena.
//!
//! Physical addresses are offsets into one host allocation plus a configurable base, so
//! masks and zones can be exercised with real memory; CPU copies are real `memcpy`s; cache
//! maintenance does nothing (a coherent host) or, as an option on x86-64, flushes every
//! line with `clflush` so its real cost shows in benchmarks.

use std::ptr::NonNull;

use dmakit::dma_alloc::DmaAllocatorConfig;
use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, CpuTopology, MemoryFault, PhysAddr, PhysRange,
};

use crate::arena::Arena;
use crate::cpu;
use crate::error::{ForeignPointer, HostError};

/// What cache maintenance does on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMaintenance {
    /// Nothing: the host's caches are coherent with everything that reads the arena.
    None,
    /// `clflush` every line of the range, then a fence (x86-64 only; elsewhere a no-op).
    Flush,
}

/// Real memory presented as physical memory `[phys_base, phys_base + size)`.
///
/// Everything that reads or writes the arena — the mapping layer's copies, a test acting as
/// the device, a driver through [`HostPlatform::ptr`] — goes through the host's coherent
/// caches, so the platform is a coherent machine: maintenance is needed by nobody, and
/// [`CoherentRemap`] only checks that the range is memory.
pub struct HostPlatform {
    arena: Arena,
    cpus: usize,
    line: u64,
    maintenance: HostMaintenance,
}

// SAFETY: the arena is plain bytes owned by this value; all access goes through bounds-checked
// methods that copy bytes. Concurrent accesses to *disjoint* ranges are what DMA mapping does;
// overlapping concurrent writes are a caller bug exactly as they are on real memory.
unsafe impl Send for HostPlatform {}
// SAFETY: as above.
unsafe impl Sync for HostPlatform {}

impl HostPlatform {
    /// `size` bytes of zeroed memory at physical address `phys_base`, `cpus` CPUs, cache
    /// lines of `line` bytes.
    ///
    /// # Errors
    /// [`HostError::BadSize`] for a zero size, a non-power-of-two line, zero CPUs, or an
    /// overflowing range; [`HostError::OutOfMemory`] if the allocation fails.
    pub fn new(
        phys_base: u64,
        size: u64,
        cpus: usize,
        line: u64,
        maintenance: HostMaintenance,
    ) -> Result<Self, HostError> {
        if cpus == 0 || !line.is_power_of_two() {
            return Err(HostError::BadSize);
        }
        Ok(Self {
            arena: Arena::new(phys_base, size)?,
            cpus,
            line,
            maintenance,
        })
    }

    /// The physical range the arena covers.
    pub fn range(&self) -> PhysRange {
        self.arena.range()
    }

    /// The DMA allocator configuration for this memory: the default, with the atomic pool's
    /// reach derived from where the memory lies ([`DmaAllocatorConfig::for_memory`]), so
    /// an allocator over zones built on [`HostPlatform::range`] finds its pool also when
    /// the memory lies above 4 GiB.
    pub fn dma_allocator_config(&self) -> DmaAllocatorConfig {
        DmaAllocatorConfig::for_memory(&[self.range()])
    }

    /// Declares that the calling thread runs on `cpu` (taken modulo the CPU count).
    pub fn bind_current_thread(&self, cpu: usize) {
        cpu::bind(cpu, self.cpus);
    }

    /// A pointer to the `len` bytes at physical address `addr`, valid for reads and writes
    /// of those bytes while the platform lives (`len` may be 0: a pointer to `addr`, which
    /// may be the end of the memory). What may be accessed through it, and when, is the
    /// caller's business, exactly as with memory a kernel maps.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is not in the platform's memory.
    pub fn ptr(&self, addr: PhysAddr, len: u64) -> Result<NonNull<u8>, MemoryFault> {
        self.arena.at(addr, len)
    }

    /// The physical address of the `len` bytes at `ptr` (`len` may be 0), the inverse of
    /// [`HostPlatform::ptr`]. Only compares addresses: `ptr` is not dereferenced.
    ///
    /// # Errors
    /// [`ForeignPointer`] if the bytes are not all in the platform's memory.
    pub fn phys_of(&self, ptr: *const u8, len: usize) -> Result<PhysAddr, ForeignPointer> {
        self.arena.phys_of(ptr, len)
    }

    /// Writes `data` at `addr` as the CPU would.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is outside the arena.
    pub fn write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), MemoryFault> {
        let p = self.arena.at(addr, data.len() as u64)?;
        // SAFETY: `p` is valid for `data.len()` bytes (checked by `at`); `data` is a separate
        // Rust slice, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
        Ok(())
    }

    /// Reads `out.len()` bytes at `addr` as the CPU would.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is outside the arena.
    pub fn read(&self, addr: PhysAddr, out: &mut [u8]) -> Result<(), MemoryFault> {
        let p = self.arena.at(addr, out.len() as u64)?;
        // SAFETY: `p` is valid for `out.len()` bytes (checked by `at`); `out` is a separate
        // Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// Maintenance of `range` in the configured mode; the no-op mode costs one inlined test.
    #[inline]
    fn flush(&self, range: PhysRange) {
        if self.maintenance != HostMaintenance::None {
            self.flush_lines(range);
        }
    }

    #[inline(never)]
    fn flush_lines(&self, range: PhysRange) {
        #[cfg(target_arch = "x86_64")]
        {
            let Some(span) = range.expand_to(self.line) else {
                return;
            };
            let Ok(first) = self.arena.at(span.start(), span.len()) else {
                return;
            };
            let mut off = 0;
            while off < span.len() {
                // SAFETY: `first + off` lies inside the checked span; `clflush` only needs a
                // mapped address and SSE2, which every x86-64 has.
                unsafe { std::arch::x86_64::_mm_clflush(first.as_ptr().add(off as usize)) };
                off += self.line;
            }
            // SAFETY: a fence has no memory-safety preconditions.
            unsafe { std::arch::x86_64::_mm_mfence() };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    }
}

impl CacheMaintenance for HostPlatform {
    #[inline]
    fn cache_line_size(&self) -> u64 {
        self.line
    }
    #[inline]
    fn clean(&self, range: PhysRange) {
        self.flush(range)
    }
    #[inline]
    fn invalidate(&self, range: PhysRange) {
        self.flush(range)
    }
    #[inline]
    fn clean_invalidate(&self, range: PhysRange) {
        self.flush(range)
    }
}

// SAFETY: `at` checks every range against the arena and faults outside it; the copies
// touch only the checked ranges.
unsafe impl CpuMemory for HostPlatform {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let d = self.arena.at(dst, len)?;
        let s = self.arena.at(src, len)?;
        // SAFETY: both pointers are valid for `len` bytes inside the arena (checked by `at`);
        // `copy` permits overlap.
        unsafe { std::ptr::copy(s.as_ptr(), d.as_ptr(), len as usize) };
        Ok(())
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let d = self.arena.at(dst, len)?;
        // SAFETY: `d` is valid for `len` bytes inside the arena (checked by `at`).
        unsafe { std::ptr::write_bytes(d.as_ptr(), byte, len as usize) };
        Ok(())
    }
}

impl CpuTopology for HostPlatform {
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    #[inline]
    fn current_cpu(&self) -> usize {
        cpu::current(self.cpus)
    }
}

/// The host is coherent: every reader of the arena goes through the same caches, so memory
/// is "uncached" for the contract's purpose as it is. Only the range is checked.
impl CoherentRemap for HostPlatform {
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        self.arena.at(range.start(), range.len()).map(|_| ())
    }
    fn make_cached(&self, _range: PhysRange) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_bounds() {
        let h = HostPlatform::new(0x1000, 1 << 20, 2, 64, HostMaintenance::Flush).unwrap();
        h.write(PhysAddr::new(0x1000), b"hello").unwrap();
        h.copy(PhysAddr::new(0x2000), PhysAddr::new(0x1000), 5)
            .unwrap();
        let mut out = [0u8; 5];
        h.read(PhysAddr::new(0x2000), &mut out).unwrap();
        assert_eq!(&out, b"hello");
        h.fill(PhysAddr::new(0x2000), 7, 2).unwrap();
        h.read(PhysAddr::new(0x2000), &mut out).unwrap();
        assert_eq!(out, [7, 7, b'l', b'l', b'o']);
        assert!(h
            .copy(PhysAddr::new(0x500), PhysAddr::new(0x1000), 5)
            .is_err());
        assert!(h
            .write(PhysAddr::new(0x1000 + (1 << 20) - 2), b"abc")
            .is_err());
        h.clean_invalidate(PhysRange::new(PhysAddr::new(0x1010), 200).unwrap());
        assert!(HostPlatform::new(0, 0, 1, 64, HostMaintenance::None).is_err());
        assert!(HostPlatform::new(u64::MAX, 4096, 1, 64, HostMaintenance::None).is_err());
        assert!(HostPlatform::new(0, 4096, 0, 64, HostMaintenance::None).is_err());
        assert!(HostPlatform::new(0, 4096, 1, 48, HostMaintenance::None).is_err());
    }

    #[test]
    fn cpu_binding_is_per_thread() {
        let h = HostPlatform::new(0, 4096, 4, 64, HostMaintenance::None).unwrap();
        h.bind_current_thread(6);
        assert_eq!(h.current_cpu(), 2);
        std::thread::scope(|s| {
            s.spawn(|| assert_eq!(h.current_cpu(), 0));
        });
    }

    #[test]
    fn pointers_and_physical_addresses_convert_both_ways_within_the_memory() {
        const BASE: u64 = 5 << 30;
        let h = HostPlatform::new(BASE, 64 << 10, 1, 64, HostMaintenance::None).unwrap();
        let at = PhysAddr::new(BASE + 0x1234);
        let p = h.ptr(at, 100).unwrap();
        // SAFETY: `ptr` checked that the 100 bytes at `p` are in the arena, alive here.
        unsafe {
            p.as_ptr()
                .copy_from_nonoverlapping([9u8; 100].as_ptr(), 100)
        };
        let mut out = [0u8; 100];
        h.read(at, &mut out).unwrap();
        assert_eq!(out, [9; 100]);
        assert_eq!(h.phys_of(p.as_ptr(), 100), Ok(at));
        // The first and one-past-the-last byte.
        let first = h.ptr(PhysAddr::new(BASE), 1).unwrap();
        assert_eq!(h.phys_of(first.as_ptr(), 64 << 10), Ok(PhysAddr::new(BASE)));
        let end = h.ptr(PhysAddr::new(BASE + (64 << 10)), 0).unwrap();
        assert_eq!(
            h.phys_of(end.as_ptr(), 0),
            Ok(PhysAddr::new(BASE + (64 << 10)))
        );
        // Outside, in either direction.
        let below = PhysAddr::new(BASE - 1);
        assert_eq!(
            h.ptr(below, 1),
            Err(MemoryFault {
                addr: below,
                len: 1
            })
        );
        assert!(h.ptr(PhysAddr::new(BASE + (64 << 10) - 8), 9).is_err());
        assert!(h.ptr(at, u64::MAX).is_err());
        assert_eq!(
            h.phys_of(end.as_ptr(), 1),
            Err(ForeignPointer {
                addr: end.as_ptr().addr(),
                len: 1
            })
        );
        let other = [0u8; 4];
        let e = h.phys_of(other.as_ptr(), 4).unwrap_err();
        assert!(
            e.to_string().contains("not in the host platform's memory"),
            "{e}"
        );
        assert!(h.phys_of(p.as_ptr(), usize::MAX).is_err());
    }

    #[test]
    fn uncached_remap_checks_the_range_only() {
        let h = HostPlatform::new(0x10_0000, 8192, 1, 64, HostMaintenance::None).unwrap();
        let inside = PhysRange::new(PhysAddr::new(0x10_0000), 8192).unwrap();
        assert_eq!(h.make_uncached(inside), Ok(()));
        let across = PhysRange::new(PhysAddr::new(0x10_1000), 8192).unwrap();
        assert_eq!(
            h.make_uncached(across),
            Err(MemoryFault {
                addr: across.start(),
                len: 8192
            })
        );
        h.make_cached(across);
    }
}
