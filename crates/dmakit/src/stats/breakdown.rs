//! Counters split by bounce reason or by direction, one named field per value.
//!
//! A bare array indexed in the order of [`BounceReason::ALL`] lets a reader take one
//! reason's count for another's without a word from the compiler. Named fields cannot be
//! mixed up that way, and [`ByReason::get`] / [`ByDirection::get`] serve callers that hold
//! a reason or a direction. The same types hold the map path's atomics, so a counter is
//! found by a `match`, not by an index computed apart from the type.

use crate::decision::BounceReason;
use crate::direction::Direction;

/// One `T` per [`BounceReason`]; `u64` counts in snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ByReason<T = u64> {
    /// [`BounceReason::Forced`].
    pub forced: T,
    /// [`BounceReason::AboveMask`].
    pub above_mask: T,
    /// [`BounceReason::Misaligned`].
    pub misaligned: T,
    /// [`BounceReason::Untrusted`].
    pub untrusted: T,
}

impl<T> ByReason<T> {
    /// The value for `reason`.
    #[inline]
    pub(crate) const fn get(&self, reason: BounceReason) -> &T {
        match reason {
            BounceReason::Forced => &self.forced,
            BounceReason::AboveMask => &self.above_mask,
            BounceReason::Misaligned => &self.misaligned,
            BounceReason::Untrusted => &self.untrusted,
        }
    }

    /// Every reason with its value, in [`BounceReason::ALL`] order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (BounceReason, &T)> {
        BounceReason::ALL.into_iter().map(move |r| (r, self.get(r)))
    }

    /// `f` applied to every value.
    pub(crate) fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ByReason<U> {
        ByReason {
            forced: f(&self.forced),
            above_mask: f(&self.above_mask),
            misaligned: f(&self.misaligned),
            untrusted: f(&self.untrusted),
        }
    }
}

impl ByReason {
    /// The sum over all reasons.
    pub(crate) fn total(&self) -> u64 {
        self.forced + self.above_mask + self.misaligned + self.untrusted
    }

    pub(crate) fn add(&mut self, o: &Self) {
        self.forced += o.forced;
        self.above_mask += o.above_mask;
        self.misaligned += o.misaligned;
        self.untrusted += o.untrusted;
    }
}

/// One `T` per [`Direction`]; `u64` counts in snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct ByDirection<T = u64> {
    /// [`Direction::ToDevice`].
    pub to_device: T,
    /// [`Direction::FromDevice`].
    pub from_device: T,
    /// [`Direction::Bidirectional`].
    pub bidirectional: T,
}

impl<T> ByDirection<T> {
    /// The value for `dir`.
    #[inline]
    pub(crate) const fn get(&self, dir: Direction) -> &T {
        match dir {
            Direction::ToDevice => &self.to_device,
            Direction::FromDevice => &self.from_device,
            Direction::Bidirectional => &self.bidirectional,
        }
    }

    /// `f` applied to every value.
    pub(crate) fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> ByDirection<U> {
        ByDirection {
            to_device: f(&self.to_device),
            from_device: f(&self.from_device),
            bidirectional: f(&self.bidirectional),
        }
    }
}

impl ByDirection {
    /// The sum over all directions.
    pub fn total(&self) -> u64 {
        self.to_device + self.from_device + self.bidirectional
    }

    pub(crate) fn add(&mut self, o: &Self) {
        self.to_device += o.to_device;
        self.from_device += o.from_device;
        self.bidirectional += o.bidirectional;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_and_direction_has_its_own_field() {
        let mut by_reason = ByReason::default();
        by_reason.add(&ByReason {
            forced: 1,
            above_mask: 2,
            misaligned: 3,
            untrusted: 4,
        });
        let got: alloc::vec::Vec<_> = by_reason.iter().map(|(r, &n)| (r, n)).collect();
        assert_eq!(
            got,
            [
                (BounceReason::Forced, 1),
                (BounceReason::AboveMask, 2),
                (BounceReason::Misaligned, 3),
                (BounceReason::Untrusted, 4),
            ]
        );
        assert_eq!(by_reason.total(), 10);
        let by_dir = ByDirection {
            to_device: 1,
            from_device: 2,
            bidirectional: 3,
        };
        let got: alloc::vec::Vec<_> = Direction::ALL.map(|d| *by_dir.get(d)).to_vec();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(by_dir.map(|n| n * 2).total(), 12);
    }
}
