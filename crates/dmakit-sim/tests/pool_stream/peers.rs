//! The bounce pool and its peers behind [`StreamAllocator`], each over its own region of
//! [`REGION_BYTES`]: `dmakit::swiotlb::Pool` (addresses only), `talc` and
//! `buddy_system_allocator` (both keep their free lists inside the region, so they get
//! real memory). Shared by the stream-count test and the `pool_stream` benchmark.

use std::alloc::Layout;
use std::ptr::NonNull;

use dmakit::swiotlb::{Pool, PoolConfig, SlotRequest};
use dmakit::PhysAddr;
use dmakit_sim::request_stream::{StreamAllocator, StreamRequest, LINE, REGION_BYTES};

/// The bounce pool, default geometry with the stream's 128-byte lines, one area.
pub struct PoolPeer(Pool<()>);

impl PoolPeer {
    pub fn new() -> Self {
        let cfg = PoolConfig::builder()
            .max_cache_line(LINE)
            .build()
            .expect("config");
        Self(Pool::with_region(cfg, PhysAddr::new(0), REGION_BYTES).expect("region"))
    }
}

impl StreamAllocator for PoolPeer {
    type Handle = PhysAddr;

    #[inline]
    fn alloc(&mut self, req: &StreamRequest) -> Option<PhysAddr> {
        let r = SlotRequest::new(PhysAddr::new(req.orig), req.len, req.min_align_mask);
        self.0.alloc(0, r, ()).ok().map(|b| b.addr)
    }

    #[inline]
    fn free(&mut self, addr: PhysAddr) {
        self.0.free(addr).expect("live bounce");
    }

    fn held_bytes(&self) -> u64 {
        self.0.stats().used_bytes
    }
}

/// Heap memory for an allocator that writes into its region, freed on drop.
struct Region {
    base: NonNull<u8>,
    layout: Layout,
}

impl Region {
    /// `REGION_BYTES` aligned to their size (a buddy heap merges by address bits).
    fn new() -> Self {
        let layout = Layout::from_size_align(REGION_BYTES as usize, REGION_BYTES as usize)
            .expect("region layout");
        // SAFETY: the layout has a nonzero size.
        let base = NonNull::new(unsafe { std::alloc::alloc(layout) }).expect("region memory");
        Self { base, layout }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the allocator using it is dropped
        // first (field order of the peers below).
        unsafe { std::alloc::dealloc(self.base.as_ptr(), self.layout) }
    }
}

/// The layout a general-purpose allocator is asked for: the request's lead-in and bytes,
/// whole lines, aligned to the line or the mask's boundary.
#[inline]
fn layout(req: &StreamRequest) -> Layout {
    Layout::from_size_align(req.span() as usize, req.align() as usize).expect("stream layout")
}

/// `talc` over the region.
pub struct TalcPeer {
    talc: talc::base::Talc<talc::source::Manual, talc::DefaultBinning>,
    _region: Region,
}

impl TalcPeer {
    pub fn new() -> Self {
        let region = Region::new();
        let mut talc = talc::base::Talc::new(talc::source::Manual);
        // SAFETY: the region is valid, writable memory owned by this peer and outlives the
        // allocator (dropped after it); nothing else manages it.
        unsafe { talc.claim(region.base.as_ptr(), REGION_BYTES as usize) }.expect("claim");
        Self {
            talc,
            _region: region,
        }
    }
}

impl StreamAllocator for TalcPeer {
    type Handle = (NonNull<u8>, Layout);

    #[inline]
    fn alloc(&mut self, req: &StreamRequest) -> Option<Self::Handle> {
        let layout = layout(req);
        // SAFETY: a stream request's span is at least one line, so the size is nonzero.
        unsafe { self.talc.allocate(layout) }.map(|p| (p, layout))
    }

    #[inline]
    fn free(&mut self, (ptr, layout): Self::Handle) {
        // SAFETY: `ptr` came from `allocate` with this layout and is freed once.
        unsafe { self.talc.deallocate(ptr.as_ptr(), layout) }
    }

    fn held_bytes(&self) -> u64 {
        let c = self.talc.counters();
        (c.claimed_bytes - c.available_bytes) as u64
    }
}

/// `buddy_system_allocator`'s heap over the region (orders up to the region's size).
pub struct BuddyPeer {
    heap: buddy_system_allocator::Heap<27>,
    _region: Region,
}

impl BuddyPeer {
    pub fn new() -> Self {
        let region = Region::new();
        let mut heap = buddy_system_allocator::Heap::<27>::new();
        // SAFETY: as for talc: valid, writable, owned memory that outlives the heap.
        unsafe { heap.init(region.base.as_ptr() as usize, REGION_BYTES as usize) };
        Self {
            heap,
            _region: region,
        }
    }
}

impl StreamAllocator for BuddyPeer {
    type Handle = (NonNull<u8>, Layout);

    #[inline]
    fn alloc(&mut self, req: &StreamRequest) -> Option<Self::Handle> {
        let layout = layout(req);
        self.heap.alloc(layout).ok().map(|p| (p, layout))
    }

    #[inline]
    fn free(&mut self, (ptr, layout): Self::Handle) {
        // SAFETY: `ptr` came from `alloc` with this layout and is freed once.
        unsafe { self.heap.dealloc(ptr, layout) }
    }

    fn held_bytes(&self) -> u64 {
        self.heap.stats_alloc_actual() as u64
    }
}
