//! One IOMMU domain as the mapping layer sees it: its IOVA allocator, its live mappings and,
//! in lazy mode, its flush queue.
//!
//! The hardware side of a domain (page tables, IOTLB) is behind the [`Iommu`] platform
//! trait; this is the bookkeeping that must stay consistent with it: which IOVA ranges are
//! live and what each one maps, so unmap and sync can be checked and routed, and so an IOVA
//! is only returned to the allocator once no IOTLB entry can still translate it.

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use super::flush_queue::{FlushEntry, FlushQueue};
use super::iova::{IovaAllocator, IovaConfig, IovaError, IovaRange, IovaStats};
use super::records::{Records, Reservation};
use super::sg_pieces::{self, Piece, PieceChain, PieceLease, PieceTable};
use crate::addr::{DmaAddr, PhysAddr};
use crate::bounce::{BounceBackend, PoolUsage};
use crate::device::{Device, DeviceId};
use crate::direction::Direction;
use crate::platform::{Clock, Iommu, IommuDomainId, IommuError, IommuPerm};
use crate::reintroduce::{self, Defect};

/// When unmapped IOVAs are invalidated in the IOTLB.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlushMode {
    /// Every unmap invalidates its range before returning (Linux `iommu.strict=1`).
    Strict,
    /// Unmaps queue their IOVAs (and bounce slots); one invalidation of the whole domain
    /// releases a batch of up to `queue` of them (Linux's flush queue). The queue also
    /// drains when its oldest entry is older than [`DomainConfig::flush_timeout_ns`], when
    /// a bounce pool is full (before a map fails for want of room) and when the IOVA space
    /// runs out. Unmaps of untrusted devices stay strict.
    Lazy {
        /// Entries that trigger a drain (at least 1).
        queue: usize,
    },
}

/// How a domain is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Strict or lazy invalidation.
    pub mode: FlushMode,
    /// Restricts the domain's IOVAs to `first..=last` (bytes) inside the IOMMU's aperture;
    /// `None` uses the whole aperture. Handy to model a small IOVA space.
    pub iova_window: Option<(u64, u64)>,
    /// Sizes up to `2^rcache_max_order` granules use the range caches.
    pub rcache_max_order: u32,
    /// Ranges per range-cache magazine.
    pub magazine_size: usize,
    /// Full magazines kept per size class.
    pub depot_magazines: usize,
    /// Lazy mode: the longest an unmapped IOVA (and its bounce slot) may wait for its
    /// invalidation, in nanoseconds of the [`Clock`] given to
    /// [`super::IommuDma::with_clock`]. Checked on every map and unmap in the domain: the
    /// first one after the deadline drains the queue (an idle domain is drained by
    /// [`super::IommuDma::flush_queues`], which a timer should call). `None`: bounded by
    /// the queue's length only. Ignored in strict mode.
    pub flush_timeout_ns: Option<u64>,
    /// Mappings the domain records at once (single, scatter-gather and DMA-allocation
    /// mappings count one each). Their room is allocated when the domain is created, so
    /// no map, unmap or sync allocates; a map beyond it fails with
    /// [`crate::DmaError::MappingTableFull`]. About 100 bytes each.
    pub max_mappings: usize,
    /// Buffers of scatter-gather lists mapped in one IOVA range that the domain records
    /// at once (one per list entry; a list whose buffers are bounced one by one takes
    /// none, its buffers count as single mappings). Their room — 32 bytes a piece, 128 KiB
    /// for the default 4096 — is allocated when the domain is created, so mapping,
    /// syncing and unmapping a list allocates nothing; a list beyond it fails with
    /// [`crate::DmaError::SgPieceTableFull`], and nothing is mapped then.
    pub max_sg_pieces: usize,
    /// An identity (passthrough) domain ([`crate::Iommu::create_identity_domain`]): an
    /// attached device's DMA address is its physical address, with no page tables and no
    /// IOVA. The mapper routes such a device as if it had no IOMMU — its DMA mask judged,
    /// bounced through its pool when a buffer is beyond it or must be for alignment. Only
    /// trusted devices may be attached (an untrusted one needs the translation to be kept
    /// from other owners' memory; [`super::IommuDmaError::UntrustedIdentity`]), as Linux
    /// refuses an identity default domain for an untrusted device. The other fields are
    /// ignored. [`DomainConfig::IDENTITY`] is one.
    pub identity: bool,
}

