//! The automatic kmalloc minimum alignment ([`AutoMinAlign`]) on the machine model, fed by
//! the mapper's own knowledge of each device's pool: it picks each outcome on the machine
//! that calls for it, and re-evaluates when a device is added.

mod testbed;

use dmakit::{BouncePool, Device, DeviceId, DmaMapper};
use dmakit_mem::AutoMinAlign;
use testbed::{coherent, device, machine, swiotlb, LINE};

const KIB: u64 = 1024;

fn coherent_device(id: u32) -> Device {
    Device::builder(DeviceId(id), "coherent")
        .cache_line(LINE)
        .coherent(true)
        .build()
        .unwrap()
}

/// The alignment after adding `devs` in order, and after each one.
fn choices(mapper: &DmaMapper<&dmakit_sim::Machine>, devs: &[Device]) -> Vec<u64> {
    let mut auto = AutoMinAlign::new(64).unwrap();
    devs.iter()
        .map(|d| auto.add_device(mapper, d).unwrap().min_align())
        .collect()
}

#[test]
fn a_non_coherent_device_without_a_pool_makes_kmalloc_line_aligned() {
    let m = machine(1);
    let mapper = DmaMapper::builder(&m).build();
    // The machine's line (128) is larger than the CPU line given (64): the device's counts.
    let got = choices(&mapper, &[device(1, BouncePool::Swiotlb)]);
    assert_eq!(got, [LINE]);
}

#[test]
fn a_swiotlb_or_a_coherent_pool_serving_every_device_keeps_kmalloc_at_8_bytes() {
    let m = machine(2);
    let sw = swiotlb(&m, 256 * KIB, None);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(sw).build();
    assert_eq!(choices(&mapper, &[device(1, BouncePool::Swiotlb)]), [8]);

    let cp = coherent(&m, 256 * KIB);
    let mapper = DmaMapper::builder(&m).coherent_backend(cp).build();
    assert_eq!(choices(&mapper, &[device(2, BouncePool::Coherent)]), [8]);
    // The pool must serve the device: a coherent pool does nothing for a SWIOTLB device.
    assert_eq!(choices(&mapper, &[device(3, BouncePool::Swiotlb)]), [LINE]);
}

#[test]
fn coherent_devices_need_nothing_and_adding_a_device_re_evaluates() {
    let m = machine(3);
    let mapper = DmaMapper::builder(&m).build();
    let devs = [
        coherent_device(1),
        coherent_device(2),
        device(3, BouncePool::Swiotlb),
        coherent_device(4),
    ];
    // 8 bytes while every device is coherent; line aligned from the first non-coherent
    // device without a pool on, and it stays so.
    assert_eq!(choices(&mapper, &devs), [8, 8, LINE, LINE]);
    let mut auto = AutoMinAlign::new(64).unwrap();
    for d in &devs {
        auto.add_device(&mapper, d).unwrap();
    }
    assert_eq!((auto.devices(), auto.unserved()), (4, 1));
    assert!(auto.policy().unwrap().is_line_aligned());
    assert!(
        AutoMinAlign::new(100).is_err(),
        "a line that is not a power of two"
    );
}
