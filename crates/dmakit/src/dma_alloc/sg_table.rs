//! Scatter-gather tables of allocated memory, shared by [`super::noncontiguous`] and
//! [`super::alloc_sg`].
//!
//! A table is a list of physically contiguous chunks of whole pages. How the chunks are
//! chosen differs (one chunk below the mask, scattered pages anywhere, reachable pages with
//! a fallback), so the chunk allocator here takes a placement, gives back every chunk it
//! took when it fails, and the free path is the same for both kinds.

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;

use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::dma_alloc::zones::{PageAllocError, ZonedPages};
use crate::dma_alloc::{
    coherent_bus_address, page_range, DeviceAddressSpace, DmaAllocError, DmaAllocator, Rejected,
};
use crate::mapped::SgEntry;
use crate::platform::{CacheMaintenance, CoherentRemap, CpuMemory, PAGE_SIZE};

/// Which allocator made a table (and so which free function takes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TableKind {
    /// [`DmaAllocator::alloc_noncontiguous`]: mapped for the device at allocation,
    /// contiguous in device space.
    Noncontiguous,
    /// [`DmaAllocator::alloc_sg`]: placed for the device, mapped later through the
    /// streaming API.
    Sg,
}

/// One physically contiguous chunk of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgChunk {
    phys: PhysAddr,
    pages: u64,
    reachable: bool,
    /// Shared with the host for a device that must bounce.
    shared: bool,
}

impl SgChunk {
    /// First byte.
    pub fn phys(&self) -> PhysAddr {
        self.phys
    }
    /// Pages in the chunk.
    pub fn pages(&self) -> u64 {
        self.pages
    }
    /// Bytes in the chunk.
    pub fn bytes(&self) -> u64 {
        self.pages * PAGE_SIZE
    }
    /// Whether the device reaches the chunk without a bounce (below its mask, or behind a
    /// translation).
    pub fn reachable(&self) -> bool {
        self.reachable
    }
    /// Whether the chunk is shared with the host (see
    /// [`DmaAllocator::with_memory_sharing`]).
    pub fn shared(&self) -> bool {
        self.shared
    }
}

/// Memory allocated as a scatter-gather table. Owns its chunks until given to the free
/// function of its [`TableKind`].
#[derive(Debug)]
#[must_use = "the table's pages are lost unless it is freed"]
pub struct SgTable {
    chunks: Vec<SgChunk>,
    size: u64,
    device: DeviceId,
    kind: TableKind,
    dir: Option<Direction>,
    dma: Option<DmaAddr>,
    translated: bool,
    owner: u64,
    token: u64,
    views: AtomicU64,
}