impl DomainConfig {
    /// Strict invalidation, whole aperture, default caches.
    pub const STRICT: Self = Self {
        mode: FlushMode::Strict,
        iova_window: None,
        rcache_max_order: 9,
        magazine_size: 128,
        depot_magazines: 32,
        flush_timeout_ns: None,
        max_mappings: 4096,
        max_sg_pieces: 4096,
        identity: false,
    };

    /// Lazy invalidation with a 256-entry flush queue, whole aperture, default caches, no
    /// time bound (set [`DomainConfig::flush_timeout_ns`] for one; Linux uses 10 ms).
    pub const LAZY: Self = Self {
        mode: FlushMode::Lazy { queue: 256 },
        ..Self::STRICT
    };

    /// An identity (passthrough) domain (see [`DomainConfig::identity`]).
    pub const IDENTITY: Self = Self {
        identity: true,
        ..Self::STRICT
    };
}

impl Default for DomainConfig {
    fn default() -> Self {
        Self::STRICT
    }
}

/// What a live mapping lends the device.
pub(crate) enum Kind {
    /// The caller's buffer at `phys`, in place.
    Single { phys: PhysAddr },
    /// A bounce slot of `backend` at `slot` (its metadata names the caller's buffer).
    Bounced {
        backend: Arc<dyn BounceBackend>,
        slot: PhysAddr,
    },
    /// Several buffers laid out back to back in IOVA space (their pieces in the domain's
    /// piece table).
    Sg { pieces: PieceChain },
    /// Pages of a DMA allocation mapped contiguously (their owner does the syncs).
    Pages { pieces: Vec<Piece> },
    /// A peer device's registers, mapped as MMIO: no CPU side, ever.
    Resource,
}

/// A live mapping, keyed in [`IommuDomain`] by its first device address.
pub(crate) struct Record {
    pub(crate) device: DeviceId,
    /// The reserved IOVA pages.
    pub(crate) iova: IovaRange,
    /// Bytes mapped in the page tables from the start of `iova`.
    pub(crate) mapped: u64,
    /// Bytes from the key the device may use (for scatter-gather: up to the end of the
    /// last piece).
    pub(crate) len: u64,
    pub(crate) dir: Direction,
    pub(crate) kind: Kind,
}

/// A snapshot of a domain's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainStats {
    /// The domain.
    pub id: IommuDomainId,
    /// Its invalidation mode.
    pub mode: FlushMode,
    /// Live mappings.
    pub live_mappings: usize,
    /// Unmapped IOVA ranges waiting in the flush queue.
    pub queued: usize,
    /// Free slots of the scatter-gather piece table ([`DomainConfig::max_sg_pieces`]).
    pub free_sg_pieces: usize,
    /// Bounce slots of those ranges, held until the invalidation.
    pub parked_bounces: usize,
    /// Flush-queue drains so far (each one IOTLB invalidation of the whole domain).
    pub queue_flushes: u64,
    /// The IOVA allocator's counters and free space.
    pub iova: IovaStats,
}

/// One domain: IOVA allocator, live mappings, flush queue. Created by
/// [`super::IommuDma::create_domain`].
pub struct IommuDomain {
    id: IommuDomainId,
    mode: FlushMode,
    iommu: Arc<dyn Iommu + Send + Sync>,
    granule: u64,
    shift: u32,
    iova: IovaAllocator,
    records: Mutex<Records<Record>>,
    /// The pieces of the live scatter-gather mappings (locked after `records` when both
    /// are held).
    pieces: Mutex<PieceTable>,
    fq: FlushQueue,
    /// The lazy queue's time bound, with the clock that measures it.
    timeout: Option<(u64, Arc<dyn Clock + Send + Sync>)>,
    /// An identity domain: nothing is ever mapped in it.
    identity: bool,
}

