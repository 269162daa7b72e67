//! The HAL's logic over the host DMA layer: address bookkeeping, in-place and bounced
//! shares, the site statistics name, and every way a share or free is refused.

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dmakit::linear_map::{CpuAddr, LinearMap, LinearWindow};
use dmakit::{BounceReason, PhysAddr};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE};

use crate::host::{host_dma, HostLayout, HostStack};
use crate::{install, DmakitHal, InstallError, VirtioDma, WhenPoolFull};

const POOL: u64 = 256 * 1024;

fn layout(force_bounce: bool, when_full: WhenPoolFull) -> HostLayout {
    HostLayout {
        swiotlb_bytes: POOL,
        zone_bytes: 1 << 20,
        force_bounce,
        when_full,
    }
}

fn hal_with(l: HostLayout) -> (VirtioDma, &'static HostStack) {
    // SAFETY: the tests share only their own live buffers.
    let (cfg, stack) = unsafe { host_dma(l) };
    (VirtioDma::new(cfg).unwrap(), stack)
}

fn hal() -> (VirtioDma, &'static HostStack) {
    hal_with(layout(false, WhenPoolFull::Panic))
}

fn slice(buf: &mut [u8]) -> NonNull<[u8]> {
    NonNull::from(buf)
}

/// What the device sees at `paddr`: on the host, the address is a pointer.
fn device_bytes<'a>(paddr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: `paddr` is a live share of `len` bytes, in the process's memory (identity).
    unsafe { std::slice::from_raw_parts_mut(paddr as usize as *mut u8, len) }
}

#[test]
fn coherent_pages_come_back_by_address() {
    let (h, stack) = hal();
    let used = stack.allocator().atomic_pool_usage();
    let (paddr, vaddr) = h.dma_alloc(3, false);
    assert_ne!(paddr, 0);
    assert_eq!(paddr % PAGE_SIZE as u64, 0);
    assert_eq!(paddr, vaddr.as_ptr() as u64, "identity linear map");
    // SAFETY: three pages just allocated for us.
    let bytes = unsafe { std::slice::from_raw_parts_mut(vaddr.as_ptr(), 3 * PAGE_SIZE) };
    assert!(bytes.iter().all(|&b| b == 0), "zeroed");
    bytes.fill(0x42);
    // Wrong page count, wrong device address, a pointer outside the linear map: refused,
    // nothing freed.
    // SAFETY: each refused call is checked before anything is freed.
    unsafe {
        assert_eq!(h.dma_dealloc(paddr, vaddr, 0, false), -1);
        assert_eq!(h.dma_dealloc(paddr + 8, vaddr, 3, false), -1);
    }
    // SAFETY: the allocation is live and freed once.
    assert_eq!(unsafe { h.dma_dealloc(paddr, vaddr, 3, false) }, 0);
    assert_eq!(stack.allocator().atomic_pool_usage(), used);
    // The same pages are handed out again: they were freed.
    let (again, _) = h.dma_alloc(3, false);
    assert_eq!(again, paddr);
    assert_eq!(
        h.dma_alloc(0, false).0,
        0,
        "zero pages fail as virtio-drivers expects"
    );
}

#[test]
fn a_free_outside_the_linear_map_is_refused() {
    // SAFETY: nothing is shared.
    let (mut cfg, _) = unsafe { host_dma(layout(false, WhenPoolFull::Panic)) };
    let full = VirtioDma::new(cfg.clone()).unwrap();
    let (paddr, vaddr) = full.dma_alloc(1, false);
    cfg.linear = LinearMap::new(&[LinearWindow {
        phys: PhysAddr::new(PAGE_SIZE as u64),
        cpu: CpuAddr::new(PAGE_SIZE),
        len: PAGE_SIZE as u64,
    }])
    .unwrap();
    let narrow = VirtioDma::new(cfg).unwrap();
    // SAFETY: refused before anything is freed.
    assert_eq!(unsafe { narrow.dma_dealloc(paddr, vaddr, 1, false) }, -1);
    // SAFETY: live, freed once.
    assert_eq!(unsafe { full.dma_dealloc(paddr, vaddr, 1, false) }, 0);
}

#[test]
fn an_aligned_outbound_share_is_used_in_place() {
    let (h, stack) = hal();
    let mut page = vec![0u8; 2 * PAGE_SIZE];
    let off = page.as_ptr().align_offset(64);
    let buf = &mut page[off..off + 512];
    buf.fill(7);
    let ptr = slice(buf);
    // SAFETY: the buffer is ours and idle until the unshare.
    let paddr = unsafe { h.share(ptr, BufferDirection::DriverToDevice, false) };
    assert_eq!(paddr, ptr.as_ptr() as *mut u8 as u64);
    // SAFETY: the live share.
    unsafe { h.unshare(paddr, ptr, BufferDirection::DriverToDevice, false) };
    let t = stack.mapper().stats().total();
    assert_eq!((t.direct, t.bounces_total()), (1, 0));
}

