//! The one mixed machine every fuzz case runs on: devices of every kind at once, three
//! IOMMUs (4, 16 and 64 KiB granules) in front of some of them, a SWIOTLB pool with several
//! regions, growth and a transient pool, a coherent bounce pool, and the debug checker.
//!
//! The machine's model is single-threaded (`RefCell` inside), so a rig lives on the worker
//! thread of its case. Mappers own their platform through [`Plat`] (an `Rc`), so the growth
//! hook can reach them through a thread-local and call `retry_deferred` synchronously.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::growth::{GrowthHook, GrowthRequest};
use dmakit::swiotlb::PoolConfig;
use dmakit::swiotlb::SwiotlbBounce;
use dmakit::{
    BouncePool, CacheMaintenance, CpuMemory, CpuTopology, Device, DeviceId, DmaMapper,
    DomainConfig, IommuDma, IommuDomainId, MemoryFault, PageAllocator, PhysAddr, PhysRange,
};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{
    CacheConfig, Granule, HazardConfig, Machine, MachineConfig, RoutedTranslation, SimIommu,
    SimIommuConfig,
};

pub const KIB: u64 = 1 << 10;
pub const GIB: u64 = 1 << 30;
pub const BELOW_4G: u64 = (1 << 32) - 1;
/// The machine's (largest) cache line.
pub const LINE: u64 = 128;
/// SWIOTLB segment size: the largest bounce.
pub const SEGMENT: u64 = 256 * KIB;
/// Coherent bounce pool: one chunk of this size, objects up to it.
pub const COHERENT_BYTES: u64 = 64 * KIB;
/// Smallest coherent pool object.
pub const COHERENT_MIN: u64 = 128;
/// Growth regions are this large.
pub const GROW_BYTES: u64 = 256 * KIB;

/// The platform the mappers drive: the machine behind an `Rc`, so the mappers are `'static`.
#[derive(Clone)]
pub struct Plat(pub Rc<Machine>);

impl CacheMaintenance for Plat {
    fn cache_line_size(&self) -> u64 {
        self.0.cache_line_size()
    }
    fn clean(&self, range: PhysRange) {
        self.0.clean(range)
    }
    fn invalidate(&self, range: PhysRange) {
        self.0.invalidate(range)
    }
    fn clean_invalidate(&self, range: PhysRange) {
        self.0.clean_invalidate(range)
    }
}

// SAFETY: forwards unchanged to the model machine's implementation.
unsafe impl CpuMemory for Plat {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        self.0.copy(dst, src, len)
    }
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        self.0.fill(dst, byte, len)
    }
}

impl CpuTopology for Plat {
    fn cpu_count(&self) -> usize {
        self.0.cpu_count()
    }
    fn current_cpu(&self) -> usize {
        self.0.current_cpu()
    }
}

pub type Mapper = DmaMapper<Plat>;

/// Which IOMMU (if any) and domain mode a device sits behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behind {
    Nothing,
    Iommu { unit: usize, lazy: bool },
}

/// A device of the rig and what the fuzzer knows about it.
#[derive(Clone)]
pub struct Dev {
    pub dev: Device,
    /// Index into [`Rig::mappers`].
    pub mapper: usize,
    pub behind: Behind,
    /// The IOMMU domain, for devices behind one.
    pub domain: Option<IommuDomainId>,
    pub what: &'static str,
}

impl Dev {
    pub fn id(&self) -> DeviceId {
        self.dev.id()
    }
    pub fn untrusted(&self) -> bool {
        !self.dev.is_trusted() && matches!(self.behind, Behind::Iommu { .. })
    }
}

thread_local! {
    /// The mappers of the case running on this thread, for the synchronous growth hook.
    static MAPPERS: RefCell<Vec<std::rc::Weak<Mapper>>> = const { RefCell::new(Vec::new()) };
}

/// A pool's growth hook. Requests queue for the `Grow` operation, which serves them later
/// as a background grower would. With `sync_retry` set, the hook first tries to grow on the
/// spot, as a hook that may allocate there would: it adds a region from its reserve (memory
/// set aside at start-up, within the request's reach) and retries every mapper's deferred
/// queue synchronously, from inside the map that asked. With no reserve left it queues the
/// request like the other hooks, without a retry: a retry says room was made, and a hook
/// that says so without adding memory makes every waiter try, fail and ask again forever.
pub struct Hook {
    pub queue: Mutex<Vec<(usize, GrowthRequest)>>,
    pub pool: usize,
    pub sync_retry: bool,
    pub target: OnceLock<Weak<SwiotlbBounce>>,
    /// Regions the hook may add on the spot (`sync_retry` only).
    pub reserve: Mutex<Vec<(PhysAddr, u64)>>,
}

