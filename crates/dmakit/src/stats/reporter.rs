//! A rate-limited bounce reporter: a statistical sample of where bounces happen.
//!
//! Printing every bounce would drown the log; printing none hides the hot paths. The
//! reporter emits at most one report per interval of platform time (60 s by default),
//! naming the call site of the bounce that happened to trigger it. Since frequent sites
//! trigger most often, the reports land on the hot sites — a sampling profiler for
//! bounces. Reports go to a caller-supplied sink, to the `log` crate at info level, and to
//! `tracing` with the `tracing` feature.

use core::panic::Location;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::boxed::Box;
use alloc::sync::Arc;

use crate::decision::BounceReason;
use crate::device::DeviceId;
use crate::direction::Direction;
use crate::platform::Clock;

/// One sampled bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BounceReport {
    /// The driver line that asked for the mapping.
    pub site: &'static Location<'static>,
    /// The device.
    pub device: DeviceId,
    /// Why it bounced.
    pub reason: BounceReason,
    /// Bytes mapped.
    pub len: u64,
    /// Direction.
    pub dir: Direction,
    /// Platform time of the bounce, in nanoseconds.
    pub at_ns: u64,
    /// Bounces since the previous report, this one included.
    pub bounces_since_last: u64,
}

/// Where reports go.
pub type ReportSink = Box<dyn Fn(&BounceReport) + Send + Sync>;

const NEVER: u64 = u64::MAX;

/// Emits at most one [`BounceReport`] per interval.
pub struct BounceReporter {
    clock: Arc<dyn Clock + Send + Sync>,
    interval_ns: u64,
    sink: ReportSink,
    last: AtomicU64,
    since: AtomicU64,
}

impl BounceReporter {
    /// A reporter that reads time from `clock` and hands reports to `sink`, at most one
    /// every 60 seconds.
    pub fn new(clock: Arc<dyn Clock + Send + Sync>, sink: ReportSink) -> Self {
        Self {
            clock,
            interval_ns: 60_000_000_000,
            sink,
            last: AtomicU64::new(NEVER),
            since: AtomicU64::new(0),
        }
    }

    /// Sets the minimum time between reports.
    pub fn with_interval_ns(mut self, interval_ns: u64) -> Self {
        self.interval_ns = interval_ns;
        self
    }

    /// Called for every bounce; reports it if the interval since the last report passed.
    pub(crate) fn bounced(
        &self,
        site: &'static Location<'static>,
        device: DeviceId,
        reason: BounceReason,
        len: u64,
        dir: Direction,
    ) {
        self.since.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now_ns();
        let last = self.last.load(Ordering::Relaxed);
        if last != NEVER && now.saturating_sub(last) < self.interval_ns {
            return;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return; // Another CPU reports this interval.
        }
        let report = BounceReport {
            site,
            device,
            reason,
            len,
            dir,
            at_ns: now,
            bounces_since_last: self.since.swap(0, Ordering::Relaxed),
        };
        log::info!(
            "dmakit: {} bounced {} bytes ({}, {}) requested at {}; {} bounces since the last report",
            device,
            len,
            reason.name(),
            dir,
            site,
            report.bounces_since_last
        );
        #[cfg(feature = "tracing")]
        tracing::info!(
            device = device.0,
            len,
            reason = reason.name(),
            direction = dir.name(),
            site = %site,
            bounces_since_last = report.bounces_since_last,
            "dmakit bounce sample"
        );
        (self.sink)(&report);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use spin::Mutex;

    struct FakeClock(AtomicU64);
    impl Clock for FakeClock {
        fn now_ns(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn at_most_one_report_per_interval() {
        let clock = Arc::new(FakeClock(AtomicU64::new(5)));
        let seen: Arc<Mutex<Vec<BounceReport>>> = Arc::default();
        let s2 = seen.clone();
        let r = BounceReporter::new(clock.clone(), Box::new(move |rep| s2.lock().push(*rep)))
            .with_interval_ns(1000);
        let site = Location::caller();
        for t in [5u64, 100, 999, 1004, 1005, 1500, 2004, 2005] {
            clock.0.store(t, Ordering::Relaxed);
            r.bounced(
                site,
                DeviceId(1),
                BounceReason::Misaligned,
                13,
                Direction::FromDevice,
            );
        }
        let seen = seen.lock();
        let times: Vec<u64> = seen.iter().map(|r| r.at_ns).collect();
        assert_eq!(times, [5, 1005, 2005]);
        let counts: Vec<u64> = seen.iter().map(|r| r.bounces_since_last).collect();
        assert_eq!(counts, [1, 4, 3]);
    }
}
