//! Remapping single pages uncached: refused.
//!
//! The identity map maps RAM in 2 MiB blocks, so one page's attributes cannot change
//! without splitting its block. Coherent memory comes instead from the window `boot.rs`
//! maps normal non-cacheable for good (`layout::COHERENT_WINDOW`), which the DMA
//! allocator is built over (`DmaAllocator::with_uncached_window`); that allocator never
//! asks to remap anything, so this implementation only has to exist, and refuses.

use dmakit::platform::{CoherentRemap, MemoryFault};
use dmakit::PhysRange;

use super::Aarch64;

impl CoherentRemap for Aarch64 {
    /// # Errors
    /// Always [`MemoryFault`]: this kernel cannot remap pages.
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        Err(MemoryFault {
            addr: range.start(),
            len: range.len(),
        })
    }

    /// Nothing was made uncached.
    fn make_cached(&self, _range: PhysRange) {}
}
