//! Growing pools without blocking the map path.
//!
//! Pools of DMA memory (bounce pools, the coherent pool) are asked for memory in contexts
//! that must not sleep, so they cannot allocate pages themselves. When one runs low it
//! *requests* growth through a [`GrowthHook`]; whoever implements the hook (a kernel
//! workqueue, a background thread, or a plain callback that allocates on the spot where that
//! is allowed) obtains the memory later and hands it to the pool. A pool keeps at most one
//! request outstanding, so a burst of failures does not flood the hook. With `std`,
//! `GrowthWorker` is such a hook served by a background thread.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use alloc::sync::Arc;

#[cfg(feature = "std")]
mod worker;
#[cfg(feature = "std")]
pub use worker::GrowthWorker;

/// A pool's request for more memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowthRequest {
    /// Which pool asks (its name, for logs).
    pub pool: &'static str,
    /// The least number of bytes that would satisfy the request that triggered it.
    pub min_bytes: u64,
    /// The memory must lie at or below this address (the pool's reach).
    pub max_addr: u64,
}

/// Receives growth requests. Called on the map path, possibly in atomic context: it must not
/// block. It answers later by adding memory to the pool that asked.
///
/// A hook allowed to allocate on the spot may add the memory at once and then call
/// [`crate::DmaMapper::retry_deferred`], even from inside the map that asked. A hook that
/// finds no memory reports it to the pool (e.g. `SwiotlbBounce::growth_failed`) and does
/// **not** retry: a retry tells waiting mappings that room was made, so each would try
/// again, fail, ask again and be retried again, without end.
pub trait GrowthHook: Send + Sync {
    /// A pool asks for memory.
    fn request(&self, req: GrowthRequest);
}

impl<F: Fn(GrowthRequest) + Send + Sync> GrowthHook for F {
    fn request(&self, req: GrowthRequest) {
        self(req)
    }
}

/// The growth state a pool keeps: the hook, whether growth is enabled, and whether a request
/// is outstanding.
pub(crate) struct Growth {
    hook: Option<Arc<dyn GrowthHook>>,
    pending: AtomicBool,
    grown: AtomicU64,
}

impl Growth {
    pub(crate) fn new(hook: Option<Arc<dyn GrowthHook>>) -> Self {
        Self {
            hook,
            pending: AtomicBool::new(false),
            grown: AtomicU64::new(0),
        }
    }

    /// Sends `req` unless growth is disabled or a request is already outstanding.
    /// Returns whether growth is (now) pending.
    pub(crate) fn request(&self, req: GrowthRequest) -> bool {
        let Some(hook) = &self.hook else {
            return false;
        };
        if !self.pending.swap(true, Ordering::AcqRel) {
            hook.request(req);
        }
        true
    }

    /// Memory arrived (or the grower gave up): the next shortage may request again.
    pub(crate) fn completed(&self) {
        self.pending.store(false, Ordering::Release);
    }

    /// Memory arrived: counts a growth event if a request was outstanding, then as
    /// [`Growth::completed`].
    pub(crate) fn grew(&self) {
        if self.pending.swap(false, Ordering::AcqRel) {
            self.grown.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many outstanding requests were answered with memory.
    pub(crate) fn events(&self) -> u64 {
        self.grown.load(Ordering::Relaxed)
    }

    /// Whether a request is outstanding.
    pub(crate) fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }
}
