//! One region: a contiguous run of physical memory split into slots, segments and areas.
//!
//! A region turns a physical address into (area, slot) with arithmetic only, so freeing by
//! address needs no search once the region is known.

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::area::Area;
use super::config::PoolConfig;
use crate::addr::{PhysAddr, PhysRange};

/// A region of the pool. Areas cover whole segments, in address order. Read on every
/// operation and never written after construction, so it is kept on cache lines of its
/// own.
#[repr(align(128))]
pub(crate) struct Region<T> {
    range: PhysRange,
    /// `base >> slot_shift`: the base as a global slot number (the base is slot aligned).
    base_slot: u64,
    slot_shift: u32,
    unit_shift: u32,
    segment_order: u32,
    segments: u32,
    areas: Box<[Area<T>]>,
}

/// Where an address falls inside a region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    /// Area index.
    pub area: usize,
    /// Slot index inside the area.
    pub local: u32,
    /// Byte offset inside the slot.
    pub offset: u32,
}

impl<T> Region<T> {
    /// A region over `range`, which the pool has validated: slot aligned and a whole number
    /// of segments, with fewer than `u32::MAX` slots.
    pub(crate) fn new(range: PhysRange, cfg: &PoolConfig) -> Self {
        let slot_shift = cfg.slot_shift();
        let segment_order = cfg.segment_order();
        let (lines_order, unit_shift) = (cfg.lines_order(), cfg.unit_shift());
        let packing = cfg.packing();
        let segments = (range.len() >> (slot_shift + segment_order)) as u32;
        let count = area_count(cfg, segments);
        let areas: Vec<Area<T>> = (0..count)
            .map(|i| {
                let start = area_start(i, count, segments);
                let end = area_start(i + 1, count, segments);
                Area::new(
                    i as u32,
                    start << segment_order,
                    end - start,
                    segment_order,
                    lines_order,
                    unit_shift,
                    packing,
                )
            })
            .collect();
        Self {
            range,
            base_slot: range.start().as_u64() >> slot_shift,
            slot_shift,
            unit_shift,
            segment_order,
            segments,
            areas: areas.into_boxed_slice(),
        }
    }

    /// The memory the region covers.
    #[inline]
    pub(crate) fn range(&self) -> PhysRange {
        self.range
    }

    /// The base address as a global slot number.
    #[inline]
    pub(crate) fn base_slot(&self) -> u64 {
        self.base_slot
    }

    /// The areas, in address order.
    #[inline]
    pub(crate) fn areas(&self) -> &[Area<T>] {
        &self.areas
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn slots(&self) -> u64 {
        (self.segments as u64) << self.segment_order
    }

    /// Address of byte `offset` of slot `local` of area `area`.
    #[inline]
    pub(crate) fn addr_of(&self, area: usize, local: u32, offset: u32) -> PhysAddr {
        let slot = self.areas[area].first_slot() as u64 + local as u64;
        self.range
            .start()
            .add((slot << self.slot_shift) + offset as u64)
    }

    /// Address of line unit `unit` of area `area` (an area-local unit index).
    #[inline]
    pub(crate) fn unit_addr(&self, area: usize, unit: u32) -> PhysAddr {
        let slot = self.areas[area].first_slot() as u64;
        self.range
            .start()
            .add((slot << self.slot_shift) + ((unit as u64) << self.unit_shift))
    }

    /// Where `addr` falls, or `None` if it is outside the region.
    pub(crate) fn locate(&self, addr: PhysAddr) -> Option<Location> {
        let off = addr.checked_offset_from(self.range.start())?;
        if off >= self.range.len() {
            return None;
        }
        let slot = (off >> self.slot_shift) as u32;
        let segment = slot >> self.segment_order;
        let area = area_of_segment(segment, self.areas.len(), self.segments);
        let local = slot - self.areas.get(area)?.first_slot();
        Some(Location {
            area,
            local,
            offset: (off & ((1 << self.slot_shift) - 1)) as u32,
        })
    }
}

/// Areas of a region of `segments` segments: one per CPU area, at most one per segment.
#[inline]
fn area_count(cfg: &PoolConfig, segments: u32) -> usize {
    cfg.areas().min(segments as usize).max(1)
}

/// Index of the area holding `addr` in the region `[start, start + len)` (which must
/// contain it), from the geometry alone: what [`Region::locate`] computes, without the
/// region.
#[inline]
pub(crate) fn area_index(cfg: &PoolConfig, start: u64, len: u64, addr: u64) -> usize {
    let shift = cfg.slot_shift() + cfg.segment_order();
    let segments = (len >> shift) as u32;
    let segment = ((addr - start) >> shift) as u32;
    area_of_segment(segment, area_count(cfg, segments), segments)
}

/// First segment of area `i` when `segments` are shared by `areas` areas as evenly as
/// possible (`floor(i * segments / areas)`).
#[inline]
fn area_start(i: usize, areas: usize, segments: u32) -> u32 {
    ((i as u64 * segments as u64) / areas as u64) as u32
}

/// The area holding `segment`: the largest `i` with `area_start(i) <= segment`. A shift
/// when both counts are powers of two (the usual case: every area has the same power of
/// two of segments), a division otherwise.
#[inline]
fn area_of_segment(segment: u32, areas: usize, segments: u32) -> usize {
    if segments.is_power_of_two() && areas.is_power_of_two() {
        return (segment >> (segments.trailing_zeros() - areas.trailing_zeros())) as usize;
    }
    (((segment as u64 + 1) * areas as u64 - 1) / segments as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_of_segment_inverts_area_start() {
        for segments in (1..40u32).chain([64, 128, 256]) {
            for areas in 1..=(segments as usize) {
                for i in 0..areas {
                    let (s, e) = (
                        area_start(i, areas, segments),
                        area_start(i + 1, areas, segments),
                    );
                    assert!(e > s, "area {i} of {areas} over {segments} is empty");
                    for seg in s..e {
                        assert_eq!(area_of_segment(seg, areas, segments), i);
                    }
                }
            }
        }
    }
}
