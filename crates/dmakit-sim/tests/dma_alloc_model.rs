//! The DMA allocators on the machine model: what the device sees through its mask, with
//! and without the maintenance each kind of memory needs.
//!
//! - coherent memory (uncached pages, the atomic pool) needs no maintenance under a
//!   misbehaving cache; the same protocol on cached pages without syncs fails;
//! - coherent memory from an uncached window the platform mapped at boot needs neither
//!   maintenance nor any remap; a window that is in fact cached RAM is caught;
//! - on RAM that lies wholly above 4 GiB the default atomic pool reach fails cleanly, and
//!   the reach derived from the RAM serves coherent memory intact;
//! - `alloc_pages` memory is correct with syncs and caught without them;
//! - a `vmap` view on an aliasing cache corrupts the device's data unless flushed and
//!   invalidated; on a physically indexed cache it needs nothing;
//! - an `alloc_sg` table that ran out of low memory is bounced by `map_sg` through SWIOTLB,
//!   and the data arrives intact; used directly, its high pages fault on the mask;
//! - every allocation of every kind is reachable by its device (no mask fault), and zone
//!   totals are restored after random sequences.

use std::cell::Cell;
use std::sync::Arc;

use dmakit::dma_alloc::{
    AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig, NoTranslation, SgTable,
    UncachedWindow,
};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    CacheMaintenance, CoherentRemap, CpuMemory, Device, DeviceId, Direction, DmaAddr, DmaError,
    DmaMapper, MemoryFault, PhysAddr, PhysRange, PAGE_SIZE,
};
use dmakit_mem::{ZoneStats, ZonedPageAllocator};
use dmakit_sim::{
    FaultReason, HazardConfig, Machine, MachineConfig, Oracle, OracleReport, Owner, SimError,
    VmapMachine, VmapMode,
};
use proptest::prelude::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn machine(seed: u64, hazards: HazardConfig) -> Machine {
    Machine::new(MachineConfig {
        seed,
        hazards,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// Hands the zoned allocator `dma`, `dma32` and `normal` bytes of the machine's memory in
/// the three zones (taken from the machine's own page allocator, so nothing else uses it).
fn zones_on(m: &Machine, dma: u64, dma32: u64, normal: u64) -> ZonedPageAllocator {
    let mut ram = Vec::new();
    for (bytes, lo, hi) in [
        (dma, 0, 16 * MIB - 1),
        (dma32, 16 * MIB, u32::MAX as u64),
        (normal, 4 * GIB, u64::MAX),
    ] {
        if bytes > 0 {
            let base = m.alloc_pages_between(bytes / PAGE_SIZE, lo, hi).unwrap();
            ram.push(PhysRange::new(base, bytes).unwrap());
        }
    }
    ZonedPageAllocator::new(&ram).unwrap()
}

fn dev(id: u32, bits: u32) -> Device {
    Device::builder(DeviceId(id), "nc")
        .dma_bits(bits)
        .build()
        .unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

fn cfg() -> DmaAllocatorConfig {
    DmaAllocatorConfig {
        atomic_pool_bytes: 64 * KIB,
        ..DmaAllocatorConfig::default()
    }
}

/// One round trip on a buffer the CPU sees at `phys` and the device at `dma`: the CPU
/// writes, the device reads it all, the device writes the second half, the CPU checks.
/// `to_device` / `to_cpu` run the maintenance the memory needs (nothing for coherent
/// memory). The CPU's stores carry `cpu_owner`, the allocation's owner. The oracle judges
/// both what the device read and what the CPU sees.
fn round_trip(
    m: &Machine,
    oracle: &mut Oracle,
    d: &Device,
    (phys, dma, len): (PhysAddr, DmaAddr, u64),
    (cpu_owner, round): (Owner, u8),
    to_device: &dyn Fn(),
    to_cpu: &dyn Fn(),
) {
    let n = len as usize;
    let dev_owner = Owner(2000 + u32::from(round));
    // The CPU looks at the buffer first (its lines may now be cached).
    let mut scratch = vec![0; n];
    m.cpu_read(phys, &mut scratch).unwrap();
    let data = pattern(n, round);
    m.cpu_write(phys, &data, cpu_owner).unwrap();
    oracle.cpu_stored(phys, &data, cpu_owner);
    to_device();
    m.grant(d.id(), dma, len).unwrap();
    let got = m.device_read(d.id(), dma, len).unwrap();
    oracle
        .check_device_read(phys, &got.data, &got.owners, cpu_owner)
        .unwrap();
    let half = len / 2;
    let back = pattern((len - half) as usize, round.wrapping_add(101));
    m.device_write(d.id(), dma.add(half), &back, dev_owner)
        .unwrap();
    oracle.device_wrote(phys.add(half), &back, dev_owner);
    m.revoke(d.id(), dma, len).unwrap();
    // Time passes before the CPU looks.
    for _ in 0..8 {
        m.tick();
    }
    to_cpu();
    oracle
        .check_transfer(m, PhysRange::new(phys, len).unwrap(), dev_owner)
        .unwrap();
}

#[test]
fn coherent_memory_needs_no_maintenance_under_a_misbehaving_cache() {
    let m = machine(11, HazardConfig::default());
    let z = zones_on(&m, 4 * MIB, 8 * MIB, 8 * MIB);
    let a = DmaAllocator::new(&m, &z, NoTranslation, cfg(), None).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let devs = [dev(1, 24), dev(2, 32), dev(3, 64)];
    for d in &devs {
        m.attach(d.clone()).unwrap();
    }
    let mut rounds = 0u32;
    for round in 0..60u8 {
        let d = &devs[usize::from(round) % 3];
        let ctx = if round % 2 == 0 {
            AllocContext::Atomic
        } else {
            AllocContext::MayBlock
        };
        let size = [64, 200, 4096, 9000, 20_000][usize::from(round) % 5];
        let b = match a.alloc_coherent(d, size, ctx) {
            Ok(b) => b,
            // The 24-bit device cannot reach the atomic pool (it sits in DMA32).
            Err(e) => {
                assert!(
                    d.dma_mask() < 16 * MIB && ctx == AllocContext::Atomic,
                    "{e}"
                );
                continue;
            }
        };
        oracle
            .register(&m, Owner(7), b.phys(), size, "coherent")
            .unwrap();
        round_trip(
            &m,
            &mut oracle,
            d,
            (b.phys(), b.dma(), size),
            (Owner(7), round),
            &|| {},
            &|| {},
        );
        oracle.unregister(b.phys()).unwrap();
        a.free_coherent(d, b).unwrap();
        rounds += 1;
    }
    oracle.set_faults(m.fault_count() as u64);
    let report = oracle.take_report();
    assert_eq!(rounds, 50);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.transfers, 50);
    assert!(report.device_read_bytes > 200_000, "{report}");
    // The cache really misbehaved meanwhile.
    let st = m.stats();
    assert!(
        st.speculative_fills > 0 && st.hazard_evictions > 0,
        "{st:?}"
    );
}

/// The round trip on `alloc_pages` memory, with or without the syncs.
fn pages_rounds(sync: bool, hazards: HazardConfig) -> OracleReport {
    let m = machine(21, hazards);
    let z = zones_on(&m, 0, 8 * MIB, 8 * MIB);
    let a = DmaAllocator::new(&m, &z, NoTranslation, cfg(), None).unwrap();
    let d = dev(4, 32);
    m.attach(d.clone()).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    for round in 0..20u8 {
        let size = [256u64, 4096, 6000, 12_288][usize::from(round) % 4];
        let p = a.alloc_pages(&d, size, Direction::Bidirectional).unwrap();
        oracle
            .register(&m, Owner(9), p.phys(), size, "pages")
            .unwrap();
        let to_device = || {
            if sync {
                a.sync_pages_for_device(&d, &p, 0, size).unwrap();
            }
        };
        let to_cpu = || {
            if sync {
                a.sync_pages_for_cpu(&d, &p, 0, size).unwrap();
            }
        };
        round_trip(
            &m,
            &mut oracle,
            &d,
            (p.phys(), p.dma(), size),
            (Owner(9), round),
            &to_device,
            &to_cpu,
        );
        oracle.unregister(p.phys()).unwrap();
        a.free_pages(&d, p).unwrap();
    }
    oracle.set_faults(m.fault_count() as u64);
    oracle.take_report()
}

#[test]
fn alloc_pages_is_correct_with_syncs_and_a_missing_sync_is_caught() {
    let with = pages_rounds(true, HazardConfig::default());
    assert!(with.is_clean(), "{with}");
    assert_eq!(with.transfers, 20);
    let without = pages_rounds(false, HazardConfig::NONE);
    // Without sync_for_device the device reads the zeros in RAM, not the CPU's data: every
    // byte it read is stale. Without sync_for_cpu the CPU keeps seeing its own dirty lines
    // where the device wrote: the device's half of every buffer is stale for the CPU.
    assert_eq!(
        without.device_read_stale_bytes, with.device_read_bytes,
        "{without}"
    );
    assert_eq!(without.device_read_bytes, with.device_read_bytes);
    let device_half: u64 = (0..20)
        .map(|r| [256u64, 4096, 6000, 12_288][r % 4])
        .map(|s| s - s / 2)
        .sum();
    assert_eq!(
        without.stale_bytes - without.device_read_stale_bytes,
        device_half,
        "{without}"
    );
    assert_eq!((without.corrupted_bytes, without.leaked_bytes), (0, 0));
    assert_eq!(without.faults, 0);
}

/// What one vmap round on a noncontiguous table showed.
struct VmapOutcome {
    report: OracleReport,
    /// Bytes read back through the view that differ from what the device wrote / the CPU
    /// stored.
    view_wrong: usize,
    /// Dirty alias lines when the device started reading.
    dirty_alias_lines: usize,
}

fn vmap_round(mode: VmapMode, flush: bool) -> VmapOutcome {
    let m = machine(31, HazardConfig::default());
    let z = zones_on(&m, 0, 8 * MIB, 8 * MIB);
    let vm = VmapMachine::new(&m, mode).unwrap();
    let a = DmaAllocator::new(&vm, &z, NoTranslation, cfg(), None).unwrap();
    let d = dev(5, 32);
    m.attach(d.clone()).unwrap();
    let size = 3 * PAGE_SIZE + 100;
    let t: SgTable = a
        .alloc_noncontiguous(&d, size, Direction::Bidirectional)
        .unwrap();
    let phys = t.chunks()[0].phys();
    let dma = t.dma_addr().unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    oracle
        .register(&m, Owner(3), phys, size, "noncontig")
        .unwrap();
    let v = a.vmap(&t).unwrap();
    assert_eq!(vm.translate(v.addr()), Some(phys));

    // The CPU fills the buffer through the view.
    let n = size as usize;
    let data = pattern(n, 5);
    vm.cpu_write_virt(v.addr(), &data, Owner(3)).unwrap();
    oracle.cpu_stored(phys, &data, Owner(3));
    if flush {
        a.flush_vmap(&v);
    }
    a.sync_noncontiguous_for_device(&d, &t).unwrap();
    let dirty_alias_lines = vm.alias_lines().iter().filter(|l| l.1).count();
    m.grant(d.id(), dma, size).unwrap();
    let got = m.device_read(d.id(), dma, size).unwrap();
    oracle
        .check_device_read(phys, &got.data, &got.owners, Owner(3))
        .unwrap();
    // The device answers in the second half.
    let half = size / 2;
    let back = pattern((size - half) as usize, 77);
    m.device_write(d.id(), dma.add(half), &back, Owner(20))
        .unwrap();
    oracle.device_wrote(phys.add(half), &back, Owner(20));
    m.revoke(d.id(), dma, size).unwrap();
    a.sync_noncontiguous_for_cpu(&d, &t).unwrap();
    if flush {
        a.invalidate_vmap(&v);
    }
    let mut seen = vec![0; n];
    vm.cpu_read_virt(v.addr(), &mut seen).unwrap();
    let mut want = data.clone();
    want[half as usize..].copy_from_slice(&back);
    let view_wrong = seen.iter().zip(&want).filter(|(a, b)| a != b).count();
    // Unmapping the view writes back whatever it still holds.
    a.vunmap(&t, v).unwrap();
    oracle.check_all(&m, Owner(20)).unwrap();
    oracle.set_faults(m.fault_count() as u64);
    oracle.unregister(phys).unwrap();
    a.free_noncontiguous(&d, t).unwrap();
    VmapOutcome {
        report: oracle.take_report(),
        view_wrong,
        dirty_alias_lines,
    }
}

#[test]
fn vmap_view_on_an_aliasing_cache_needs_flush_and_invalidate() {
    let size = 3 * PAGE_SIZE + 100;
    let fixed = vmap_round(VmapMode::Aliasing, true);
    assert!(fixed.report.is_clean(), "{}", fixed.report);
    assert_eq!(fixed.view_wrong, 0);
    assert_eq!(fixed.dirty_alias_lines, 0);
    assert_eq!(fixed.report.device_read_bytes, size);

    let broken = vmap_round(VmapMode::Aliasing, false);
    // Every line written through the view was still dirty in the alias when the device
    // read: it read zeros...
    assert_eq!(broken.dirty_alias_lines as u64, size.div_ceil(64));
    assert_eq!(
        broken.report.device_read_stale_bytes, size,
        "{}",
        broken.report
    );
    // ...the view kept showing the CPU's old data where the device wrote...
    assert!(broken.view_wrong > 0);
    // ...and when the view's lines went back to memory they overwrote what the device had
    // written: corruption.
    assert_eq!(
        broken.report.corrupted_bytes,
        size - size / 2,
        "{}",
        broken.report
    );
    assert_eq!(broken.report.faults, 0);

    // A physically indexed cache needs neither: the view shares the linear map's lines.
    let shared = vmap_round(VmapMode::Shared, false);
    assert!(shared.report.is_clean(), "{}", shared.report);
    assert_eq!(shared.view_wrong, 0);
}

#[test]
fn alloc_sg_out_of_low_memory_is_bounced_at_map_time_and_arrives_intact() {
    let m = machine(41, HazardConfig::default());
    // Only 64 KiB below 16 MiB for the zones; a 24-bit device asks for 256 KiB.
    let z = zones_on(&m, 64 * KIB, 8 * MIB, 8 * MIB);
    let a = DmaAllocator::new(&m, &z, NoTranslation, cfg(), None).unwrap();
    let d = dev(6, 24);
    m.attach(d.clone()).unwrap();
    let size = 256 * KIB - 300;
    let t = a.alloc_sg(&d, size).unwrap();
    assert!(t.needs_bounce());
    let low: u64 = t
        .chunks()
        .iter()
        .filter(|c| c.reachable())
        .map(|c| c.bytes())
        .sum();
    assert_eq!(low, 64 * KIB);
    let entries = t.entries();

    // Used directly, a high chunk faults on the device's mask.
    let high = t.chunks().iter().find(|c| !c.reachable()).unwrap();
    let high_dma = DmaAddr::new(high.phys().as_u64());
    m.grant(d.id(), high_dma, 64).unwrap();
    assert!(matches!(
        m.device_read(d.id(), high_dma, 64),
        Err(SimError::DeviceFault(f)) if f.reason == FaultReason::AboveMask
    ));
    m.revoke(d.id(), high_dma, 64).unwrap();
    let mask_faults = m.fault_count();
    assert_eq!(mask_faults, 1);

    // Without a bounce pool the mapping layer refuses the table.
    let bare = DmaMapper::builder(&m).build();
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { bare.map_sg(&d, &entries, Direction::ToDevice) },
        Err(DmaError::NoBouncePool { .. })
    ));

    // With a SWIOTLB pool below 16 MiB the high chunks are bounced.
    let pool_pages = 128;
    let base = m.alloc_pages_between(pool_pages, 0, 16 * MIB - 1).unwrap();
    let backend = SwiotlbBounce::new(
        PoolConfig::builder().build().unwrap(),
        None,
        0,
        16 * MIB - 1,
    );
    backend.add_region(base, pool_pages * PAGE_SIZE).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb_backend(Arc::new(backend))
        .build();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    for (i, e) in entries.iter().enumerate() {
        oracle
            .register(&m, Owner(50 + i as u32), e.phys, e.len, "sg")
            .unwrap();
    }

    // Outbound: the CPU fills the table, the device reads every segment.
    let data = pattern(size as usize, 9);
    let mut off = 0usize;
    for e in &entries {
        let part = &data[off..off + e.len as usize];
        m.cpu_write(e.phys, part, Owner(60)).unwrap();
        oracle.cpu_stored(e.phys, part, Owner(60));
        off += e.len as usize;
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&d, &entries, Direction::ToDevice) }.unwrap();
    let bounced = segs
        .iter()
        .filter(|s| !entries.iter().any(|e| e.phys.as_u64() == s.dma.as_u64()))
        .count();
    let unreachable_entries = entries
        .iter()
        .filter(|e| !d.can_address(e.phys.as_u64(), e.len))
        .count();
    assert!(bounced >= unreachable_entries && unreachable_entries > 0);
    let mut read = Vec::new();
    let mut at = 0u64;
    for s in &segs {
        assert!(d.can_address(s.dma.as_u64(), s.len));
        m.grant(d.id(), s.dma, s.len).unwrap();
        let got = m.device_read(d.id(), s.dma, s.len).unwrap();
        oracle
            .check_device_read(buffer_byte(&entries, at), &got.data, &got.owners, Owner(60))
            .unwrap();
        read.extend_from_slice(&got.data);
        m.revoke(d.id(), s.dma, s.len).unwrap();
        at += s.len;
    }
    assert_eq!(at, size);
    assert_eq!(
        read, data,
        "the device read the CPU's data through the bounces"
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&d, &segs, Direction::ToDevice) }.unwrap();

    // Inbound: the device writes every segment, the CPU reads them back after unmap.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&d, &entries, Direction::FromDevice) }.unwrap();
    let back = pattern(size as usize, 200);
    let mut off = 0usize;
    for s in &segs {
        let part = &back[off..off + s.len as usize];
        m.grant(d.id(), s.dma, s.len).unwrap();
        m.device_write(d.id(), s.dma, part, Owner(70)).unwrap();
        m.revoke(d.id(), s.dma, s.len).unwrap();
        off += s.len as usize;
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&d, &segs, Direction::FromDevice) }.unwrap();
    let mut off = 0usize;
    for e in &entries {
        oracle.device_wrote(e.phys, &back[off..off + e.len as usize], Owner(70));
        off += e.len as usize;
    }
    oracle.check_all(&m, Owner(70)).unwrap();
    oracle.set_faults((m.fault_count() - mask_faults) as u64);
    let report = oracle.take_report();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.device_read_bytes, size);
    assert_eq!(report.checked_bytes, size);
    a.free_sg(&d, t).unwrap();
}

