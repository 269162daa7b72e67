#![cfg(feature = "reintroduce-defects")]
//! Controls of `iommu_isolation.rs`: each puts one fixed defect back and runs the same
//! scenario, which must now show the failure the test guards against.

mod iommu_isolation_scenarios;

use dmakit::reintroduce::{put_back, Defect};
use dmakit::DmaError;
use dmakit_sim::Granule;
use iommu_isolation_scenarios as s;

#[test]
fn control_iommu_map_sg_uncounted() {
    let _g = put_back(Some(Defect::IommuSgUncounted));
    let c = s::sg_counts();
    assert_eq!(c.pool_live, 2, "the bounces are live: {c:?}");
    assert_eq!((c.mappings, c.untrusted_bounces), (0, 0), "{c:?}");
}

#[test]
fn control_lazy_pairs_leave_the_pool_full() {
    let _g = put_back(Some(Defect::LazyDomainParksBounces));
    let p = s::lazy_pairs(128);
    assert_eq!(p.used, p.total, "{p:?}");
    assert_eq!(p.domain_live, 0, "{p:?}");
    assert!(
        matches!(p.next, Err(DmaError::PoolExhausted { .. })),
        "{p:?}"
    );
}

#[test]
fn control_iommu_sg_list_fails_behind_parked_slots() {
    let _g = put_back(Some(Defect::LazyDomainParksBounces));
    let (used, total, sg) = s::sg_behind_parked_slots();
    assert_eq!(used, total);
    assert!(matches!(sg, Err(DmaError::PoolExhausted { .. })), "{sg:?}");
}

#[test]
fn control_lazy_waiter_never_woken() {
    let _g = put_back(Some(Defect::LazyDomainParksBounces));
    let w = s::waiter_behind_lazy_unmaps();
    assert_eq!(
        w,
        s::Waiter {
            deferred: true,
            completed: false,
            still_queued: 1
        }
    );
}

#[test]
fn control_lazy_flush_wakes_nobody() {
    let _g = put_back(Some(Defect::LazyDomainParksBounces));
    let w = s::waiter_woken_by_flush();
    assert_eq!(
        w,
        s::FlushWake {
            deferred: true,
            parked: 90,
            completed_before_flush: false,
            completed_after_flush: false,
            released: 90,
        }
    );
}

#[test]
fn control_lazy_window_unbounded_in_time() {
    let _g = put_back(Some(Defect::LazyDomainParksBounces));
    let w = s::lazy_window_after_timeout();
    assert_eq!(
        w,
        s::Window {
            queued_after_unmap: 1,
            queued_after_deadline: 1,
            reached_after_deadline: true,
        }
    );
}

#[test]
fn control_faulted_copy_back_leaks_the_slot() {
    let _g = put_back(Some(Defect::IommuFaultLeaksSlot));
    let f = s::faulted_copy_back();
    assert!(matches!(f.unmap, Err(DmaError::Memory(_))), "{f:?}");
    assert_eq!(f.pool_live, 1, "{f:?}");
    assert!(f.refilled < s::POOL_SLOTS / 2, "{f:?}");
}

#[test]
fn control_sub_granule_allocations_fail() {
    let _g = put_back(Some(Defect::SubGranuleAllocNotRounded));
    for g in [Granule::K16, Granule::K64] {
        let all = s::sub_granule_allocations(g);
        for what in ["alloc_coherent(4 KiB)", "alloc_pages(8 KiB)"] {
            let a = all.iter().find(|a| a.what == what).unwrap();
            assert!(
                a.result
                    .as_ref()
                    .is_err_and(|e| e.contains("page tables could not be updated")),
                "{g:?}: {a:?}"
            );
        }
    }
    // 4 KiB granules never needed the rounding.
    assert!(s::sub_granule_allocations(Granule::K4)
        .iter()
        .all(|a| a.result.is_ok()));
}

#[test]
fn control_empty_unmap_sg_inconsistent() {
    let _g = put_back(Some(Defect::EmptyUnmapSgInconsistent));
    let (direct, translated) = s::empty_unmap_sg();
    assert_eq!(direct, Ok(()));
    assert!(
        matches!(translated, Err(DmaError::ZeroLength { .. })),
        "{translated:?}"
    );
}

#[test]
fn control_detached_device_goes_direct() {
    let _g = put_back(Some(Defect::DetachGoesDirect));
    let a = s::after_detach();
    assert!(a.map.is_ok(), "mapped directly: {a:?}");
    assert!(!a.device_write_ok, "the IOMMU blocks the address: {a:?}");
    assert_eq!(a.unmap_old_iova, Ok(()), "{a:?}");
    assert!(
        !a.bystander_intact,
        "the IOVA was taken for a physical address: {a:?}"
    );
    assert!(a.alloc.is_ok(), "{a:?}");
}

#[test]
fn control_sync_past_the_end_syncs_the_next_mapping() {
    let _g = put_back(Some(Defect::IommuSyncStraysIntoNeighbour));
    let p = s::sync_past_the_end();
    assert!(
        p.for_cpu.is_ok() || p.for_device.is_ok(),
        "the sync found B's record: {p:?}"
    );
    assert!(
        p.b_cpu_bytes_changed > 0,
        "B's bounced byte reached its CPU buffer: {p:?}"
    );
}
