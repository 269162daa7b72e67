//! What a caller asks for and gets back, and how a request becomes a slot placement.
//!
//! The placement rule: the bounce address keeps the original's bits under
//! `min_align_mask` and its offset within the pool's largest cache line, and a mapping of a
//! page or more starts on a page boundary plus those bits (so, page aligned when the
//! original is line aligned and the mask demands no offset). Both become "a run of slots
//! whose first slot number is `lead` modulo `2^align_order`, with the bounce address
//! `offset` bytes into it". Within a block of the pool, `lead` depends on how the region's
//! base is aligned, so it is computed per region.
//!
//! Why the line offset: a copy between two addresses whose distance modulo 4 KiB is a few
//! bytes (an original at page + 8, its bounce at a page boundary) runs into x86's 4K
//! aliasing, where loads wait for stores they only appear to depend on. With the same
//! offset in the line, the distance is a whole number of lines. The bounce still owns
//! whole lines: its run is whole slots, and when the offset pushes its end into a further
//! slot, that slot is part of the run. That extra slot is paid only by mappings of a page
//! or more, the ones whose copies are long enough for aliasing to matter; a smaller one
//! keeps the line offset only where it needs no extra slot. Either way the line offset is
//! kept only for lengths up to [`max_mapping_size`] of the mask joined with the line's
//! offset bits (the mask's own limit is unchanged).

use super::area::Placement;
use super::config::PoolConfig;
use super::error::SwiotlbError;
use crate::addr::PhysAddr;
use crate::platform::PAGE_SIZE;

/// A request for a bounce allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotRequest {
    /// The original buffer's physical address (only its bits under `min_align_mask` are
    /// used).
    pub orig: PhysAddr,
    /// Bytes to bounce, `1..=` [`Pool::max_mapping_size`](super::Pool::max_mapping_size).
    pub len: u64,
    /// Low address bits the bounce address must share with `orig` (`2^n - 1`, possibly 0);
    /// the device's [`min_align_mask`](crate::Device::min_align_mask).
    pub min_align_mask: u64,
}

impl SlotRequest {
    /// A request to bounce `len` bytes at `orig` for a device with `min_align_mask`.
    pub const fn new(orig: PhysAddr, len: u64, min_align_mask: u64) -> Self {
        Self {
            orig,
            len,
            min_align_mask,
        }
    }
}

/// A live bounce allocation.
///
/// Guarantees: `addr & keep == orig & keep`, where `keep` is `min_align_mask`, joined by the
/// offset bits of the pool's largest cache line (`max_cache_line - 1`) when `len` is at most
/// [`Pool::max_mapping_size`](super::Pool::max_mapping_size) of that joined mask and either
/// `len >= PAGE_SIZE` or the joined offset needs no more slots than the mask's; if
/// `len >= PAGE_SIZE` then `addr` is page aligned plus `orig & keep`;
/// `[addr, addr + len)` lies inside `[slot_start, slot_start + slot_bytes)`, a run that no
/// other live allocation shares: whole slots inside one segment, or, for a request below a
/// page whose `min_align_mask` is below a slot (a *packed* bounce, see [`Pool`]), whole
/// lines of the pool's line unit inside one slot. Either way no other allocation shares a
/// cache line with it. The run starts at or before `addr - (orig & min_align_mask)` (the
/// lead-in is held too), on a boundary of `min_align_mask + 1` when that is at least a slot
/// (a line, for a packed bounce).
///
/// [`Pool`]: super::Pool
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounce {
    /// The bounce address: where the data goes, and the key for `get` and `free`.
    pub addr: PhysAddr,
    /// Bytes requested.
    pub len: u64,
    /// First byte of the slots held.
    pub slot_start: PhysAddr,
    /// Bytes held: a multiple of the slot size, or of the line unit for a packed bounce.
    pub slot_bytes: u64,
}

/// A validated request in slot units, independent of the region.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// `(orig & mask) >> slot_shift`: the slot-number residue the run must start at.
    residue: u64,
    align_order: u32,
    pub(crate) count: u32,
    offset: u32,
    len: u64,
    /// The request in line units when it may be packed into part of a slot (0 when not).
    lines: u32,
    line_align_order: u32,
    line_offset: u32,
}

