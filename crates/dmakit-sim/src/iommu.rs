//! The modelled IOMMU: per-domain multi-level page tables, an IOTLB that really caches, and
//! a fault log.
//!
//! It implements the core crate's [`Iommu`] platform trait (what the mapping layer drives)
//! and the machine's [`DmaTranslation`] seam (what devices go through), over one shared
//! state, so a test sees exactly what a device could reach after each call of the mapping
//! layer. Like real hardware, and unlike a map from IOVA to physical address, it can be
//! wrong in the way that matters: translations stay in the IOTLB after `unmap` until they
//! are invalidated, so a missing invalidation lets a device reach memory it no longer owns.
//! The model shows that (see [`SimIommu::set_drop_invalidations`] and
//! [`IommuStats::stale_hits`]).
//!
//! - **Page tables**: one per domain, granule 4 KiB, 16 KiB or 64 KiB, as many levels of
//!   `granule / 8` entries as the input address width needs (4 KiB, 48 bits: four levels
//!   of 512), leaf entries only at the last level. Tables are created on demand and kept
//!   until the domain is destroyed.
//! - **IOTLB**: a bounded cache of leaf translations tagged by domain, filled on every
//!   walk, evicting first-in first-out when full (hardware may evict at any time), emptied
//!   only by the invalidations of the [`Iommu`] trait.
//! - **Faults**: an access by an unattached device, to an unmapped IOVA, or against the
//!   mapping's permissions does not happen; it is logged as an [`IommuFault`] with its
//!   reason and refused to the machine, which records its own [`crate::DeviceFault`].
//!
//! The state sits behind a `Mutex`, so the same model also serves as software page tables
//! for benchmarks on the host platform.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dmakit::{Device, DeviceId, DmaAddr, Iommu, IommuDomainId, IommuError, IommuPerm, PhysAddr};
use rustc_hash::FxHashMap;

use crate::device::{DmaTranslation, FaultReason};

/// The translation granule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB pages, 512-entry tables.
    #[default]
    K4,
    /// 16 KiB pages, 2048-entry tables.
    K16,
    /// 64 KiB pages, 8192-entry tables.
    K64,
}

impl Granule {
    /// The granule in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Granule::K4 => 4 << 10,
            Granule::K16 => 16 << 10,
            Granule::K64 => 64 << 10,
        }
    }
}

/// How the modelled IOMMU is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimIommuConfig {
    /// The page-table granule.
    pub granule: Granule,
    /// Input (IOVA) address bits, 32..=52.
    pub iova_bits: u32,
    /// IOTLB entries (at least 1).
    pub iotlb_entries: usize,
    /// Page-table pages the model may allocate in all (beyond that, `map` fails with
    /// [`IommuError::NoMemory`]).
    pub max_tables: usize,
    /// Domains that may exist at once.
    pub max_domains: usize,
    /// Time every IOTLB invalidation takes (busy-waited, outside the model's lock), to
    /// stand for the command-queue round trip of real hardware in benchmarks. Zero by
    /// default.
    pub invalidation_latency: Duration,
}

impl Default for SimIommuConfig {
    /// 4 KiB granule, 48-bit IOVAs, 1024 IOTLB entries, 1 Mi table pages, 1024 domains,
    /// instant invalidations.
    fn default() -> Self {
        Self {
            granule: Granule::K4,
            iova_bits: 48,
            iotlb_entries: 1024,
            max_tables: 1 << 20,
            max_domains: 1024,
            invalidation_latency: Duration::ZERO,
        }
    }
}

/// Why the model refused an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IommuFaultReason {
    /// The device is attached to no domain.
    NoDomain,
    /// No translation for the IOVA (not mapped, or outside the aperture).
    Unmapped,
    /// A read of a mapping without read permission.
    ReadDenied,
    /// A write to a mapping without write permission.
    WriteDenied,
}

impl fmt::Display for IommuFaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IommuFaultReason::NoDomain => "device attached to no domain",
            IommuFaultReason::Unmapped => "IOVA not mapped",
            IommuFaultReason::ReadDenied => "read of a mapping without read permission",
            IommuFaultReason::WriteDenied => "write to a mapping without write permission",
        })
    }
}

