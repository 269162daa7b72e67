//! Interrupts arriving inside a map path's critical section.
//!
//! The model's interrupt controller ([`SimInterrupts`]) is the system's interrupt control,
//! so every dmakit lock masks interrupts on the test thread (one CPU) while held. An
//! interrupt is raised at the moment a map takes a lock while holding another (the SWIOTLB's
//! region stripe then an area; the IOMMU's per-CPU magazines then the depot): inside the
//! critical section. Its handler maps, syncs and unmaps on every path — direct, SWIOTLB,
//! coherent pool, IOMMU strict and lazy, deferred — with statistics and the debug checker
//! on, each transfer judged by the oracle. With masking the interrupt is held pending until
//! the interrupted lock is released, and everything completes clean. The control switches
//! masking off: the handler then runs inside the critical section, spins on the lock the
//! interrupted map holds, and the controller's watchdog reports the deadlock.
//!
//! The same holds on the host platform (real memory, the test playing the device), with its
//! own control; and a deferral the handler queues on a full pool waits, without blocking
//! the handler, until the interrupted context unmaps, and then completes there with no lock
//! held.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::swiotlb::{PoolConfig, SwiotlbBounce};
use dmakit::{
    BouncePool, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper, DomainConfig, IommuDma,
    MapPath, MapStatus, PageAllocator, PhysAddr, PhysRange,
};
use dmakit_sim::host::{HostMaintenance, HostPlatform};
use dmakit_sim::transfer::{Scratch, Transfer, TransferKnobs, TransferOutcome};
use dmakit_sim::{
    Deadlock, Machine, MachineConfig, Oracle, OracleReport, Owner, RoutedTranslation,
    SimInterrupts, SimIommu, SimIommuConfig, SimRng, WorkloadConfig,
};

const LINE: u64 = 64;
const BELOW_4G: u64 = (1 << 32) - 1;
/// A buffer of whole cache lines (offset, length): mapped in place.
const WHOLE_LINES: (u64, u64) = (0, 4 * LINE);
/// A buffer sharing its first and last lines: an inbound mapping of it is bounced.
const SHARED_LINES: (u64, u64) = (8, 200);

/// Masking is process-wide: the tests that switch it run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Which map the interrupt arrives in.
#[derive(Clone, Copy, Debug)]
enum Interrupted {
    /// A SWIOTLB bounce: region stripe held, area lock being taken.
    Swiotlb,
    /// The first IOMMU map of a domain: the CPU's magazines held, the depot being taken.
    Iommu,
}

/// The machine, the mapper with every path, and one device per path. Leaked: the
/// interrupt handler is `'static`.
struct Rig {
    m: &'static Machine,
    mapper: &'static DmaMapper<&'static Machine>,
    direct: Device,
    swiotlb: Device,
    coherent: Device,
    strict: Device,
    lazy: Device,
}

fn device(id: u32, name: &'static str, pool: BouncePool) -> Device {
    Device::builder(DeviceId(id), name)
        .cache_line(LINE)
        .dma_bits(32)
        .bounce_pool(pool)
        .build()
        .unwrap()
}

