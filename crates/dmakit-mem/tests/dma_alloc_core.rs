//! DMA allocators over a recording platform: placement by mask, the atomic pool (never
//! waits, grows after the threshold, exhaustion is an error), no partial state after a
//! failure, handle misuse refused, the IOMMU seam, and zone totals restored after
//! randomised alloc/free sequences.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use dmakit::dma_alloc::{
    AllocContext, CoherentBuffer, DeviceAddressSpace, DeviceSpaceError, DmaAllocError,
    DmaAllocator, DmaAllocatorConfig, DmaPages, NoTranslation, SgTable, TableKind,
};
use dmakit::growth::GrowthWorker;
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, Device, DeviceId, Direction, DmaAddr, MemoryFault,
    PhysAddr, PhysRange, VirtAddr, VirtualMapping, PAGE_SIZE,
};
use dmakit_mem::{Zone, ZoneStats, ZonedPageAllocator};
use proptest::prelude::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn r(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

/// DMA zone [1 MiB, 3 MiB), DMA32 [16 MiB, 20 MiB), NORMAL [4 GiB, 4 GiB + 8 MiB).
fn zones() -> Arc<ZonedPageAllocator> {
    Arc::new(
        ZonedPageAllocator::new(&[r(MIB, 2 * MIB), r(16 * MIB, 4 * MIB), r(4 * GIB, 8 * MIB)])
            .unwrap(),
    )
}

fn dev(bits: u32) -> Device {
    Device::builder(DeviceId(bits), "t")
        .dma_bits(bits)
        .build()
        .unwrap()
}

fn coherent_dev(bits: u32) -> Device {
    Device::builder(DeviceId(100 + bits), "coh")
        .dma_bits(bits)
        .coherent(true)
        .build()
        .unwrap()
}

/// A platform that records what the allocators ask of it and can be told to refuse.
#[derive(Default)]
struct Rec {
    uncached: Mutex<BTreeMap<u64, u64>>,
    fail_remap: AtomicBool,
    fail_fill: AtomicBool,
    fail_vmap: AtomicBool,
    fills: AtomicU64,
    clean_invalidates: AtomicU64,
    views: Mutex<BTreeMap<u64, Vec<PhysAddr>>>,
    next_va: AtomicU64,
    flushed: Mutex<Vec<(u64, u64)>>,
    invalidated: Mutex<Vec<(u64, u64)>>,
}

impl Rec {
    fn uncached_bytes(&self) -> u64 {
        self.uncached.lock().unwrap().values().sum()
    }
    fn is_uncached(&self, a: PhysAddr) -> bool {
        let u = self.uncached.lock().unwrap();
        u.range(..=a.as_u64())
            .next_back()
            .is_some_and(|(&s, &n)| a.as_u64() < s + n)
    }
}

impl CacheMaintenance for Rec {
    fn cache_line_size(&self) -> u64 {
        64
    }
    fn clean(&self, _: PhysRange) {}
    fn invalidate(&self, _: PhysRange) {}
    fn clean_invalidate(&self, _: PhysRange) {
        self.clean_invalidates.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: neither method touches any memory; they only count calls.
unsafe impl CpuMemory for Rec {
    fn copy(&self, _: PhysAddr, _: PhysAddr, _: u64) -> Result<(), MemoryFault> {
        Ok(())
    }
    fn fill(&self, dst: PhysAddr, _: u8, len: u64) -> Result<(), MemoryFault> {
        if self.fail_fill.load(Ordering::Relaxed) {
            return Err(MemoryFault { addr: dst, len });
        }
        self.fills.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

impl CoherentRemap for Rec {
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        if self.fail_remap.load(Ordering::Relaxed) {
            return Err(MemoryFault {
                addr: range.start(),
                len: range.len(),
            });
        }
        assert!(range.is_aligned(PAGE_SIZE));
        let prev = self
            .uncached
            .lock()
            .unwrap()
            .insert(range.start().as_u64(), range.len());
        assert_eq!(prev, None, "remapped twice");
        Ok(())
    }
    fn make_cached(&self, range: PhysRange) {
        let gone = self
            .uncached
            .lock()
            .unwrap()
            .remove(&range.start().as_u64());
        assert_eq!(gone, Some(range.len()), "made cached what was not uncached");
    }
}

impl VirtualMapping for Rec {
    fn vmap(&self, pages: &[PhysAddr]) -> Option<VirtAddr> {
        if self.fail_vmap.load(Ordering::Relaxed) || pages.is_empty() {
            return None;
        }
        let n = pages.len() as u64 + 1;
        let va = 0x7000_0000_0000 + self.next_va.fetch_add(n * PAGE_SIZE, Ordering::Relaxed);
        self.views.lock().unwrap().insert(va, pages.to_vec());
        Some(VirtAddr(va))
    }
    fn vunmap(&self, addr: VirtAddr, pages: usize) {
        let v = self.views.lock().unwrap().remove(&addr.as_u64());
        assert_eq!(v.map(|p| p.len()), Some(pages));
    }
    fn flush_virt(&self, addr: VirtAddr, len: u64) {
        self.flushed.lock().unwrap().push((addr.as_u64(), len));
    }
    fn invalidate_virt(&self, addr: VirtAddr, len: u64) {
        self.invalidated.lock().unwrap().push((addr.as_u64(), len));
    }
    fn aliases(&self) -> bool {
        true
    }
}

/// An IOMMU stand-in: translates one device, maps page lists at increasing addresses.
struct FakeSpace {
    translated: DeviceId,
    next: AtomicU64,
    maps: Mutex<BTreeMap<u64, (DeviceId, Vec<PhysAddr>)>>,
    fail: AtomicBool,
}

impl FakeSpace {
    fn new(translated: DeviceId) -> Self {
        Self {
            translated,
            next: AtomicU64::new(0x1000_0000),
            maps: Mutex::new(BTreeMap::new()),
            fail: AtomicBool::new(false),
        }
    }
}

impl DeviceAddressSpace for FakeSpace {
    fn translates(&self, dev: &Device) -> bool {
        dev.id() == self.translated
    }
    fn map_pages_contiguous(
        &self,
        dev: &Device,
        pages: &[PhysAddr],
        _dir: Direction,
    ) -> Result<DmaAddr, DeviceSpaceError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(DeviceSpaceError::NoSpace {
                pages: pages.len() as u64,
            });
        }
        let n = pages.len() as u64;
        let dma = self.next.fetch_add(n * PAGE_SIZE, Ordering::Relaxed);
        self.maps
            .lock()
            .unwrap()
            .insert(dma, (dev.id(), pages.to_vec()));
        Ok(DmaAddr::new(dma))
    }
    fn unmap_pages(&self, dev: &Device, dma: DmaAddr, pages: u64) -> Result<(), DeviceSpaceError> {
        let mut m = self.maps.lock().unwrap();
        match m.get(&dma.as_u64()) {
            Some((d, p)) if *d == dev.id() && p.len() as u64 == pages => {
                m.remove(&dma.as_u64());
                Ok(())
            }
            _ => Err(DeviceSpaceError::NotMapped { dma }),
        }
    }
}

type Alloc<'a, S = NoTranslation> = DmaAllocator<&'a Rec, Arc<ZonedPageAllocator>, S>;

fn cfg(pool: u64) -> DmaAllocatorConfig {
    DmaAllocatorConfig {
        atomic_pool_bytes: pool,
        ..DmaAllocatorConfig::default()
    }
}

fn new_alloc<'a>(rec: &'a Rec, z: &Arc<ZonedPageAllocator>, pool: u64) -> Alloc<'a> {
    DmaAllocator::new(rec, z.clone(), NoTranslation, cfg(pool), None).unwrap()
}