/// The physical address of byte `at` of a table given as entries.
fn buffer_byte(entries: &[dmakit::SgEntry], mut at: u64) -> PhysAddr {
    for e in entries {
        if at < e.len {
            return e.phys.add(at);
        }
        at -= e.len;
    }
    panic!("byte {at} is past the table");
}

#[derive(Clone, Debug)]
enum Op {
    Coherent(usize, u64, bool),
    Pages(usize, u64),
    Noncontiguous(usize, u64),
    Sg(usize, u64),
    Free(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![1u64..600, 600u64..20_000, 20_000u64..200_000];
    prop_oneof![
        (0usize..3, size.clone(), any::<bool>()).prop_map(|(d, s, a)| Op::Coherent(d, s, a)),
        (0usize..3, size.clone()).prop_map(|(d, s)| Op::Pages(d, s)),
        (0usize..3, size.clone()).prop_map(|(d, s)| Op::Noncontiguous(d, s)),
        (0usize..3, size).prop_map(|(d, s)| Op::Sg(d, s)),
        any::<usize>().prop_map(Op::Free),
    ]
}

enum Live {
    Coherent(dmakit::dma_alloc::CoherentBuffer),
    Pages(dmakit::dma_alloc::DmaPages),
    Noncontiguous(SgTable),
    Sg(SgTable),
}

/// The device touches every byte of `[dma, dma + len)`: a read and a write of the first
/// and last byte, a read of everything.
fn device_touches(m: &Machine, d: &Device, dma: DmaAddr, len: u64) -> Result<(), SimError> {
    m.grant(d.id(), dma, len)?;
    let r = m
        .device_read(d.id(), dma, len)
        .and_then(|_| m.device_write(d.id(), dma, &[1], Owner(1)))
        .and_then(|()| m.device_write(d.id(), dma.add(len - 1), &[1], Owner(1)));
    m.revoke(d.id(), dma, len)?;
    r
}

fn stats(z: &ZonedPageAllocator) -> [ZoneStats; 3] {
    z.stats()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Every allocation of every kind is reachable by its device: the model's DMA engine,
    /// which faults on any address above the mask, reads and writes all of it. Frees give
    /// every page back.
    #[test]
    fn every_allocation_is_reachable_and_frees_return_everything(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let m = machine(51, HazardConfig::NONE);
        let z = zones_on(&m, MIB, 4 * MIB, 4 * MIB);
        let before = stats(&z);
        let a = DmaAllocator::new(&m, &z, NoTranslation, cfg(), None).unwrap();
        let devs = [dev(1, 24), dev(2, 32), dev(3, 64)];
        for d in &devs {
            m.attach(d.clone()).unwrap();
        }
        let mut live: Vec<(usize, Live)> = Vec::new();
        for o in ops {
            match o {
                Op::Coherent(i, s, atomic) => {
                    let ctx = if atomic { AllocContext::Atomic } else { AllocContext::MayBlock };
                    if let Ok(b) = a.alloc_coherent(&devs[i], s, ctx) {
                        prop_assert!(device_touches(&m, &devs[i], b.dma(), s).is_ok());
                        live.push((i, Live::Coherent(b)));
                    }
                }
                Op::Pages(i, s) => {
                    if let Ok(p) = a.alloc_pages(&devs[i], s, Direction::Bidirectional) {
                        prop_assert!(device_touches(&m, &devs[i], p.dma(), s).is_ok());
                        live.push((i, Live::Pages(p)));
                    }
                }
                Op::Noncontiguous(i, s) => {
                    if let Ok(t) = a.alloc_noncontiguous(&devs[i], s, Direction::ToDevice) {
                        prop_assert!(device_touches(&m, &devs[i], t.dma_addr().unwrap(), s).is_ok());
                        live.push((i, Live::Noncontiguous(t)));
                    }
                }
                Op::Sg(i, s) => {
                    if let Ok(t) = a.alloc_sg(&devs[i], s) {
                        for e in t.entries() {
                            let dma = DmaAddr::new(e.phys.as_u64());
                            let ok = device_touches(&m, &devs[i], dma, e.len).is_ok();
                            // Reachable chunks work in place; the rest needs a bounce.
                            prop_assert_eq!(ok, devs[i].can_address(e.phys.as_u64(), e.len));
                        }
                        live.push((i, Live::Sg(t)));
                    }
                }
                Op::Free(k) if !live.is_empty() => {
                    let (i, l) = live.swap_remove(k % live.len());
                    free(&a, &devs[i], l);
                }
                Op::Free(_) => {}
            }
        }
        let above_mask = m
            .faults()
            .iter()
            .filter(|f| f.reason == FaultReason::AboveMask)
            .count();
        // Only the sg fallback pages the test deliberately used in place faulted.
        prop_assert_eq!(above_mask, m.fault_count());
        for (i, l) in live {
            free(&a, &devs[i], l);
        }
        prop_assert!(a.release().is_ok());
        prop_assert_eq!(stats(&z), before);
    }
}

fn free(a: &DmaAllocator<&Machine, &ZonedPageAllocator>, d: &Device, l: Live) {
    match l {
        Live::Coherent(b) => a.free_coherent(d, b).unwrap(),
        Live::Pages(p) => a.free_pages(d, p).unwrap(),
        Live::Noncontiguous(t) => a.free_noncontiguous(d, t).unwrap(),
        Live::Sg(t) => a.free_sg(d, t).unwrap(),
    }
}

/// The machine as a kernel that maps RAM in blocks sees it: it cannot remap single pages,
/// so it refuses (and counts) every remap asked of it.
struct BlockMapped<'a> {
    m: &'a Machine,
    remaps: Cell<u32>,
}

