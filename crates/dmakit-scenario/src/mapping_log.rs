//! The mappings of a simulated run, in order, with the mapper's own statistics at its end:
//! what `simulate --emit-trace` writes as a Linux trace, and what its replay is checked
//! against.

use dmakit::stats::StatsSnapshot;
use dmakit::{Direction, PhysRange};
use dmakit_sim::transfer::{InFlight, Started};

/// One map or unmap of a transfer pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedOp {
    /// `true` for the unmap.
    pub unmap: bool,
    /// Index of the device in the scenario.
    pub device: u16,
    /// Call site number (transfer pattern, in scenario order).
    pub site: u16,
    /// Direction.
    pub dir: Direction,
    /// The buffer's physical address.
    pub phys: u64,
    /// Its length.
    pub len: u64,
    /// Where the device was told to find it; `None` when the mapping failed.
    pub dma: Option<u64>,
}

/// A run's mappings and the mapper's statistics when it ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappingLog {
    /// Maps and unmaps, in the order they happened.
    pub ops: Vec<LoggedOp>,
    /// The mapper's statistics at the end of the run.
    pub stats: StatsSnapshot,
}

impl MappingLog {
    /// Logs the map of `range` from call site `site` of device `device` (scenario index).
    pub fn mapped(
        &mut self,
        device: usize,
        site: usize,
        range: PhysRange,
        dir: Direction,
        started: &Started,
    ) {
        let dma = match started {
            Started::InFlight(f) => Some(f.dma.as_u64()),
            Started::MapFailed(_) => None,
        };
        self.push(false, device, site, range, dir, dma);
    }

    /// Logs the unmap of the in-flight mapping `f`.
    pub fn unmapped(&mut self, device: usize, site: usize, f: &InFlight) {
        self.push(true, device, site, f.buf, f.dir, Some(f.dma.as_u64()));
    }

    fn push(
        &mut self,
        unmap: bool,
        device: usize,
        site: usize,
        range: PhysRange,
        dir: Direction,
        dma: Option<u64>,
    ) {
        self.ops.push(LoggedOp {
            unmap,
            device: u16::try_from(device).unwrap_or(u16::MAX),
            site: u16::try_from(site).unwrap_or(u16::MAX),
            dir,
            phys: range.start().as_u64(),
            len: range.len(),
            dma,
        });
    }
}
