//! Per-device pools on the machine model: restricted DMA pools, declared coherent regions,
//! and mapping-size limits.
//!
//! Two devices with restricted pools and one without run together on a misbehaving
//! machine, with aligned and misaligned buffers, through `map`, `map_sg`, syncs and
//! deferral. A bus firewall in the model confines each restricted device to its pool (and
//! keeps the ordinary device out of both), so every byte a device reads or writes proves
//! where its DMA addresses were: a stray address is a recorded device fault. The control
//! switches restricted pools off in the mapper (`HazardControls::restricted_pools_ignored`)
//! and the addresses leave the pool.

use std::sync::{Arc, Mutex};

use dmakit::dma_alloc::NoTranslation;
use dmakit::dma_alloc::{AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig};
use dmakit::{
    BounceReason, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DomainConfig,
    HazardControls, IommuDma, MapPath, MapStatus, PageAllocator, PhysAddr, PhysRange, SgEntry,
    PAGE_SIZE,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::workload::Harness;
use dmakit_sim::{
    DmaTranslation, FaultReason, HazardConfig, Machine, MachineConfig, Oracle, Owner, SimIommu,
    SimIommuConfig, WorkloadConfig,
};

const KIB: u64 = 1 << 10;
const BELOW_4G: u64 = (1 << 32) - 1;
const POOL: u64 = 512 * KIB;

/// The model's bus firewall: each confined device reaches only its windows; every other
/// device reaches everything outside them. Addresses are physical (no IOMMU).
struct Firewall {
    confined: Vec<(DeviceId, PhysRange)>,
}

impl DmaTranslation for Firewall {
    fn translate(
        &self,
        device: &Device,
        dma: DmaAddr,
        len: u64,
        _write: bool,
    ) -> Result<(PhysAddr, u64), FaultReason> {
        let access =
            PhysRange::new(PhysAddr::new(dma.as_u64()), len).ok_or(FaultReason::NotMemory)?;
        let mut own = self
            .confined
            .iter()
            .filter(|(d, _)| *d == device.id())
            .peekable();
        let allowed = if own.peek().is_some() {
            own.any(|(_, w)| w.contains_range(&access))
        } else {
            !self.confined.iter().any(|(_, w)| w.overlaps(&access))
        };
        if allowed {
            Ok((access.start(), len))
        } else {
            Err(FaultReason::NoTranslation)
        }
    }
}

/// A misbehaving machine with a global SWIOTLB pool and two restricted pools, the bus
/// firewall in place.
struct Rig {
    m: Machine,
    global: PhysRange,
    pools: [PhysRange; 2],
}

fn restricted(i: u32) -> Device {
    Device::builder(DeviceId(i), "restricted")
        .dma_bits(32)
        .build()
        .unwrap()
}

fn ordinary() -> Device {
    Device::builder(DeviceId(3), "ordinary")
        .dma_bits(32)
        .build()
        .unwrap()
}

impl Rig {
    fn new(seed: u64) -> Self {
        let m = Machine::new(MachineConfig {
            seed,
            hazards: HazardConfig::default(),
            ..MachineConfig::default()
        })
        .unwrap();
        let take = |bytes: u64| {
            let base = m.alloc_pages(bytes / PAGE_SIZE, BELOW_4G).unwrap();
            PhysRange::new(base, bytes).unwrap()
        };
        let global = take(1024 * KIB);
        let pools = [take(POOL), take(POOL)];
        m.set_translation(Box::new(Firewall {
            confined: vec![(DeviceId(1), pools[0]), (DeviceId(2), pools[1])],
        }));
        Rig { m, global, pools }
    }

    fn mapper(&self, controls: HazardControls) -> DmaMapper<&Machine> {
        DmaMapper::builder(&self.m)
            .swiotlb(self.global.start(), self.global.len())
            .unwrap()
            .restricted_pool(DeviceId(1), self.pools[0].start(), POOL)
            .unwrap()
            .restricted_pool(DeviceId(2), self.pools[1].start(), POOL)
            .unwrap()
            .hazard_controls(controls)
            .build()
    }

    fn buffer(&self, bytes: u64) -> PhysAddr {
        self.m
            .alloc_pages(bytes.div_ceil(PAGE_SIZE), BELOW_4G)
            .unwrap()
    }
}

fn in_range(r: PhysRange, dma: DmaAddr, len: u64) -> bool {
    PhysRange::new(PhysAddr::new(dma.as_u64()), len).is_some_and(|a| r.contains_range(&a))
}

#[test]
fn three_devices_run_together_and_each_restricted_one_reaches_only_its_pool() {
    let r = Rig::new(1301);
    let mapper = r.mapper(HazardControls::default());
    let devs = [restricted(1), restricted(2), ordinary()];
    let mut harnesses: Vec<_> = devs
        .iter()
        .zip(0u64..)
        .map(|(d, i)| {
            let cfg = WorkloadConfig {
                seed: 40 + i,
                max_len: 6000,
                second_round_chance: 0.3,
                ..WorkloadConfig::default()
            };
            Harness::new(&r.m, &mapper, d, cfg).unwrap()
        })
        .collect();
    for _ in 0..1500 {
        for h in &mut harnesses {
            h.run_one().unwrap();
        }
    }
    for h in harnesses {
        let out = h.finish().unwrap();
        assert_eq!(out.map_errors, 0, "{:?}", out.first_map_error);
        assert!(out.report.is_clean(), "{}", out.report);
        assert!(out.report.device_read_bytes > 0, "{}", out.report);
    }
    assert_eq!(r.m.fault_count(), 0, "{:?}", r.m.faults().first());
    let st = r.m.stats();
    assert!(
        st.speculative_fills > 0 && st.hazard_evictions > 0,
        "{st:?}"
    );
    // Every mapping of a restricted device bounced (aligned ones too); the ordinary
    // device mapped its aligned buffers in place.
    let stats = mapper.stats();
    for s in &stats.devices {
        if s.device == DeviceId(3) {
            assert!(s.direct > 0 && s.bounces_total() > 0, "{s:?}");
        } else {
            assert_eq!(s.direct, 0, "{s:?}");
            assert_eq!(s.bounces_total(), s.mappings_total(), "{s:?}");
            assert!(s.bounced.forced > 0 && s.bounced.misaligned > 0, "{s:?}");
        }
    }
    // Three distinct pools served them, each now empty again.
    let backends: Vec<_> = devs
        .iter()
        .map(|d| mapper.bounce_backend(d).unwrap().clone())
        .collect();
    for (i, b) in backends.iter().enumerate() {
        let u = b.usage();
        assert!(u.high_water > 0 && u.live == 0 && u.used == 0, "{i}: {u:?}");
        for other in &backends[i + 1..] {
            assert!(!Arc::ptr_eq(b, other));
        }
    }
}

/// Registers `len` bytes at `phys` with the oracle and has the CPU write them.
fn cpu_fill(r: &Rig, o: &mut Oracle, phys: PhysAddr, len: u64, owner: Owner) {
    let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) | 1).collect();
    o.register(&r.m, owner, phys, len, "buffer").unwrap();
    r.m.cpu_write(phys, &data, owner).unwrap();
    o.cpu_stored(phys, &data, owner);
}