impl CacheMaintenance for BlockMapped<'_> {
    fn cache_line_size(&self) -> u64 {
        self.m.cache_line_size()
    }
    fn clean(&self, range: PhysRange) {
        self.m.clean(range)
    }
    fn invalidate(&self, range: PhysRange) {
        self.m.invalidate(range)
    }
    fn clean_invalidate(&self, range: PhysRange) {
        self.m.clean_invalidate(range)
    }
}

// SAFETY: forwards every call unchanged to the machine, which keeps the contract.
unsafe impl CpuMemory for BlockMapped<'_> {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        self.m.copy(dst, src, len)
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        self.m.fill(dst, byte, len)
    }
}

impl CoherentRemap for BlockMapped<'_> {
    fn make_uncached(&self, range: PhysRange) -> Result<(), MemoryFault> {
        self.remaps.set(self.remaps.get() + 1);
        Err(MemoryFault {
            addr: range.start(),
            len: range.len(),
        })
    }
    fn make_cached(&self, _range: PhysRange) {
        self.remaps.set(self.remaps.get() + 1);
    }
}

const WINDOW: u64 = MIB;

/// What rounds of coherent buffers from an uncached window showed.
struct WindowOutcome {
    report: OracleReport,
    /// Remaps the allocator asked of the platform.
    remaps: u32,
    /// The window, and the machine.
    window: PhysRange,
    stats: dmakit_sim::MachineStats,
}

