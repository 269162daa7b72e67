//! Scenarios of the SWIOTLB isolation tests, shared by the tests and their controls (which
//! run the same scenario with a defect put back): each builds its machine, runs, and
//! returns what devices and pools were seen to do.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use dmakit::bounce::{BounceBackend, PoolUsage};
use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    BouncePool, BounceReason, Device, DeviceId, Direction, DmaAddr, DmaError, DmaMapper,
    DomainConfig, IommuDma, MapPath, MapStatus, PageAllocator, PhysAddr, PhysRange,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{
    DmaTranslation, Granule, Machine, MachineConfig, Owner, RoutedTranslation, SimIommu,
    SimIommuConfig,
};

pub const KIB: u64 = 1024;
pub const BELOW_4G: u64 = (1 << 32) - 1;
/// The untrusted device's buffer.
pub const BUF: Owner = Owner(9);
/// Another device's bounced buffer.
pub const OTHER: Owner = Owner(21);
/// A third device's secret.
pub const SECRET: Owner = Owner(22);

/// A machine with an untrusted device `U` behind a strict 4 KiB-granule IOMMU domain and
/// any number of devices outside it, all bouncing through one SWIOTLB pool of one
/// 256 KiB segment (2 KiB slots) below 4 GiB.
pub struct Mixed {
    pub m: Machine,
    pub iommu: SimIommu,
    pub dma: Arc<IommuDma>,
    pub pool: Arc<SwiotlbBounce>,
    pub untrusted: Device,
}

pub fn mixed(seed: u64) -> Mixed {
    let m = Machine::new(MachineConfig {
        seed,
        ..MachineConfig::default()
    })
    .unwrap();
    let iommu = SimIommu::new(SimIommuConfig {
        granule: Granule::K4,
        ..SimIommuConfig::default()
    })
    .unwrap();
    let untrusted = Device::builder(DeviceId(1), "untrusted")
        .trusted(false)
        .build()
        .unwrap();
    let mut routed = RoutedTranslation::new();
    routed.route(untrusted.id(), &iommu);
    m.set_translation(Box::new(routed));
    let dma = Arc::new(IommuDma::new(Arc::new(iommu.clone()), 1).unwrap());
    let domain = dma.create_domain(DomainConfig::STRICT).unwrap();
    m.attach(untrusted.clone()).unwrap();
    dma.attach(&untrusted, domain).unwrap();
    let pool = Arc::new(swiotlb(&m, 256 * KIB, None, u64::MAX));
    Mixed {
        m,
        iommu,
        dma,
        pool,
        untrusted,
    }
}

impl Mixed {
    pub fn mapper(&self) -> DmaMapper<&Machine> {
        DmaMapper::builder(&self.m)
            .swiotlb_backend(self.pool.clone())
            .iommu(self.dma.clone())
            .build()
    }

    /// A device outside the IOMMU whose every mapping is bounced through the pool.
    pub fn bouncer(&self, id: u32) -> Device {
        let dev = Device::builder(DeviceId(id), "bouncer")
            .force_bounce(true)
            .build()
            .unwrap();
        self.m.attach(dev.clone()).unwrap();
        dev
    }
}

/// A SWIOTLB pool of `bytes` below 4 GiB (2 KiB slots, 128 per segment, one area), growing
/// through `hook` up to `reach`.
pub fn swiotlb(
    m: &Machine,
    bytes: u64,
    hook: Option<Arc<dyn GrowthHook>>,
    reach: u64,
) -> SwiotlbBounce {
    let base = m.alloc_pages(bytes / 4096, BELOW_4G).unwrap();
    let pool = SwiotlbBounce::new(one_area(), hook, 256 * KIB, reach);
    pool.add_region(base, bytes).unwrap();
    pool
}

fn one_area() -> PoolConfig {
    PoolConfig::builder().areas(1).build().unwrap()
}

/// `len` bytes of `owner` at `at`: a recognisable pattern with no zero byte.
pub fn stamp(m: &Machine, at: PhysAddr, len: u64, owner: Owner, seed: u8) -> Vec<u8> {
    let data: Vec<u8> = (0..len)
        .map(|i| ((i as u8).wrapping_mul(13).wrapping_add(seed)) | 1)
        .collect();
    m.cpu_write(at, &data, owner).unwrap();
    data
}

