//! Coherent memory: whole pages of [`layout::COHERENT_WINDOW`], which the identity map
//! maps normal non-cacheable, so CPU and device see the same bytes without maintenance.
//!
//! A kernel that maps RAM in large blocks cannot make single pages uncached on demand; it
//! sets a window aside at boot instead (as a devicetree `shared-dma-pool` with `no-map`)
//! and allocates from it. Here a bitmap of its pages, first fit, under a spin lock (it is
//! taken only when coherent memory is allocated or freed, never on a map path).

use dmakit::platform::{CoherentPageAllocator, PAGE_SIZE};
use dmakit::PhysAddr;

use crate::layout::COHERENT_WINDOW;

/// Pages in the window.
const PAGES: usize = (COHERENT_WINDOW.len / PAGE_SIZE) as usize;

/// The allocator of the coherent window's pages.
pub struct CoherentWindow {
    /// Bit `i` set: page `i` is allocated.
    used: spin::Mutex<[u64; PAGES / 64]>,
}

impl CoherentWindow {
    /// The window, all pages free.
    pub const fn new() -> Self {
        Self {
            used: spin::Mutex::new([0; PAGES / 64]),
        }
    }
}

fn is_used(map: &[u64], page: usize) -> bool {
    map[page / 64] & (1 << (page % 64)) != 0
}

fn set(map: &mut [u64], first: usize, count: usize, used: bool) {
    for page in first..first + count {
        if used {
            map[page / 64] |= 1 << (page % 64);
        } else {
            map[page / 64] &= !(1 << (page % 64));
        }
    }
}

impl CoherentPageAllocator for CoherentWindow {
    /// The first run of `pages` free pages whose last byte is at or below `max_addr`.
    fn alloc_coherent_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        let count = usize::try_from(pages)
            .ok()
            .filter(|&n| n > 0 && n <= PAGES)?;
        let mut map = self.used.lock();
        let mut first = 0;
        while first + count <= PAGES {
            match (first..first + count).find(|&p| is_used(&*map, p)) {
                Some(taken) => first = taken + 1,
                None => {
                    let base = COHERENT_WINDOW.start + first as u64 * PAGE_SIZE;
                    if base + pages * PAGE_SIZE - 1 > max_addr {
                        return None;
                    }
                    set(&mut *map, first, count, true);
                    return Some(PhysAddr::new(base));
                }
            }
        }
        None
    }

    /// Frees pages `alloc_coherent_pages` returned. A range outside the window is ignored.
    fn free_coherent_pages(&self, base: PhysAddr, pages: u64) {
        let inside = pages
            .checked_mul(PAGE_SIZE)
            .is_some_and(|len| COHERENT_WINDOW.contains(base.as_u64(), len));
        if !inside {
            return;
        }
        let first = ((base.as_u64() - COHERENT_WINDOW.start) / PAGE_SIZE) as usize;
        set(&mut *self.used.lock(), first, pages as usize, false);
    }
}