fn free_pages(z: &ZonedPageAllocator) -> [u64; 3] {
    z.stats().map(|s| s.pages.free_pages)
}

fn full_stats(z: &ZonedPageAllocator) -> [ZoneStats; 3] {
    z.stats()
}

#[test]
fn bad_configurations_are_refused_and_take_nothing() {
    let rec = Rec::default();
    let z = zones();
    let before = full_stats(&z);
    for (pool, min, why) in [
        (3 * PAGE_SIZE, 128, "not a power of two"),
        (2048, 128, "below a page"),
        (64 * KIB, 32, "objects below 64 bytes"),
        (64 * KIB, 96, "objects not a power of two"),
    ] {
        let c = DmaAllocatorConfig {
            atomic_pool_bytes: pool,
            atomic_min_object: min,
            ..DmaAllocatorConfig::default()
        };
        let e = DmaAllocator::new(&rec, z.clone(), NoTranslation, c, None).err();
        assert!(
            matches!(e, Some(DmaAllocError::BadConfig(_))),
            "{why}: {e:?}"
        );
    }
    // An initial pool that does not fit below its reach.
    let c = DmaAllocatorConfig {
        atomic_pool_bytes: 4 * MIB,
        atomic_pool_reach: 3 * MIB - 1,
        ..DmaAllocatorConfig::default()
    };
    let e = DmaAllocator::new(&rec, z.clone(), NoTranslation, c, None).err();
    assert!(
        matches!(e, Some(DmaAllocError::GrowthFailed { .. })),
        "{e:?}"
    );
    assert_eq!(
        e.unwrap().to_string(),
        "atomic pool growth found no 4194304 bytes of memory below 0x2fffff"
    );
    assert_eq!(full_stats(&z), before);
    assert_eq!(rec.uncached_bytes(), 0);
}