/// 40 round trips on coherent buffers of two non-coherent devices, from a 1 MiB window in
/// DMA32 that the platform mapped uncached at boot (`uncached_at_boot`) or left as cached
/// RAM (the control), with no maintenance at all. `hazards` drive the cache meanwhile.
fn window_rounds(uncached_at_boot: bool, hazards: HazardConfig) -> WindowOutcome {
    let m = machine(13, hazards);
    let z = zones_on(&m, 0, 4 * MIB, 4 * MIB);
    let base = m
        .alloc_pages_between(WINDOW / PAGE_SIZE, 16 * MIB, u32::MAX as u64)
        .unwrap();
    let window = PhysRange::new(base, WINDOW).unwrap();
    if uncached_at_boot {
        m.make_uncached(window).unwrap();
    }
    let platform = BlockMapped {
        m: &m,
        remaps: Cell::new(0),
    };
    let w = UncachedWindow::new(base, WINDOW).unwrap();
    let a = DmaAllocator::with_uncached_window(&platform, &z, NoTranslation, w, cfg()).unwrap();
    assert_eq!(a.uncached_window(), Some(w));
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let devs = [dev(2, 32), dev(3, 64)];
    for d in &devs {
        m.attach(d.clone()).unwrap();
    }
    for round in 0..40u8 {
        let d = &devs[usize::from(round) % 2];
        let ctx = if round % 4 < 2 {
            AllocContext::Atomic
        } else {
            AllocContext::MayBlock
        };
        let size = [64, 200, 4096, 9000, 12_000][usize::from(round) % 5];
        let b = a.alloc_coherent(d, size, ctx).unwrap();
        assert!(b.from_atomic_pool(), "{ctx:?}: served by the window");
        let range = PhysRange::new(b.phys(), size).unwrap();
        assert!(window.contains_range(&range));
        oracle
            .register(&m, Owner(8), b.phys(), size, "window")
            .unwrap();
        round_trip(
            &m,
            &mut oracle,
            d,
            (b.phys(), b.dma(), size),
            (Owner(8), round),
            &|| {},
            &|| {},
        );
        oracle.unregister(b.phys()).unwrap();
        a.free_coherent(d, b).unwrap();
    }
    assert_eq!(a.atomic_pool_usage().live, 0);
    a.release().ok().expect("nothing live");
    oracle.set_faults(m.fault_count() as u64);
    WindowOutcome {
        report: oracle.take_report(),
        remaps: platform.remaps.get(),
        window,
        stats: m.stats(),
    }
}

