//! Coherent allocation and the atomic pool.
//!
//! Coherent memory is seen alike by the CPU and the device without cache maintenance. For
//! a coherent device any reachable memory is; for a non-coherent one the pages are remapped
//! uncached for the CPU ([`CoherentRemap`]). Remapping may wait (it changes page tables and
//! flushes TLBs), so allocations in atomic context come from the atomic pool: uncached
//! memory set aside in advance, served by the [`ObjectPool`](crate::coherent_pool::ObjectPool) without waiting. When the
//! pool's free space falls below its initial size, or it could no longer serve an object of
//! that size (free memory left only in smaller pieces), it asks its growth hook for more, once;
//! the answer ([`DmaAllocator::grow_atomic_pool`]) adds at least as much memory as the pool
//! holds (doubling it, as Linux's `atomic_pool_expand` does). The pool never shrinks.

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::coherent_pool::ObjectPoolError;
use crate::coherent_pool::ObjectPoolUsage;
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::dma_alloc::declared::Declared;
use crate::dma_alloc::zones::ZonedPages;
use crate::dma_alloc::{
    page_range, AllocContext, DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected,
};
use crate::growth::GrowthRequest;
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, MemoryFault, PAGE_SIZE};
use crate::translation::{bus_within, highest_phys_within};

/// Where a coherent buffer's memory came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// An object of the atomic pool (already uncached).
    AtomicPool,
    /// Pages of the zones; `uncached` when they were remapped for a non-coherent device,
    /// `shared` when they were shared with the host for a device that must bounce.
    Pages {
        pages: u64,
        uncached: bool,
        shared: bool,
    },
    /// An object of the device's declared region.
    Declared,
}

/// Coherent memory allocated by [`DmaAllocator::alloc_coherent`]: `size` zeroed bytes at
/// [`CoherentBuffer::phys`] for the CPU and [`CoherentBuffer::dma`] for the device, which
/// see the same bytes without maintenance until the buffer is given to
/// [`DmaAllocator::free_coherent`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "coherent memory is lost unless given to free_coherent"]
pub struct CoherentBuffer {
    pub(super) range: PhysRange,
    pub(super) dma: DmaAddr,
    pub(super) device: DeviceId,
    pub(super) source: Source,
    pub(super) translated: bool,
    pub(super) owner: u64,
}