fn rig(seed: u64) -> Rig {
    let m: &'static Machine = Box::leak(Box::new(
        Machine::new(MachineConfig {
            seed,
            ..MachineConfig::default()
        })
        .unwrap(),
    ));
    let iommu = SimIommu::new(SimIommuConfig::default()).unwrap();
    let dma = Arc::new(IommuDma::new(Arc::new(iommu.clone()), 1).unwrap());
    let strict = device(4, "strict", BouncePool::Swiotlb);
    let lazy = device(5, "lazy", BouncePool::Swiotlb);
    let mut routes = RoutedTranslation::new();
    for (dev, cfg) in [(&strict, DomainConfig::STRICT), (&lazy, DomainConfig::LAZY)] {
        let d = dma.create_domain(cfg).unwrap();
        dma.attach(dev, d).unwrap();
        routes.route(dev.id(), &iommu);
    }
    m.set_translation(Box::new(routes));

    let base = m.alloc_pages(256, BELOW_4G).unwrap();
    let cfg = PoolConfig::builder()
        .cpu_count(1)
        .max_cache_line(LINE)
        .build()
        .unwrap();
    let swiotlb = SwiotlbBounce::new(cfg, None, 0, BELOW_4G);
    swiotlb.add_region(base, 256 * 4096).unwrap();
    let coherent = CoherentBouncePool::new(ObjectPoolConfig::default(), None).unwrap();
    let base = m.alloc_pages(64, BELOW_4G).unwrap();
    m.set_uncached(PhysRange::new(base, 64 * 4096).unwrap());
    coherent.add_chunk(base, 64 * 4096).unwrap();

    let mapper = Box::leak(Box::new(
        DmaMapper::builder(m)
            .swiotlb_backend(Arc::new(swiotlb))
            .coherent_backend(Arc::new(coherent))
            .iommu(dma)
            .debug_checker()
            .build(),
    ));
    let r = Rig {
        m,
        mapper,
        direct: device(1, "direct", BouncePool::Swiotlb),
        swiotlb: device(2, "swiotlb", BouncePool::Swiotlb),
        coherent: device(3, "coherent", BouncePool::Coherent),
        strict,
        lazy,
    };
    for d in [&r.direct, &r.swiotlb, &r.coherent, &r.strict, &r.lazy] {
        m.attach(d.clone()).unwrap();
    }
    r
}

/// Transfers judged by one oracle, each through a fresh buffer.
struct Bench {
    m: &'static Machine,
    mapper: &'static DmaMapper<&'static Machine>,
    oracle: Oracle,
    rng: SimRng,
    scratch: Scratch,
    next_owner: u32,
}

impl Bench {
    fn new(r: &Rig, seed: u64, first_owner: u32) -> Self {
        Self {
            m: r.m,
            mapper: r.mapper,
            oracle: Oracle::new(LINE).unwrap(),
            rng: SimRng::new(seed),
            scratch: Scratch::default(),
            next_owner: first_owner,
        }
    }

    /// An inbound transfer of `len` bytes at `offset` into a fresh page, completed with
    /// `sync_for_cpu`, a second round after `sync_for_device`, then `unmap`.
    fn transfer(&mut self, dev: &Device, offset: u64, len: u64) -> TransferOutcome {
        let base = self.m.alloc_pages(1, BELOW_4G).unwrap();
        let buf = PhysRange::new(PhysAddr::new(base.as_u64() + offset), len).unwrap();
        let owner = Owner(self.next_owner);
        self.next_owner += 1;
        self.oracle
            .register(self.m, owner, buf.start(), len, "buffer")
            .unwrap();
        let knobs = TransferKnobs {
            sync_chance: 1.0,
            second_round_chance: 1.0,
            short_write_chance: 0.0,
            ..TransferKnobs::from(&WorkloadConfig::default())
        };
        Transfer {
            machine: self.m,
            mapper: self.mapper,
            device: dev,
            knobs,
            rng: &mut self.rng,
            oracle: &mut self.oracle,
            scratch: &mut self.scratch,
        }
        .run(buf, Direction::Bidirectional, owner, &[])
        .unwrap()
    }
}

