//! The simulated machine: memory, the CPU data cache with its hazards, DMA engines.
//!
//! [`Machine`] ties the parts together and is what the mapping layer runs on (it implements
//! the core's platform traits, in [`crate::platform`]). Its methods take `&self` and keep
//! state in a `RefCell`: the model is single-threaded, and `&Machine` must serve both as the
//! mapper's platform and as the test's handle on the hardware. The CPU side goes through
//! the cache (except in uncached regions); devices reach RAM directly unless coherent.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use dmakit::{Device, DeviceId, DmaAddr, MemoryFault, PhysAddr, PhysRange};

use crate::buffers::sized;
use crate::cache::{Cache, CacheConfig, CacheStats};
use crate::device::{DeviceFault, DmaEngines, DmaTranslation, FaultReason};
use crate::error::SimError;
use crate::fault_inject::{MaintenanceFaults, MaintenanceKind};
use crate::hazard::{Hazard, HazardConfig, Hazards};
use crate::memory::{Memory, Owner, RamMap, Stamped, Stamps};
use crate::page_alloc::PageAlloc;
use crate::rng::SimRng;
use crate::sharing::SharedPages;

const GIB: u64 = 1 << 30;

/// Everything needed to build a [`Machine`].
#[derive(Clone, Debug, PartialEq)]
pub struct MachineConfig {
    /// RAM as `(start, len)` pairs, page aligned.
    pub ram: Vec<(u64, u64)>,
    /// Data cache geometry.
    pub cache: CacheConfig,
    /// Cache misbehaviour rates.
    pub hazards: HazardConfig,
    /// Number of CPUs (at least 1). They share the one data cache (the CPUs are coherent
    /// with each other; only devices are not).
    pub cpus: usize,
    /// Seed of every random decision the machine takes.
    pub seed: u64,
    /// Memory below this address is never handed out by the page allocator.
    pub reserve_below: u64,
}

impl Default for MachineConfig {
    /// RAM at `[0, 2 GiB)` and `[4 GiB, 8 GiB)`, the default cache and hazards, one CPU,
    /// seed 0, the first MiB reserved.
    fn default() -> Self {
        Self {
            ram: vec![(0, 2 * GIB), (4 * GIB, 4 * GIB)],
            cache: CacheConfig::default(),
            hazards: HazardConfig::default(),
            cpus: 1,
            seed: 0,
            reserve_below: 1 << 20,
        }
    }
}

/// Counters of everything that happened, plus a hash of the order of events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineStats {
    /// CPU load operations (each `cpu_read*`, and the source side of a copy).
    pub cpu_loads: u64,
    /// CPU store operations (each `cpu_write*`, fill, and the destination side of a copy).
    pub cpu_stores: u64,
    /// Device reads performed.
    pub device_reads: u64,
    /// Device writes performed.
    pub device_writes: u64,
    /// Hazard evictions of a cached line (clean or dirty).
    pub hazard_evictions: u64,
    /// Of those, evictions of a dirty line (written back to RAM).
    pub hazard_dirty_evictions: u64,
    /// Speculative line fills.
    pub speculative_fills: u64,
    /// Clean operations performed.
    pub cleans: u64,
    /// Invalidate operations performed.
    pub invalidates: u64,
    /// Clean+invalidate operations performed.
    pub clean_invalidates: u64,
    /// Maintenance operations skipped by fault injection.
    pub dropped_maintenance: u64,
    /// `free_pages` calls that named no live allocation (ignored).
    pub bad_frees: u64,
    /// Bytes moved by `CpuMemory::copy` (the mapping layer's bounce copies).
    pub copied_bytes: u64,
    /// The cache's own counters.
    pub cache: CacheStats,
    /// A hash over the kind and address of every hazard, maintenance and device event, in
    /// order: equal for equal runs, different when the order of events differs.
    pub event_hash: u64,
}

