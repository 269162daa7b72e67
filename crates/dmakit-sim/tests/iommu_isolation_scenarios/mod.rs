//! The scenarios of the IOMMU isolation tests (`iommu_isolation.rs`) and of their controls
//! (`iommu_isolation_controls.rs`, which run the same functions with one fixed defect put
//! back). Each scenario builds its own machine, runs, and returns what it observed; the
//! tests decide what that must be.

#![allow(dead_code)]

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dmakit::dma_alloc::{AllocContext, DmaAllocator, DmaAllocatorConfig};
use dmakit::{
    BounceReason, CacheMaintenance, Clock, CpuMemory, CpuTopology, Device, DeviceId, Direction,
    DmaAddr, DmaError, DmaMapper, DomainConfig, FlushMode, IommuDma, MapStatus, MemoryFault,
    PageAllocator, PhysAddr, PhysRange, SgEntry, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{Granule, HazardConfig, Machine, Owner};

#[path = "../iommu_rig/mod.rs"]
mod iommu_rig;
pub use iommu_rig::{rig, Rig};

/// Slots of the small pools below (2 KiB SWIOTLB slots).
pub const POOL_PAGES: u64 = 64;
pub const POOL_SLOTS: u64 = POOL_PAGES * 4096 / 2048;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A trusted, non-coherent device with 64-byte lines.
pub fn trusted(id: u32) -> Device {
    Device::builder(DeviceId(id), "trusted").build().unwrap()
}

/// An untrusted, coherent device (bounced for isolation, not for alignment).
pub fn untrusted(id: u32) -> Device {
    Device::builder(DeviceId(id), "untrusted")
        .trusted(false)
        .coherent(true)
        .build()
        .unwrap()
}

/// `dev` attached to the machine and to a new domain of `cfg` of `dma`.
fn attach(r: &Rig, dma: &IommuDma, dev: &Device, cfg: DomainConfig) {
    let d = dma.create_domain(cfg).unwrap();
    r.m.attach(dev.clone()).unwrap();
    dma.attach(dev, d).unwrap();
}

/// `n` buffers of `len` bytes, each 8 bytes into its own 256-byte block (so an inbound
/// mapping's first and last cache lines are shared), written by the CPU with `owner`.
fn buffers(r: &Rig, n: u64, len: u64, owner: Owner) -> Vec<PhysAddr> {
    let pages = (n * 256).div_ceil(4096);
    let base = r.m.alloc_pages(pages, u64::MAX).unwrap();
    (0..n)
        .map(|i| {
            let b = base.add(i * 256 + 8);
            r.m.cpu_write(b, &vec![0x40u8.wrapping_add(i as u8); len as usize], owner)
                .unwrap();
            b
        })
        .collect()
}

// ----- defect 3: map_sg through the IOMMU is counted -----

/// What the statistics said while a bounced sg list was mapped.
#[derive(Debug, PartialEq, Eq)]
pub struct SgCounts {
    pub mappings: u64,
    pub untrusted_bounces: u64,
    pub pool_live: u64,
    pub after_unmap_pool_live: u64,
}

/// An untrusted device behind a strict domain maps a two-buffer sg list (each buffer is
/// bounced); the statistics are read while it is mapped.
pub fn sg_counts() -> SgCounts {
    let r = rig(31, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let dev = untrusted(3);
    attach(&r, &r.dma, &dev, DomainConfig::STRICT);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let bufs = buffers(&r, 2, 100, Owner(3));
    let entries: Vec<SgEntry> = bufs
        .iter()
        .map(|&phys| SgEntry { phys, len: 100 })
        .collect();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, Direction::ToDevice) }.unwrap();
    let row = mapper
        .stats()
        .devices
        .into_iter()
        .find(|d| d.device == dev.id());
    let pool_live = pool.usage().live;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, Direction::ToDevice) }.unwrap();
    SgCounts {
        mappings: row.as_ref().map_or(0, |d| d.mappings_total()),
        untrusted_bounces: row.map_or(0, |d| d.bounces(BounceReason::Untrusted)),
        pool_live,
        after_unmap_pool_live: pool.usage().live,
    }
}

// ----- defect 4: lazy domains and bounce slots -----