impl GrowthHook for Hook {
    fn request(&self, req: GrowthRequest) {
        if self.sync_retry {
            let region = {
                let mut r = self.reserve.lock().unwrap();
                let fits = r.iter().position(|&(base, bytes)| {
                    bytes >= req.min_bytes && base.as_u64() + (bytes - 1) <= req.max_addr
                });
                fits.map(|i| r.remove(i))
            };
            if let (Some((base, bytes)), Some(p)) =
                (region, self.target.get().and_then(Weak::upgrade))
            {
                let _ = p.add_region(base, bytes);
                let mappers: Vec<Rc<Mapper>> = MAPPERS.with(|m| {
                    m.borrow()
                        .iter()
                        .filter_map(std::rc::Weak::upgrade)
                        .collect()
                });
                for m in mappers {
                    m.retry_deferred();
                }
                return;
            }
        }
        self.queue.lock().unwrap().push((self.pool, req));
    }
}

/// Scatter-gather pieces each IOMMU domain has room for (an unbounced list takes one per
/// entry, and lists have at most three).
pub const SG_PIECES: usize = 3;

pub struct Rig {
    pub m: Rc<Machine>,
    pub units: Vec<SimIommu>,
    pub iommus: Vec<Arc<IommuDma>>,
    /// One mapper per IOMMU; each has its own SWIOTLB pool, so a lazy domain's flush queue
    /// and the pool it parks slots in belong to the same mapper.
    pub mappers: Vec<Rc<Mapper>>,
    pub swiotlb: Vec<Arc<SwiotlbBounce>>,
    pub hooks: Vec<Arc<Hook>>,
    pub coherent: Arc<CoherentBouncePool>,
    pub transient_pages: Arc<ZonedPageAllocator>,
    pub devices: Vec<Dev>,
    /// A 64-bit coherent device used for addresses near the top of the address space.
    pub granules: [u64; 3],
}

/// Options of a rig that change what the hook does.
#[derive(Clone, Copy, Debug)]
pub struct RigOptions {
    pub seed: u64,
    pub sync_retry: bool,
}

fn swiotlb_pool(m: &Machine, hook: Arc<Hook>, regions: &[(u64, u64, u64)]) -> Arc<SwiotlbBounce> {
    swiotlb_pool_of(m, hook, regions, PoolConfig::DEFAULT_SEGMENT_SLOTS)
}

fn swiotlb_pool_of(
    m: &Machine,
    hook: Arc<Hook>,
    regions: &[(u64, u64, u64)],
    segment_slots: u64,
) -> Arc<SwiotlbBounce> {
    let cfg = PoolConfig::builder()
        .cpu_count(1)
        .max_cache_line(LINE)
        .segment_slots(segment_slots)
        .build()
        .unwrap();
    let pool = SwiotlbBounce::new(cfg, Some(hook as Arc<dyn GrowthHook>), GROW_BYTES, u64::MAX);
    for &(bytes, lo, hi) in regions {
        let base = m.alloc_pages_between(bytes / 4096, lo, hi).unwrap();
        pool.add_region(base, bytes).unwrap();
    }
    Arc::new(pool)
}