/// The device reads the `len` bytes of `owner` at `phys`, mapped at `dma` (granted for the
/// read), and the oracle judges them.
fn device_reads(
    r: &Rig,
    o: &mut Oracle,
    dev: &Device,
    (dma, phys, len): (DmaAddr, PhysAddr, u64),
    owner: Owner,
) {
    r.m.grant(dev.id(), dma, len).unwrap();
    let got = r.m.device_read(dev.id(), dma, len).unwrap();
    r.m.revoke(dev.id(), dma, len).unwrap();
    o.check_device_read(phys, &got.data, &got.owners, owner)
        .unwrap();
}

#[test]
fn sg_lists_syncs_and_deferral_stay_inside_the_restricted_pool() {
    let r = Rig::new(1302);
    let mapper = r.mapper(HazardControls::default());
    let a = restricted(1);
    r.m.attach(a.clone()).unwrap();
    let mut o = Oracle::new(r.m.line_size()).unwrap();
    // A scatter-gather list of aligned and misaligned pieces, outbound.
    let base = r.buffer(64 * KIB);
    let pieces = [
        (0, 4096),
        (4096 + 8, 100),
        (3 * 4096, 8192),
        (6 * 4096 + 64, 3000),
    ];
    let entries: Vec<SgEntry> = pieces
        .iter()
        .map(|&(off, len)| SgEntry {
            phys: base.add(off),
            len,
        })
        .collect();
    for (i, e) in entries.iter().enumerate() {
        cpu_fill(&r, &mut o, e.phys, e.len, Owner(10 + i as u32));
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&a, &entries, Direction::ToDevice) }.unwrap();
    assert_eq!(segs.len(), entries.len());
    for ((s, e), i) in segs.iter().zip(&entries).zip(10..) {
        assert!(
            in_range(r.pools[0], s.dma, s.len),
            "{s:?} outside {:?}",
            r.pools[0]
        );
        device_reads(&r, &mut o, &a, (s.dma, e.phys, s.len), Owner(i));
    }
    // A sync for the device after the CPU rewrote one piece: the device sees the new bytes.
    o.unregister(entries[0].phys).unwrap();
    cpu_fill(&r, &mut o, entries[0].phys, entries[0].len, Owner(20));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.sync_for_device(&a, segs[0].dma, 0, entries[0].len, Direction::ToDevice) }
        .unwrap();
    device_reads(
        &r,
        &mut o,
        &a,
        (segs[0].dma, entries[0].phys, entries[0].len),
        Owner(20),
    );
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&a, &segs, Direction::ToDevice) }.unwrap();
    assert_eq!(mapper.bounce_backend(&a).unwrap().usage().live, 0);

    // Deferral: fill the pool, queue one more, free one; the queued one lands in the pool.
    let big = 64 * KIB;
    let bufs = r.buffer(POOL + big);
    let mut live = Vec::new();
    let full_at = loop {
        let at = bufs.add(live.len() as u64 * big);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { mapper.map(&a, at, big, Direction::ToDevice) } {
            Ok(dma) => live.push(dma),
            Err(DmaError::PoolExhausted { .. }) => break at,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(live.len() as u64, POOL / big);
    let done: Arc<Mutex<Option<Result<DmaAddr, DmaError>>>> = Arc::default();
    let sink = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &a,
            full_at,
            big,
            Direction::ToDevice,
            Box::new(move |r| *sink.lock().unwrap() = Some(r)),
        )
    }
    .unwrap();
    assert_eq!(status, MapStatus::Deferred);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, live[0], big, Direction::ToDevice) }.unwrap();
    let completed = done.lock().unwrap().take().expect("completed").unwrap();
    assert!(in_range(r.pools[0], completed, big));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, completed, big, Direction::ToDevice) }.unwrap();
    for &dma in &live[1..] {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&a, dma, big, Direction::ToDevice) }.unwrap();
    }
    assert_eq!(mapper.bounce_backend(&a).unwrap().usage().live, 0);
    o.set_faults(r.m.fault_count() as u64);
    let report = o.take_report();
    assert!(report.is_clean(), "{report}");
    assert!(report.device_read_bytes > 15_000, "{report}");
}