#[test]
fn an_uncached_window_serves_coherent_memory_without_maintenance_or_remaps() {
    let out = window_rounds(true, HazardConfig::default());
    assert!(out.report.is_clean(), "{}", out.report);
    assert_eq!(out.report.transfers, 40);
    assert!(out.report.device_read_bytes > 150_000, "{}", out.report);
    // Nothing was remapped, not even by the teardown, and the cache really misbehaved.
    assert_eq!(out.remaps, 0);
    assert!(
        out.stats.speculative_fills > 0 && out.stats.hazard_evictions > 0,
        "{:?}",
        out.stats
    );
    assert!(out.window.start().as_u64() >= 16 * MIB);
}

#[test]
fn a_window_that_is_cached_ram_is_caught_by_the_oracle() {
    let clean = window_rounds(true, HazardConfig::NONE);
    assert!(clean.report.is_clean(), "{}", clean.report);
    let cached = window_rounds(false, HazardConfig::NONE);
    // The CPU's stores stay in its write-back cache: every byte the device reads is wrong,
    // the zeros in RAM or an earlier buffer's data there; and the CPU keeps its own lines
    // where the device wrote.
    let r = &cached.report;
    assert_eq!(
        r.device_read_stale_bytes + r.device_read_leaked_bytes,
        clean.report.device_read_bytes,
        "{r}"
    );
    assert!(r.device_read_stale_bytes > 0, "{r}");
    assert!(r.stale_bytes > r.device_read_stale_bytes, "{r}");
    assert_eq!(r.corrupted_bytes, 0, "{r}");
    assert_eq!(cached.remaps, 0);
}

