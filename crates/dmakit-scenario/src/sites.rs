//! Distinct call sites for the simulated drivers' mappings.
//!
//! The mapper attributes each bounce to the line of code that asked for the mapping (its
//! entry points are `#[track_caller]`). Real drivers each map from their own line; the
//! simulated ones are described in a scenario file, so each transfer pattern is given one of
//! the lines below as its call site, and the report translates the line back to the
//! pattern's name. The statistics themselves are the mapper's own.

use std::panic::Location;

use dmakit::{Direction, PhysRange, Platform};

use dmakit_sim::memory::Owner;
use dmakit_sim::transfer::{Neighbour, Started, Transfer};
use dmakit_sim::workload::WorkloadError;

/// How many distinct call sites there are (transfer patterns a scenario may declare).
pub const SITES: usize = 32;

/// One transfer's arguments.
pub struct Args<'a> {
    /// The buffer.
    pub buf: PhysRange,
    /// The direction.
    pub dir: Direction,
    /// The buffer's owner.
    pub owner: Owner,
    /// What the CPU keeps using meanwhile.
    pub neighbours: &'a [Neighbour],
    /// The label to track the buffer under from the transfer's preparation on, for a
    /// buffer the oracle does not track yet ([`Transfer::start_fresh`]); `None` for one
    /// already tracked.
    pub fresh: Option<&'static str>,
}

#[track_caller]
fn go<P: Platform>(
    t: &mut Transfer<'_, P>,
    a: &Args<'_>,
    seen: &mut Option<&'static Location<'static>>,
) -> Result<Started, WorkloadError> {
    seen.get_or_insert(Location::caller());
    match a.fresh {
        None => t.start(a.buf, a.dir, a.owner, a.neighbours),
        Some(label) => t.start_fresh(a.buf, a.dir, a.owner, a.neighbours, label),
    }
}

/// Starts the transfer (maps it) from call site number `site` (`< SITES`), recording that
/// site's location in `seen` the first time; [`Transfer::complete`] finishes it.
///
/// # Errors
/// As [`Transfer::start`]; [`WorkloadError::Config`] for a site number out of range.
pub fn run_at<P: Platform>(
    site: usize,
    t: &mut Transfer<'_, P>,
    a: &Args<'_>,
    seen: &mut Option<&'static Location<'static>>,
) -> Result<Started, WorkloadError> {
    let s = seen;
    match site {
        0 => go(t, a, s),
        1 => go(t, a, s),
        2 => go(t, a, s),
        3 => go(t, a, s),
        4 => go(t, a, s),
        5 => go(t, a, s),
        6 => go(t, a, s),
        7 => go(t, a, s),
        8 => go(t, a, s),
        9 => go(t, a, s),
        10 => go(t, a, s),
        11 => go(t, a, s),
        12 => go(t, a, s),
        13 => go(t, a, s),
        14 => go(t, a, s),
        15 => go(t, a, s),
        16 => go(t, a, s),
        17 => go(t, a, s),
        18 => go(t, a, s),
        19 => go(t, a, s),
        20 => go(t, a, s),
        21 => go(t, a, s),
        22 => go(t, a, s),
        23 => go(t, a, s),
        24 => go(t, a, s),
        25 => go(t, a, s),
        26 => go(t, a, s),
        27 => go(t, a, s),
        28 => go(t, a, s),
        29 => go(t, a, s),
        30 => go(t, a, s),
        31 => go(t, a, s),
        _ => Err(WorkloadError::Config("call site number out of range")),
    }
}