#[test]
fn exhausting_one_restricted_pool_touches_no_other_pool() {
    let r = Rig::new(1303);
    let mapper = r.mapper(HazardControls::default());
    let (a, b, c) = (restricted(1), restricted(2), ordinary());
    let usage = |d: &Device| mapper.bounce_backend(d).unwrap().usage();
    let big = 128 * KIB;
    let bufs = r.buffer(POOL + big);
    let mut live = Vec::new();
    for i in 0..POOL / big {
        live.push(
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&a, bufs.add(i * big), big, Direction::FromDevice) }.unwrap(),
        );
    }
    let (before_a, before_b, before_c) = (usage(&a), usage(&b), usage(&c));
    assert_eq!(before_a.used, POOL);
    let extra = bufs.add(POOL);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let e = unsafe { mapper.map(&a, extra, big, Direction::FromDevice) }.unwrap_err();
    assert!(
        matches!(
            e,
            DmaError::PoolExhausted {
                device: DeviceId(1),
                ..
            }
        ),
        "{e}"
    );
    // The failed map left every pool exactly as it was.
    assert_eq!(
        (usage(&a), usage(&b), usage(&c)),
        (before_a, before_b, before_c)
    );
    // The other restricted device and the ordinary one still map, each in its own pool.
    let small = r.buffer(PAGE_SIZE);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let db = unsafe { mapper.map(&b, small.add(8), 200, Direction::FromDevice) }.unwrap();
    assert!(in_range(r.pools[1], db, 200));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dc = unsafe { mapper.map(&c, small.add(1024), 200, Direction::FromDevice) }.unwrap();
    assert!(in_range(r.global, dc, 200));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&b, db, 200, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&c, dc, 200, Direction::FromDevice) }.unwrap();
    // A restricted device's address is never looked up elsewhere: device 1 cannot end
    // device 2's mapping, nor one the ordinary device holds in place.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let db = unsafe { mapper.map(&b, small.add(8), 200, Direction::FromDevice) }.unwrap();
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&a, db, 200, Direction::FromDevice) },
        Err(DmaError::UnknownMapping {
            device: DeviceId(1),
            dma: db
        })
    );
    let in_place = DmaAddr::new(small.as_u64());
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&a, in_place, 128, Direction::ToDevice) },
        Err(DmaError::UnknownMapping { .. })
    ));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&b, db, 200, Direction::FromDevice) }.unwrap();
    for (i, dma) in live.into_iter().enumerate() {
        assert!(in_range(r.pools[0], dma, big), "{i}");
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&a, dma, big, Direction::FromDevice) }.unwrap();
    }
    assert_eq!(usage(&a).live + usage(&b).live + usage(&c).live, 0);
    assert_eq!(r.m.fault_count(), 0);
}