#[test]
fn coherent_memory_is_reachable_uncached_for_noncoherent_devices_and_freed_back() {
    let rec = Rec::default();
    let z = zones();
    let before = full_stats(&z);
    let a = new_alloc(&rec, &z, 64 * KIB);
    // The pool's 64 KiB sit in DMA32 (reach 4 GiB), uncached.
    assert_eq!(rec.uncached_bytes(), 64 * KIB);
    let pool_free = free_pages(&z);
    assert_eq!(pool_free[1], before[1].pages.free_pages - 16);
    for bits in [24u32, 32, 64] {
        let d = dev(bits);
        let b = a
            .alloc_coherent(&d, 10_000, AllocContext::MayBlock)
            .unwrap();
        assert!(d.can_address(b.dma().as_u64(), b.size()), "{bits}: {b:?}");
        assert_eq!(b.dma().as_u64(), b.phys().as_u64());
        assert!(!b.from_atomic_pool());
        assert!(rec.is_uncached(b.phys()) && rec.is_uncached(b.phys().add(b.size() - 1)));
        // 24-bit devices are served from the DMA zone, 32-bit from DMA32, 64-bit NORMAL.
        let want = match bits {
            24 => Zone::Dma,
            32 => Zone::Dma32,
            _ => Zone::Normal,
        };
        assert_eq!(z.layout().zone_of(b.phys()), want);
        a.free_coherent(&d, b).unwrap();
        assert_eq!(rec.uncached_bytes(), 64 * KIB, "{bits}: made cached again");
    }
    // A coherent device gets cached memory: no remap.
    let c = coherent_dev(32);
    for ctx in [AllocContext::MayBlock, AllocContext::Atomic] {
        let b = a.alloc_coherent(&c, 300, ctx).unwrap();
        assert!(!b.from_atomic_pool() && !rec.is_uncached(b.phys()));
        a.free_coherent(&c, b).unwrap();
    }
    // Atomic context on a non-coherent device: the pool, below the mask.
    let d = dev(32);
    let b = a.alloc_coherent(&d, 300, AllocContext::Atomic).unwrap();
    assert!(b.from_atomic_pool() && rec.is_uncached(b.phys()));
    assert!(d.can_address(b.dma().as_u64(), 300));
    assert_eq!(a.atomic_pool_usage().live, 1);
    a.free_coherent(&d, b).unwrap();
    assert_eq!(free_pages(&z), pool_free);
    assert!(a.release().is_ok());
    assert_eq!(full_stats(&z), before);
    assert_eq!(rec.uncached_bytes(), 0);
}

/// A hook whose requests are answered on a worker thread, but only when the test opens the
/// gate: until then the pool must serve (or refuse) atomic allocations on its own.
fn gated_worker(
    slot: Arc<OnceLock<Weak<Alloc<'static>>>>,
    gate: Receiver<()>,
    done: std::sync::mpsc::Sender<Result<PhysRange, DmaAllocError>>,
) -> GrowthWorker {
    GrowthWorker::spawn(move |req: GrowthRequest| {
        if gate.recv().is_err() {
            return;
        }
        if let Some(a) = slot.get().and_then(Weak::upgrade) {
            let _ = done.send(a.grow_atomic_pool(req));
        }
    })
    .unwrap()
}

