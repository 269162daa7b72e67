//! The parts of a mapping the CPU owns, in a fixed inline array.
//!
//! Every `sync_for_cpu` hands part of a mapping back to the CPU, and the checker must
//! remember it without allocating (syncs run in interrupt context). At most
//! [`MAX_CPU_PARTS`] distinct parts are held; one more is counted as dropped by the
//! checker ([`crate::debug::DebugChecker::dropped_cpu_parts`]), and the CPU's later access to it
//! may then be reported although it is allowed.

/// Disjoint parts a mapping can hand back to the CPU at once and have tracked.
pub const MAX_CPU_PARTS: usize = 8;

/// Parts `(offset, length)` of a mapping handed back to the CPU by `sync_for_cpu` and not
/// yet returned to the device; at most [`MAX_CPU_PARTS`] distinct ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuParts {
    parts: [(u64, u64); MAX_CPU_PARTS],
    len: usize,
}

impl CpuParts {
    /// No part.
    pub const EMPTY: CpuParts = CpuParts {
        parts: [(0, 0); MAX_CPU_PARTS],
        len: 0,
    };

    /// The parts, as `(offset, length)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.parts[..self.len].iter().copied()
    }

    /// Adds the part `(offset, len)` (a part already held is not held twice). Returns
    /// `false`, nothing changed, when [`MAX_CPU_PARTS`] other parts are held.
    pub(crate) fn add(&mut self, offset: u64, len: u64) -> bool {
        if self.iter().any(|p| p == (offset, len)) {
            return true;
        }
        if self.len == MAX_CPU_PARTS {
            return false;
        }
        self.parts[self.len] = (offset, len);
        self.len += 1;
        true
    }

    /// Removes every part that overlaps `offset..offset + len` (handed back to the device;
    /// the caller checked it lies in the mapping).
    pub(crate) fn remove_overlapping(&mut self, offset: u64, len: u64) {
        let mut kept = 0;
        for i in 0..self.len {
            let (o, l) = self.parts[i];
            if o + l <= offset || o >= offset + len {
                self.parts[kept] = (o, l);
                kept += 1;
            }
        }
        self.len = kept;
    }
}
