//! Sharing memory with the host, for confidential guests.
//!
//! In a confidential guest (AMD SEV, Intel TDX, Arm CCA) memory is private to the guest
//! unless the guest converts it: a device, emulated or passed through by the host, can
//! reach only memory the guest has shared. DMA then works only through bounce memory that
//! was shared before any device used it, so every device bounces (force-bounce) and the
//! pools share their memory when they receive it. [`MemorySharing`] is the platform's
//! conversion; [`HostSharing`] is what a pool or allocator holds: nothing to do on a
//! platform that is not confidential, else the platform's hook.

use alloc::sync::Arc;

use super::MemoryFault;
use crate::addr::PhysRange;

/// Converts memory between private to the guest and shared with the host (Linux
/// `set_memory_decrypted` / `set_memory_encrypted`).
///
/// Contract:
/// - **Page granular**: both calls act on every page overlapping the range, whole.
/// - After [`MemorySharing::share`] returns `Ok`, devices may read and write those pages
///   until [`MemorySharing::unshare`] is called for them; after `unshare` returns no device
///   reaches them. What the pages held before either conversion is lost: dmakit converts
///   only memory it holds for DMA and writes it before a device or the CPU reads it.
/// - A failed `share` leaves every page of the range private (undoing any part it
///   converted) and reports the first page it could not convert.
/// - `unshare` cannot fail: the memory goes back to its allocator afterwards and will
///   hold private data, so a platform whose conversion can fail must retry or stop the
///   guest rather than return.
/// - Conversions may be slow and may allocate (they change page tables and ask the
///   hypervisor): dmakit calls them where pool memory is obtained or given back (building
///   a pool, adding a region or chunk, [`crate::dma_alloc::DmaAllocator`] allocations that
///   may block), never under a lock a map path takes. The one exception is the transient
///   pool, which takes and returns pages at map and unmap time and converts them there: a
///   platform whose conversions cannot run where maps run must not configure it.
///
/// Not an `unsafe trait`: no code of dmakit relies on it for memory safety. An
/// implementation that breaks the contract makes devices fault or shows the host bytes it
/// should not see; it cannot make dmakit read or write memory it does not own.
pub trait MemorySharing: Send + Sync {
    /// Shares the pages overlapping `range` with the host.
    ///
    /// # Errors
    /// [`MemoryFault`] naming the first page that could not be converted; every page of
    /// the range is private then.
    fn share(&self, range: PhysRange) -> Result<(), MemoryFault>;
    /// Makes the pages overlapping `range` private again.
    fn unshare(&self, range: PhysRange);
}

/// The sharing a pool or allocator performs on the memory it receives and gives back: none
/// (the default, for platforms that are not confidential), or the platform's
/// [`MemorySharing`] hook.
#[derive(Clone, Default)]
pub struct HostSharing {
    hook: Option<Arc<dyn MemorySharing>>,
    /// Skip every conversion (model/test-only; set through
    /// `HostSharing::with_controls`).
    #[cfg(feature = "hazard-controls")]
    pub(crate) skip: bool,
}

impl HostSharing {
    /// Sharing through `hook`.
    pub fn new(hook: Arc<dyn MemorySharing>) -> Self {
        Self {
            hook: Some(hook),
            #[cfg(feature = "hazard-controls")]
            skip: false,
        }
    }

    /// Whether memory is shared (a hook is configured).
    pub fn is_active(&self) -> bool {
        self.hook.is_some()
    }

    /// Shares `range` with the host; nothing to do without a hook. (For pools: a bounce
    /// backend of its own calls it on memory it receives, outside its locks.)
    ///
    /// # Errors
    /// The hook's [`MemoryFault`]; the range is private then.
    pub fn share(&self, range: PhysRange) -> Result<(), MemoryFault> {
        match self.converter() {
            Some(h) => h.share(range),
            None => Ok(()),
        }
    }

    /// Makes `range` private again; nothing to do without a hook.
    pub fn unshare(&self, range: PhysRange) {
        if let Some(h) = self.converter() {
            h.unshare(range);
        }
    }

    /// The hook to convert through, unless there is none or conversions are skipped.
    fn converter(&self) -> Option<&dyn MemorySharing> {
        #[cfg(feature = "hazard-controls")]
        if self.skip {
            return None;
        }
        self.hook.as_deref()
    }
}

impl core::fmt::Debug for HostSharing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostSharing")
            .field("active", &self.is_active())
            .finish()
    }
}
