//! DMA allocators: memory a device can reach, in the shapes drivers ask for.
//!
//! The streaming API ([`crate::DmaMapper`]) lends buffers the caller already has. Drivers
//! also need memory allocated *for* a device, and which memory that may be depends on the
//! device: without an IOMMU, memory it reaches through its bus windows at bus addresses
//! its coherent mask and bus limit allow; anywhere behind one; uncached for a
//! non-coherent device that must share it with the CPU without maintenance. This module
//! answers those requests on top of a zoned page allocator ([`ZonedPages`]), the
//! coherent object pool ([`crate::coherent_pool`]) and the platform traits, as Linux's
//! `kernel/dma/{direct,pool,mapping}.c` do:
//!
//! - `coherent`: [`DmaAllocator::alloc_coherent`], memory CPU and device see alike without
//!   maintenance; in atomic context from the atomic pool, which never waits and grows in the
//!   background when its free space falls below its initial size;
//! - `declared`: [`DmaAllocator::declare_coherent`], a region of memory that serves one
//!   device's coherent allocations alone;
//! - `window`: [`DmaAllocator::with_uncached_window`], coherent memory from a window the
//!   platform mapped uncached in advance, for kernels that cannot remap single pages;
//! - `pages`: [`DmaAllocator::alloc_pages`], cached pages the device can reach; the caller
//!   syncs;
//! - `noncontiguous`: [`DmaAllocator::alloc_noncontiguous`], a table contiguous in device
//!   space: one physical chunk without an IOMMU, scattered pages behind one;
//! - `alloc_sg`: [`DmaAllocator::alloc_sg`] (proposed for Linux in 2018, never merged), a
//!   scatter-gather table placed where the device can reach it, falling back to memory the
//!   mapping layer bounces at map time;
//! - `pool`: [`DmaPool`], small equal blocks of coherent memory for one device, aligned
//!   and never crossing a boundary (Linux `dma_pool_*`);
//! - `vmap`: contiguous CPU views of tables, with the flushes caches that alias by virtual
//!   address need;
//! - `space`: the [`DeviceAddressSpace`] seam through which an IOMMU plugs in;
//! - `zones`: the [`ZonedPages`] seam through which a page allocator plugs in.
//!
//! Every allocation returns an owned handle (not `Clone`) that only the matching free
//! function consumes; a failed allocation gives back everything it took before returning
//! its error, and a refused free hands the handle back.

mod alloc_sg;
mod coherent;
mod coherent_raw;
mod declared;
mod error;
mod noncontiguous;
mod pages;
mod pool;
mod reach;
mod sg_table;
mod space;
mod vmap;
mod window;
mod zones;

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::coherent_pool::{ObjectPool, ObjectPoolConfig};
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::growth::GrowthHook;
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, HostSharing, PAGE_SIZE};
use crate::reintroduce::Defect;
use crate::translation::{bus_within, highest_phys_within};

pub use coherent::CoherentBuffer;
pub use coherent_raw::RawCoherent;
pub use error::{DmaAllocError, Rejected};
pub use pages::DmaPages;
pub use pool::{DmaBlock, DmaPool, DmaPoolUsage};
pub use sg_table::{SgChunk, SgTable, TableKind};
pub use space::{DeviceAddressSpace, DeviceSpaceError, NoTranslation};
pub use vmap::Vmap;
pub use window::UncachedWindow;
pub use zones::{PageAllocError, ZonedPages};

/// The context an allocation is made in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocContext {
    /// Must not sleep or wait (interrupt handler, spin lock held). Non-coherent devices are
    /// served from the atomic pool, which never waits: when it has no room the allocation
    /// fails at once.
    Atomic,
    /// May take the time to allocate pages and change their CPU mapping.
    MayBlock,
}

