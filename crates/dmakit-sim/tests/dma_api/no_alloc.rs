//! The new calls that run where a driver may not allocate: a `DmaPool` block from a page
//! with room (and its free), `need_sync`, a `SKIP_CPU_SYNC` map and unmap in place, and the
//! scatter-gather syncs, each counted by a global allocator that counts this thread's heap
//! allocations — the mapping layer's, not the machine model's: the platform handed to the
//! layer pauses the count while the model works. The control: the pool's growth, which may
//! allocate, is counted. Also coherent allocations and frees from an uncached window, in
//! either context (the control: building the allocator over the window, which makes the
//! pool's records, is counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use dmakit::dma_alloc::{
    AllocContext, DmaAllocator, DmaAllocatorConfig, DmaPool, NoTranslation, UncachedWindow,
};
use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, CpuTopology, Direction, DmaMapper, MapAttrs,
    MemoryFault, PageAllocator, PhysAddr, PhysRange, SgEntry, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{HazardConfig, Machine};

use super::rig;

/// Counts every allocation of the thread that makes it.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    /// Nesting depth of model calls: allocations there are the model's, not counted.
    static IN_MODEL: Cell<u32> = const { Cell::new(0) };
}

// SAFETY: every call is passed to `System` unchanged; the counter is a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if IN_MODEL.with(Cell::get) == 0 {
            ALLOCATIONS.with(|c| c.set(c.get() + 1));
        }
        // SAFETY: the caller's contract for `alloc` is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Runs `f`, a call into the machine model, without counting its allocations.
fn in_model<R>(f: impl FnOnce() -> R) -> R {
    IN_MODEL.with(|d| d.set(d.get() + 1));
    let r = f();
    IN_MODEL.with(|d| d.set(d.get() - 1));
    r
}

/// The machine as the mapping layer's platform, its own work uncounted.
struct Model<'a>(&'a Machine);

impl CacheMaintenance for Model<'_> {
    fn cache_line_size(&self) -> u64 {
        in_model(|| self.0.cache_line_size())
    }
    fn clean(&self, range: PhysRange) {
        in_model(|| self.0.clean(range))
    }
    fn invalidate(&self, range: PhysRange) {
        in_model(|| self.0.invalidate(range))
    }
    fn clean_invalidate(&self, range: PhysRange) {
        in_model(|| self.0.clean_invalidate(range))
    }
}

// SAFETY: every access is checked against the platform's memory first; a range outside it is a MemoryFault and touches nothing.
unsafe impl CpuMemory for Model<'_> {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        in_model(|| self.0.copy(dst, src, len))
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        in_model(|| self.0.fill(dst, byte, len))
    }
}

impl CpuTopology for Model<'_> {
    fn cpu_count(&self) -> usize {
        in_model(|| self.0.cpu_count())
    }
    fn current_cpu(&self) -> usize {
        in_model(|| self.0.current_cpu())
    }
}

impl CoherentRemap for Model<'_> {
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        in_model(|| self.0.make_uncached(range))
    }
    fn make_cached(&self, range: PhysRange) {
        in_model(|| self.0.make_cached(range))
    }
}

/// Heap allocations `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

#[test]
fn pool_blocks_from_a_page_with_room_allocate_nothing_and_growth_is_counted() {
    let m = rig::machine(101, HazardConfig::NONE);
    let base = m
        .alloc_pages_between(512, 16 << 20, u32::MAX as u64)
        .unwrap();
    let z = ZonedPageAllocator::new(&[PhysRange::new(base, 512 * PAGE_SIZE).unwrap()]).unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * 1024,
        ..DmaAllocatorConfig::default()
    };
    let a = DmaAllocator::new(Model(&m), &z, NoTranslation, cfg, None).unwrap();
    let dev = rig::device(&m, 1, 32, false, true);
    let pool = DmaPool::new(&dev, 64, 64, None).unwrap();
    // The control: the first block adds a page, and the page list grows on the heap.
    let (grown, first) = allocations(|| pool.alloc(&a, AllocContext::MayBlock).unwrap());
    assert!(grown > 0, "the counter sees the growth");
    let (n, second) = allocations(|| pool.alloc(&a, AllocContext::Atomic).unwrap());
    assert_eq!(n, 0, "a block from a page with room");
    let (n, freed) = allocations(|| (pool.free(second), pool.free(first)));
    assert_eq!(n, 0, "frees");
    assert!(freed.0.is_ok() && freed.1.is_ok());
    pool.destroy(&a).unwrap();
}

