//! Deferred mappings under a mix of devices, on the machine model: the growth hook runs
//! without the queue's lock (and may retry synchronously), a buffer that needs no bounce
//! never waits, a request no free could satisfy fails at once, a released device's
//! waiting mappings are ended at release, and each device waits in its own FIFO.
//! The controls (`deferred_isolation_controls`) run the same scenarios with each defect
//! put back.

mod deferred_scenarios;
mod testbed;

use std::time::Duration;

use deferred_scenarios::*;
use dmakit::{DeviceId, DmaError, MapStatus};

#[test]
fn a_growth_hook_that_retries_synchronously_completes() {
    let seen = hook_retries_synchronously(Duration::from_secs(20))
        .expect("map_or_defer must return although its growth hook calls retry_deferred");
    assert_eq!(seen.status, MapStatus::Deferred);
    assert_eq!(
        seen.hook_calls, 1,
        "one growth request while it stays pending"
    );
    assert_eq!(seen.completions.len(), 1, "{seen:?}");
    assert!(seen.completions[0].1.is_ok(), "{seen:?}");
    assert_eq!(seen.used_at_end, 0);
}

#[test]
fn a_buffer_that_needs_no_bounce_maps_at_once_while_others_wait() {
    let seen = unneeded_mapping_while_queued();
    assert_eq!(
        seen.status,
        MapStatus::Mapped(dmakit::DmaAddr::new(seen.phys.as_u64())),
        "the direct path serves it in place"
    );
    assert_eq!(seen.queued_after, 1, "only the bounced request waits");
}

#[test]
fn a_request_no_free_could_satisfy_fails_at_once() {
    let seen = too_large_while_queued();
    assert_eq!(
        seen.answer,
        Err(DmaError::TooLargeToBounce {
            device: DeviceId(1),
            len: POOL + 4096,
            max: POOL
        })
    );
    assert_eq!(seen.queued_after, 1);
    assert_eq!(seen.usage_before, seen.usage_after, "nothing changed");
    // Only the request that waited completes, and it maps.
    assert_eq!(seen.later.len(), 1, "{:?}", seen.later);
    assert_eq!(seen.later[0].0, 1);
    assert!(seen.later[0].1.is_ok());
}

#[test]
fn release_ends_the_devices_waiting_mappings_at_once() {
    let seen = release_with_queued_mappings();
    assert_eq!(seen.queued_after_release, 0);
    let released = Err(DmaError::DeviceReleased {
        device: DeviceId(1),
    });
    assert_eq!(
        seen.at_release,
        vec![(1, released), (2, released)],
        "both callbacks ran at release, in order, with the documented error"
    );
    assert!(seen.after_free.is_empty(), "{:?}", seen.after_free);
    assert_eq!(seen.used_at_end, 0);
}

#[test]
fn each_device_waits_in_its_own_fifo() {
    let seen = two_devices_one_pool();
    assert!(
        matches!(seen.roomy_status, MapStatus::Mapped(_)),
        "device 2 is not held up behind device 1: {seen:?}"
    );
    assert_eq!(seen.blocked_status, MapStatus::Deferred);
    assert_eq!(
        seen.after_dev2_free,
        [21],
        "device 2's room serves device 2; device 1's small request stays behind its head"
    );
    assert_eq!(seen.after_hog_free, [1, 2], "device 1 in request order");
    assert_eq!(seen.used_at_end, 0);
}

#[test]
fn a_release_from_the_hook_during_a_retry_ends_the_claimed_entry() {
    let seen = release_during_a_retry(Duration::from_secs(20))
        .expect("the retry must return although its growth hook releases the device");
    assert_eq!(seen.hook_calls, 2);
    assert_eq!(seen.queued_after, 0);
    assert_eq!(
        seen.completions,
        [(
            1,
            Err(DmaError::DeviceReleased {
                device: DeviceId(1)
            })
        )]
    );
    assert_eq!(seen.used_at_end, 0);
}
