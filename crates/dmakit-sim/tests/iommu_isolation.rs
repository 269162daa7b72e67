//! Isolation on the IOMMU path under a mix of devices and modes (issue 11): statistics of
//! IOMMU scatter-gather lists, lazy domains under bounce pressure and in time, a faulting
//! copy back, allocations behind 16 and 64 KiB granules, `unmap_sg(&[])`, and detached
//! devices. Each test has a control in `iommu_isolation_controls.rs` that puts the fixed
//! defect back and shows the same scenario failing.

mod iommu_isolation_scenarios;

use dmakit::iommu::IommuDmaError;
use dmakit::DmaError;
use dmakit_sim::Granule;
use iommu_isolation_scenarios as s;

#[test]
fn iommu_map_sg_is_counted_like_single_mappings() {
    let c = s::sg_counts();
    assert_eq!(c.pool_live, 2, "{c:?}");
    assert_eq!(c.mappings, 2, "{c:?}");
    assert_eq!(c.untrusted_bounces, 2, "{c:?}");
    assert_eq!(c.after_unmap_pool_live, 0, "{c:?}");
}

#[test]
fn lazy_map_unmap_pairs_do_not_leave_the_pool_full() {
    let p = s::lazy_pairs(128);
    assert_eq!(p.domain_live, 0, "{p:?}");
    // What the pool still holds is parked for invalidation, and under three quarters.
    assert!(
        p.used * 4 < p.total * 3,
        "parked slots go back under pressure: {p:?}"
    );
    assert!(p.next.is_ok(), "{p:?}");
    assert!(p.pool_live_after_next <= p.pool_live + 1, "{p:?}");
}

#[test]
fn a_full_pool_of_parked_slots_is_reclaimed_before_a_map_fails() {
    // Every pair parks one slot until a drain; the map after them must succeed however
    // many pairs came before (below, at and past the pressure threshold and the pool).
    for pairs in [10, 95, 96, 127, 128, 200, 300] {
        let p = s::lazy_pairs(pairs);
        assert!(p.next.is_ok(), "{pairs} pairs: {p:?}");
        assert!(p.used < p.total, "{pairs} pairs: {p:?}");
    }
}

#[test]
fn an_iommu_sg_list_reclaims_parked_slots_before_it_fails() {
    let (used, total, sg) = s::sg_behind_parked_slots();
    assert_eq!(used, total, "the pool was full (parked and live)");
    assert_eq!(sg, Ok(2));
}

#[test]
fn unmaps_and_flushes_in_a_lazy_domain_wake_deferred_mappings() {
    let w = s::waiter_behind_lazy_unmaps();
    assert_eq!(
        w,
        s::Waiter {
            deferred: true,
            completed: true,
            still_queued: 0
        }
    );
}

#[test]
fn a_flush_of_the_iommu_queues_wakes_deferred_mappings() {
    let w = s::waiter_woken_by_flush();
    assert_eq!(
        w,
        s::FlushWake {
            deferred: true,
            parked: 90,
            completed_before_flush: false,
            completed_after_flush: true,
            released: 90,
        }
    );
}

#[test]
fn the_stale_iotlb_window_is_bounded_in_time() {
    let w = s::lazy_window_after_timeout();
    assert_eq!(
        w,
        s::Window {
            queued_after_unmap: 1,
            queued_after_deadline: 0,
            reached_after_deadline: false,
        }
    );
}

#[test]
fn a_lazily_unmapped_slot_is_reused_only_after_its_invalidation() {
    let st = s::stale_iova_after_pool_pressure(false);
    assert_eq!(
        st.other_mapped,
        s::POOL_SLOTS,
        "the parked slot was reclaimed: {st:?}"
    );
    assert_eq!(st.foreign_seen, None, "the old IOVA faults: {st:?}");
}

#[test]
fn control_without_invalidations_the_stale_iova_sees_the_new_owner() {
    let st = s::stale_iova_after_pool_pressure(true);
    assert_eq!(st.other_mapped, s::POOL_SLOTS, "{st:?}");
    assert!(
        st.foreign_seen.is_some_and(|n| n > 0),
        "the model can show the leak: {st:?}"
    );
}

#[test]
fn a_faulting_copy_back_still_frees_the_bounce_slot() {
    let f = s::faulted_copy_back();
    assert!(matches!(f.unmap, Err(DmaError::Memory(_))), "{f:?}");
    assert_eq!((f.pool_live, f.pool_used), (0, 0), "{f:?}");
    assert_eq!(f.refilled, s::POOL_SLOTS / 2, "{f:?}");
}

#[test]
fn sub_granule_allocations_round_up_behind_16_and_64_kib_granules() {
    for g in [Granule::K4, Granule::K16, Granule::K64] {
        for a in s::sub_granule_allocations(g) {
            assert_eq!(a.result, Ok(()), "{g:?}: {a:?}");
            assert!(a.device_saw_cpu_bytes, "{g:?}: {a:?}");
            assert!(a.freed_and_cut_off, "{g:?}: {a:?}");
            assert_eq!(a.foreign_in_granules, 0, "{g:?}: {a:?}");
        }
    }
}

#[test]
fn unmap_sg_of_an_empty_list_is_refused_on_every_path() {
    let (direct, translated) = s::empty_unmap_sg();
    assert!(
        matches!(direct, Err(DmaError::ZeroLength { .. })),
        "{direct:?}"
    );
    assert!(
        matches!(translated, Err(DmaError::ZeroLength { .. })),
        "{translated:?}"
    );
}

#[test]
fn a_detached_device_is_refused_never_mapped_directly() {
    let a = s::after_detach();
    assert_eq!(a.detach_while_mapped, Err(IommuDmaError::Busy), "{a:?}");
    assert_eq!(a.detach_while_allocated, Err(IommuDmaError::Busy), "{a:?}");
    assert!(matches!(a.map, Err(DmaError::Detached { .. })), "{a:?}");
    assert!(!a.device_write_ok, "{a:?}");
    assert!(
        matches!(a.unmap_old_iova, Err(DmaError::Detached { .. })),
        "{a:?}"
    );
    assert!(a.bystander_intact, "{a:?}");
    assert!(
        a.alloc.as_ref().is_err_and(|e| e.contains("detached")),
        "{a:?}"
    );
    assert!(a.reattached_works, "{a:?}");
}

#[test]
fn a_sync_past_a_mappings_end_does_not_sync_the_next_mapping() {
    let p = s::sync_past_the_end();
    assert_eq!(p.b_dma.as_u64(), p.a_dma.as_u64() + p.a_len, "{p:?}");
    assert!(
        matches!(p.for_cpu, Err(DmaError::OutOfMapping { .. })),
        "{p:?}"
    );
    assert!(
        matches!(p.for_device, Err(DmaError::OutOfMapping { .. })),
        "{p:?}"
    );
    assert_eq!(p.b_cpu_bytes_changed, 0, "{p:?}");
    assert_eq!(p.b_device_bytes_changed, 0, "{p:?}");
}
