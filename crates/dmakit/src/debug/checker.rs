//! The shadow table and its checks.

use core::panic::Location;
use core::sync::atomic::{AtomicU64, Ordering};

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::fixed_table::FixedMap;
use crate::sync::Mutex;

use super::config::DebugConfig;
use super::cpu_parts::{CpuParts, MAX_CPU_PARTS};
use super::detail::Detail;
use super::family::MappingFamily;
use super::report::{DebugIssue, DebugReport};
use crate::addr::{DmaAddr, PhysAddr};
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::error::DmaError;
use crate::reintroduce::{active, Defect};

/// A live mapping as the checker records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveMapping {
    /// The device.
    pub device: DeviceId,
    /// Its address for the device.
    pub dma: DmaAddr,
    /// The CPU buffer behind it, when it is one contiguous range (not for IOMMU-merged
    /// scatter-gather segments); CPU-ownership and shared-line checks need it.
    pub phys: Option<PhysAddr>,
    /// Bytes.
    pub len: u64,
    /// Direction.
    pub dir: Direction,
    /// The API that made it.
    pub family: MappingFamily,
    /// Where it was made.
    pub site: &'static Location<'static>,
    /// Whether the device works on a bounce rather than the buffer itself.
    pub bounced: bool,
    /// Whether the device snoops caches.
    pub coherent_device: bool,
    /// Parts handed back to the CPU by `sync_for_cpu` and not yet returned to the device.
    pub cpu_owned: CpuParts,
}

impl LiveMapping {
    /// The buffer as its first and last byte, when known (inclusive, so that a buffer at
    /// the very top of the address space has a span too). A record whose range leaves the
    /// address space (only a bad direct call can make one) is clipped at its top.
    fn span(&self) -> Option<(u64, u64)> {
        self.phys.map(|p| {
            let last = p.as_u64().saturating_add(self.len.max(1) - 1);
            (p.as_u64(), last)
        })
    }

    /// The cache lines the buffer touches, as the first byte of the first line and the
    /// first byte of the last line, for lines of `line` bytes (a power of two). Never
    /// overflows: the last line is named by its start, not by its end.
    fn lines(&self, line: u64) -> Option<(u64, u64)> {
        let (first, last) = self.span()?;
        if active(Defect::CheckerRoundingOverflow) {
            // The old arithmetic: round the exclusive end up to the line (overflows at the
            // top; where it wraps to 0 no line is found).
            let end = (first + self.len).next_multiple_of(line);
            return Some((first & !(line - 1), end.checked_sub(line)?));
        }
        Some((first & !(line - 1), last & !(line - 1)))
    }

    /// Whether the bytes `first..=last` of the buffer lie inside parts the CPU owns.
    fn cpu_owns(&self, base: u64, first: u64, last: u64) -> bool {
        // Inclusive bounds throughout: a part at the top of the address space has no end.
        let mut parts = [(0u64, 0u64); MAX_CPU_PARTS];
        let mut n = 0;
        for (o, l) in self.cpu_owned.iter().filter(|&(_, l)| l > 0) {
            let s = base.saturating_add(o);
            parts[n] = (s, s.saturating_add(l - 1));
            n += 1;
        }
        let parts = &mut parts[..n];
        parts.sort_unstable();
        let mut at = first;
        for &mut (s, e) in parts {
            if s <= at && e >= at {
                if e >= last {
                    return true;
                }
                at = e + 1;
            }
        }
        false
    }
}

/// The shadow table of live mappings. Thread-safe; every operation takes one lock, which is
/// acceptable for a checker that is off in production. Its tables are allocated when it is
/// built, at the sizes of its [`DebugConfig`]: checking a map, unmap or sync, and
/// reporting what it finds, never allocates (reading reports and releasing a device do).
pub struct DebugChecker {
    table: Mutex<FixedMap<(DeviceId, u64), LiveMapping>>,
    failed: Mutex<FixedMap<DeviceId, (&'static Location<'static>, DmaError)>>,
    reports: Mutex<VecDeque<DebugReport>>,
    max_reports: usize,
    line: u64,
    groups: AtomicU64,
    untracked: AtomicU64,
    dropped_reports: AtomicU64,
    dropped_cpu_parts: AtomicU64,
}

/// What an unmap call says about the mapping it ends.
pub(crate) struct Unmapping {
    pub(crate) dma: DmaAddr,
    pub(crate) len: u64,
    pub(crate) dir: Direction,
    pub(crate) family: MappingFamily,
}

