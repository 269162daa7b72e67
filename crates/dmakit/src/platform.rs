//! The platform traits: the only door from dmakit to hardware.
//!
//! dmakit never touches memory, caches or page tables itself. A kernel, hypervisor or
//! firmware implements these narrow traits for its machine; the machine model in
//! `dmakit-sim` implements them for a simulated one, and a host platform implements them
//! over ordinary memory for benchmarks. Each trait states the contract the mapping layer
//! relies on; an implementation that breaks it breaks DMA safety.

use core::fmt;

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::DeviceId;

pub(crate) mod interrupts;
pub use interrupts::{
    install_interrupt_control, AlreadyInstalled, InterruptControl, InterruptState,
};
mod sharing;
pub use sharing::{HostSharing, MemorySharing};

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

impl core::error::Error for MemoryFault {}

/// CPU copies between physical ranges, as the CPU sees memory (through its caches).
///
/// Contract: the copy behaves as CPU loads and stores through the data cache, byte for byte,
/// for ranges that do not overlap. Ranges outside memory give a [`MemoryFault`] and change
/// nothing.
///
/// # Implementation safety
/// The mapping layer's safe callers (the typed API) rely on this trait to write exactly the
/// bytes they name. An implementation must write only `[dst, dst + len)` and read only
/// `[src, src + len)`, and must turn a range it cannot access into a [`MemoryFault`]
/// instead of touching other memory: a copy that strays corrupts memory Rust code owns.
pub unsafe trait CpuMemory {
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

/// Platform time, for rate-limited reporting.
///
/// Contract: monotonic nanoseconds since an arbitrary origin.
pub trait Clock {
    /// Now, in nanoseconds.
    fn now_ns(&self) -> u64;
}

/// Changes the CPU's mapping of pages between cached and uncached, so ordinary pages can
/// serve as coherent memory for devices that do not snoop caches (Linux's
/// `arch_dma_prep_coherent` plus the uncached remap behind `dma_alloc_coherent`).
///
/// Contract: after [`CoherentRemap::make_uncached`] returns, every CPU access through
/// [`CpuMemory`] to a page overlapping the range bypasses write-back caches, and no line of
/// those pages is left in a cache (dirty lines were written back first, so no data is lost);
/// nothing, not even speculation, brings such a line back until
/// [`CoherentRemap::make_cached`] is called for it. A page is uncached or cached as a whole.
pub trait CoherentRemap {
    /// Makes the pages overlapping `range` uncached for the CPU.
    ///
    /// # Errors
    /// [`MemoryFault`] if the range is not memory; nothing changed then.
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault>;
    /// Makes the pages overlapping `range` cached again (after the memory stopped being used
    /// as coherent memory). Ranges that are not memory, or not uncached, are ignored.
    fn make_cached(&self, range: PhysRange);
}

/// A CPU virtual address inside a mapping made by [`VirtualMapping::vmap`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(pub u64);

impl VirtAddr {
    /// The raw address value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + bytes`, or `None` if that leaves the address space.
    #[inline]
    pub const fn checked_add(self, bytes: u64) -> Option<Self> {
        match self.0.checked_add(bytes) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Contiguous CPU views of scattered pages (Linux `vmap`), and the cache maintenance such a
/// second view needs on caches that alias by virtual address.
///
/// On a physically indexed cache a page mapped twice is cached once, and the two views
/// always agree. On a virtually indexed cache that aliases (some ARMv6/v7, MIPS, PA-RISC,
/// SPARC), the view made by `vmap` caches the same bytes in *other* lines than the linear
/// map does: maintenance by physical address ([`CacheMaintenance`]) acts only on the linear
/// map's lines, and data written through the view stays in the view's lines until
/// [`VirtualMapping::flush_virt`].
///
/// Contract: `vmap` maps the pages, in order, at consecutive page-sized virtual ranges and
/// returns the first address; the mapping lives until `vunmap`. `flush_virt` writes back the
/// view's dirty lines overlapping the range (memory then holds what was written through
/// it); `invalidate_virt` drops the view's lines overlapping the range (later reads through
/// it see memory). On a machine without aliasing both may do nothing. Ranges outside a live
/// mapping are ignored.
pub trait VirtualMapping {
    /// Maps `pages` (page-aligned physical addresses, any order) at a contiguous virtual
    /// range; `None` when the virtual address space is exhausted or `pages` is empty.
    fn vmap(&self, pages: &[PhysAddr]) -> Option<VirtAddr>;
    /// Removes the mapping of `pages` pages at `addr` made by `vmap`. Lines the view still
    /// holds are not written back: flush first.
    fn vunmap(&self, addr: VirtAddr, pages: usize);
    /// Writes back the view's dirty lines overlapping `[addr, addr + len)`.
    fn flush_virt(&self, addr: VirtAddr, len: u64);
    /// Drops the view's lines overlapping `[addr, addr + len)` without writing them back.
    fn invalidate_virt(&self, addr: VirtAddr, len: u64);
    /// Whether the view caches separately from the linear map (maintenance by virtual
    /// address is needed). Informational: dmakit always performs it.
    fn aliases(&self) -> bool;
}

/// Everything the streaming paths need from a platform.
pub trait Platform: CacheMaintenance + CpuMemory + CpuTopology {}
impl<T: CacheMaintenance + CpuMemory + CpuTopology + ?Sized> Platform for T {}

/// Forwards a platform trait through a smart pointer or reference, so a platform can be
/// shared (`&P`, `Arc<P>`) between a mapper, pools and growth workers.
macro_rules! forward {
    ($($ptr:ty),*) => {$(
        impl<T: CacheMaintenance + ?Sized> CacheMaintenance for $ptr {
            #[inline]
            fn cache_line_size(&self) -> u64 {
                (**self).cache_line_size()
            }
            #[inline]
            fn clean(&self, range: PhysRange) {
                (**self).clean(range)
            }
            #[inline]
            fn invalidate(&self, range: PhysRange) {
                (**self).invalidate(range)
            }
            #[inline]
            fn clean_invalidate(&self, range: PhysRange) {
                (**self).clean_invalidate(range)
            }
        }

        // SAFETY: forwards every call unchanged to an implementation that keeps the
        // contract.
        unsafe impl<T: CpuMemory + ?Sized> CpuMemory for $ptr {
            #[inline]
            fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
                (**self).copy(dst, src, len)
            }
            #[inline]
            fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
                (**self).fill(dst, byte, len)
            }
        }

        impl<T: CpuTopology + ?Sized> CpuTopology for $ptr {
            #[inline]
            fn cpu_count(&self) -> usize {
                (**self).cpu_count()
            }
            #[inline]
            fn current_cpu(&self) -> usize {
                (**self).current_cpu()
            }
        }

        impl<T: PageAllocator + ?Sized> PageAllocator for $ptr {
            #[inline]
            fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
                (**self).alloc_pages(pages, max_addr)
            }
            #[inline]
            fn free_pages(&self, base: PhysAddr, pages: u64) {
                (**self).free_pages(base, pages)
            }
        }

        impl<T: Clock + ?Sized> Clock for $ptr {
            #[inline]
            fn now_ns(&self) -> u64 {
                (**self).now_ns()
            }
        }

        impl<T: CoherentPageAllocator + ?Sized> CoherentPageAllocator for $ptr {
            #[inline]
            fn alloc_coherent_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
                (**self).alloc_coherent_pages(pages, max_addr)
            }
            #[inline]
            fn free_coherent_pages(&self, base: PhysAddr, pages: u64) {
                (**self).free_coherent_pages(base, pages)
            }
        }
    )*};
}