#[test]
fn atomic_pool_never_waits_grows_after_the_threshold_and_exhaustion_is_an_error() {
    let rec: &'static Rec = Box::leak(Box::default());
    let z = zones();
    let slot: Arc<OnceLock<Weak<Alloc<'static>>>> = Arc::new(OnceLock::new());
    let (open, gate) = channel();
    let (done_tx, done) = channel();
    let worker = Arc::new(gated_worker(slot.clone(), gate, done_tx));
    let hook: Arc<dyn GrowthHook> = worker.clone();
    let a = Arc::new(
        DmaAllocator::new(rec, z.clone(), NoTranslation, cfg(64 * KIB), Some(hook)).unwrap(),
    );
    slot.set(Arc::downgrade(&a)).ok().unwrap();
    let d = dev(32);
    let zone_free = free_pages(&z);
    assert!(!a.atomic_growth_pending());

    // The first allocation takes free space below the initial size: growth is requested
    // once, and the pool keeps serving while the worker is stuck.
    let started = Instant::now();
    let mut live: Vec<CoherentBuffer> = Vec::new();
    let first = a.alloc_coherent(&d, 4096, AllocContext::Atomic).unwrap();
    assert!(
        a.atomic_growth_pending(),
        "requested after crossing the threshold"
    );
    live.push(first);
    let err = loop {
        match a.alloc_coherent(&d, 4096, AllocContext::Atomic) {
            Ok(b) => live.push(b),
            Err(e) => break e,
        }
    };
    assert_eq!(live.len(), 16, "64 KiB of 4 KiB objects");
    assert_eq!(
        err,
        DmaAllocError::AtomicPoolExhausted {
            device: d.id(),
            size: 4096,
            used: 64 * KIB,
            total: 64 * KIB,
            growth_pending: true,
        }
    );
    assert!(err.to_string().contains("growth pending"));
    // Nothing waited for the worker, and no page was taken in atomic context.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(free_pages(&z), zone_free);
    assert!(done.try_recv().is_err(), "the worker has not run yet");

    // Let the worker answer: the pool doubles, from the zones, uncached.
    open.send(()).unwrap();
    let grown = done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(grown.len(), 64 * KIB);
    assert!(grown.last().as_u64() <= u32::MAX as u64);
    assert!(rec.is_uncached(grown.start()));
    assert_eq!(a.atomic_pool_usage().total, 128 * KIB);
    assert_eq!(free_pages(&z)[1], zone_free[1] - 16);
    assert!(!a.atomic_growth_pending());
    let more = a.alloc_coherent(&d, 4096, AllocContext::Atomic).unwrap();
    assert!(grown.contains_range(&PhysRange::new(more.phys(), more.size()).unwrap()));
    live.push(more);
    // 64 KiB free of 128 KiB is below the initial size again: a second request.
    assert!(a.atomic_growth_pending());
    open.send(()).unwrap();
    let second = done.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    assert_eq!(second.len(), 128 * KIB, "doubling");

    for b in live {
        a.free_coherent(&d, b).unwrap();
    }
    assert_eq!(a.atomic_pool_usage().used, 0);
    drop(worker);
}

#[test]
fn atomic_exhaustion_without_growth_and_oversized_requests_are_errors() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    let d = dev(32);
    let big = a
        .alloc_coherent(&d, 16 * KIB, AllocContext::Atomic)
        .unwrap();
    assert!(matches!(
        a.alloc_coherent(&d, 128, AllocContext::Atomic),
        Err(DmaAllocError::AtomicPoolExhausted {
            growth_pending: false,
            ..
        })
    ));
    assert_eq!(
        a.alloc_coherent(&d, 16 * KIB + 1, AllocContext::Atomic),
        Err(DmaAllocError::TooLarge {
            device: d.id(),
            size: 16 * KIB + 1,
            max: 16 * KIB
        })
    );
    // A 24-bit device cannot reach the pool (it sits in DMA32): refused at once.
    a.free_coherent(&d, big).unwrap();
    let small = dev(24);
    assert!(matches!(
        a.alloc_coherent(&small, 64, AllocContext::Atomic),
        Err(DmaAllocError::AtomicPoolExhausted { used: 0, .. })
    ));
    assert_eq!(
        a.alloc_coherent(&d, 0, AllocContext::MayBlock),
        Err(DmaAllocError::ZeroSize { device: d.id() })
    );
}