impl DebugChecker {
    /// A checker for a platform whose cache lines are `line` bytes, with the capacities of
    /// `cfg`. Allocates its tables: call outside atomic context.
    pub(crate) fn new(line: u64, cfg: DebugConfig) -> Self {
        Self {
            table: Mutex::new(FixedMap::with_capacity(cfg.live_mappings)),
            failed: Mutex::new(FixedMap::with_capacity(cfg.failed_devices)),
            reports: Mutex::new(VecDeque::with_capacity(cfg.reports)),
            max_reports: cfg.reports,
            line: line.max(1),
            groups: AtomicU64::new(1),
            untracked: AtomicU64::new(0),
            dropped_reports: AtomicU64::new(0),
            dropped_cpu_parts: AtomicU64::new(0),
        }
    }

    /// The reports kept, oldest first (allocates the list).
    pub fn reports(&self) -> Vec<DebugReport> {
        self.reports.lock().iter().cloned().collect()
    }

    /// Removes and returns the reports kept, oldest first (allocates the list; the room
    /// for new reports stays).
    pub fn take_reports(&self) -> Vec<DebugReport> {
        self.reports.lock().drain(..).collect()
    }

    /// The live mappings, by device and address (allocates the list).
    pub fn live(&self) -> Vec<LiveMapping> {
        self.table.lock().values().cloned().collect()
    }

    /// Mappings made while the live table was full, and so not checked: their unmaps and
    /// syncs are reported as "not mapped" (saying this count), and their leaks go unseen.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Reports dropped, oldest first, to make room for newer ones (each was logged).
    pub fn dropped_reports(&self) -> u64 {
        self.dropped_reports.load(Ordering::Relaxed)
    }

    /// `sync_for_cpu` parts not recorded because their mapping already held
    /// [`crate::debug::MAX_CPU_PARTS`] others (a CPU access to one may be reported).
    pub fn dropped_cpu_parts(&self) -> u64 {
        self.dropped_cpu_parts.load(Ordering::Relaxed)
    }