/// What a lazy domain left behind after map/unmap pairs of bounced buffers.
#[derive(Debug)]
pub struct LazyPairs {
    /// Pool bytes reserved after the pairs, and the pool's size.
    pub used: u64,
    pub total: u64,
    /// Live bounces in the pool and live mappings in the domain after the pairs.
    pub pool_live: u64,
    pub domain_live: usize,
    /// The next map.
    pub next: Result<DmaAddr, DmaError>,
    /// Pool bounces live after that map (and before its unmap).
    pub pool_live_after_next: u64,
}

/// A trusted non-coherent device in a lazy domain (256-entry queue, no time bound) maps
/// and unmaps `pairs` misaligned inbound buffers, each bounced through a pool of
/// [`POOL_SLOTS`] slots; then maps once more.
pub fn lazy_pairs(pairs: u64) -> LazyPairs {
    let r = rig(41, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let dev = trusted(4);
    attach(&r, &r.dma, &dev, DomainConfig::LAZY);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let bufs = buffers(&r, pairs + 1, 100, Owner(4));
    let dir = Direction::FromDevice;
    for &b in &bufs[..pairs as usize] {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, b, 100, dir) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 100, dir) }.unwrap();
    }
    let u = pool.usage();
    let domain_live = r.dma.domain_of(dev.id()).unwrap().stats().live_mappings;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let next = unsafe { mapper.map(&dev, bufs[pairs as usize], 100, dir) };
    let pool_live_after_next = pool.usage().live;
    if let Ok(dma) = next {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 100, dir) }.unwrap();
    }
    LazyPairs {
        used: u.used,
        total: u.total,
        pool_live: u.live,
        domain_live,
        next,
        pool_live_after_next,
    }
}

/// What became of a deferred mapping that waited behind bounce slots of a lazy domain.
#[derive(Debug, PartialEq, Eq)]
pub struct Waiter {
    /// `map_or_defer` queued it.
    pub deferred: bool,
    /// Its completion ran with `Ok` after the holder unmapped everything (lazily) and
    /// the IOMMU queues were flushed through the mapper.
    pub completed: bool,
    /// Still queued at the end.
    pub still_queued: usize,
}

/// A device fills the pool with live bounces; another device's mapping is deferred; the
/// first device unmaps everything in its lazy domain; the owner flushes the IOMMU queues.
pub fn waiter_behind_lazy_unmaps() -> Waiter {
    let r = rig(42, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let holder = trusted(5);
    let waiter = trusted(6);
    attach(&r, &r.dma, &holder, DomainConfig::LAZY);
    attach(&r, &r.dma, &waiter, DomainConfig::LAZY);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let dir = Direction::FromDevice;
    let bufs = buffers(&r, POOL_SLOTS + 1, 100, Owner(5));
    let live: Vec<DmaAddr> = bufs[..POOL_SLOTS as usize]
        .iter()
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        .map(|&b| unsafe { mapper.map(&holder, b, 100, dir) }.unwrap())
        .collect();
    assert_eq!(pool.usage().used, pool.usage().total, "the pool is full");
    let done = Arc::new(AtomicUsize::new(0));
    let seen = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &waiter,
            bufs[POOL_SLOTS as usize],
            100,
            dir,
            Box::new(move |res| {
                if res.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )
    }
    .unwrap();
    let deferred = status == MapStatus::Deferred;
    for dma in live {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&holder, dma, 100, dir) }.unwrap();
    }
    mapper.flush_iommu_queues();
    Waiter {
        deferred,
        completed: done.load(Ordering::SeqCst) == 1,
        still_queued: mapper.deferred_len(),
    }
}

/// A deferred mapping waiting while the pool's room is parked in a lazy queue.
#[derive(Debug, PartialEq, Eq)]
pub struct FlushWake {
    /// `map_or_defer` queued it.
    pub deferred: bool,
    /// Bounce slots parked after the holder's lazy unmaps, before the flush.
    pub parked: usize,
    /// Its completion had run before the flush, and after it.
    pub completed_before_flush: bool,
    pub completed_after_flush: bool,
    /// Slots [`DmaMapper::flush_iommu_queues`] released.
    pub released: usize,
}

