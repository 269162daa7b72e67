//! A platform over real memory, for benchmarks and multi-threaded tests.
//!
//! One large allocation stands in for RAM. Physical addresses are offsets into it (plus a
//! configurable base), so masks and zones can be exercised with real memory; CPU copies are
//! real `memcpy`s; cache maintenance does nothing (a coherent host) or, as an option on
//! x86-64, flushes every line with `clflush` so its real cost shows in benchmarks. The
//! current CPU is a per-thread number the caller binds.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;

use dmakit::{CacheMaintenance, CpuMemory, CpuTopology, MemoryFault, PhysAddr, PhysRange};

/// What cache maintenance does on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMaintenance {
    /// Nothing: the host's caches are coherent with everything that reads the arena.
    None,
    /// `clflush` every line of the range, then a fence (x86-64 only; elsewhere a no-op).
    Flush,
}

/// Errors creating a [`HostPlatform`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostError {
    /// Zero size, a size that does not fit `usize`, or a base + size that overflows.
    BadSize,
    /// The operating system refused the allocation.
    OutOfMemory,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostError::BadSize => {
                f.write_str("host memory size must be non-zero and fit the address space")
            }
            HostError::OutOfMemory => f.write_str("could not allocate host memory"),
        }
    }
}

impl std::error::Error for HostError {}

thread_local! {
    static CURRENT_CPU: Cell<usize> = const { Cell::new(0) };
}

/// Real memory presented as physical memory `[phys_base, phys_base + size)`.
pub struct HostPlatform {
    ptr: *mut u8,
    layout: Layout,
    phys_base: u64,
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
        let bytes = usize::try_from(size).map_err(|_| HostError::BadSize)?;
        if bytes == 0
            || cpus == 0
            || !line.is_power_of_two()
            || phys_base.checked_add(size).is_none()
        {
            return Err(HostError::BadSize);
        }
        let layout = Layout::from_size_align(bytes, 4096).map_err(|_| HostError::BadSize)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(HostError::OutOfMemory);
        }
        // Touch every page now, so measurements never pay first-touch page faults: a
        // kernel's RAM is resident.
        // SAFETY: `ptr` is valid for `bytes` bytes, just allocated.
        unsafe { std::ptr::write_bytes(ptr, 0, bytes) };
        Ok(Self {
            ptr,
            layout,
            phys_base,
            cpus,
            line,
            maintenance,
        })
    }

    /// The physical range the arena covers.
    pub fn range(&self) -> PhysRange {
        PhysRange::new(PhysAddr::new(self.phys_base), self.layout.size() as u64)
            .unwrap_or_else(|| unreachable!("validated at construction"))
    }

    /// Declares that the calling thread runs on `cpu` (taken modulo the CPU count).
    pub fn bind_current_thread(&self, cpu: usize) {
        CURRENT_CPU.with(|c| c.set(cpu % self.cpus));
    }

    /// A pointer to `len` bytes at `addr`, if they lie in the arena.
    fn at(&self, addr: PhysAddr, len: u64) -> Result<*mut u8, MemoryFault> {
        let fault = MemoryFault { addr, len };
        let off = addr.as_u64().checked_sub(self.phys_base).ok_or(fault)?;
        let end = off.checked_add(len).ok_or(fault)?;
        if end > self.layout.size() as u64 {
            return Err(fault);
        }
        // SAFETY: `off + len <= size`, so the offset stays inside the allocation.
        Ok(unsafe { self.ptr.add(off as usize) })
    }

    /// Writes `data` at `addr` as the CPU would.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is outside the arena.
    pub fn write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), MemoryFault> {
        let p = self.at(addr, data.len() as u64)?;
        // SAFETY: `p` is valid for `data.len()` bytes (checked by `at`); `data` is a separate
        // Rust slice, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Ok(())
    }

    /// Reads `out.len()` bytes at `addr` as the CPU would.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is outside the arena.
    pub fn read(&self, addr: PhysAddr, out: &mut [u8]) -> Result<(), MemoryFault> {
        let p = self.at(addr, out.len() as u64)?;
        // SAFETY: `p` is valid for `out.len()` bytes (checked by `at`); `out` is a separate
        // Rust slice.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
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
            let Ok(first) = self.at(range.start().align_down(self.line), 1) else {
                return;
            };
            let Some(span) = range.expand_to(self.line) else {
                return;
            };
            if self.at(span.start(), span.len()).is_err() {
                return;
            }
            let mut off = 0;
            while off < span.len() {
                // SAFETY: `first + off` lies inside the checked span; `clflush` only needs a
                // mapped address and SSE2, which every x86-64 has.
                unsafe { std::arch::x86_64::_mm_clflush(first.add(off as usize)) };
                off += self.line;
            }
            // SAFETY: a fence has no memory-safety preconditions.
            unsafe { std::arch::x86_64::_mm_mfence() };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = range;
    }
}

impl Drop for HostPlatform {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this layout and is freed once.
        unsafe { dealloc(self.ptr, self.layout) };
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
        let d = self.at(dst, len)?;
        let s = self.at(src, len)?;
        // SAFETY: both pointers are valid for `len` bytes inside the arena (checked by `at`);
        // `copy` permits overlap.
        unsafe { std::ptr::copy(s, d, len as usize) };
        Ok(())
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let d = self.at(dst, len)?;
        // SAFETY: `d` is valid for `len` bytes inside the arena (checked by `at`).
        unsafe { std::ptr::write_bytes(d, byte, len as usize) };
        Ok(())
    }
}

impl CpuTopology for HostPlatform {
    fn cpu_count(&self) -> usize {
        self.cpus
    }
    #[inline]
    fn current_cpu(&self) -> usize {
        let cpu = CURRENT_CPU.with(|c| c.get());
        // Bound threads already hold a reduced number; only a stray one needs the division.
        if cpu < self.cpus {
            cpu
        } else {
            cpu % self.cpus
        }
    }
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
}