#[test]
fn ignoring_restricted_pools_lets_addresses_leave_the_pool() {
    // The control: routed like ordinary devices, an aligned buffer maps in place and a
    // misaligned inbound one bounces through the global pool, and the firewall refuses
    // the device's accesses there.
    let r = Rig::new(1304);
    let mapper = r.mapper(HazardControls {
        restricted_pools_ignored: true,
        ..HazardControls::default()
    });
    let a = restricted(1);
    r.m.attach(a.clone()).unwrap();
    let buf = r.buffer(2 * PAGE_SIZE);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&a, buf, PAGE_SIZE, Direction::ToDevice) }.unwrap();
    assert_eq!(path, MapPath::Direct);
    assert!(!in_range(r.pools[0], dma, PAGE_SIZE));
    r.m.grant(a.id(), dma, PAGE_SIZE).unwrap();
    assert!(r.m.device_read(a.id(), dma, PAGE_SIZE).is_err());
    r.m.revoke(a.id(), dma, PAGE_SIZE).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, dma, PAGE_SIZE, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma =
        unsafe { mapper.map(&a, buf.add(PAGE_SIZE + 8), 100, Direction::FromDevice) }.unwrap();
    assert!(in_range(r.global, dma, 100) && !in_range(r.pools[0], dma, 100));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, dma, 100, Direction::FromDevice) }.unwrap();
    assert!(r.m.fault_count() > 0);
    // With the mechanism on, the same two mappings land in the pool.
    let mapper = r.mapper(HazardControls::default());
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&a, buf, PAGE_SIZE, Direction::ToDevice) }.unwrap();
    assert!(
        matches!(
            path,
            MapPath::Bounced {
                reason: BounceReason::Forced,
                ..
            }
        ),
        "{path:?}"
    );
    assert!(in_range(r.pools[0], dma, PAGE_SIZE));
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&a, dma, PAGE_SIZE, Direction::ToDevice) }.unwrap();
}

