//! The cross-path adversarial fuzzer: seeded cases of operations on one machine that holds
//! every kind of device at once (see `rig`), checked after every step (see `exec`, `check`),
//! shrunk by delta debugging when they fail (see `shrink`).
//!
//! Which invariant catches which defect of issue 11 (`dmakit::reintroduce::Defect`):
//!
//! | defect | invariant that fires |
//! |---|---|
//! | 1 `LeadInSlotsFreed` | `bounce-footprints-overlap` (a bounce owns its lead-in slots and, behind an IOMMU, its whole granules), `isolation` (an untrusted device reading its whole granules sees another owner's bytes), `byte-oracle`, `device-sees-wrong-bytes` (the zero padding wipes a neighbour's in-flight bounce) |
//! | 2 `CheckerForgetsBeforeValidation` | `checker-report-on-valid-call` (after a refused wrong-size/direction unmap, the correct unmap is reported `not-mapped`), `checker-not-empty-at-end` |
//! | 3 `IommuSgUncounted` | `statistics-miss-mappings` (a successful `map_sg` must raise the device's mapping count, and its bounce count when it bounced) |
//! | 4 `LazyDomainParksBounces` | `exhausted-while-only-unmapped-hold-it` (`PoolExhausted` while no live mapping holds the pool), `pool-not-empty-at-end` |
//! | 5a `DeferHookUnderLock` | `hang` (the growth hook of half the cases grows on the spot from a reserve and calls `retry_deferred` synchronously; the watchdog fires) |
//! | 5b `DeferUnneededMapping` | `deferred-without-bounce` (a deferred request that a plain map serves at once without a bounce, with nothing queued for its pool) |
//! | 5c `DeferTooLarge` | `too-large-deferred`, `deferred-left-at-end` |
//! | 5d `DeferSurvivesRelease` | `callback-after-release` |
//! | 5e `DeferSingleFifo` | `deferred-behind-another-pool` (queued behind another pool's requests although a plain map bounces it at once) |
//! | 6 `MaskLimitedNoGrowth` | `no-bounce-pool-with-a-pool` (a 32-bit device whose low region is full) |
//! | 7 `CoherentNoCoalesce` | `exhausted-while-free` (64 KiB through an entirely free 64 KiB coherent pool), `deferred-left-at-end` (a deferred request the fragmented pool never serves) |
//! | 8 `IommuFaultLeaksSlot` | `faulting-unmap-leaks` (a write-only untrusted bounce of memory outside RAM, on a mapper without inbound fills, whose copy back faults at unmap) |
//! | 9 `CheckerRoundingOverflow` | `panic` (a record at the very top of the address space through the checker's public `coherent_allocated`; the mapper itself refuses every range that reaches the last page since 11a) |
//! | 10 `SubGranuleAllocNotRounded` | `sub-granule-alloc-refused` (4 KiB `alloc_coherent`, 8 KiB `alloc_pages` behind 16/64 KiB granules) |
//! | 11a `HugeRangeAccepted` | `huge-range-accepted` (`map(0, u64::MAX)`; while defect 9 is in, the same call panics in the checker first) |
//! | 11b `FailedBounceRaisesHighWater` | `failed-call-changed-pool` (a bounce of memory outside RAM) |
//! | 11b `SgUnwindKeepsHighWater` | `failed-call-changed-pool` (a `map_sg` whose later buffer fails, on the direct and the IOMMU path) |
//! | — `IommuSyncStraysIntoNeighbour` (found by this fuzzer) | `invalid-call-accepted` (a sync of the byte past a mapping's end, where another mapping of the device starts) |
//! | 11c `DmaBitsAbove64Accepted` | `dma-bits-65-accepted` |
//! | 11d `EmptyUnmapSgInconsistent` | `paths-disagree` (`unmap_sg(&[])` on direct and IOMMU devices) |
//! | 11e `TooLargeReportsZero` | `too-large-says-nothing` (`TooLargeToBounce { max: 0 }` for a device whose `min_align_mask` no 16 KiB segment can honour) |
//! | 11f `DetachGoesDirect` | `ok-mapping-unusable` (after `IommuDma::detach`, a map that answers `Ok` must be usable by the device; any `Err` is accepted) |
//! | 13a `SgPiecesKeptAtUnmap` | `sg-pieces-leaked` (an IOMMU domain's piece table not whole with nothing mapped), `sg-table-full-while-free` |
//! | 13b `SgPieceTableOvercounts` | `sg-table-full-while-free` (`SgPieceTableFull` while the domain had the pieces the list needs); a refused list must leave the domain's pieces and live mappings as they were (`refused-sg-list-kept-room`) |
//! | 15 `PackedRunShortByALine` | `bounce-footprints-overlap` (a packed SWIOTLB bounce owns every line its bytes touch, lead-in included), `byte-oracle`, `device-sees-wrong-bytes`, `isolation` (another bounce in the shared line) |
//!
//! Expectations follow the fixed semantics of issue 11; where it leaves a choice (what a
//! detached device's maps return, which error a released device's deferred request gets)
//! any clear `Err` is accepted.
//!
//! Environment: `DMAKIT_FUZZ_SECONDS` (wall-time budget, default 60), `DMAKIT_FUZZ_OPS`
//! (operation budget), `DMAKIT_FUZZ_SEED` (first case seed; a failure prints the seed that
//! replays it), `DMAKIT_FUZZ_WITHOUT` (comma-separated operation classes to leave out, e.g.
//! `Defer,Detach`), `DMAKIT_FUZZ_DEVICES` (comma-separated device indices of the rig that
//! operations may name, e.g. `2,5,8`).

