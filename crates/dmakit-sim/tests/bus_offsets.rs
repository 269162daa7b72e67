//! Acceptance: devices that see memory at bus addresses other than the physical ones.
//!
//! Three devices with bus windows (a devicetree's `dma-ranges`) share one misbehaving
//! machine with a device behind an IOMMU: `up` sees the first GiB at `cpu + 0xc000_0000`
//! (a Raspberry-Pi-4-like window), `down` sees 4–6 GiB at `cpu - 0x8000_0000`, `split`
//! has two windows with different offsets, a bus limit, and a coherent mask narrower than
//! its streaming one. The model's devices reach memory through their own windows, so a
//! mapper that translated wrongly would hand them an address that reaches other memory
//! (corruption) or none (a fault).
//!
//! Every path runs: direct and SWIOTLB bounces (aligned, misaligned, out of reach, with a
//! `min_align_mask`) with syncs, the coherent bounce pool, a transient bounce, sg lists, a
//! deferred mapping, the IOMMU path's bounce slots, and coherent allocations. Every one is
//! judged by the oracle, and the machine records no fault: every device access stayed in
//! the window it was granted and under its mask and bus limit. The control runs the same
//! with the mapper ignoring the windows (`HazardControls::identity_bus_translation`), and
//! every windowed device then corrupts or faults.

use std::sync::{Arc, Mutex};