#[test]
fn a_misaligned_inbound_share_is_bounced_and_copied_back_around_its_guards() {
    let (h, stack) = hal();
    let mut page = vec![0xeeu8; 2 * PAGE_SIZE];
    let start = page.as_ptr().align_offset(64) + 3;
    let ptr = slice(&mut page[start..start + 512]);
    // SAFETY: the buffer is ours and idle until the unshare.
    let paddr = unsafe { h.share(ptr, BufferDirection::DeviceToDriver, false) };
    assert_ne!(paddr, ptr.as_ptr() as *mut u8 as u64, "bounced");
    device_bytes(paddr, 512).fill(0x5a);
    // SAFETY: the live share; the "device" is done.
    unsafe { h.unshare(paddr, ptr, BufferDirection::DeviceToDriver, false) };
    assert!(page[start..start + 512].iter().all(|&b| b == 0x5a));
    assert!(page[..start]
        .iter()
        .chain(&page[start + 512..])
        .all(|&b| b == 0xee));
    let t = stack.mapper().stats().total();
    assert_eq!(t.bounces(BounceReason::Misaligned), 1);
    assert_eq!(t.bytes_from_bounce, 512);
}

#[test]
fn platform_access_bounces_as_a_confidential_guest() {
    let (h, stack) = hal();
    let mut page = vec![0u8; 2 * PAGE_SIZE];
    let off = page.as_ptr().align_offset(PAGE_SIZE);
    let buf = &mut page[off..off + PAGE_SIZE];
    buf.fill(9);
    let ptr = slice(buf);
    for access_platform in [false, true] {
        // SAFETY: ours and idle until the unshare.
        let paddr = unsafe { h.share(ptr, BufferDirection::Both, access_platform) };
        let in_place = paddr == ptr.as_ptr() as *mut u8 as u64;
        assert_eq!(in_place, !access_platform);
        assert!(device_bytes(paddr, PAGE_SIZE).iter().all(|&b| b == 9));
        // SAFETY: the live share, with the same flag.
        unsafe { h.unshare(paddr, ptr, BufferDirection::Both, access_platform) };
    }
    let (paddr, vaddr) = h.dma_alloc(1, true);
    assert_ne!(paddr, 0);
    // SAFETY: live, freed once with the flag it was allocated with.
    assert_eq!(unsafe { h.dma_dealloc(paddr, vaddr, 1, true) }, 0);
    let t = stack.mapper().stats().total();
    assert_eq!((t.direct, t.bounces(BounceReason::Forced)), (1, 1));
}

#[test]
fn statistics_name_the_line_that_shared() {
    let (h, stack) = hal_with(layout(true, WhenPoolFull::Panic));
    let mut buf = [1u8; 100];
    let ptr = slice(&mut buf);
    let line = line!() + 2;
    // SAFETY: ours and idle until the unshare.
    let paddr = unsafe { h.share(ptr, BufferDirection::DriverToDevice, false) };
    // SAFETY: the live share.
    unsafe { h.unshare(paddr, ptr, BufferDirection::DriverToDevice, false) };
    let sites = stack.mapper().top_sites(2);
    assert_eq!(sites.len(), 1);
    assert!(sites[0].location.file().ends_with("tests.rs"), "{sites:?}");
    assert_eq!(sites[0].location.line(), line);
}

#[test]
#[should_panic(expected = "too large to bounce")]
fn a_buffer_larger_than_any_bounce_panics_clearly() {
    let (h, _) = hal_with(layout(true, WhenPoolFull::Panic));
    let mut buf = vec![0u8; POOL as usize + 4096];
    // SAFETY: ours; the share panics before mapping.
    unsafe { h.share(slice(&mut buf), BufferDirection::DriverToDevice, false) };
}

#[test]
#[should_panic(expected = "bounce pool is full")]
fn a_full_pool_panics_when_waiting_is_not_allowed() {
    let (h, _) = hal_with(layout(true, WhenPoolFull::Panic));
    let mut hog = vec![0u8; POOL as usize];
    let mut buf = [0u8; 64];
    // SAFETY: ours and idle; the hog stays shared for the rest of the test.
    unsafe {
        h.share(slice(&mut hog), BufferDirection::DriverToDevice, false);
        h.share(slice(&mut buf), BufferDirection::DriverToDevice, false);
    }
}

