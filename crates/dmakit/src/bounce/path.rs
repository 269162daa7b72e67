//! The bounce path: copies and cache maintenance around a backend's memory.

use super::backend::{BounceAllocError, BounceBackend, BounceMeta, BounceRequest};
use super::record_check::{check_unmap, Recorded};
use crate::addr::{DmaAddr, PhysAddr, PhysRange};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::maintenance;
use crate::platform::Platform;

/// Where a bounce may lie and what it must cover, as the path that asks for it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placement {
    /// The highest physical address any byte of the slot may have: on the direct path the
    /// highest one whose bus address the device's mask and bus limit allow
    /// ([`crate::translation::highest_phys_within`]; the router then checks the slot's bus
    /// address), anything behind an IOMMU (which translates).
    pub(crate) max_addr: u64,
    /// For a device that will be given whole IOMMU granules of this size: the slot keeps
    /// the buffer's offset inside its granule and extends to the end of its last granule,
    /// and every byte around the buffer's is zeroed, so the device never sees another
    /// user's data in a granule it can reach. `None`: the slot is the buffer's size.
    pub(crate) granule_pad: Option<u64>,
}

/// A filled bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounced {
    /// Where the buffer's bytes are (the slot's address as the backend knows it).
    pub(crate) slot: PhysAddr,
    /// Bytes copied from the buffer into the slot.
    pub(crate) copied: u64,
    /// What the device may reach, `(first byte, length)`: the slot, or with granule padding
    /// the whole granules around it.
    pub(crate) reach: (u64, u64),
}

/// Bounces `range` for `dev`: reserves room as `place` says, zeroes the padding, fills the
/// slot from the original (every direction, unless `fill_inbound` is off for a
/// demonstration of the hazard), and does the maintenance the bounce memory needs before
/// the device looks.
///
/// # Errors
/// [`MapFailure::NoRoom`] with the backend's refusal (the caller may grow the pool or defer
/// the mapping); [`MapFailure::Failed`] with [`DmaError::AddressOverflow`] when the padded
/// slot's end overflows, or with a CPU fault of the fill. Nothing changed: a bounce whose
/// fill faults is abandoned ([`BounceBackend::abandon`]), so the backend's usage,
/// high-water mark included, is what it was before.
pub(crate) fn map<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    range: PhysRange,
    meta: BounceMeta,
    fill_inbound: bool,
    place: Placement,
) -> Result<Bounced, MapFailure> {
    let (start, len) = (range.start().as_u64(), range.len());
    // The lead-in (the buffer's offset in its granule) and the slot's length from the
    // buffer's first byte.
    let (lead, slot_len, min_align_mask) = match place.granule_pad {
        Some(g) => {
            let off = start & (g - 1);
            let whole = (off + len)
                .checked_next_multiple_of(g)
                .ok_or(MapFailure::Failed(DmaError::AddressOverflow {
                    device: dev.id(),
                    addr: start,
                    len,
                }))?;
            // A mask of at least the granule keeps the offset; every backend reserves the
            // lead-in then.
            (off, whole - off, (g - 1).max(dev.min_align_mask()))
        }
        None => (0, len, dev.min_align_mask()),
    };
    let req = BounceRequest {
        len: slot_len,
        orig: range.start(),
        min_align_mask,
        max_addr: place.max_addr,
        cpu: p.current_cpu(),
    };
    let slot = backend.alloc(&req, meta).map_err(MapFailure::NoRoom)?;
    let fill_buffer = meta.dir.device_reads() || fill_inbound;
    let reach = (slot.as_u64() - lead, lead + slot_len);
    let filled = (|| {
        if lead > 0 {
            p.fill(PhysAddr::new(reach.0), 0, lead)?;
        }
        if slot_len > len {
            p.fill(slot.add(len), 0, slot_len - len)?;
        }
        if fill_buffer {
            p.copy(slot, range.start(), len)?;
        }
        Ok(())
    })();
    if let Err(fault) = filled {
        backend.abandon(slot);
        return Err(MapFailure::Failed(DmaError::Memory(fault)));
    }
    if needs_maintenance(backend, dev) {
        // The padding was written through the cache too: it must reach memory before the
        // device reads it, or the device would see what the memory held before.
        maintenance::for_device(p, slot_range(PhysAddr::new(reach.0), reach.1), meta.dir);
    }
    Ok(Bounced {
        slot,
        copied: if fill_buffer { len } else { 0 },
        reach,
    })
}