impl CoherentBuffer {
    /// Where the CPU accesses the buffer.
    pub fn phys(&self) -> PhysAddr {
        self.range.start()
    }
    /// Where the device accesses the buffer.
    pub fn dma(&self) -> DmaAddr {
        self.dma
    }
    /// Bytes requested.
    pub fn size(&self) -> u64 {
        self.range.len()
    }
    /// Whether the memory is an object of the atomic pool.
    pub fn from_atomic_pool(&self) -> bool {
        self.source == Source::AtomicPool
    }
    /// Whether the memory is an object of the device's declared region
    /// ([`DmaAllocator::declare_coherent`]).
    pub fn from_declared_region(&self) -> bool {
        self.source == Source::Declared
    }
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Allocates `size` zeroed bytes of coherent memory `dev` can reach (Linux
    /// `dma_alloc_coherent`).
    ///
    /// - Non-coherent device, [`AllocContext::Atomic`]: an object of the atomic pool the
    ///   device reaches (through its bus windows, below its coherent mask and bus limit).
    ///   Never waits; may trigger a growth request.
    /// - Non-coherent device, [`AllocContext::MayBlock`]: pages from the zones the device
    ///   reaches, remapped uncached.
    /// - Coherent device, either context: pages from the zones (no remap needed; the zone
    ///   allocator only spins on a short lock).
    ///
    /// With [`DmaAllocator::with_memory_sharing`], pages for a device that must bounce are
    /// shared with the host first; in [`AllocContext::Atomic`] such a device, coherent or
    /// not, is served from the atomic pool, which is shared already.
    ///
    /// With an uncached window ([`DmaAllocator::with_uncached_window`]) every allocation for
    /// a non-coherent device, in either context, is an object of the window instead of
    /// remapped pages.
    ///
    /// Behind a translating [`DeviceAddressSpace`] the memory may lie anywhere and is mapped
    /// for the device. A device with a declared region ([`DmaAllocator::declare_coherent`])
    /// is served from that region alone, in either context.
    ///
    /// Allocates with [`AllocContext::MayBlock`]: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::ZeroSize`], [`DmaAllocError::TooLarge`] (for the atomic pool: above
    /// [`crate::dma_alloc::DmaAllocatorConfig::atomic_pool_bytes`]);
    /// [`DmaAllocError::AtomicPoolExhausted`] when the pool has no reachable room now;
    /// [`DmaAllocError::OutOfMemory`], [`DmaAllocError::NoReachableMemory`] from the zones
    /// (or when no memory the device's windows reach lies below its coherent limit);
    /// [`DmaAllocError::Memory`] when the remap or zeroing is refused;
    /// [`DmaAllocError::NotShared`] when the pages of a device that must bounce cannot be
    /// shared with the host (see [`DmaAllocator::with_memory_sharing`]);
    /// [`DmaAllocError::DeviceSpace`] when the IOMMU refuses;
    /// [`DmaAllocError::DeclaredRegionExhausted`] (or [`DmaAllocError::TooLarge`]) when a
    /// declared region has no room; [`DmaAllocError::WindowExhausted`] and
    /// [`DmaAllocError::WindowOutOfReach`] from an uncached window. Nothing is left
    /// allocated.
    pub fn alloc_coherent(
        &self,
        dev: &Device,
        size: u64,
        ctx: AllocContext,
    ) -> Result<CoherentBuffer, DmaAllocError> {
        let (pages, _) = self.mapped_pages_for(dev, size)?;
        if let Some(region) = self.declared.of(dev.id()) {
            return self.alloc_declared(dev, &region, size);
        }
        // Sharing may block: an atomic allocation to share is served by the (shared) pool.
        // An uncached window serves every non-coherent device: nothing is remapped.
        let atomic = ctx == AllocContext::Atomic && (!dev.is_coherent() || self.must_share(dev));
        if atomic || (self.window.is_some() && !dev.is_coherent()) {
            return self.alloc_atomic(dev, size);
        }
        let phys = self.take_contiguous(dev, pages)?;
        let (range, buf_range) = match (page_range(phys, pages), PhysRange::new(phys, size)) {
            (Ok(r), Some(b)) => (r, b),
            _ => {
                self.give_pages(phys, pages);
                return Err(DmaAllocError::Memory(MemoryFault {
                    addr: phys,
                    len: size,
                }));
            }
        };
        let shared = self.must_share(dev);
        if let Err(e) = self.share_if(shared, range) {
            self.give_pages(phys, pages);
            return Err(e);
        }
        let uncached = !dev.is_coherent();
        if uncached {
            if let Err(f) = self.platform.make_uncached(range) {
                self.unshare_if(shared, range);
                self.give_pages(phys, pages);
                return Err(DmaAllocError::Memory(f));
            }
        }
        let prepared = if uncached {
            self.platform
                .fill(phys, 0, range.len())
                .map_err(DmaAllocError::Memory)
        } else {
            self.zero_cached(range)
        };
        let dma =
            prepared.and_then(|()| self.device_address(dev, phys, pages, Direction::Bidirectional));
        match dma {
            Ok(dma) => Ok(CoherentBuffer {
                range: buf_range,
                dma,
                device: dev.id(),
                source: Source::Pages {
                    pages,
                    uncached,
                    shared,
                },
                translated: self.translated(dev),
                owner: self.id(),
            }),
            Err(e) => {
                if uncached {
                    self.platform.make_cached(range);
                }
                self.unshare_if(shared, range);
                self.give_pages(phys, pages);
                Err(e)
            }
        }
    }

    /// The pages an atomic pool object of `size` bytes at `phys` is mapped with for a
    /// translated `dev`: the whole granules of the device address space holding it (an
    /// object is aligned to its power-of-two size, so one below a granule lies in one).
    /// Returns the first page and the page count.
    fn atomic_mapped_span(&self, dev: &Device, phys: PhysAddr, size: u64) -> (PhysAddr, u64) {
        let g = if crate::reintroduce::active(crate::reintroduce::Defect::SubGranuleAllocNotRounded)
        {
            PAGE_SIZE
        } else {
            self.address_space().granule(dev).max(PAGE_SIZE)
        };
        let first = phys.align_down(g);
        let end = (phys.as_u64() + size).next_multiple_of(g);
        (first, (end - first.as_u64()) / PAGE_SIZE)
    }

    fn alloc_atomic(&self, dev: &Device, size: u64) -> Result<CoherentBuffer, DmaAllocError> {
        let translated = self.translated(dev);
        let max_addr = if translated {
            u64::MAX
        } else {
            highest_phys_within(dev, dev.coherent_limit()).ok_or(
                DmaAllocError::NoReachableMemory {
                    device: dev.id(),
                    dma_mask: dev.coherent_dma_mask(),
                },
            )?
        };
        let align = if size >= PAGE_SIZE { PAGE_SIZE } else { 1 };
        let phys = self
            .atomic
            .alloc(size, align, max_addr)
            .map_err(|e| match e {
                ObjectPoolError::TooLarge { max } => DmaAllocError::TooLarge {
                    device: dev.id(),
                    size,
                    max,
                },
                ObjectPoolError::Exhausted { used, total } if self.window.is_some() => {
                    self.window_shortage(dev, size, max_addr, used, total)
                }
                ObjectPoolError::Exhausted { used, total } => DmaAllocError::AtomicPoolExhausted {
                    device: dev.id(),
                    size,
                    used,
                    total,
                    growth_pending: self.atomic.growth_pending(),
                },
                _ => DmaAllocError::AtomicPoolExhausted {
                    device: dev.id(),
                    size,
                    used: 0,
                    total: 0,
                    growth_pending: false,
                },
            })?;
        let zeroed = PhysRange::new(phys, size)
            .ok_or(DmaAllocError::Memory(MemoryFault {
                addr: phys,
                len: size,
            }))
            .and_then(|range| {
                self.platform
                    .fill(phys, 0, size)
                    .map(|()| range)
                    .map_err(DmaAllocError::Memory)
            });
        let dma = zeroed.and_then(|range| {
            let dma = if translated {
                let (first, pages) = self.atomic_mapped_span(dev, phys, size);
                self.device_address(dev, first, pages, Direction::Bidirectional)
                    .map(|d| d.add(phys.as_u64() - first.as_u64()))?
            } else {
                bus_within(dev, range, dev.coherent_limit()).ok_or(
                    DmaAllocError::NoReachableMemory {
                        device: dev.id(),
                        dma_mask: dev.coherent_dma_mask(),
                    },
                )?
            };
            Ok((range, dma))
        });
        match dma {
            Ok((range, dma)) => Ok(CoherentBuffer {
                range,
                dma,
                device: dev.id(),
                source: Source::AtomicPool,
                translated,
                owner: self.id(),
            }),
            Err(e) => {
                let freed = self.atomic.free(phys);
                debug_assert!(freed.is_ok());
                Err(e)
            }
        }
    }

    /// Why the uncached window had no object of `size` bytes at or below `max_addr`: it
    /// starts above it (out of `dev`'s reach), or the reachable part is full.
    fn window_shortage(
        &self,
        dev: &Device,
        size: u64,
        max_addr: u64,
        used: u64,
        total: u64,
    ) -> DmaAllocError {
        match self.window {
            Some(w) if w.start().as_u64() > max_addr => DmaAllocError::WindowOutOfReach {
                device: dev.id(),
                base: w.start(),
                coherent_mask: dev.coherent_dma_mask(),
            },
            _ => DmaAllocError::WindowExhausted {
                device: dev.id(),
                size,
                used,
                total,
            },
        }
    }

    /// An object of `region` (declared for `dev`) of `size` bytes, zeroed.
    fn alloc_declared(
        &self,
        dev: &Device,
        region: &Declared,
        size: u64,
    ) -> Result<CoherentBuffer, DmaAllocError> {
        let align = if size >= PAGE_SIZE { PAGE_SIZE } else { 1 };
        let phys = region
            .objects
            .alloc(size, align, u64::MAX)
            .map_err(|e| match e {
                ObjectPoolError::TooLarge { max } => DmaAllocError::TooLarge {
                    device: dev.id(),
                    size,
                    max,
                },
                _ => {
                    let u = region.objects.usage();
                    DmaAllocError::DeclaredRegionExhausted {
                        device: dev.id(),
                        size,
                        used: u.used,
                        total: u.total,
                    }
                }
            })?;
        let zeroed = match PhysRange::new(phys, size) {
            Some(range) if region.uncached => self
                .platform()
                .fill(phys, 0, size)
                .map(|()| range)
                .map_err(DmaAllocError::Memory),
            Some(range) => self.zero_cached(range).map(|()| range),
            None => Err(DmaAllocError::Memory(MemoryFault {
                addr: phys,
                len: size,
            })),
        };
        // Declared regions lie in one bus window below the coherent limit (checked when
        // declared), so every object of one has a bus address.
        let reached = zeroed.and_then(|range| {
            bus_within(dev, range, dev.coherent_limit())
                .map(|dma| (range, dma))
                .ok_or(DmaAllocError::BadDeclaredRegion {
                    device: dev.id(),
                    base: region.range.start(),
                    len: region.range.len(),
                })
        });
        match reached {
            Ok((range, dma)) => Ok(CoherentBuffer {
                range,
                dma,
                device: dev.id(),
                source: Source::Declared,
                translated: false,
                owner: self.id(),
            }),
            Err(e) => {
                let freed = region.objects.free(phys);
                debug_assert!(freed.is_ok());
                Err(e)
            }
        }
    }

    /// Returns coherent memory to the atomic pool, the declared region or the zones it came
    /// from (Linux `dma_free_coherent`); pages are made cached again first.
    ///
    /// # Errors
    /// [`DmaAllocError::ForeignHandle`] for a buffer of another allocator,
    /// [`DmaAllocError::WrongDevice`] for another device, [`DmaAllocError::DeviceSpace`]
    /// when the IOMMU refuses the unmap; the buffer is handed back unchanged.
    /// [`DmaAllocError::PageAllocator`] if the zones refuse the pages (memory freed behind
    /// the allocator's back); the buffer is handed back but its device mapping is gone.
    #[allow(clippy::result_large_err)]
    pub fn free_coherent(
        &self,
        dev: &Device,
        buf: CoherentBuffer,
    ) -> Result<(), Rejected<CoherentBuffer>> {
        let reject = |error, handle| Err(Rejected { error, handle });
        if let Err(e) = self.check_owner(buf.owner, buf.device, dev) {
            return reject(e, buf);
        }
        let (map_base, map_pages) = match buf.source {
            Source::AtomicPool => {
                let (first, pages) = self.atomic_mapped_span(dev, buf.phys(), buf.size());
                // The device mapping starts as far before `buf.dma` as `first` is before
                // the buffer.
                let base = buf.dma.as_u64() - (buf.phys().as_u64() - first.as_u64());
                (DmaAddr::new(base), pages)
            }
            Source::Pages { pages, .. } => (buf.dma, pages),
            Source::Declared => (buf.dma, 0),
        };
        if let Err(e) = self.drop_device_address(dev, map_base, map_pages, buf.translated) {
            return reject(e, buf);
        }
        match buf.source {
            Source::AtomicPool => {
                if self.atomic.free(buf.phys()).is_err() {
                    return reject(DmaAllocError::ForeignHandle, buf);
                }
            }
            Source::Declared => {
                let freed = self
                    .declared
                    .of(buf.device)
                    .is_some_and(|r| r.objects.free(buf.phys()).is_ok());
                if !freed {
                    return reject(DmaAllocError::ForeignHandle, buf);
                }
            }
            Source::Pages {
                pages,
                uncached,
                shared,
            } => {
                let range = match page_range(buf.phys(), pages) {
                    Ok(r) => r,
                    Err(e) => return reject(e, buf),
                };
                if uncached {
                    self.platform.make_cached(range);
                }
                self.unshare_if(shared, range);
                if let Err(e) = self.zones().free(buf.phys(), pages) {
                    return reject(DmaAllocError::PageAllocator(e), buf);
                }
            }
        }
        Ok(())
    }

    /// Answers a growth request of the atomic pool: takes at least `req.min_bytes` (and, if
    /// there is room, as many bytes as the pool already has) of memory at or below
    /// `req.max_addr` (and the configured reach), remaps it uncached and adds it to the
    /// pool. Call it where waiting is allowed: from the growth hook's worker. Returns the
    /// memory added.
    ///
    /// Allocates: call outside atomic context.
    ///
    /// # Errors
    /// [`DmaAllocError::GrowthFailed`] when no such memory is free, or
    /// [`DmaAllocError::Memory`] when the remap is refused, [`DmaAllocError::NotShared`]
    /// when sharing it with the host is refused; the pool is unchanged, and the next
    /// shortage may request growth again. [`DmaAllocError::BadConfig`] for an allocator
    /// over an uncached window ([`DmaAllocator::with_uncached_window`]), which does not
    /// grow.
    pub fn grow_atomic_pool(&self, req: GrowthRequest) -> Result<PhysRange, DmaAllocError> {
        if self.window.is_some() {
            return Err(DmaAllocError::BadConfig(
                "an atomic pool made of an uncached window does not grow",
            ));
        }
        let min_pages = req.min_bytes.max(1).div_ceil(PAGE_SIZE);
        let want_pages = min_pages.max(self.atomic.usage().total / PAGE_SIZE);
        let max_addr = req.max_addr.min(self.config().atomic_pool_reach);
        let r = self.add_atomic_memory(want_pages, min_pages, max_addr);
        if r.is_err() {
            self.atomic.growth_failed();
        }
        r
    }

    /// Occupancy of the atomic pool.
    pub fn atomic_pool_usage(&self) -> ObjectPoolUsage {
        self.atomic.usage()
    }

    /// Whether the atomic pool has a growth request outstanding.
    pub fn atomic_growth_pending(&self) -> bool {
        self.atomic.growth_pending()
    }

    /// Adds between `min_pages` and `want_pages` pages below `max_addr` to the atomic pool,
    /// as many as one allocation can give, halving on shortage.
    pub(crate) fn add_atomic_memory(
        &self,
        want_pages: u64,
        min_pages: u64,
        max_addr: u64,
    ) -> Result<PhysRange, DmaAllocError> {
        let mut pages = want_pages.max(min_pages);
        let base = loop {
            match self.zones().alloc_below(pages, max_addr) {
                Ok(b) => break b,
                Err(_) if pages / 2 >= min_pages && pages > 1 => pages /= 2,
                Err(_) => {
                    return Err(DmaAllocError::GrowthFailed {
                        bytes: min_pages * PAGE_SIZE,
                        max_addr,
                    })
                }
            }
        };
        let range = page_range(base, pages)?;
        if let Err(f) = self.platform.make_uncached(range) {
            self.give_pages(base, pages);
            return Err(DmaAllocError::Memory(f));
        }
        if let Err(f) = self.sharing().share(range) {
            self.platform.make_cached(range);
            self.give_pages(base, pages);
            return Err(DmaAllocError::NotShared(f));
        }
        if self.atomic.add_chunk(base, range.len()).is_err() {
            // The zones never hand out memory twice, so the chunk cannot overlap the pool's.
            self.sharing().unshare(range);
            self.platform.make_cached(range);
            self.give_pages(base, pages);
            return Err(DmaAllocError::GrowthFailed {
                bytes: range.len(),
                max_addr,
            });
        }
        self.atomic_chunks.lock().push(range);
        Ok(range)
    }
}