#[test]
fn splitting_at_max_mapping_size_maps_what_fails_whole() {
    let r = Rig::new(1305);
    let mapper = r.mapper(HazardControls::default());
    let a = Device::builder(DeviceId(1), "restricted")
        .dma_bits(32)
        .min_align_mask(0xfff)
        .build()
        .unwrap();
    let forced = Device::builder(DeviceId(4), "forced")
        .force_bounce(true)
        .build()
        .unwrap();
    let coherent64 = Device::builder(DeviceId(5), "coherent")
        .dma_bits(64)
        .coherent(true)
        .build()
        .unwrap();
    assert_eq!(mapper.max_mapping_size(&coherent64), u64::MAX);
    assert_eq!(mapper.opt_mapping_size(&coherent64), u64::MAX);
    let request = 1024 * KIB;
    let buf = r.buffer(request + PAGE_SIZE);
    for dev in [&a, &forced] {
        r.m.attach(dev.clone()).unwrap();
        let max = mapper.max_mapping_size(dev);
        assert!(max > 0 && max < request, "{max}");
        assert_eq!(mapper.opt_mapping_size(dev), max);
        // Misaligned start: the bounce keeps the offset under the min_align_mask.
        let start = buf.add(0x123);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let whole = unsafe { mapper.map(dev, start, request, Direction::FromDevice) };
        assert!(
            matches!(whole, Err(DmaError::TooLargeToBounce { .. })),
            "{whole:?}"
        );
        assert!(matches!(
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(dev, start, max + 1, Direction::FromDevice) },
            Err(DmaError::TooLargeToBounce { .. })
        ));
        // Split at the limit, the device writes every piece, the CPU sees it all.
        let mut o = Oracle::new(r.m.line_size()).unwrap();
        o.register(&r.m, Owner(1), start, request, "request")
            .unwrap();
        let mut at = 0;
        while at < request {
            let len = max.min(request - at);
            let phys = start.add(at);
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            let dma = unsafe { mapper.map(dev, phys, len, Direction::FromDevice) }.unwrap();
            let data: Vec<u8> = (0..len).map(|i| (i as u8) | 0x80).collect();
            r.m.grant(dev.id(), dma, len).unwrap();
            r.m.device_write(dev.id(), dma, &data, Owner(2)).unwrap();
            r.m.revoke(dev.id(), dma, len).unwrap();
            o.device_wrote(phys, &data, Owner(2));
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(dev, dma, len, Direction::FromDevice) }.unwrap();
            at += len;
        }
        o.check_transfer(&r.m, PhysRange::new(start, request).unwrap(), Owner(2))
            .unwrap();
        o.set_faults(r.m.fault_count() as u64);
        let report = o.take_report();
        assert!(report.is_clean(), "{report}");
        assert_eq!(mapper.bounce_backend(dev).unwrap().usage().live, 0);
    }
}

/// Zoned memory for a `DmaAllocator`, taken from the machine's allocator.
fn zones(m: &Machine) -> ZonedPageAllocator {
    let base = m.alloc_pages(4096, BELOW_4G).unwrap();
    ZonedPageAllocator::new(&[PhysRange::new(base, 4096 * PAGE_SIZE).unwrap()]).unwrap()
}