/// What the handler did: each path's outcome, then its oracle's report.
#[derive(Default)]
struct HandlerRun {
    outcomes: Vec<(&'static str, TransferOutcome)>,
    deferred: Option<MapStatus>,
    report: Option<OracleReport>,
}

/// A handler mapping, syncing and unmapping on every path; it writes what happened to
/// `out`.
fn handler(r: &Rig, out: Rc<RefCell<HandlerRun>>) -> Box<dyn FnOnce()> {
    let mut bench = Bench::new(r, 7, 1000);
    let devices = [
        ("direct", r.direct.clone(), WHOLE_LINES),
        ("swiotlb", r.swiotlb.clone(), SHARED_LINES),
        ("coherent pool", r.coherent.clone(), SHARED_LINES),
        ("iommu strict", r.strict.clone(), WHOLE_LINES),
        ("iommu lazy", r.lazy.clone(), WHOLE_LINES),
    ];
    let swiotlb = r.swiotlb.clone();
    Box::new(move || {
        for (name, dev, (offset, len)) in &devices {
            let o = bench.transfer(dev, *offset, *len);
            out.borrow_mut().outcomes.push((name, o));
        }
        // The deferred path: room is free, so it maps at once (under the queue's lock for
        // its FIFO check); then unmapped.
        let buf = bench.m.alloc_pages(1, BELOW_4G).unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let status = unsafe {
            bench.mapper.map_or_defer(
                &swiotlb,
                PhysAddr::new(buf.as_u64() + 8),
                100,
                Direction::ToDevice,
                Box::new(|_| {}),
            )
        }
        .unwrap();
        if let MapStatus::Mapped(dma) = status {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { bench.mapper.unmap(&swiotlb, dma, 100, Direction::ToDevice) }.unwrap();
        }
        let mut o = out.borrow_mut();
        o.deferred = Some(status);
        o.report = Some(bench.oracle.take_report());
    })
}

/// One interrupted transfer and what its handler did.
struct Run {
    /// The interrupted transfer's outcome and oracle report, or the deadlock the watchdog
    /// found.
    interrupted: Result<(TransferOutcome, OracleReport), Deadlock>,
    handler: Rc<RefCell<HandlerRun>>,
    rig: Rig,
}

/// Raises the handler inside the critical section of an `interrupted` map on the test
/// thread.
fn interrupt(irq: &SimInterrupts, interrupted: Interrupted, seed: u64) -> Run {
    let rig = rig(seed);
    let handler_run = Rc::new(RefCell::new(HandlerRun::default()));
    let mut bench = Bench::new(&rig, seed, 1);
    let (dev, (offset, len)) = match interrupted {
        Interrupted::Swiotlb => (rig.swiotlb.clone(), SHARED_LINES),
        Interrupted::Iommu => (rig.strict.clone(), WHOLE_LINES),
    };
    irq.raise_in_next_nested_section(handler(&rig, handler_run.clone()));
    let result = irq.catch_deadlock(|| {
        let o = bench.transfer(&dev, offset, len);
        (o, bench.oracle.take_report())
    });
    Run {
        interrupted: result,
        handler: handler_run,
        rig,
    }
}

fn clean(report: &OracleReport) {
    assert!(report.is_clean(), "{report}");
    assert!(
        report.device_read_bytes > 0 && report.faults == 0,
        "{report}"
    );
}

#[test]
fn a_map_from_an_interrupt_inside_a_critical_section_completes_on_every_path() {
    let _serial = serial();
    let irq = SimInterrupts::install().unwrap();
    irq.set_masking(true);
    for (i, interrupted) in [Interrupted::Swiotlb, Interrupted::Iommu]
        .into_iter()
        .enumerate()
    {
        let before = irq.stats();
        let Run {
            interrupted: result,
            handler: out,
            rig: r,
        } = interrupt(irq, interrupted, 11 + i as u64);
        let (outcome, report) = result.unwrap_or_else(|d| panic!("{interrupted:?}: {d:?}"));
        let after = irq.stats();
        // Raised inside the section, masked, delivered when the section's lock was
        // released: never at once.
        assert_eq!(after.delivered_on_restore, before.delivered_on_restore + 1);
        assert_eq!(after.delivered_at_once, before.delivered_at_once);
        assert_eq!(after.out_of_order_restores, 0);
        assert!(!irq.masked() && irq.open_sections() == 0);

        let expected = match interrupted {
            Interrupted::Swiotlb => "swiotlb",
            Interrupted::Iommu => "iommu",
        };
        let path = match &outcome {
            TransferOutcome::Done(MapPath::Bounced { backend, .. }) => *backend,
            TransferOutcome::Done(MapPath::Iommu { .. }) => "iommu",
            other => panic!("{interrupted:?}: {other:?}"),
        };
        assert_eq!(path, expected);
        clean(&report);

        let out = out.borrow();
        let paths: Vec<_> = out
            .outcomes
            .iter()
            .map(|(name, o)| match o {
                TransferOutcome::Done(MapPath::Direct) => (*name, "direct"),
                TransferOutcome::Done(MapPath::Bounced { backend, .. }) => (*name, *backend),
                TransferOutcome::Done(MapPath::Iommu { .. }) => (*name, "iommu"),
                TransferOutcome::MapFailed(e) => panic!("{name}: {e}"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                ("direct", "direct"),
                ("swiotlb", "swiotlb"),
                ("coherent pool", "coherent-pool"),
                ("iommu strict", "iommu"),
                ("iommu lazy", "iommu"),
            ]
        );
        assert!(matches!(out.deferred, Some(MapStatus::Mapped(_))));
        clean(out.report.as_ref().unwrap());

        // Statistics saw every mapping (five transfers and the deferred one in the handler,
        // the interrupted one); the checker found nothing and nothing is left mapped.
        let t = r.mapper.stats().total();
        assert_eq!(t.mappings_total(), 7, "{t:?}");
        let checker = r.mapper.debug_checker().unwrap();
        assert!(checker.reports().is_empty(), "{:?}", checker.reports());
        assert!(checker.live().is_empty());
    }
}

#[test]
fn control_without_masking_the_interrupt_deadlocks_on_the_held_lock() {
    let _serial = serial();
    let irq = SimInterrupts::install().unwrap();
    irq.set_masking(false);
    for (i, interrupted) in [Interrupted::Swiotlb, Interrupted::Iommu]
        .into_iter()
        .enumerate()
    {
        let before = irq.stats();
        let result = interrupt(irq, interrupted, 21 + i as u64).interrupted;
        let after = irq.stats();
        let deadlock = result.err().unwrap_or_else(|| {
            panic!("{interrupted:?}: the handler ran inside the section and did not deadlock")
        });
        // The handler ran at once, inside the section, over the lock the map held.
        assert!(deadlock.held_sections >= 1, "{deadlock:?}");
        assert_eq!(after.delivered_at_once, before.delivered_at_once + 1);
        assert_eq!(after.delivered_on_restore, before.delivered_on_restore);
        assert!(!irq.masked() && irq.open_sections() == 0);
    }
    irq.set_masking(true);
}

/// What a deferred request's completion saw when it ran.
#[derive(Debug)]
struct Completion {
    result: Result<DmaAddr, DmaError>,
    /// dmakit lock sections open on the completing thread (0: no lock held).
    open_sections: u32,
    /// Whether interrupts were masked.
    masked: bool,
}

/// Bytes of each bounce that fills the rig's 1 MiB SWIOTLB pool.
const FILL: u64 = 32 * 1024;
/// Bytes of the request the handler defers.
const DEFERRED: u64 = 512;

#[test]
fn a_deferral_queued_in_an_interrupt_completes_when_the_interrupted_context_unmaps() {
    let _serial = serial();
    let irq = SimInterrupts::install().unwrap();
    irq.set_masking(true);
    let r = rig(31);
    let dev = Device::builder(DeviceId(6), "deferred")
        .cache_line(LINE)
        .dma_bits(32)
        .force_bounce(true)
        .build()
        .unwrap();
    r.m.attach(dev.clone()).unwrap();
    // Fill the pool.
    let fill = r.m.alloc_pages(40 * FILL / 4096, BELOW_4G).unwrap();
    let mut held = Vec::new();
    loop {
        assert!(held.len() < 40, "a 1 MiB pool holds 32 bounces of 32 KiB");
        let phys = fill.add(held.len() as u64 * FILL);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        match unsafe { r.mapper.map(&dev, phys, FILL, Direction::ToDevice) } {
            Ok(dma) => held.push(dma),
            Err(DmaError::PoolExhausted { .. }) => break,
            Err(e) => panic!("{e}"),
        }
    }
    // The buffer the handler maps, holding what the CPU wrote.
    let buf = r.m.alloc_pages(1, BELOW_4G).unwrap();
    let (owner, pattern) = (Owner(500), vec![0xa5u8; DEFERRED as usize]);
    let mut oracle = Oracle::new(LINE).unwrap();
    oracle
        .register(r.m, owner, buf, DEFERRED, "deferred")
        .unwrap();
    r.m.cpu_write(buf, &pattern, owner).unwrap();
    oracle.cpu_stored(buf, &pattern, owner);

    let done: Arc<Mutex<Option<Completion>>> = Arc::default();
    let status: Rc<RefCell<Option<Result<MapStatus, DmaError>>>> = Rc::default();
    let (mapper, handler_dev, handler_done, handler_status) =
        (r.mapper, dev.clone(), done.clone(), status.clone());
    irq.raise_in_next_nested_section(Box::new(move || {
        let record = Box::new(move |result| {
            *handler_done.lock().unwrap() = Some(Completion {
                result,
                open_sections: irq.open_sections(),
                masked: irq.masked(),
            });
        });
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let s = unsafe {
            mapper.map_or_defer(&handler_dev, buf, DEFERRED, Direction::ToDevice, record)
        };
        *handler_status.borrow_mut() = Some(s);
    }));
    // The interrupted map: the first of an IOMMU domain (magazines held, depot taken).
    let before = irq.stats();
    let mut bench = Bench::new(&r, 31, 1);
    let (outcome, report) = irq
        .catch_deadlock(|| {
            let o = bench.transfer(&r.strict, WHOLE_LINES.0, WHOLE_LINES.1);
            (o, bench.oracle.take_report())
        })
        .unwrap_or_else(|d| panic!("{d:?}"));
    assert_eq!(
        irq.stats().delivered_on_restore,
        before.delivered_on_restore + 1
    );
    assert!(matches!(
        outcome,
        TransferOutcome::Done(MapPath::Iommu { .. })
    ));
    clean(&report);
    // The handler queued the request and returned; nothing completed it yet.
    assert_eq!(*status.borrow(), Some(Ok(MapStatus::Deferred)));
    assert!(done.lock().unwrap().is_none());

    // The interrupted context unmaps one bounce: room, and the request completes here.
    let freed = held.pop().unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { r.mapper.unmap(&dev, freed, FILL, Direction::ToDevice) }.unwrap();
    let c = done
        .lock()
        .unwrap()
        .take()
        .expect("the unmap completed the request");
    assert_eq!(
        (c.open_sections, c.masked),
        (0, false),
        "no lock held: {c:?}"
    );
    let dma = c.result.unwrap();
    // The device reads what the CPU wrote, through the bounce.
    r.m.grant(dev.id(), dma, DEFERRED).unwrap();
    let read = r.m.device_read(dev.id(), dma, DEFERRED).unwrap();
    r.m.revoke(dev.id(), dma, DEFERRED).unwrap();
    oracle
        .check_device_read(buf, &read.data, &read.owners, owner)
        .unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { r.mapper.unmap(&dev, dma, DEFERRED, Direction::ToDevice) }.unwrap();
    for dma in held {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { r.mapper.unmap(&dev, dma, FILL, Direction::ToDevice) }.unwrap();
    }
    oracle
        .check_transfer(r.m, PhysRange::new(buf, DEFERRED).unwrap(), owner)
        .unwrap();
    clean(&oracle.take_report());
    let checker = r.mapper.debug_checker().unwrap();
    assert!(checker.reports().is_empty(), "{:?}", checker.reports());
    assert!(checker.live().is_empty());
}

/// The host platform's arena, a mapper with a SWIOTLB pool in it, a device that bounces
/// buffers sharing cache lines and one that maps in place. Leaked: the interrupt handler
/// is `'static`.
struct HostRig {
    host: &'static HostPlatform,
    mapper: &'static DmaMapper<&'static HostPlatform>,
    bounced: Device,
    direct: Device,
}

const MIB: u64 = 1 << 20;

fn host_rig() -> HostRig {
    let host: &'static HostPlatform = Box::leak(Box::new(
        HostPlatform::new(0, 8 * MIB, 1, LINE, HostMaintenance::None).unwrap(),
    ));
    let cfg = PoolConfig::builder()
        .cpu_count(1)
        .max_cache_line(LINE)
        .build()
        .unwrap();
    let pool = SwiotlbBounce::new(cfg, None, 0, u64::MAX);
    pool.add_region(PhysAddr::new(0), 2 * MIB).unwrap();
    let mapper = Box::leak(Box::new(
        DmaMapper::builder(host)
            .swiotlb_backend(Arc::new(pool))
            .debug_checker()
            .build(),
    ));
    HostRig {
        host,
        mapper,
        bounced: device(7, "host-bounced", BouncePool::Swiotlb),
        direct: Device::builder(DeviceId(8), "host-direct")
            .coherent(true)
            .build()
            .unwrap(),
    }
}

