#![cfg(feature = "reintroduce-defects")]
//! Control for `checker_isolation`: the checker forgets the record before the unmap is
//! validated, and the same scenario sees the false report, the unchecked sync and the
//! missed leak.

mod checker_scenarios;
mod testbed;

use checker_scenarios::*;
use dmakit::debug::DebugIssue;
use dmakit::reintroduce::{put_back, Defect};

#[test]
fn control_checker_forgets_before_validation() {
    let _g = put_back(Some(Defect::CheckerForgetsBeforeValidation));
    let seen = refused_unmaps_of_a_bounced_mapping();
    assert_eq!(seen.live_after, 0, "{seen:?}");
    assert_eq!(seen.sync_outside.1, [DebugIssue::NotMapped], "{seen:?}");
    assert_eq!(seen.correct_unmap.1, [DebugIssue::NotMapped], "{seen:?}");
    assert!(seen.leaks_at_release.is_empty(), "{seen:?}");
}
