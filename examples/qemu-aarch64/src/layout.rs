//! Where everything lives in the physical address space of QEMU's `virt` machine (`-m 128M`).
//!
//! The MMU maps all of it one to one (virtual = physical), so a pointer is its physical
//! address: `boot.rs` builds the map from these constants and the platform code
//! (`platform/`) checks ranges against them. RAM is laid out as:
//!
//! | range | what |
//! |---|---|
//! | `0x4000_0000..0x4020_0000` | the device tree QEMU places there (unused) |
//! | `0x4020_0000..0x4080_0000` | the kernel image, its BSS, stack and page tables (`linker.ld`) |
//! | [`HEAP`] | the Rust heap (write-back cached) |
//! | [`SWIOTLB`] | dmakit's bounce pool (write-back cached; dmakit maintains it) |
//! | [`PAGES`] | pages for dmakit's transient bounces, from `dmakit-mem`'s zoned allocator |
//! | [`COHERENT_WINDOW`] | normal non-cacheable memory: virtqueues and other coherent memory |

/// A physical range `[start, start + len)`.
#[derive(Clone, Copy)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last byte.
    pub const fn end(self) -> u64 {
        self.start + self.len
    }

    /// Whether `[addr, addr + len)` lies inside the region (false on overflow).
    pub const fn contains(self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => addr >= self.start && end <= self.end(),
            None => false,
        }
    }
}

const MIB: u64 = 1 << 20;

/// All of RAM (`-m 128M`).
pub const RAM: Region = Region {
    start: 0x4000_0000,
    len: 128 * MIB,
};
/// The Rust heap.
pub const HEAP: Region = Region {
    start: 0x4080_0000,
    len: 24 * MIB,
};
/// dmakit's SWIOTLB bounce pool.
pub const SWIOTLB: Region = Region {
    start: 0x4200_0000,
    len: 2 * MIB,
};
/// Pages handed out by the page allocator (transient bounces).
pub const PAGES: Region = Region {
    start: 0x4400_0000,
    len: 16 * MIB,
};
/// Mapped normal non-cacheable: coherent memory for devices. 2 MiB aligned (one block of
/// the identity map's second level per 2 MiB).
pub const COHERENT_WINDOW: Region = Region {
    start: 0x4600_0000,
    len: 16 * MIB,
};

/// The PL011 UART's registers.
pub const UART_BASE: u64 = 0x0900_0000;
/// The first of the 32 virtio-mmio slots.
pub const VIRTIO_MMIO_BASE: u64 = 0x0a00_0000;
/// Distance between two virtio-mmio slots.
pub const VIRTIO_MMIO_STRIDE: u64 = 0x200;
/// Number of virtio-mmio slots.
pub const VIRTIO_MMIO_SLOTS: u64 = 32;
