//! What the debug checker reports.

use core::fmt;
use core::panic::Location;

use super::detail::{explain, Detail, Subject};
use crate::addr::DmaAddr;
use crate::device::DeviceId;

/// The class of a driver bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DebugIssue {
    /// Unmap or free of an address that is not a live mapping of the device.
    NotMapped,
    /// The address is not mapped, and the device's latest mapping request at that site
    /// failed: the failed result was used as if it were an address.
    UncheckedMapError,
    /// Unmap with a size different from the mapping's.
    WrongSize,
    /// Unmap or sync in a direction the mapping does not allow.
    WrongDirection,
    /// Unmap through another API family than the mapping (single, sg, coherent).
    WrongFamily,
    /// sg unmap with a different number of entries than were mapped.
    WrongSgCount,
    /// Sync of bytes outside the mapping.
    SyncOutOfRange,
    /// Two live inbound mappings share a cache line and neither is bounced.
    SharedInboundLine,
    /// Mappings or allocations still live when the device is released.
    Leak,
    /// The CPU read an inbound buffer while the device owns it (before `sync_for_cpu` or
    /// unmap).
    CpuReadWhileDeviceOwns,
    /// The CPU wrote a buffer while the device owns it.
    CpuWriteWhileDeviceOwns,
}

impl DebugIssue {
    /// A short kebab-case name.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            DebugIssue::NotMapped => "not-mapped",
            DebugIssue::UncheckedMapError => "unchecked-map-error",
            DebugIssue::WrongSize => "wrong-size",
            DebugIssue::WrongDirection => "wrong-direction",
            DebugIssue::WrongFamily => "wrong-family",
            DebugIssue::WrongSgCount => "wrong-sg-count",
            DebugIssue::SyncOutOfRange => "sync-out-of-range",
            DebugIssue::SharedInboundLine => "shared-inbound-line",
            DebugIssue::Leak => "leak",
            DebugIssue::CpuReadWhileDeviceOwns => "cpu-read-while-device-owns",
            DebugIssue::CpuWriteWhileDeviceOwns => "cpu-write-while-device-owns",
        }
    }
}

/// One detected driver bug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebugReport {
    /// What went wrong.
    pub issue: DebugIssue,
    /// The device.
    pub device: DeviceId,
    /// The address the offending call named.
    pub dma: DmaAddr,
    /// The size the offending call named.
    pub len: u64,
    /// Where the offending call was made (`None` for checks made outside an API call,
    /// such as a model's CPU access).
    pub site: Option<&'static Location<'static>>,
    /// Where the mapping concerned was made, when there is one.
    pub mapped_at: Option<&'static Location<'static>>,
    /// The facts the message is written from (kept as values: a report is made inside
    /// map, unmap and sync calls, which must not allocate).
    pub(crate) detail: Detail,
}

impl DebugReport {
    /// The full explanation (formatted now: allocates).
    pub fn message(&self) -> alloc::string::String {
        alloc::format!("{}", Message(self))
    }
}

/// The explanation alone, as `Display`.
struct Message<'a>(&'a DebugReport);

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.0;
        let subject = Subject {
            device: r.device,
            dma: r.dma,
            len: r.len,
            site: r.site,
            mapped_at: r.mapped_at,
        };
        explain(subject, r.detail, f)
    }
}

impl fmt::Display for DebugReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DMA-API: {}: {}", self.issue.name(), Message(self))
    }
}