forward!(&T, alloc::sync::Arc<T>);

/// Forwards the allocation-side platform traits through a reference or `Arc`.
macro_rules! forward_alloc_side {
    ($($ptr:ty),*) => {$(
        impl<T: CoherentRemap + ?Sized> CoherentRemap for $ptr {
            fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
                (**self).make_uncached(range)
            }
            fn make_cached(&self, range: PhysRange) {
                (**self).make_cached(range)
            }
        }

        impl<T: VirtualMapping + ?Sized> VirtualMapping for $ptr {
            fn vmap(&self, pages: &[PhysAddr]) -> Option<VirtAddr> {
                (**self).vmap(pages)
            }
            fn vunmap(&self, addr: VirtAddr, pages: usize) {
                (**self).vunmap(addr, pages)
            }
            fn flush_virt(&self, addr: VirtAddr, len: u64) {
                (**self).flush_virt(addr, len)
            }
            fn invalidate_virt(&self, addr: VirtAddr, len: u64) {
                (**self).invalidate_virt(addr, len)
            }
            fn aliases(&self) -> bool {
                (**self).aliases()
            }
        }
    )*};
}

forward_alloc_side!(&T, alloc::sync::Arc<T>);

/// Identifies an IOMMU domain: one I/O virtual address space with its own page tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IommuDomainId(pub u32);

impl fmt::Display for IommuDomainId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domain{}", self.0)
    }
}

/// What a device may do through an IOMMU mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IommuPerm {
    /// The device may read the memory (outbound data).
    pub read: bool,
    /// The device may write the memory (inbound data).
    pub write: bool,
    /// The target is another device's registers, not memory (Linux `IOMMU_MMIO`): the
    /// IOMMU must give the access device (uncached, unmerged) attributes.
    pub mmio: bool,
}