use dmakit::bounce::BounceBackend;
use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::dma_alloc::{
    AllocContext, DmaAllocError, DmaAllocator, DmaAllocatorConfig, NoTranslation,
};
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{
    BouncePool, BounceReason, Device, DeviceBuilder, DeviceId, Direction, DmaAddr, DmaError,
    DmaMapper, DomainConfig, HazardControls, IommuDma, MapPath, MapStatus, PhysAddr, PhysRange,
    SgEntry,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::workload::Harness;
use dmakit_sim::{
    CacheConfig, HazardConfig, Machine, MachineConfig, Oracle, OracleReport, Owner,
    RoutedTranslation, SimIommu, SimIommuConfig, WorkloadConfig,
};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const LINE: u64 = 64;

/// `up`: the first GiB at bus `cpu + 0xc000_0000`, 32-bit, bouncing through SWIOTLB and
/// keeping 11 low address bits in its bounces.
fn up() -> Device {
    Device::builder(DeviceId(1), "up")
        .dma_bits(32)
        .cache_line(LINE)
        .min_align_mask(0x7ff)
        .dma_range(PhysAddr::new(0), DmaAddr::new(0xc000_0000), GIB)
        .build()
        .unwrap()
}

/// `down`: 4–6 GiB at bus `cpu - 0x8000_0000` (bus 2–4 GiB), bouncing through the
/// coherent pool. Its 33-bit mask would also reach its memory at the physical addresses,
/// so a mapper ignoring the window maps in place and the device reaches nothing.
fn down() -> Device {
    Device::builder(DeviceId(2), "down")
        .dma_bits(33)
        .cache_line(LINE)
        .bounce_pool(BouncePool::Coherent)
        .dma_range(PhysAddr::new(4 * GIB), DmaAddr::new(2 * GIB), 2 * GIB)
        .build()
        .unwrap()
}

/// `split`'s description, with or without its windows: `[0x2000_0000, 0x6000_0000)` at bus
/// `cpu - 0x1000_0000` and 6–7 GiB at bus `0x8000_0000`; a bus limit at bus
/// `0xafff_ffff`, which cuts off the last quarter of the second window; coherent
/// allocations below bus 1 GiB (30 bits), so only the first window serves them.
fn split_builder(id: u32, windows: bool) -> DeviceBuilder {
    let b = Device::builder(DeviceId(id), "split")
        .dma_bits(32)
        .coherent_dma_bits(30)
        .bus_dma_limit(0xafff_ffff)
        .cache_line(LINE);
    if !windows {
        return b;
    }
    b.dma_range(
        PhysAddr::new(0x2000_0000),
        DmaAddr::new(0x1000_0000),
        0x4000_0000,
    )
    .dma_range(PhysAddr::new(6 * GIB), DmaAddr::new(0x8000_0000), GIB)
}

fn split() -> Device {
    split_builder(3, true).build().unwrap()
}

/// Behind the IOMMU, untrusted (its small buffers bounce into SWIOTLB slots the IOMMU
/// maps), with a window that must not matter there: the IOMMU's tables hold physical
/// addresses.
fn behind_iommu() -> Device {
    Device::builder(DeviceId(4), "iommu")
        .dma_bits(32)
        .cache_line(LINE)
        .trusted(false)
        .dma_range(PhysAddr::new(0), DmaAddr::new(0x10_0000_0000), 8 * GIB)
        .build()
        .unwrap()
}

/// The machine: RAM at 0–2 GiB and 4–8 GiB, a small cache that evicts and speculates, the
/// IOMMU device behind a strict domain.
struct Bus {
    m: Machine,
    iommu: Arc<IommuDma>,
    swiotlb: Arc<SwiotlbBounce>,
    coherent: Arc<CoherentBouncePool>,
}

fn bus(seed: u64) -> Bus {
    let m = Machine::new(MachineConfig {
        seed,
        cache: CacheConfig {
            line_size: LINE,
            capacity: 32 * 1024,
            ways: 4,
        },
        hazards: HazardConfig::default(),
        ..MachineConfig::default()
    })
    .unwrap();
    let hw = SimIommu::new(SimIommuConfig::default()).unwrap();
    let mut routed = RoutedTranslation::new();
    routed.route(behind_iommu().id(), &hw);
    m.set_translation(Box::new(routed));
    let iommu = Arc::new(IommuDma::new(Arc::new(hw), 1).unwrap());
    let domain = iommu.create_domain(DomainConfig::STRICT).unwrap();
    for d in [up(), down(), split(), behind_iommu()] {
        m.attach(d).unwrap();
    }
    iommu.attach(&behind_iommu(), domain).unwrap();
    // SWIOTLB at 512 MiB: in `up`'s window and in `split`'s first one.
    let swiotlb = Arc::new(swiotlb_at(&m, 4 * MIB, 0x2000_0000, None));
    // The coherent bounce pool at 5 GiB, in `down`'s window.
    let coherent = CoherentBouncePool::new(
        ObjectPoolConfig {
            min_object: LINE,
            max_object: 256 * 1024,
            chunk_bytes: MIB,
            refill_below: 0,
            name: "coherent-pool",
        },
        None,
    )
    .unwrap();
    let base = m.alloc_pages_between(1024, 5 * GIB, 6 * GIB - 1).unwrap();
    m.set_uncached(PhysRange::new(base, 4 * MIB).unwrap());
    coherent.add_chunk(base, 4 * MIB).unwrap();
    Bus {
        m,
        iommu,
        swiotlb,
        coherent: Arc::new(coherent),
    }
}

/// A SWIOTLB pool of `bytes` from `at` (2 KiB slots, one area), growing through `hook`.
fn swiotlb_at(
    m: &Machine,
    bytes: u64,
    at: u64,
    hook: Option<Arc<dyn dmakit::growth::GrowthHook>>,
) -> SwiotlbBounce {
    let base = m
        .alloc_pages_between(bytes / 4096, at, at + 2 * bytes)
        .unwrap();
    let cfg = PoolConfig::builder()
        .areas(1)
        .max_cache_line(LINE)
        .build()
        .unwrap();
    let pool = SwiotlbBounce::new(cfg, hook, 256 * 1024, u64::MAX);
    pool.add_region(base, bytes).unwrap();
    pool
}

impl Bus {
    fn mapper(&self, controls: HazardControls) -> DmaMapper<&Machine> {
        DmaMapper::builder(&self.m)
            .swiotlb_backend(self.swiotlb.clone())
            .coherent_backend(self.coherent.clone())
            .iommu(self.iommu.clone())
            .hazard_controls(controls)
            .build()
    }

    /// Faults the machine recorded for `dev`.
    fn faults_of(&self, dev: &Device) -> usize {
        self.m
            .faults()
            .iter()
            .filter(|f| f.device == dev.id())
            .count()
    }
}

/// What one device's runs came to: the oracle's verdicts on every path it took.
#[derive(Debug, Default)]
struct Verdict {
    reports: Vec<OracleReport>,
    map_errors: u64,
}

impl Verdict {
    fn wrong_bytes(&self) -> u64 {
        self.reports.iter().map(OracleReport::wrong_bytes).sum()
    }
}

/// Randomized transfers (all directions, sizes to 4 KiB, every placement, syncs and second
/// rounds) by every device at once, interleaved on the one machine: for each windowed
/// device one run with buffers it reaches in place (direct, or bounced where a line is
/// shared) and one with buffers it cannot reach in place (outside its windows, or above
/// its bus limit: always bounced); the IOMMU device anywhere.
fn random_transfers(b: &Bus, mapper: &DmaMapper<&Machine>) -> Vec<(Device, Verdict)> {
    let runs: [(Device, u64, u64); 7] = [
        (up(), 16 * MIB, GIB - 1),
        (up(), GIB, 2 * GIB - 1),
        (down(), 4 * GIB, 5 * GIB - 1),
        (down(), 16 * MIB, GIB - 1),
        (split(), 6 * GIB, 7 * GIB - 1),
        // In its second window, but above its bus limit.
        (split(), 6 * GIB + 0x3000_0000, 7 * GIB - 1),
        (behind_iommu(), 16 * MIB, 8 * GIB - 1),
    ];
    let mut harnesses = Vec::new();
    for (i, (dev, lo, hi)) in runs.iter().enumerate() {
        let cfg = WorkloadConfig {
            transfers: 0,
            seed: 40 + i as u64,
            max_len: 4096,
            log_sizes: true,
            min_addr: *lo,
            max_addr: *hi,
            ..WorkloadConfig::default()
        };
        harnesses.push(Harness::new(&b.m, mapper, dev, cfg).unwrap());
    }
    for _ in 0..250 {
        for h in &mut harnesses {
            h.run_one().unwrap();
        }
    }
    let mut out: Vec<(Device, Verdict)> = Vec::new();
    for ((dev, ..), h) in runs.into_iter().zip(harnesses) {
        let o = h.finish().unwrap();
        let v = match out.iter_mut().find(|(d, _)| d.id() == dev.id()) {
            Some((_, v)) => v,
            None => {
                out.push((dev, Verdict::default()));
                &mut out.last_mut().unwrap().1
            }
        };
        v.reports.push(o.report);
        v.map_errors += o.map_errors;
    }
    out
}

fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

/// One buffer of an explicitly driven transfer, judged by `oracle`.
struct Buf {
    phys: PhysAddr,
    len: u64,
    owner: Owner,
}

impl Buf {
    /// The oracle starts tracking the buffer and the CPU fills it (its lines may stay
    /// dirty in the cache).
    fn fill(&self, m: &Machine, oracle: &mut Oracle, seed: u8) {
        oracle
            .register(m, self.owner, self.phys, self.len, "buffer")
            .unwrap();
        let data = pattern(self.len, seed);
        m.cpu_write(self.phys, &data, self.owner).unwrap();
        oracle.cpu_stored(self.phys, &data, self.owner);
    }

    /// The device, given `dma`, reads the buffer and writes its second half; refused
    /// accesses are in the machine's fault log.
    fn device_round(&self, m: &Machine, oracle: &mut Oracle, dev: &Device, dma: DmaAddr) {
        m.grant(dev.id(), dma, self.len).unwrap();
        if let Ok(got) = m.device_read(dev.id(), dma, self.len) {
            oracle
                .check_device_read(self.phys, &got.data, &got.owners, self.owner)
                .unwrap();
        }
        let half = self.len / 2;
        let back = pattern(self.len - half, 77);
        if m.device_write(dev.id(), dma.add(half), &back, self.owner)
            .is_ok()
        {
            oracle.device_wrote(self.phys.add(half), &back, self.owner);
        }
        m.revoke(dev.id(), dma, self.len).unwrap();
        for _ in 0..8 {
            m.tick();
        }
    }

    /// The CPU owns the buffer again: the oracle checks what it sees, and stops tracking
    /// it.
    fn check(&self, m: &Machine, oracle: &mut Oracle) {
        let r = PhysRange::new(self.phys, self.len).unwrap();
        oracle.check_transfer(m, r, self.owner).unwrap();
        oracle.unregister(self.phys).unwrap();
    }
}

/// A scatter-gather list for `up`: a page it reaches in place, a buffer outside its
/// window, and a misaligned one inside it (bounced for the shared lines).
fn sg_list(b: &Bus, mapper: &DmaMapper<&Machine>, oracle: &mut Oracle) {
    let dev = up();
    let near = b.m.alloc_pages_between(4, 16 * MIB, GIB - 1).unwrap();
    let far = b.m.alloc_pages_between(1, GIB, 2 * GIB - 1).unwrap();
    let bufs = [
        Buf {
            phys: near,
            len: 4096,
            owner: Owner(31),
        },
        Buf {
            phys: far.add(8),
            len: 3000,
            owner: Owner(32),
        },
        Buf {
            phys: near.add(4096 + 40),
            len: 200,
            owner: Owner(33),
        },
    ];
    for (i, buf) in bufs.iter().enumerate() {
        buf.fill(&b.m, oracle, i as u8);
    }
    let entries: Vec<SgEntry> = bufs
        .iter()
        .map(|b| SgEntry {
            phys: b.phys,
            len: b.len,
        })
        .collect();
    let dir = Direction::Bidirectional;
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let segs = unsafe { mapper.map_sg(&dev, &entries, dir) }.unwrap();
    assert_eq!(segs.len(), bufs.len());
    for (buf, seg) in bufs.iter().zip(&segs) {
        buf.device_round(&b.m, oracle, &dev, seg.dma);
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap_sg(&dev, &segs, dir) }.unwrap();
    for buf in &bufs {
        buf.check(&b.m, oracle);
    }
}

/// A deferred mapping for `up`: its own small pool (in `up`'s window) is filled, a
/// mapping waits, an unmap makes room and the completion hands out the bounce's address.
fn deferred(b: &Bus, controls: HazardControls, oracle: &mut Oracle) {
    let dev = up();
    let pool = Arc::new(swiotlb_at(&b.m, 256 * 1024, 0x2800_0000, None));
    let mapper = DmaMapper::builder(&b.m)
        .swiotlb_backend(pool)
        .hazard_controls(controls)
        .build();
    let far = b.m.alloc_pages_between(2, GIB, 2 * GIB - 1).unwrap();
    let mut hogs = Vec::new();
    for _ in 0..200 {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { mapper.map(&dev, far, 2048, Direction::ToDevice) } {
            Ok(dma) => hogs.push(dma),
            Err(DmaError::PoolExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let buf = Buf {
        phys: far.add(4096 + 24),
        len: 1500,
        owner: Owner(41),
    };
    buf.fill(&b.m, oracle, 9);
    let done: Arc<Mutex<Option<Result<DmaAddr, DmaError>>>> = Arc::default();
    let slot = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &dev,
            buf.phys,
            buf.len,
            Direction::Bidirectional,
            Box::new(move |r| *slot.lock().unwrap() = Some(r)),
        )
    }
    .unwrap();
    let dma = match status {
        MapStatus::Mapped(dma) => dma,
        MapStatus::Deferred => {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, hogs.pop().unwrap(), 2048, Direction::ToDevice) }.unwrap();
            done.lock().unwrap().take().expect("completed").unwrap()
        }
    };
    buf.device_round(&b.m, oracle, &dev, dma);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, buf.len, Direction::Bidirectional) }.unwrap();
    buf.check(&b.m, oracle);
    for h in hogs {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, h, 2048, Direction::ToDevice) }.unwrap();
    }
}

