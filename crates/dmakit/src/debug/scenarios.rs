//! Checker scenarios shared by the unit tests (`tests`) and their controls
//! (`tests/checker_controls.rs`, which put a defect back). Each returns what it saw. They
//! drive the checker directly: no mapping may reach the last page of the address space
//! through the mapper.

extern crate std;

use alloc::string::String;
use alloc::vec::Vec;
use core::panic::Location;

use super::checker::{DebugChecker, LiveMapping};
use super::config::DebugConfig;
use super::family::MappingFamily;
use super::report::DebugIssue;
use crate::addr::PhysAddr;
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::translation::bus_of;

/// The checker's line size in these scenarios.
pub(crate) const LINE: u64 = 128;

/// The first byte of the last cache line of the address space.
pub(crate) const TOP_LINE: u64 = 0u64.wrapping_sub(LINE);

fn dev(id: u32) -> Device {
    Device::builder(DeviceId(id), "top")
        .cache_line(LINE)
        .build()
        .unwrap()
}

#[track_caller]
fn inbound(dev: &Device, phys: u64, len: u64) -> LiveMapping {
    let phys = PhysAddr::new(phys);
    LiveMapping {
        device: dev.id(),
        dma: bus_of(dev, phys).unwrap(),
        phys: Some(phys),
        len,
        dir: Direction::FromDevice,
        family: MappingFamily::Single,
        site: Location::caller(),
        bounced: false,
        coherent_device: false,
        cpu_owned: crate::debug::CpuParts::EMPTY,
    }
}

/// What [`mappings_at_the_top`] saw: every report, in order, or the panic's message.
pub type TopSeen = Result<Vec<DebugIssue>, String>;

/// Inbound, unbounced mappings in the last lines of the address space: two devices share
/// the very last line (a report), a third mapping sits alone in the line below (none), a
/// CPU write hits the first mapping (a report), a CPU read of the last bytes of the address
/// space touches no mapping (none), and both devices are released with their mappings live
/// (three leaks). Runs under `catch_unwind`: arithmetic that overflows is seen, not fatal.
pub fn mappings_at_the_top() -> TopSeen {
    std::panic::catch_unwind(|| {
        let c = DebugChecker::new(
            LINE,
            DebugConfig {
                reports: 100,
                ..DebugConfig::default()
            },
        );
        let (a, b) = (dev(1), dev(2));
        c.mapped(&a, inbound(&a, TOP_LINE + 8, 40));
        c.mapped(&b, inbound(&b, TOP_LINE + 64, 40));
        c.mapped(&a, inbound(&a, TOP_LINE - LINE + 8, 100));
        let _ = c.check_cpu_access(PhysAddr::new(TOP_LINE + 16), 8, true);
        let _ = c.check_cpu_access(PhysAddr::new(u64::MAX - 8), 100, false);
        let _ = c.release_device(&a);
        let _ = c.release_device(&b);
        c.take_reports().into_iter().map(|r| r.issue).collect()
    })
    .map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| String::from(*s))
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}
