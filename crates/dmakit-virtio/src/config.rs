//! What [`crate::install`] is given: the DMA layer, the device, the linear map, and the
//! pool-full policy.

use dmakit::linear_map::LinearMap;
use dmakit::{Device, DmaOps};

/// What a share does when the bounce pool has no room now.
#[derive(Clone, Copy, Debug)]
pub enum WhenPoolFull {
    /// Panic at once, naming the buffer and the pool's usage: for callers that may not
    /// wait (a HAL used from interrupt handlers).
    Panic,
    /// Call `relax` (the platform's pause: `core::hint::spin_loop`, a scheduler yield, a
    /// wait for an interrupt) and try again, at most `max_waits` times; then panic as
    /// [`WhenPoolFull::Panic`]. Room appears when another thread or an interrupt handler
    /// unshares a bounced buffer.
    Wait {
        /// Called once between two tries.
        relax: fn(),
        /// Tries after the first (`u64::MAX`: in practice, forever).
        max_waits: u64,
    },
}

/// Everything the HAL needs, given once to [`crate::install`].
#[derive(Clone)]
pub struct HalConfig {
    /// The DMA layer: a mapper and an allocator behind [`DmaOps`].
    pub ops: &'static (dyn DmaOps + Send + Sync),
    /// The device every virtio device is mapped and allocated as (its DMA mask, cache
    /// line, coherence, bounce pool). With the `access-platform` feature, calls that ask
    /// for platform access use it with `force_bounce` set.
    pub device: Device,
    /// CPU pointers ↔ physical addresses, for every buffer the drivers share and all
    /// memory the allocator hands out.
    pub linear: LinearMap,
    /// What a share does when the bounce pool is full.
    pub when_full: WhenPoolFull,
}