/// One bidirectional transfer on the host of `len` bytes at `phys`, the test playing the
/// device (it reads at the DMA address, which the arena's identity bus makes a physical
/// one, and writes there): returns the path taken and whether the device read what the
/// CPU wrote and the CPU read what the device wrote.
fn host_transfer(r: &HostRig, dev: &Device, phys: PhysAddr, len: u64, seed: u8) -> (bool, bool) {
    let (cpu, device) = (vec![seed; len as usize], vec![!seed; len as usize]);
    r.host.write(phys, &cpu).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { r.mapper.map(dev, phys, len, Direction::Bidirectional) }.unwrap();
    let bounced = dma.as_u64() != phys.as_u64();
    let mut seen = vec![0; len as usize];
    r.host.read(PhysAddr::new(dma.as_u64()), &mut seen).unwrap();
    r.host.write(PhysAddr::new(dma.as_u64()), &device).unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { r.mapper.unmap(dev, dma, len, Direction::Bidirectional) }.unwrap();
    let mut back = vec![0; len as usize];
    r.host.read(phys, &mut back).unwrap();
    (bounced, seen == cpu && back == device)
}

/// What each host transfer of the handler gave: (bounced, bytes intact).
type HostOutcomes = Rc<RefCell<Vec<(bool, bool)>>>;