#[test]
fn failed_allocations_leave_no_partial_state() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    let d = dev(32);
    let before = full_stats(&z);
    let uncached = rec.uncached_bytes();

    rec.fail_remap.store(true, Ordering::Relaxed);
    assert!(matches!(
        a.alloc_coherent(&d, 8192, AllocContext::MayBlock),
        Err(DmaAllocError::Memory(_))
    ));
    rec.fail_remap.store(false, Ordering::Relaxed);
    assert_eq!(full_stats(&z), before);

    rec.fail_fill.store(true, Ordering::Relaxed);
    assert!(matches!(
        a.alloc_coherent(&d, 8192, AllocContext::MayBlock),
        Err(DmaAllocError::Memory(_))
    ));
    assert!(matches!(
        a.alloc_coherent(&d, 512, AllocContext::Atomic),
        Err(DmaAllocError::Memory(_))
    ));
    assert_eq!(a.atomic_pool_usage().live, 0);
    assert!(matches!(
        a.alloc_pages(&d, 3 * PAGE_SIZE, Direction::ToDevice),
        Err(DmaAllocError::Memory(_))
    ));
    assert!(matches!(
        a.alloc_noncontiguous(&d, 5 * PAGE_SIZE, Direction::FromDevice),
        Err(DmaAllocError::Memory(_))
    ));
    assert!(matches!(
        a.alloc_sg(&d, 9 * PAGE_SIZE),
        Err(DmaAllocError::Memory(_))
    ));
    rec.fail_fill.store(false, Ordering::Relaxed);
    assert_eq!(full_stats(&z), before);
    assert_eq!(rec.uncached_bytes(), uncached);

    // Out of memory: more than the zones a 24-bit device reaches hold.
    let small = dev(24);
    assert_eq!(
        a.alloc_pages(&small, 4 * MIB, Direction::ToDevice),
        Err(DmaAllocError::OutOfMemory {
            device: small.id(),
            pages: 1024
        })
    );
    assert_eq!(
        a.alloc_noncontiguous(&small, 2 * MIB + PAGE_SIZE, Direction::ToDevice)
            .err(),
        Some(DmaAllocError::OutOfMemory {
            device: small.id(),
            pages: 513
        })
    );
    // A mask that reaches no zone at all.
    assert_eq!(
        a.alloc_pages(&dev(20), 4096, Direction::ToDevice),
        Err(DmaAllocError::NoReachableMemory {
            device: DeviceId(20),
            dma_mask: (1 << 20) - 1
        })
    );
    // An sg table larger than all memory: the fallback runs out too, and gives back the
    // chunks it took.
    assert_eq!(
        a.alloc_sg(&d, 64 * MIB).err(),
        Some(DmaAllocError::OutOfMemory {
            device: d.id(),
            pages: 16384
        })
    );
    assert_eq!(full_stats(&z), before);

    // The view fails: nothing mapped, and the table can be freed.
    let t = a
        .alloc_noncontiguous(&d, 2 * PAGE_SIZE, Direction::ToDevice)
        .unwrap();
    rec.fail_vmap.store(true, Ordering::Relaxed);
    assert_eq!(
        a.vmap(&t).err(),
        Some(DmaAllocError::VmapFailed { pages: 2 })
    );
    rec.fail_vmap.store(false, Ordering::Relaxed);
    assert_eq!(t.views(), 0);
    a.free_noncontiguous(&d, t).unwrap();
    assert_eq!(full_stats(&z), before);
}

