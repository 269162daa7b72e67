//! Switches that put back, one at a time, defects that were found and fixed.
//!
//! A test that cannot fail proves nothing. The cross-path fuzzer and the per-defect model
//! tests show they would have caught each isolation defect by running with that defect put
//! back. The switches exist only with the `reintroduce-defects` feature, which nothing but
//! those tests enables; without it [`active`] is the constant `false` and every check that
//! asks it compiles away.
//!
//! The switches are process-wide (an atomic bit set): a test binary that uses them must
//! not run other tests at the same time that assume a defect-free crate.

/// A defect that was fixed, by the number of the finding it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Defect {
    /// 1: SWIOTLB returns the slots before a `min_align_mask` (or page-offset) bounce
    /// address to the free lists, although they belong to the bounce.
    LeadInSlotsFreed,
    /// 2: the debug checker forgets a mapping before its unmap is validated.
    CheckerForgetsBeforeValidation,
    /// 3: `map_sg` through the IOMMU path is not counted in the statistics.
    IommuSgUncounted,
    /// 4: a lazy IOMMU domain keeps bounce slots of unmapped IOVAs until its flush queue
    /// drains on its own (no drain under pool pressure, no wake-up, no time bound).
    LazyDomainParksBounces,
    /// 5a: `map_or_defer` calls the growth hook with the deferred queue's lock held.
    DeferHookUnderLock,
    /// 5b: a buffer that needs no bounce is deferred when anything else is queued.
    DeferUnneededMapping,
    /// 5c: a request too large to ever bounce is queued instead of failing at once.
    DeferTooLarge,
    /// 5d: `release_device` leaves the device's deferred mappings queued.
    DeferSurvivesRelease,
    /// 5e: one FIFO for all devices: a device whose pool has room waits behind another's.
    DeferSingleFifo,
    /// 6: a mask-limited device whose reachable pool memory is full gets `NoBouncePool`
    /// (no growth below its mask, no deferral).
    MaskLimitedNoGrowth,
    /// 7: the coherent object pool never coalesces freed objects.
    CoherentNoCoalesce,
    /// 8: a faulting bounce copy in the IOMMU path's unmap leaks its slot.
    IommuFaultLeaksSlot,
    /// 9: the debug checker's line rounding overflows near the top of the address space.
    CheckerRoundingOverflow,
    /// 10: sub-granule DMA allocations behind large-granule IOMMUs are not rounded up.
    SubGranuleAllocNotRounded,
    /// 11a: a mapping whose end lies beyond every DMA address is accepted.
    HugeRangeAccepted,
    /// 11b: a bounce that failed (memory fault) still raises the pool's high-water mark.
    FailedBounceRaisesHighWater,
    /// 11b (scatter-gather): a `map_sg` that fails part-way gives its bounced segments back
    /// by unmapping them, which keeps their rise of the pool's high-water mark.
    SgUnwindKeepsHighWater,
    /// Found by the fuzzer: an IOMMU-path sync of a part past the end of the mapping it
    /// names syncs another mapping of the device that starts right after it.
    IommuSyncStraysIntoNeighbour,
    /// 11c: `dma_bits` above 64 is accepted.
    DmaBitsAbove64Accepted,
    /// 11d: `unmap_sg(&[])` answers differently on the direct and IOMMU paths.
    EmptyUnmapSgInconsistent,
    /// 11e: `TooLargeToBounce` reports `max: 0` when the pool's segments cannot meet a
    /// device's boundary.
    TooLargeReportsZero,
    /// 11f: after `IommuDma::detach`, the device's mappings silently go direct.
    DetachGoesDirect,
    /// 13a (control of the piece table): an IOMMU scatter-gather mapping's pieces are not
    /// given back to the domain's table when it ends.
    SgPiecesKeptAtUnmap,
    /// 13b (control of the piece table): a list asks for one piece more than it takes, so
    /// the table reports itself full while it has room.
    SgPieceTableOvercounts,
    /// 15 (control of packed bounces): a packed bounce holds its lines rounded down, so the
    /// line its last bytes share with the next free line can go to another bounce.
    PackedRunShortByALine,
    /// 12a: a scenario's `machine.cache_size` (and `cache_ways`) is accepted at any size,
    /// and the model allocates the whole cache up front.
    CliCacheSizeUnbounded,
    /// 12b: scenario and slabinfo files are read whole, whatever their size.
    CliInputUnbounded,
    /// 12c: overlapping RAM ranges of a scenario are merged without a word.
    CliRamOverlapMerged,
    /// 12d: `dmakit simulate --report DIR` finds out only after the run that it cannot
    /// write DIR.
    CliReportCheckedLate,
    /// 12e: every `[[device]]` name is compared with every other one (quadratic).
    CliDeviceValidationQuadratic,
}

