//! A DMA layer over this process's own memory, for tests of drivers that use the HAL.
//!
//! Test devices on the host (virtio-drivers' fake transports) read and write the
//! addresses the HAL gives them as pointers, and drivers share ordinary Rust buffers. So
//! here physical addresses *are* the process's addresses: the linear map is the
//! identity, CPU copies are `memcpy`s at those addresses, and the host's caches are
//! coherent, so maintenance and uncached remapping do nothing. The bounce pool and the
//! allocator's zones lie in one arena taken from the heap and kept for the life of the
//! process. Everything dmakit decides (bounce or not, where, what to copy back) is real.

use std::alloc::{alloc_zeroed, Layout};

use dmakit::dma_alloc::NoTranslation;
use dmakit::linear_map::LinearMap;
use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, CpuTopology, Device, DeviceId, DmaAllocator,
    DmaAllocatorConfig, DmaMapper, DmaStack, MemoryFault, PhysAddr, PhysRange, PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;

use crate::config::{HalConfig, WhenPoolFull};

/// The process's memory as physical memory: address = pointer. See the
/// [module docs](self).
#[derive(Debug)]
pub struct ProcessMemory(());

impl ProcessMemory {
    /// The pointer for `len` bytes at `addr`, unless the range is empty-at-null or wraps.
    fn at(addr: PhysAddr, len: u64) -> Result<*mut u8, MemoryFault> {
        let fault = MemoryFault { addr, len };
        let end = addr.as_u64().checked_add(len).ok_or(fault)?;
        if addr.as_u64() == 0 || usize::try_from(end).is_err() {
            return Err(fault);
        }
        Ok(addr.as_u64() as usize as *mut u8)
    }
}

impl CacheMaintenance for ProcessMemory {
    fn cache_line_size(&self) -> u64 {
        64
    }
    fn clean(&self, _: PhysRange) {}
    fn invalidate(&self, _: PhysRange) {}
    fn clean_invalidate(&self, _: PhysRange) {}
}

// SAFETY: the platform is only reachable through `host_dma`, whose contract makes every
// address the mapper and allocator are given valid for its length: driver buffers (the
// HAL's share contract) and the leaked arena. `at` refuses null and wrapping ranges.
unsafe impl CpuMemory for ProcessMemory {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let (d, s) = (Self::at(dst, len)?, Self::at(src, len)?);
        // SAFETY: both ranges are valid for `len` bytes (the contract above); `copy`
        // permits overlap.
        unsafe { std::ptr::copy(s, d, len as usize) };
        Ok(())
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let d = Self::at(dst, len)?;
        // SAFETY: the range is valid for `len` bytes (the contract above).
        unsafe { std::ptr::write_bytes(d, byte, len as usize) };
        Ok(())
    }
}

impl CpuTopology for ProcessMemory {
    fn cpu_count(&self) -> usize {
        1
    }
    fn current_cpu(&self) -> usize {
        0
    }
}

impl CoherentRemap for ProcessMemory {
    /// The host's caches are coherent with every reader of this memory: nothing to do.
    fn make_uncached(&self, _: PhysRange) -> Result<(), MemoryFault> {
        Ok(())
    }
    fn make_cached(&self, _: PhysRange) {}
}

/// The shape of a host DMA layer.
#[derive(Clone, Copy, Debug)]
pub struct HostLayout {
    /// Bytes of the SWIOTLB bounce pool (a non-zero multiple of 256 KiB).
    pub swiotlb_bytes: u64,
    /// Bytes of the zones coherent memory comes from (a multiple of the page size).
    pub zone_bytes: u64,
    /// Whether the virtio device bounces every share (as a confidential guest's).
    pub force_bounce: bool,
    /// What a share does when the pool is full.
    pub when_full: WhenPoolFull,
}

impl Default for HostLayout {
    /// A 4 MiB pool, 16 MiB of zones, no forced bouncing, waiting (by yielding the
    /// thread) up to a million times for room.
    fn default() -> Self {
        Self {
            swiotlb_bytes: 4 << 20,
            zone_bytes: 16 << 20,
            force_bounce: false,
            when_full: WhenPoolFull::Wait {
                relax: std::thread::yield_now,
                max_waits: 1_000_000,
            },
        }
    }
}

/// The mapper and allocator of a host DMA layer.
pub type HostStack = DmaStack<&'static ProcessMemory, ZonedPageAllocator>;

/// Builds a DMA layer as `layout` says, over a new arena that lives as long as the
/// process, and returns the configuration to install (or to give to
/// [`crate::VirtioDma::new`]) and the stack, whose statistics count the shares. The
/// device is a non-coherent one with 64-byte lines (so misaligned inbound buffers
/// bounce), id 0x7669.
///
/// # Panics
/// When the layout is refused (a pool size that is not a multiple of 256 KiB) or the
/// memory cannot be had: this is test set-up.
///
/// # Safety
/// Every buffer shared through the result is valid memory of this process for its
/// length, as the HAL's share contract says; no other address reaches the mapper or
/// the allocator.
pub unsafe fn host_dma(layout: HostLayout) -> (HalConfig, &'static HostStack) {
    let total = layout.swiotlb_bytes + layout.zone_bytes;
    let arena_layout = Layout::from_size_align(total as usize, 1 << 20).expect("arena layout");
    // SAFETY: the layout has a non-zero size (the pool's is).
    let arena = unsafe { alloc_zeroed(arena_layout) };
    assert!(!arena.is_null(), "host DMA arena of {total} bytes");
    let base = PhysAddr::new(arena as usize as u64);
    let platform: &'static ProcessMemory = Box::leak(Box::new(ProcessMemory(())));
    let mapper = DmaMapper::builder(platform)
        .swiotlb(base, layout.swiotlb_bytes)
        .expect("SWIOTLB pool")
        .build();
    let ram = PhysRange::new(base.add(layout.swiotlb_bytes), layout.zone_bytes).expect("zones");
    let zones = ZonedPageAllocator::new(&[ram]).expect("zones");
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 16 * PAGE_SIZE,
        atomic_pool_reach: u64::MAX,
        ..DmaAllocatorConfig::default()
    };
    let allocator =
        DmaAllocator::new(platform, zones, NoTranslation, cfg, None).expect("allocator");
    let stack: &'static HostStack = Box::leak(Box::new(DmaStack::new(mapper, allocator)));
    let device = Device::builder(DeviceId(0x7669), "virtio")
        .force_bounce(layout.force_bounce)
        .build()
        .expect("device");
    let linear = LinearMap::identity(usize::MAX as u64).expect("identity map");
    let config = HalConfig {
        ops: stack,
        device,
        linear,
        when_full: layout.when_full,
    };
    (config, stack)
}