/// A device holds 90 of the pool's 128 slots with live bounces (below the pressure
/// threshold); another device's 160 KiB bounce is deferred; the holder unmaps everything
/// lazily (the slots are parked, not under pressure); then the owner flushes the queues.
pub fn waiter_woken_by_flush() -> FlushWake {
    let r = rig(49, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let holder = trusted(16);
    let waiter = trusted(17);
    attach(&r, &r.dma, &holder, DomainConfig::LAZY);
    attach(&r, &r.dma, &waiter, DomainConfig::LAZY);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let dir = Direction::FromDevice;
    let live: Vec<DmaAddr> = buffers(&r, 90, 100, Owner(16))
        .into_iter()
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        .map(|b| unsafe { mapper.map(&holder, b, 100, dir) }.unwrap())
        .collect();
    let big_len = 160 * 1024;
    let big =
        r.m.alloc_pages(big_len / 4096 + 1, u64::MAX)
            .unwrap()
            .add(8);
    r.m.cpu_write(big, &vec![0x17; big_len as usize], Owner(17))
        .unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let seen = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &waiter,
            big,
            big_len,
            dir,
            Box::new(move |res| {
                if res.is_ok() {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            }),
        )
    }
    .unwrap();
    for dma in live {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&holder, dma, 100, dir) }.unwrap();
    }
    let parked = r.dma.domain_of(holder.id()).unwrap().stats().parked_bounces;
    let completed_before_flush = done.load(Ordering::SeqCst) == 1;
    let released = mapper.flush_iommu_queues();
    FlushWake {
        deferred: status == MapStatus::Deferred,
        parked,
        completed_before_flush,
        completed_after_flush: done.load(Ordering::SeqCst) == 1,
        released,
    }
}

/// A pool full of 90 parked slots (below the pressure threshold, so they stay parked) and
/// 38 live bounces; then a two-buffer sg list that must be bounced. Returns the pool's
/// usage before the list, and the list's outcome (its segment count).
pub fn sg_behind_parked_slots() -> (u64, u64, Result<usize, DmaError>) {
    let r = rig(50, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let dev = trusted(18);
    attach(&r, &r.dma, &dev, DomainConfig::LAZY);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let dir = Direction::FromDevice;
    let bufs = buffers(&r, POOL_SLOTS + 2, 100, Owner(18));
    let parked: Vec<DmaAddr> = bufs[..90]
        .iter()
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        .map(|&b| unsafe { mapper.map(&dev, b, 100, dir) }.unwrap())
        .collect();
    for dma in parked {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 100, dir) }.unwrap();
    }
    for &b in &bufs[90..POOL_SLOTS as usize] {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, b, 100, dir) }.unwrap();
    }
    let u = pool.usage();
    let entries: Vec<SgEntry> = bufs[POOL_SLOTS as usize..]
        .iter()
        .map(|&phys| SgEntry { phys, len: 100 })
        .collect();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let sg = unsafe { mapper.map_sg(&dev, &entries, dir) }.map(|segs| segs.len());
    (u.used, u.total, sg)
}

/// A clock the test moves by hand.
pub struct HandClock(pub AtomicU64);

impl Clock for HandClock {
    fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a device that kept a lazily unmapped IOVA could still do.
#[derive(Debug, PartialEq, Eq)]
pub struct Window {
    /// Queued IOVAs right after the unmap, and after the time bound passed and another map
    /// was made.
    pub queued_after_unmap: usize,
    pub queued_after_deadline: usize,
    /// Whether the device still read memory through the old IOVA after the deadline.
    pub reached_after_deadline: bool,
}

/// A lazy domain with a 1 ms time bound: a device reads its page (filling the IOTLB), the
/// page is unmapped, 2 ms pass, another mapping is made, and the device tries the old IOVA.
pub fn lazy_window_after_timeout() -> Window {
    let r = rig(43, Granule::K4, HazardConfig::NONE);
    let clock = Arc::new(HandClock(AtomicU64::new(1_000)));
    let dma = Arc::new(
        IommuDma::new(Arc::new(r.iommu.clone()), 1)
            .unwrap()
            .with_clock(clock.clone()),
    );
    let dev = Device::builder(DeviceId(7), "lazy")
        .coherent(true)
        .build()
        .unwrap();
    let cfg = DomainConfig {
        mode: FlushMode::Lazy { queue: 256 },
        flush_timeout_ns: Some(1_000_000),
        ..DomainConfig::STRICT
    };
    attach(&r, &dma, &dev, cfg);
    let mapper = DmaMapper::builder(&r.m).iommu(dma.clone()).build();
    let page = r.m.alloc_pages(2, u64::MAX).unwrap();
    r.m.cpu_write(page, &[0x77; 4096], Owner(7)).unwrap();
    r.m.cpu_write(page.add(4096), &[0x78; 4096], Owner(17))
        .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let old = unsafe { mapper.map(&dev, page, 4096, Direction::ToDevice) }.unwrap();
    r.m.grant(dev.id(), old, 4096).unwrap();
    r.m.device_read(dev.id(), old, 64).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, old, 4096, Direction::ToDevice) }.unwrap();
    let dom = dma.domain_of(dev.id()).unwrap();
    let queued_after_unmap = dom.stats().queued;
    clock.0.fetch_add(2_000_000, Ordering::SeqCst);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let other = unsafe { mapper.map(&dev, page.add(4096), 4096, Direction::ToDevice) }.unwrap();
    let queued_after_deadline = dom.stats().queued;
    // The old IOVA may well translate again, to the new mapping: what matters is whether
    // it still reaches the old page.
    let reached_after_deadline =
        r.m.device_read(dev.id(), old, 64)
            .is_ok_and(|s| s.owners.iter().all(|&o| o == Owner(7)));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, other, 4096, Direction::ToDevice) }.unwrap();
    Window {
        queued_after_unmap,
        queued_after_deadline,
        reached_after_deadline,
    }
}

