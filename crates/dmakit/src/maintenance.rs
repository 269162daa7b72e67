//! Cache maintenance a transfer needs, by direction.
//!
//! Shared by every path that lends cached memory to a non-coherent device (the direct path on
//! the caller's buffer, the bounce paths on the bounce slot). The rules:
//!
//! - before the device reads (`ToDevice`): **clean**, so memory holds the CPU's data;
//! - before the device writes (`FromDevice`, `Bidirectional`): **clean and invalidate**, so
//!   no dirty line can be evicted over the device's data later, and bytes the device does not
//!   write keep the CPU's latest value in memory (a plain invalidate would drop them);
//! - after the device wrote: **invalidate again**, because the CPU may have pulled lines back
//!   in speculatively during the transfer. A line only partly covered by the range is cleaned
//!   and invalidated instead, as arm64 does, so that bytes of other owners in it survive.
//!
//! None of this makes a shared line safe for inbound DMA: that is what bouncing is for.

use crate::addr::PhysRange;
use crate::direction::Direction;
use crate::platform::CacheMaintenance;

/// Maintenance before the device accesses `range` for a transfer in `dir`.
#[inline]
pub(crate) fn for_device<C: CacheMaintenance + ?Sized>(
    cache: &C,
    range: PhysRange,
    dir: Direction,
) {
    match dir {
        Direction::ToDevice => cache.clean(range),
        Direction::FromDevice | Direction::Bidirectional => cache.clean_invalidate(range),
    }
}

/// Maintenance after the device accessed `range` in `dir`, before the CPU reads it.
#[inline(always)]
pub(crate) fn for_cpu<C: CacheMaintenance + ?Sized>(cache: &C, range: PhysRange, dir: Direction) {
    if !dir.device_writes() {
        return;
    }
    let line = cache.cache_line_size();
    // A range of whole lines (the usual case) is one invalidate, inline.
    if range.is_aligned(line) {
        cache.invalidate(range);
    } else {
        partial_lines_for_cpu(cache, range, line);
    }
}

/// [`for_cpu`] of a range whose first or last `line` is partial: the partial lines are
/// cleaned and invalidated, the whole lines between them invalidated.
#[inline]
fn partial_lines_for_cpu<C: CacheMaintenance + ?Sized>(cache: &C, range: PhysRange, line: u64) {
    let start = range.start().as_u64();
    let end = range.end().as_u64();
    // `line` is a power of two (the trait's contract): masks, not divisions. A start that
    // cannot round up has no whole line after it.
    let first_full = range
        .start()
        .checked_align_up(line)
        .map_or(u64::MAX, |a| a.as_u64());
    let last_full = end & !(line - 1);
    if first_full >= last_full {
        // No whole line inside: every touched line is partial.
        cache.clean_invalidate(range);
        return;
    }
    if start != first_full {
        edge(cache, start, first_full - start);
    }
    if let Some(mid) = PhysRange::new(crate::PhysAddr::new(first_full), last_full - first_full) {
        cache.invalidate(mid);
    }
    if end != last_full {
        edge(cache, last_full, end - last_full);
    }
}

fn edge<C: CacheMaintenance + ?Sized>(cache: &C, start: u64, len: u64) {
    if let Some(r) = PhysRange::new(crate::PhysAddr::new(start), len) {
        cache.clean_invalidate(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PhysAddr;
    use alloc::vec::Vec;
    use core::cell::RefCell;

    #[derive(Default)]
    struct Log(RefCell<Vec<(&'static str, u64, u64)>>);
    impl CacheMaintenance for Log {
        fn cache_line_size(&self) -> u64 {
            64
        }
        fn clean(&self, r: PhysRange) {
            self.0
                .borrow_mut()
                .push(("clean", r.start().as_u64(), r.len()));
        }
        fn invalidate(&self, r: PhysRange) {
            self.0
                .borrow_mut()
                .push(("inval", r.start().as_u64(), r.len()));
        }
        fn clean_invalidate(&self, r: PhysRange) {
            self.0
                .borrow_mut()
                .push(("civac", r.start().as_u64(), r.len()));
        }
    }

    fn r(a: u64, l: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(a), l).unwrap()
    }

    #[test]
    fn before_device() {
        let log = Log::default();
        for_device(&log, r(0x40, 64), Direction::ToDevice);
        for_device(&log, r(0x40, 64), Direction::FromDevice);
        for_device(&log, r(0x40, 64), Direction::Bidirectional);
        assert_eq!(
            *log.0.borrow(),
            [
                ("clean", 0x40, 64),
                ("civac", 0x40, 64),
                ("civac", 0x40, 64)
            ]
        );
    }

    #[test]
    fn after_device_splits_partial_edges() {
        let log = Log::default();
        for_cpu(&log, r(0x48, 0x100), Direction::FromDevice);
        assert_eq!(
            *log.0.borrow(),
            [
                ("civac", 0x48, 0x38),
                ("inval", 0x80, 0xc0),
                ("civac", 0x140, 8)
            ]
        );
        log.0.borrow_mut().clear();
        for_cpu(&log, r(0x40, 0x80), Direction::Bidirectional);
        assert_eq!(*log.0.borrow(), [("inval", 0x40, 0x80)]);
        log.0.borrow_mut().clear();
        for_cpu(&log, r(0x44, 8), Direction::FromDevice);
        assert_eq!(*log.0.borrow(), [("civac", 0x44, 8)]);
        log.0.borrow_mut().clear();
        for_cpu(&log, r(0x40, 64), Direction::ToDevice);
        assert!(log.0.borrow().is_empty());
    }
}
