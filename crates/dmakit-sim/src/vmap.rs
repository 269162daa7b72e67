//! Contiguous virtual views of scattered pages, on a cache that may alias.
//!
//! [`VmapMachine`] wraps a [`Machine`] with a virtual address space for `vmap` views (the
//! core's [`VirtualMapping`] trait) and CPU accesses through them. In
//! [`VmapMode::Shared`] the cache is physically indexed: a view's accesses go through the
//! machine's one cache, exactly like linear-map accesses, and the view needs no
//! maintenance of its own. In [`VmapMode::Aliasing`] the cache is virtually indexed and the
//! view's lines land elsewhere: accesses through a view use a second cache (the *alias
//! cache*) in front of the same RAM. A store through the view dirties only alias lines;
//! maintenance by physical address (what DMA syncs do) never touches them; only
//! [`VirtualMapping::flush_virt`] writes them back and [`VirtualMapping::invalidate_virt`]
//! drops them. Dirty alias lines left behind are written back whenever they are evicted
//! (capacity, [`VmapMachine::evict_alias_lines`], or the flush a `vunmap` does), possibly
//! over data a device wrote since: the corruption the flush prevents.
//!
//! Devices read and write RAM as before. Coherent devices snoop only the linear cache.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, CpuTopology, MemoryFault, PageAllocator, PhysAddr,
    PhysRange, VirtAddr, VirtualMapping, PAGE_SIZE,
};

use crate::cache::{Cache, CacheConfig, CacheStats};
use crate::error::SimError;
use crate::machine::Machine;
use crate::memory::Owner;

/// How views cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmapMode {
    /// Physically indexed cache: views and the linear map share lines.
    Shared,
    /// Virtually indexed, aliasing cache: views cache in their own lines.
    Aliasing,
}

/// Where the first view is placed (a kernel's vmalloc area).
pub const VMAP_BASE: u64 = 0xffff_c000_0000_0000;

/// A machine with `vmap` views. See the [module docs](self).
pub struct VmapMachine<'m> {
    machine: &'m Machine,
    mode: VmapMode,
    alias: RefCell<Cache>,
    /// Live views: first virtual address → pages, in order.
    maps: RefCell<BTreeMap<u64, Vec<PhysAddr>>>,
    next: Cell<u64>,
}

impl<'m> VmapMachine<'m> {
    /// Views over `machine` in `mode`; the alias cache has the default geometry with the
    /// machine's line size.
    ///
    /// # Errors
    /// As [`CacheConfig::validate`] (cannot fail for a valid machine).
    pub fn new(machine: &'m Machine, mode: VmapMode) -> Result<Self, SimError> {
        Self::with_alias_cache(
            machine,
            mode,
            CacheConfig {
                line_size: machine.line_size(),
                ..CacheConfig::default()
            },
        )
    }

    /// Views over `machine` in `mode` with an alias cache of geometry `alias`.
    ///
    /// # Errors
    /// [`SimError::BadLineSize`] unless `alias` has the machine's line size; otherwise as
    /// [`CacheConfig::validate`].
    pub fn with_alias_cache(
        machine: &'m Machine,
        mode: VmapMode,
        alias: CacheConfig,
    ) -> Result<Self, SimError> {
        if alias.line_size != machine.line_size() {
            return Err(SimError::BadLineSize(alias.line_size));
        }
        Ok(Self {
            machine,
            mode,
            alias: RefCell::new(Cache::new(alias)?),
            maps: RefCell::new(BTreeMap::new()),
            next: Cell::new(VMAP_BASE),
        })
    }