/// What a device with a stale IOVA saw of the pool slot it used to own.
#[derive(Debug)]
pub struct StaleSlot {
    /// The other device's maps that succeeded (all [`POOL_SLOTS`] of them when the pool
    /// reclaims parked slots under pressure).
    pub other_mapped: u64,
    /// Bytes stamped by the other device that the first one read through its old IOVA
    /// (`None`: the access faulted).
    pub foreign_seen: Option<usize>,
}

/// Device A (lazy domain) has a misaligned inbound buffer bounced, reads its whole granule
/// (the IOTLB now translates it), and unmaps (the slot is parked). Device B, in another
/// domain, then fills the whole pool with a secret. A reads its old IOVA's granule again.
/// With `drop_invalidations` the IOMMU model ignores IOTLB invalidations (the control
/// that shows the read can see B's secret).
pub fn stale_iova_after_pool_pressure(drop_invalidations: bool) -> StaleSlot {
    let r = rig(44, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let a = trusted(8);
    let b = trusted(9);
    attach(&r, &r.dma, &a, DomainConfig::LAZY);
    attach(&r, &r.dma, &b, DomainConfig::STRICT);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    r.iommu.set_drop_invalidations(drop_invalidations);
    let dir = Direction::Bidirectional;
    let abuf = buffers(&r, 1, 100, Owner(8))[0];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let adma = unsafe { mapper.map(&a, abuf, 100, dir) }.unwrap();
    let granule = DmaAddr::new(adma.as_u64() & !4095);
    r.m.grant(a.id(), granule, 4096).unwrap();
    r.m.device_read(a.id(), granule, 4096).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, adma, 100, dir) }.unwrap();
    let secret = Owner(90);
    let bbufs = buffers(&r, POOL_SLOTS, 100, secret);
    let mut other_mapped = 0;
    for &bb in &bbufs {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        if unsafe { mapper.map(&b, bb, 100, Direction::Bidirectional) }.is_ok() {
            other_mapped += 1;
        }
    }
    let foreign_seen =
        r.m.device_read(a.id(), granule, 4096)
            .ok()
            .map(|s| s.owners.iter().filter(|&&o| o == secret).count());
    StaleSlot {
        other_mapped,
        foreign_seen,
    }
}

// ----- defect 8: a faulting copy-back in the IOMMU path's unmap -----

/// The machine, with CPU copies into one range made to fault (poisoned memory).
pub struct FaultyCopies<'a> {
    pub m: &'a Machine,
    pub poisoned: Cell<Option<PhysRange>>,
}

impl CacheMaintenance for FaultyCopies<'_> {
    fn cache_line_size(&self) -> u64 {
        self.m.cache_line_size()
    }
    fn clean(&self, range: PhysRange) {
        self.m.clean(range)
    }
    fn invalidate(&self, range: PhysRange) {
        self.m.invalidate(range)
    }
    fn clean_invalidate(&self, range: PhysRange) {
        self.m.clean_invalidate(range)
    }
}

// SAFETY: forwards to the model machine's implementation, or faults without touching
// memory.
unsafe impl CpuMemory for FaultyCopies<'_> {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let hit = self.poisoned.get().is_some_and(|p| {
            dst.as_u64() < p.end().as_u64() && p.start().as_u64() < dst.as_u64() + len
        });
        if hit {
            return Err(MemoryFault { addr: dst, len });
        }
        self.m.copy(dst, src, len)
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        self.m.fill(dst, byte, len)
    }
}