/// Raises a handler doing a bounced and a direct transfer inside the critical section of
/// a bounced map on the host; returns the interrupted transfer's result (or the deadlock)
/// and the handler's.
fn host_interrupt(irq: &SimInterrupts) -> (Result<(bool, bool), Deadlock>, HostOutcomes) {
    let r = host_rig();
    let out: HostOutcomes = Rc::default();
    let (handler_out, hr) = (out.clone(), host_rig_view(&r));
    irq.raise_in_next_nested_section(Box::new(move || {
        let b = host_transfer(&hr, &hr.bounced, PhysAddr::new(4 * MIB + 8), 200, 0x31);
        let d = host_transfer(&hr, &hr.direct, PhysAddr::new(5 * MIB), 256, 0x32);
        handler_out.borrow_mut().extend([b, d]);
    }));
    let result = irq.catch_deadlock(|| {
        host_transfer(
            &r,
            &r.bounced,
            PhysAddr::new(6 * MIB + SHARED_LINES.0),
            SHARED_LINES.1,
            0x33,
        )
    });
    (result, out)
}

/// A second view of the same leaked rig, for the handler.
fn host_rig_view(r: &HostRig) -> HostRig {
    HostRig {
        host: r.host,
        mapper: r.mapper,
        bounced: r.bounced.clone(),
        direct: r.direct.clone(),
    }
}