    /// The machine underneath.
    pub fn machine(&self) -> &'m Machine {
        self.machine
    }

    /// The caching mode of views.
    pub fn mode(&self) -> VmapMode {
        self.mode
    }

    /// The physical address behind virtual address `va`, if a view maps it.
    pub fn translate(&self, va: VirtAddr) -> Option<PhysAddr> {
        let maps = self.maps.borrow();
        let (&base, pages) = maps.range(..=va.as_u64()).next_back()?;
        let off = va.as_u64() - base;
        let page = pages.get(usize::try_from(off / PAGE_SIZE).ok()?)?;
        Some(page.add(off % PAGE_SIZE))
    }

    /// Splits `[va, va + len)` into physically contiguous pieces `(phys, offset, len)`.
    fn pieces(&self, va: VirtAddr, len: u64) -> Result<Vec<(PhysAddr, usize, usize)>, SimError> {
        let bad = SimError::BadRange {
            addr: va.as_u64(),
            len,
        };
        let mut out = Vec::new();
        let mut done = 0u64;
        while done < len {
            let at = va.checked_add(done).ok_or(bad.clone())?;
            let phys = self.translate(at).ok_or(bad.clone())?;
            let n = (PAGE_SIZE - at.as_u64() % PAGE_SIZE).min(len - done);
            out.push((phys, done as usize, n as usize));
            done += n;
        }
        Ok(out)
    }

    /// Whether an access to `phys` through a view uses the alias cache.
    fn via_alias(&self, phys: PhysAddr) -> bool {
        self.mode == VmapMode::Aliasing && !self.machine.is_uncached(phys)
    }

    /// A CPU store of `data` through a view at `va`, every byte stamped `owner`.
    ///
    /// # Errors
    /// [`SimError::BadRange`] when part of the range is not mapped by a view, or not RAM;
    /// nothing is written then.
    pub fn cpu_write_virt(&self, va: VirtAddr, data: &[u8], owner: Owner) -> Result<(), SimError> {
        let pieces = self.checked_pieces(va, data.len() as u64)?;
        for (phys, off, n) in pieces {
            let d = &data[off..off + n];
            if self.via_alias(phys) {
                let mut alias = self.alias.borrow_mut();
                self.machine
                    .with_memory(|mem| alias.store_owned(mem, phys.as_u64(), d, owner));
            } else {
                self.machine
                    .cpu_write(phys, d, owner)
                    .map_err(|f| SimError::BadRange {
                        addr: f.addr.as_u64(),
                        len: f.len,
                    })?;
            }
        }
        Ok(())
    }

    /// A CPU load through a view at `va`, with the stamps into `owners` (same length).
    ///
    /// # Errors
    /// [`SimError::LengthMismatch`] for slices of different lengths; [`SimError::BadRange`]
    /// as [`VmapMachine::cpu_write_virt`]. Nothing is read then.
    pub fn cpu_read_virt_stamped(
        &self,
        va: VirtAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), SimError> {
        if data.len() != owners.len() {
            return Err(SimError::LengthMismatch {
                data: data.len(),
                owners: owners.len(),
            });
        }
        let pieces = self.checked_pieces(va, data.len() as u64)?;
        for (phys, off, n) in pieces {
            let (d, o) = (&mut data[off..off + n], &mut owners[off..off + n]);
            if self.via_alias(phys) {
                let mut alias = self.alias.borrow_mut();
                self.machine
                    .with_memory(|mem| alias.load(mem, phys.as_u64(), d, o));
            } else {
                self.machine
                    .cpu_read_stamped(phys, d, o)
                    .map_err(|f| SimError::BadRange {
                        addr: f.addr.as_u64(),
                        len: f.len,
                    })?;
            }
        }
        Ok(())
    }

    /// A CPU load through a view at `va`.
    ///
    /// # Errors
    /// As [`VmapMachine::cpu_read_virt_stamped`].
    pub fn cpu_read_virt(&self, va: VirtAddr, data: &mut [u8]) -> Result<(), SimError> {
        let mut owners = vec![Owner::NOBODY; data.len()];
        self.cpu_read_virt_stamped(va, data, &mut owners)
    }

    fn checked_pieces(
        &self,
        va: VirtAddr,
        len: u64,
    ) -> Result<Vec<(PhysAddr, usize, usize)>, SimError> {
        let pieces = self.pieces(va, len)?;
        for &(phys, _, n) in &pieces {
            if !self.machine.is_ram(phys.as_u64(), n as u64) {
                return Err(SimError::BadRange {
                    addr: phys.as_u64(),
                    len: n as u64,
                });
            }
        }
        Ok(pieces)
    }

    /// Time passes: every alias line is evicted, dirty ones written back to RAM. Returns
    /// the number of lines evicted.
    pub fn evict_alias_lines(&self) -> u64 {
        let mut alias = self.alias.borrow_mut();
        self.machine
            .with_memory(|mem| alias.clean_invalidate(mem, 0, u64::MAX))
    }

    /// Alias lines now cached, as `(physical line address, dirty)`.
    pub fn alias_lines(&self) -> Vec<(u64, bool)> {
        self.alias.borrow().lines()
    }

    /// The alias cache's counters.
    pub fn alias_stats(&self) -> CacheStats {
        self.alias.borrow().stats()
    }

    /// Live views.
    pub fn views(&self) -> usize {
        self.maps.borrow().len()
    }

    /// Runs `f` on the alias lines of every physically contiguous piece of `[va, va+len)`
    /// that a view maps; other parts are ignored.
    fn alias_maintenance(&self, va: VirtAddr, len: u64, f: impl Fn(&mut Cache, u64, u64)) {
        if self.mode != VmapMode::Aliasing {
            return;
        }
        let mut done = 0u64;
        while done < len {
            let Some(at) = va.checked_add(done) else {
                return;
            };
            let n = (PAGE_SIZE - at.as_u64() % PAGE_SIZE).min(len - done);
            if let Some(phys) = self.translate(at) {
                f(&mut self.alias.borrow_mut(), phys.as_u64(), n);
            }
            done += n;
        }
    }
}

