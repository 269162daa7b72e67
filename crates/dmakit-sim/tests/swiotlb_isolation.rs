//! SWIOTLB isolation under a mix of devices (issue 11: defects 1, 6, 11b, 11e), on the
//! machine model. Each scenario lives in `swiotlb_isolation_rig`, shared with
//! `swiotlb_isolation_controls.rs`, which runs it with the defect put back and sees it fail.

mod swiotlb_isolation_rig;

use dmakit::DmaError;
use swiotlb_isolation_rig::*;

/// Defect 1 (a): the untrusted device's bounce at 0x...900 holds its whole granule, lead-in
/// included, so another device's bounce never lands there and the untrusted device reading
/// the whole granule sees its own 13 bytes and zeros only.
#[test]
fn untrusted_device_sees_no_other_bounce_in_its_granule() {
    let r = untrusted_reads_its_granule();
    assert_eq!(r.offset, 0x900);
    assert!(!r.other_in_granule, "{r:?}");
    assert_eq!((r.foreign, r.own), (0, 13), "{r:?}");
}

/// Defect 1 (b): the zero padding the untrusted path writes before its buffer is its own,
/// so another device's in-flight bounce keeps every byte.
#[test]
fn untrusted_padding_spares_another_devices_in_flight_bounce() {
    let r = padding_spares_in_flight_bounce();
    assert_eq!(
        r,
        InFlight {
            len: VW_LEN as usize,
            zeroed: 0,
            wrong: 0
        }
    );
}

/// Defect 1 without an IOMMU: a `min_align_mask` of 0xfff with 2 KiB slots holds the slot
/// before the bounce address; no other bounce lands there, and the pool counts it.
#[test]
fn min_align_mask_lead_in_belongs_to_the_bounce() {
    let r = min_align_lead_in();
    assert_eq!(
        r,
        LeadIn {
            offset: 0x900,
            others_inside: 0,
            foreign: 0,
            used_alone: 4096,
        }
    );
}

/// Defect 6: a 32-bit device whose low pool region is full, while a region above its mask
/// has room, gets `PoolExhausted` and a growth request below its mask; `map_or_defer`
/// defers it, and serving the request completes it below the mask. Without growth it is
/// `PoolExhausted` too; `NoBouncePool` stays for a pool with nothing the device can reach
/// and no way to grow.
#[test]
fn mask_limited_device_grows_below_its_mask_and_defers() {
    let r = mask_limited_bounce();
    assert!(
        matches!(r.map, Err(DmaError::PoolExhausted { len: 100, .. })),
        "{r:?}"
    );
    assert_eq!(r.growth_limits, vec![BELOW_4G], "{r:?}");
    assert!(r.deferred, "{r:?}");
    match r.completed {
        Some(Ok((end, readable))) => {
            assert!(end <= BELOW_4G, "{end:#x}");
            assert!(readable);
        }
        ref other => panic!("deferred mapping not completed: {other:?}"),
    }
    assert!(
        matches!(r.without_growth, Err(DmaError::PoolExhausted { .. })),
        "{r:?}"
    );
    assert!(
        matches!(r.unreachable, Err(DmaError::NoBouncePool { len: 100, .. })),
        "{r:?}"
    );
}

/// 11b: a bounce whose copy faults leaves its backend exactly as it was, used, live and
/// high-water alike, on every backend and on the IOMMU path's untrusted bounce.
#[test]
fn a_faulted_bounce_leaves_every_pool_as_it_was() {
    for (which, name) in [
        (Backend::Swiotlb, "swiotlb"),
        (Backend::Coherent, "coherent-pool"),
        (Backend::Transient, "transient"),
        (Backend::IommuUntrusted, "swiotlb"),
    ] {
        let r = faulted_bounce(which);
        assert_eq!(r.backend, name, "{which:?}");
        assert!(
            matches!(r.error, Err(DmaError::Memory(_))),
            "{which:?}: {r:?}"
        );
        assert!(r.before.live >= 1, "{which:?}: {r:?}");
        assert_eq!(r.after, r.before, "{which:?}");
    }
}

/// 11b for scatter-gather: a `map_sg` whose second buffer faults gives the first
/// buffer's bounce back without a trace in the pool's usage, high-water included.
#[test]
fn a_failed_sg_list_leaves_the_pool_as_it_was() {
    let r = failed_sg();
    assert!(matches!(r.error, Err(DmaError::Memory(_))), "{r:?}");
    assert_eq!(r.before.live, 1, "{r:?}");
    assert_eq!(r.after, r.before);
}

/// 11e: a `min_align_mask` the pool's segments cannot honour is an explicit error naming
/// the mask and the largest the pool supports, not `TooLargeToBounce { max: 0 }`; a mask
/// the pool honours reports the largest length it can bounce for that device, never 0.
#[test]
fn align_mask_beyond_a_segment_is_an_explicit_error() {
    assert!(
        matches!(
            align_beyond_segment(0xffff),
            Err(DmaError::AlignMaskUnsupported {
                min_align_mask: 0xffff,
                max_mask: 0x7fff,
                ..
            })
        ),
        "{:?}",
        align_beyond_segment(0xffff)
    );
    assert!(
        matches!(
            align_beyond_segment(0x7fff),
            Err(DmaError::TooLargeToBounce {
                len: 100,
                max: 1,
                ..
            })
        ),
        "{:?}",
        align_beyond_segment(0x7fff)
    );
    assert!(align_beyond_segment(0xfff).is_ok());
}