impl SgTable {
    /// Bytes requested.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// The device the table was allocated for.
    pub(crate) fn device(&self) -> DeviceId {
        self.device
    }
    /// Which allocator made it.
    pub fn kind(&self) -> TableKind {
        self.kind
    }
    /// The direction a noncontiguous table was mapped for (`None` for an sg table).
    pub(crate) fn direction(&self) -> Option<Direction> {
        self.dir
    }
    /// Where the device sees a noncontiguous table, as one contiguous range of
    /// [`SgTable::size`] bytes (`None` for an sg table, which is mapped through
    /// [`crate::DmaMapper::map_sg`]).
    pub fn dma_addr(&self) -> Option<DmaAddr> {
        self.dma
    }
    /// The physical chunks, in order.
    pub fn chunks(&self) -> &[SgChunk] {
        &self.chunks
    }
    /// Every page of the table, in order.
    pub fn pages(&self) -> Vec<PhysAddr> {
        self.chunks
            .iter()
            .flat_map(|c| (0..c.pages).map(move |i| c.phys.add(i * PAGE_SIZE)))
            .collect()
    }
    /// Pages held.
    pub fn page_count(&self) -> u64 {
        self.chunks.iter().map(|c| c.pages).sum()
    }
    /// The table as scatter-gather entries covering exactly [`SgTable::size`] bytes, in
    /// order: what [`crate::DmaMapper::map_sg`] takes.
    pub fn entries(&self) -> Vec<SgEntry> {
        let mut left = self.size;
        let mut out = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            if left == 0 {
                break;
            }
            let len = c.bytes().min(left);
            out.push(SgEntry { phys: c.phys, len });
            left -= len;
        }
        out
    }
    /// Whether some chunk lies beyond the device's reach: mapping the table through the
    /// streaming API will bounce those chunks.
    pub fn needs_bounce(&self) -> bool {
        self.chunks.iter().any(|c| !c.reachable)
    }
    /// Contiguous CPU views of the table currently mapped.
    pub fn views(&self) -> u64 {
        self.views.load(Ordering::Acquire)
    }
    pub(crate) fn token(&self) -> u64 {
        self.token
    }
    pub(crate) fn owner(&self) -> u64 {
        self.owner
    }
    pub(crate) fn with_dma(mut self, dma: DmaAddr) -> Self {
        self.dma = Some(dma);
        self
    }
    pub(crate) fn view_added(&self) {
        self.views.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn view_removed(&self) {
        self.views.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where chunks may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Anywhere (the device is translated).
    Anywhere,
    /// Reachable zones first; when they run out, anywhere (marked unreachable).
    ReachableThenAnywhere,
}

/// What a new table is, apart from its chunks.
pub(crate) struct TableShape {
    pub(crate) size: u64,
    pub(crate) kind: TableKind,
    pub(crate) dir: Option<Direction>,
    pub(crate) dma: Option<DmaAddr>,
    pub(crate) translated: bool,
}

impl<P, Z, S> DmaAllocator<P, Z, S>
where
    P: CacheMaintenance + CpuMemory + CoherentRemap,
    Z: ZonedPages,
    S: DeviceAddressSpace,
{
    /// Takes `pages` pages (a multiple of `unit`) in chunks of at most `max_chunk` pages,
    /// largest first, halving the chunk size on shortage but never below `unit` and always
    /// a multiple of it (so a chunk is aligned to `unit` pages: whole IOMMU granules), and
    /// prepares them ([`Self::prepare_chunk`]). On error every chunk taken is given back.
    pub(crate) fn alloc_chunks(
        &self,
        dev: &Device,
        pages: u64,
        unit: u64,
        max_chunk: u64,
        placement: Placement,
    ) -> Result<Vec<SgChunk>, DmaAllocError> {
        let translated = self.translated(dev);
        let mut chunks: Vec<SgChunk> = Vec::new();
        let mut remaining = pages;
        let mut reachable_only = placement != Placement::Anywhere;
        let unit = unit.max(1);
        // Chunks stay whole multiples of `unit` (which `pages` is), so the buddy allocator
        // hands each out aligned to it.
        let first_want = |left: u64| left.min(max_chunk.max(unit));
        let mut want = first_want(remaining);
        while remaining > 0 {
            want = want.min(remaining);
            let got = if reachable_only {
                self.take_reachable(dev, want)
            } else {
                self.zones().alloc_below(want, u64::MAX)
            };
            match got {
                Ok(phys) => {
                    let reachable = translated
                        || reachable_only
                        || coherent_bus_address(dev, phys, want).is_some();
                    match self.prepare_chunk(dev, phys, want, reachable) {
                        Ok(chunk) => chunks.push(chunk),
                        Err(e) => {
                            self.give_pages(phys, want);
                            self.free_chunks(&chunks);
                            return Err(e);
                        }
                    }
                    remaining -= want;
                }
                Err(PageAllocError::OutOfMemory { .. }) if want > unit => {
                    want = (want / 2 / unit * unit).max(unit)
                }
                Err(
                    PageAllocError::OutOfMemory { .. } | PageAllocError::NoReachableZone { .. },
                ) if reachable_only && placement == Placement::ReachableThenAnywhere => {
                    reachable_only = false;
                    want = first_want(remaining);
                }
                Err(e) => {
                    self.free_chunks(&chunks);
                    return Err(match e {
                        PageAllocError::OutOfMemory { .. } => DmaAllocError::OutOfMemory {
                            device: dev.id(),
                            pages,
                        },
                        other => crate::dma_alloc::mem_error(dev.id(), other),
                    });
                }
            }
        }
        Ok(chunks)
    }

    /// Makes `pages` pages at `phys`, just taken for `dev`, a chunk of a table: shared with
    /// the host when `dev` must bounce ([`DmaAllocator::with_memory_sharing`]), then zeroed
    /// (memory holds the zeros). The caller gives the pages back on error.
    ///
    /// # Errors
    /// [`DmaAllocError::NotShared`], [`DmaAllocError::Memory`]; the pages are private then.
    pub(crate) fn prepare_chunk(
        &self,
        dev: &Device,
        phys: PhysAddr,
        pages: u64,
        reachable: bool,
    ) -> Result<SgChunk, DmaAllocError> {
        let range = page_range(phys, pages)?;
        let shared = self.must_share(dev);
        self.share_if(shared, range)?;
        if let Err(e) = self.zero_cached(range) {
            self.unshare_if(shared, range);
            return Err(e);
        }
        Ok(SgChunk {
            phys,
            pages,
            reachable,
            shared,
        })
    }

    /// Makes a chunk private again if it was shared.
    fn unshare_chunk(&self, c: &SgChunk) {
        if let Ok(range) = page_range(c.phys, c.pages) {
            self.unshare_if(c.shared, range);
        }
    }

    /// Gives back chunks taken by [`Self::alloc_chunks`] in this call, private again.
    pub(crate) fn free_chunks(&self, chunks: &[SgChunk]) {
        for c in chunks {
            self.unshare_chunk(c);
            self.give_pages(c.phys, c.pages);
        }
    }

    pub(crate) fn make_table(
        &self,
        dev: &Device,
        chunks: Vec<SgChunk>,
        shape: TableShape,
    ) -> SgTable {
        SgTable {
            chunks,
            size: shape.size,
            device: dev.id(),
            kind: shape.kind,
            dir: shape.dir,
            dma: shape.dma,
            translated: shape.translated,
            owner: self.id(),
            token: crate::dma_alloc::next_token(),
            views: AtomicU64::new(0),
        }
    }

    /// The free path of both table kinds.
    #[allow(clippy::result_large_err)]
    pub(crate) fn free_table(
        &self,
        dev: &Device,
        table: SgTable,
        kind: TableKind,
    ) -> Result<(), Rejected<SgTable>> {
        let checked = self
            .check_owner(table.owner, table.device, dev)
            .and_then(|()| {
                if table.kind != kind {
                    return Err(DmaAllocError::ForeignHandle);
                }
                match table.views() {
                    0 => Ok(()),
                    views => Err(DmaAllocError::StillMapped { views }),
                }
            })
            .and_then(|()| match table.dma {
                Some(dma) => {
                    self.drop_device_address(dev, dma, table.page_count(), table.translated)
                }
                None => Ok(()),
            });
        if let Err(error) = checked {
            return Err(Rejected {
                error,
                handle: table,
            });
        }
        let mut first_err = None;
        for c in &table.chunks {
            self.unshare_chunk(c);
            if let Err(e) = self.zones().free(c.phys, c.pages) {
                first_err.get_or_insert(DmaAllocError::PageAllocator(e));
            }
        }
        match first_err {
            None => Ok(()),
            Some(error) => Err(Rejected {
                error,
                handle: table,
            }),
        }
    }

    /// The physical ranges of `table` covering its first `size` bytes, for syncs.
    pub(crate) fn table_ranges(table: &SgTable) -> impl Iterator<Item = PhysRange> + '_ {
        table
            .entries()
            .into_iter()
            .filter_map(|e| PhysRange::new(e.phys, e.len))
    }
}