#![allow(dead_code)]

pub mod check;
pub mod exec;
pub mod ops;
pub mod rig;
pub mod shrink;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use ops::{Class, Classes, Op};
use rig::RigOptions;
use shrink::CaseFailure;

/// Operations per case.
pub const OPS_PER_CASE: usize = 300;
/// The buffer count the generator draws from (indices wrap).
const BUFFERS: u16 = 256;
/// A case that takes longer than this has hung.
pub const CASE_LIMIT: Duration = Duration::from_secs(20);

/// What one fuzz run does.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub first_seed: u64,
    pub seconds: f64,
    pub ops: u64,
    pub classes: Classes,
    /// Device indices operations may name (all of them by default).
    pub devices: &'static [u8],
    /// How long shrinking may take.
    pub shrink_seconds: f64,
}

impl Budget {
    /// The CI budget, overridden by the environment (see the module docs).
    pub fn from_env(default_seconds: f64) -> Budget {
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
        let mut classes = Classes::ALL;
        if let Ok(v) = std::env::var("DMAKIT_FUZZ_WITHOUT") {
            for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match Class::ALL
                    .iter()
                    .find(|c| format!("{c:?}").eq_ignore_ascii_case(name))
                {
                    Some(&c) => classes = classes.without(c),
                    None => panic!(
                        "DMAKIT_FUZZ_WITHOUT: unknown class {name}; classes: {:?}",
                        Class::ALL
                    ),
                }
            }
        }
        let devices: &'static [u8] = match std::env::var("DMAKIT_FUZZ_DEVICES") {
            Ok(v) => Vec::leak(
                v.split(',')
                    .map(|d| {
                        d.trim()
                            .parse::<u8>()
                            .expect("DMAKIT_FUZZ_DEVICES: device indices")
                    })
                    .filter(|&d| (d as usize) < ALL_DEVICES.len())
                    .collect(),
            ),
            Err(_) => &ALL_DEVICES,
        };
        Budget {
            devices,
            first_seed: num("DMAKIT_FUZZ_SEED").map_or(1, |s| s as u64),
            // An operation budget alone is not cut short by the default time budget.
            seconds: num("DMAKIT_FUZZ_SECONDS").unwrap_or(if num("DMAKIT_FUZZ_OPS").is_some() {
                f64::INFINITY
            } else {
                default_seconds
            }),
            ops: num("DMAKIT_FUZZ_OPS").map_or(u64::MAX, |n| n as u64),
            classes,
            shrink_seconds: 20.0,
        }
    }
}

/// A failing case, shrunk.
#[derive(Clone, Debug)]
pub struct Finding {
    pub seed: u64,
    pub failure: CaseFailure,
    /// Operations executed over the whole run up to the failing step.
    pub ops_to_find: u64,
    pub seconds_to_find: f64,
    pub shrunk: Vec<Op>,
    pub shrunk_failure: CaseFailure,
}