#[test]
fn handles_are_refused_by_the_wrong_device_allocator_or_function_and_handed_back() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    let other = new_alloc(&rec, &z, 16 * KIB);
    let (d, e) = (dev(32), dev(64));
    let b = a.alloc_coherent(&d, 100, AllocContext::Atomic).unwrap();
    let rej = a.free_coherent(&e, b).unwrap_err();
    assert_eq!(
        rej.error,
        DmaAllocError::WrongDevice {
            expected: d.id(),
            got: e.id()
        }
    );
    let rej = other.free_coherent(&d, rej.handle).unwrap_err();
    assert_eq!(rej.error, DmaAllocError::ForeignHandle);
    a.free_coherent(&d, rej.handle).unwrap();

    let p: DmaPages = a.alloc_pages(&d, 100, Direction::FromDevice).unwrap();
    assert_eq!(
        a.sync_pages_for_device(&d, &p, 90, 11),
        Err(DmaAllocError::OutOfRange {
            offset: 90,
            len: 11,
            size: 100
        })
    );
    a.sync_pages_for_device(&d, &p, 0, 100).unwrap();
    a.sync_pages_for_cpu(&d, &p, 10, 90).unwrap();
    let rej = other.free_pages(&d, p).unwrap_err();
    assert_eq!(rej.error, DmaAllocError::ForeignHandle);
    a.free_pages(&d, rej.handle).unwrap();

    let t: SgTable = a
        .alloc_noncontiguous(&d, 3 * PAGE_SIZE, Direction::ToDevice)
        .unwrap();
    assert_eq!(t.kind(), TableKind::Noncontiguous);
    let v = a.vmap(&t).unwrap();
    let rej = a.free_noncontiguous(&d, t).unwrap_err();
    assert_eq!(rej.error, DmaAllocError::StillMapped { views: 1 });
    let t = rej.handle;
    let rej = a.free_sg(&d, t).unwrap_err();
    assert_eq!(
        rej.error,
        DmaAllocError::ForeignHandle,
        "wrong free function"
    );
    let t = rej.handle;
    let s = a.alloc_sg(&d, PAGE_SIZE).unwrap();
    let rej = a.vunmap(&s, v).unwrap_err();
    assert_eq!(
        rej.error,
        DmaAllocError::ForeignHandle,
        "view of another table"
    );
    a.flush_vmap(&rej.handle);
    a.flush_vmap_range(&rej.handle, 4096, 100).unwrap();
    assert!(a
        .invalidate_vmap_range(&rej.handle, 3 * 4096 - 1, 2)
        .is_err());
    a.invalidate_vmap(&rej.handle);
    let va = rej.handle.addr().as_u64();
    assert_eq!(
        *rec.flushed.lock().unwrap(),
        vec![(va, 3 * PAGE_SIZE), (va + 4096, 100)]
    );
    assert_eq!(*rec.invalidated.lock().unwrap(), vec![(va, 3 * PAGE_SIZE)]);
    a.vunmap(&t, rej.handle).unwrap();
    assert!(rec.views.lock().unwrap().is_empty());
    a.free_noncontiguous(&d, t).unwrap();
    a.free_sg(&d, s).unwrap();
    assert!(a.release().is_ok());
    assert!(other.release().is_ok());
}

#[test]
fn release_refuses_while_atomic_objects_are_live() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    let d = dev(32);
    let b = a.alloc_coherent(&d, 100, AllocContext::Atomic).unwrap();
    let rej = a.release().map(|_| ()).unwrap_err();
    assert_eq!(rej.error, DmaAllocError::LiveAllocations { live: 1 });
    let a = rej.handle;
    a.free_coherent(&d, b).unwrap();
    assert!(a.release().is_ok());
}

#[test]
fn noncontiguous_without_translation_is_one_chunk_below_the_mask() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    for bits in [24u32, 32, 64] {
        let d = dev(bits);
        let t = a
            .alloc_noncontiguous(&d, 5 * PAGE_SIZE + 7, Direction::Bidirectional)
            .unwrap();
        assert_eq!(t.chunks().len(), 1);
        assert_eq!(t.page_count(), 6);
        let dma = t.dma_addr().unwrap();
        assert_eq!(dma.as_u64(), t.chunks()[0].phys().as_u64());
        assert!(d.can_address(dma.as_u64(), t.size()));
        assert_eq!(t.entries().iter().map(|e| e.len).sum::<u64>(), t.size());
        assert!(!t.needs_bounce());
        a.sync_noncontiguous_for_device(&d, &t).unwrap();
        a.sync_noncontiguous_for_cpu(&d, &t).unwrap();
        a.free_noncontiguous(&d, t).unwrap();
    }
}