/// Shape of a [`DmaAllocator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaAllocatorConfig {
    /// Initial size of the atomic pool in bytes: a power of two, at least a page. Growth is
    /// requested when the pool's free space falls below this. It is also the largest
    /// atomic allocation. Linux uses 128 KiB per GiB of RAM, at least 128 KiB.
    pub atomic_pool_bytes: u64,
    /// The atomic pool's memory lies at or below this address (initial memory, and growth
    /// never goes higher). The default, 4 GiB - 1, serves 32-bit devices; where RAM lies
    /// above 4 GiB, [`DmaAllocatorConfig::for_memory`] derives one from the RAM.
    pub atomic_pool_reach: u64,
    /// Smallest atomic pool object: a power of two, at least 64 and at least the largest
    /// cache line of the platform and its devices, so no two objects share a line.
    pub atomic_min_object: u64,
}

impl Default for DmaAllocatorConfig {
    /// A 128 KiB atomic pool below 4 GiB with 128-byte objects.
    fn default() -> Self {
        Self {
            atomic_pool_bytes: 128 * 1024,
            atomic_pool_reach: u32::MAX as u64,
            atomic_min_object: 128,
        }
    }
}

/// Tokens identifying allocators and tables, so a handle given to the wrong allocator (or
/// a view with the wrong table) is refused.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

