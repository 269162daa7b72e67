//! What a mapper observes, grouped: the debug checker, the statistics (per device and per
//! call site) and the bounce reporter, with the recording every path shares.

use core::panic::Location;

use super::MapPath;
use crate::addr::{DmaAddr, PhysRange};
use crate::debug::{DebugChecker, LiveMapping, MappingFamily};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::stats::{BounceReporter, DeviceCounters, SiteTable};

/// The mapper's checker, counters, call sites and reporter.
pub(super) struct Observability {
    pub(super) debug: Option<DebugChecker>,
    pub(super) counters: DeviceCounters,
    pub(super) sites: SiteTable,
    /// The share of all bounces, in parts per million, from which a call site gets the
    /// "make this allocation a DMA buffer" suggestion.
    pub(super) suggest_ppm: u64,
    pub(super) reporter: Option<BounceReporter>,
}

impl Observability {
    /// Statistics on for `cpus` CPUs, no checker, no reporter.
    pub(super) fn new(cpus: usize) -> Self {
        Self {
            debug: None,
            counters: DeviceCounters::new(cpus),
            sites: SiteTable::new(cpus),
            suggest_ppm: crate::stats::DEFAULT_SUGGEST_PPM,
            reporter: None,
        }
    }

    /// Tells the debug checker, when it is on, about a single mapping's outcome.
    #[inline]
    pub(super) fn debug_mapped(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        result: &Result<(DmaAddr, MapPath), DmaError>,
    ) {
        if let Some(d) = &self.debug {
            debug_record_mapped(d, dev, range, dir, site, result);
        }
    }

    /// As [`Observability::debug_mapped`] for a mapping that succeeded: the outcome is built
    /// only when the checker is on, so a mapper without it keeps `mapped` in registers.
    #[inline(always)]
    pub(super) fn debug_mapped_ok(
        &self,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        mapped: (DmaAddr, MapPath),
    ) {
        if let Some(d) = &self.debug {
            debug_record_mapped(d, dev, range, dir, site, &Ok(mapped));
        }
    }

    /// Counts a successful mapping; a bounced one is also attributed to its call site and
    /// offered to the reporter.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_mapped(
        &self,
        cpu: usize,
        dev: &Device,
        range: PhysRange,
        dir: Direction,
        site: &'static Location<'static>,
        path: MapPath,
        copied: u64,
    ) {
        let MapPath::Bounced { reason, .. } = path else {
            self.counters.mapped(cpu, dev.id(), dir, None, 0);
            return;
        };
        self.counters
            .mapped(cpu, dev.id(), dir, Some(reason), copied);
        self.sites.record(cpu, site, range.len());
        if let Some(r) = &self.reporter {
            r.bounced(site, dev.id(), reason, range.len(), dir);
        }
        log::trace!(
            "{}: bounced {range:?} ({}) at {site}",
            dev.id(),
            reason.name()
        );
    }
}

/// Tells the debug checker about a single mapping's outcome (out of line: only a mapper
/// with the checker on gets here).
#[inline(never)]
fn debug_record_mapped(
    d: &DebugChecker,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    site: &'static Location<'static>,
    result: &Result<(DmaAddr, MapPath), DmaError>,
) {
    match result {
        Ok((dma, path)) => d.mapped(
            dev,
            LiveMapping {
                device: dev.id(),
                dma: *dma,
                phys: Some(range.start()),
                len: range.len(),
                dir,
                family: MappingFamily::Single,
                site,
                bounced: matches!(path, MapPath::Bounced { .. }),
                coherent_device: dev.is_coherent(),
                cpu_owned: crate::debug::CpuParts::EMPTY,
            },
        ),
        Err(e) => d.map_failed(dev, site, *e),
    }
}
