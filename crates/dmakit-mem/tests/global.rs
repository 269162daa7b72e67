//! kmalloc as a real heap: `Vec`, `String` and `Box` allocated through [`KmallocHeap`] over
//! an arena of host memory whose addresses play the role of physical addresses (linear-map
//! offset 0).
//!
//! kmalloc's own bookkeeping allocates too, and must not be served by the heap it implements
//! (see the `global` module docs), so this test binary installs a router as the global
//! allocator: on a thread that opted in, allocations go to the kmalloc heap unless they are
//! made from inside it; frees go wherever the address belongs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use dmakit::{PhysAddr, PhysRange};
use dmakit_mem::{Kmalloc, KmallocHeap, MinAlignPolicy, ZonedPageAllocator};

const ARENA_LEN: usize = 16 << 20;
const PAGE: usize = 4096;

static ARENA_START: AtomicUsize = AtomicUsize::new(0);
static HEAP: OnceLock<KmallocHeap<ZonedPageAllocator>> = OnceLock::new();

thread_local! {
    /// This thread's allocations go to the kmalloc heap.
    static ROUTE: Cell<bool> = const { Cell::new(false) };
    /// The kmalloc heap is running on this thread (its bookkeeping goes to `System`).
    static INSIDE: Cell<bool> = const { Cell::new(false) };
}

fn in_arena(p: *const u8) -> bool {
    let start = ARENA_START.load(Ordering::Acquire);
    let a = p as usize;
    start != 0 && a >= start && a < start + ARENA_LEN
}

/// Runs `f` with the "inside the heap" flag set.
fn inside<T>(f: impl FnOnce() -> T) -> T {
    INSIDE.with(|c| c.set(true));
    let r = f();
    INSIDE.with(|c| c.set(false));
    r
}

struct Router;

// SAFETY: every pointer comes from `System` or from the kmalloc heap, and is returned to the
// allocator it came from: arena addresses belong to the heap, everything else to `System`.
unsafe impl GlobalAlloc for Router {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let route = ROUTE.with(Cell::get) && !INSIDE.with(Cell::get);
        if let (true, Some(heap)) = (route, HEAP.get()) {
            // SAFETY: forwarded with the caller's layout.
            return inside(|| unsafe { heap.alloc(layout) });
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_arena(ptr) {
            if let Some(heap) = HEAP.get() {
                // SAFETY: arena pointers were handed out by the heap with this layout.
                inside(|| unsafe { heap.dealloc(ptr, layout) });
            }
            return;
        }
        // SAFETY: any other pointer came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if in_arena(ptr) {
            if let Some(heap) = HEAP.get() {
                // SAFETY: arena pointers were handed out by the heap with this layout.
                return inside(|| unsafe { heap.realloc(ptr, layout, new_size) });
            }
        }
        // SAFETY: any other pointer came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Router = Router;

/// A heap over a fresh, page-aligned arena of host memory.
fn new_heap() -> (KmallocHeap<ZonedPageAllocator>, usize) {
    let layout = Layout::from_size_align(ARENA_LEN, PAGE).unwrap();
    // SAFETY: the layout has a non-zero size.
    let arena = unsafe { System.alloc(layout) };
    assert!(!arena.is_null());
    let base = arena as usize;
    let ram = PhysRange::new(PhysAddr::new(base as u64), ARENA_LEN as u64).unwrap();
    let kmalloc = Kmalloc::new(
        ZonedPageAllocator::new(&[ram]).unwrap(),
        MinAlignPolicy::auto(false, false, 64).unwrap(),
    );
    // SAFETY: the arena is valid, writable, page-aligned memory that is leaked (lives for
    // the rest of the process) and used by nothing but this heap; with offset 0 every
    // "physical" address the page allocator hands out is the arena's own address.
    (unsafe { KmallocHeap::new(kmalloc, 0) }, base)
}

fn live_objects(heap: &KmallocHeap<ZonedPageAllocator>) -> u64 {
    heap.kmalloc()
        .cache_stats()
        .iter()
        .map(|c| c.active_objs)
        .sum::<u64>()
        + heap.kmalloc().large_pages()
}

#[test]
fn collections_allocate_through_the_kmalloc_heap() {
    let heap = HEAP.get_or_init(|| {
        let (heap, base) = new_heap();
        ARENA_START.store(base, Ordering::Release);
        heap
    });

    ROUTE.with(|c| c.set(true));
    let mut v: Vec<u64> = Vec::new();
    for i in 0..10_000u64 {
        v.push(i * 3); // grows through realloc, from small classes to whole pages
    }
    let s = "dma".repeat(40);
    let b = Box::new([7u8; 24]);
    ROUTE.with(|c| c.set(false));

    for p in [v.as_ptr() as *const u8, s.as_ptr(), b.as_ptr()] {
        assert!(in_arena(p), "{p:p} was not allocated by the kmalloc heap");
    }
    assert_eq!(v.iter().sum::<u64>(), 3 * (10_000 * 9_999 / 2));
    assert_eq!(s.len(), 120);
    assert!(b.iter().all(|&x| x == 7));

    let k = heap.kmalloc();
    let v_info = k.usable_size(heap.phys(v.as_ptr() as *const u8)).unwrap();
    assert!(v_info.usable >= 80_000);
    // 24 bytes go to the 32-byte class.
    assert_eq!(k.usable_size(heap.phys(b.as_ptr())).unwrap().usable, 32);
    assert!(k.usable_size(heap.phys(s.as_ptr())).unwrap().usable >= 120);
    assert_eq!(live_objects(heap), 3 + v_info.usable / PAGE as u64 - 1);

    drop(v);
    drop(s);
    drop(b);
    assert_eq!(live_objects(heap), 0);
}

#[test]
fn layouts_are_honoured_and_memory_is_usable() {
    let (heap, _) = new_heap();
    let mut ptrs = Vec::new();
    for (size, align) in [
        (1, 1),
        (24, 8),
        (100, 64),
        (3000, 1024),
        (5000, 4096),
        (20_000, 16),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { heap.alloc(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % align, 0, "size {size} align {align}");
        // SAFETY: the heap returned `size` writable bytes at `p`.
        unsafe { std::ptr::write_bytes(p, 0xa5, size) };
        ptrs.push((p, layout));
    }
    for &(p, layout) in &ptrs {
        // SAFETY: written above; still allocated.
        let bytes = unsafe { std::slice::from_raw_parts(p, layout.size()) };
        assert!(bytes.iter().all(|&x| x == 0xa5));
    }
    // Too large an alignment is refused with a null pointer, not a panic.
    let huge = Layout::from_size_align(64, 2 * PAGE).unwrap();
    // SAFETY: non-zero size.
    assert!(unsafe { heap.alloc(huge) }.is_null());
    for (p, layout) in ptrs {
        // SAFETY: allocated above with this layout.
        unsafe { heap.dealloc(p, layout) };
    }
    assert_eq!(live_objects(&heap), 0);
}
