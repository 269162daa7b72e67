//! Unit tests of the checker's arithmetic at the edge of the address space.

use super::report::DebugIssue;
use super::scenarios::mappings_at_the_top;

#[test]
fn mappings_at_the_top_of_the_address_space_are_checked_without_overflow() {
    let seen = mappings_at_the_top();
    assert_eq!(
        seen,
        Ok(alloc::vec![
            DebugIssue::SharedInboundLine,
            DebugIssue::CpuWriteWhileDeviceOwns,
            DebugIssue::Leak,
            DebugIssue::Leak,
            DebugIssue::Leak,
        ])
    );
}