impl Rig {
    pub fn new(o: RigOptions) -> Rig {
        let m = Rc::new(
            Machine::new(MachineConfig {
                seed: o.seed,
                cache: CacheConfig {
                    line_size: LINE,
                    capacity: 32 * KIB,
                    ways: 4,
                },
                hazards: HazardConfig::default(),
                ..MachineConfig::default()
            })
            .unwrap(),
        );
        let granules = [Granule::K4, Granule::K16, Granule::K64];
        let units: Vec<SimIommu> = granules
            .iter()
            .map(|&granule| {
                SimIommu::new(SimIommuConfig {
                    granule,
                    ..SimIommuConfig::default()
                })
                .unwrap()
            })
            .collect();
        let iommus: Vec<Arc<IommuDma>> = units
            .iter()
            .map(|u| Arc::new(IommuDma::new(Arc::new(u.clone()), 1).unwrap()))
            .collect();
        let hooks: Vec<Arc<Hook>> = (0..4)
            .map(|pool| {
                Arc::new(Hook {
                    queue: Mutex::new(Vec::new()),
                    pool,
                    sync_retry: o.sync_retry,
                    target: OnceLock::new(),
                    reserve: Mutex::new(if o.sync_retry {
                        (0..2)
                            .map(|_| {
                                (
                                    m.alloc_pages(GROW_BYTES / 4096, BELOW_4G).unwrap(),
                                    GROW_BYTES,
                                )
                            })
                            .collect()
                    } else {
                        Vec::new()
                    }),
                })
            })
            .collect();
        // Pool 0 serves the direct-path devices and the 4 KiB IOMMU: a small region below
        // 4 GiB (32-bit devices fill it fast) and a larger one above.
        let swiotlb = vec![
            swiotlb_pool(
                &m,
                hooks[0].clone(),
                &[
                    (256 * KIB, 16 << 20, BELOW_4G),
                    (512 * KIB, 4 * GIB, u64::MAX),
                ],
            ),
            // One segment: 128 parked bounces fill it.
            swiotlb_pool(&m, hooks[1].clone(), &[(256 * KIB, 16 << 20, BELOW_4G)]),
            swiotlb_pool(&m, hooks[2].clone(), &[(1 << 20, 16 << 20, BELOW_4G)]),
            // Pool 3 has 16 KiB segments; its mapper skips inbound fills (a hazard control),
            // so only the dedicated operations use its two devices.
            swiotlb_pool_of(&m, hooks[3].clone(), &[(256 * KIB, 16 << 20, BELOW_4G)], 8),
        ];
        for (h, p) in hooks.iter().zip(&swiotlb) {
            let _ = h.target.set(Arc::downgrade(p));
        }
        let coherent = Arc::new(
            CoherentBouncePool::new(
                ObjectPoolConfig {
                    min_object: COHERENT_MIN,
                    max_object: COHERENT_BYTES,
                    chunk_bytes: COHERENT_BYTES,
                    refill_below: 0,
                    name: "coherent-pool",
                },
                None,
            )
            .unwrap(),
        );
        let cbase = m.alloc_pages(COHERENT_BYTES / 4096, BELOW_4G).unwrap();
        m.set_uncached(PhysRange::new(cbase, COHERENT_BYTES).unwrap());
        coherent.add_chunk(cbase, COHERENT_BYTES).unwrap();
        let spare = m.alloc_pages(256, BELOW_4G).unwrap();
        let transient_pages = Arc::new(
            ZonedPageAllocator::new(&[PhysRange::new(spare, 256 * 4096).unwrap()]).unwrap(),
        );

        let plat = Plat(m.clone());
        let mappers: Vec<Rc<Mapper>> = (0..4)
            .map(|i| {
                let mut mp = DmaMapper::builder(plat.clone())
                    .swiotlb_backend(swiotlb[i].clone())
                    .iommu(iommus[i % 3].clone())
                    .debug_checker();
                if i == 3 {
                    // Without the inbound fill, a write-only bounce of memory outside RAM
                    // maps, and its copy back faults at unmap.
                    mp = mp.hazard_controls(dmakit::HazardControls {
                        skip_inbound_fill: true,
                        ..Default::default()
                    });
                }
                if i == 0 {
                    mp = mp
                        .coherent_backend(coherent.clone())
                        .transient_pages(transient_pages.clone());
                }
                Rc::new(mp.build())
            })
            .collect();
        MAPPERS.with(|w| *w.borrow_mut() = mappers.iter().map(Rc::downgrade).collect());

        let devices = device_table();
        let mut routed = RoutedTranslation::new();
        let mut devs = Vec::new();
        for (dev, mapper, behind, what) in devices {
            m.attach(dev.clone()).unwrap();
            let domain = match behind {
                Behind::Nothing => None,
                Behind::Iommu { unit, lazy } => {
                    let cfg = DomainConfig {
                        // Room for one to three lists at once: a device's next list finds
                        // its table full, and the refusal must leave everything as it was.
                        max_sg_pieces: SG_PIECES,
                        ..if lazy {
                            DomainConfig::LAZY
                        } else {
                            DomainConfig::STRICT
                        }
                    };
                    let d = iommus[unit].create_domain(cfg).unwrap();
                    iommus[unit].attach(&dev, d).unwrap();
                    routed.route(dev.id(), &units[unit]);
                    Some(d)
                }
            };
            devs.push(Dev {
                dev,
                mapper,
                behind,
                domain,
                what,
            });
        }
        m.set_translation(Box::new(routed));
        Rig {
            m,
            units,
            iommus,
            mappers,
            swiotlb,
            hooks,
            coherent,
            transient_pages,
            devices: devs,
            granules: [4 * KIB, 16 * KIB, 64 * KIB],
        }
    }

    pub fn mapper(&self, d: &Dev) -> &Mapper {
        &self.mappers[d.mapper]
    }