struct State {
    mem: Memory,
    cache: Cache,
    hazards: Hazards,
    rng: SimRng,
    /// Uncached regions, line aligned, half-open, sorted, disjoint.
    uncached: Vec<(u64, u64)>,
    engines: DmaEngines,
    inject: MaintenanceFaults,
    stats: MachineStats,
    plan: Vec<(u64, u64)>,
    /// Reused by CPU copies and fills (bounces): kept between calls so that once it has
    /// grown to a copy's size, copying allocates nothing.
    scratch: Stamped,
    /// A confidential guest's shared pages: devices reach no other memory. `None`: all
    /// memory is shared (not a confidential guest).
    sharing: Option<Arc<SharedPages>>,
}

#[inline]
fn mix(h: u64, v: u64) -> u64 {
    (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95)
}

const EV_EVICT: u64 = 1;
const EV_SPEC: u64 = 2;
const EV_MAINT: u64 = 3;
const EV_DEV_READ: u64 = 4;
const EV_DEV_WRITE: u64 = 5;

impl State {
    #[inline]
    fn event(&mut self, kind: u64, a: u64) {
        self.stats.event_hash = mix(mix(self.stats.event_hash, kind), a);
    }

    #[inline]
    fn is_uncached(&self, addr: u64) -> bool {
        self.uncached.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    /// The end of the maximal piece starting at `a` (before `end`) whose lines are all
    /// cached or all uncached, and whether they are cached.
    #[inline]
    fn piece(&self, a: u64, end: u64) -> (u64, bool) {
        if self.uncached.is_empty() {
            return (end, true);
        }
        let line = self.cache.line_size();
        let cached = !self.is_uncached(a);
        let mut b = (a & !(line - 1)) + line;
        while b < end && self.is_uncached(b) != cached {
            b += line;
        }
        (b.min(end), cached)
    }

    /// Runs `f(addr, len, cached)` over maximal pieces of `[addr, addr+len)` that are all
    /// cached or all uncached.
    #[inline]
    fn split(&self, addr: u64, len: u64, mut f: impl FnMut(u64, u64, bool)) {
        let end = addr + len;
        let mut a = addr;
        while a < end {
            let (stop, cached) = self.piece(a, end);
            f(a, stop - a, cached);
            a = stop;
        }
    }

    fn load(&mut self, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        if self.uncached.is_empty() {
            self.cache.load(&mut self.mem, addr, data, owners);
        } else {
            // Piece by piece without collecting them first: the mapping layer's paths run
            // here, and the allocation tests count every heap allocation on them.
            let end = addr + data.len() as u64;
            let mut a = addr;
            while a < end {
                let (stop, cached) = self.piece(a, end);
                let (o, n) = ((a - addr) as usize, (stop - a) as usize);
                let (d, w) = (&mut data[o..o + n], &mut owners[o..o + n]);
                if cached {
                    self.cache.load(&mut self.mem, a, d, w);
                } else {
                    self.mem.read_unchecked(a, d, w);
                }
                a = stop;
            }
        }
        self.stats.cpu_loads += 1;
        self.hazards.touch(addr, data.len() as u64);
        self.roll();
    }

    /// [`State::load`] of `len` bytes whose bytes are not wanted: the same cache changes,
    /// counters and hazard roll, without copying anything out (an uncached piece is not
    /// touched at all, as reading it changes nothing).
    fn load_discard(&mut self, addr: u64, len: usize) {
        if self.uncached.is_empty() {
            self.cache.load_discard(&mut self.mem, addr, len);
        } else {
            let end = addr + len as u64;
            let mut a = addr;
            while a < end {
                let (stop, cached) = self.piece(a, end);
                if cached {
                    self.cache
                        .load_discard(&mut self.mem, a, (stop - a) as usize);
                }
                a = stop;
            }
        }
        self.stats.cpu_loads += 1;
        self.hazards.touch(addr, len as u64);
        self.roll();
    }

    fn store(&mut self, addr: u64, data: &[u8], owners: Stamps<'_>) {
        if self.uncached.is_empty() {
            self.cache.store(&mut self.mem, addr, data, owners);
        } else {
            let end = addr + data.len() as u64;
            let mut a = addr;
            while a < end {
                let (stop, cached) = self.piece(a, end);
                let (o, n) = ((a - addr) as usize, (stop - a) as usize);
                let d = &data[o..o + n];
                let w = match owners {
                    Stamps::Each(s) => Stamps::Each(&s[o..o + n]),
                    all => all,
                };
                if cached {
                    self.cache.store(&mut self.mem, a, d, w);
                } else {
                    self.mem.write_unchecked(a, d, w);
                }
                a = stop;
            }
        }
        self.stats.cpu_stores += 1;
        self.hazards.touch(addr, data.len() as u64);
        self.roll();
    }

    fn peek(&self, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        self.split(addr, data.len() as u64, |a, n, cached| {
            let o = (a - addr) as usize;
            let (d, w) = (&mut data[o..o + n as usize], &mut owners[o..o + n as usize]);
            if cached {
                self.cache.peek(&self.mem, a, d, w);
            } else {
                self.mem.read_unchecked(a, d, w);
            }
        });
    }

    /// Whether [`State::peek`] would return exactly `data` and `owners`; compares in
    /// place.
    fn peek_eq(&self, addr: u64, data: &[u8], owners: &[Owner]) -> bool {
        let end = addr + data.len() as u64;
        let mut a = addr;
        while a < end {
            let (stop, cached) = self.piece(a, end);
            let r = (a - addr) as usize..(stop - addr) as usize;
            let (d, w) = (&data[r.clone()], &owners[r]);
            let same = if cached {
                self.cache.peek_eq(&self.mem, a, d, w)
            } else {
                self.mem.eq_unchecked(a, d, w)
            };
            if !same {
                return false;
            }
            a = stop;
        }
        true
    }

    /// What a device reads at physical `addr` into `data` and `owners`: RAM, or, for a
    /// `coherent` one, what the CPU would see (it snoops the cache).
    fn device_reads(&self, coherent: bool, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        if coherent {
            self.cache.peek(&self.mem, addr, data, owners);
        } else {
            self.mem.read_unchecked(addr, data, owners);
        }
    }

    /// One roll of the hazard dice, performing whatever comes up.
    #[inline]
    fn roll(&mut self) {
        for h in self.hazards.roll(&mut self.rng).into_iter().flatten() {
            match h {
                Hazard::Evict(line) => {
                    if let Some(dirty) = self.cache.evict(&mut self.mem, line) {
                        self.stats.hazard_evictions += 1;
                        self.stats.hazard_dirty_evictions += u64::from(dirty);
                        self.event(EV_EVICT, line);
                    }
                }
                Hazard::Speculate(line) => {
                    let ok = self.mem.ram().contains(line, self.cache.line_size())
                        && !self.is_uncached(line);
                    if ok && self.cache.speculative_fill(&mut self.mem, line) {
                        self.stats.speculative_fills += 1;
                        self.event(EV_SPEC, line);
                    }
                }
            }
        }
    }

    fn maintain(&mut self, kind: MaintenanceKind, range: PhysRange) {
        self.event(EV_MAINT, range.start().as_u64() ^ (kind as u64) << 60);
        if self.inject.drops(kind, range) {
            self.stats.dropped_maintenance += 1;
            return;
        }
        let (s, n) = (range.start().as_u64(), range.len());
        match kind {
            MaintenanceKind::Clean => {
                self.stats.cleans += 1;
                self.cache.clean(&mut self.mem, s, n);
            }
            MaintenanceKind::Invalidate => {
                self.stats.invalidates += 1;
                self.cache.invalidate(s, n);
            }
            MaintenanceKind::CleanInvalidate => {
                self.stats.clean_invalidates += 1;
                self.cache.clean_invalidate(&mut self.mem, s, n);
            }
        }
    }
}

/// The simulated machine. See the [module docs](self).
pub struct Machine {
    state: RefCell<State>,
    pages: RefCell<PageAlloc>,
    cpus: usize,
    cpu: Cell<usize>,
    line: u64,
    bad_frees: Cell<u64>,
}

impl Machine {
    /// Builds a machine.
    ///
    /// # Errors
    /// [`SimError::EmptyRamMap`], [`SimError::BadRamRange`], [`SimError::BadLineSize`],
    /// [`SimError::BadCacheGeometry`], [`SimError::BadRate`], [`SimError::ZeroCpus`] for the
    /// corresponding configuration mistakes.
    pub fn new(cfg: MachineConfig) -> Result<Self, SimError> {
        let ram = RamMap::new(&cfg.ram)?;
        let cache = Cache::new(cfg.cache)?;
        cfg.hazards.validate()?;
        if cfg.cpus == 0 {
            return Err(SimError::ZeroCpus);
        }
        let pages = PageAlloc::new(&ram, cfg.reserve_below);
        Ok(Self {
            state: RefCell::new(State {
                mem: Memory::new(ram),
                hazards: Hazards::new(cfg.hazards, cfg.cache.line_size),
                cache,
                rng: SimRng::new(cfg.seed),
                uncached: Vec::new(),
                engines: DmaEngines::default(),
                inject: MaintenanceFaults::NONE,
                stats: MachineStats::default(),
                plan: Vec::new(),
                scratch: Stamped::zeroed(0),
                sharing: None,
            }),
            pages: RefCell::new(pages),
            cpus: cfg.cpus,
            cpu: Cell::new(0),
            line: cfg.cache.line_size,
            bad_frees: Cell::new(0),
        })
    }

