//! The `coherent-pool` policy's bounce pool and its refill worker.
//!
//! On a small machine a 64 MiB SWIOTLB costs more than 8-byte kmalloc saves. This policy
//! bounces through a [`CoherentBouncePool`] instead: it starts at [`INITIAL_BYTES`] and asks
//! for another [`CHUNK_BYTES`] whenever what it can still hand out falls below
//! [`REFILL_BELOW`]. The request is only recorded on the map path (an atomic flag, nothing
//! allocated, nothing locked); the worker step, run by the scenario between two driver
//! operations, never from a map, takes pages from the machine and adds them. A mapping that
//! meets a full pool before the worker ran fails (the mapper counts it as an exhaustion
//! error), as it would with a real worker thread that has not been scheduled yet.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dmakit::bounce::BounceBackend;
use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::{PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_sim::machine::Machine;
use serde::Serialize;

const KIB: u64 = 1 << 10;
/// The pool's size when the machine starts.
pub const INITIAL_BYTES: u64 = 64 * KIB;
/// What one growth adds.
pub const CHUNK_BYTES: u64 = 64 * KIB;
/// Growth is requested when the pool could no longer serve an object of this size, or its
/// free bytes fall below it.
pub const REFILL_BELOW: u64 = 32 * KIB;
/// The largest bounce the pool serves (the largest bounced buffer of the built-in phone is
/// a 16 KiB frame chunk).
pub const MAX_OBJECT: u64 = 32 * KIB;

/// The growth hook of the map path: records the request and returns.
#[derive(Default)]
struct Requests {
    asked: AtomicBool,
    max_addr: AtomicU64,
}

impl GrowthHook for Requests {
    fn request(&self, req: GrowthRequest) {
        self.max_addr.store(req.max_addr, Ordering::Relaxed);
        self.asked.store(true, Ordering::Release);
    }
}

/// How the pool grew over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolGrowth {
    /// Growth requests the worker answered with memory.
    pub growth_events: u64,
    /// Growth requests the worker could not answer (no RAM below the pool's reach).
    pub growth_failures: u64,
    /// The pool's size over the run: `(transfers done, bytes reserved)`, one entry at the
    /// start and one per growth event.
    pub size_over_time: Vec<(u64, u64)>,
    /// The largest free block once the run unmapped everything: freed objects merge again,
    /// so it is [`MAX_OBJECT`] (each chunk is a multiple of it, aligned to it).
    pub largest_free_at_end: u64,
}

/// A coherent bounce pool with its refill worker.
pub struct CoherentRefill {
    pool: Arc<CoherentBouncePool>,
    requests: Option<Arc<Requests>>,
    reach: u64,
    growth: PoolGrowth,
}

impl CoherentRefill {
    /// A pool of [`INITIAL_BYTES`] taken from `machine` below `reach` (the most constrained
    /// device's limit), in objects of at least `line` bytes. `refill`: whether the worker
    /// grows it (false: the pool never grows, the control that shows it running dry).
    ///
    /// # Errors
    /// A message when the machine has no room for the pool below `reach`, or `line` is not a
    /// power of two from 64 to [`MAX_OBJECT`].
    pub fn new(machine: &Machine, line: u64, reach: u64, refill: bool) -> Result<Self, String> {
        let requests = refill.then(|| Arc::new(Requests::default()));
        let cfg = ObjectPoolConfig {
            min_object: line.max(64),
            max_object: MAX_OBJECT,
            chunk_bytes: CHUNK_BYTES,
            refill_below: REFILL_BELOW,
            name: "coherent-pool",
        };
        let hook = requests.clone().map(|r| r as Arc<dyn GrowthHook>);
        let pool = CoherentBouncePool::new(cfg, hook)
            .map_err(|e| format!("coherent pool (objects of {line} bytes): {e}"))?;
        let base = coherent_pages(machine, INITIAL_BYTES, reach)
            .ok_or_else(|| format!("no room for the coherent pool below {reach:#x}"))?;
        pool.add_chunk(base, INITIAL_BYTES)
            .map_err(|e| format!("coherent pool: {e}"))?;
        Ok(Self {
            pool: Arc::new(pool),
            requests,
            reach,
            growth: PoolGrowth {
                size_over_time: vec![(0, INITIAL_BYTES)],
                ..PoolGrowth::default()
            },
        })
    }

    /// The pool, to give the mapper.
    pub fn pool(&self) -> &Arc<CoherentBouncePool> {
        &self.pool
    }

    /// The worker's step: if the pool asked for memory, takes [`CHUNK_BYTES`] of pages
    /// below its reach from `machine` and adds them (or tells the pool none was found).
    /// `done` is the transfers done so far, for the size-over-time record. Runs outside
    /// every mapping; does nothing without refill.
    ///
    /// # Errors
    /// A message if the pool refuses a chunk the machine handed out (a bug).
    pub fn step(&mut self, machine: &Machine, done: u64) -> Result<(), String> {
        let Some(r) = &self.requests else {
            return Ok(());
        };
        if !r.asked.swap(false, Ordering::Acquire) {
            return Ok(());
        }
        let limit = r.max_addr.load(Ordering::Relaxed).min(self.reach);
        match coherent_pages(machine, CHUNK_BYTES, limit) {
            Some(base) => {
                self.pool
                    .add_chunk(base, CHUNK_BYTES)
                    .map_err(|e| format!("coherent pool growth: {e}"))?;
                self.growth.growth_events += 1;
                self.growth
                    .size_over_time
                    .push((done, self.pool.usage().total));
            }
            None => {
                self.pool.objects().growth_failed();
                self.growth.growth_failures += 1;
            }
        }
        Ok(())
    }

    /// How the pool grew so far, with the largest free block as it is now.
    pub fn growth(&self) -> PoolGrowth {
        PoolGrowth {
            largest_free_at_end: self.pool.objects().usage().largest_free,
            ..self.growth.clone()
        }
    }
}

/// `bytes` of pages below `limit`, aligned to [`MAX_OBJECT`] (so the buddy allocator can cut
/// them into its largest objects) and made uncached: coherent memory, as the kernel's DMA
/// coherent pool is. `MAX_OBJECT` more bytes are taken for the alignment (they stay
/// allocated), so what the machine hands out next stays as aligned as before; `None` when
/// the machine has no such room.
fn coherent_pages(machine: &Machine, bytes: u64, limit: u64) -> Option<PhysAddr> {
    let raw = machine.alloc_pages_between((bytes + MAX_OBJECT) / PAGE_SIZE, 0, limit)?;
    let base = PhysAddr::new(raw.as_u64().next_multiple_of(MAX_OBJECT));
    machine.set_uncached(PhysRange::new(base, bytes)?);
    Some(base)
}
