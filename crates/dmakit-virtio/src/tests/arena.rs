//! Address bookkeeping, in-place and bounced shares, the site statistics name, and every
//! way a share or free is refused, on `dmakit_host::HostPlatform` memory at 8 GiB.

use core::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dmakit::dma_alloc::NoTranslation;
use dmakit::linear_map::{CpuAddr, LinearMap, LinearWindow};
use dmakit::{
    BounceReason, Device, DeviceId, Direction, DmaAllocator, DmaMapper, DmaStack, PhysAddr,
    PhysRange, PAGE_SIZE,
};
use dmakit_host::{HostMaintenance, HostPlatform};
use dmakit_mem::ZonedPageAllocator;

use crate::{HalConfig, VirtioDma, WhenPoolFull};

const BASE: u64 = 8 << 30;
const POOL: u64 = 256 * 1024;
const ZONES: u64 = 1 << 20;
/// Where the tests' own buffers lie: after the pool and the zones.
const BUFFERS: u64 = BASE + POOL + ZONES;
const SIZE: u64 = POOL + ZONES + (1 << 20);

type Stack = DmaStack<&'static HostPlatform, ZonedPageAllocator>;

struct Rig {
    hal: VirtioDma,
    stack: &'static Stack,
    host: &'static HostPlatform,
}

impl Rig {
    fn new(force_bounce: bool, when_full: WhenPoolFull) -> Self {
        let host: &'static HostPlatform = Box::leak(Box::new(
            HostPlatform::new(BASE, SIZE, 1, 64, HostMaintenance::None).unwrap(),
        ));
        let mapper = DmaMapper::builder(host)
            .swiotlb(PhysAddr::new(BASE), POOL)
            .unwrap()
            .build();
        let ram = PhysRange::new(PhysAddr::new(BASE + POOL), ZONES).unwrap();
        let zones = ZonedPageAllocator::new(&[ram]).unwrap();
        let cfg = host.dma_allocator_config();
        let allocator = DmaAllocator::new(host, zones, NoTranslation, cfg, None).unwrap();
        let stack: &'static Stack = Box::leak(Box::new(DmaStack::new(mapper, allocator)));
        let cpu = host.ptr(PhysAddr::new(BASE), SIZE).unwrap();
        let linear = LinearMap::new(&[LinearWindow {
            phys: PhysAddr::new(BASE),
            cpu: CpuAddr::of_ptr(cpu.as_ptr()),
            len: SIZE,
        }])
        .unwrap();
        let device = Device::builder(DeviceId(3), "virtio-blk")
            .force_bounce(force_bounce)
            .build()
            .unwrap();
        let cfg = HalConfig {
            ops: stack,
            device,
            linear,
            when_full,
        };
        Self {
            hal: VirtioDma::new(cfg).unwrap(),
            stack,
            host,
        }
    }

    /// `len` bytes of the tests' buffer memory at offset `off`.
    fn buffer(&self, off: u64, len: usize) -> NonNull<[u8]> {
        let p = self
            .host
            .ptr(PhysAddr::new(BUFFERS + off), len as u64)
            .unwrap();
        NonNull::slice_from_raw_parts(p, len)
    }

    /// What the device reaches at `paddr` (identity bus addresses: physical ones), in the
    /// leaked arena.
    fn device_bytes(&self, paddr: u64, len: usize) -> &'static mut [u8] {
        let p = self.host.ptr(PhysAddr::new(paddr), len as u64).unwrap();
        // SAFETY: `paddr` is a live share or allocation of `len` bytes in the arena,
        // touched by nothing else while the test looks at it.
        unsafe { std::slice::from_raw_parts_mut(p.as_ptr(), len) }
    }
}

fn bytes<'a>(b: NonNull<[u8]>) -> &'a mut [u8] {
    // SAFETY: the tests' buffers lie in the leaked arena, and the CPU touches one only
    // while it is not shared.
    unsafe { &mut *b.as_ptr() }
}

fn rig() -> Rig {
    Rig::new(false, WhenPoolFull::Panic)
}