/// A fresh page of RAM below 2 GiB.
pub fn page(m: &Machine) -> PhysAddr {
    m.alloc_pages(1, (2 << 30) - 1).unwrap()
}

fn granule_base(dma: DmaAddr) -> DmaAddr {
    DmaAddr::new(dma.as_u64() & !0xfff)
}

/// What the untrusted device saw of its granule while another device had a bounce.
#[derive(Debug, PartialEq, Eq)]
pub struct GranuleRead {
    /// Offset of the untrusted bounce in its granule.
    pub offset: u64,
    /// Whether the other device's bounce lies in the physical page of the granule.
    pub other_in_granule: bool,
    /// Bytes of the granule stamped by another device's buffer.
    pub foreign: usize,
    /// Bytes of its own buffer it saw.
    pub own: usize,
}

/// Defect 1 (a), as the issue reproduces it: the untrusted device maps 13 bytes at page
/// offset 0x900 and is bounced to 0x...900; a second device, not behind the IOMMU, then
/// bounces 100 bytes; the untrusted device reads its whole granule, as a hostile one would.
pub fn untrusted_reads_its_granule() -> GranuleRead {
    let x = mixed(11);
    let mapper = x.mapper();
    let u = &x.untrusted;
    let v = x.bouncer(2);
    let buf = page(&x.m).add(0x900);
    stamp(&x.m, buf, 13, BUF, 3);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let (udma, path) = unsafe { mapper.map_traced(u, buf, 13, Direction::ToDevice) }.unwrap();
    assert!(
        matches!(
            path,
            MapPath::Bounced {
                reason: BounceReason::Untrusted,
                ..
            }
        ),
        "{path:?}"
    );
    let vbuf = page(&x.m).add(8);
    stamp(&x.m, vbuf, 100, OTHER, 5);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let vdma = unsafe { mapper.map(&v, vbuf, 100, Direction::ToDevice) }.unwrap();
    let gbase = granule_base(udma);
    let (gphys, _) = x.iommu.translate(u, gbase, 4096, false).unwrap();
    let other_in_granule = vdma.as_u64() >> 12 == gphys.as_u64() >> 12;
    x.m.grant(u.id(), gbase, 4096).unwrap();
    let seen = x.m.device_read(u.id(), gbase, 4096).unwrap();
    let foreign = seen.owners.iter().filter(|&&o| o == OTHER).count();
    let own = seen.owners.iter().filter(|&&o| o == BUF).count();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&v, vdma, 100, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(u, udma, 13, Direction::ToDevice) }.unwrap();
    assert_eq!(x.pool.usage().live, 0);
    GranuleRead {
        offset: udma.as_u64() & 0xfff,
        other_in_granule,
        foreign,
        own,
    }
}

/// What a device saw of its own in-flight bounce.
#[derive(Debug, PartialEq, Eq)]
pub struct InFlight {
    /// Bytes of the bounce the device read.
    pub len: usize,
    /// Of those, bytes that are zero (the secret has none).
    pub zeroed: usize,
    /// Of those, bytes that differ from what the CPU gave it.
    pub wrong: usize,
}

/// Bytes V and W bounce in [`padding_spares_in_flight_bounce`]: from offset 8 to the end of
/// a slot's lines, so each takes a whole slot (shorter bounces are packed into lines of a
/// shared slot, which the scenario's placement does not follow).
pub const VW_LEN: u64 = 2040;