#[test]
fn an_uncached_window_is_bounded_and_refuses_cleanly() {
    let m = machine(14, HazardConfig::NONE);
    let z = zones_on(&m, 0, 4 * MIB, 4 * MIB);
    let base = m
        .alloc_pages_between(WINDOW / PAGE_SIZE, 16 * MIB, u32::MAX as u64)
        .unwrap();
    let window = PhysRange::new(base, WINDOW).unwrap();
    m.make_uncached(window).unwrap();
    let platform = BlockMapped {
        m: &m,
        remaps: Cell::new(0),
    };
    let w = UncachedWindow::new(base, WINDOW).unwrap();
    let a = DmaAllocator::with_uncached_window(&platform, &z, NoTranslation, w, cfg()).unwrap();
    let nc = dev(3, 64);
    let zone_stats = stats(&z);
    // Two halves fill it; a third piece finds it full, in either context.
    let halves = [
        a.alloc_coherent(&nc, WINDOW / 2, AllocContext::MayBlock)
            .unwrap(),
        a.alloc_coherent(&nc, WINDOW / 2, AllocContext::Atomic)
            .unwrap(),
    ];
    for ctx in [AllocContext::Atomic, AllocContext::MayBlock] {
        let e = a.alloc_coherent(&nc, 64, ctx).unwrap_err();
        assert_eq!(
            e,
            DmaAllocError::WindowExhausted {
                device: nc.id(),
                size: 64,
                used: WINDOW,
                total: WINDOW
            }
        );
        assert!(e
            .to_string()
            .contains("uncached window has no reachable room"));
    }
    // Larger than the window, and a device that reaches none of it.
    let e = a
        .alloc_coherent(&nc, 2 * WINDOW, AllocContext::MayBlock)
        .unwrap_err();
    assert!(
        matches!(e, DmaAllocError::TooLarge { max: WINDOW, .. }),
        "{e}"
    );
    let narrow = dev(4, 24);
    let e = a
        .alloc_coherent(&narrow, 64, AllocContext::MayBlock)
        .unwrap_err();
    assert_eq!(
        e,
        DmaAllocError::WindowOutOfReach {
            device: narrow.id(),
            base,
            coherent_mask: (1 << 24) - 1
        }
    );
    // A coherent device still gets cached pages from the zones, and the window does not
    // grow.
    let coherent = Device::builder(DeviceId(5), "c")
        .dma_bits(64)
        .coherent(true)
        .build()
        .unwrap();
    let c = a
        .alloc_coherent(&coherent, 4096, AllocContext::MayBlock)
        .unwrap();
    assert!(
        !c.from_atomic_pool() && !window.contains_range(&PhysRange::new(c.phys(), 4096).unwrap())
    );
    a.free_coherent(&coherent, c).unwrap();
    let req = dmakit::growth::GrowthRequest {
        pool: "dma-uncached-window",
        min_bytes: PAGE_SIZE,
        max_addr: u64::MAX,
    };
    assert!(matches!(
        a.grow_atomic_pool(req),
        Err(DmaAllocError::BadConfig(_))
    ));
    // Failed requests changed nothing: both halves free, the zones as they were.
    assert_eq!(a.atomic_pool_usage().used, WINDOW);
    for h in halves {
        a.free_coherent(&nc, h).unwrap();
    }
    assert_eq!(a.atomic_pool_usage().used, 0);
    assert_eq!(stats(&z), zone_stats);
    assert_eq!(platform.remaps.get(), 0);
    // A window that is not whole pages is refused before anything is built.
    assert_eq!(
        UncachedWindow::new(base.add(64), WINDOW),
        Err(DmaAllocError::BadWindow {
            base: base.add(64),
            len: WINDOW
        })
    );
}

