//! The machine as a dmakit platform: copies, fills, uncached regions, CPUs and pages.

use dmakit::{
    CacheMaintenance, CpuMemory, CpuTopology, Device, DeviceId, DmaAddr, PageAllocator, PhysAddr,
    PhysRange,
};
use dmakit_sim::{CacheConfig, HazardConfig, Machine, MachineConfig, Owner, SimError};

fn quiet() -> Machine {
    Machine::new(MachineConfig {
        hazards: HazardConfig::NONE,
        ..MachineConfig::default()
    })
    .unwrap()
}

fn range(a: u64, l: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(a), l).unwrap()
}

#[test]
fn configuration_errors_are_values() {
    let bad = |c: MachineConfig| Machine::new(c).err();
    assert_eq!(
        bad(MachineConfig {
            ram: vec![],
            ..MachineConfig::default()
        }),
        Some(SimError::EmptyRamMap)
    );
    assert_eq!(
        bad(MachineConfig {
            cpus: 0,
            ..MachineConfig::default()
        }),
        Some(SimError::ZeroCpus)
    );
    assert_eq!(
        bad(MachineConfig {
            cache: CacheConfig {
                line_size: 16,
                ..CacheConfig::default()
            },
            ..MachineConfig::default()
        }),
        Some(SimError::BadLineSize(16))
    );
    assert!(bad(MachineConfig {
        ram: vec![(0x800, 0x1000)],
        ..MachineConfig::default()
    })
    .is_some());
}

#[test]
fn copy_goes_through_the_cache_and_carries_stamps() {
    let m = quiet();
    let (src, dst) = (PhysAddr::new(0x20_0000), PhysAddr::new(0x30_0010));
    m.cpu_write(src, &[1, 2, 3, 4], Owner(4)).unwrap();
    m.copy(dst, src, 4).unwrap();
    let (mut d, mut o) = ([0u8; 4], [Owner(0); 4]);
    m.peek_cpu(dst, &mut d, &mut o).unwrap();
    assert_eq!((d, o), ([1, 2, 3, 4], [Owner(4); 4]));
    // Still only in the cache.
    m.peek_ram(dst, &mut d, &mut o).unwrap();
    assert_eq!(d, [0; 4]);
    m.clean(range(dst.as_u64(), 4));
    m.peek_ram(dst, &mut d, &mut o).unwrap();
    assert_eq!((d, o), ([1, 2, 3, 4], [Owner(4); 4]));
    // A fill is stamped by nobody.
    m.fill(dst, 0xaa, 2).unwrap();
    m.peek_cpu(dst, &mut d, &mut o).unwrap();
    assert_eq!(d, [0xaa, 0xaa, 3, 4]);
    assert_eq!(o, [Owner(0), Owner(0), Owner(4), Owner(4)]);
    // Outside RAM: an error, nothing written.
    assert!(m.copy(PhysAddr::new(3 << 30), src, 4).is_err());
    assert!(m.fill(PhysAddr::new(9 << 30), 0, 1).is_err());
    assert!(m
        .cpu_write(PhysAddr::new((2 << 30) - 2), &[0; 4], Owner(1))
        .is_err());
}

#[test]
fn invalidate_loses_dirty_neighbour_data_on_a_shared_line() {
    let m = quiet();
    let a = 0x40_0000;
    m.cpu_write(PhysAddr::new(a), &[7; 8], Owner(1)).unwrap();
    assert_eq!(m.cached_line(PhysAddr::new(a)), Some(true));
    // Invalidating the "buffer" half of the line throws away the neighbour's store.
    m.invalidate(range(a + 32, 32));
    let mut d = [0u8; 8];
    m.cpu_read(PhysAddr::new(a), &mut d).unwrap();
    assert_eq!(d, [0; 8]);
}