/// A transient bounce for `up`: its pool is full and growing, so an exact-size bounce from
/// spare pages in its window bridges the gap.
fn transient(b: &Bus, controls: HazardControls, oracle: &mut Oracle) {
    let dev = up();
    let hook: Arc<dyn dmakit::growth::GrowthHook> = Arc::new(|_| {});
    let pool = Arc::new(swiotlb_at(&b.m, 256 * 1024, 0x3000_0000, Some(hook)));
    let spare = b.m.alloc_pages_between(256, 0x3800_0000, GIB - 1).unwrap();
    let zoned = Arc::new(ZonedPageAllocator::new(&[PhysRange::new(spare, MIB).unwrap()]).unwrap());
    let mapper = DmaMapper::builder(&b.m)
        .swiotlb_backend(pool.clone())
        .transient_pages(zoned)
        .hazard_controls(controls)
        .build();
    let near = b.m.alloc_pages_between(80, 0x3900_0000, GIB - 1).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, near.add(8), 254_000, Direction::FromDevice) }.unwrap();
    let buf = Buf {
        phys: near.add(300_008),
        len: 9000,
        owner: Owner(51),
    };
    buf.fill(&b.m, oracle, 3);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (dma, path) =
        unsafe { mapper.map_traced(&dev, buf.phys, buf.len, Direction::Bidirectional) }.unwrap();
    if !controls.identity_bus_translation {
        assert_eq!(
            path,
            MapPath::Bounced {
                reason: BounceReason::Misaligned,
                backend: "transient"
            }
        );
    }
    buf.device_round(&b.m, oracle, &dev, dma);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, dma, buf.len, Direction::Bidirectional) }.unwrap();
    buf.check(&b.m, oracle);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 254_000, Direction::FromDevice) }.unwrap();
}