impl VirtualMapping for VmapMachine<'_> {
    fn vmap(&self, pages: &[PhysAddr]) -> Option<VirtAddr> {
        if pages.is_empty() || pages.iter().any(|p| !p.is_aligned(PAGE_SIZE)) {
            return None;
        }
        let base = self.next.get();
        // One unmapped guard page after every view.
        let span = (pages.len() as u64 + 1).checked_mul(PAGE_SIZE)?;
        self.next.set(base.checked_add(span)?);
        self.maps.borrow_mut().insert(base, pages.to_vec());
        Some(VirtAddr(base))
    }

    fn vunmap(&self, addr: VirtAddr, pages: usize) {
        let mut maps = self.maps.borrow_mut();
        if maps.get(&addr.as_u64()).is_some_and(|p| p.len() == pages) {
            maps.remove(&addr.as_u64());
        }
    }

    fn flush_virt(&self, addr: VirtAddr, len: u64) {
        self.alias_maintenance(addr, len, |c, a, n| {
            self.machine.with_memory(|mem| c.clean(mem, a, n));
        });
    }

    fn invalidate_virt(&self, addr: VirtAddr, len: u64) {
        self.alias_maintenance(addr, len, |c, a, n| {
            c.invalidate(a, n);
        });
    }

    fn aliases(&self) -> bool {
        self.mode == VmapMode::Aliasing
    }
}

impl CacheMaintenance for VmapMachine<'_> {
    fn cache_line_size(&self) -> u64 {
        self.machine.cache_line_size()
    }
    fn clean(&self, range: PhysRange) {
        self.machine.clean(range)
    }
    fn invalidate(&self, range: PhysRange) {
        self.machine.invalidate(range)
    }
    fn clean_invalidate(&self, range: PhysRange) {
        self.machine.clean_invalidate(range)
    }
}

// SAFETY: forwards unchanged to the model machine's implementation.
unsafe impl CpuMemory for VmapMachine<'_> {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        self.machine.copy(dst, src, len)
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        self.machine.fill(dst, byte, len)
    }
}

impl CpuTopology for VmapMachine<'_> {
    fn cpu_count(&self) -> usize {
        self.machine.cpu_count()
    }
    fn current_cpu(&self) -> usize {
        self.machine.current_cpu()
    }
}

impl CoherentRemap for VmapMachine<'_> {
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        self.machine.make_uncached(range)
    }
    fn make_cached(&self, range: PhysRange) {
        self.machine.make_cached(range)
    }
}

impl PageAllocator for VmapMachine<'_> {
    fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        self.machine.alloc_pages(pages, max_addr)
    }
    fn free_pages(&self, base: PhysAddr, pages: u64) {
        self.machine.free_pages(base, pages)
    }
}
