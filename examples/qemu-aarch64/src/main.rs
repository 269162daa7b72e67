//! A bare-metal aarch64 kernel for QEMU's `virt` machine that uses dmakit for real: it boots
//! with the MMU and caches on, implements dmakit's platform traits with the CPU's own cache
//! maintenance instructions, and drives a virtio-blk disk through virtio-drivers' `VirtIOBlk`
//! with every buffer mapped by a `DmaMapper` with a SWIOTLB pool. Each transfer is verified
//! (data read back, bytes around inbound buffers intact, bounces as dmakit's rule says);
//! the kernel prints dmakit's statistics and exits through semihosting with status 0 only
//! if every check passed. `scripts/qemu-aarch64.sh` at the repository root runs it.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod buffer;
mod checks;
mod disk;
mod hal;
mod heap;
mod layout;
mod logger;
mod platform;
mod report;
mod rng;
mod semihosting;
mod uart;

use alloc::sync::Arc;

use dmakit::dma_alloc::{NoTranslation, UncachedWindow};
use dmakit::linear_map::LinearMap;
use dmakit::platform::{install_interrupt_control, CacheMaintenance};
use dmakit::prelude::*;
use dmakit::{DmaAllocator, DmaAllocatorConfig, DmaStack};
use dmakit_mem::ZonedPageAllocator;
use dmakit_virtio::{HalConfig, WhenPoolFull};

use crate::layout::{Region, COHERENT_WINDOW, PAGES, RAM, SWIOTLB};
use crate::platform::{Aarch64, Daif};

static PLATFORM: spin::Once<Aarch64> = spin::Once::new();
static STACK: spin::Once<KernelStack> = spin::Once::new();
static DAIF: Daif = Daif;

/// The mapper and DMA allocator over this machine; coherent memory from the window.
type KernelStack = DmaStack<&'static Aarch64, Arc<ZonedPageAllocator>>;

fn phys_range(r: Region) -> PhysRange {
    PhysRange::new(PhysAddr::new(r.start), r.len).expect("layout regions are not empty")
}

/// The Rust entry point, called by `boot.rs` with the MMU and caches on.
pub extern "C" fn kmain() -> ! {
    heap::init();
    logger::init();
    install_interrupt_control(&DAIF).expect("installed once, at boot");
    let platform: &'static Aarch64 = PLATFORM.call_once(Aarch64::new);
    let line = platform.cache_line_size();
    println!("dmakit qemu-aarch64 kernel: EL1, MMU and caches on, {line}-byte data cache lines");

    let pages = Arc::new(ZonedPageAllocator::new(&[phys_range(PAGES)]).expect("page allocator"));
    let mapper = DmaMapper::builder(platform)
        .swiotlb(PhysAddr::new(SWIOTLB.start), SWIOTLB.len)
        .expect("SWIOTLB pool")
        .transient_pages(pages.clone())
        .build();
    let window = UncachedWindow::new(PhysAddr::new(COHERENT_WINDOW.start), COHERENT_WINDOW.len)
        .expect("coherent window");
    let cfg = DmaAllocatorConfig::default();
    let allocator = DmaAllocator::with_uncached_window(platform, pages, NoTranslation, window, cfg)
        .expect("DMA allocator");
    let stack: &'static KernelStack = STACK.call_once(|| DmaStack::new(mapper, allocator));
    let device = Device::builder(DeviceId(1), "virtio-blk")
        .coherent(false)
        .cache_line(line)
        .build()
        .expect("device");
    let linear = LinearMap::identity(RAM.end()).expect("identity map");
    // One CPU and no interrupts: nothing could free a bounce while a share waited.
    let when_full = WhenPoolFull::Panic;
    dmakit_virtio::install(HalConfig {
        ops: stack,
        device,
        linear,
        when_full,
    })
    .expect("installed once, at boot");

    let Some((slot, mut disk)) = disk::find() else {
        println!("FAIL: no virtio-blk device in the 32 virtio-mmio slots");
        semihosting::exit(1);
    };
    println!(
        "virtio-blk in virtio-mmio slot {slot}: {} sectors",
        disk.capacity()
    );

    let mut checks = checks::Checks::new(&mut disk, stack, line);
    checks.coherent_from_window(stack.allocator().atomic_pool_usage());
    checks.aligned();
    checks.misaligned_read();
    checks.misaligned_write();
    checks.forced();
    checks.randomized();
    checks.pools_empty();
    let (passed, failed) = (checks.passed(), checks.failed());
    report::print(stack.mapper(), platform);
    if failed == 0 {
        println!("PASS: {passed} checks");
        semihosting::exit(0)
    } else {
        println!("FAIL: {failed} of {} checks failed", passed + failed);
        semihosting::exit(1)
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("FAIL: panic: {info}");
    semihosting::exit(101)
}