    /// Keeps `m` in the table, or counts it as untracked when the table is full.
    fn track(&self, table: &mut FixedMap<(DeviceId, u64), LiveMapping>, m: LiveMapping) {
        if table.insert((m.device, m.dma.as_u64()), m).is_err() {
            self.untracked.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn next_group(&self) -> u64 {
        self.groups.fetch_add(1, Ordering::Relaxed)
    }

    fn report(&self, r: DebugReport) {
        log::error!("{r}");
        let mut reports = self.reports.lock();
        if reports.len() >= self.max_reports {
            self.dropped_reports.fetch_add(1, Ordering::Relaxed);
            if reports.pop_front().is_none() {
                // No room at all: the report is only logged.
                return;
            }
        }
        // Within the room reserved at construction: no allocation.
        reports.push_back(r);
    }

    #[allow(clippy::too_many_arguments)]
    fn issue(
        &self,
        issue: DebugIssue,
        device: DeviceId,
        dma: DmaAddr,
        len: u64,
        site: Option<&'static Location<'static>>,
        mapped_at: Option<&'static Location<'static>>,
        detail: Detail,
    ) {
        self.report(DebugReport {
            issue,
            device,
            dma,
            len,
            site,
            mapped_at,
            detail,
        });
    }

    /// Records a new mapping, and reports it if it shares a cache line with another live
    /// inbound mapping that is not bounced either. When the table is full the mapping is
    /// not recorded but counted ([`DebugChecker::untracked`]).
    pub(crate) fn mapped(&self, dev: &Device, m: LiveMapping) {
        self.failed.lock().remove(&dev.id());
        let mut table = self.table.lock();
        let lines = |m: &LiveMapping| m.lines(self.line);
        let exposed = |m: &LiveMapping| {
            m.dir.device_writes()
                && !m.bounced
                && !m.coherent_device
                && m.family != MappingFamily::Coherent
        };
        if let (true, Some((lo, hi))) = (exposed(&m), lines(&m)) {
            let clash = table
                .values()
                .find(|o| exposed(o) && lines(o).is_some_and(|(olo, ohi)| olo <= hi && ohi >= lo))
                .map(|o| (o.device, o.dma, o.len, o.site));
            if let Some((odev, odma, olen, osite)) = clash {
                drop(table);
                self.issue(
                    DebugIssue::SharedInboundLine,
                    m.device,
                    m.dma,
                    m.len,
                    Some(m.site),
                    Some(osite),
                    Detail::SharedLine {
                        device: odev,
                        dma: odma,
                        len: olen,
                    },
                );
                table = self.table.lock();
            }
        }
        self.track(&mut table, m);
    }

    /// Remembers a failed mapping request, to explain a later use of its non-address (not
    /// when the table of such requests is full).
    pub(crate) fn map_failed(&self, dev: &Device, site: &'static Location<'static>, err: DmaError) {
        // A full table only loses the explanation: the use is still reported.
        let _ = self.failed.lock().insert(dev.id(), (site, err));
    }

    fn not_mapped(
        &self,
        dev: &Device,
        dma: DmaAddr,
        len: u64,
        what: &'static str,
        site: &'static Location<'static>,
    ) {
        let failed = self.failed.lock().get(&dev.id()).copied();
        let (issue, at, failed) = match failed {
            Some((at, err)) => (DebugIssue::UncheckedMapError, Some(at), Some(err)),
            None => (DebugIssue::NotMapped, None, None),
        };
        let detail = Detail::NotMapped {
            what,
            failed,
            untracked: self.untracked(),
        };
        self.issue(issue, dev.id(), dma, len, Some(site), at, detail);
    }

    /// Checks an unmap (or free) against the record, reports what does not match, and takes
    /// the record out of the table, returning it. The caller hands it back through
    /// [`DebugChecker::unmap_rejected`] if the mapping layer then refuses the unmap: the
    /// record is taken out first so that the address, once the unmap frees it, can be
    /// mapped again (and recorded) by another thread at once.
    pub(crate) fn unmapping(
        &self,
        dev: &Device,
        u: Unmapping,
        site: &'static Location<'static>,
    ) -> Option<LiveMapping> {
        let Some(m) = self.table.lock().remove(&(dev.id(), u.dma.as_u64())) else {
            let what = match u.family {
                MappingFamily::Coherent => "free",
                _ => "unmap",
            };
            self.not_mapped(dev, u.dma, u.len, what, site);
            return None;
        };
        let report = |issue, detail| {
            self.issue(
                issue,
                dev.id(),
                u.dma,
                u.len,
                Some(site),
                Some(m.site),
                detail,
            )
        };
        if !m.family.same_api(u.family) {
            let detail = Detail::WrongFamily {
                given: u.family,
                mapped: m.family,
                len: m.len,
            };
            report(DebugIssue::WrongFamily, detail);
        }
        if m.len != u.len {
            report(DebugIssue::WrongSize, Detail::WrongSize { len: m.len });
        }
        if m.dir != u.dir && m.family != MappingFamily::Coherent {
            let detail = Detail::WrongUnmapDirection {
                given: u.dir,
                mapped: m.dir,
                len: m.len,
            };
            report(DebugIssue::WrongDirection, detail);
        }
        if let (MappingFamily::Sg { nents, .. }, MappingFamily::Sg { nents: given, .. }) =
            (m.family, u.family)
        {
            if nents != given {
                report(
                    DebugIssue::WrongSgCount,
                    Detail::WrongSgCount { given, nents },
                );
            }
        }
        Some(m)
    }

    /// The mapping layer refused the unmap that took `m` out (wrong size, wrong direction,
    /// not its mapping): the mapping is still live, so its record goes back, and the later
    /// correct unmap, its syncs and a leak at release are checked against it. The refused
    /// call itself was already reported by [`DebugChecker::unmapping`].
    pub(crate) fn unmap_rejected(&self, m: LiveMapping) {
        if active(Defect::CheckerForgetsBeforeValidation) {
            return;
        }
        self.track(&mut self.table.lock(), m);
    }

    /// Checks a sync of `len` bytes at `offset` in mapping `dma`, and tracks which parts the
    /// CPU owns.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn syncing(
        &self,
        dev: &Device,
        dma: DmaAddr,
        offset: u64,
        len: u64,
        dir: Direction,
        for_cpu: bool,
        site: &'static Location<'static>,
    ) {
        let mut table = self.table.lock();
        let Some(m) = table.get_mut(&(dev.id(), dma.as_u64())) else {
            drop(table);
            self.not_mapped(dev, dma, len, "sync", site);
            return;
        };
        let id = dev.id();
        let (mlen, mdir, msite) = (m.len, m.dir, m.site);
        let inside = offset.checked_add(len).is_some_and(|end| end <= mlen);
        if inside {
            if !for_cpu {
                // `offset + len <= mlen` (checked above), and every kept part lies inside the
                // mapping too, so these sums cannot overflow.
                m.cpu_owned.remove_overlapping(offset, len);
            } else if !m.cpu_owned.add(offset, len) {
                self.dropped_cpu_parts.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(table);
        if !inside {
            self.issue(
                DebugIssue::SyncOutOfRange,
                id,
                dma,
                len,
                Some(site),
                Some(msite),
                Detail::SyncOutOfRange { offset, len: mlen },
            );
        }
        if !mdir.permits_sync(dir) {
            self.issue(
                DebugIssue::WrongDirection,
                id,
                dma,
                len,
                Some(site),
                Some(msite),
                Detail::WrongSyncDirection {
                    given: dir,
                    mapped: mdir,
                },
            );
        }
    }

    /// Reports and forgets every live mapping of `dev` (the device is going away).
    /// Returns the leak reports. Allocates the list (not a map path).
    pub(crate) fn release_device(&self, dev: &Device) -> Vec<DebugReport> {
        let leaked: Vec<LiveMapping> = {
            let mut table = self.table.lock();
            let keys: Vec<_> = table
                .values()
                .filter(|m| m.device == dev.id())
                .map(|m| (m.device, m.dma.as_u64()))
                .collect();
            keys.into_iter().filter_map(|k| table.remove(&k)).collect()
        };
        self.failed.lock().remove(&dev.id());
        let out: Vec<DebugReport> = leaked
            .into_iter()
            .map(|m| DebugReport {
                issue: DebugIssue::Leak,
                device: m.device,
                dma: m.dma,
                len: m.len,
                site: None,
                mapped_at: Some(m.site),
                detail: Detail::Leak { family: m.family },
            })
            .collect();
        for r in &out {
            self.report(r.clone());
        }
        out
    }

    /// Records a coherent allocation (so that its free is checked and leaks are found).
    #[track_caller]
    pub fn coherent_allocated(&self, dev: &Device, dma: DmaAddr, phys: PhysAddr, len: u64) {
        self.mapped(
            dev,
            LiveMapping {
                device: dev.id(),
                dma,
                phys: Some(phys),
                len,
                dir: Direction::Bidirectional,
                family: MappingFamily::Coherent,
                site: Location::caller(),
                bounced: false,
                coherent_device: true,
                cpu_owned: CpuParts::EMPTY,
            },
        );
    }

    /// Checks the free of a coherent allocation.
    #[track_caller]
    pub fn coherent_freeing(&self, dev: &Device, dma: DmaAddr, len: u64) {
        let u = Unmapping {
            dma,
            len,
            dir: Direction::Bidirectional,
            family: MappingFamily::Coherent,
        };
        self.unmapping(dev, u, Location::caller());
    }

    /// Checks a CPU access of `len` bytes at `phys` against the device's ownership: a read
    /// of a buffer the device may be writing, or any write to a buffer the device owns, is
    /// reported (and returned). Coherent allocations and parts handed back by
    /// `sync_for_cpu` are the CPU's to use.
    pub fn check_cpu_access(&self, phys: PhysAddr, len: u64, write: bool) -> Option<DebugReport> {
        if len == 0 {
            return None;
        }
        // Inclusive bounds: an access at the top of the address space has no end.
        let (a, b) = (phys.as_u64(), phys.as_u64().saturating_add(len - 1));
        let table = self.table.lock();
        let m = table.values().find(|m| {
            let Some((s, e)) = m.span() else {
                return false;
            };
            m.family != MappingFamily::Coherent
                && s <= b
                && e >= a
                && (write || m.dir.device_writes())
                && !m.cpu_owns(s, a.max(s), b.min(e))
        })?;
        let issue = if write {
            DebugIssue::CpuWriteWhileDeviceOwns
        } else {
            DebugIssue::CpuReadWhileDeviceOwns
        };
        let r = DebugReport {
            issue,
            device: m.device,
            dma: m.dma,
            len,
            site: None,
            mapped_at: Some(m.site),
            detail: Detail::CpuAccess {
                phys,
                write,
                dir: m.dir,
                len: m.len,
            },
        };
        drop(table);
        self.report(r.clone());
        Some(r)
    }
}