impl IommuPerm {
    /// The least a transfer in `dir` needs: `ToDevice` reads, `FromDevice` writes,
    /// `Bidirectional` both.
    pub(crate) const fn for_direction(dir: crate::direction::Direction) -> Self {
        Self {
            read: dir.device_reads(),
            write: dir.device_writes(),
            mmio: false,
        }
    }

    /// As [`IommuPerm::for_direction`], for a peer device's registers.
    pub(crate) const fn for_mmio(dir: crate::direction::Direction) -> Self {
        Self {
            mmio: true,
            ..Self::for_direction(dir)
        }
    }
}

/// Why an IOMMU page-table or domain operation failed. The operation changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IommuError {
    /// No live domain with this id.
    NoSuchDomain(IommuDomainId),
    /// The IOVA, physical address or length is zero or not a multiple of the granule.
    Misaligned {
        /// The IOVA given.
        iova: u64,
        /// The physical address given (0 for operations without one).
        phys: u64,
        /// The length given.
        len: u64,
    },
    /// Part of the range lies outside the IOMMU's input address range (its aperture).
    OutOfAperture {
        /// The IOVA given.
        iova: u64,
        /// The length given.
        len: u64,
    },
    /// `map` found a granule of the range already mapped.
    AlreadyMapped {
        /// The first granule found mapped.
        iova: u64,
    },
    /// `unmap` found a granule of the range not mapped.
    NotMapped {
        /// The first granule found unmapped.
        iova: u64,
    },
    /// No memory for page-table pages or for another domain.
    NoMemory,
    /// The domain cannot be destroyed while devices are attached to it.
    DomainBusy(IommuDomainId),
    /// The IOMMU has no identity (passthrough) domains.
    IdentityUnsupported,
    /// The domain is an identity domain: it has no page tables to map or unmap.
    IdentityDomain(IommuDomainId),
}

impl fmt::Display for IommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            IommuError::NoSuchDomain(d) => write!(f, "no IOMMU {d}"),
            IommuError::Misaligned { iova, phys, len } => write!(
                f,
                "IOMMU range iova {iova:#x} phys {phys:#x} len {len:#x} is not granule aligned"
            ),
            IommuError::OutOfAperture { iova, len } => write!(
                f,
                "IOMMU range of {len:#x} bytes at iova {iova:#x} leaves the aperture"
            ),
            IommuError::AlreadyMapped { iova } => write!(f, "iova {iova:#x} is already mapped"),
            IommuError::NotMapped { iova } => write!(f, "iova {iova:#x} is not mapped"),
            IommuError::NoMemory => f.write_str("no memory for IOMMU page tables or domains"),
            IommuError::DomainBusy(d) => write!(f, "{d} still has devices attached"),
            IommuError::IdentityUnsupported => {
                f.write_str("the IOMMU has no identity (passthrough) domains")
            }
            IommuError::IdentityDomain(d) => {
                write!(f, "{d} is an identity domain: it has no page tables")
            }
        }
    }
}

impl core::error::Error for IommuError {}