/// Defect 1 (b): untrusted map/unmap → V maps → W maps a secret (into the lead-in slot of
/// the untrusted bounce's run) → V unmaps → the untrusted device maps the same shape again,
/// and its path zeroes the padding before its buffer. Then W's device reads its bounce.
pub fn padding_spares_in_flight_bounce() -> InFlight {
    let x = mixed(12);
    let mapper = x.mapper();
    let u = &x.untrusted;
    let v = x.bouncer(2);
    let w = x.bouncer(3);
    let buf = page(&x.m).add(0x900);
    stamp(&x.m, buf, 13, BUF, 3);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let udma = unsafe { mapper.map(u, buf, 13, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(u, udma, 13, Direction::ToDevice) }.unwrap();
    let vbuf = page(&x.m).add(8);
    stamp(&x.m, vbuf, VW_LEN, OTHER, 5);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let vdma = unsafe { mapper.map(&v, vbuf, VW_LEN, Direction::ToDevice) }.unwrap();
    let wbuf = page(&x.m).add(8);
    let secret = stamp(&x.m, wbuf, VW_LEN, SECRET, 7);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let wdma = unsafe { mapper.map(&w, wbuf, VW_LEN, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&v, vdma, VW_LEN, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let udma = unsafe { mapper.map(u, buf, 13, Direction::ToDevice) }.unwrap();
    x.m.grant(w.id(), wdma, VW_LEN).unwrap();
    let seen = x.m.device_read(w.id(), wdma, VW_LEN).unwrap();
    let zeroed = seen.data.iter().filter(|&&b| b == 0).count();
    let wrong = seen
        .data
        .iter()
        .zip(&secret)
        .filter(|(a, b)| a != b)
        .count();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(u, udma, 13, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&w, wdma, VW_LEN, Direction::ToDevice) }.unwrap();
    assert_eq!(x.pool.usage().live, 0);
    InFlight {
        len: seen.data.len(),
        zeroed,
        wrong,
    }
}

/// What other bounces did to a `min_align_mask` bounce's lead-in.
#[derive(Debug, PartialEq, Eq)]
pub struct LeadIn {
    /// Offset of the bounce address under the mask.
    pub offset: u64,
    /// Other bounces whose slots lie in `[addr & !mask, addr)`.
    pub others_inside: usize,
    /// Bytes of other owners the device saw reading from `addr & !mask` to its end.
    pub foreign: usize,
    /// Pool bytes in use while only the masked bounce was live.
    pub used_alone: u64,
}

/// Defect 1 without an IOMMU: a device with `min_align_mask` 0xfff bounces 13 bytes at
/// page offset 0x900 through a pool of 2 KiB slots; eight other bounces of 100 bytes
/// follow. None may land in the lead-in, and the device reading its aligned window from its
/// start sees nobody else's bytes.
pub fn min_align_lead_in() -> LeadIn {
    let m = Machine::new(MachineConfig {
        seed: 13,
        ..MachineConfig::default()
    })
    .unwrap();
    let pool = Arc::new(swiotlb(&m, 256 * KIB, None, u64::MAX));
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let nvme = Device::builder(DeviceId(1), "nvme")
        .min_align_mask(0xfff)
        .force_bounce(true)
        .build()
        .unwrap();
    let other = Device::builder(DeviceId(2), "other")
        .force_bounce(true)
        .build()
        .unwrap();
    m.attach(nvme.clone()).unwrap();
    m.attach(other.clone()).unwrap();
    let buf = page(&m).add(0x900);
    stamp(&m, buf, 13, BUF, 3);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { mapper.map(&nvme, buf, 13, Direction::ToDevice) }.unwrap();
    let used_alone = pool.usage().used;
    let window = dma.as_u64() & !0xfff..dma.as_u64();
    let mut others = Vec::new();
    for i in 0..8 {
        let b = page(&m).add(8);
        stamp(&m, b, 100, OTHER, i);
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        others.push(unsafe { mapper.map(&other, b, 100, Direction::ToDevice) }.unwrap());
    }
    let others_inside = others
        .iter()
        .filter(|d| window.contains(&d.as_u64()))
        .count();
    let start = DmaAddr::new(window.start);
    let reach = window.end + 13 - window.start;
    m.grant(nvme.id(), start, reach).unwrap();
    let seen = m.device_read(nvme.id(), start, reach).unwrap();
    let foreign = seen.owners.iter().filter(|&&o| o == OTHER).count();
    for d in others {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&other, d, 100, Direction::ToDevice) }.unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&nvme, dma, 13, Direction::ToDevice) }.unwrap();
    assert_eq!(pool.usage().live, 0);
    LeadIn {
        offset: dma.as_u64() & 0xfff,
        others_inside,
        foreign,
        used_alone,
    }
}

/// A growth hook that queues requests for the test to serve.
#[derive(Default)]
pub struct GrowthQueue(pub Mutex<Vec<GrowthRequest>>);

