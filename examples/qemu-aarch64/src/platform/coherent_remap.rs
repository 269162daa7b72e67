//! Coherent memory from a window set aside at boot.
//!
//! The identity map maps RAM in 2 MiB blocks, so single pages cannot be made uncached on
//! demand. Instead `boot.rs` maps [`COHERENT_WINDOW`] normal non-cacheable for good (as a
//! devicetree `shared-dma-pool` with `no-map` would), and the DMA allocator takes its
//! coherent pages from a page allocator over that window only. "Making a range uncached"
//! is then a check that it lies in the window: it always is uncached, and no line of it
//! was ever cached. Pages given back stay uncached, which is harmless: only the window's
//! own page allocator hands them out again.

use dmakit::platform::{CoherentRemap, MemoryFault};
use dmakit::PhysRange;

use super::Aarch64;
use crate::layout::COHERENT_WINDOW;

impl CoherentRemap for Aarch64 {
    /// Succeeds for ranges inside the window (uncached since boot).
    ///
    /// # Errors
    /// [`MemoryFault`] for a range outside the window: this kernel cannot remap it.
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        if COHERENT_WINDOW.contains(range.start().as_u64(), range.len()) {
            Ok(())
        } else {
            Err(MemoryFault {
                addr: range.start(),
                len: range.len(),
            })
        }
    }

    /// The window stays uncached; nothing else was made uncached.
    fn make_cached(&self, _range: PhysRange) {}
}