    /// Builds a confidential guest: as [`Machine::new`], but all memory starts private and
    /// a device access to a page not shared through [`Machine::host_sharing`] is refused
    /// and recorded with [`crate::FaultReason::PrivateMemory`]. CPU accesses are unaffected.
    ///
    /// # Errors
    /// As [`Machine::new`].
    pub fn new_confidential(cfg: MachineConfig) -> Result<Self, SimError> {
        let m = Self::new(cfg)?;
        m.state.borrow_mut().sharing = Some(Arc::new(SharedPages::new()));
        Ok(m)
    }

    /// The shared pages of a confidential guest (the platform's
    /// [`dmakit::MemorySharing`] hook); `None` for a machine that is not one.
    pub fn host_sharing(&self) -> Option<Arc<SharedPages>> {
        self.state.borrow().sharing.clone()
    }

    /// The CPU data cache line size.
    #[inline]
    pub fn line_size(&self) -> u64 {
        self.line
    }

    /// The RAM ranges, sorted and merged, as `(start, end)`.
    pub fn ram(&self) -> Vec<(u64, u64)> {
        self.state.borrow().mem.ram().ranges().to_vec()
    }

    /// Whether `[addr, addr + len)` is RAM.
    pub fn is_ram(&self, addr: u64, len: u64) -> bool {
        self.state.borrow().mem.ram().contains(addr, len)
    }