#[test]
fn coherent_allocations_of_a_device_come_from_its_declared_region() {
    let m = Machine::new(MachineConfig {
        seed: 1306,
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .unwrap();
    let region_bytes = 64 * KIB;
    let region = PhysRange::new(m.alloc_pages(16, BELOW_4G).unwrap(), region_bytes).unwrap();
    let dev = Device::builder(DeviceId(7), "sram")
        .dma_bits(32)
        .build()
        .unwrap();
    let other = Device::builder(DeviceId(8), "other")
        .dma_bits(32)
        .build()
        .unwrap();
    m.set_translation(Box::new(Firewall {
        confined: vec![(dev.id(), region)],
    }));
    m.attach(dev.clone()).unwrap();
    m.attach(other.clone()).unwrap();
    let z = zones(&m);
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * KIB,
        ..DmaAllocatorConfig::default()
    };
    let alloc = DmaAllocator::new(&m, &z, NoTranslation, cfg, None).unwrap();
    // Bad declarations are refused with their reason, and change nothing.
    let misaligned = PhysRange::new(region.start().add(64), PAGE_SIZE).unwrap();
    assert!(matches!(
        alloc.declare_coherent(&dev, misaligned),
        Err(DmaAllocError::BadDeclaredRegion { .. })
    ));
    alloc.declare_coherent(&dev, region).unwrap();
    assert_eq!(
        alloc.declare_coherent(&dev, region),
        Err(DmaAllocError::AlreadyDeclared { device: dev.id() })
    );
    assert!(matches!(
        alloc.declare_coherent(&other, region),
        Err(DmaAllocError::BadDeclaredRegion { .. })
    ));
    let mut o = Oracle::new(m.line_size()).unwrap();
    let mut held = Vec::new();
    for (i, size) in [100u64, 4096, 9000, 300, 16_384].into_iter().enumerate() {
        let ctx = if i % 2 == 0 {
            AllocContext::Atomic
        } else {
            AllocContext::MayBlock
        };
        let b = alloc.alloc_coherent(&dev, size, ctx).unwrap();
        assert!(b.from_declared_region());
        assert!(region.contains_range(&PhysRange::new(b.phys(), size).unwrap()));
        // The CPU writes, the device reads it all without maintenance, through the
        // firewall that lets it reach the region only.
        let owner = Owner(30 + i as u32);
        let data: Vec<u8> = (0..size).map(|j| (j as u8) ^ 0x5a | 1).collect();
        o.register(&m, owner, b.phys(), size, "coherent").unwrap();
        m.cpu_write(b.phys(), &data, owner).unwrap();
        o.cpu_stored(b.phys(), &data, owner);
        for _ in 0..8 {
            m.tick();
        }
        m.grant(dev.id(), b.dma(), size).unwrap();
        let got = m.device_read(dev.id(), b.dma(), size).unwrap();
        m.revoke(dev.id(), b.dma(), size).unwrap();
        o.check_device_read(b.phys(), &got.data, &got.owners, owner)
            .unwrap();
        held.push(b);
    }
    // No fallback: the full region refuses, leaving its usage as it was.
    let before = alloc.declared_coherent_usage(&dev).unwrap();
    let e = alloc
        .alloc_coherent(&dev, 32 * KIB, AllocContext::MayBlock)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("declared coherent region has no room"),
        "{e}"
    );
    assert!(
        matches!(e, DmaAllocError::DeclaredRegionExhausted { .. }),
        "{e}"
    );
    assert_eq!(alloc.declared_coherent_usage(&dev).unwrap(), before);
    // Another device's allocations come from elsewhere.
    let ob = alloc
        .alloc_coherent(&other, 4096, AllocContext::MayBlock)
        .unwrap();
    assert!(
        !ob.from_declared_region() && !region.overlaps(&PhysRange::new(ob.phys(), 4096).unwrap())
    );
    alloc.free_coherent(&other, ob).unwrap();
    // Frees go back to the region; teardown waits for them.
    let last = held.pop().unwrap();
    let alloc = match alloc.release() {
        Err(refused) => {
            assert!(matches!(
                refused.error,
                DmaAllocError::LiveAllocations { live: 5 }
            ));
            refused.handle
        }
        Ok(()) => panic!("released with live allocations"),
    };
    alloc.free_coherent(&dev, last).unwrap();
    for b in held {
        alloc.free_coherent(&dev, b).unwrap();
    }
    let u = alloc.declared_coherent_usage(&dev).unwrap();
    assert_eq!((u.used, u.live, u.largest_free), (0, 0, region_bytes));
    o.set_faults(m.fault_count() as u64);
    let report = o.take_report();
    assert!(report.is_clean(), "{report}");
    assert_eq!(m.fault_count(), 0);
    assert!(alloc.release().is_ok());
    assert!(!m.is_uncached(region.start()));
}