/// Coherent allocations for `split`, whose coherent mask (30 bits) reaches only its first
/// window: they come from there, at a bus address below the coherent mask, and CPU and
/// device see each other's writes without maintenance. `accessor` is the device as the
/// model sees it (the control: one without windows).
fn coherent_allocations(b: &Bus, accessor: &Device, oracle: &mut Oracle) {
    let dev = split();
    // Zones over 16 MiB at 1 GiB (bus 0x3000_0000, below the coherent mask) and 16 MiB at
    // 6 GiB (bus 0x8000_0000: the streaming mask reaches it, the coherent one does not).
    let low = b.m.alloc_pages_between(4096, GIB, 2 * GIB - 1).unwrap();
    let high = b.m.alloc_pages_between(4096, 6 * GIB, 7 * GIB - 1).unwrap();
    let zones = ZonedPageAllocator::new(&[
        PhysRange::new(low, 16 * MIB).unwrap(),
        PhysRange::new(high, 16 * MIB).unwrap(),
    ])
    .unwrap();
    let cfg = DmaAllocatorConfig {
        atomic_pool_bytes: 64 * 1024,
        ..DmaAllocatorConfig::default()
    };
    let a = DmaAllocator::new(&b.m, &zones, NoTranslation, cfg, None).unwrap();
    // Pages from the zones, and an object of the atomic pool (which the allocator took
    // from the zones below 4 GiB: the low ones).
    let sizes = [
        (4096u64, AllocContext::MayBlock),
        (3 * 4096, AllocContext::MayBlock),
        (8192, AllocContext::MayBlock),
        (512, AllocContext::Atomic),
    ];
    for (i, (size, ctx)) in sizes.into_iter().enumerate() {
        let buf = a.alloc_coherent(&dev, size, ctx).unwrap();
        assert_eq!(buf.from_atomic_pool(), ctx == AllocContext::Atomic);
        let r = PhysRange::new(low, 16 * MIB).unwrap();
        assert!(r.contains_range(&PhysRange::new(buf.phys(), size).unwrap()));
        assert!(dev.can_address_coherent(buf.dma().as_u64(), size));
        assert_eq!(
            buf.dma().as_u64(),
            buf.phys().as_u64() - 0x1000_0000,
            "the first window's offset"
        );
        let b0 = Buf {
            phys: buf.phys(),
            len: size,
            owner: Owner(60 + i as u32),
        };
        b0.fill(&b.m, oracle, i as u8);
        b0.device_round(&b.m, oracle, accessor, buf.dma());
        b0.check(&b.m, oracle);
        a.free_coherent(&dev, buf).unwrap();
    }
    // A coherent mask below every window reaches no memory: a clean error.
    let blind = split_builder(5, true)
        .coherent_dma_bits(28)
        .build()
        .unwrap();
    assert!(matches!(
        a.alloc_coherent(&blind, 4096, AllocContext::MayBlock),
        Err(DmaAllocError::NoReachableMemory { .. })
    ));
}