/// One refused access, as logged by the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IommuFault {
    /// The device.
    pub device: DeviceId,
    /// Its domain, if it had one.
    pub domain: Option<IommuDomainId>,
    /// The IOVA whose translation failed.
    pub iova: DmaAddr,
    /// Whether the access was a write.
    pub write: bool,
    /// Why.
    pub reason: IommuFaultReason,
}

/// Counters of the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStats {
    /// Successful `map` calls.
    pub maps: u64,
    /// Successful `unmap` calls.
    pub unmaps: u64,
    /// Range invalidations performed.
    pub range_invalidations: u64,
    /// Whole-domain invalidations performed.
    pub domain_invalidations: u64,
    /// Invalidations skipped because [`SimIommu::set_drop_invalidations`] is on.
    pub dropped_invalidations: u64,
    /// Translations served from the IOTLB.
    pub iotlb_hits: u64,
    /// Translations that walked the page tables.
    pub iotlb_misses: u64,
    /// IOTLB hits whose translation the page tables no longer hold (or hold differently):
    /// a device reached memory through a stale entry.
    pub stale_hits: u64,
    /// Page-table pages allocated.
    pub tables: u64,
}

const VALID: u64 = 1;
const TABLE: u64 = 1 << 1;
const READ: u64 = 1 << 6;
const WRITE: u64 = 1 << 7;
const MMIO: u64 = 1 << 8;

/// One domain's page tables: `tables[0]` is the root; a table entry holds the index of the
/// next-level table, a leaf entry the physical frame and permissions. An identity domain
/// has no tables and translates every address to itself.
struct PageTable {
    tables: Vec<Box<[u64]>>,
    identity: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tlb {
    pfn: u64,
    read: bool,
    write: bool,
}

struct State {
    cfg: SimIommuConfig,
    shift: u32,
    bits: u32,
    levels: u32,
    domains: FxHashMap<u32, PageTable>,
    next_domain: u32,
    devices: FxHashMap<DeviceId, u32>,
    iotlb: FxHashMap<(u32, u64), Tlb>,
    fifo: VecDeque<(u32, u64)>,
    tables: usize,
    drop_invalidations: bool,
    faults: Vec<IommuFault>,
    stats: IommuStats,
}

impl State {
    fn index(&self, vpn: u64, level: u32) -> usize {
        ((vpn >> ((self.levels - 1 - level) * self.bits)) & ((1 << self.bits) - 1)) as usize
    }

    fn walk(&self, domain: u32, vpn: u64) -> Option<u64> {
        let pt = self.domains.get(&domain).filter(|pt| !pt.identity)?;
        let mut t = 0usize;
        for level in 0..self.levels {
            let e = pt.tables[t][self.index(vpn, level)];
            if e & VALID == 0 {
                return None;
            }
            if level + 1 == self.levels {
                return Some(e);
            }
            t = (e >> 12) as usize;
        }
        None
    }

    /// The leaf slot for `vpn`, creating tables on the way.
    fn leaf_slot(&mut self, domain: u32, vpn: u64) -> Result<(usize, usize), IommuError> {
        let entries = 1usize << self.bits;
        let levels = self.levels as usize;
        let mut idx = [0usize; 8];
        for (l, slot) in idx.iter_mut().enumerate().take(levels) {
            *slot = self.index(vpn, l as u32);
        }
        let idx = &idx[..levels];
        let max_tables = self.cfg.max_tables;
        let pt = self
            .domains
            .get_mut(&domain)
            .ok_or(IommuError::NoSuchDomain(IommuDomainId(domain)))?;
        let mut t = 0usize;
        for &i in &idx[..idx.len() - 1] {
            let e = pt.tables[t][i];
            if e & VALID != 0 {
                t = (e >> 12) as usize;
                continue;
            }
            if self.tables >= max_tables {
                return Err(IommuError::NoMemory);
            }
            pt.tables.push(vec![0u64; entries].into_boxed_slice());
            self.tables += 1;
            self.stats.tables += 1;
            let new = pt.tables.len() - 1;
            pt.tables[t][i] = VALID | TABLE | ((new as u64) << 12);
            t = new;
        }
        Ok((t, idx[idx.len() - 1]))
    }

    fn set_leaf(&mut self, domain: u32, vpn: u64, value: u64) -> Result<(), IommuError> {
        let (t, i) = self.leaf_slot(domain, vpn)?;
        if let Some(pt) = self.domains.get_mut(&domain) {
            pt.tables[t][i] = value;
        }
        Ok(())
    }