#[test]
fn coherent_pages_are_handed_out_and_freed_by_address() {
    let r = rig();
    let (paddr, vaddr) = r.hal.dma_alloc(3, false);
    assert_eq!(paddr % PAGE_SIZE, 0);
    assert!(
        (BASE + POOL..BASE + POOL + ZONES).contains(&paddr),
        "{paddr:#x}"
    );
    // The pointer is the linear map's for the memory (not the bus address).
    assert_eq!(
        r.host.phys_of(vaddr.as_ptr(), 3 * 4096).unwrap().as_u64(),
        paddr
    );
    let mem = r.device_bytes(paddr, 3 * 4096);
    assert!(mem.iter().all(|&b| b == 0), "zeroed");
    mem.fill(0x42);
    // Wrong page count, wrong device address: refused, nothing freed.
    // SAFETY: each refused call is checked before anything is freed.
    unsafe {
        assert_eq!(r.hal.dma_dealloc(paddr, vaddr, 0, false), -1);
        assert_eq!(r.hal.dma_dealloc(paddr + 4096, vaddr, 3, false), -1);
    }
    let other = r.hal.dma_alloc(3, false).0;
    assert_ne!(other, paddr, "still allocated");
    // SAFETY: the allocations are live and freed once.
    unsafe {
        assert_eq!(r.hal.dma_dealloc(paddr, vaddr, 3, false), 0);
    }
    let (again, again_ptr) = r.hal.dma_alloc(3, false);
    assert_eq!(again, paddr, "freed: the same pages come back");
    assert!(r.device_bytes(again, 3 * 4096).iter().all(|&b| b == 0));
    // SAFETY: live, freed once.
    assert_eq!(unsafe { r.hal.dma_dealloc(again, again_ptr, 3, false) }, 0);
    assert_eq!(
        r.hal.dma_alloc(0, false).0,
        0,
        "zero pages fail as virtio-drivers expects"
    );
    assert_eq!(
        r.hal.dma_alloc(1 << 20, false).0,
        0,
        "too much memory fails likewise"
    );
}

#[test]
fn a_free_outside_the_linear_map_is_refused() {
    let r = rig();
    let (paddr, vaddr) = r.hal.dma_alloc(1, false);
    let mut cfg = r.hal.config().clone();
    cfg.linear = LinearMap::identity(1 << 30).unwrap();
    let narrow = VirtioDma::new(cfg).unwrap();
    // SAFETY: refused before anything is freed.
    assert_eq!(unsafe { narrow.dma_dealloc(paddr, vaddr, 1, false) }, -1);
    // SAFETY: live, freed once.
    assert_eq!(unsafe { r.hal.dma_dealloc(paddr, vaddr, 1, false) }, 0);
}

#[test]
fn an_aligned_outbound_share_is_used_in_place() {
    let r = rig();
    let b = r.buffer(0, 512);
    bytes(b).fill(7);
    // SAFETY: the buffer is the test's and idle until the unshare.
    let paddr = unsafe { r.hal.share(b, Direction::ToDevice, false) };
    assert_eq!(paddr, BUFFERS, "the buffer's own physical address");
    // SAFETY: the live share.
    unsafe { r.hal.unshare(paddr, b, Direction::ToDevice, false) };
    let t = r.stack.mapper().stats().total();
    assert_eq!((t.direct, t.bounces_total()), (1, 0));
}

#[test]
fn a_misaligned_inbound_share_is_bounced_and_copied_back_around_its_guards() {
    let r = rig();
    let page = r.buffer(0, 4096);
    bytes(page).fill(0xee);
    let b = r.buffer(64 + 3, 512);
    // SAFETY: the buffer is the test's and idle until the unshare.
    let paddr = unsafe { r.hal.share(b, Direction::FromDevice, false) };
    assert!(
        (BASE..BASE + POOL).contains(&paddr),
        "bounced into the pool: {paddr:#x}"
    );
    r.device_bytes(paddr, 512).fill(0x5a);
    // SAFETY: the live share; the "device" is done.
    unsafe { r.hal.unshare(paddr, b, Direction::FromDevice, false) };
    let all = bytes(page);
    assert!(all[67..67 + 512].iter().all(|&b| b == 0x5a));
    assert!(all[..67].iter().chain(&all[67 + 512..]).all(|&b| b == 0xee));
    let t = r.stack.mapper().stats().total();
    assert_eq!(t.bounces(BounceReason::Misaligned), 1);
    assert_eq!(t.bytes_from_bounce, 512);
}

#[test]
fn platform_access_bounces_as_a_confidential_guest() {
    let r = rig();
    let b = r.buffer(0, 4096);
    bytes(b).fill(9);
    for access_platform in [false, true] {
        // SAFETY: the test's and idle until the unshare.
        let paddr = unsafe { r.hal.share(b, Direction::Bidirectional, access_platform) };
        assert_eq!(paddr == BUFFERS, !access_platform);
        assert!(r.device_bytes(paddr, 4096).iter().all(|&b| b == 9));
        // SAFETY: the live share, with the same flag.
        unsafe {
            r.hal
                .unshare(paddr, b, Direction::Bidirectional, access_platform)
        };
    }
    let (paddr, vaddr) = r.hal.dma_alloc(1, true);
    assert_ne!(paddr, 0);
    // SAFETY: live, freed once with the flag it was allocated with.
    assert_eq!(unsafe { r.hal.dma_dealloc(paddr, vaddr, 1, true) }, 0);
    let t = r.stack.mapper().stats().total();
    assert_eq!((t.direct, t.bounces(BounceReason::Forced)), (1, 1));
}

