//! The facts behind a debug report, formatted only when someone reads the report.
//!
//! Reports are made inside map, unmap and sync calls, where the heap may not be used, so a
//! report stores what it found as plain values and its message is written by `Display`.

use core::fmt;
use core::panic::Location;

use super::family::MappingFamily;
use crate::addr::{DmaAddr, PhysAddr};
use crate::device::DeviceId;
use crate::direction::Direction;
use crate::error::DmaError;

/// What a report found beyond its issue, device, address, size and sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    /// A new inbound mapping shares a line with the live one of `len` bytes at `dma`.
    SharedLine {
        device: DeviceId,
        dma: DmaAddr,
        len: u64,
    },
    /// The address is no live mapping; `failed` is the device's failed request, if known;
    /// `untracked` counts mappings the full table did not record.
    NotMapped {
        what: &'static str,
        failed: Option<DmaError>,
        untracked: u64,
    },
    /// Undone through the `given` API; made with `mapped`, of `len` bytes.
    WrongFamily {
        given: MappingFamily,
        mapped: MappingFamily,
        len: u64,
    },
    /// `len` bytes were mapped.
    WrongSize { len: u64 },
    /// Unmapped `given`; mapped `mapped`, of `len` bytes.
    WrongUnmapDirection {
        given: Direction,
        mapped: Direction,
        len: u64,
    },
    /// Synced `given`; mapped `mapped`.
    WrongSyncDirection { given: Direction, mapped: Direction },
    /// sg unmap with `given` entries of a list of `nents`.
    WrongSgCount { given: usize, nents: usize },
    /// Sync at `offset`, outside a mapping of `len` bytes.
    SyncOutOfRange { offset: u64, len: u64 },
    /// A live mapping of `family` at release.
    Leak { family: MappingFamily },
    /// The CPU accessed `phys` inside the `dir` mapping of `len` bytes.
    CpuAccess {
        phys: PhysAddr,
        write: bool,
        dir: Direction,
        len: u64,
    },
}

/// A call site, or `?` where there is none.
struct At(Option<&'static Location<'static>>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, "{l}"),
            None => f.write_str("?"),
        }
    }
}

/// Where and on what a report's call was made.
pub(crate) struct Subject {
    pub(crate) device: DeviceId,
    pub(crate) dma: DmaAddr,
    pub(crate) len: u64,
    pub(crate) site: Option<&'static Location<'static>>,
    pub(crate) mapped_at: Option<&'static Location<'static>>,
}

/// Writes the full explanation of a report on `r` that found `detail`.
pub(crate) fn explain(r: Subject, detail: Detail, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let (id, dma, len) = (r.device, r.dma, r.len);
    let (site, at) = (At(r.site), At(r.mapped_at));
    match detail {
        Detail::SharedLine {
            device,
            dma: odma,
            len: olen,
        } => write!(
            f,
            "{id}: inbound mapping of {len} bytes at {dma} made at {site} shares a cache line with the live inbound mapping of {olen} bytes at {odma} ({device}) made at {at}; neither is bounced"
        ),
        Detail::NotMapped {
            what,
            failed: Some(err),
            ..
        } => write!(
            f,
            "{id}: {what} of {len} bytes at {dma} at {site}: not a live mapping; the mapping requested at {at} failed ({err}) and its result was used without checking"
        ),
        Detail::NotMapped {
            what,
            failed: None,
            untracked,
        } => {
            write!(
                f,
                "{id}: {what} of {len} bytes at {dma} at {site}: the address was never mapped or is already unmapped"
            )?;
            if untracked > 0 {
                write!(
                    f,
                    " (or it is one of the {untracked} mappings not tracked because the checker's table was full)"
                )?;
            }
            Ok(())
        }
        Detail::WrongFamily {
            given,
            mapped,
            len: mlen,
        } => write!(
            f,
            "{id}: {} unmap at {site} of {mlen} bytes at {dma} that were mapped with the {} API at {at}",
            given.name(),
            mapped.name()
        ),
        Detail::WrongSize { len: mlen } => write!(
            f,
            "{id}: unmap at {site} of {len} bytes at {dma}, but {mlen} bytes were mapped at {at}"
        ),
        Detail::WrongUnmapDirection {
            given,
            mapped,
            len: mlen,
        } => write!(
            f,
            "{id}: {given} unmap at {site} of {mlen} bytes at {dma} mapped {mapped} at {at}"
        ),
        Detail::WrongSyncDirection { given, mapped } => write!(
            f,
            "{id}: {given} sync at {site} of {dma}, mapped {mapped} at {at}"
        ),
        Detail::WrongSgCount { given, nents } => write!(
            f,
            "{id}: sg unmap at {site} with {given} entries of a list mapped with {nents} at {at}"
        ),
        Detail::SyncOutOfRange { offset, len: mlen } => write!(
            f,
            "{id}: sync at {site} of {len} bytes at offset {offset} of {dma}, outside the {mlen}-byte mapping made at {at}"
        ),
        Detail::Leak { family } => write!(
            f,
            "{id}: released with a live {} mapping of {len} bytes at {dma} made at {at}",
            family.name()
        ),
        Detail::CpuAccess {
            phys,
            write,
            dir,
            len: mlen,
        } => {
            let verb = if write { "wrote" } else { "read" };
            write!(
                f,
                "{id}: the CPU {verb} {len} bytes at {phys} inside the {dir} mapping of {mlen} bytes at {dma} (made at {at}) while the device owns it"
            )
        }
    }
}
