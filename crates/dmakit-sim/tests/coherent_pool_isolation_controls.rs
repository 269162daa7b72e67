#![cfg(feature = "reintroduce-defects")]
//! Controls for `coherent_pool_isolation.rs`: the same scenarios with the coherent object
//! pool's coalescing (and its fragmentation-aware growth threshold) taken out again
//! (`Defect::CoherentNoCoalesce`). Each must observe the failure the fixed test rules out.

mod coherent_pool_scenarios;
mod testbed;

use coherent_pool_scenarios::*;
use dmakit::dma_alloc::DmaAllocError;
use dmakit::reintroduce::{put_back, Defect};

#[test]
fn without_coalescing_the_pool_sized_bounce_fails_on_a_free_pool() {
    let _g = put_back(Some(Defect::CoherentNoCoalesce));
    let out = bounce_whole_pool_after_small_free(1);
    assert_eq!((out.maps, out.exhausted), (2, 1), "{out:?}");
    // Nothing was live when it failed: the whole pool was free, in pieces.
    assert_eq!(out.high_water, 128);
    assert_eq!((out.used_after, out.live_after), (0, 0));
}

#[test]
fn without_coalescing_the_pool_sized_atomic_allocation_fails_on_a_free_pool() {
    let _g = put_back(Some(Defect::CoherentNoCoalesce));
    let out = atomic_whole_pool_after_small_free(2);
    assert!(
        matches!(
            out.big,
            Err(DmaAllocError::AtomicPoolExhausted { used: 0, .. })
        ),
        "{:?}",
        out.big
    );
    assert_eq!(out.used_after, 0);
}

#[test]
fn without_coalescing_two_devices_exhaust_a_pool_that_has_room() {
    let _g = put_back(Some(Defect::CoherentNoCoalesce));
    let out = two_devices_interleaved(3, 400);
    assert!(out.exhausted > 0, "{out:?}");
    // The failures are exhaustion, not corruption: what did map stays isolated.
    assert_eq!((out.overlaps, out.foreign_live_bytes), (0, 0), "{out:?}");
    assert!(out.report.is_clean(), "{}", out.report);
    eprintln!(
        "no coalescing: {} of {} maps exhausted",
        out.exhausted, out.maps
    );
}

#[test]
fn without_the_fragmentation_aware_threshold_growth_is_not_requested() {
    let _g = put_back(Some(Defect::CoherentNoCoalesce));
    let out = fragmented_pool_growth(4);
    // 62 KiB free, none of it in a block of 16 KiB (without merging, not even 256 bytes).
    assert_eq!((out.free, out.largest_free), (62 * KIB, 128), "{out:?}");
    assert_eq!(out.requests, 0, "{out:?}");
}