impl CpuTopology for FaultyCopies<'_> {
    fn cpu_count(&self) -> usize {
        self.m.cpu_count()
    }
    fn current_cpu(&self) -> usize {
        self.m.current_cpu()
    }
}

/// What the pool held after an unmap whose copy back faulted.
#[derive(Debug)]
pub struct FaultedUnmap {
    pub unmap: Result<(), DmaError>,
    pub pool_live: u64,
    pub pool_used: u64,
    /// Maps of the whole pool's worth of buffers that succeeded afterwards.
    pub refilled: u64,
}

/// An untrusted device behind a strict domain maps an inbound buffer (bounced); the
/// buffer's memory goes bad before the unmap, so the copy back faults.
pub fn faulted_copy_back() -> FaultedUnmap {
    let r = rig(45, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let dev = untrusted(10);
    attach(&r, &r.dma, &dev, DomainConfig::STRICT);
    let plat = FaultyCopies {
        m: &r.m,
        poisoned: Cell::new(None),
    };
    let mapper = DmaMapper::builder(&plat)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let dir = Direction::FromDevice;
    let bufs = buffers(&r, POOL_SLOTS + 1, 100, Owner(10));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev, bufs[0], 100, dir) }.unwrap();
    plat.poisoned.set(PhysRange::new(bufs[0], 100));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let unmap = unsafe { mapper.unmap(&dev, dma, 100, dir) };
    plat.poisoned.set(None);
    let u = pool.usage();
    let mut refilled = 0;
    for &b in &bufs[1..] {
        // Each untrusted bounce of 100 bytes owns a whole 4 KiB granule: two slots.
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        if unsafe { mapper.map(&dev, b, 100, dir) }.is_ok() {
            refilled += 1;
        }
    }
    FaultedUnmap {
        unmap,
        pool_live: u.live,
        pool_used: u.used,
        refilled,
    }
}

// ----- defect 10: allocations behind large granules -----

/// Zones with 8 MiB below 4 GiB (the atomic pool lives there) and 64 MiB above.
fn zones(m: &Machine) -> ZonedPageAllocator {
    let low = m
        .alloc_pages_between(8 * MIB / PAGE_SIZE, 16 * MIB, u32::MAX as u64)
        .unwrap();
    let high = m
        .alloc_pages_between(64 * MIB / PAGE_SIZE, 4 * GIB, u64::MAX)
        .unwrap();
    ZonedPageAllocator::new(&[
        PhysRange::new(low, 8 * MIB).unwrap(),
        PhysRange::new(high, 64 * MIB).unwrap(),
    ])
    .unwrap()
}

/// One allocation behind the IOMMU, as the device saw it.
#[derive(Debug)]
pub struct Allocated {
    pub what: &'static str,
    /// `Err` with the allocator's error when it failed.
    pub result: Result<(), String>,
    /// The device read back the CPU's bytes of the whole allocation.
    pub device_saw_cpu_bytes: bool,
    /// Bytes of the granules around the allocation the device could read that belong to
    /// someone else (not the allocation's own bytes, not zero).
    pub foreign_in_granules: usize,
    /// The free was accepted, and the device then faulted on the old address.
    pub freed_and_cut_off: bool,
}

/// The CPU writes `size` bytes at `cpu` (cleaned to memory); the device reads the whole
/// granules around `dma`. Returns whether it saw the CPU's bytes, and how many bytes
/// around them belong to someone else.
fn probe(r: &Rig, dev: &Device, g: u64, cpu: PhysAddr, dma: DmaAddr, size: u64) -> (bool, usize) {
    let owner = Owner(11);
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
    r.m.cpu_write(cpu, &data, owner).unwrap();
    CacheMaintenance::clean(&r.m, PhysRange::new(cpu, size).unwrap());
    let first = DmaAddr::new(dma.as_u64() & !(g - 1));
    let span = (dma.as_u64() + size).next_multiple_of(g) - first.as_u64();
    r.m.grant(dev.id(), first, span).unwrap();
    let seen = r.m.device_read(dev.id(), first, span).unwrap();
    let at = (dma.as_u64() - first.as_u64()) as usize;
    let own = at..at + size as usize;
    let saw = seen.data[own.clone()] == data[..];
    let foreign = seen
        .owners
        .iter()
        .zip(&seen.data)
        .enumerate()
        .filter(|&(i, (&o, &b))| !own.contains(&i) && o != owner && b != 0)
        .count();
    (saw, foreign)
}

