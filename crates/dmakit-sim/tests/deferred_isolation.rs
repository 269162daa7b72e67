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

/// Two devices on two threads share a pool with room for one bounce at a time; each
/// queues two requests, then unmaps them as they complete. No completion may be lost
/// (claimed entries, dropped locks) and each device's complete in its request order.
#[test]
fn two_devices_contending_for_one_slot_lose_no_completion_and_keep_order() {
    use dmakit::swiotlb::PoolConfig;
    use dmakit::swiotlb::SwiotlbBounce;
    use dmakit::{Device, Direction, DmaMapper, PhysAddr};
    use dmakit_sim::host::{HostMaintenance, HostPlatform};
    use std::sync::mpsc::channel;
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;
    let host = HostPlatform::new(0, 8 * MIB, 2, 64, HostMaintenance::None).unwrap();
    let cfg = PoolConfig::builder().cpu_count(2).build().unwrap();
    let pool = Arc::new(SwiotlbBounce::new(cfg, None, 0, u64::MAX));
    pool.add_region(PhysAddr::new(0), 256 * 1024).unwrap();
    let mapper = DmaMapper::builder(&host)
        .swiotlb_backend(pool.clone())
        .build();
    let len = 150 * 1024;
    let dir = Direction::FromDevice;
    std::thread::scope(|s| {
        for t in 0..2u32 {
            let (mapper, host) = (&mapper, &host);
            s.spawn(move || {
                host.bind_current_thread(t as usize);
                let dev = Device::builder(DeviceId(t + 1), "t")
                    .cache_line(64)
                    .build()
                    .unwrap();
                let buf = PhysAddr::new(MIB + t as u64 * 2 * MIB + 8);
                for i in 0..300u32 {
                    let (tx, rx) = channel();
                    let mut now = Vec::new();
                    for k in 0..2u32 {
                        let tx = tx.clone();
                        let at = buf.add(k as u64 * 200 * 1024);
                        let done = Box::new(move |r| tx.send((k, r)).unwrap());
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        match unsafe { mapper.map_or_defer(&dev, at, len, dir, done) }.unwrap() {
                            MapStatus::Mapped(dma) => now.push((k, dma)),
                            MapStatus::Deferred => {}
                        }
                    }
                    let mut order = Vec::new();
                    for (k, dma) in now {
                        order.push(k);
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { mapper.unmap(&dev, dma, len, dir) }.unwrap();
                    }
                    while order.len() < 2 {
                        let (k, r) = rx
                            .recv_timeout(Duration::from_secs(60))
                            .unwrap_or_else(|_| panic!("device {t}: round {i}: lost completion"));
                        order.push(k);
                        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
                        unsafe { mapper.unmap(&dev, r.unwrap(), len, dir) }.unwrap();
                    }
                    assert_eq!(order, [0, 1], "device {t}: round {i}: request order");
                }
            });
        }
    });
    assert_eq!(mapper.deferred_len(), 0);
    assert_eq!(dmakit::bounce::BounceBackend::usage(pool.as_ref()).used, 0);
    // Every round's second request had to wait for the first.
    let deferred = mapper.stats().total().deferred;
    assert!(deferred >= 600, "{deferred} deferrals");
}