/// What [`run`] saw.
struct Run {
    bus: Bus,
    /// The random transfers, per device.
    verdicts: Vec<(Device, Verdict)>,
    /// The oracle's verdict on the sg, deferred and transient transfers.
    explicit: OracleReport,
    /// Faults the machine recorded during those.
    explicit_faults: usize,
}

/// Everything but the coherent allocations, on one machine: the random transfers, sg,
/// deferred and transient.
fn run(seed: u64, controls: HazardControls) -> Run {
    let b = bus(seed);
    let mapper = b.mapper(controls);
    let verdicts = random_transfers(&b, &mapper);
    let faults_before = b.m.fault_count();
    let mut oracle = Oracle::new(LINE).unwrap();
    sg_list(&b, &mapper, &mut oracle);
    deferred(&b, controls, &mut oracle);
    transient(&b, controls, &mut oracle);
    let stats = mapper.stats();
    for dev in [up(), down(), split()] {
        let s = stats.devices.iter().find(|s| s.device == dev.id()).unwrap();
        if !controls.identity_bus_translation {
            // Each windowed device went direct and bounced, for both reasons.
            assert!(s.direct > 0, "{}: {s:?}", dev.name());
            assert!(s.bounces(BounceReason::AboveMask) > 0, "{s:?}");
            assert!(s.bounces(BounceReason::Misaligned) > 0, "{s:?}");
        }
    }
    Run {
        explicit: oracle.take_report(),
        explicit_faults: b.m.fault_count() - faults_before,
        verdicts,
        bus: b,
    }
}