#[test]
fn behind_an_iommu_a_restricted_pool_is_refused_and_limits_follow_the_domain() {
    let m = Machine::new(MachineConfig {
        seed: 1307,
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .unwrap();
    let iommu = SimIommu::new(SimIommuConfig::default()).unwrap();
    m.set_translation(Box::new(iommu.clone()));
    let layer = Arc::new(IommuDma::new(Arc::new(iommu.clone()), 1).unwrap());
    let global = m.alloc_pages(256, BELOW_4G).unwrap();
    let pool = m.alloc_pages(POOL / PAGE_SIZE, BELOW_4G).unwrap();
    let mapper = DmaMapper::builder(&m)
        .swiotlb(global, 256 * PAGE_SIZE)
        .unwrap()
        .restricted_pool(DeviceId(1), pool, POOL)
        .unwrap()
        .iommu(layer.clone())
        .build();
    let a = restricted(1);
    let untrusted = Device::builder(DeviceId(9), "thunderbolt")
        .trusted(false)
        .build()
        .unwrap();
    let trusted = Device::builder(DeviceId(10), "gpu")
        .coherent(true)
        .build()
        .unwrap();
    let dom = layer.create_domain(DomainConfig::STRICT).unwrap();
    for d in [&a, &untrusted, &trusted] {
        m.attach(d.clone()).unwrap();
        layer.attach(d, dom).unwrap();
    }
    let buf = m.alloc_pages(512, BELOW_4G).unwrap();
    let refused = DmaError::RestrictedPoolBehindIommu {
        device: DeviceId(1),
    };
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&a, buf, 64, Direction::ToDevice) },
        Err(refused)
    );
    assert_eq!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&a, DmaAddr::new(pool.as_u64()), 64, Direction::ToDevice) },
        Err(refused)
    );
    assert!(refused.to_string().contains("restricted DMA pool"));
    assert_eq!(mapper.max_mapping_size(&a), 0);
    assert_eq!(mapper.bounce_backend(&a).unwrap().usage().high_water, 0);

    // A trusted coherent device maps in place through the domain: no bounce limit, and the
    // size the IOVA range caches serve is the one without a slow path.
    assert_eq!(mapper.max_mapping_size(&trusted), u64::MAX);
    assert_eq!(mapper.opt_mapping_size(&trusted), PAGE_SIZE << 9);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let whole = unsafe { mapper.map(&trusted, buf, 1024 * KIB, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&trusted, whole, 1024 * KIB, Direction::ToDevice) }.unwrap();

    // An untrusted device's bounces are padded to whole granules: the limit leaves room for
    // the padding at every offset, and a misaligned request above it fails whole.
    let max = mapper.max_mapping_size(&untrusted);
    assert!(max < 256 * KIB && max > 240 * KIB, "{max}");
    assert_eq!(mapper.opt_mapping_size(&untrusted), max);
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe {
            mapper.map(
                &untrusted,
                buf.add(0x123),
                1024 * KIB,
                Direction::FromDevice,
            )
        },
        Err(DmaError::TooLargeToBounce { .. })
    ));
    for off in [1, 0x123, 0x800, 0xfff] {
        let at = buf.add(off);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&untrusted, at, max, Direction::FromDevice) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&untrusted, dma, max, Direction::FromDevice) }.unwrap();
    }
    assert_eq!(m.fault_count(), 0);
}
