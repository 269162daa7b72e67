//! The host DMA layer virtio-drivers' suite runs on: ordinary Rust buffers shared through
//! the identity map, and the installed global behind `DmakitHal`.

use core::ptr::NonNull;

use dmakit::{BounceReason, Direction};

use crate::host::{host_dma, HostLayout};
use crate::{VirtioDma, WhenPoolFull};

fn layout(force_bounce: bool) -> HostLayout {
    HostLayout {
        swiotlb_bytes: 256 * 1024,
        zone_bytes: 1 << 20,
        force_bounce,
        when_full: WhenPoolFull::Panic,
    }
}

/// What the device sees at `paddr`: on the host, the address is a pointer.
fn device_bytes<'a>(paddr: u64, len: usize) -> &'a mut [u8] {
    // SAFETY: `paddr` is a live share of `len` bytes in the process's memory (identity).
    unsafe { std::slice::from_raw_parts_mut(paddr as usize as *mut u8, len) }
}

#[test]
fn rust_buffers_are_shared_in_place_or_bounced_by_dmakits_rule() {
    // SAFETY: only this test's live buffers are shared.
    let (cfg, stack) = unsafe { host_dma(layout(false)) };
    let h = VirtioDma::new(cfg).unwrap();
    let mut page = vec![0xeeu8; 2 * 4096];
    let start = page.as_ptr().align_offset(64);
    for (off, dir) in [(0, Direction::ToDevice), (3, Direction::FromDevice)] {
        let b = NonNull::from(&mut page[start + off..start + off + 256]);
        // SAFETY: the test's buffer, idle until the unshare.
        let paddr = unsafe { h.share(b, dir, false) };
        assert_eq!(paddr == b.as_ptr() as *mut u8 as u64, off == 0);
        if dir == Direction::FromDevice {
            device_bytes(paddr, 256).fill(0x5a);
        }
        // SAFETY: the live share.
        unsafe { h.unshare(paddr, b, dir, false) };
    }
    let s = start + 3;
    assert!(page[s..s + 256].iter().all(|&b| b == 0x5a));
    assert!(page[..s].iter().chain(&page[s + 256..]).all(|&b| b == 0xee));
    let t = stack.mapper().stats().total();
    assert_eq!((t.direct, t.bounces(BounceReason::Misaligned)), (1, 1));
    let (paddr, vaddr) = h.dma_alloc(2, false);
    assert_eq!(paddr, vaddr.as_ptr() as u64, "identity map");
    // SAFETY: live, freed once.
    assert_eq!(unsafe { h.dma_dealloc(paddr, vaddr, 2, false) }, 0);
}

#[cfg(feature = "hal")]
#[test]
fn the_global_hal_is_installed_once_and_names_the_callers_line() {
    use crate::{install, DmakitHal, InstallError};
    use virtio_drivers::{BufferDirection, Hal};

    // SAFETY: only this test's live buffers are shared.
    let (cfg, stack) = unsafe { host_dma(layout(true)) };
    install(cfg.clone()).unwrap();
    assert_eq!(install(cfg).err(), Some(InstallError::AlreadyInstalled));
    let (paddr, vaddr) = DmakitHal::dma_alloc(1, BufferDirection::Both);
    // SAFETY: live, freed once.
    assert_eq!(unsafe { DmakitHal::dma_dealloc(paddr, vaddr, 1) }, 0);
    let mut buf = [3u8; 40];
    let b = NonNull::from(&mut buf[..]);
    let line = line!() + 2;
    // SAFETY: the test's and idle until the unshare.
    let paddr = unsafe { DmakitHal::share(b, BufferDirection::DriverToDevice) };
    assert!(
        device_bytes(paddr, 40).iter().all(|&x| x == 3),
        "bounced with its data"
    );
    // SAFETY: the live share.
    unsafe { DmakitHal::unshare(paddr, b, BufferDirection::DriverToDevice) };
    let sites = stack.mapper().top_sites(2);
    assert_eq!(sites[0].location.line(), line, "{sites:?}");
    assert!(sites[0].location.file().ends_with("process.rs"));
    assert_eq!(
        stack.mapper().stats().total().bounces(BounceReason::Forced),
        1
    );
}