    /// Counters so far.
    pub fn stats(&self) -> MachineStats {
        let s = self.state.borrow();
        let mut st = s.stats;
        st.cache = s.cache.stats();
        st.bad_frees = self.bad_frees.get();
        st
    }

    /// Makes the CPU numbered `cpu` the current one.
    ///
    /// # Errors
    /// [`SimError::NoSuchCpu`] when `cpu >= cpu_count`.
    pub fn set_current_cpu(&self, cpu: usize) -> Result<(), SimError> {
        if cpu >= self.cpus {
            return Err(SimError::NoSuchCpu {
                cpu,
                count: self.cpus,
            });
        }
        self.cpu.set(cpu);
        Ok(())
    }

    /// Selects the maintenance operations to drop from now on.
    pub fn set_maintenance_faults(&self, f: MaintenanceFaults) {
        self.state.borrow_mut().inject = f;
    }

    /// Marks the lines overlapping `range` uncached: CPU accesses there bypass the cache from
    /// now on. Lines already cached there are cleaned and invalidated first.
    pub fn set_uncached(&self, range: PhysRange) {
        let mut s = self.state.borrow_mut();
        let line = self.line;
        let start = range.start().as_u64() & !(line - 1);
        let end = range
            .end()
            .checked_align_up(line)
            .map_or(!(line - 1), PhysAddr::as_u64);
        let st = &mut *s;
        st.cache.clean_invalidate(&mut st.mem, start, end - start);
        let mut v = std::mem::take(&mut st.uncached);
        v.push((start, end));
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match merged.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        st.uncached = merged;
    }