/// An IOMMU: per-domain page tables translating I/O virtual addresses (IOVAs) to physical
/// addresses, and the IOTLB that caches those translations.
///
/// Contract:
/// - Translations are made of whole granules ([`Iommu::granule`], a power of two of at
///   least [`PAGE_SIZE`]): every IOVA, physical address and length passed to `map` and
///   `unmap` is a non-zero multiple of it, else [`IommuError::Misaligned`].
/// - `map` and `unmap` are all or nothing: on error no translation changed.
/// - A new translation is usable by devices when `map` returns; no IOTLB invalidation is
///   needed for it (an implementation whose hardware caches *absent* translations
///   invalidates inside `map`).
/// - After `unmap` returns the page tables no longer hold the translations, but **the IOTLB
///   may**: a device may keep reaching the old physical memory through a cached
///   translation until a [`Iommu::flush_iotlb_range`] covering the range, or a
///   [`Iommu::flush_iotlb_all`] of the domain, has returned. The caller therefore must not
///   reuse an unmapped IOVA, nor hand the memory it reached to anyone else, before such an
///   invalidation. Invalidations are synchronous: when they return, no device access
///   (including one in flight) uses the old translations.
/// - A device attached to a domain reaches only what that domain maps, with the mapping's
///   permissions; any other access faults (and is reported by the implementation) instead
///   of reaching memory. A device attached to no domain is blocked.
pub trait Iommu {
    /// The translation granule in bytes (4 KiB, 16 KiB or 64 KiB on common hardware).
    fn granule(&self) -> u64;
    /// The first and last IOVA (inclusive) the page tables can translate.
    fn aperture(&self) -> (u64, u64);
    /// Creates an empty domain (nothing mapped, no device attached).
    ///
    /// # Errors
    /// [`IommuError::NoMemory`] when no more domains can be created.
    fn create_domain(&self) -> Result<IommuDomainId, IommuError>;
    /// Creates an identity (passthrough) domain: a device attached to it reaches memory at
    /// the physical address it uses, untranslated; it has no page tables (`map` and `unmap`
    /// on it fail). Destroyed, attached and detached like any domain.
    ///
    /// # Errors
    /// [`IommuError::IdentityUnsupported`] (the default, for an IOMMU without
    /// passthrough); [`IommuError::NoMemory`] when no more domains can be created.
    fn create_identity_domain(&self) -> Result<IommuDomainId, IommuError> {
        Err(IommuError::IdentityUnsupported)
    }
    /// Destroys an empty domain, freeing its page tables.
    ///
    /// # Errors
    /// [`IommuError::NoSuchDomain`]; [`IommuError::DomainBusy`] while devices are attached.
    fn destroy_domain(&self, domain: IommuDomainId) -> Result<(), IommuError>;
    /// Routes `device`'s accesses through `domain` from now on (moving it from any domain
    /// it was attached to; the IOTLB entries of its old domain are not used for it again).
    ///
    /// # Errors
    /// [`IommuError::NoSuchDomain`].
    fn attach_device(&self, domain: IommuDomainId, device: DeviceId) -> Result<(), IommuError>;
    /// Blocks `device`: its accesses fault from now on. Unknown devices are ignored.
    fn detach_device(&self, device: DeviceId);
    /// Maps `len` bytes at `iova` to `phys` with `perm`.
    ///
    /// # Errors
    /// [`IommuError::NoSuchDomain`], [`IommuError::Misaligned`],
    /// [`IommuError::OutOfAperture`], [`IommuError::AlreadyMapped`],
    /// [`IommuError::NoMemory`]; nothing was mapped then.
    fn map(
        &self,
        domain: IommuDomainId,
        iova: DmaAddr,
        phys: PhysAddr,
        len: u64,
        perm: IommuPerm,
    ) -> Result<(), IommuError>;
    /// Removes the translations of `len` bytes at `iova` from the page tables (see the
    /// trait docs for what stays in the IOTLB).
    ///
    /// # Errors
    /// [`IommuError::NoSuchDomain`], [`IommuError::Misaligned`],
    /// [`IommuError::OutOfAperture`], [`IommuError::NotMapped`] when a granule of the range
    /// is not mapped; nothing was unmapped then.
    fn unmap(&self, domain: IommuDomainId, iova: DmaAddr, len: u64) -> Result<(), IommuError>;
    /// Invalidates the IOTLB entries of `domain` overlapping `[iova, iova + len)`. Unknown
    /// domains and empty ranges are ignored.
    fn flush_iotlb_range(&self, domain: IommuDomainId, iova: DmaAddr, len: u64);
    /// Invalidates every IOTLB entry of `domain`. Unknown domains are ignored.
    fn flush_iotlb_all(&self, domain: IommuDomainId);
}

/// Forwards [`Iommu`] through a reference or `Arc`.
macro_rules! forward_iommu {
    ($($ptr:ty),*) => {$(
        impl<T: Iommu + ?Sized> Iommu for $ptr {
            fn granule(&self) -> u64 {
                (**self).granule()
            }
            fn aperture(&self) -> (u64, u64) {
                (**self).aperture()
            }
            fn create_domain(&self) -> Result<IommuDomainId, IommuError> {
                (**self).create_domain()
            }
            fn create_identity_domain(&self) -> Result<IommuDomainId, IommuError> {
                (**self).create_identity_domain()
            }
            fn destroy_domain(&self, domain: IommuDomainId) -> Result<(), IommuError> {
                (**self).destroy_domain(domain)
            }
            fn attach_device(
                &self,
                domain: IommuDomainId,
                device: DeviceId,
            ) -> Result<(), IommuError> {
                (**self).attach_device(domain, device)
            }
            fn detach_device(&self, device: DeviceId) {
                (**self).detach_device(device)
            }
            fn map(
                &self,
                domain: IommuDomainId,
                iova: DmaAddr,
                phys: PhysAddr,
                len: u64,
                perm: IommuPerm,
            ) -> Result<(), IommuError> {
                (**self).map(domain, iova, phys, len, perm)
            }
            fn unmap(&self, domain: IommuDomainId, iova: DmaAddr, len: u64) -> Result<(), IommuError> {
                (**self).unmap(domain, iova, len)
            }
            fn flush_iotlb_range(&self, domain: IommuDomainId, iova: DmaAddr, len: u64) {
                (**self).flush_iotlb_range(domain, iova, len)
            }
            fn flush_iotlb_all(&self, domain: IommuDomainId) {
                (**self).flush_iotlb_all(domain)
            }
        }
    )*};
}

forward_iommu!(&T, alloc::sync::Arc<T>);
