//! Where bounces happen, and what they cost.
//!
//! dmakit fixes misaligned DMA by bouncing it, so correctness no longer depends on how an
//! allocation was aligned — but every bounce costs copies and pool memory. These statistics
//! say which devices bounce, why, how many bytes were copied, how full the pools are, and —
//! because every public mapping entry point is `#[track_caller]` — **which line of driver
//! code** asked for each bounced mapping, so the hot ones can be fixed by allocating their
//! buffers as DMA buffers. Nothing here takes a lock on the map path: counters are atomics,
//! striped by CPU so CPUs do not fight over one cache line.
//!
//! A counter is updated with a relaxed load and a relaxed store (`per_cpu_add`), not
//! with a locked read-modify-write: a map or unmap pays no locked instruction for its
//! statistics. Each stripe has one writer when the platform's `current_cpu` names the CPU
//! running the path and the path is not interrupted there by another mapping between the
//! load and the store; then every count is exact. Where two threads update one stripe at
//! the same instant (host threads declaring the same CPU, or an interrupt handler mapping
//! on the CPU it interrupted), one of the two increments can be lost: the statistics then
//! undercount, never overcount, never tear a value, and never affect a mapping.

mod breakdown;
mod devices;
mod reporter;
mod sites;

pub use breakdown::{ByDirection, ByReason};
pub use devices::DeviceStats;
pub use reporter::{BounceReport, BounceReporter, ReportSink};
pub use sites::{SiteStats, DEFAULT_SUGGEST_PPM};

pub(crate) use devices::DeviceCounters;
pub(crate) use sites::SiteTable;

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::vec::Vec;

use crate::bounce::PoolUsage;

/// Adds `n` to a counter of the calling CPU's stripe without a locked instruction (see the
/// module docs for when a concurrent add on the same stripe can be lost).
#[inline(always)]
pub(crate) fn per_cpu_add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// A snapshot of one bounce pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The pool's name (`swiotlb`, `coherent-pool`, `transient`).
    pub name: &'static str,
    /// Its occupancy and high-water mark.
    pub usage: PoolUsage,
    /// How many times it grew in answer to its own request for memory.
    pub growth_events: u64,
}

/// A snapshot of all statistics. Counters are read one by one without a lock, so while
/// other threads map they may come from slightly different instants; when the mapper is
/// quiescent they are exact.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Per device, in device id order, for every device that mapped anything.
    pub devices: Vec<DeviceStats>,
    /// Per bounce pool.
    pub pools: Vec<PoolSnapshot>,
    /// Bounces whose call site could not be recorded because the site table was full.
    pub untracked_site_bounces: u64,
}

impl StatsSnapshot {
    /// The sum over all devices.
    pub fn total(&self) -> DeviceStats {
        let mut t = DeviceStats::default();
        for d in &self.devices {
            t.add(d);
        }
        t
    }
}