    /// Makes the lines overlapping `range` cached again.
    pub fn set_cached(&self, range: PhysRange) {
        let mut s = self.state.borrow_mut();
        let line = self.line;
        let start = range.start().as_u64() & !(line - 1);
        let end = range
            .end()
            .checked_align_up(line)
            .map_or(!(line - 1), PhysAddr::as_u64);
        let mut out = Vec::new();
        for &(a, b) in &s.uncached {
            if b <= start || a >= end {
                out.push((a, b));
                continue;
            }
            if a < start {
                out.push((a, start));
            }
            if b > end {
                out.push((end, b));
            }
        }
        s.uncached = out;
    }

    /// Whether CPU accesses to `addr` bypass the cache.
    pub fn is_uncached(&self, addr: PhysAddr) -> bool {
        self.state.borrow().is_uncached(addr.as_u64())
    }

    // ----- CPU side -----

    /// A CPU load of `data.len()` bytes at `addr`, through the cache.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM; nothing happens then.
    pub fn cpu_read(&self, addr: PhysAddr, data: &mut [u8]) -> Result<(), MemoryFault> {
        let mut owners = vec![Owner::NOBODY; data.len()];
        self.cpu_read_stamped(addr, data, &mut owners)
    }

    /// A CPU load that also returns the stamps (into `owners`, same length as `data`).
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the slices differ in length.
    pub fn cpu_read_stamped(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        let a = addr.as_u64();
        let mut s = self.state.borrow_mut();
        check(&s, a, data.len(), owners.len())?;
        if !data.is_empty() {
            s.load(a, data, owners);
        }
        Ok(())
    }

    /// A CPU load of `len` bytes at `addr` whose bytes the caller does not want (a driver
    /// reading its buffer, judged later by the oracle): the machine changes exactly as
    /// under [`Machine::cpu_read_stamped`] of that range (cache fills and evictions,
    /// counters, hazard roll), without the copy out.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM; nothing happens then.
    pub fn cpu_read_discard(&self, addr: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let a = addr.as_u64();
        let n = usize::try_from(len).map_err(|_| MemoryFault { addr, len })?;
        let mut s = self.state.borrow_mut();
        check(&s, a, n, n)?;
        if n != 0 {
            s.load_discard(a, n);
        }
        Ok(())
    }

    /// A CPU store of `data` at `addr`, every byte stamped `owner`, through the cache.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM; nothing happens then.
    pub fn cpu_write(&self, addr: PhysAddr, data: &[u8], owner: Owner) -> Result<(), MemoryFault> {
        let a = addr.as_u64();
        let mut s = self.state.borrow_mut();
        check(&s, a, data.len(), data.len())?;
        if !data.is_empty() {
            s.store(a, data, Stamps::All(owner));
        }
        Ok(())
    }

    /// A CPU store with one stamp per byte.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the slices differ in length.
    pub fn cpu_write_stamped(
        &self,
        addr: PhysAddr,
        data: &[u8],
        owners: &[Owner],
    ) -> Result<(), MemoryFault> {
        let a = addr.as_u64();
        let mut s = self.state.borrow_mut();
        check(&s, a, data.len(), owners.len())?;
        if !data.is_empty() {
            s.store(a, data, Stamps::Each(owners));
        }
        Ok(())
    }

    /// Time passes with no access: one roll of the hazard dice.
    pub fn tick(&self) {
        self.state.borrow_mut().roll();
    }

    /// What a CPU load would return now, without any side effect (no fill, no LRU update,
    /// no hazard roll).
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the slices differ in length.
    pub fn peek_cpu(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        let s = self.state.borrow();
        check(&s, addr.as_u64(), data.len(), owners.len())?;
        if !data.is_empty() {
            s.peek(addr.as_u64(), data, owners);
        }
        Ok(())
    }

    /// Whether a [`Machine::peek_cpu`] of `data.len()` bytes at `addr` would return
    /// exactly `data` and `owners`: compared in place, without copying, and without any
    /// side effect.
    ///
    /// # Errors
    /// As [`Machine::peek_cpu`].
    pub fn peek_cpu_eq(
        &self,
        addr: PhysAddr,
        data: &[u8],
        owners: &[Owner],
    ) -> Result<bool, MemoryFault> {
        let s = self.state.borrow();
        check(&s, addr.as_u64(), data.len(), owners.len())?;
        Ok(data.is_empty() || s.peek_eq(addr.as_u64(), data, owners))
    }

