#![cfg(feature = "reintroduce-defects")]
//! Controls of `swiotlb_isolation.rs`: the same scenarios with each defect put back, showing
//! that the tests see it. Run with
//! `cargo test -p dmakit-sim --features reintroduce-defects --test swiotlb_isolation_controls`.

mod swiotlb_isolation_rig;

use dmakit::reintroduce::{put_back, Defect};
use dmakit::DmaError;
use swiotlb_isolation_rig::*;

#[test]
fn lead_in_freed_lets_the_untrusted_device_read_another_bounce() {
    let _g = put_back(Some(Defect::LeadInSlotsFreed));
    let r = untrusted_reads_its_granule();
    eprintln!("{r:?}");
    assert_eq!(r.offset, 0x900);
    assert!(r.other_in_granule, "{r:?}");
    assert_eq!((r.foreign, r.own), (100, 13), "{r:?}");
}

#[test]
fn lead_in_freed_lets_the_padding_wipe_an_in_flight_bounce() {
    let _g = put_back(Some(Defect::LeadInSlotsFreed));
    let r = padding_spares_in_flight_bounce();
    eprintln!("{r:?}");
    assert_eq!(
        r,
        InFlight {
            len: VW_LEN as usize,
            zeroed: VW_LEN as usize,
            wrong: VW_LEN as usize
        }
    );
}

#[test]
fn lead_in_freed_gives_the_lead_in_to_other_bounces() {
    let _g = put_back(Some(Defect::LeadInSlotsFreed));
    let r = min_align_lead_in();
    eprintln!("{r:?}");
    assert_eq!(r.offset, 0x900);
    assert!(r.others_inside >= 1, "{r:?}");
    assert!(r.foreign >= 100, "{r:?}");
    assert_eq!(r.used_alone, 2048);
}

#[test]
fn mask_limited_no_growth_answers_no_bounce_pool() {
    let _g = put_back(Some(Defect::MaskLimitedNoGrowth));
    let r = mask_limited_bounce();
    eprintln!("{r:?}");
    assert!(
        matches!(r.map, Err(DmaError::NoBouncePool { len: 100, .. })),
        "{r:?}"
    );
    assert!(r.growth_limits.is_empty(), "{r:?}");
    assert!(!r.deferred, "{r:?}");
    assert!(r.completed.is_none(), "{r:?}");
    assert!(
        matches!(r.without_growth, Err(DmaError::NoBouncePool { .. })),
        "{r:?}"
    );
}

#[test]
fn failed_bounce_raises_high_water_on_every_backend() {
    let _g = put_back(Some(Defect::FailedBounceRaisesHighWater));
    for which in [
        Backend::Swiotlb,
        Backend::Coherent,
        Backend::Transient,
        Backend::IommuUntrusted,
    ] {
        let r = faulted_bounce(which);
        eprintln!("{which:?}: {r:?}");
        assert!(
            matches!(r.error, Err(DmaError::Memory(_))),
            "{which:?}: {r:?}"
        );
        assert_eq!(
            (r.after.used, r.after.live),
            (r.before.used, r.before.live),
            "{which:?}"
        );
        assert!(r.after.high_water > r.before.high_water, "{which:?}: {r:?}");
    }
}

#[test]
fn failed_sg_list_unmapped_keeps_its_rise_of_the_high_water_mark() {
    let _g = put_back(Some(Defect::SgUnwindKeepsHighWater));
    let r = failed_sg();
    assert!(matches!(r.error, Err(DmaError::Memory(_))), "{r:?}");
    assert_eq!((r.after.used, r.after.live), (r.before.used, r.before.live));
    assert!(r.after.high_water > r.before.high_water, "{r:?}");
}

#[test]
fn too_large_reports_zero_for_an_unsupported_mask() {
    let _g = put_back(Some(Defect::TooLargeReportsZero));
    let r = align_beyond_segment(0xffff);
    eprintln!("{r:?}");
    assert!(
        matches!(
            r,
            Err(DmaError::TooLargeToBounce {
                len: 100,
                max: 0,
                ..
            })
        ),
        "{r:?}"
    );
}

/// With no defect put back, the control scenarios pass as the tests expect (the switch,
/// not the build, makes the difference).
#[test]
fn nothing_put_back_is_the_fixed_behaviour() {
    let _g = put_back(None);
    assert_eq!(untrusted_reads_its_granule().foreign, 0);
    assert_eq!(padding_spares_in_flight_bounce().zeroed, 0);
    assert_eq!(min_align_lead_in().others_inside, 0);
    assert!(matches!(
        mask_limited_bounce().map,
        Err(DmaError::PoolExhausted { .. })
    ));
    let r = faulted_bounce(Backend::Swiotlb);
    assert_eq!(r.after, r.before);
    assert!(matches!(
        align_beyond_segment(0xffff),
        Err(DmaError::AlignMaskUnsupported { .. })
    ));
}