impl IommuDomain {
    pub(crate) fn new(
        id: IommuDomainId,
        iommu: Arc<dyn Iommu + Send + Sync>,
        cfg: &DomainConfig,
        cpus: usize,
        clock: Option<Arc<dyn Clock + Send + Sync>>,
    ) -> Result<Self, IovaError> {
        let granule = iommu.granule();
        let shift = granule.trailing_zeros();
        let (lo, hi) = iommu.aperture();
        let (lo, hi) = match cfg.iova_window {
            Some((a, b)) => (a.max(lo), b.min(hi)),
            None => (lo, hi),
        };
        let first = lo.div_ceil(granule).max(1);
        let last = match hi.checked_add(1) {
            Some(end) => (end >> shift).checked_sub(1).ok_or(IovaError::BadConfig)?,
            None => u64::MAX >> shift,
        };
        let queue = match cfg.mode {
            FlushMode::Strict => 1,
            FlushMode::Lazy { queue } => queue,
        };
        let iova = IovaAllocator::new(IovaConfig {
            first_pfn: first,
            last_pfn: last,
            rcache_max_order: cfg.rcache_max_order,
            magazine_size: cfg.magazine_size,
            depot_magazines: cfg.depot_magazines,
            cpus,
            // Each recorded mapping holds one range, and so does each unmapped one waiting
            // in the flush queue: the IOVA table never refuses what the records admit.
            max_live: cfg.max_mappings.saturating_add(queue),
        })?;
        Ok(Self {
            id,
            mode: cfg.mode,
            iommu,
            granule,
            shift,
            iova,
            records: Mutex::new(Records::with_capacity(cfg.max_mappings)),
            pieces: Mutex::new(PieceTable::with_capacity(cfg.max_sg_pieces)),
            fq: FlushQueue::new(queue),
            timeout: match cfg.mode {
                FlushMode::Strict => None,
                FlushMode::Lazy { .. } => cfg.flush_timeout_ns.zip(clock),
            },
            identity: cfg.identity,
        })
    }

    /// Whether this is an identity (passthrough) domain ([`DomainConfig::identity`]).
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The domain's id.
    pub(crate) fn id(&self) -> IommuDomainId {
        self.id
    }

    /// The IOMMU granule in bytes.
    pub(crate) fn granule(&self) -> u64 {
        self.granule
    }

    /// The IOVA allocator (for statistics and inspection).
    pub fn iova(&self) -> &IovaAllocator {
        &self.iova
    }

    /// A snapshot of the domain's state.
    pub fn stats(&self) -> DomainStats {
        // Before the records lock: the allocator's snapshot takes its own locks.
        let iova = self.iova.stats();
        DomainStats {
            id: self.id,
            mode: self.mode,
            live_mappings: self.records.lock().len(),
            queued: self.fq.len(),
            free_sg_pieces: self.pieces.lock().free(),
            parked_bounces: self.fq.parked_bounces(),
            queue_flushes: self.fq.flushes(),
            iova,
        }
    }

    /// Whether `device` has live mappings in this domain.
    pub(crate) fn has_mappings_of(&self, device: DeviceId) -> bool {
        self.records.lock().values().any(|r| r.device == device)
    }

    /// Whether any mapping is live in this domain.
    pub(crate) fn has_mappings(&self) -> bool {
        !self.records.lock().is_empty()
    }