#[test]
fn skip_cpu_sync_maps_need_sync_and_sg_syncs_allocate_nothing() {
    let m = rig::machine(102, HazardConfig::NONE);
    let mapper = DmaMapper::builder(Model(&m))
        .swiotlb_backend(rig::dirty_swiotlb(&m, 64))
        .build();
    let dev = rig::device(&m, 1, 64, false, true);
    let page = m.alloc_pages(4, 8 << 30).unwrap();
    // Touch the memory once, so the model has its pages before counting starts.
    m.cpu_write(page, &[0; 4 * 4096], rig::BUF).unwrap();
    let (len, dir) = (512, Direction::FromDevice);
    let (n, mapped) = allocations(|| {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let (dma, _) =
            unsafe { mapper.map_attrs(&dev, page, len, dir, MapAttrs::SKIP_CPU_SYNC) }.unwrap();
        let need = mapper.need_sync(&dev, dma);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap_attrs(&dev, dma, len, dir, MapAttrs::SKIP_CPU_SYNC) }.unwrap();
        need
    });
    assert_eq!(n, 0, "SKIP_CPU_SYNC map, need_sync, unmap");
    assert!(mapped);
    let entries = [
        SgEntry {
            phys: page.add(4096),
            len: 1024,
        },
        SgEntry {
            phys: page.add(2 * 4096 + 8),
            len: 200,
        },
    ];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap();
    let (n, synced) = allocations(|| {
        (
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.sync_sg_for_device(&dev, &segs, dir) },
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.sync_sg_for_cpu(&dev, &segs, dir) },
        )
    });
    assert_eq!(n, 0, "sg syncs on a direct and a bounced segment");
    assert!(synced.0.is_ok() && synced.1.is_ok());
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
}

#[test]
fn coherent_buffers_from_an_uncached_window_allocate_nothing() {
    let m = rig::machine(103, HazardConfig::NONE);
    let base = m
        .alloc_pages_between(512, 16 << 20, u32::MAX as u64)
        .unwrap();
    let z = ZonedPageAllocator::new(&[PhysRange::new(base, 256 * PAGE_SIZE).unwrap()]).unwrap();
    let window = base.add(256 * PAGE_SIZE);
    m.make_uncached(PhysRange::new(window, 256 * PAGE_SIZE).unwrap())
        .unwrap();
    let w = UncachedWindow::new(window, 256 * PAGE_SIZE).unwrap();
    let cfg = DmaAllocatorConfig::default();
    // The control: building the allocator makes the window's records on the heap.
    let (built, a) = allocations(|| {
        DmaAllocator::with_uncached_window(Model(&m), &z, NoTranslation, w, cfg).unwrap()
    });
    assert!(built > 0, "the counter sees the construction");
    let dev = rig::device(&m, 1, 32, false, true);
    for ctx in [AllocContext::Atomic, AllocContext::MayBlock] {
        let (n, buf) = allocations(|| a.alloc_coherent(&dev, 9000, ctx).unwrap());
        assert_eq!(n, 0, "{ctx:?} allocation from the window");
        assert!(buf.from_atomic_pool());
        let (n, freed) = allocations(|| a.free_coherent(&dev, buf));
        assert_eq!(n, 0, "{ctx:?} free to the window");
        assert!(freed.is_ok());
    }
}
