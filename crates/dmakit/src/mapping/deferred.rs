//! Deferred mappings: a caller that can wait queues a mapping the full pool cannot take, and
//! frees complete the queue in request order (FreeBSD's `BUS_DMA_WAITOK` loads).

use core::panic::Location;
use core::sync::atomic::{fence, Ordering};

use super::{checked_range, DeferredCompletion, DmaMapper, MapStatus};
use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::path::MapFailure;
use crate::bounce::BounceAllocError;
use crate::decision;
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::Platform;

pub(super) struct Deferred {
    dev: Device,
    range: PhysRange,
    dir: Direction,
    site: &'static Location<'static>,
    done: DeferredCompletion,
}

impl<P: Platform> DmaMapper<P> {
    /// Maps like [`DmaMapper::map`], but when the bounce pool is full the request waits in
    /// a FIFO queue instead of failing, and `done` is called with the result once room frees
    /// up (FreeBSD's `BUS_DMA_WAITOK` loads). While requests wait, new ones queue behind
    /// them, so completions come in request order. `done` runs on the thread whose unmap
    /// (or [`DmaMapper::retry_deferred`] call) made room.
    ///
    /// # Errors
    /// Every error of [`DmaMapper::map`] except exhaustion; then `done` is dropped uncalled.
    #[track_caller]
    pub fn map_or_defer(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        done: DeferredCompletion,
    ) -> Result<MapStatus, DmaError> {
        let range = checked_range(dev, phys.as_u64(), len)?;
        let site = Location::caller();
        let mut queue = self.deferred.lock();
        // Announce the waiter before trying, so a free racing with a failed attempt either
        // sees the announcement (and retries the queue) or happened before the attempt
        // (which then found its room): the fences order both sides.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if queue.is_empty() {
            match self.map_range(dev, range, dir, site) {
                Ok(mapped) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    self.debug_mapped(dev, range, dir, site, &Ok(mapped));
                    return Ok(MapStatus::Mapped(mapped.0));
                }
                Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {}
                Err(f) => {
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(self.failure_to_error(dev, range, f));
                }
            }
        } else if decision::bounce_reason(dev, range, dir, self.policy, self.line()).is_some()
            && self.bounce_backend(dev).is_none()
        {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            });
        }
        queue.push_back(Deferred {
            dev: dev.clone(),
            range,
            dir,
            site,
            done,
        });
        self.counters
            .deferred(self.platform.current_cpu(), dev.id());
        Ok(MapStatus::Deferred)
    }

    /// Room was freed: completes deferred mappings if any may be waiting. Takes no shared
    /// lock when nobody waits.
    pub(super) fn room_freed(&self) {
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.retry_deferred();
        }
    }

    /// Number of deferred mappings waiting for room.
    pub fn deferred_len(&self) -> usize {
        self.deferred.lock().len()
    }

    /// Completes waiting deferred mappings, in order, while they fit. Called automatically
    /// after every bounced unmap; call it after adding memory to a pool.
    pub fn retry_deferred(&self) {
        loop {
            let mut queue = self.deferred.lock();
            let Some(head) = queue.pop_front() else {
                return;
            };
            match self.map_range(&head.dev, head.range, head.dir, head.site) {
                Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {
                    queue.push_front(head);
                    return;
                }
                result => {
                    drop(queue);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    let result =
                        result.map_err(|f| self.failure_to_error(&head.dev, head.range, f));
                    self.debug_mapped(&head.dev, head.range, head.dir, head.site, &result);
                    (head.done)(result.map(|(dma, _)| dma));
                }
            }
        }
    }
}