/// A part of a mapping named by a sync: `len` bytes at `offset` inside the mapping `dma`,
/// in direction `dir`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SyncPart {
    pub(crate) dma: DmaAddr,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) dir: Direction,
}

/// Why [`map`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapFailure {
    /// The backend had no room.
    NoRoom(BounceAllocError),
    /// Any other failure.
    Failed(DmaError),
}

/// A live bounce as a mapping names it: the device address it was given and the slot's
/// physical address (where the device reaches `dma`, or what an IOMMU maps `dma` to).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    /// The device address of the mapping (its errors name it).
    pub(crate) dma: DmaAddr,
    /// The bounce slot's physical address (the backend finds the bounce by it).
    pub(crate) phys: PhysAddr,
}

/// Ends the bounced mapping in `at`: maintenance, copy back
/// what the device may have written (both only with `cpu_sync`; without it the caller
/// synced for the CPU itself), release the room. With nothing to copy back (no `cpu_sync`,
/// or a direction the device does not write) the bounce is checked and released in one
/// step of the backend. Returns the metadata of the ended bounce
/// and the bytes copied back.
///
/// # Errors
/// [`DmaError::UnknownMapping`] if `at` is not a live bounce of `dev`;
/// [`DmaError::OutOfMapping`] if `len` differs from the mapped length;
/// [`DmaError::WrongDirection`] if `dir` differs; a copy fault leaves the mapping live.
pub(crate) fn unmap<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    at: Slot,
    len: u64,
    dir: Direction,
    cpu_sync: bool,
) -> Result<(BounceMeta, u64), DmaError> {
    let Slot { dma, phys: slot } = at;
    if !cpu_sync || !dir.device_writes() {
        // Nothing to copy back and no maintenance (see `to_cpu`).
        return take(backend, dev, at, len, dir).map(|meta| (meta, 0));
    }
    // One lookup: the backend holds the bounce for this call while the copy back runs,
    // and releases it only if the checks and the copy succeed.
    let mut end = |meta: &BounceMeta| {
        check_unmap(dev, dma, Some(len), dir, recorded(meta))?;
        to_cpu(p, backend, dev, slot, meta.orig, len, dir)
    };
    backend
        .end(slot, &mut end)
        .unwrap_or_else(|| Err(unknown(dev, dma)))
}

/// [`unmap`] of a bounce with nothing to copy back: checked and released in one step
/// ([`BounceBackend::take`]). Out of line, so the copying unmap stays as small as it was.
#[inline(never)]
fn take(
    backend: &dyn BounceBackend,
    dev: &Device,
    at: Slot,
    len: u64,
    dir: Direction,
) -> Result<BounceMeta, DmaError> {
    let check = |meta: &BounceMeta| check_unmap(dev, at.dma, Some(len), dir, recorded(meta));
    match backend.take(at.phys, &mut |meta| check(meta).is_ok()) {
        Some(Ok(meta)) => Ok(meta),
        // Refused: the same check says why, outside the backend.
        Some(Err(meta)) => Err(check(&meta).err().unwrap_or_else(|| unknown(dev, at.dma))),
        None => Err(unknown(dev, at.dma)),
    }
}

/// The error of an unmap that names no live bounce of `dev`.
#[cold]
fn unknown(dev: &Device, dma: DmaAddr) -> DmaError {
    DmaError::UnknownMapping {
        device: dev.id(),
        dma,
    }
}

/// What a bounce's metadata records for [`check_unmap`].
#[inline(always)]
fn recorded(meta: &BounceMeta) -> Recorded {
    Recorded {
        device: meta.device,
        len: meta.len,
        dir: meta.dir,
    }
}

/// Hands `len` bytes at `offset` inside the bounced mapping `dma`, whose slot is at `slot`
/// (as for [`unmap`]), back to the CPU: the CPU sees what the device wrote there. Only that part is copied; returns the bytes copied.
///
/// # Errors
/// As [`unmap`], and [`DmaError::OutOfMapping`] if the part leaves the mapping,
/// [`DmaError::WrongDirection`] if the mapping does not permit `dir`.
pub(crate) fn sync_for_cpu<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    slot: PhysAddr,
    part: SyncPart,
) -> Result<u64, DmaError> {
    let meta = checked_part(backend, dev, slot, part)?;
    let SyncPart {
        offset, len, dir, ..
    } = part;
    to_cpu(
        p,
        backend,
        dev,
        slot.add(offset),
        meta.orig.add(offset),
        len,
        dir,
    )
}