#[test]
fn uncached_regions_bypass_the_cache() {
    let m = quiet();
    let dev = Device::builder(DeviceId(1), "nc").build().unwrap();
    m.attach(dev).unwrap();
    let a = 0x50_0000;
    m.cpu_write(PhysAddr::new(a), &[1; 64], Owner(1)).unwrap();
    m.set_uncached(range(a, 4096));
    assert!(m.is_uncached(PhysAddr::new(a + 100)));
    assert_eq!(m.cached_line(PhysAddr::new(a)), None, "flushed when marked");
    // A store lands in RAM at once, the device sees it without maintenance...
    m.cpu_write(PhysAddr::new(a + 8), &[2; 8], Owner(2))
        .unwrap();
    m.grant(DeviceId(1), DmaAddr::new(a), 64).unwrap();
    let got = m.device_read(DeviceId(1), DmaAddr::new(a), 16).unwrap();
    assert_eq!(got.data, [[1u8; 8], [2u8; 8]].concat());
    // ...and the CPU sees device writes at once; speculation cannot pull lines in.
    m.device_write(DeviceId(1), DmaAddr::new(a), &[3; 4], Owner(3))
        .unwrap();
    assert!(!m.speculate_line(PhysAddr::new(a)));
    let mut d = [0u8; 4];
    m.cpu_read(PhysAddr::new(a), &mut d).unwrap();
    assert_eq!(d, [3; 4]);
    assert_eq!(m.cached_line(PhysAddr::new(a)), None);
    // An access straddling the uncached boundary is split correctly.
    m.cpu_write(PhysAddr::new(a + 4096 - 4), &[9; 8], Owner(9))
        .unwrap();
    assert_eq!(m.cached_line(PhysAddr::new(a + 4096)), Some(true));
    assert_eq!(m.cached_line(PhysAddr::new(a + 4096 - 4)), None);
    let mut e = [0u8; 8];
    m.cpu_read(PhysAddr::new(a + 4096 - 4), &mut e).unwrap();
    assert_eq!(e, [9; 8]);
    m.set_cached(range(a, 4096));
    assert!(!m.is_uncached(PhysAddr::new(a)));
}

#[test]
fn coherent_devices_snoop_the_cache() {
    let m = quiet();
    let dev = Device::builder(DeviceId(3), "coh")
        .coherent(true)
        .build()
        .unwrap();
    m.attach(dev).unwrap();
    let a = 0x60_0000;
    m.cpu_write(PhysAddr::new(a), &[4; 16], Owner(4)).unwrap();
    m.grant(DeviceId(3), DmaAddr::new(a), 64).unwrap();
    // Reads the dirty line without a clean.
    assert_eq!(
        m.device_read(DeviceId(3), DmaAddr::new(a), 16)
            .unwrap()
            .data,
        vec![4; 16]
    );
    // Writes are visible to the CPU even with the line cached.
    m.device_write(DeviceId(3), DmaAddr::new(a + 4), &[8; 4], Owner(8))
        .unwrap();
    let mut d = [0u8; 8];
    m.cpu_read(PhysAddr::new(a), &mut d).unwrap();
    assert_eq!(d, [4, 4, 4, 4, 8, 8, 8, 8]);
    assert!(m.evict_line(PhysAddr::new(a)));
    let mut o = [Owner(0); 8];
    m.peek_ram(PhysAddr::new(a), &mut d, &mut o).unwrap();
    assert_eq!(
        d,
        [4, 4, 4, 4, 8, 8, 8, 8],
        "write-back kept the device's bytes"
    );
}

#[test]
fn cpus_and_pages() {
    let m = Machine::new(MachineConfig {
        cpus: 4,
        ..MachineConfig::default()
    })
    .unwrap();
    assert_eq!(m.cpu_count(), 4);
    m.set_current_cpu(3).unwrap();
    assert_eq!(m.current_cpu(), 3);
    assert_eq!(
        m.set_current_cpu(4),
        Err(SimError::NoSuchCpu { cpu: 4, count: 4 })
    );
    let p = m.alloc_pages(4, u32::MAX as u64).unwrap();
    assert!(p.as_u64() >= 1 << 20 && p.as_u64() % 4096 == 0);
    let q = m.alloc_pages(1, u64::MAX).unwrap();
    assert_ne!(p, q);
    assert!(
        m.alloc_pages(1 << 20, u32::MAX as u64).is_none(),
        "4 GiB below 4 GiB"
    );
    m.free_pages(p, 4);
    m.free_pages(p, 4);
    assert_eq!(m.stats().bad_frees, 1);
    assert_eq!(m.used_pages(), 1);
    assert_eq!(m.cache_line_size(), 64);
}

#[test]
fn same_seed_same_hazards() {
    let run = |seed| {
        let m = Machine::new(MachineConfig {
            seed,
            ..MachineConfig::default()
        })
        .unwrap();
        for i in 0..2_000u64 {
            let a = PhysAddr::new(0x10_0000 + (i * 40) % 8192);
            m.cpu_write(a, &[i as u8; 8], Owner(1)).unwrap();
            m.tick();
        }
        (m.stats(), m.cache_contents())
    };
    let (a, la) = run(1);
    let (b, lb) = run(1);
    let (c, _) = run(2);
    assert_eq!(a, b);
    assert_eq!(la, lb);
    assert!(a.hazard_evictions > 0 && a.speculative_fills > 0);
    assert_ne!(a.event_hash, c.event_hash);
}