    fn check(
        &self,
        domain: IommuDomainId,
        iova: u64,
        phys: u64,
        len: u64,
    ) -> Result<(), IommuError> {
        match self.domains.get(&domain.0) {
            None => return Err(IommuError::NoSuchDomain(domain)),
            Some(pt) if pt.identity => return Err(IommuError::IdentityDomain(domain)),
            Some(_) => {}
        }
        let g = 1u64 << self.shift;
        if len == 0 || (iova | phys | len) & (g - 1) != 0 {
            return Err(IommuError::Misaligned { iova, phys, len });
        }
        let top = 1u64 << self.cfg.iova_bits;
        if iova >= top || len > top - iova {
            return Err(IommuError::OutOfAperture { iova, len });
        }
        Ok(())
    }

    fn fill_tlb(&mut self, key: (u32, u64), t: Tlb) {
        if self.iotlb.len() >= self.cfg.iotlb_entries {
            while let Some(old) = self.fifo.pop_front() {
                if self.iotlb.remove(&old).is_some() {
                    break;
                }
            }
        }
        self.iotlb.insert(key, t);
        self.fifo.push_back(key);
    }

    fn translate(
        &mut self,
        device: DeviceId,
        dma: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<(PhysAddr, u64), IommuFaultReason> {
        let domain = *self
            .devices
            .get(&device)
            .ok_or(IommuFaultReason::NoDomain)?;
        let a = dma.as_u64();
        if self.domains.get(&domain).is_some_and(|pt| pt.identity) {
            return Ok((dma_as_phys(dma), len));
        }
        let vpn = a >> self.shift;
        let key = (domain, vpn);
        let walked = self.walk(domain, vpn);
        let t = match self.iotlb.get(&key).copied() {
            Some(t) => {
                self.stats.iotlb_hits += 1;
                let now = walked.map(|e| Tlb {
                    pfn: e >> self.shift,
                    read: e & READ != 0,
                    write: e & WRITE != 0,
                });
                if now != Some(t) {
                    self.stats.stale_hits += 1;
                }
                t
            }
            None => {
                self.stats.iotlb_misses += 1;
                let e = walked.ok_or(IommuFaultReason::Unmapped)?;
                let t = Tlb {
                    pfn: e >> self.shift,
                    read: e & READ != 0,
                    write: e & WRITE != 0,
                };
                self.fill_tlb(key, t);
                t
            }
        };
        if write && !t.write {
            return Err(IommuFaultReason::WriteDenied);
        }
        if !write && !t.read {
            return Err(IommuFaultReason::ReadDenied);
        }
        let g = 1u64 << self.shift;
        let off = a & (g - 1);
        Ok((PhysAddr::new((t.pfn << self.shift) | off), len.min(g - off)))
    }
}

/// The physical address an identity domain passes a device's address through to.
fn dma_as_phys(dma: DmaAddr) -> PhysAddr {
    PhysAddr::new(dma.as_u64())
}

/// The modelled IOMMU. Cloning gives another handle on the same IOMMU (one for the
/// machine's translation seam, one for the mapping layer).
#[derive(Clone)]
pub struct SimIommu {
    state: Arc<Mutex<State>>,
    granule: u64,
    iova_bits: u32,
    latency: Duration,
}

impl fmt::Debug for SimIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimIommu")
            .field("granule", &self.granule)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Why a [`SimIommuConfig`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadIommuConfig;

impl fmt::Display for BadIommuConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "IOMMU model needs 32..=52 IOVA bits, at least one IOTLB entry, table page and domain",
        )
    }
}

impl std::error::Error for BadIommuConfig {}

