//! The debug checker keeps its record of a mapping until the mapping layer has accepted
//! the unmap: a refused unmap leaves both the mapping and its record, so the later correct
//! unmap is clean, syncs are checked and a leak at release is reported. The control
//! (`checker_isolation_controls`) runs the same scenario with the defect put back.

mod checker_scenarios;
mod testbed;

use checker_scenarios::*;
use dmakit::debug::DebugIssue;
use dmakit::DmaError;

#[test]
fn a_refused_unmap_keeps_the_mapping_and_its_record() {
    let seen = refused_unmaps_of_a_bounced_mapping();
    assert!(
        matches!(seen.wrong_size.0, Err(DmaError::OutOfMapping { .. })),
        "{seen:?}"
    );
    assert_eq!(seen.wrong_size.1, [DebugIssue::WrongSize]);
    assert!(
        matches!(seen.wrong_dir.0, Err(DmaError::WrongDirection { .. })),
        "{seen:?}"
    );
    assert_eq!(seen.wrong_dir.1, [DebugIssue::WrongDirection]);
    assert_eq!(seen.live_after, 1, "the record survives the refusals");
    assert!(seen.sync_outside.0.is_err());
    assert_eq!(
        seen.sync_outside.1,
        [DebugIssue::SyncOutOfRange],
        "the sync is checked against the mapping"
    );
    assert_eq!(
        seen.correct_unmap,
        (Ok(()), vec![]),
        "the correct unmap is clean"
    );
    assert_eq!(seen.leaks_at_release, [DebugIssue::Leak]);
    assert_eq!(seen.used_at_end, 0);
}