impl GrowthHook for GrowthQueue {
    fn request(&self, req: GrowthRequest) {
        self.0.lock().unwrap().push(req);
    }
}

/// What a 32-bit device got from a pool whose low region is full.
#[derive(Debug)]
pub struct MaskLimited {
    /// `map`'s answer.
    pub map: Result<DmaAddr, DmaError>,
    /// Growth requests the failure sent (their address limits).
    pub growth_limits: Vec<u64>,
    /// Whether `map_or_defer` deferred the mapping.
    pub deferred: bool,
    /// The deferred mapping's completion once the growth request was served: the bounce's
    /// end and whether the device could read it (`None`: not completed).
    pub completed: Option<Result<(u64, bool), DmaError>>,
    /// `map` on a pool without growth whose reachable memory is full.
    pub without_growth: Result<DmaAddr, DmaError>,
    /// `map` on a pool without growth and with no memory below the mask.
    pub unreachable: Result<DmaAddr, DmaError>,
}

/// A pool of two regions, one below 4 GiB and one above, reaching all memory, with
/// `hook`; a 64-bit device fills the low region.
fn split_pool(m: &Machine, hook: Option<Arc<dyn GrowthHook>>, low: bool) -> Arc<SwiotlbBounce> {
    let pool = SwiotlbBounce::new(one_area(), hook, 256 * KIB, u64::MAX);
    if low {
        let base = m.alloc_pages(64, BELOW_4G).unwrap();
        pool.add_region(base, 256 * KIB).unwrap();
    }
    let high = m
        .alloc_pages_between(64, 5 << 30, (6 << 30) - 1)
        .expect("RAM above 4 GiB");
    pool.add_region(high, 256 * KIB).unwrap();
    Arc::new(pool)
}

/// Defect 6: a 32-bit device whose low pool region is full, while the region above its
/// mask has room.
pub fn mask_limited_bounce() -> MaskLimited {
    let m = Machine::new(MachineConfig {
        seed: 14,
        ..MachineConfig::default()
    })
    .unwrap();
    let queue = Arc::new(GrowthQueue::default());
    let pool = split_pool(&m, Some(queue.clone()), true);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let wide = Device::builder(DeviceId(1), "wide")
        .force_bounce(true)
        .build()
        .unwrap();
    let narrow = Device::builder(DeviceId(2), "narrow")
        .dma_bits(32)
        .force_bounce(true)
        .build()
        .unwrap();
    m.attach(wide.clone()).unwrap();
    m.attach(narrow.clone()).unwrap();
    let base = m.alloc_pages(128, BELOW_4G).unwrap();
    // The low region is the first region: a whole-segment bounce takes it.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&wide, base, 256 * KIB, Direction::ToDevice) }.unwrap();
    assert!(hog.as_u64() < BELOW_4G, "{hog:?}");
    let buf = base.add(8);
    stamp(&m, buf, 100, OTHER, 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let map = unsafe { mapper.map(&narrow, buf, 100, Direction::ToDevice) };
    let growth_limits: Vec<u64> = queue.0.lock().unwrap().iter().map(|r| r.max_addr).collect();
    let done = Arc::new(Mutex::new(None));
    let sink = done.clone();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let status = unsafe {
        mapper.map_or_defer(
            &narrow,
            buf,
            100,
            Direction::ToDevice,
            Box::new(move |r| *sink.lock().unwrap() = Some(r)),
        )
    };
    let deferred = matches!(status, Ok(MapStatus::Deferred));
    // Serve the growth request as a worker would: memory below its limit.
    if let Some(req) = queue.0.lock().unwrap().first().copied() {
        if let Some(grown) = m.alloc_pages(req.min_bytes / 4096, req.max_addr) {
            pool.add_region(grown, req.min_bytes).unwrap();
        }
    }
    mapper.retry_deferred();
    let result = done.lock().unwrap().take();
    let completed = result.map(|r| {
        r.map(|dma| {
            m.grant(narrow.id(), dma, 100).unwrap();
            let readable = m.device_read(narrow.id(), dma, 100).is_ok();
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&narrow, dma, 100, Direction::ToDevice) }.unwrap();
            (dma.as_u64() + 99, readable)
        })
    });
    if let Ok(MapStatus::Mapped(dma)) = status {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&narrow, dma, 100, Direction::ToDevice) }.unwrap();
    }
    if let Ok(dma) = map {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&narrow, dma, 100, Direction::ToDevice) }.unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&wide, hog, 256 * KIB, Direction::ToDevice) }.unwrap();

    // Without growth: the reachable memory full, then none reachable at all.
    let full = split_pool(&m, None, true);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(full.clone()).build();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&wide, base, 256 * KIB, Direction::ToDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let without_growth = unsafe { mapper.map(&narrow, buf, 100, Direction::ToDevice) };
    if let Ok(dma) = without_growth {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&narrow, dma, 100, Direction::ToDevice) }.unwrap();
    }
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&wide, hog, 256 * KIB, Direction::ToDevice) }.unwrap();
    let high_only = split_pool(&m, None, false);
    let mapper = DmaMapper::builder(&m).swiotlb_backend(high_only).build();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let unreachable = unsafe { mapper.map(&narrow, buf, 100, Direction::ToDevice) };
    MaskLimited {
        map,
        growth_limits,
        deferred,
        completed,
        without_growth,
        unreachable,
    }
}