#[test]
fn statistics_name_the_line_that_shared() {
    let r = Rig::new(true, WhenPoolFull::Panic);
    let b = r.buffer(0, 100);
    let line = line!() + 2;
    // SAFETY: the test's and idle until the unshare.
    let paddr = unsafe { r.hal.share(b, Direction::ToDevice, false) };
    // SAFETY: the live share.
    unsafe { r.hal.unshare(paddr, b, Direction::ToDevice, false) };
    let sites = r.stack.mapper().top_sites(2);
    assert_eq!(sites.len(), 1);
    assert!(sites[0].location.file().ends_with("arena.rs"), "{sites:?}");
    assert_eq!(sites[0].location.line(), line);
}

#[test]
#[should_panic(expected = "too large to bounce")]
fn a_buffer_larger_than_any_bounce_panics_clearly() {
    let r = Rig::new(true, WhenPoolFull::Panic);
    // SAFETY: the test's; the share panics before mapping.
    unsafe {
        r.hal.share(
            r.buffer(0, POOL as usize + 4096),
            Direction::ToDevice,
            false,
        )
    };
}

#[test]
#[should_panic(expected = "bounce pool is full")]
fn a_full_pool_panics_when_waiting_is_not_allowed() {
    let r = Rig::new(true, WhenPoolFull::Panic);
    // SAFETY: the test's and idle; the hog stays shared for the rest of the test.
    unsafe {
        r.hal
            .share(r.buffer(0, POOL as usize), Direction::ToDevice, false);
        r.hal.share(r.buffer(POOL, 64), Direction::ToDevice, false);
    }
}

#[test]
#[should_panic(expected = "outside the linear map")]
fn a_buffer_outside_the_linear_map_panics_clearly() {
    let r = rig();
    let mut stray = [0u8; 16];
    // SAFETY: the test's; the share panics before mapping.
    unsafe {
        r.hal
            .share(NonNull::from(&mut stray[..]), Direction::ToDevice, false)
    };
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
    let r = Arc::new(Rig::new(true, when_full));
    let hog = r.buffer(0, POOL as usize);
    // SAFETY: the test's and idle until the unshare below.
    let hog_paddr = unsafe { r.hal.share(hog, Direction::ToDevice, false) };
    let waiter = {
        let r = Arc::clone(&r);
        std::thread::spawn(move || {
            let b = r.buffer(POOL, 4096);
            bytes(b).fill(2);
            // SAFETY: the thread's own buffer, idle until the unshare.
            let paddr = unsafe { r.hal.share(b, Direction::ToDevice, false) };
            let seen = r.device_bytes(paddr, 4096).iter().all(|&b| b == 2);
            // SAFETY: the live share.
            unsafe { r.hal.unshare(paddr, b, Direction::ToDevice, false) };
            seen
        })
    };
    while WAITS.load(Ordering::Relaxed) < 100 {
        std::thread::yield_now();
    }
    assert!(!waiter.is_finished(), "the second share waits for room");
    // SAFETY: the hog's live share.
    unsafe { r.hal.unshare(hog_paddr, hog, Direction::ToDevice, false) };
    assert!(
        waiter.join().unwrap(),
        "the waiting share went through with its data"
    );
    let t = r.stack.mapper().stats().total();
    assert_eq!(t.bounces(BounceReason::Forced), 2);
    assert!(t.exhaustion_errors >= 100, "{}", t.exhaustion_errors);
}

#[test]
#[should_panic(expected = "cannot unshare")]
fn an_unshare_of_no_live_share_panics_clearly() {
    let r = Rig::new(true, WhenPoolFull::Panic);
    let b = r.buffer(0, 64);
    // SAFETY: the test's and idle; the second unshare is refused (the bounce is no longer
    // live) before any memory is touched.
    unsafe {
        let paddr = r.hal.share(b, Direction::FromDevice, false);
        r.hal.unshare(paddr, b, Direction::FromDevice, false);
        r.hal.unshare(paddr, b, Direction::FromDevice, false);
    }
}

#[test]
fn mmio_goes_through_the_linear_map() {
    let r = rig();
    let p = r.hal.mmio_phys_to_virt(BUFFERS, 16);
    assert_eq!(r.host.phys_of(p.as_ptr(), 16).unwrap().as_u64(), BUFFERS);
}

#[test]
#[should_panic(expected = "outside the linear map")]
fn mmio_outside_the_linear_map_panics_clearly() {
    rig().hal.mmio_phys_to_virt(0x1000, 16);
}
