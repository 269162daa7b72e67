#![cfg(feature = "reintroduce-defects")]
//! Controls for the checker's unit tests (`src/debug/tests.rs`): the same scenarios with a
//! defect put back.

use dmakit::debug::scenarios::mappings_at_the_top;
use dmakit::debug::DebugIssue;
use dmakit::reintroduce::{put_back, Defect};

#[test]
fn control_rounding_overflows_at_the_top() {
    let _g = put_back(Some(Defect::CheckerRoundingOverflow));
    let seen = mappings_at_the_top();
    // With overflow checks (the test profile) the rounding panics; without them it wraps
    // and the shared line goes unreported.
    match seen {
        Err(msg) => assert!(msg.contains("overflow"), "{msg}"),
        Ok(issues) => assert!(
            !issues.contains(&DebugIssue::SharedInboundLine),
            "{issues:?}"
        ),
    }
}