/// Which backend a faulting bounce goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Swiotlb,
    Coherent,
    Transient,
    /// The SWIOTLB pool, through the IOMMU path's untrusted bounce.
    IommuUntrusted,
}

/// A backend's usage around a bounce whose copy faulted.
#[derive(Debug)]
pub struct FaultedBounce {
    pub before: PoolUsage,
    pub after: PoolUsage,
    pub error: Result<DmaAddr, DmaError>,
    /// The backend the bounce was attempted in.
    pub backend: &'static str,
}

/// Physical memory the model has no RAM at (the hole between 2 and 4 GiB): a CPU copy from
/// it faults.
const HOLE: u64 = 0xa000_0008;

/// 11b: one bounce stays live (so the pool has a mark to keep); a larger one, whose copy
/// from its buffer faults, must leave the backend's usage as it was, high-water included.
pub fn faulted_bounce(which: Backend) -> FaultedBounce {
    let m = Machine::new(MachineConfig {
        seed: 15,
        ..MachineConfig::default()
    })
    .unwrap();
    assert!(!m.is_ram(HOLE, 4096));
    let queue = Arc::new(GrowthQueue::default());
    let pool = Arc::new(swiotlb(&m, 256 * KIB, Some(queue), BELOW_4G));
    let coherent = Arc::new(
        CoherentBouncePool::new(
            ObjectPoolConfig {
                min_object: 128,
                max_object: 256 * KIB,
                chunk_bytes: 1 << 20,
                refill_below: 0,
                name: "coherent-pool",
            },
            None,
        )
        .unwrap(),
    );
    let chunk = m.alloc_pages(256, BELOW_4G).unwrap();
    m.set_uncached(PhysRange::new(chunk, 1 << 20).unwrap());
    coherent.add_chunk(chunk, 1 << 20).unwrap();
    let spare = m.alloc_pages(256, BELOW_4G).unwrap();
    let zoned =
        Arc::new(ZonedPageAllocator::new(&[PhysRange::new(spare, 256 * 4096).unwrap()]).unwrap());
    let x = mixed(16);
    let iommu_pool = x.pool.clone();
    let machine = if which == Backend::IommuUntrusted {
        &x.m
    } else {
        &m
    };
    let mapper = DmaMapper::builder(machine)
        .swiotlb_backend(if which == Backend::IommuUntrusted {
            iommu_pool.clone() as Arc<dyn BounceBackend>
        } else {
            pool.clone()
        })
        .coherent_backend(coherent.clone())
        .transient_pages(zoned)
        .iommu(x.dma.clone())
        .build();
    let dev = match which {
        Backend::IommuUntrusted => x.untrusted.clone(),
        _ => Device::builder(DeviceId(2), "bouncer")
            .force_bounce(true)
            .bounce_pool(if which == Backend::Coherent {
                BouncePool::Coherent
            } else {
                BouncePool::Swiotlb
            })
            .build()
            .unwrap(),
    };
    if which != Backend::IommuUntrusted {
        m.attach(dev.clone()).unwrap();
    }
    let buf = page(machine).add(8);
    stamp(machine, buf, 3000, OTHER, 1);
    let mut live = Vec::new();
    if which == Backend::Transient {
        // Fill the SWIOTLB pool, so the next bounces fail there, ask for growth, and go to
        // the transient pages while growth is pending.
        let big = m.alloc_pages(64, BELOW_4G).unwrap();
        live.push((
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.map(&dev, big, 256 * KIB, Direction::ToDevice) }.unwrap(),
            256 * KIB,
        ));
    }
    live.push((
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.map(&dev, buf, 100, Direction::ToDevice) }.unwrap(),
        100,
    ));
    if which == Backend::Transient {
        assert!(pool.growth_pending());
        assert_eq!(mapper.transient().unwrap().usage().live, 1);
    }
    let backend: &dyn BounceBackend = match which {
        Backend::Swiotlb => pool.as_ref(),
        Backend::IommuUntrusted => iommu_pool.as_ref(),
        Backend::Coherent => coherent.as_ref(),
        Backend::Transient => mapper.transient().unwrap(),
    };
    let before = backend.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let error = unsafe { mapper.map(&dev, PhysAddr::new(HOLE), 9000, Direction::ToDevice) };
    let after = backend.usage();
    let name = backend.name();
    for (d, len) in live {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, d, len, Direction::ToDevice) }.unwrap();
    }
    assert_eq!(backend.usage().live, 0);
    FaultedBounce {
        before,
        after,
        error,
        backend: name,
    }
}