impl SimIommu {
    /// A model IOMMU with no domains.
    ///
    /// # Errors
    /// [`BadIommuConfig`] for IOVA bits outside `32..=52` or a zero capacity.
    pub fn new(cfg: SimIommuConfig) -> Result<Self, BadIommuConfig> {
        if !(32..=52).contains(&cfg.iova_bits)
            || cfg.iotlb_entries == 0
            || cfg.max_tables == 0
            || cfg.max_domains == 0
        {
            return Err(BadIommuConfig);
        }
        let g = cfg.granule.bytes();
        let shift = g.trailing_zeros();
        let bits = shift - 3;
        let levels = (cfg.iova_bits - shift).div_ceil(bits);
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                cfg,
                shift,
                bits,
                levels,
                domains: FxHashMap::default(),
                next_domain: 1,
                devices: FxHashMap::default(),
                iotlb: FxHashMap::default(),
                fifo: VecDeque::new(),
                tables: 0,
                drop_invalidations: false,
                faults: Vec::new(),
                stats: IommuStats::default(),
            })),
            granule: g,
            iova_bits: cfg.iova_bits,
            latency: cfg.invalidation_latency,
        })
    }

    /// Stands for the hardware's invalidation round trip.
    fn wait_invalidation(&self) {
        if self.latency.is_zero() {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < self.latency {
            std::hint::spin_loop();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the model's state consistent enough to
        // inspect (every mutation is a single step), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Page-table levels per domain.
    pub fn levels(&self) -> u32 {
        self.lock().levels
    }

    /// Control: when on, IOTLB invalidations do nothing (they are counted in
    /// [`IommuStats::dropped_invalidations`]), so stale translations survive unmap.
    pub fn set_drop_invalidations(&self, drop: bool) {
        self.lock().drop_invalidations = drop;
    }

    /// Every refused access so far, in order.
    pub fn faults(&self) -> Vec<IommuFault> {
        self.lock().faults.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> IommuStats {
        self.lock().stats
    }

    /// Entries in the IOTLB now.
    pub fn iotlb_len(&self) -> usize {
        self.lock().iotlb.len()
    }

    /// What the page tables of `domain` translate `iova` to now (ignoring the IOTLB), with
    /// the permissions.
    pub fn iova_to_phys(
        &self,
        domain: IommuDomainId,
        iova: DmaAddr,
    ) -> Option<(PhysAddr, IommuPerm)> {
        let s = self.lock();
        let e = s.walk(domain.0, iova.as_u64() >> s.shift)?;
        let g = 1u64 << s.shift;
        let phys = ((e >> s.shift) << s.shift) | (iova.as_u64() & (g - 1));
        Some((
            PhysAddr::new(phys),
            IommuPerm {
                read: e & READ != 0,
                write: e & WRITE != 0,
                mmio: e & MMIO != 0,
            },
        ))
    }

    /// The domain `device` is attached to.
    pub fn domain_of(&self, device: DeviceId) -> Option<IommuDomainId> {
        self.lock().devices.get(&device).map(|&d| IommuDomainId(d))
    }
}

impl Iommu for SimIommu {
    fn granule(&self) -> u64 {
        self.granule
    }

    fn aperture(&self) -> (u64, u64) {
        (0, (1u64 << self.iova_bits) - 1)
    }

    fn create_domain(&self) -> Result<IommuDomainId, IommuError> {
        let mut s = self.lock();
        if s.domains.len() >= s.cfg.max_domains || s.tables >= s.cfg.max_tables {
            return Err(IommuError::NoMemory);
        }
        let id = s.next_domain;
        s.next_domain += 1;
        let root = vec![0u64; 1 << s.bits].into_boxed_slice();
        let pt = PageTable {
            tables: vec![root],
            identity: false,
        };
        s.domains.insert(id, pt);
        s.tables += 1;
        s.stats.tables += 1;
        Ok(IommuDomainId(id))
    }

    fn create_identity_domain(&self) -> Result<IommuDomainId, IommuError> {
        let mut s = self.lock();
        if s.domains.len() >= s.cfg.max_domains {
            return Err(IommuError::NoMemory);
        }
        let id = s.next_domain;
        s.next_domain += 1;
        let pt = PageTable {
            tables: Vec::new(),
            identity: true,
        };
        s.domains.insert(id, pt);
        Ok(IommuDomainId(id))
    }

    fn destroy_domain(&self, domain: IommuDomainId) -> Result<(), IommuError> {
        let mut s = self.lock();
        if !s.domains.contains_key(&domain.0) {
            return Err(IommuError::NoSuchDomain(domain));
        }
        if s.devices.values().any(|&d| d == domain.0) {
            return Err(IommuError::DomainBusy(domain));
        }
        if let Some(pt) = s.domains.remove(&domain.0) {
            s.tables -= pt.tables.len();
        }
        s.iotlb.retain(|&(d, _), _| d != domain.0);
        Ok(())
    }

    fn attach_device(&self, domain: IommuDomainId, device: DeviceId) -> Result<(), IommuError> {
        let mut s = self.lock();
        if !s.domains.contains_key(&domain.0) {
            return Err(IommuError::NoSuchDomain(domain));
        }
        s.devices.insert(device, domain.0);
        Ok(())
    }

    fn detach_device(&self, device: DeviceId) {
        self.lock().devices.remove(&device);
    }

    fn map(
        &self,
        domain: IommuDomainId,
        iova: DmaAddr,
        phys: PhysAddr,
        len: u64,
        perm: IommuPerm,
    ) -> Result<(), IommuError> {
        let mut s = self.lock();
        let (a, p) = (iova.as_u64(), phys.as_u64());
        s.check(domain, a, p, len)?;
        let pages = len >> s.shift;
        let first = a >> s.shift;
        if let Some(v) = (first..first + pages).find(|&v| s.walk(domain.0, v).is_some()) {
            return Err(IommuError::AlreadyMapped { iova: v << s.shift });
        }
        let flags = VALID
            | if perm.read { READ } else { 0 }
            | if perm.write { WRITE } else { 0 }
            | if perm.mmio { MMIO } else { 0 };
        for i in 0..pages {
            let leaf = ((p >> s.shift) + i) << s.shift | flags;
            if let Err(e) = s.set_leaf(domain.0, first + i, leaf) {
                // All or nothing: take back what this call mapped.
                for j in 0..i {
                    let undone = s.set_leaf(domain.0, first + j, 0);
                    debug_assert!(undone.is_ok());
                }
                return Err(e);
            }
        }
        s.stats.maps += 1;
        Ok(())
    }

    fn unmap(&self, domain: IommuDomainId, iova: DmaAddr, len: u64) -> Result<(), IommuError> {
        let mut s = self.lock();
        let a = iova.as_u64();
        s.check(domain, a, 0, len)?;
        let pages = len >> s.shift;
        let first = a >> s.shift;
        if let Some(v) = (first..first + pages).find(|&v| s.walk(domain.0, v).is_none()) {
            return Err(IommuError::NotMapped { iova: v << s.shift });
        }
        for v in first..first + pages {
            // Every leaf was just found mapped, so its tables exist.
            let cleared = s.set_leaf(domain.0, v, 0);
            debug_assert!(cleared.is_ok());
        }
        s.stats.unmaps += 1;
        Ok(())
    }

    fn flush_iotlb_range(&self, domain: IommuDomainId, iova: DmaAddr, len: u64) {
        self.wait_invalidation();
        let mut s = self.lock();
        if s.drop_invalidations {
            s.stats.dropped_invalidations += 1;
            return;
        }
        s.stats.range_invalidations += 1;
        if len == 0 {
            return;
        }
        let first = iova.as_u64() >> s.shift;
        let last = iova.as_u64().saturating_add(len - 1) >> s.shift;
        if last - first < s.iotlb.len() as u64 {
            for v in first..=last {
                s.iotlb.remove(&(domain.0, v));
            }
        } else {
            s.iotlb
                .retain(|&(d, v), _| d != domain.0 || v < first || v > last);
        }
    }

    fn flush_iotlb_all(&self, domain: IommuDomainId) {
        self.wait_invalidation();
        let mut s = self.lock();
        if s.drop_invalidations {
            s.stats.dropped_invalidations += 1;
            return;
        }
        s.stats.domain_invalidations += 1;
        s.iotlb.retain(|&(d, _), _| d != domain.0);
    }
}

impl DmaTranslation for SimIommu {
    /// The IOMMU's page tables hold physical addresses: a device behind it does not use
    /// its bus windows.
    fn translate(
        &self,
        device: &Device,
        dma: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<(PhysAddr, u64), FaultReason> {
        let device = device.id();
        let mut s = self.lock();
        match s.translate(device, dma, len, write) {
            Ok(t) => Ok(t),
            Err(reason) => {
                let domain = s.devices.get(&device).map(|&d| IommuDomainId(d));
                s.faults.push(IommuFault {
                    device,
                    domain,
                    iova: dma,
                    write,
                    reason,
                });
                Err(match reason {
                    IommuFaultReason::NoDomain | IommuFaultReason::Unmapped => {
                        FaultReason::NoTranslation
                    }
                    IommuFaultReason::ReadDenied | IommuFaultReason::WriteDenied => {
                        FaultReason::PermissionDenied
                    }
                })
            }
        }
    }
}