#[test]
fn translated_devices_get_scattered_pages_mapped_contiguously() {
    let rec = Rec::default();
    let z = zones();
    let space = FakeSpace::new(DeviceId(32));
    let a = DmaAllocator::new(&rec, z.clone(), &space, cfg(16 * KIB), None).unwrap();
    let d = dev(32);
    let before = full_stats(&z);
    // Fragment all memory: take every page, give back every other one.
    let mut held = Vec::new();
    while let Ok(p) = z.alloc_below(1, u64::MAX) {
        held.push(p);
    }
    let mut kept = Vec::new();
    for (i, p) in held.into_iter().enumerate() {
        if i % 2 == 0 {
            z.free(p, 1).unwrap();
        } else {
            kept.push(p);
        }
    }
    // An untranslated device cannot get two contiguous pages any more...
    let plain = dev(64);
    assert!(matches!(
        a.alloc_noncontiguous(&plain, 2 * PAGE_SIZE, Direction::ToDevice),
        Err(DmaAllocError::OutOfMemory { .. })
    ));
    // ...the translated one gets eight scattered pages at one device address.
    let t = a
        .alloc_noncontiguous(&d, 8 * PAGE_SIZE, Direction::ToDevice)
        .unwrap();
    assert_eq!(t.chunks().len(), 8);
    let dma = t.dma_addr().unwrap();
    assert_eq!(
        space.maps.lock().unwrap().get(&dma.as_u64()),
        Some(&(d.id(), t.pages()))
    );
    // Coherent and page allocations are mapped too; frees unmap.
    let c = a.alloc_coherent(&d, 100, AllocContext::Atomic).unwrap();
    let p = a.alloc_pages(&d, PAGE_SIZE, Direction::FromDevice).unwrap();
    assert_eq!(space.maps.lock().unwrap().len(), 3);
    assert_eq!(p.dma().as_u64() % PAGE_SIZE, 0);
    // A refused map leaves nothing behind.
    let free_now = free_pages(&z);
    space.fail.store(true, Ordering::Relaxed);
    assert_eq!(
        a.alloc_noncontiguous(&d, 4 * PAGE_SIZE, Direction::ToDevice)
            .err(),
        Some(DmaAllocError::DeviceSpace {
            device: d.id(),
            error: DeviceSpaceError::NoSpace { pages: 4 }
        })
    );
    assert!(matches!(
        a.alloc_coherent(&d, 100, AllocContext::Atomic),
        Err(DmaAllocError::DeviceSpace { .. })
    ));
    assert_eq!(a.atomic_pool_usage().live, 1);
    space.fail.store(false, Ordering::Relaxed);
    assert_eq!(free_pages(&z), free_now);
    // alloc_sg places anywhere for a translated device, nothing to bounce.
    let s = a.alloc_sg(&d, 3 * PAGE_SIZE).unwrap();
    assert!(!s.needs_bounce() && s.dma_addr().is_none());
    a.free_sg(&d, s).unwrap();
    a.free_noncontiguous(&d, t).unwrap();
    a.free_coherent(&d, c).unwrap();
    a.free_pages(&d, p).unwrap();
    assert!(space.maps.lock().unwrap().is_empty());
    for p in kept {
        z.free(p, 1).unwrap();
    }
    assert_eq!(full_stats(&z), before);
}

#[test]
fn alloc_sg_prefers_reachable_memory_then_falls_back_to_bouncing() {
    let rec = Rec::default();
    let z = zones();
    let a = new_alloc(&rec, &z, 16 * KIB);
    // A 24-bit device with 16 KiB segments: reaches only the 2 MiB DMA zone.
    let d = Device::builder(DeviceId(7), "isa")
        .dma_bits(24)
        .max_segment_size(16 * KIB)
        .build()
        .unwrap();
    let t = a.alloc_sg(&d, MIB).unwrap();
    assert!(!t.needs_bounce());
    assert!(t.chunks().iter().all(|c| c.pages() <= 4 && c.reachable()));
    assert!(t
        .entries()
        .iter()
        .all(|e| d.can_address(e.phys.as_u64(), e.len) && e.len <= 16 * KIB));
    // The next 2 MiB do not fit below the mask: 1 MiB reachable, the rest anywhere.
    let u = a.alloc_sg(&d, 2 * MIB).unwrap();
    assert!(u.needs_bounce());
    let reachable: u64 = u
        .chunks()
        .iter()
        .filter(|c| c.reachable())
        .map(|c| c.bytes())
        .sum();
    assert_eq!(reachable, MIB);
    for c in u.chunks() {
        assert_eq!(c.reachable(), d.can_address(c.phys().as_u64(), c.bytes()));
    }
    assert_eq!(u.entries().iter().map(|e| e.len).sum::<u64>(), 2 * MIB);
    a.free_sg(&d, t).unwrap();
    a.free_sg(&d, u).unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Coherent(usize, u64, bool),
    Pages(usize, u64),
    Noncontiguous(usize, u64),
    Sg(usize, u64),
    Free(usize),
}