#[test]
fn a_map_from_an_interrupt_inside_a_critical_section_completes_on_the_host_platform() {
    let _serial = serial();
    let irq = SimInterrupts::install().unwrap();
    irq.set_masking(true);
    let before = irq.stats();
    let (result, out) = host_interrupt(irq);
    let interrupted = result.unwrap_or_else(|d| panic!("{d:?}"));
    let after = irq.stats();
    assert_eq!(after.delivered_on_restore, before.delivered_on_restore + 1);
    assert_eq!(after.delivered_at_once, before.delivered_at_once);
    assert_eq!(interrupted, (true, true), "bounced, bytes intact");
    assert_eq!(
        *out.borrow(),
        [(true, true), (false, true)],
        "bounced, then in place"
    );
    assert!(!irq.masked() && irq.open_sections() == 0);
}

#[test]
fn control_without_masking_the_host_platform_deadlocks_on_the_held_lock() {
    let _serial = serial();
    let irq = SimInterrupts::install().unwrap();
    irq.set_masking(false);
    let before = irq.stats();
    let (result, _) = host_interrupt(irq);
    let deadlock = result.expect_err("the handler ran inside the section");
    assert!(deadlock.held_sections >= 1, "{deadlock:?}");
    assert_eq!(irq.stats().delivered_at_once, before.delivered_at_once + 1);
    assert!(!irq.masked() && irq.open_sections() == 0);
    irq.set_masking(true);
}