/// Hands `len` bytes at `offset` inside the bounced mapping `dma`, whose slot is at `slot`
/// (as for [`unmap`]), to the device: what the CPU wrote there reaches the bounce. Inbound mappings are refilled too (unlike Linux), so
/// bytes the device then does not write keep the CPU's latest value, as on the direct path.
/// Returns the bytes copied.
///
/// # Errors
/// As [`sync_for_cpu`].
pub(crate) fn sync_for_device<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    slot: PhysAddr,
    part: SyncPart,
    fill_inbound: bool,
) -> Result<u64, DmaError> {
    let meta = checked_part(backend, dev, slot, part)?;
    let SyncPart {
        offset, len, dir, ..
    } = part;
    let slot = slot.add(offset);
    let mut copied = 0;
    if dir.device_reads() || fill_inbound {
        p.copy(slot, meta.orig.add(offset), len)?;
        copied = len;
    }
    if needs_maintenance(backend, dev) {
        maintenance::for_device(p, slot_range(slot, len), dir);
    }
    Ok(copied)
}

/// Whether [`sync_for_cpu`] / [`sync_for_device`] of `part` would be accepted, without
/// touching anything.
///
/// # Errors
/// Those syncs' refusals: [`DmaError::UnknownMapping`], [`DmaError::ZeroLength`],
/// [`DmaError::OutOfMapping`], [`DmaError::WrongDirection`].
pub(crate) fn check_part(
    backend: &dyn BounceBackend,
    dev: &Device,
    slot: PhysAddr,
    part: SyncPart,
) -> Result<(), DmaError> {
    checked_part(backend, dev, slot, part).map(|_| ())
}

fn to_cpu<P: Platform + ?Sized>(
    p: &P,
    backend: &dyn BounceBackend,
    dev: &Device,
    slot: PhysAddr,
    orig: PhysAddr,
    len: u64,
    dir: Direction,
) -> Result<u64, DmaError> {
    if needs_maintenance(backend, dev) {
        maintenance::for_cpu(p, slot_range(slot, len), dir);
    }
    if !dir.device_writes() {
        return Ok(0);
    }
    p.copy(orig, slot, len)?;
    Ok(len)
}

fn live(
    backend: &dyn BounceBackend,
    dev: &Device,
    dma: DmaAddr,
    slot: PhysAddr,
) -> Result<BounceMeta, DmaError> {
    match backend.get(slot) {
        Some(meta) if meta.device == dev.id() => Ok(meta),
        _ => Err(DmaError::UnknownMapping {
            device: dev.id(),
            dma,
        }),
    }
}

fn checked_part(
    backend: &dyn BounceBackend,
    dev: &Device,
    slot: PhysAddr,
    part: SyncPart,
) -> Result<BounceMeta, DmaError> {
    let SyncPart {
        dma,
        offset,
        len,
        dir,
    } = part;
    let meta = live(backend, dev, dma, slot)?;
    if len == 0 {
        return Err(DmaError::ZeroLength { device: dev.id() });
    }
    if offset.checked_add(len).is_none_or(|end| end > meta.len) {
        return Err(DmaError::OutOfMapping {
            device: dev.id(),
            dma,
            len,
            mapped_len: meta.len,
        });
    }
    if !meta.dir.permits_sync(dir) {
        return Err(DmaError::WrongDirection {
            device: dev.id(),
            mapped: meta.dir,
            requested: dir,
        });
    }
    Ok(meta)
}

/// Whether the bounce memory needs cache maintenance for `dev` (cached memory, a
/// non-coherent device); inlined into each caller, which asks once per operation.
#[inline]
fn needs_maintenance(backend: &dyn BounceBackend, dev: &Device) -> bool {
    backend.is_cached() && !dev.is_coherent()
}

/// The bounce's range. Backends only hand out ranges that fit the address space.
fn slot_range(slot: PhysAddr, len: u64) -> PhysRange {
    PhysRange::new(slot, len)
        .unwrap_or_else(|| unreachable!("backend returned an overflowing range"))
}