/// 11e: what a device with `min_align_mask` `mask` gets from a pool of 32 KiB segments
/// (2 KiB slots, 16 per segment), whose segments cannot honour a mask of 32 KiB or more.
pub fn align_beyond_segment(mask: u64) -> Result<DmaAddr, DmaError> {
    let m = Machine::new(MachineConfig {
        seed: 17,
        ..MachineConfig::default()
    })
    .unwrap();
    let cfg = PoolConfig::builder()
        .segment_slots(16)
        .areas(1)
        .build()
        .unwrap();
    let pool = Arc::new(SwiotlbBounce::new(cfg, None, 0, u64::MAX));
    let base = m.alloc_pages(64, BELOW_4G).unwrap();
    pool.add_region(base, 256 * KIB).unwrap();
    let mapper = DmaMapper::builder(&m).swiotlb_backend(pool.clone()).build();
    let dev = Device::builder(DeviceId(1), "wide-align")
        .min_align_mask(mask)
        .force_bounce(true)
        .build()
        .unwrap();
    m.attach(dev.clone()).unwrap();
    let buf = page(&m).add(8);
    stamp(&m, buf, 100, OTHER, 1);
    let before = pool.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let r = unsafe { mapper.map(&dev, buf, 100, Direction::ToDevice) };
    if let Ok(dma) = r {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 100, Direction::ToDevice) }.unwrap();
    } else {
        assert_eq!(pool.usage(), before);
    }
    r
}

/// 11b for scatter-gather: with one bounce live (so the pool has a mark to keep), a list
/// whose first buffer bounces and whose second faults in its bounce copy must leave the
/// pool as it was, high-water included: the first segment is given back, not unmapped.
pub fn failed_sg() -> FaultedBounce {
    let x = mixed(17);
    let mapper = x.mapper();
    let dev = x.bouncer(2);
    let buf = page(&x.m).add(8);
    stamp(&x.m, buf, 3000, OTHER, 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let live = unsafe { mapper.map(&dev, buf, 100, Direction::ToDevice) }.unwrap();
    let before = x.pool.usage();
    let entries = [
        dmakit::SgEntry {
            phys: buf.add(200),
            len: 2500,
        },
        dmakit::SgEntry {
            phys: PhysAddr::new(HOLE),
            len: 9000,
        },
    ];
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let error =
        unsafe { mapper.map_sg(&dev, &entries, Direction::ToDevice) }.map(|segs| segs[0].dma);
    let after = x.pool.usage();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, live, 100, Direction::ToDevice) }.unwrap();
    assert_eq!(x.pool.usage().live, 0);
    FaultedBounce {
        before,
        after,
        error,
        backend: x.pool.name(),
    }
}