    /// Promises room for one more record: a map reserves before it takes IOVA space, so a
    /// full table refuses it with nothing to undo. `None` when the domain already records
    /// [`DomainConfig::max_mappings`] mappings.
    pub(crate) fn reserve(&self) -> Option<Reservation<'_, Record>> {
        Records::reserve(&self.records)
    }

    /// Mappings the domain records at once ([`DomainConfig::max_mappings`]).
    pub(crate) fn max_mappings(&self) -> usize {
        self.records.lock().capacity()
    }

    /// Takes room for the `n` pieces of a scatter-gather list (before its IOVA space, so
    /// a full table refuses it with nothing to undo). `None` when fewer are free.
    pub(crate) fn lease_pieces(&self, n: usize) -> Option<PieceLease<'_>> {
        PieceLease::take(&self.pieces, n)
    }

    /// Pieces the domain records at once ([`DomainConfig::max_sg_pieces`]).
    pub(crate) fn max_sg_pieces(&self) -> usize {
        self.pieces.lock().capacity()
    }

    /// Runs `f` on each piece of a live (or ending) scatter-gather mapping, in order,
    /// under the piece table's lock (`f` must not call back into the domain's pieces).
    pub(crate) fn for_each_piece(&self, chain: &PieceChain, f: impl FnMut(Piece)) {
        sg_pieces::for_each(&self.pieces, chain, f);
    }

    /// The scatter-gather mapping that held `chain` has ended: its pieces' room is free.
    pub(crate) fn free_pieces(&self, chain: PieceChain) {
        sg_pieces::give_back(&self.pieces, chain);
    }

    /// Takes the record at `key` out if `check` accepts it (under the records' lock, so no
    /// other unmap can take it in between). Its room stays taken until
    /// [`IommuDomain::forget`] (the page tables are gone) or [`IommuDomain::put_back`] (the
    /// IOMMU refused).
    ///
    /// # Errors
    /// `missing` when no live mapping starts at `key`; whatever `check` returns (the
    /// record stays then).
    pub(crate) fn take<E>(
        &self,
        key: u64,
        missing: E,
        check: impl FnOnce(&Record) -> Result<(), E>,
    ) -> Result<Record, E> {
        let mut recs = self.records.lock();
        check(recs.get(key).ok_or(missing)?)?;
        Ok(recs
            .take(key)
            .unwrap_or_else(|| unreachable!("the record was just found under the lock")))
    }

    /// The record taken at `key` is ended: its room is free again.
    pub(crate) fn forget(&self, key: u64) {
        self.records.lock().forget(key);
    }

    /// The record taken at `key` is live again (its unmap was refused).
    pub(crate) fn put_back(&self, key: u64, rec: Record) {
        self.records.lock().put_back(key, rec);
    }

    /// Runs `f` on the live mappings, keyed by first device address, under the records'
    /// lock (so `f` must not call back into the domain's records).
    pub(crate) fn with_records<R>(&self, f: impl FnOnce(&Records<Record>) -> R) -> R {
        f(&self.records.lock())
    }

    /// Whether unmaps of `dev` invalidate at once: in strict mode, and always for an
    /// untrusted device.
    pub(crate) fn strict_for(&self, dev: &Device) -> bool {
        matches!(self.mode, FlushMode::Strict) || !dev.is_trusted()
    }

    /// Maps `len` bytes at IOVA `dma` to `phys` in the page tables.
    ///
    /// # Errors
    /// Whatever the IOMMU refuses; nothing is mapped then.
    pub(crate) fn map_tables(
        &self,
        dma: DmaAddr,
        phys: PhysAddr,
        len: u64,
        perm: IommuPerm,
    ) -> Result<(), IommuError> {
        self.iommu.map(self.id, dma, phys, len, perm)
    }

    /// Removes the page-table entries of `len` bytes at IOVA `dma` (the IOTLB may still
    /// translate them: see [`IommuDomain::flush_range`]).
    ///
    /// # Errors
    /// Whatever the IOMMU refuses; the entries stay then.
    pub(crate) fn unmap_tables(&self, dma: DmaAddr, len: u64) -> Result<(), IommuError> {
        self.iommu.unmap(self.id, dma, len)
    }

    /// Invalidates the IOTLB for `len` bytes at IOVA `dma`.
    pub(crate) fn flush_range(&self, dma: DmaAddr, len: u64) {
        self.iommu.flush_iotlb_range(self.id, dma, len);
    }

    /// The IOVA a byte address falls in, as a page frame number limit for a device mask:
    /// the last granule whose every byte is at or below `mask`; `None` when no granule is.
    pub(crate) fn limit_pfn(&self, mask: u64) -> Option<u64> {
        match mask.checked_add(1) {
            Some(end) => (end >> self.shift).checked_sub(1),
            None => Some(u64::MAX >> self.shift),
        }
    }

    /// Allocates the IOVA pages of `len` granule-aligned bytes below `limit_pfn`; in lazy
    /// mode, drains the flush queue and retries once before giving up.
    pub(crate) fn alloc_iova(
        &self,
        len: u64,
        limit_pfn: u64,
        cpu: usize,
    ) -> Result<IovaRange, IovaError> {
        let pages = len >> self.shift;
        match self.iova.alloc(pages, limit_pfn, cpu) {
            Err(IovaError::Exhausted { .. }) if self.fq.len() > 0 => {
                self.drain(cpu);
                self.iova.alloc(pages, limit_pfn, cpu)
            }
            r => r,
        }
    }

    /// Releases an IOVA range whose translations are gone from the page tables and the
    /// IOTLB.
    pub(crate) fn release(&self, range: IovaRange, cpu: usize) {
        // The range came from this allocator and its mapping record was removed exactly
        // once, so it is allocated here.
        let freed = self.iova.free(range, cpu);
        debug_assert!(freed.is_ok(), "{freed:?}");
    }

    /// Queues an unmapped range (lazy mode); drains when the queue is full, when its oldest
    /// entry has outlived the time bound, or when the entry parks a bounce slot of a pool
    /// under pressure (see [`under_pressure`]). Returns the bounce slots a drain released.
    pub(crate) fn defer(&self, mut entry: FlushEntry, cpu: usize) -> usize {
        let now = self.timeout.as_ref().map_or(0, |(_, c)| c.now_ns());
        let pressure = !reintroduce::active(Defect::LazyDomainParksBounces)
            && entry
                .bounce
                .as_ref()
                .is_some_and(|(b, _)| under_pressure(b.usage()));
        let mut released = 0;
        let full = loop {
            match self.fq.push(entry, now) {
                Ok(full) => break full,
                // Full already (other unmaps filled it meanwhile): make room first.
                Err(back) => {
                    released += self.drain(cpu);
                    entry = back;
                }
            }
        };
        if full || pressure || self.expired(now) {
            released += self.drain(cpu);
        }
        released
    }

    /// Drains the queue if its oldest entry has outlived the time bound (checked on every
    /// map). Returns the bounce slots released.
    pub(crate) fn drain_expired(&self, cpu: usize) -> usize {
        match &self.timeout {
            // An empty queue (the common case) costs no clock read.
            Some((_, clock)) if self.fq.queued_hint() && self.expired(clock.now_ns()) => {
                self.drain(cpu)
            }
            _ => 0,
        }
    }

    /// Whether the oldest queued entry has waited at least the time bound at `now`.
    fn expired(&self, now: u64) -> bool {
        if reintroduce::active(Defect::LazyDomainParksBounces) {
            return false;
        }
        self.timeout.as_ref().is_some_and(|(limit, _)| {
            now.checked_sub(*limit)
                .is_some_and(|deadline| self.fq.oldest_at_or_before(deadline))
        })
    }

    /// Bounce slots waiting in the flush queue for their invalidation.
    pub(crate) fn parked_bounces(&self) -> usize {
        self.fq.parked_bounces()
    }

    /// Invalidates the domain's IOTLB, then releases every queued IOVA and bounce slot.
    /// Returns the bounce slots released.
    pub(crate) fn drain(&self, cpu: usize) -> usize {
        let Some(seal) = self.fq.seal() else {
            return 0;
        };
        self.iommu.flush_iotlb_all(self.id);
        let mut bounces = 0;
        while let Some(e) = self.fq.pop_sealed(seal) {
            if let Some((backend, slot)) = e.bounce {
                let freed = backend.free(slot);
                debug_assert!(freed.is_some());
                bounces += 1;
            }
            self.release(e.iova, cpu);
        }
        bounces
    }

    /// The first device address of the IOVA range.
    pub(crate) fn iova_addr(&self, range: IovaRange) -> DmaAddr {
        DmaAddr::new(range.pfn << self.shift)
    }
}

/// Whether a bounce pool is so full that its slots should not wait in a flush queue: at
/// least three quarters of its memory reserved. Parked slots then go back (after the
/// invalidation) at the unmap that parks one, so lazily unmapped bounces never leave a pool
/// full with nothing live; a map that still finds the pool full drains every queue before
/// it fails (`IommuDma::reclaim_bounces`).
pub(crate) fn under_pressure(u: PoolUsage) -> bool {
    u.used.saturating_mul(4) >= u.total.saturating_mul(3)
}