enum Live {
    Coherent(CoherentBuffer),
    Pages(DmaPages),
    Noncontiguous(SgTable),
    Sg(SgTable),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![1u64..512, 512u64..16 * 1024, 16 * 1024u64..300 * 1024];
    prop_oneof![
        (0usize..4, size.clone(), any::<bool>()).prop_map(|(d, s, a)| Op::Coherent(d, s, a)),
        (0usize..4, size.clone()).prop_map(|(d, s)| Op::Pages(d, s)),
        (0usize..4, size.clone()).prop_map(|(d, s)| Op::Noncontiguous(d, s)),
        (0usize..4, size).prop_map(|(d, s)| Op::Sg(d, s)),
        any::<usize>().prop_map(Op::Free),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every allocation is reachable by its device; after random allocations and frees
    /// (with atomic pool growth answered between operations) and teardown, every zone's
    /// counters and free block lists are exactly as before.
    #[test]
    fn zone_totals_are_restored_after_random_sequences(ops in prop::collection::vec(op(), 1..60)) {
        let rec = Rec::default();
        let z = zones();
        let before = full_stats(&z);
        let requests = Arc::new(Mutex::new(Vec::<GrowthRequest>::new()));
        let r2 = requests.clone();
        let hook: Arc<dyn GrowthHook> = Arc::new(move |req: GrowthRequest| r2.lock().unwrap().push(req));
        let a = DmaAllocator::new(&rec, z.clone(), NoTranslation, cfg(32 * KIB), Some(hook)).unwrap();
        let devs = [dev(24), dev(32), dev(64), coherent_dev(32)];
        let mut live: Vec<(usize, Live)> = Vec::new();
        for o in ops {
            match o {
                Op::Coherent(i, s, atomic) => {
                    let ctx = if atomic { AllocContext::Atomic } else { AllocContext::MayBlock };
                    if let Ok(b) = a.alloc_coherent(&devs[i], s, ctx) {
                        prop_assert!(devs[i].can_address(b.dma().as_u64(), s));
                        prop_assert_eq!(rec.is_uncached(b.phys()), !devs[i].is_coherent());
                        live.push((i, Live::Coherent(b)));
                    }
                }
                Op::Pages(i, s) => {
                    if let Ok(p) = a.alloc_pages(&devs[i], s, Direction::Bidirectional) {
                        prop_assert!(devs[i].can_address(p.dma().as_u64(), s));
                        live.push((i, Live::Pages(p)));
                    }
                }
                Op::Noncontiguous(i, s) => {
                    if let Ok(t) = a.alloc_noncontiguous(&devs[i], s, Direction::ToDevice) {
                        prop_assert!(devs[i].can_address(t.dma_addr().unwrap().as_u64(), s));
                        live.push((i, Live::Noncontiguous(t)));
                    }
                }
                Op::Sg(i, s) => {
                    if let Ok(t) = a.alloc_sg(&devs[i], s) {
                        for c in t.chunks() {
                            prop_assert_eq!(c.reachable(), devs[i].can_address(c.phys().as_u64(), c.bytes()));
                        }
                        prop_assert_eq!(t.entries().iter().map(|e| e.len).sum::<u64>(), s);
                        live.push((i, Live::Sg(t)));
                    }
                }
                Op::Free(k) if !live.is_empty() => {
                    let (i, l) = live.swap_remove(k % live.len());
                    free(&a, &devs[i], l);
                }
                Op::Free(_) => {}
            }
            for req in std::mem::take(&mut *requests.lock().unwrap()) {
                // Growth may find no memory below the reach; the pool stays as it was.
                let _ = a.grow_atomic_pool(req);
            }
        }
        for (i, l) in live {
            free(&a, &devs[i], l);
        }
        prop_assert_eq!(a.atomic_pool_usage().used, 0);
        prop_assert!(a.release().is_ok());
        prop_assert_eq!(full_stats(&z), before);
        prop_assert_eq!(rec.uncached_bytes(), 0);
    }
}

fn free(a: &Alloc<'_>, d: &Device, l: Live) {
    match l {
        Live::Coherent(b) => a.free_coherent(d, b).unwrap(),
        Live::Pages(p) => a.free_pages(d, p).unwrap(),
        Live::Noncontiguous(t) => a.free_noncontiguous(d, t).unwrap(),
        Live::Sg(t) => a.free_sg(d, t).unwrap(),
    }
}