impl Finding {
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fuzz failure: seed {} step {}: {}\n  found after {} operations in {:.1} s",
            self.seed,
            self.failure.step,
            self.failure.violation,
            self.ops_to_find,
            self.seconds_to_find
        );
        let _ = writeln!(
            s,
            "  shrunk to {} operations (fails at step {}: {}):",
            self.shrunk.len(),
            self.shrunk_failure.step,
            self.shrunk_failure.violation
        );
        for (i, op) in self.shrunk.iter().enumerate() {
            let _ = writeln!(s, "    {i:3}: {op:?}");
        }
        let _ = writeln!(
            s,
            "  replay: DMAKIT_FUZZ_SEED={} DMAKIT_FUZZ_OPS={} cargo test -p dmakit-sim --test fuzz_isolation",
            self.seed,
            self.failure.step + 1
        );
        s
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub cases: u64,
    pub ops: u64,
    pub seconds: f64,
    pub finding: Option<Finding>,
}

/// The rig options of a case: half the cases get a growth hook that retries the deferred
/// queues synchronously.
pub fn options(seed: u64) -> RigOptions {
    RigOptions {
        seed,
        sync_retry: seed % 2 == 1,
    }
}

/// Every device of the rig.
pub const ALL_DEVICES: [u8; 17] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

pub fn case_ops(seed: u64, b: &Budget) -> Vec<Op> {
    ops::generate(seed, OPS_PER_CASE, b.devices, BUFFERS, b.classes)
}

/// Runs cases from `b.first_seed` on until one fails or the budget is spent.
pub fn run(b: Budget) -> Outcome {
    let start = Instant::now();
    let mut done = 0u64;
    let mut cases = 0u64;
    let mut seed = b.first_seed;
    while start.elapsed().as_secs_f64() < b.seconds && done < b.ops {
        let mut ops = case_ops(seed, &b);
        let left = (b.ops - done).min(ops.len() as u64) as usize;
        ops.truncate(left);
        let o = options(seed);
        cases += 1;
        if let Err(f) = shrink::run_watched(o, &ops, CASE_LIMIT) {
            let ops_to_find = done + f.step as u64 + 1;
            let seconds_to_find = start.elapsed().as_secs_f64();
            let (shrunk, shrunk_failure) = shrink::shrink(
                o,
                &ops,
                &f,
                CASE_LIMIT,
                Duration::from_secs_f64(b.shrink_seconds),
            );
            return Outcome {
                cases,
                ops: ops_to_find,
                seconds: start.elapsed().as_secs_f64(),
                finding: Some(Finding {
                    seed,
                    failure: f,
                    ops_to_find,
                    seconds_to_find,
                    shrunk,
                    shrunk_failure,
                }),
            };
        }
        done += ops.len() as u64;
        seed += 1;
    }
    Outcome {
        cases,
        ops: done,
        seconds: start.elapsed().as_secs_f64(),
        finding: None,
    }
}

/// One invariant's first failure in a survey.
#[derive(Clone, Debug)]
pub struct Seen {
    pub invariant: &'static str,
    pub seed: u64,
    pub step: usize,
    pub ops_to_find: u64,
    pub seconds: f64,
    pub detail: String,
    pub shrunk: Vec<Op>,
}

/// Runs cases for the whole budget, a failing case ending at its first violation, and
/// records the first failure of every invariant (shrunk within `b.shrink_seconds` each):
/// what the fuzzer finds on the code as it is.
pub fn survey(b: Budget) -> (Vec<Seen>, u64, u64) {
    let start = Instant::now();
    let mut done = 0u64;
    let mut cases = 0u64;
    let mut seed = b.first_seed;
    let mut seen: Vec<Seen> = Vec::new();
    while start.elapsed().as_secs_f64() < b.seconds && done < b.ops {
        let ops = case_ops(seed, &b);
        let o = options(seed);
        cases += 1;
        match shrink::run_watched(o, &ops, CASE_LIMIT) {
            Ok(()) => done += ops.len() as u64,
            Err(f) => {
                let at = done + f.step as u64 + 1;
                done = at;
                if !seen.iter().any(|s| s.invariant == f.violation.invariant) {
                    let secs = start.elapsed().as_secs_f64();
                    let (shrunk, _) = shrink::shrink(
                        o,
                        &ops,
                        &f,
                        CASE_LIMIT,
                        Duration::from_secs_f64(b.shrink_seconds),
                    );
                    seen.push(Seen {
                        invariant: f.violation.invariant,
                        seed,
                        step: f.step,
                        ops_to_find: at,
                        seconds: secs,
                        detail: f.violation.detail.clone(),
                        shrunk,
                    });
                }
            }
        }
        seed += 1;
    }
    (seen, cases, done)
}
