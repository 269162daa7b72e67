//! The platform traits: the only door from dmakit to hardware.
//!
//! dmakit never touches memory, caches or page tables itself. A kernel, hypervisor or
//! firmware implements these narrow traits for its machine; the machine model in
//! `dmakit-sim` implements them for a simulated one, and a host platform implements them
//! over ordinary memory for benchmarks. Each trait states the contract the mapping layer
//! relies on; an implementation that breaks it breaks DMA safety.

use core::fmt;

use crate::addr::{PhysAddr, PhysRange};

/// Size of a page, the unit of page allocation and of "a mapping of a page or more".
pub const PAGE_SIZE: u64 = 4096;

/// Data cache maintenance by physical address range.
///
/// Contract: every operation affects **every cache line that overlaps the range**, whole
/// lines, including bytes of those lines outside the range (that is what makes sharing a line
/// dangerous). After it returns, the effect is complete and visible to devices (the
/// implementation issues whatever barrier the architecture needs). Ranges that are not
/// memory are ignored. On a machine whose caches are coherent with all devices the
/// operations may do nothing.
pub trait CacheMaintenance {
    /// The CPU data cache line size in bytes (a power of two). The bounce decision uses the
    /// larger of this and the device's own line size.
    fn cache_line_size(&self) -> u64;
    /// Writes dirty lines back to memory; lines stay valid in the cache.
    fn clean(&self, range: PhysRange);
    /// Discards lines from the cache without writing them back; dirty data in them is lost.
    fn invalidate(&self, range: PhysRange);
    /// Writes dirty lines back, then discards them.
    fn clean_invalidate(&self, range: PhysRange);
}

/// A CPU access to physical memory failed: the range is not memory the platform knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFault {
    /// First byte of the access that failed.
    pub addr: PhysAddr,
    /// Length of the access.
    pub len: u64,
}

impl fmt::Display for MemoryFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CPU access to {} bytes at {:#x} is outside memory",
            self.len,
            self.addr.as_u64()
        )
    }
}

/// CPU copies between physical ranges, as the CPU sees memory (through its caches).
///
/// Contract: the copy behaves as CPU loads and stores through the data cache, byte for byte,
/// for ranges that do not overlap. Ranges outside memory give a [`MemoryFault`] and change
/// nothing.
pub trait CpuMemory {
    /// Copies `len` bytes from `src` to `dst`.
    ///
    /// # Errors
    /// [`MemoryFault`] if either range is not memory; nothing is written then.
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault>;
    /// Sets `len` bytes at `dst` to `byte`.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is not memory; nothing is written then.
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault>;
}

/// Which CPU is running, so per-CPU structures (bounce pool areas) avoid shared locks.
///
/// Contract: `current_cpu() < cpu_count()`. The answer may be stale by the time the caller
/// uses it (the thread may migrate); dmakit uses it only as a hint for where to start.
pub trait CpuTopology {
    /// Number of CPUs (at least 1).
    fn cpu_count(&self) -> usize;
    /// The CPU the caller runs on.
    fn current_cpu(&self) -> usize;
}

/// Contiguous page allocation, used to create and grow bounce pools.
///
/// Contract: a successful allocation returns `pages` physically contiguous pages, aligned to
/// [`PAGE_SIZE`], whose last byte is at or below `max_addr`, owned by the caller until it
/// passes the same base and count to `free_pages`.
pub trait PageAllocator {
    /// Allocates `pages` contiguous pages below `max_addr`, or `None` when there are none.
    fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr>;
    /// Returns pages obtained from `alloc_pages` with the same `pages` count.
    fn free_pages(&self, base: PhysAddr, pages: u64);
}

/// Pages mapped so that CPU and devices see the same bytes without cache maintenance
/// (an uncached or write-combined CPU mapping, or memory of a coherent interconnect).
///
/// Contract: as [`PageAllocator`], and in addition CPU accesses to the returned pages made
/// through [`CpuMemory`] never leave data in, or read data from, a write-back cache line,
/// until the pages are freed.
pub trait CoherentPageAllocator {
    /// Allocates `pages` contiguous coherent pages below `max_addr`, or `None`.
    fn alloc_coherent_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr>;
    /// Returns pages obtained from `alloc_coherent_pages` with the same count.
    fn free_coherent_pages(&self, base: PhysAddr, pages: u64);
}

/// Everything the streaming paths need from a platform.
pub trait Platform: CacheMaintenance + CpuMemory + CpuTopology {}
impl<T: CacheMaintenance + CpuMemory + CpuTopology + ?Sized> Platform for T {}

/// Forwards a platform trait through a smart pointer or reference, so a platform can be
/// shared (`&P`, `Arc<P>`) between a mapper, pools and growth workers.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<T: CacheMaintenance + ?Sized> CacheMaintenance for $ptr {
            fn cache_line_size(&self) -> u64 {
                (**self).cache_line_size()
            }
            fn clean(&self, range: PhysRange) {
                (**self).clean(range)
            }
            fn invalidate(&self, range: PhysRange) {
                (**self).invalidate(range)
            }
            fn clean_invalidate(&self, range: PhysRange) {
                (**self).clean_invalidate(range)
            }
        }

        impl<T: CpuMemory + ?Sized> CpuMemory for $ptr {
            fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
                (**self).copy(dst, src, len)
            }
            fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
                (**self).fill(dst, byte, len)
            }
        }

        impl<T: CpuTopology + ?Sized> CpuTopology for $ptr {
            fn cpu_count(&self) -> usize {
                (**self).cpu_count()
            }
            fn current_cpu(&self) -> usize {
                (**self).current_cpu()
            }
        }

        impl<T: PageAllocator + ?Sized> PageAllocator for $ptr {
            fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
                (**self).alloc_pages(pages, max_addr)
            }
            fn free_pages(&self, base: PhysAddr, pages: u64) {
                (**self).free_pages(base, pages)
            }
        }

        impl<T: CoherentPageAllocator + ?Sized> CoherentPageAllocator for $ptr {
            fn alloc_coherent_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
                (**self).alloc_coherent_pages(pages, max_addr)
            }
            fn free_coherent_pages(&self, base: PhysAddr, pages: u64) {
                (**self).free_coherent_pages(base, pages)
            }
        }
    )*};
}

forward!(&T, alloc::sync::Arc<T>);
