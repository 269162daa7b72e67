//! Isolation and coalescing of the coherent object pool on the machine model, through both
//! of its users: the coherent bounce backend (`DmaMapperBuilder::coherent_backend`) and the
//! atomic pool of `DmaAllocator::alloc_coherent`.
//!
//! The same scenarios run with the fixed defect put back in
//! `coherent_pool_isolation_controls.rs`.

mod coherent_pool_scenarios;
mod testbed;

use coherent_pool_scenarios::*;

#[test]
fn a_whole_free_pool_serves_a_pool_sized_bounce_after_a_small_one() {
    let out = bounce_whole_pool_after_small_free(1);
    assert_eq!((out.maps, out.exhausted), (2, 0), "{out:?}");
    assert!(out.other_errors.is_empty(), "{out:?}");
    assert_eq!(out.high_water, 64 * KIB);
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.report.transfers, 2);
    assert_eq!(out.report.device_read_bytes, 100 + 64 * KIB);
    assert_eq!((out.used_after, out.live_after), (0, 0));
}

#[test]
fn a_whole_free_atomic_pool_serves_a_pool_sized_allocation_after_a_small_one() {
    let out = atomic_whole_pool_after_small_free(2);
    assert_eq!(out.big, Ok(()));
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.report.device_read_bytes, 64 * KIB);
    assert_eq!(out.used_after, 0);
}

#[test]
fn two_devices_bouncing_through_one_pool_stay_isolated_and_never_fragment_it() {
    let out = two_devices_interleaved(3, 400);
    assert_eq!(out.exhausted, 0, "{out:?}");
    assert!(out.other_errors.is_empty(), "{out:?}");
    assert!(out.maps >= 150, "{out:?}");
    assert_eq!((out.overlaps, out.foreign_live_bytes), (0, 0), "{out:?}");
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.report.transfers, out.maps);
    assert_eq!((out.used_after, out.live_after), (0, 0));
}

#[test]
fn fragmented_free_bytes_do_not_put_growth_off() {
    let out = fragmented_pool_growth(4);
    assert_eq!((out.free, out.largest_free), (62 * KIB, 2 * KIB), "{out:?}");
    assert_eq!(out.requests, 1, "{out:?}");
}
