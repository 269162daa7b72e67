//! Bad input is refused with a clear error: ranges reaching into the last page of the
//! address space (`map(0, u64::MAX)` among them) on every device, and more than 64 DMA
//! address bits. The controls (`input_validation_controls`) put each defect back.

mod input_scenarios;
mod testbed;

use dmakit::DeviceError;
use dmakit::{DeviceId, DmaError};
use input_scenarios::*;

#[test]
fn ranges_into_the_last_page_are_refused_on_a_64_bit_device() {
    let seen = huge_ranges();
    let overflow = |addr, len| {
        Err(DmaError::AddressOverflow {
            device: DeviceId(1),
            addr,
            len,
        })
    };
    assert_eq!(seen.whole_space, overflow(0, u64::MAX));
    assert_eq!(
        seen.whole_space_deferred,
        Err(overflow(0, u64::MAX).unwrap_err())
    );
    assert_eq!(seen.last_page, overflow(u64::MAX - 4095, 8));
    assert_eq!(
        seen.below_last_page,
        Ok(u64::MAX - 8191),
        "the page below is the highest one may map"
    );
    assert_eq!(seen.usage.0, seen.usage.1, "the pool is as it was");
    assert_eq!(seen.live, 0);
    let msg = overflow(0, u64::MAX).unwrap_err().to_string();
    assert!(msg.contains("2^64 - 4096"), "{msg}");
}

#[test]
fn more_than_64_address_bits_are_a_device_error() {
    let seen = dma_bits_around_64();
    assert_eq!(
        seen,
        [
            (1, Ok(1)),
            (63, Ok(u64::MAX >> 1)),
            (64, Ok(u64::MAX)),
            (65, Err(DeviceError::BadDmaBits(65))),
            (100, Err(DeviceError::BadDmaBits(100))),
            (u32::MAX, Err(DeviceError::BadDmaBits(u32::MAX))),
        ]
    );
}