    /// What RAM holds now, ignoring the cache. No side effect.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the slices differ in length.
    pub fn peek_ram(
        &self,
        addr: PhysAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        let s = self.state.borrow();
        check(&s, addr.as_u64(), data.len(), owners.len())?;
        s.mem.read_unchecked(addr.as_u64(), data, owners);
        Ok(())
    }

    /// Whether the line holding `addr` is cached: `Some(dirty)` or `None`.
    pub fn cached_line(&self, addr: PhysAddr) -> Option<bool> {
        self.state.borrow().cache.lookup(addr.as_u64())
    }

    /// Every cached line as `(line address, dirty)`, in cache slot order (deterministic).
    pub fn cache_contents(&self) -> Vec<(u64, bool)> {
        self.state.borrow().cache.lines()
    }

    /// Evicts the line holding `addr` now (written back if dirty), as a hazard would.
    /// Returns whether a line was evicted.
    pub fn evict_line(&self, addr: PhysAddr) -> bool {
        let mut s = self.state.borrow_mut();
        let st = &mut *s;
        st.cache.evict(&mut st.mem, addr.as_u64()).is_some()
    }

    /// Speculatively fills the line holding `addr` now, as a hazard would. Returns whether a
    /// line was filled (not when already cached, uncached or not RAM).
    pub fn speculate_line(&self, addr: PhysAddr) -> bool {
        let mut s = self.state.borrow_mut();
        let la = addr.as_u64() & !(self.line - 1);
        if !s.mem.ram().contains(la, self.line) || s.is_uncached(la) {
            return false;
        }
        let st = &mut *s;
        st.cache.speculative_fill(&mut st.mem, la)
    }

    // ----- device side -----

    /// Attaches a device.
    ///
    /// # Errors
    /// [`SimError::DuplicateDevice`] when one with the same id is attached.
    pub fn attach(&self, dev: Device) -> Result<(), SimError> {
        self.state.borrow_mut().engines.attach(dev)
    }

    /// Allows device `dev` to access bus addresses `[dma, dma + len)` (what `map` returned).
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`], [`SimError::BadRange`].
    pub fn grant(&self, dev: DeviceId, dma: DmaAddr, len: u64) -> Result<(), SimError> {
        self.state.borrow_mut().engines.grant(dev, dma, len)
    }

    /// Withdraws one grant of exactly `[dma, dma + len)`.
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`], [`SimError::NoSuchGrant`].
    pub fn revoke(&self, dev: DeviceId, dma: DmaAddr, len: u64) -> Result<(), SimError> {
        self.state.borrow_mut().engines.revoke(dev, dma, len)
    }

    /// Replaces the bus-to-physical translation (identity by default).
    pub fn set_translation(&self, t: Box<dyn DmaTranslation>) {
        self.state.borrow_mut().engines.set_translation(t);
    }

    /// Every device fault recorded so far, in order.
    pub fn faults(&self) -> Vec<DeviceFault> {
        self.state.borrow().engines.faults().to_vec()
    }

    /// Number of device faults recorded so far.
    pub fn fault_count(&self) -> usize {
        self.state.borrow().engines.faults().len()
    }

