#![cfg(feature = "reintroduce-defects")]
//! Controls for `input_validation`: each defect put back, the same scenario accepts the
//! bad input.

mod input_scenarios;
mod testbed;

use dmakit::reintroduce::{put_back, Defect};
use dmakit::MapStatus;
use input_scenarios::*;

#[test]
fn control_huge_range_is_accepted() {
    let _g = put_back(Some(Defect::HugeRangeAccepted));
    let seen = huge_ranges();
    assert_eq!(seen.whole_space, Ok(0), "{seen:?}");
    assert!(
        matches!(seen.whole_space_deferred, Ok(MapStatus::Mapped(_))),
        "{seen:?}"
    );
    assert!(seen.last_page.is_ok(), "{seen:?}");
}

#[test]
fn control_dma_bits_above_64_are_accepted() {
    let _g = put_back(Some(Defect::DmaBitsAbove64Accepted));
    let seen = dma_bits_around_64();
    let above: Vec<_> = seen.iter().filter(|(b, _)| *b > 64).collect();
    assert_eq!(above.len(), 3);
    assert!(above.iter().all(|(_, r)| *r == Ok(u64::MAX)), "{seen:?}");
}