impl Shape {
    /// Validates `req` against the geometry.
    pub(crate) fn new(cfg: &PoolConfig, req: &SlotRequest) -> Result<Self, SwiotlbError> {
        let (len, mask) = (req.len, req.min_align_mask);
        let segment = cfg.segment_size();
        if mask & mask.wrapping_add(1) != 0 || mask >= segment {
            return Err(SwiotlbError::BadAlignMask { mask, segment });
        }
        if len == 0 {
            return Err(SwiotlbError::ZeroLength);
        }
        let max = max_mapping_size(cfg, mask);
        if len > max {
            return Err(SwiotlbError::TooLarge { len, max });
        }
        let shift = cfg.slot_shift();
        let slot = cfg.slot_size();
        let mut align = (mask + 1).max(slot);
        if len >= PAGE_SIZE {
            align = align.max(PAGE_SIZE);
        }
        let orig = req.orig.as_u64();
        let with_line = mask | (cfg.cache_line() - 1);
        // The line's bits are under the slot size (the line is at most a slot), so neither
        // the residue nor the alignment changes: only the offset into the first slot.
        let slots_at = |offset: u64| (offset + len + slot - 1) >> shift;
        let line_costs_nothing =
            slots_at(orig & with_line & (slot - 1)) == slots_at(orig & mask & (slot - 1));
        let kept = if len <= max_mapping_size(cfg, with_line)
            && (len >= PAGE_SIZE || line_costs_nothing)
        {
            with_line
        } else {
            mask
        };
        let keep = orig & kept;
        let offset = keep & (slot - 1);
        let (lines, line_align_order, line_offset) = packed_shape(cfg, orig, len, mask);
        Ok(Self {
            residue: keep >> shift,
            align_order: align.trailing_zeros() - shift,
            count: slots_at(offset) as u32,
            offset: offset as u32,
            len,
            lines,
            line_align_order,
            line_offset,
        })
    }

    /// The placement inside a region whose base is global slot number `base_slot`.
    #[inline]
    pub(crate) fn place(&self, base_slot: u64) -> Placement {
        let lead = (self.residue.wrapping_sub(base_slot) & ((1u64 << self.align_order) - 1)) as u32;
        Placement {
            count: self.count,
            lead,
            align_order: self.align_order,
            offset: self.offset,
            len: self.len,
            lines: self.lines,
            line_align_order: self.line_align_order,
            line_offset: self.line_offset,
        }
    }

    /// `floor(log2)` of the slots the placement takes, lead-in included (at most the
    /// segment order, see [`max_mapping_size`]); 0 for a packed request, which needs at most
    /// one slot. An area can serve it only with a free run at least that long, so only
    /// when its hint (`Area::may_fit`) has a bit at or above this order.
    #[inline]
    pub(crate) fn hint_order(p: &Placement) -> u32 {
        if p.lines != 0 {
            return 0;
        }
        (p.lead + p.count).ilog2()
    }
}

/// The request in line units, `(lines, line_align_order, line_offset)`, when it may be
/// packed into part of one slot; `(0, 0, 0)` when it takes whole slots.
///
/// A request is packed (when the pool packs at all) when it is below a page, its
/// `min_align_mask` window (`mask + 1`) fits in a slot and its run of lines is shorter than
/// a slot. The run starts on a
/// boundary of the window (or of a line, if larger) and holds every line from there to the
/// end of the bytes: `line_offset` bytes of lead-in (the original's bits under the mask and
/// its offset in the cache line, below the window) and then the bytes. So the bounce
/// address keeps `orig & min_align_mask` and the original's offset in its cache line, the
/// lead-in belongs to it, and it shares no line with another allocation.
fn packed_shape(cfg: &PoolConfig, orig: u64, len: u64, mask: u64) -> (u32, u32, u32) {
    if len >= PAGE_SIZE || !cfg.packing() {
        return (0, 0, 0);
    }
    let (shift, lines_order) = (cfg.unit_shift(), cfg.lines_order());
    let window = (mask + 1).max(1 << shift);
    if lines_order == 0 || window > cfg.slot_size() {
        return (0, 0, 0);
    }
    let offset = orig & (window - 1) & (mask | (cfg.cache_line() - 1));
    let lines = if crate::reintroduce::active(crate::reintroduce::Defect::PackedRunShortByALine) {
        ((offset + len) >> shift).max(1)
    } else {
        (offset + len + (1 << shift) - 1) >> shift
    };
    if lines >= 1 << lines_order {
        return (0, 0, 0);
    }
    (
        lines as u32,
        (window >> shift).trailing_zeros(),
        offset as u32,
    )
}

/// Largest request accepted with `mask` (assumed valid): a segment minus the worst-case
/// lead-in before the bounce address, which is at most `mask` bytes.
///
/// Why at most `mask`: the lead-in is `lead * slot + offset`. When the alignment comes from
/// the mask, `lead < (mask + 1) / slot` and `offset < slot`, so it is at most `mask`; when it
/// comes from the page size, the page-aligned region base makes `lead * slot + offset` equal
/// to `orig & mask`.
pub(crate) fn max_mapping_size(cfg: &PoolConfig, mask: u64) -> u64 {
    cfg.segment_size().saturating_sub(mask)
}