    pub fn granule(&self, d: &Dev) -> Option<u64> {
        match d.behind {
            Behind::Iommu { unit, .. } => Some(self.granules[unit]),
            Behind::Nothing => None,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        MAPPERS.with(|w| w.borrow_mut().clear());
    }
}

fn nc(id: u32, what: &'static str, line: u64) -> dmakit::DeviceBuilder {
    Device::builder(DeviceId(id), what).cache_line(line)
}

/// Every kind of device the issue names, at once.
fn device_table() -> Vec<(Device, usize, Behind, &'static str)> {
    let i = |unit, lazy| Behind::Iommu { unit, lazy };
    let n = Behind::Nothing;
    let b = |d: dmakit::DeviceBuilder| d.build().unwrap();
    vec![
        (b(nc(0, "nc128", 128)), 0, n, "non-coherent, 128-byte lines"),
        (b(nc(1, "nc64", 64)), 0, n, "non-coherent, 64-byte lines"),
        (b(nc(2, "dma32", 128).dma_bits(32)), 0, n, "32-bit mask"),
        (
            b(nc(3, "align7ff", 128).min_align_mask(0x7ff)),
            0,
            n,
            "min_align_mask 0x7ff",
        ),
        (
            b(nc(4, "alignfff", 64)
                .min_align_mask(0xfff)
                .force_bounce(true)),
            0,
            n,
            "min_align_mask 0xfff, force-bounce",
        ),
        (
            b(nc(5, "align3fff", 128).min_align_mask(0x3fff).dma_bits(32)),
            0,
            n,
            "min_align_mask 0x3fff, 32-bit",
        ),
        (
            b(Device::builder(DeviceId(6), "forced")
                .coherent(true)
                .force_bounce(true)),
            0,
            n,
            "coherent, force-bounce",
        ),
        (
            b(Device::builder(DeviceId(7), "coherent").coherent(true)),
            0,
            n,
            "coherent",
        ),
        (
            b(nc(8, "cohpool", 128).bounce_pool(BouncePool::Coherent)),
            0,
            n,
            "bounces through the coherent pool",
        ),
        (
            b(nc(9, "u-strict4k", 128).trusted(false)),
            0,
            i(0, false),
            "untrusted, strict, 4 KiB",
        ),
        (
            b(nc(10, "u-lazy4k", 128).trusted(false).dma_bits(32)),
            0,
            i(0, true),
            "untrusted in a lazy domain (invalidated strictly), 4 KiB, 32-bit",
        ),
        (
            b(nc(11, "t-strict16k", 128)),
            1,
            i(1, false),
            "trusted, strict, 16 KiB",
        ),
        (
            b(nc(12, "t-lazy16k", 64)),
            1,
            i(1, true),
            "trusted, lazy, 16 KiB, 64-byte lines",
        ),
        (
            b(nc(13, "u-strict64k", 128).trusted(false)),
            2,
            i(2, false),
            "untrusted, strict, 64 KiB",
        ),
        (
            b(nc(14, "t-lazy64k", 128)),
            2,
            i(2, true),
            "trusted, lazy, 64 KiB",
        ),
        (
            b(nc(15, "t-lazy4k", 128).dma_bits(32)),
            0,
            i(0, true),
            "trusted, lazy, 4 KiB, 32-bit",
        ),
        (
            b(nc(16, "cohpool64", 64).bounce_pool(BouncePool::Coherent)),
            0,
            n,
            "bounces through the coherent pool, 64-byte lines",
        ),
        // Only for dedicated operations (mapper 3 skips inbound fills):
        (
            b(nc(17, "u-strict4k-nofill", 128).trusted(false)),
            3,
            i(0, false),
            "untrusted, strict, 4 KiB, mapper without inbound fill",
        ),
        (
            b(Device::builder(DeviceId(18), "alignffff")
                .coherent(true)
                .force_bounce(true)
                .min_align_mask(0xffff)),
            3,
            n,
            "min_align_mask 0xffff on a pool of 16 KiB segments",
        ),
    ]
}

/// Bytes of `len` at `addr` as the CPU sees them.
pub fn cpu_bytes(m: &Machine, addr: PhysAddr, len: u64) -> (Vec<u8>, Vec<dmakit_sim::Owner>) {
    let mut d = vec![0; len as usize];
    let mut o = vec![dmakit_sim::Owner::NOBODY; len as usize];
    m.cpu_read_stamped(addr, &mut d, &mut o).unwrap();
    (d, o)
}

/// Pages for one allocation below `max`.
pub fn pages(m: &Machine, bytes: u64, lo: u64, hi: u64) -> PhysAddr {
    m.alloc_pages_between(bytes.div_ceil(4096), lo, hi).unwrap()
}

#[allow(dead_code)]
pub fn page_allocator(m: &Machine) -> &dyn PageAllocator {
    m
}