/// `alloc_coherent` (blocking and atomic), `alloc_pages` and `alloc_noncontiguous` of
/// sub-granule sizes for a device behind an IOMMU with `granule`.
pub fn sub_granule_allocations(granule: Granule) -> Vec<Allocated> {
    let r = rig(46, granule, HazardConfig::NONE);
    let g = granule.bytes();
    let dev = Device::builder(DeviceId(12), "alloc")
        .dma_bits(32)
        .build()
        .unwrap();
    attach(&r, &r.dma, &dev, DomainConfig::STRICT);
    let z = zones(&r.m);
    let a =
        DmaAllocator::new(&r.m, &z, r.dma.clone(), DmaAllocatorConfig::default(), None).unwrap();
    let cut_off = |dma: DmaAddr| r.m.device_read(dev.id(), dma, 1).is_err();
    let mut out = Vec::new();
    for (what, size, ctx) in [
        ("alloc_coherent(4 KiB)", 4096, AllocContext::MayBlock),
        ("alloc_coherent(256 B, atomic)", 256, AllocContext::Atomic),
    ] {
        out.push(match a.alloc_coherent(&dev, size, ctx) {
            Ok(buf) => {
                let (saw, foreign) = probe(&r, &dev, g, buf.phys(), buf.dma(), size);
                let dma = buf.dma();
                let freed = a.free_coherent(&dev, buf).is_ok();
                Allocated {
                    what,
                    result: Ok(()),
                    device_saw_cpu_bytes: saw,
                    foreign_in_granules: foreign,
                    freed_and_cut_off: freed && cut_off(dma),
                }
            }
            Err(e) => failed(what, e),
        });
    }
    let what = "alloc_pages(8 KiB)";
    out.push(match a.alloc_pages(&dev, 8192, Direction::Bidirectional) {
        Ok(p) => {
            let (saw, foreign) = probe(&r, &dev, g, p.phys(), p.dma(), 8192);
            let dma = p.dma();
            let freed = a.free_pages(&dev, p).is_ok();
            Allocated {
                what,
                result: Ok(()),
                device_saw_cpu_bytes: saw,
                foreign_in_granules: foreign,
                freed_and_cut_off: freed && cut_off(dma),
            }
        }
        Err(e) => failed(what, e),
    });
    let what = "alloc_noncontiguous(12 KiB)";
    out.push(
        match a.alloc_noncontiguous(&dev, 12 * 1024, Direction::Bidirectional) {
            Ok(t) => {
                let dma = t.dma_addr().unwrap();
                let pages = t.pages();
                // The CPU sees the table page by page: write each, read the IOVA range.
                let owner = Owner(11);
                for (i, &p) in pages.iter().enumerate() {
                    r.m.cpu_write(p, &[i as u8 + 1; 4096], owner).unwrap();
                }
                a.sync_noncontiguous_for_device(&dev, &t).unwrap();
                let span = pages.len() as u64 * 4096;
                r.m.grant(dev.id(), dma, span).unwrap();
                let seen = r.m.device_read(dev.id(), dma, span).unwrap();
                // The requested 12 KiB carry the CPU's bytes (synced); the rest of the
                // granules is the allocation's own zeroed tail (the CPU's later writes
                // there were not synced).
                let saw = seen.data[..3 * 4096]
                    .chunks(4096)
                    .enumerate()
                    .all(|(i, c)| c.iter().all(|&b| b == i as u8 + 1));
                let foreign = seen.data[3 * 4096..]
                    .iter()
                    .zip(&seen.owners[3 * 4096..])
                    .filter(|&(&b, &o)| b != 0 && o != owner)
                    .count();
                let freed = a.free_noncontiguous(&dev, t).is_ok();
                Allocated {
                    what,
                    result: Ok(()),
                    device_saw_cpu_bytes: saw && span % g == 0,
                    foreign_in_granules: foreign,
                    freed_and_cut_off: freed && cut_off(dma),
                }
            }
            Err(e) => failed(what, e),
        },
    );
    out
}

fn failed(what: &'static str, e: impl std::fmt::Display) -> Allocated {
    Allocated {
        what,
        result: Err(e.to_string()),
        device_saw_cpu_bytes: false,
        foreign_in_granules: 0,
        freed_and_cut_off: false,
    }
}

// ----- 11d: unmap_sg of an empty list -----