#[test]
fn every_path_is_clean_through_bus_windows() {
    let Run {
        bus: b,
        verdicts,
        explicit,
        explicit_faults,
    } = run(1, HazardControls::default());
    assert_eq!(explicit_faults, 0);
    for (dev, v) in &verdicts {
        assert_eq!(v.map_errors, 0, "{}", dev.name());
        for r in &v.reports {
            assert!(r.transfers > 200, "{}: {r}", dev.name());
            assert!(r.device_read_bytes > 0, "{}: {r}", dev.name());
            assert_eq!(r.wrong_bytes(), 0, "{}: {r}", dev.name());
        }
    }
    assert!(explicit.transfers == 5, "{explicit}");
    assert!(
        explicit.checked_bytes >= 4096 + 3000 + 200 + 1500 + 9000,
        "{explicit}"
    );
    assert!(explicit.device_read_bytes > 0, "{explicit}");
    assert_eq!(explicit.wrong_bytes(), 0, "{explicit}");
    // Every device access stayed in its granted window, under its mask and bus limit,
    // and reached memory through its windows (or the IOMMU).
    assert!(b.m.faults().is_empty(), "{:?}", b.m.faults());
    let mut oracle = Oracle::new(LINE).unwrap();
    coherent_allocations(&b, &split(), &mut oracle);
    let report = oracle.take_report();
    assert_eq!(report.transfers, 4);
    assert!(report.checked_bytes >= 4 * 4096 + 8192 + 512, "{report}");
    assert!(report.device_read_bytes > 0, "{report}");
    assert!(report.is_clean() && b.m.faults().is_empty(), "{report}");
}

