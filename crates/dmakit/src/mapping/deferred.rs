//! Deferred mappings: a caller that can wait queues a mapping the full pool cannot take, and
//! frees complete the queue (FreeBSD's `BUS_DMA_WAITOK` loads).
//!
//! The queue is one list in request order, served as one FIFO **per device**: only a
//! device's oldest entry is ever tried, so its completions come in request order, but a
//! device whose head cannot fit does not hold up another device whose pool has room.
//!
//! No map attempt, growth hook or completion callback runs with the queue's lock held: an
//! entry being tried is *claimed* (it stays queued, and no other thread tries that device),
//! the lock is dropped for the attempt, and the entry is settled under the lock afterwards.
//! A counter of room events (frees, explicit retries) closes the window between a failed
//! attempt and the moment its entry is queued or put back: whoever saw a room event during
//! its attempt tries again instead of waiting for the next one.

use core::panic::Location;
use core::sync::atomic::{fence, Ordering};

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use super::{checked_range, DeferredCompletion, DmaMapper, MapPath, MapStatus, Route};
use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::path::MapFailure;
use crate::bounce::BounceAllocError;
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::error::DmaError;
use crate::platform::Platform;
use crate::reintroduce::{active, Defect};

/// One waiting mapping.
pub(super) struct Deferred {
    /// Identifies the entry while it is claimed and the lock is dropped.
    seq: u64,
    dev: Device,
    range: PhysRange,
    dir: Direction,
    site: &'static Location<'static>,
    done: DeferredCompletion,
    /// A thread is trying it right now (with the lock dropped).
    claimed: bool,
    /// `release_device` asked for it while it was claimed: the trying thread ends it.
    cancelled: bool,
    /// The room-event count at its last attempt that found no room: it is not tried again
    /// until another room event.
    failed_at: Option<u64>,
}

/// The waiting mappings of every device, oldest first, at most `capacity` of them.
///
/// The room is allocated once, here: queueing a mapping (on a map path, in interrupt
/// context) never allocates, and a full queue refuses with [`DmaError::DeferQueueFull`].
pub(super) struct DeferQueue {
    entries: VecDeque<Deferred>,
    capacity: usize,
    next_seq: u64,
}

impl DeferQueue {
    /// Deferred mappings a mapper's queue holds unless
    /// [`super::DmaMapperBuilder::deferred_capacity`] says otherwise.
    pub(super) const DEFAULT_CAPACITY: usize = 256;

    /// A queue with room for `capacity` waiting mappings. Allocates: call outside atomic
    /// context (the builder does).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity,
            next_seq: 0,
        }
    }

    /// Whether a new request of `dev` must queue behind an older one (FIFO per device).
    fn holds_up(&self, dev: DeviceId, behind_all: bool) -> bool {
        if behind_all || active(Defect::DeferSingleFifo) {
            return !self.entries.is_empty();
        }
        self.entries.iter().any(|e| e.dev.id() == dev)
    }

    /// The next entry to try: the oldest entry of a device that has none claimed, unless
    /// it already failed since the last room event `now`.
    fn next_candidate(&self, now: u64) -> Option<usize> {
        let single_fifo = active(Defect::DeferSingleFifo);
        for (i, e) in self.entries.iter().enumerate() {
            let heads_its_device = self
                .entries
                .iter()
                .take(i)
                .all(|o| o.dev.id() != e.dev.id());
            if heads_its_device && !e.claimed && e.failed_at != Some(now) {
                return Some(i);
            }
            if single_fifo {
                return None;
            }
        }
        None
    }

    fn position(&self, seq: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.seq == seq)
    }
}