    /// Device `dev` reads `data.len()` bytes at bus address `dma` (stamps into `owners`).
    /// A non-coherent device reads RAM and never sees the CPU cache; a coherent one snoops
    /// it (sees dirty lines).
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`]; [`SimError::BadRange`] for an empty or overflowing access
    /// or slices of different lengths; [`SimError::DeviceFault`] (also recorded) when the
    /// address is above the device's mask, outside its grants, untranslatable or not RAM.
    /// Nothing is read on error.
    pub fn device_read_into(
        &self,
        dev: DeviceId,
        dma: DmaAddr,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), SimError> {
        if data.len() != owners.len() {
            return Err(SimError::LengthMismatch {
                data: data.len(),
                owners: owners.len(),
            });
        }
        self.device_access(dev, dma, data.len() as u64, false, |st, coherent, p, at| {
            st.device_reads(coherent, p, &mut data[at.clone()], &mut owners[at]);
        })
    }

    /// [`Machine::device_read_into`] that first compares what the device reads with
    /// `expected` and `expected_owners` (of the same length as `data`): `Ok(true)` when it
    /// is exactly that, and then nothing is copied into `data` and `owners`; `Ok(false)`
    /// when it is not, and then `data` and `owners` hold what was read, as
    /// `device_read_into` gives. Either way the machine changes exactly as under
    /// `device_read_into` (counters, event hash, hazard roll).
    ///
    /// # Errors
    /// As [`Machine::device_read_into`], and [`SimError::LengthMismatch`] when the
    /// expected slices are not as long as `data`.
    pub fn device_read_unless(
        &self,
        dev: DeviceId,
        dma: DmaAddr,
        expected: &[u8],
        expected_owners: &[Owner],
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<bool, SimError> {
        for (d, o) in [
            (data.len(), owners.len()),
            (data.len(), expected.len()),
            (data.len(), expected_owners.len()),
        ] {
            if d != o {
                return Err(SimError::LengthMismatch { data: d, owners: o });
            }
        }
        let mut same = true;
        self.device_access(dev, dma, data.len() as u64, false, |st, coherent, p, at| {
            if same {
                let (e, eo) = (&expected[at.clone()], &expected_owners[at.clone()]);
                same = if coherent {
                    st.cache.peek_eq(&st.mem, p, e, eo)
                } else {
                    st.mem.eq_unchecked(p, e, eo)
                };
                if same {
                    return;
                }
                // Every byte before this piece was as expected.
                data[..at.start].copy_from_slice(&expected[..at.start]);
                owners[..at.start].copy_from_slice(&expected_owners[..at.start]);
            }
            st.device_reads(coherent, p, &mut data[at.clone()], &mut owners[at]);
        })?;
        Ok(same)
    }

    /// [`Machine::device_read_into`] returning the bytes.
    ///
    /// # Errors
    /// As [`Machine::device_read_into`].
    pub fn device_read(&self, dev: DeviceId, dma: DmaAddr, len: u64) -> Result<Stamped, SimError> {
        let n = usize::try_from(len).map_err(|_| SimError::BadRange {
            addr: dma.as_u64(),
            len,
        })?;
        let mut out = Stamped::zeroed(n);
        self.device_read_into(dev, dma, &mut out.data, &mut out.owners)?;
        Ok(out)
    }

    /// Device `dev` writes `data` at bus address `dma`, stamped `owner`. A non-coherent
    /// device writes RAM behind the cache's back; a coherent one also updates cached copies.
    ///
    /// # Errors
    /// As [`Machine::device_read_into`]; nothing is written on error.
    pub fn device_write(
        &self,
        dev: DeviceId,
        dma: DmaAddr,
        data: &[u8],
        owner: Owner,
    ) -> Result<(), SimError> {
        self.device_access(dev, dma, data.len() as u64, true, |st, coherent, p, at| {
            let d = &data[at];
            st.mem.write_unchecked(p, d, Stamps::All(owner));
            if coherent {
                st.cache.snoop_write(p, d, owner);
            }
        })
    }

    /// One device access of `len` bytes at `dma`: plans it (mask, grants, translation,
    /// RAM) and, when it is allowed, calls `piece` for each physically contiguous piece
    /// with its physical address and its byte range within the access; then counts the
    /// access and gives the cache its chance to misbehave. Nothing is touched on error.
    fn device_access(
        &self,
        dev: DeviceId,
        dma: DmaAddr,
        len: u64,
        write: bool,
        mut piece: impl FnMut(&mut State, bool, u64, core::ops::Range<usize>),
    ) -> Result<(), SimError> {
        let mut s = self.state.borrow_mut();
        let st = &mut *s;
        let coherent = st.engines.device(dev)?.is_coherent();
        let mut plan = std::mem::take(&mut st.plan);
        plan.clear();
        let mem = &st.mem;
        let shared = st.sharing.as_deref();
        let reach = |a: u64, n: u64| {
            if !mem.ram().contains(a, n) {
                Err(FaultReason::NotMemory)
            } else if shared.is_some_and(|s| !s.is_shared(a, n)) {
                Err(FaultReason::PrivateMemory)
            } else {
                Ok(())
            }
        };
        let r = st.engines.plan(dev, dma, len, write, reach, &mut plan);
        if r.is_ok() {
            let mut off = 0usize;
            for &(p, n) in &plan {
                let n = n as usize;
                piece(st, coherent, p, off..off + n);
                off += n;
            }
            if write {
                st.stats.device_writes += 1;
                st.event(EV_DEV_WRITE, dma.as_u64());
            } else {
                st.stats.device_reads += 1;
                st.event(EV_DEV_READ, dma.as_u64());
            }
            st.roll();
        }
        st.plan = plan;
        r
    }

    // ----- used by the platform trait impls -----

    /// Runs `f` on the RAM behind the caches: the vmap alias cache of [`crate::vmap`] fills
    /// from and writes back to it.
    pub(crate) fn with_memory<R>(&self, f: impl FnOnce(&mut Memory) -> R) -> R {
        f(&mut self.state.borrow_mut().mem)
    }

    pub(crate) fn maintain(&self, kind: MaintenanceKind, range: PhysRange) {
        self.state.borrow_mut().maintain(kind, range);
    }

    pub(crate) fn cpu_count_(&self) -> usize {
        self.cpus
    }

    pub(crate) fn current_cpu_(&self) -> usize {
        self.cpu.get()
    }

    pub(crate) fn copy_(&self, dst: u64, src: u64, len: u64) -> Result<(), MemoryFault> {
        let mut s = self.state.borrow_mut();
        for a in [src, dst] {
            s.mem.ram().check(a, len.max(1))?;
        }
        let n = usize::try_from(len).map_err(|_| MemoryFault {
            addr: PhysAddr::new(src),
            len,
        })?;
        if n == 0 {
            return Ok(());
        }
        let mut tmp = core::mem::replace(&mut s.scratch, Stamped::zeroed(0));
        // The load overwrites the first `n` entries.
        let (d, o) = (
            sized(&mut tmp.data, n, 0),
            sized(&mut tmp.owners, n, Owner::NOBODY),
        );
        s.load(src, d, o);
        s.store(dst, d, Stamps::Each(o));
        s.stats.copied_bytes += len;
        s.scratch = tmp;
        Ok(())
    }

    pub(crate) fn fill_(&self, dst: u64, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let mut s = self.state.borrow_mut();
        s.mem.ram().check(dst, len.max(1))?;
        let n = usize::try_from(len).map_err(|_| MemoryFault {
            addr: PhysAddr::new(dst),
            len,
        })?;
        if n == 0 {
            return Ok(());
        }
        let mut tmp = core::mem::replace(&mut s.scratch, Stamped::zeroed(0));
        let d = sized(&mut tmp.data, n, 0);
        d.fill(byte);
        s.store(dst, d, Stamps::All(Owner::NOBODY));
        s.scratch = tmp;
        Ok(())
    }

    /// `pages` contiguous pages between `min_addr` and `max_addr` (inclusive bound on the
    /// last byte), lowest first; `None` when there are none.
    pub fn alloc_pages_between(
        &self,
        pages: u64,
        min_addr: u64,
        max_addr: u64,
    ) -> Option<PhysAddr> {
        self.pages
            .borrow_mut()
            .alloc(pages, min_addr, max_addr)
            .map(PhysAddr::new)
    }

    /// Returns pages from an allocation.
    ///
    /// # Errors
    /// [`SimError::BadRange`] when `base`/`pages` is not a live allocation.
    pub fn free_pages_checked(&self, base: PhysAddr, pages: u64) -> Result<(), SimError> {
        let r = self.pages.borrow_mut().free(base.as_u64(), pages);
        if r.is_err() {
            self.bad_frees.set(self.bad_frees.get() + 1);
        }
        r
    }

    /// Pages currently handed out by the page allocator.
    pub fn used_pages(&self) -> u64 {
        self.pages.borrow().used_pages()
    }
}

fn check(s: &State, addr: u64, len: usize, owners: usize) -> Result<(), MemoryFault> {
    if len != owners {
        return Err(MemoryFault {
            addr: PhysAddr::new(addr),
            len: len as u64,
        });
    }
    if len == 0 {
        // An empty access must still start in RAM to be meaningful.
        return s.mem.ram().check(addr, 1);
    }
    s.mem.ram().check(addr, len as u64)
}
