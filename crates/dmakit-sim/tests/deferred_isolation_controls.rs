#![cfg(feature = "reintroduce-defects")]
//! Controls for `deferred_isolation`: each defect put back, the same scenario observes it.

mod deferred_scenarios;
mod testbed;

use std::time::Duration;

use deferred_scenarios::*;
use dmakit::reintroduce::{put_back, Defect};
use dmakit::{DmaError, MapStatus};

#[test]
fn control_hook_under_lock_hangs() {
    let _g = put_back(Some(Defect::DeferHookUnderLock));
    // The scenario's thread spins for ever on the queue's lock; it is left behind.
    let seen = hook_retries_synchronously(Duration::from_secs(3));
    assert!(seen.is_none(), "{seen:?}");
}

#[test]
fn control_unneeded_mapping_is_deferred() {
    let _g = put_back(Some(Defect::DeferUnneededMapping));
    let seen = unneeded_mapping_while_queued();
    assert_eq!(seen.status, MapStatus::Deferred);
    assert_eq!(seen.queued_after, 2);
}

#[test]
fn control_too_large_is_queued() {
    let _g = put_back(Some(Defect::DeferTooLarge));
    let seen = too_large_while_queued();
    assert_eq!(seen.answer, Ok(MapStatus::Deferred));
    assert_eq!(seen.queued_after, 2);
    // It fails only later, through its callback.
    assert!(
        seen.later
            .iter()
            .any(|(t, r)| *t == 2 && matches!(r, Err(DmaError::TooLargeToBounce { .. }))),
        "{:?}",
        seen.later
    );
}

#[test]
fn control_release_leaves_mappings_queued() {
    let _g = put_back(Some(Defect::DeferSurvivesRelease));
    let seen = release_with_queued_mappings();
    assert_eq!(seen.queued_after_release, 2);
    assert!(seen.at_release.is_empty());
    // The released device's callbacks fire later, with live mappings.
    assert_eq!(seen.after_free.len(), 2, "{:?}", seen.after_free);
    assert!(seen.after_free.iter().all(|(_, r)| r.is_ok()));
}

#[test]
fn control_single_fifo_blocks_the_other_device() {
    let _g = put_back(Some(Defect::DeferSingleFifo));
    let seen = two_devices_one_pool();
    assert_eq!(seen.roomy_status, MapStatus::Deferred, "{seen:?}");
    assert!(seen.after_dev2_free.is_empty(), "{seen:?}");
}

#[test]
fn control_release_from_the_hook_leaves_the_entry_queued() {
    let _g = put_back(Some(Defect::DeferSurvivesRelease));
    let seen = release_during_a_retry(Duration::from_secs(20)).expect("finishes");
    assert_eq!(seen.queued_after, 1, "{seen:?}");
    // It completes later, mapped, for the released device.
    assert_eq!(seen.completions.len(), 1, "{seen:?}");
    assert!(seen.completions[0].1.is_ok(), "{seen:?}");
}