impl<P: Platform> DmaMapper<P> {
    /// Maps like [`DmaMapper::map`], but when the bounce pool is full the request waits
    /// instead of failing, and `done` is called with the result once room frees up
    /// (FreeBSD's `BUS_DMA_WAITOK` loads). Requests of one device complete in request
    /// order: while one waits, newer ones of that device queue behind it. Other devices are
    /// not held up. `done` runs, without any lock of the mapper held, on the thread whose
    /// unmap (or [`DmaMapper::retry_deferred`] call, or growth hook) made room, or on the
    /// thread of [`DmaMapper::release_device`].
    ///
    /// A buffer that needs no bounce (the direct path) is mapped at once, whatever waits.
    /// The pool's growth hook may call [`DmaMapper::retry_deferred`] synchronously.
    ///
    /// # Errors
    /// Every error of [`DmaMapper::map`] except exhaustion, at once; then `done` is dropped
    /// uncalled. That includes [`DmaError::TooLargeToBounce`] for a request no free could
    /// ever satisfy, when the device's pool can tell (the SWIOTLB pool can) or the request
    /// is tried at once. [`DmaError::DeferQueueFull`] when it would wait but the queue
    /// holds its capacity ([`crate::DmaMapperBuilder::deferred_capacity`]): queueing never
    /// allocates.
    ///
    /// # Safety
    /// As [`DmaMapper::map`], from this call on: the buffer is the device's while the
    /// request waits, too, until the mapping `done` reports is unmapped (or `done` reports
    /// a failure, or the call returns an error).
    #[track_caller]
    pub unsafe fn map_or_defer(
        &self,
        dev: &Device,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
        done: DeferredCompletion,
    ) -> Result<MapStatus, DmaError> {
        self.controls.with_bus_view(dev, (), |dev, ()| {
            let range = checked_range(dev, phys, len)?;
            let site = Location::caller();
            let route = self.route(dev, range, dir);
            if let (Route::Direct(dma), false) = (&route, active(Defect::DeferUnneededMapping)) {
                let mapped = (self.map_direct(dev, range, dir, *dma), MapPath::Direct);
                self.obs.debug_mapped(dev, range, dir, site, &Ok(mapped));
                return Ok(MapStatus::Mapped(mapped.0));
            }
            self.never_fits(dev, range, &route)?;
            // Announce the waiter before trying, so a free racing with a failed attempt either
            // sees the announcement (and drains the queue) or happened before the attempt
            // (which then found its room): the backend's locks order both sides (see
            // `room_freed`).
            self.waiting.fetch_add(1, Ordering::SeqCst);
            loop {
                let seen = self.room_events.load(Ordering::SeqCst);
                // The defect put back: the queue's lock stays held across the attempt.
                let held = active(Defect::DeferHookUnderLock).then(|| self.deferred.lock());
                // The defect put back: a buffer that needs no bounce waits behind anything.
                let behind_all =
                    active(Defect::DeferUnneededMapping) && matches!(route, Route::Direct(_));
                let held_up = match &held {
                    Some(q) => q.holds_up(dev.id(), behind_all),
                    None => self.deferred.lock().holds_up(dev.id(), behind_all),
                };
                if !held_up {
                    match self.map_range(dev, range, dir, site) {
                        Ok(mapped) => {
                            drop(held);
                            self.waiting.fetch_sub(1, Ordering::SeqCst);
                            self.obs.debug_mapped(dev, range, dir, site, &Ok(mapped));
                            return Ok(MapStatus::Mapped(mapped.0));
                        }
                        Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) => {}
                        Err(f) => {
                            drop(held);
                            self.waiting.fetch_sub(1, Ordering::SeqCst);
                            return Err(self.failure_to_error(dev, range, f));
                        }
                    }
                }
                let mut queue = match held {
                    Some(q) => q,
                    None => self.deferred.lock(),
                };
                if self.room_events.load(Ordering::SeqCst) != seen
                    && !active(Defect::DeferHookUnderLock)
                {
                    // Room may have freed after the attempt, and its drain did not see this
                    // request: look again rather than wait for the next free.
                    continue;
                }
                if queue.entries.len() >= queue.capacity && !self.controls.grows_defer_queue() {
                    let capacity = queue.capacity;
                    drop(queue);
                    self.waiting.fetch_sub(1, Ordering::SeqCst);
                    return Err(DmaError::DeferQueueFull {
                        device: dev.id(),
                        capacity,
                    });
                }
                let seq = queue.next_seq;
                queue.next_seq += 1;
                queue.entries.push_back(Deferred {
                    seq,
                    dev: dev.clone(),
                    range,
                    dir,
                    site,
                    done,
                    claimed: false,
                    cancelled: false,
                    failed_at: None,
                });
                break;
            }
            self.obs
                .counters
                .deferred(self.platform.current_cpu(), dev.id());
            Ok(MapStatus::Deferred)
        })
    }

    /// Refuses at once what waiting cannot help: a bounce with no pool, or one larger than
    /// the pool's largest.
    fn never_fits(&self, dev: &Device, range: PhysRange, route: &Route) -> Result<(), DmaError> {
        let Route::Bounce(_) = route else {
            return Ok(());
        };
        let Some(backend) = self.bounce_backend(dev) else {
            return Err(DmaError::NoBouncePool {
                device: dev.id(),
                phys: range.start(),
                len: range.len(),
            });
        };
        if active(Defect::DeferTooLarge) {
            return Ok(());
        }
        match backend.max_bounce(dev.min_align_mask()) {
            Some(max) if range.len() > max => Err(DmaError::TooLargeToBounce {
                device: dev.id(),
                len: range.len(),
                max,
            }),
            _ => Ok(()),
        }
    }

    /// Room was freed: completes deferred mappings if any may be waiting. Takes no lock,
    /// executes no fence or locked instruction and writes nothing shared when nobody waits.
    ///
    /// Why no wake-up is lost without a fence: the free that made the room took the lock
    /// guarding that room (a SWIOTLB area's lock) before this load, and a waiter announces
    /// itself (`waiting`, a read-modify-write) before an attempt whose failure is decided
    /// under every such lock (a failed SWIOTLB allocation locks each reachable area, see
    /// `Pool::alloc_below`; the coherent pool has one lock). The lock is taken by one side
    /// first: if the free took it after the waiter's attempt released it, the announcement
    /// happens before this load, which sees it and drains the queue; otherwise the attempt
    /// took it after the free and found the room. A backend whose failed allocation
    /// decides from state read without the lock its frees take would need a fence here.
    pub(super) fn room_freed(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room_events.fetch_add(1, Ordering::SeqCst);
            self.drain_deferred();
        }
    }

    /// Number of deferred mappings waiting for room.
    pub fn deferred_len(&self) -> usize {
        self.deferred.lock().entries.len()
    }

    /// Completes waiting deferred mappings, each device's in order, while they fit. Called
    /// automatically after every bounced unmap; call it after adding memory to a pool. May
    /// be called from a growth hook, also synchronously from inside a map.
    pub fn retry_deferred(&self) {
        self.room_events.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.drain_deferred();
    }

    fn drain_deferred(&self) {
        loop {
            let now = self.room_events.load(Ordering::SeqCst);
            let (seq, dev, range, dir, site) = {
                let mut queue = self.deferred.lock();
                let Some(i) = queue.next_candidate(now) else {
                    return;
                };
                let e = &mut queue.entries[i];
                e.claimed = true;
                (e.seq, e.dev.clone(), e.range, e.dir, e.site)
            };
            let result = self.map_range(&dev, range, dir, site);
            let mut queue = self.deferred.lock();
            let Some(i) = queue.position(seq) else {
                // Only the claiming thread removes a claimed entry: cannot happen. Undo
                // rather than leak.
                drop(queue);
                if let Ok((dma, _)) = result {
                    let _ = self.unmap_range(&dev, dma, range.len(), dir);
                }
                continue;
            };
            if let Err(MapFailure::NoRoom(BounceAllocError::Full { .. })) = result {
                if !queue.entries[i].cancelled {
                    let e = &mut queue.entries[i];
                    e.claimed = false;
                    e.failed_at = Some(now);
                    continue;
                }
            }
            let Some(entry) = queue.entries.remove(i) else {
                continue;
            };
            drop(queue);
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if entry.cancelled {
                if let Ok((dma, _)) = result {
                    // Mapped for a device that was released meanwhile: undo it. The
                    // mapping was never seen by anyone, so this cannot be refused.
                    let _ = self.unmap_range(&dev, dma, range.len(), dir);
                }
                (entry.done)(Err(DmaError::DeviceReleased { device: dev.id() }));
                continue;
            }
            let result = result.map_err(|f| self.failure_to_error(&dev, range, f));
            self.obs.debug_mapped(&dev, range, dir, site, &result);
            (entry.done)(result.map(|(dma, _)| dma));
        }
    }

    /// Takes every waiting mapping of `dev` out of the queue and completes it with
    /// [`DmaError::DeviceReleased`], outside the queue's lock. One being tried by another
    /// thread at this moment is completed (and, had it just been mapped, unmapped again)
    /// by that thread, with the same error. Returns how many were taken out here.
    pub(super) fn cancel_deferred(&self, dev: &Device) -> usize {
        if active(Defect::DeferSurvivesRelease) {
            return 0;
        }
        let taken: Vec<Deferred> = {
            let mut queue = self.deferred.lock();
            let mut taken = Vec::new();
            let mut i = 0;
            while i < queue.entries.len() {
                let e = &mut queue.entries[i];
                if e.dev.id() != dev.id() {
                    i += 1;
                } else if e.claimed {
                    e.cancelled = true;
                    i += 1;
                } else if let Some(e) = queue.entries.remove(i) {
                    taken.push(e);
                }
            }
            taken
        };
        let n = taken.len();
        for e in taken {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            (e.done)(Err(DmaError::DeviceReleased { device: dev.id() }));
        }
        n
    }
}