#[test]
fn control_ignoring_the_windows_corrupts_or_faults() {
    let controls = HazardControls {
        identity_bus_translation: true,
        ..HazardControls::default()
    };
    let Run {
        bus: b,
        verdicts,
        explicit,
        explicit_faults,
    } = run(1, controls);
    for (dev, v) in &verdicts {
        let wrong = v.wrong_bytes() > 0 || b.faults_of(dev) > 0;
        if dev.id() == behind_iommu().id() {
            // Behind the IOMMU the windows never mattered.
            assert!(!wrong && v.map_errors == 0, "{}: {:?}", dev.name(), v);
        } else {
            assert!(wrong, "{}: {:?}", dev.name(), v);
        }
    }
    // sg, deferred and transient (all `up`'s) reach the wrong memory or none.
    assert!(
        explicit.wrong_bytes() > 0 || explicit_faults > 0,
        "{explicit}"
    );
    // The allocator's buffers, reached by a device that ignores its windows: wrong memory.
    let twin = split_builder(13, false).build().unwrap();
    b.m.attach(twin.clone()).unwrap();
    let mut oracle = Oracle::new(LINE).unwrap();
    coherent_allocations(&b, &twin, &mut oracle);
    let r = oracle.take_report();
    assert!(r.wrong_bytes() > 0, "{r}");
}

#[test]
fn a_bounce_slot_outside_the_windows_is_a_clean_error() {
    let b = bus(3);
    let mapper = b.mapper(HazardControls::default());
    // Its window holds neither its buffer nor the SWIOTLB pool (512 MiB): the pool finds
    // a slot below the window's physical end, which the device cannot reach.
    let dev = Device::builder(DeviceId(7), "narrow")
        .dma_bits(32)
        .dma_range(PhysAddr::new(GIB), DmaAddr::new(0), GIB)
        .build()
        .unwrap();
    let buf = b.m.alloc_pages_between(1, 4 * GIB, 8 * GIB - 1).unwrap();
    let before = b.swiotlb.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let e = unsafe { mapper.map(&dev, buf, 512, Direction::ToDevice) }.unwrap_err();
    assert!(
        matches!(e, DmaError::BounceUnreachable { device, slot: Some(_), len: 512 } if device == dev.id()),
        "{e}"
    );
    assert_eq!(b.swiotlb.usage(), before, "the slot was given back");
    assert!(e.to_string().contains("bus address"), "{e}");
    // A device whose windows lie wholly above its mask reaches no memory at all.
    let high = Device::builder(DeviceId(8), "high")
        .dma_bits(32)
        .dma_range(PhysAddr::new(0), DmaAddr::new(1 << 33), GIB)
        .build()
        .unwrap();
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&high, buf, 512, Direction::ToDevice) },
        Err(DmaError::BounceUnreachable { slot: None, .. })
    ));
    // An unmap of an address in none of the windows names no mapping.
    assert!(matches!(
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, DmaAddr::new(0x8000_0000), 512, Direction::ToDevice) },
        Err(DmaError::UnknownMapping { .. })
    ));
}

#[test]
fn the_bus_limit_caps_the_iova_space() {
    let m = Machine::new(MachineConfig::default()).unwrap();
    let hw = SimIommu::new(SimIommuConfig::default()).unwrap();
    m.set_translation(Box::new(hw.clone()));
    let iommu = Arc::new(IommuDma::new(Arc::new(hw), 1).unwrap());
    let domain = iommu.create_domain(DomainConfig::STRICT).unwrap();
    let mapper = DmaMapper::builder(&m).iommu(iommu.clone()).build();
    let buf = m.alloc_pages_between(4, 4 * GIB, 8 * GIB - 1).unwrap();
    for (id, limit) in [(1, u64::MAX), (2, 0xffff_ffff)] {
        let dev = Device::builder(DeviceId(id), "behind")
            .coherent(true)
            .bus_dma_limit(limit)
            .build()
            .unwrap();
        m.attach(dev.clone()).unwrap();
        iommu.attach(&dev, domain).unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { mapper.map(&dev, buf, 4 * 4096, Direction::ToDevice) }.unwrap();
        assert!(dev.can_address(dma.as_u64(), 4 * 4096), "{dma}");
        if limit == u64::MAX {
            // The IOVA allocator hands out the top of the space first: above 4 GiB.
            assert!(dma.as_u64() > 0xffff_ffff, "{dma}");
        }
        m.grant(dev.id(), dma, 4 * 4096).unwrap();
        m.device_read(dev.id(), dma, 4 * 4096).unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 4 * 4096, Direction::ToDevice) }.unwrap();
    }
    assert!(m.faults().is_empty(), "{:?}", m.faults());
}
