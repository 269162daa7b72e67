//! Fault injection on the platform side: dropping cache maintenance.
//!
//! A model that cannot fail proves nothing. Tests switch off selected maintenance
//! operations (all of one kind, optionally only inside one range) and check that the oracle
//! then reports the damage the missing maintenance causes.

use dmakit::PhysRange;

/// A cache maintenance operation kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaintenanceKind {
    /// Write back dirty lines.
    Clean,
    /// Discard lines.
    Invalidate,
    /// Write back, then discard.
    CleanInvalidate,
}

/// Which maintenance operations the platform silently skips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceFaults {
    /// Skip `clean`.
    pub drop_clean: bool,
    /// Skip `invalidate`.
    pub drop_invalidate: bool,
    /// Skip `clean_invalidate`.
    pub drop_clean_invalidate: bool,
    /// When set, only operations overlapping this range are skipped.
    pub only_in: Option<PhysRange>,
}

impl MaintenanceFaults {
    /// Nothing is dropped.
    pub const NONE: MaintenanceFaults = MaintenanceFaults {
        drop_clean: false,
        drop_invalidate: false,
        drop_clean_invalidate: false,
        only_in: None,
    };

    /// Every maintenance operation is dropped.
    pub const ALL: MaintenanceFaults = MaintenanceFaults {
        drop_clean: true,
        drop_invalidate: true,
        drop_clean_invalidate: true,
        only_in: None,
    };

    /// Whether an operation of `kind` on `range` is to be skipped.
    pub fn drops(&self, kind: MaintenanceKind, range: PhysRange) -> bool {
        let selected = match kind {
            MaintenanceKind::Clean => self.drop_clean,
            MaintenanceKind::Invalidate => self.drop_invalidate,
            MaintenanceKind::CleanInvalidate => self.drop_clean_invalidate,
        };
        selected && self.only_in.is_none_or(|r| r.overlaps(&range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmakit::PhysAddr;

    #[test]
    fn selection_by_kind_and_range() {
        let r = |a, l| PhysRange::new(PhysAddr::new(a), l).unwrap();
        assert!(!MaintenanceFaults::NONE.drops(MaintenanceKind::Clean, r(0, 64)));
        assert!(MaintenanceFaults::ALL.drops(MaintenanceKind::Invalidate, r(0, 64)));
        let f = MaintenanceFaults {
            drop_clean: true,
            only_in: Some(r(0x1000, 0x1000)),
            ..MaintenanceFaults::NONE
        };
        assert!(f.drops(MaintenanceKind::Clean, r(0xfc0, 0x80)));
        assert!(!f.drops(MaintenanceKind::Clean, r(0x2000, 0x40)));
        assert!(!f.drops(MaintenanceKind::CleanInvalidate, r(0x1000, 0x40)));
    }
}