#[test]
fn ram_above_4g_takes_a_reach_derived_from_it_and_then_serves_coherent_memory() {
    let m = Machine::new(MachineConfig {
        seed: 15,
        ram: vec![(8 * GIB, GIB)],
        ..MachineConfig::default()
    })
    .unwrap();
    let base = m
        .alloc_pages_between(16 * MIB / PAGE_SIZE, 0, u64::MAX)
        .unwrap();
    let ram = [PhysRange::new(base, 16 * MIB).unwrap()];
    let z = ZonedPageAllocator::new(&ram).unwrap();
    let before = stats(&z);
    // The default reach (4 GiB) finds nothing here, and says so.
    let e = DmaAllocator::new(&m, &z, NoTranslation, cfg(), None)
        .err()
        .expect("no memory below 4 GiB");
    assert_eq!(
        e,
        DmaAllocError::GrowthFailed {
            bytes: 64 * KIB,
            max_addr: u32::MAX as u64
        }
    );
    assert_eq!(stats(&z), before);
    let derived = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * KIB,
        ..DmaAllocatorConfig::for_memory(&ram)
    };
    assert_eq!(derived.atomic_pool_reach, 12 * GIB - 1);
    let a = DmaAllocator::new(&m, &z, NoTranslation, derived, None).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let d = dev(3, 64);
    m.attach(d.clone()).unwrap();
    for round in 0..20u8 {
        let ctx = if round % 2 == 0 {
            AllocContext::Atomic
        } else {
            AllocContext::MayBlock
        };
        let size = [64, 200, 4096, 9000, 20_000][usize::from(round) % 5];
        let b = a.alloc_coherent(&d, size, ctx).unwrap();
        assert_eq!(b.from_atomic_pool(), ctx == AllocContext::Atomic);
        assert!(b.phys().as_u64() >= 8 * GIB);
        oracle
            .register(&m, Owner(9), b.phys(), size, "coherent")
            .unwrap();
        round_trip(
            &m,
            &mut oracle,
            &d,
            (b.phys(), b.dma(), size),
            (Owner(9), round),
            &|| {},
            &|| {},
        );
        oracle.unregister(b.phys()).unwrap();
        a.free_coherent(&d, b).unwrap();
    }
    oracle.set_faults(m.fault_count() as u64);
    let report = oracle.take_report();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.transfers, 20);
    let st = m.stats();
    assert!(
        st.speculative_fills > 0 && st.hazard_evictions > 0,
        "{st:?}"
    );
}