#[cfg(feature = "reintroduce-defects")]
mod switches {
    use super::Defect;
    use core::sync::atomic::{AtomicU64, Ordering};

    static ACTIVE: AtomicU64 = AtomicU64::new(0);

    fn bit(d: Defect) -> u64 {
        1 << (d as u8)
    }

    /// Puts `d` back until [`disable`] (or [`disable_all`]).
    pub fn enable(d: Defect) {
        ACTIVE.fetch_or(bit(d), Ordering::SeqCst);
    }

    /// Fixes `d` again.
    pub fn disable(d: Defect) {
        ACTIVE.fetch_and(!bit(d), Ordering::SeqCst);
    }

    /// Fixes every defect again.
    pub fn disable_all() {
        ACTIVE.store(0, Ordering::SeqCst);
    }

    /// Whether `d` is put back.
    #[inline]
    pub fn active(d: Defect) -> bool {
        ACTIVE.load(Ordering::Relaxed) & bit(d) != 0
    }
}

#[cfg(feature = "reintroduce-defects")]
pub use switches::{active, disable, disable_all, enable};

#[cfg(all(feature = "reintroduce-defects", feature = "std"))]
mod guard {
    extern crate std;
    use super::Defect;
    use std::sync::{Mutex, MutexGuard, PoisonError};

    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

    /// A defect put back for as long as this lives; see [`put_back`].
    #[must_use = "the defect is fixed again when this is dropped"]
    pub struct PutBack {
        _serial: MutexGuard<'static, ()>,
    }

    impl Drop for PutBack {
        fn drop(&mut self) {
            super::disable_all();
        }
    }

    /// Puts `defect` back (or, with `None`, none) until the guard drops, even if the test
    /// panics. The guard also holds a process-wide lock, so tests of one binary that take
    /// it run one at a time and never see each other's defects.
    pub fn put_back(defect: Option<Defect>) -> PutBack {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
        super::disable_all();
        if let Some(d) = defect {
            super::enable(d);
        }
        PutBack { _serial: serial }
    }
}

#[cfg(all(feature = "reintroduce-defects", feature = "std"))]
pub use guard::{put_back, PutBack};

/// Whether `d` is put back: always `false` without the `reintroduce-defects` feature.
#[cfg(not(feature = "reintroduce-defects"))]
#[inline(always)]
pub const fn active(_d: Defect) -> bool {
    false
}

impl Defect {
    /// Whether the defect lies in the `dmakit` command (input handling), not in the mapping
    /// layer: its controls run the command, not the mapping-layer fuzzer.
    pub fn in_cli(self) -> bool {
        matches!(
            self,
            Defect::CliCacheSizeUnbounded
                | Defect::CliInputUnbounded
                | Defect::CliRamOverlapMerged
                | Defect::CliReportCheckedLate
                | Defect::CliDeviceValidationQuadratic
        )
    }

    /// Every defect, in finding order.
    pub const ALL: [Defect; 30] = [
        Defect::LeadInSlotsFreed,
        Defect::CheckerForgetsBeforeValidation,
        Defect::IommuSgUncounted,
        Defect::LazyDomainParksBounces,
        Defect::DeferHookUnderLock,
        Defect::DeferUnneededMapping,
        Defect::DeferTooLarge,
        Defect::DeferSurvivesRelease,
        Defect::DeferSingleFifo,
        Defect::MaskLimitedNoGrowth,
        Defect::CoherentNoCoalesce,
        Defect::IommuFaultLeaksSlot,
        Defect::CheckerRoundingOverflow,
        Defect::SubGranuleAllocNotRounded,
        Defect::HugeRangeAccepted,
        Defect::FailedBounceRaisesHighWater,
        Defect::SgUnwindKeepsHighWater,
        Defect::IommuSyncStraysIntoNeighbour,
        Defect::DmaBitsAbove64Accepted,
        Defect::EmptyUnmapSgInconsistent,
        Defect::TooLargeReportsZero,
        Defect::DetachGoesDirect,
        Defect::SgPiecesKeptAtUnmap,
        Defect::SgPieceTableOvercounts,
        Defect::PackedRunShortByALine,
        Defect::CliCacheSizeUnbounded,
        Defect::CliInputUnbounded,
        Defect::CliRamOverlapMerged,
        Defect::CliReportCheckedLate,
        Defect::CliDeviceValidationQuadratic,
    ];
}
