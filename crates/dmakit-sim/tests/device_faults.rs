//! Devices cannot reach what they were not given: violations are recorded faults.

use dmakit::{Device, DeviceId, Direction, DmaAddr, DmaMapper, PhysAddr};
use dmakit_sim::{FaultReason, Machine, MachineConfig, Owner, SimError};

const GIB: u64 = 1 << 30;

fn dev32() -> Device {
    Device::builder(DeviceId(7), "dev32")
        .dma_bits(32)
        .build()
        .unwrap()
}

#[test]
fn address_above_the_mask_is_a_fault_and_nothing_moves() {
    let m = Machine::new(MachineConfig::default()).unwrap();
    m.attach(dev32()).unwrap();
    let hi = 5 * GIB;
    m.cpu_write(PhysAddr::new(hi), &[0x11; 64], Owner(1))
        .unwrap();
    // Bypass the mapper: grant the device the physical address itself.
    m.grant(DeviceId(7), DmaAddr::new(hi), 64).unwrap();
    let r = m.device_write(DeviceId(7), DmaAddr::new(hi), &[0xee; 64], Owner(2));
    match r {
        Err(SimError::DeviceFault(f)) => {
            assert_eq!(f.reason, FaultReason::AboveMask);
            assert_eq!(
                (f.device, f.addr, f.len, f.write),
                (DeviceId(7), DmaAddr::new(hi), 64, true)
            );
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    assert!(m.device_read(DeviceId(7), DmaAddr::new(hi), 8).is_err());
    let faults = m.faults();
    assert_eq!(faults.len(), 2);
    assert!(faults.iter().all(|f| f.reason == FaultReason::AboveMask));
    let mut d = [0u8; 64];
    m.cpu_read(PhysAddr::new(hi), &mut d).unwrap();
    assert_eq!(d, [0x11; 64], "the refused write did not happen");
    let mut o = [Owner(0); 64];
    m.peek_ram(PhysAddr::new(hi), &mut d, &mut o).unwrap();
    assert_ne!(d, [0xee; 64]);
}

#[test]
fn the_mapper_refuses_what_the_device_cannot_reach() {
    let m = Machine::new(MachineConfig::default()).unwrap();
    let mapper = DmaMapper::builder(&m).build();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let r = unsafe { mapper.map(&dev32(), PhysAddr::new(5 * GIB), 64, Direction::ToDevice) };
    assert!(
        matches!(r, Err(dmakit::DmaError::NoBouncePool { .. })),
        "{r:?}"
    );
}

#[test]
fn access_outside_granted_windows_is_a_fault() {
    let m = Machine::new(MachineConfig::default()).unwrap();
    m.attach(dev32()).unwrap();
    let mapper = DmaMapper::builder(&m).build();
    let buf = PhysAddr::new(0x10_0000);
    m.cpu_write(buf, &[5; 128], Owner(3)).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&dev32(), buf, 64, Direction::ToDevice) }.unwrap();
    m.grant(DeviceId(7), dma, 64).unwrap();
    // Inside: fine, and the device sees the cleaned data.
    let got = m.device_read(DeviceId(7), dma, 64).unwrap();
    assert_eq!(got.data, vec![5; 64]);
    assert_eq!(got.owners, vec![Owner(3); 64]);
    // Straddling the end of the window, and entirely past it.
    let over = DmaAddr::new(dma.as_u64() + 32);
    assert!(m.device_read(DeviceId(7), over, 64).is_err());
    assert!(m
        .device_write(
            DeviceId(7),
            DmaAddr::new(dma.as_u64() + 64),
            &[1; 8],
            Owner(9)
        )
        .is_err());
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev32(), dma, 64, Direction::ToDevice) }.unwrap();
    m.revoke(DeviceId(7), dma, 64).unwrap();
    // After revoke nothing is reachable.
    assert!(m.device_read(DeviceId(7), dma, 1).is_err());
    let reasons: Vec<FaultReason> = m.faults().iter().map(|f| f.reason).collect();
    assert_eq!(reasons, vec![FaultReason::NotGranted; 3]);
    // The refused write left the bytes after the window alone.
    let mut d = [0u8; 8];
    m.cpu_read(PhysAddr::new(buf.as_u64() + 64), &mut d)
        .unwrap();
    assert_eq!(d, [5; 8]);
    // Misuse of the model is an error value too.
    assert_eq!(
        m.revoke(DeviceId(7), dma, 64),
        Err(SimError::NoSuchGrant {
            device: DeviceId(7),
            addr: dma.as_u64(),
            len: 64
        })
    );
    assert_eq!(
        m.device_read(DeviceId(8), dma, 1).unwrap_err(),
        SimError::UnknownDevice(DeviceId(8))
    );
}

#[test]
fn untranslated_or_non_ram_targets_fault() {
    let m = Machine::new(MachineConfig::default()).unwrap();
    let big = Device::builder(DeviceId(1), "d64").build().unwrap();
    m.attach(big).unwrap();
    // 3 GiB is a hole in the default RAM map.
    m.grant(DeviceId(1), DmaAddr::new(3 * GIB), 64).unwrap();
    assert!(m
        .device_read(DeviceId(1), DmaAddr::new(3 * GIB), 64)
        .is_err());
    assert_eq!(m.faults()[0].reason, FaultReason::NotMemory);
}