static WAITS: AtomicU64 = AtomicU64::new(0);

fn counted_yield() {
    WAITS.fetch_add(1, Ordering::Relaxed);
    std::thread::yield_now();
}

#[test]
fn a_full_pool_is_waited_out_until_another_thread_unshares() {
    let when_full = WhenPoolFull::Wait {
        relax: counted_yield,
        max_waits: u64::MAX,
    };
    let (h, stack) = hal_with(layout(true, when_full));
    let h = Arc::new(h);
    let mut hog = vec![1u8; POOL as usize];
    let hog_ptr = slice(&mut hog);
    // SAFETY: ours and idle until the unshare below.
    let hog_paddr = unsafe { h.share(hog_ptr, BufferDirection::DriverToDevice, false) };
    let waiter = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || {
            let mut buf = vec![2u8; 4096];
            let ptr = slice(&mut buf);
            // SAFETY: the thread's own buffer, idle until the unshare.
            let paddr = unsafe { h.share(ptr, BufferDirection::DriverToDevice, false) };
            let seen = device_bytes(paddr, 4096).iter().all(|&b| b == 2);
            // SAFETY: the live share.
            unsafe { h.unshare(paddr, ptr, BufferDirection::DriverToDevice, false) };
            seen
        })
    };
    while WAITS.load(Ordering::Relaxed) < 100 {
        std::thread::yield_now();
    }
    assert!(!waiter.is_finished(), "the second share waits for room");
    // SAFETY: the hog's live share.
    unsafe { h.unshare(hog_paddr, hog_ptr, BufferDirection::DriverToDevice, false) };
    assert!(
        waiter.join().unwrap(),
        "the waiting share went through with its data"
    );
    let t = stack.mapper().stats().total();
    assert_eq!(t.bounces(BounceReason::Forced), 2);
    assert!(t.exhaustion_errors >= 100, "{}", t.exhaustion_errors);
}

#[test]
#[should_panic(expected = "cannot unshare")]
fn an_unshare_of_no_live_share_panics_clearly() {
    let (h, _) = hal_with(layout(true, WhenPoolFull::Panic));
    let mut buf = [0u8; 64];
    let ptr = slice(&mut buf);
    // SAFETY: ours and idle; the second unshare is refused (the bounce is no longer live)
    // before any memory is touched.
    unsafe {
        let paddr = h.share(ptr, BufferDirection::DeviceToDriver, false);
        h.unshare(paddr, ptr, BufferDirection::DeviceToDriver, false);
        h.unshare(paddr, ptr, BufferDirection::DeviceToDriver, false);
    }
}

#[test]
#[should_panic(expected = "outside the linear map")]
fn mmio_outside_the_linear_map_panics_clearly() {
    // SAFETY: nothing is shared.
    let (mut cfg, _) = unsafe { host_dma(layout(false, WhenPoolFull::Panic)) };
    cfg.linear = LinearMap::identity(1 << 30).unwrap();
    let h = VirtioDma::new(cfg).unwrap();
    assert_eq!(h.mmio_phys_to_virt(0x1000, 16).as_ptr() as usize, 0x1000);
    h.mmio_phys_to_virt(1 << 30, 16);
}

#[test]
fn the_global_hal_is_installed_once_and_names_the_callers_line() {
    // SAFETY: only this test's buffers are shared.
    let (cfg, stack) = unsafe { host_dma(layout(true, WhenPoolFull::Panic)) };
    install(cfg.clone()).unwrap();
    assert_eq!(install(cfg).err(), Some(InstallError::AlreadyInstalled));
    let (paddr, vaddr) = DmakitHal::dma_alloc(1, BufferDirection::Both);
    // SAFETY: live, freed once.
    assert_eq!(unsafe { DmakitHal::dma_dealloc(paddr, vaddr, 1) }, 0);
    let mut buf = [3u8; 40];
    let ptr = slice(&mut buf);
    let line = line!() + 2;
    // SAFETY: ours and idle until the unshare.
    let paddr = unsafe { DmakitHal::share(ptr, BufferDirection::DriverToDevice) };
    // SAFETY: the live share.
    unsafe { DmakitHal::unshare(paddr, ptr, BufferDirection::DriverToDevice) };
    let sites = stack.mapper().top_sites(2);
    assert_eq!(sites[0].location.line(), line, "{sites:?}");
    assert!(sites[0].location.file().ends_with("tests.rs"));
}