pub(crate) fn next_token() -> u64 {
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// The DMA allocators over one platform, one zoned page allocator and one device address
/// space. See the [module docs](self).
///
/// `P` is the platform (cache maintenance, CPU memory access, uncached remapping; views
/// also need [`crate::platform::VirtualMapping`]); `Z` is the zoned page allocator, any
/// [`ZonedPages`] (`dmakit-mem`'s `ZonedPageAllocator`, by reference or in an `Arc`); `S` is the
/// device address space ([`NoTranslation`] without an IOMMU). All methods take `&self`.
///
/// A descriptor ring the CPU and a device share without cache maintenance, given back when
/// the driver is done (a refused free returns the buffer with the error, so it is never
/// lost):
///
/// ```
/// use dmakit::dma_alloc::{AllocContext, DeviceAddressSpace, DmaAllocError, DmaAllocator};
/// use dmakit::dma_alloc::ZonedPages;
/// use dmakit::prelude::*;
/// use dmakit::CoherentRemap;
///
/// fn with_ring<P, Z, S>(alloc: &DmaAllocator<P, Z, S>, nic: &Device) -> Result<(), DmaAllocError>
/// where
///     P: CacheMaintenance + CpuMemory + CoherentRemap,
///     Z: ZonedPages,
///     S: DeviceAddressSpace,
/// {
///     let ring = alloc.alloc_coherent(nic, 4096, AllocContext::MayBlock)?;
///     // The device is given `ring.dma()`; the CPU writes descriptors at `ring.phys()`.
///     assert_eq!(ring.size(), 4096);
///     alloc.free_coherent(nic, ring).map_err(|refused| refused.error)
/// }
/// ```
pub struct DmaAllocator<P, Z, S = NoTranslation> {
    platform: P,
    zones: Z,
    space: S,
    cfg: DmaAllocatorConfig,
    atomic: ObjectPool,
    /// Chunks of the atomic pool, to give back on [`DmaAllocator::release`].
    atomic_chunks: Mutex<Vec<PhysRange>>,
    /// The uncached window the atomic pool is made of, if it is one (see
    /// [`DmaAllocator::with_uncached_window`]): it is neither remapped nor given to the
    /// zones, and it serves every coherent allocation of a non-coherent device.
    window: Option<PhysRange>,
    /// Coherent memory declared for single devices.
    declared: declared::DeclaredRegions,
    /// Shares the memory of devices that must bounce with the host (none by default).
    sharing: HostSharing,
    /// Every device is one that must bounce (the mapper forces bouncing for all).
    share_every_device: bool,
    id: u64,
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// An allocator whose atomic pool starts with `cfg.atomic_pool_bytes` of uncached memory
    /// taken from `zones` below `cfg.atomic_pool_reach`. When the pool's free space falls
    /// below its initial size it sends one request at a time to `growth` (without a hook it
    /// never grows); whoever serves the hook answers by calling
    /// [`DmaAllocator::grow_atomic_pool`] where waiting is allowed (a
    /// [`crate::growth::GrowthWorker`] thread with `std`, a work queue without).
    ///
    /// # Errors
    /// [`DmaAllocError::BadConfig`] for a configuration that breaks the rules on
    /// [`DmaAllocatorConfig`]; [`DmaAllocError::GrowthFailed`] when the initial pool memory
    /// cannot be found (on RAM above 4 GiB, build the configuration with
    /// [`DmaAllocatorConfig::for_memory`]); [`DmaAllocError::Memory`] when the platform
    /// refuses to remap it. Nothing is left allocated on error.
    pub fn new(
        platform: P,
        zones: Z,
        space: S,
        cfg: DmaAllocatorConfig,
        growth: Option<Arc<dyn GrowthHook>>,
    ) -> Result<Self, DmaAllocError> {
        let bytes = cfg.atomic_pool_bytes;
        if !bytes.is_power_of_two() || bytes < PAGE_SIZE {
            return Err(DmaAllocError::BadConfig(
                "atomic_pool_bytes must be a power of two of at least a page",
            ));
        }
        let pool_cfg = ObjectPoolConfig {
            min_object: cfg.atomic_min_object,
            max_object: bytes,
            chunk_bytes: bytes,
            refill_below: bytes,
            name: "dma-atomic-pool",
        };
        let this = Self::with_pool(platform, zones, space, cfg, pool_cfg, growth, None)?;
        this.add_atomic_memory(bytes / PAGE_SIZE, bytes / PAGE_SIZE, cfg.atomic_pool_reach)?;
        Ok(this)
    }

    /// An allocator whose atomic pool has the shape `pool_cfg` and no memory yet; `window`
    /// is the uncached window the pool will be made of, if it is one.
    ///
    /// # Errors
    /// [`DmaAllocError::BadConfig`] when `cfg.atomic_min_object` breaks its rules for a
    /// pool whose largest object is `pool_cfg.max_object`, or the pool rejects the shape.
    fn with_pool(
        platform: P,
        zones: Z,
        space: S,
        cfg: DmaAllocatorConfig,
        pool_cfg: ObjectPoolConfig,
        growth: Option<Arc<dyn GrowthHook>>,
        window: Option<PhysRange>,
    ) -> Result<Self, DmaAllocError> {
        let min_object = cfg.atomic_min_object;
        if !min_object.is_power_of_two()
            || min_object < 64
            || min_object < platform.cache_line_size()
            || min_object > pool_cfg.max_object
        {
            return Err(DmaAllocError::BadConfig(
                "atomic_min_object must be a power of two, at least 64 and the cache line, \
                 at most the pool",
            ));
        }
        let atomic = ObjectPool::new(pool_cfg, growth)
            .map_err(|_| DmaAllocError::BadConfig("atomic pool shape rejected"))?;
        Ok(Self {
            platform,
            zones,
            space,
            cfg,
            atomic,
            atomic_chunks: Mutex::new(Vec::new()),
            window,
            declared: declared::DeclaredRegions::default(),
            sharing: HostSharing::default(),
            share_every_device: false,
            id: next_token(),
        })
    }

    /// Confidential guests: coherent memory for devices that must bounce
    /// ([`Device::force_bounce`], or every device when `every_device`, as for a mapper
    /// built with [`crate::DmaMapperBuilder::force_bounce_all`]) is shared with the host
    /// through `sharing`, since such devices reach no private memory: the atomic pool's
    /// memory, now and as it grows (it serves every device, so it is shared whole), and
    /// the pages [`DmaAllocator::alloc_coherent`], [`DmaAllocator::alloc_pages`],
    /// [`DmaAllocator::alloc_noncontiguous`] and [`DmaAllocator::alloc_sg`] take for those
    /// devices, made private again when they are freed ([`DmaAllocator::release`] makes the
    /// atomic pool private again). Conversions may block: they are made where memory is
    /// obtained, never on an atomic allocation (an atomic coherent allocation to share is
    /// served by the atomic pool; the other kinds may block and take no context).
    ///
    /// # Errors
    /// [`DmaAllocError::NotShared`] when the platform refuses to share the atomic pool; the
    /// allocator is handed back unchanged (its pool private).
    #[allow(clippy::result_large_err)]
    pub fn with_memory_sharing(
        mut self,
        sharing: HostSharing,
        every_device: bool,
    ) -> Result<Self, Rejected<Self>> {
        let chunks = self.atomic_chunks.lock().clone();
        for (i, c) in chunks.iter().enumerate() {
            if let Err(fault) = sharing.share(*c) {
                for done in &chunks[..i] {
                    sharing.unshare(*done);
                }
                return Err(Rejected {
                    error: DmaAllocError::NotShared(fault),
                    handle: self,
                });
            }
        }
        self.sharing = sharing;
        self.share_every_device = every_device;
        Ok(self)
    }

    /// Whether `dev`'s coherent memory must be shared with the host.
    pub(crate) fn must_share(&self, dev: &Device) -> bool {
        self.sharing.is_active() && (self.share_every_device || dev.force_bounce())
    }

    /// The host sharing of memory for devices that must bounce.
    pub(crate) fn sharing(&self) -> &HostSharing {
        &self.sharing
    }

    /// Shares `range` with the host when `shared` (it is memory taken for a device that
    /// must bounce, see [`Self::must_share`]).
    ///
    /// # Errors
    /// [`DmaAllocError::NotShared`]; the range is private then.
    pub(crate) fn share_if(&self, shared: bool, range: PhysRange) -> Result<(), DmaAllocError> {
        if shared {
            self.sharing
                .share(range)
                .map_err(DmaAllocError::NotShared)?;
        }
        Ok(())
    }

    /// Makes `range` private again if it was `shared` by [`Self::share_if`].
    pub(crate) fn unshare_if(&self, shared: bool, range: PhysRange) {
        if shared {
            self.sharing.unshare(range);
        }
    }

    /// The platform.
    pub(crate) fn platform(&self) -> &P {
        &self.platform
    }

    /// The zoned page allocator.
    pub(crate) fn zones(&self) -> &Z {
        &self.zones
    }

    /// The device address space.
    pub fn address_space(&self) -> &S {
        &self.space
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &DmaAllocatorConfig {
        &self.cfg
    }

    /// Tears the allocator down, giving the atomic pool's memory back to the zones (cached
    /// again; an uncached window is left to its owner as it is) and declared regions back
    /// to their owner (cached again). Page-backed allocations hold their own pages and are
    /// unaffected, but they can no longer be freed through this allocator: free them
    /// first.
    ///
    /// # Errors
    /// [`DmaAllocError::LiveAllocations`] (allocator handed back) while atomic pool or
    /// declared region objects are live.
    #[allow(clippy::result_large_err)]
    pub fn release(self) -> Result<(), Rejected<Self>> {
        let live = self.atomic.usage().live + self.declared.live();
        if live > 0 {
            return Err(Rejected {
                error: DmaAllocError::LiveAllocations { live },
                handle: self,
            });
        }
        let declared = self.declared.take_all();
        for r in declared.iter().filter(|r| r.uncached) {
            self.platform.make_cached(r.range);
        }
        let chunks = core::mem::take(&mut *self.atomic_chunks.lock());
        for c in chunks {
            self.sharing.unshare(c);
            if self.window != Some(c) {
                self.platform.make_cached(c);
                self.give_pages(c.start(), c.len() / PAGE_SIZE);
            }
        }
        Ok(())
    }

    // ----- shared helpers -----

    /// Pages for `size` bytes, validated.
    pub(crate) fn pages_for(&self, dev: &Device, size: u64) -> Result<u64, DmaAllocError> {
        if size == 0 {
            return Err(DmaAllocError::ZeroSize { device: dev.id() });
        }
        let pages = size.div_ceil(PAGE_SIZE);
        if pages > Z::MAX_BLOCK_PAGES {
            return Err(DmaAllocError::TooLarge {
                device: dev.id(),
                size,
                max: Z::MAX_BLOCK_PAGES * PAGE_SIZE,
            });
        }
        Ok(pages)
    }

    /// Pages for `size` bytes of an allocation the device address space maps for `dev`
    /// (when it is translated): [`Self::pages_for`] rounded up to whole granules of the
    /// space, since a page-table entry of a 16 or 64 KiB granule maps the granule whole.
    /// Returns the pages and the granule in pages (1 when untranslated).
    pub(crate) fn mapped_pages_for(
        &self,
        dev: &Device,
        size: u64,
    ) -> Result<(u64, u64), DmaAllocError> {
        let pages = self.pages_for(dev, size)?;
        if !self.translated(dev) || crate::reintroduce::active(Defect::SubGranuleAllocNotRounded) {
            return Ok((pages, 1));
        }
        let unit = (self.space.granule(dev) / PAGE_SIZE).max(1);
        let rounded = pages.next_multiple_of(unit);
        if rounded > Z::MAX_BLOCK_PAGES {
            return Err(DmaAllocError::TooLarge {
                device: dev.id(),
                size,
                max: Z::MAX_BLOCK_PAGES * PAGE_SIZE,
            });
        }
        Ok((rounded, unit))
    }

    /// Whether `dev` sits behind the device address space's translation.
    pub(crate) fn translated(&self, dev: &Device) -> bool {
        self.space.translates(dev)
    }

    /// `pages` contiguous pages `dev` can use: anywhere when translated, else pages it
    /// reaches ([`Self::take_reachable`]). The zones' buddy allocator aligns a block to the
    /// next power of two of its size, so a multiple of a granule comes granule aligned.
    pub(crate) fn take_contiguous(
        &self,
        dev: &Device,
        pages: u64,
    ) -> Result<PhysAddr, DmaAllocError> {
        let r = if self.translated(dev) {
            self.zones.alloc_below(pages, u64::MAX)
        } else {
            self.take_reachable(dev, pages)
        };
        r.map_err(|e| mem_error(dev.id(), e))
    }

    /// `pages` contiguous pages whose every byte the untranslated `dev` reaches through
    /// its bus windows at a bus address its coherent mask and bus limit allow (every DMA
    /// allocation is judged on the coherent mask). A device seeing memory at its physical
    /// addresses, with no limit below its masks, gets the zones its mask fully reaches;
    /// any other gets pages below the highest physical address its windows reach below its
    /// limit, checked afterwards.
    ///
    /// # Errors
    /// As [`ZonedPages::alloc_for_device`]; [`PageAllocError::NoReachableZone`] (with the
    /// coherent mask) when the device's windows reach no memory below its limit or the
    /// pages found lie outside them (they are given back).
    pub(crate) fn take_reachable(
        &self,
        dev: &Device,
        pages: u64,
    ) -> Result<PhysAddr, PageAllocError> {
        let limit = dev.coherent_limit();
        if dev.bus_ranges().is_identity() && limit == dev.dma_mask() {
            return self.zones.alloc_for_device(dev, pages);
        }
        let none = PageAllocError::NoReachableZone {
            dma_mask: dev.coherent_dma_mask(),
        };
        let max = highest_phys_within(dev, limit).ok_or(none)?;
        let phys = self.zones.alloc_below(pages, max)?;
        if coherent_bus_address(dev, phys, pages).is_none() {
            self.give_pages(phys, pages);
            return Err(none);
        }
        Ok(phys)
    }

    /// Gives pages back on an unwinding path, where the pages were taken by this call.
    pub(crate) fn give_pages(&self, base: PhysAddr, pages: u64) {
        let r = self.zones.free(base, pages);
        debug_assert!(
            r.is_ok(),
            "unwinding a page allocation this call made: {r:?}"
        );
    }

    /// The device address of `pages` pages at `phys` for `dev`: the physical address when
    /// untranslated, else a fresh mapping of the pages in the device address space.
    pub(crate) fn device_address(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
        dir: Direction,
    ) -> Result<DmaAddr, DmaAllocError> {
        if !self.translated(dev) {
            return coherent_bus_address(dev, phys, pages).ok_or(
                DmaAllocError::NoReachableMemory {
                    device: dev.id(),
                    dma_mask: dev.coherent_dma_mask(),
                },
            );
        }
        let list: Vec<PhysAddr> = (0..pages).map(|i| phys.add(i * PAGE_SIZE)).collect();
        self.space
            .map_pages_contiguous(dev, &list, dir)
            .map_err(|error| DmaAllocError::DeviceSpace {
                device: dev.id(),
                error,
            })
    }

    /// Undoes [`Self::device_address`].
    pub(crate) fn drop_device_address(
        &self,
        dev: &Device,
        dma: DmaAddr,
        pages: u64,
        translated: bool,
    ) -> Result<(), DmaAllocError> {
        if !translated {
            return Ok(());
        }
        self.space
            .unmap_pages(dev, dma, pages)
            .map_err(|error| DmaAllocError::DeviceSpace {
                device: dev.id(),
                error,
            })
    }

    /// Checks that a handle was made by this allocator for `dev`.
    pub(crate) fn check_owner(
        &self,
        owner: u64,
        device: DeviceId,
        dev: &Device,
    ) -> Result<(), DmaAllocError> {
        if owner != self.id {
            return Err(DmaAllocError::ForeignHandle);
        }
        if device != dev.id() {
            return Err(DmaAllocError::WrongDevice {
                expected: device,
                got: dev.id(),
            });
        }
        Ok(())
    }

    /// Zeroes `range` through the CPU and leaves memory holding the zeros, with no line of
    /// it dirty in the cache, so the device never sees an earlier owner's data.
    pub(crate) fn zero_cached(&self, range: PhysRange) -> Result<(), DmaAllocError> {
        self.platform
            .fill(range.start(), 0, range.len())
            .map_err(DmaAllocError::Memory)?;
        self.platform.clean_invalidate(range);
        Ok(())
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }
}

/// Translates a page allocator error for `device`.
pub(crate) fn mem_error(device: DeviceId, e: PageAllocError) -> DmaAllocError {
    match e {
        PageAllocError::ZeroSize => DmaAllocError::ZeroSize { device },
        PageAllocError::TooLarge { pages, max_pages } => DmaAllocError::TooLarge {
            device,
            size: pages.saturating_mul(PAGE_SIZE),
            max: max_pages * PAGE_SIZE,
        },
        PageAllocError::OutOfMemory { pages } => DmaAllocError::OutOfMemory { device, pages },
        PageAllocError::NoReachableZone { dma_mask } => {
            DmaAllocError::NoReachableMemory { device, dma_mask }
        }
        other => DmaAllocError::PageAllocator(other),
    }
}

/// The bus address at which the untranslated `dev` reaches all of `pages` pages at `phys`
/// for a coherent allocation (at or below its coherent mask and bus limit), if it does.
pub(crate) fn coherent_bus_address(dev: &Device, phys: PhysAddr, pages: u64) -> Option<DmaAddr> {
    let range = PhysRange::new(phys, pages.checked_mul(PAGE_SIZE)?)?;
    bus_within(dev, range, dev.coherent_limit())
}

/// The range of `pages` pages at `base` (a valid range: the page allocator handed it out).
pub(crate) fn page_range(base: PhysAddr, pages: u64) -> Result<PhysRange, DmaAllocError> {
    PhysRange::new(base, pages * PAGE_SIZE).ok_or(DmaAllocError::Memory(
        crate::platform::MemoryFault {
            addr: base,
            len: pages.saturating_mul(PAGE_SIZE),
        },
    ))
}