/// `unmap_sg(&[])` on a device without an IOMMU and on one behind it.
pub fn empty_unmap_sg() -> (Result<(), DmaError>, Result<(), DmaError>) {
    let r = rig(47, Granule::K4, HazardConfig::NONE);
    let direct = trusted(13);
    r.m.attach(direct.clone()).unwrap();
    let translated = trusted(14);
    attach(&r, &r.dma, &translated, DomainConfig::STRICT);
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    (
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_sg(&direct, &[], Direction::ToDevice) },
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_sg(&translated, &[], Direction::ToDevice) },
    )
}

// ----- 11f: after detach -----

/// What a device could do, and what the mapper did, after its detach.
#[derive(Debug)]
pub struct AfterDetach {
    /// Detach while a mapping was live, and while a DMA allocation was.
    pub detach_while_mapped: Result<(), dmakit::iommu::IommuDmaError>,
    pub detach_while_allocated: Result<(), dmakit::iommu::IommuDmaError>,
    /// A new mapping after the detach, and whether the device could then write it.
    pub map: Result<DmaAddr, DmaError>,
    pub device_write_ok: bool,
    /// An unmap of an IOVA the device had before the detach.
    pub unmap_old_iova: Result<(), DmaError>,
    /// A CPU write at the physical address equal to that IOVA survived the unmap.
    pub bystander_intact: bool,
    /// An allocation for the device after the detach.
    pub alloc: Result<DmaAddr, String>,
    /// After attaching again: a mapping is an IOVA the device writes.
    pub reattached_works: bool,
}

/// A non-coherent device behind a strict domain maps a page, tries to detach (refused),
/// unmaps, detaches; then maps, unmaps its old IOVA again (a driver bug), allocates; then
/// is attached again.
pub fn after_detach() -> AfterDetach {
    let r = rig(48, Granule::K4, HazardConfig::NONE);
    let dev = trusted(15);
    // IOVAs inside the range of RAM, so an IOVA taken for a physical address hits memory.
    let d = r
        .dma
        .create_domain(DomainConfig {
            iova_window: Some((1 << 20, (1 << 30) - 1)),
            ..DomainConfig::STRICT
        })
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    r.dma.attach(&dev, d).unwrap();
    let mapper = DmaMapper::builder(&r.m).iommu(r.dma.clone()).build();
    let page = r.m.alloc_pages(1, u64::MAX).unwrap();
    r.m.cpu_write(page, &[0x15; 4096], Owner(15)).unwrap();
    let dir = Direction::FromDevice;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let old = unsafe { mapper.map(&dev, page, 4096, dir) }.unwrap();
    let detach_while_mapped = r.dma.detach(&dev);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, old, 4096, dir) }.unwrap();
    let z = zones(&r.m);
    let a =
        DmaAllocator::new(&r.m, &z, r.dma.clone(), DmaAllocatorConfig::default(), None).unwrap();
    let held = a
        .alloc_coherent(&dev, 4096, AllocContext::MayBlock)
        .unwrap();
    let detach_while_allocated = r.dma.detach(&dev);
    a.free_coherent(&dev, held).unwrap();
    r.dma.detach(&dev).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let map = unsafe { mapper.map(&dev, page, 4096, dir) };
    let device_write_ok = match map {
        Ok(dma) => {
            r.m.grant(dev.id(), dma, 4096).unwrap();
            r.m.device_write(dev.id(), dma, &[0xd0; 64], Owner(15))
                .is_ok()
        }
        Err(_) => false,
    };
    // Someone else's data, dirty in the CPU cache, at the physical address that has the
    // old IOVA's value.
    let bystander = PhysAddr::new(old.as_u64());
    r.m.cpu_write(bystander, &[0xb5; 64], Owner(16)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let unmap_old_iova = unsafe { mapper.unmap(&dev, old, 4096, dir) };
    let mut back = [0u8; 64];
    r.m.cpu_read(bystander, &mut back).unwrap();
    let alloc = match a.alloc_coherent(&dev, 4096, AllocContext::MayBlock) {
        Ok(buf) => {
            let dma = buf.dma();
            a.free_coherent(&dev, buf).unwrap();
            Ok(dma)
        }
        Err(e) => Err(e.to_string()),
    };
    r.dma.attach(&dev, d).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let again = unsafe { mapper.map(&dev, page, 4096, dir) }.unwrap();
    r.m.grant(dev.id(), again, 4096).unwrap();
    let reattached_works = again.as_u64() != page.as_u64()
        && r.m
            .device_write(dev.id(), again, &[0xd1; 64], Owner(15))
            .is_ok();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, again, 4096, dir) }.unwrap();
    AfterDetach {
        detach_while_mapped,
        detach_while_allocated,
        map,
        device_write_ok,
        unmap_old_iova,
        bystander_intact: back == [0xb5; 64],
        alloc,
        reattached_works,
    }
}

