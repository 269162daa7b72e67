//! Ending a mapping on the IOMMU path: the record taken under the domain's lock, the page
//! tables, the IOTLB (at once or through the flush queue), the CPU side and the IOVA.
//! Shared by unmap and the scatter-gather path (which also undoes what a failing list
//! mapped).

use super::super::domain::{IommuDomain, Kind, Record};
use super::super::flush_queue::FlushEntry;
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::bounce::path::{self as bounce, SyncPart};
use crate::bounce::record_check::{check_unmap, Recorded};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::maintenance;
use crate::platform::Platform;
use crate::reintroduce::{self, Defect};

/// Removes the record of the mapping at `key` after checking it belongs to `dev`, has
/// length `len` (when given) and direction `dir`, and maps registers exactly when
/// `resource` (so neither unmap ends the other's kind of mapping).
pub(super) fn take_record(
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    len: Option<u64>,
    dir: Direction,
    resource: bool,
) -> Result<Record, DmaError> {
    let unknown = DmaError::UnknownMapping {
        device: dev.id(),
        dma: DmaAddr::new(key),
    };
    dom.take(key, unknown, |r| {
        if matches!(r.kind, Kind::Resource) != resource {
            return Err(unknown);
        }
        let rec = Recorded {
            device: r.device,
            len: r.len,
            dir: r.dir,
        };
        check_unmap(dev, DmaAddr::new(key), len, dir, rec)
    })
}

/// What ending a mapping did on the CPU side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Ended {
    /// A bounce slot was released (deferred mappings may now fit).
    pub(crate) freed_room: bool,
    /// Bytes copied from a bounce back to the caller's buffer.
    pub(crate) copied: u64,
}

/// Removes the page-table entries of the mapping whose record was taken; when the IOMMU
/// refuses, the record goes back (the mapping stays live) and the error is returned.
fn unmap_tables(
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    rec: Record,
) -> Result<(Record, DmaAddr), DmaError> {
    let base = dom.iova_addr(rec.iova);
    match dom.unmap_tables(base, rec.mapped) {
        Ok(()) => {
            dom.forget(key);
            Ok((rec, base))
        }
        Err(error) => {
            dom.put_back(key, rec);
            Err(DmaError::Iommu {
                device: dev.id(),
                error,
            })
        }
    }
}

/// Ends a mapping whose record was taken: page tables, IOTLB (now or queued), CPU side
/// (maintenance, a bounce's copy back: only with `cpu_sync`), IOVA release.
pub(super) fn finish<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    key: u64,
    rec: Record,
    cpu_sync: bool,
) -> Result<Ended, DmaError> {
    let cpu = p.current_cpu();
    let (rec, base) = unmap_tables(dom, dev, key, rec)?;
    let strict = dom.strict_for(dev);
    if strict {
        dom.flush_range(base, rec.mapped);
    }
    let mut result = Ok(Ended::default());
    let mut parked = None;
    match &rec.kind {
        Kind::Single { .. } | Kind::Sg { .. } if !cpu_sync => {}
        Kind::Single { phys } => cpu_side(p, dev, *phys, rec.len, rec.dir),
        Kind::Sg { pieces } => {
            dom.for_each_piece(pieces, |pc| cpu_side(p, dev, pc.phys, pc.len, rec.dir));
        }
        Kind::Pages { .. } | Kind::Resource => {}
        Kind::Bounced { backend, slot } => {
            // The bounce path finds the slot by its physical address; the IOVA names the
            // mapping in its errors.
            let dma = DmaAddr::new(key);
            result = if strict {
                let at = bounce::Slot { dma, phys: *slot };
                let unmapped =
                    bounce::unmap(p, backend.as_ref(), dev, at, rec.len, rec.dir, cpu_sync);
                if unmapped.is_err() && !reintroduce::active(Defect::IommuFaultLeaksSlot) {
                    // The copy back faulted (the record matched the slot, so nothing else
                    // can fail): the record and the IOVA are gone, so the slot must go
                    // too, or nothing could ever free it.
                    let freed = backend.free(*slot);
                    debug_assert!(freed.is_some());
                }
                unmapped.map(|(_, copied)| Ended {
                    freed_room: true,
                    copied,
                })
            } else {
                // Copy back now; the slot is released only after the invalidation.
                parked = Some((backend.clone(), *slot));
                let part = SyncPart {
                    dma,
                    offset: 0,
                    len: rec.len,
                    dir: rec.dir,
                };
                let copied = if cpu_sync {
                    bounce::sync_for_cpu(p, backend.as_ref(), dev, *slot, part)
                } else {
                    Ok(0)
                };
                copied.map(|copied| Ended {
                    freed_room: false,
                    copied,
                })
            };
        }
    }
    let Record { iova, kind, .. } = rec;
    if let Kind::Sg { pieces } = kind {
        if !reintroduce::active(Defect::SgPiecesKeptAtUnmap) {
            dom.free_pieces(pieces);
        }
    }
    if strict {
        dom.release(iova, cpu);
    } else {
        let released = dom.defer(
            FlushEntry {
                iova,
                bounce: parked,
            },
            cpu,
        );
        // A drain released bounce slots: deferred mappings may fit now.
        if released > 0 && !reintroduce::active(Defect::LazyDomainParksBounces) {
            if let Ok(ended) = &mut result {
                ended.freed_room = true;
            }
        }
    }
    result
}

fn cpu_side<P: Platform + ?Sized>(p: &P, dev: &Device, phys: PhysAddr, len: u64, dir: Direction) {
    if dev.is_coherent() {
        return;
    }
    if let Some(r) = PhysRange::new(phys, len) {
        maintenance::for_cpu(p, r, dir);
    }
}

/// Takes back a mapping this call made and the device never saw (a failing sg list):
/// page tables and IOTLB at once, whatever the domain's mode, the IOVA released, and a
/// bounce abandoned — no copy back, and the pool's usage and high-water mark as before.
///
/// # Errors
/// As [`super::unmap`] for a mapping that is not live with these arguments, or that the IOMMU
/// refuses to unmap (then it stays live).
pub(super) fn undo<P: Platform + ?Sized>(
    p: &P,
    dom: &IommuDomain,
    dev: &Device,
    dma: DmaAddr,
    len: u64,
    dir: Direction,
) -> Result<(), DmaError> {
    let key = dma.as_u64();
    let rec = take_record(dom, dev, key, Some(len), dir, false)?;
    let (rec, base) = unmap_tables(dom, dev, key, rec)?;
    dom.flush_range(base, rec.mapped);
    match &rec.kind {
        Kind::Bounced { backend, slot } => {
            let abandoned = backend.abandon(*slot);
            debug_assert!(abandoned.is_some());
        }
        Kind::Single { phys } => cpu_side(p, dev, *phys, rec.len, rec.dir),
        Kind::Sg { .. } | Kind::Pages { .. } | Kind::Resource => {}
    }
    let Record { iova, kind, .. } = rec;
    if let Kind::Sg { pieces } = kind {
        if !reintroduce::active(Defect::SgPiecesKeptAtUnmap) {
            dom.free_pieces(pieces);
        }
    }
    dom.release(iova, p.current_cpu());
    Ok(())
}
