//! Runs the committed seed inputs through the harness on the stable toolchain, without
//! libFuzzer, plus programs written out by hand: one that must pass, and one per defect
//! the fuzzer found (now fixed), kept as regression tests of those findings.

use std::path::Path;

use dmakit_fuzz::harness::run_program;
use dmakit_fuzz::ops::{Buf, Op, Program};

#[test]
fn seed_corpus_runs_clean() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/raw_api");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fuzz/seeds/raw_api") {
        let path = e.unwrap().path();
        eprintln!("running {}", path.display());
        dmakit_fuzz::run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seed inputs in {}", dir.display());
}

fn map(dev: u8, dir: u8, off: u16, len: u16) -> Op {
    Op::Map(Buf { dev, dir, off, len })
}

fn run(debug_checker: bool, ops: Vec<Op>) {
    run_program(&Program { debug_checker, ops });
}

/// Each device maps a misaligned inbound buffer, the device writes part of it, wrong
/// calls of other devices must fail without touching it, and everything comes back.
#[test]
fn every_device_round_trips() {
    let mut ops = Vec::new();
    for dev in 0..6u8 {
        // Area below 4 GiB, 8 bytes into a page: misaligned, small min_align lead-in.
        ops.push(map(dev, 1, 4096 * u16::from(dev) + 8, 100));
        ops.push(Op::DeviceWrite {
            pick: dev,
            off: 3,
            len: 50,
            seed: dev,
        });
    }
    for pick in 0..6 {
        ops.push(Op::BadUnmap {
            pick,
            kind: 0,
            other: 1,
        });
        ops.push(Op::BadSync {
            pick,
            kind: 0,
            other: 2,
            for_cpu: true,
        });
    }
    ops.push(Op::Sync {
        pick: 1,
        for_cpu: true,
        full: false,
        off: 10,
        len: 20,
    });
    run(true, ops);
}

/// Regression (issue 11, finding 1, `LeadInSlotsFreed`, fixed): the SWIOTLB pool did not
/// reserve a `min_align_mask` bounce's lead-in, although the `BounceBackend` contract says it
/// belongs to the bounce (the IOMMU path relies on it to give untrusted devices whole
/// granules): a force-bounced mapping was placed inside the 0xbc8-byte lead-in of a live
/// min-align bounce.
#[test]
fn min_align_lead_in_is_reserved() {
    // The min-align device keeps 0xbc8 of low bits, so its lead-in is 0xbc8 bytes.
    run(
        false,
        vec![
            map(3, 1, 3016, 100),
            map(4, 1, 8200, 100),
            map(4, 1, 8400, 100),
        ],
    );
}

/// Regression (issue 11, finding 11b, `FailedBounceRaisesHighWater`, fixed): a map that
/// failed after the pool reserved room (here the bounce copy faults, the buffer running past
/// the end of memory) left the pool's high-water mark raised.
#[test]
fn failed_map_keeps_high_water() {
    run(
        false,
        vec![Op::BadMap {
            dev: 5,
            dir: 0,
            kind: 3,
            addr: 203,
            len: 0,
        }],
    );
}

/// Regression (issue 11, finding 6, `MaskLimitedNoGrowth`, fixed): a 32-bit device mapping
/// from CPU 1, whose pool area lies above 4 GiB, was refused with `NoBouncePool`, although
/// the pool's other area, below 4 GiB, was empty.
#[test]
fn dma32_finds_reachable_room() {
    // Device 2 (dma32) with bit 7 set: a buffer in the area above 4 GiB, so it must bounce.
    run(false, vec![Op::Cpu(1), map(0x80 | 2, 0, 64, 100)]);
}