// ----- a sync past a mapping's end, where the device's next mapping starts -----

/// What a sync of the byte just past mapping A did, where mapping B of the same device
/// starts at that IOVA.
#[derive(Debug)]
pub struct PastTheEnd {
    /// A's and B's DMA addresses and lengths (B starts at `a_dma + a_len`).
    pub a_dma: DmaAddr,
    pub a_len: u64,
    pub b_dma: DmaAddr,
    pub b_len: u64,
    /// `sync_for_cpu(a_dma, a_len, 1)`, then `sync_for_device(a_dma, a_len, 1)`.
    pub for_cpu: Result<(), DmaError>,
    pub for_device: Result<(), DmaError>,
    /// Bytes of B's CPU buffer that differ from what the CPU wrote there (the device had
    /// stamped all of B's bounce before the syncs, and B itself was never synced).
    pub b_cpu_bytes_changed: usize,
    /// Bytes of B the device reads back that differ from what it wrote.
    pub b_device_bytes_changed: usize,
}

/// An untrusted, coherent device behind a strict 4 KiB domain maps A, the last 100 bytes
/// of a page, after B, the first 100 bytes of the next page, both bidirectional (each
/// bounced into a granule of its own, at its buffer's offset). The top-down IOVA allocator
/// places A's granule right below B's, so B's record starts at `a_dma + 100`. The device stamps
/// all of B's bounce; then the driver syncs the byte just past A, for the CPU and back
/// for the device.
pub fn sync_past_the_end() -> PastTheEnd {
    let r = rig(51, Granule::K4, HazardConfig::NONE);
    let pool = r.swiotlb(POOL_PAGES);
    let dev = untrusted(19);
    attach(&r, &r.dma, &dev, DomainConfig::STRICT);
    let mapper = DmaMapper::builder(&r.m)
        .swiotlb_backend(pool.clone())
        .iommu(r.dma.clone())
        .build();
    let dir = Direction::Bidirectional;
    let (a_len, b_len) = (100u64, 100u64);
    let pages = r.m.alloc_pages(2, u64::MAX).unwrap();
    let a_buf = pages.add(4096 - a_len);
    let b_buf = pages.add(4096);
    let cpu_b = vec![0x4b; b_len as usize];
    r.m.cpu_write(a_buf, &vec![0x4a; a_len as usize], Owner(19))
        .unwrap();
    r.m.cpu_write(b_buf, &cpu_b, Owner(19)).unwrap();
    // The IOVA allocator works top down: B first takes the granule above the one A gets.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let b_dma = unsafe { mapper.map(&dev, b_buf, b_len, dir) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let a_dma = unsafe { mapper.map(&dev, a_buf, a_len, dir) }.unwrap();
    assert_eq!(
        b_dma.as_u64(),
        a_dma.as_u64() + a_len,
        "B's mapping must start right past A's end ({a_dma:?} + {a_len}, B at {b_dma:?})"
    );
    let stamp = vec![0xdb; b_len as usize];
    r.m.grant(dev.id(), b_dma, b_len).unwrap();
    r.m.device_write(dev.id(), b_dma, &stamp, Owner(91))
        .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let for_cpu = unsafe { mapper.sync_for_cpu(&dev, a_dma, a_len, 1, dir) };
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let for_device = unsafe { mapper.sync_for_device(&dev, a_dma, a_len, 1, dir) };
    let mut back = vec![0u8; b_len as usize];
    r.m.cpu_read(b_buf, &mut back).unwrap();
    let b_cpu_bytes_changed = back.iter().zip(&cpu_b).filter(|(x, y)| x != y).count();
    let seen = r.m.device_read(dev.id(), b_dma, b_len).unwrap();
    let b_device_bytes_changed = seen.data.iter().zip(&stamp).filter(|(x, y)| x != y).count();
    PastTheEnd {
        a_dma,
        a_len,
        b_dma,
        b_len,
        for_cpu,
        for_device,
        b_cpu_bytes_changed,
        b_device_bytes_changed,
    }
}
