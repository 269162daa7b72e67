#![cfg(feature = "reintroduce-defects")]
//! Controls of the cross-path fuzzer: each defect of issue 11, put back alone, is found by
//! the same fuzzer (`fuzz/`) from the same seeds within its budget, by one of the
//! invariants meant to catch it; with no defect put back the same budget finds nothing.
//!
//! `cargo test -p dmakit-sim --features reintroduce-defects --test fuzz_controls --
//! --nocapture` prints the table for RELIABILITY.md (defect, operations to find, seconds,
//! invariant). `DMAKIT_FUZZ_CONTROL_SECONDS` sets the per-defect budget (default 60).

mod fuzz;

use dmakit::reintroduce::{put_back, Defect};
use fuzz::{Budget, Outcome};

/// The invariants that may catch each defect (see the table in `fuzz/mod.rs`).
fn expected(d: Defect) -> &'static [&'static str] {
    match d {
        Defect::LeadInSlotsFreed => &[
            "bounce-footprints-overlap",
            "isolation",
            "byte-oracle",
            "device-sees-wrong-bytes",
        ],
        Defect::CheckerForgetsBeforeValidation => &[
            "checker-report-on-valid-call",
            "checker-not-empty-at-end",
            "release-reports-leak",
        ],
        Defect::IommuSgUncounted => &["statistics-miss-mappings"],
        Defect::LazyDomainParksBounces => &[
            "exhausted-while-only-unmapped-hold-it",
            "pool-not-empty-at-end",
            "deferred-left-at-end",
        ],
        Defect::DeferHookUnderLock => &["hang"],
        Defect::DeferUnneededMapping => &["deferred-without-bounce"],
        Defect::DeferTooLarge => &["too-large-deferred", "deferred-left-at-end"],
        Defect::DeferSurvivesRelease => &["callback-after-release", "deferred-left-at-end"],
        Defect::DeferSingleFifo => &["deferred-behind-another-pool", "deferred-without-bounce"],
        Defect::MaskLimitedNoGrowth => &["no-bounce-pool-with-a-pool"],
        // A fragmented pool also leaves a deferred request waiting forever.
        Defect::CoherentNoCoalesce => &["exhausted-while-free", "deferred-left-at-end"],
        Defect::IommuFaultLeaksSlot => &["faulting-unmap-leaks", "pool-not-empty-at-end"],
        Defect::CheckerRoundingOverflow => &["panic"],
        Defect::SubGranuleAllocNotRounded => &["sub-granule-alloc-refused"],
        Defect::HugeRangeAccepted => &["huge-range-accepted", "panic"],
        Defect::FailedBounceRaisesHighWater => &["failed-call-changed-pool"],
        Defect::DmaBitsAbove64Accepted => &["dma-bits-65-accepted"],
        Defect::EmptyUnmapSgInconsistent => &["paths-disagree"],
        Defect::TooLargeReportsZero => &["too-large-says-nothing"],
        Defect::DetachGoesDirect => &["ok-mapping-unusable"],
        Defect::SgUnwindKeepsHighWater => &["failed-call-changed-pool"],
        Defect::IommuSyncStraysIntoNeighbour => &["invalid-call-accepted"],
        Defect::SgPiecesKeptAtUnmap => &["sg-pieces-leaked", "sg-table-full-while-free"],
        Defect::SgPieceTableOvercounts => &["sg-table-full-while-free"],
        Defect::PackedRunShortByALine => &[
            "bounce-footprints-overlap",
            "byte-oracle",
            "device-sees-wrong-bytes",
            "isolation",
        ],
        _ => &[],
    }
}

fn budget() -> Budget {
    let seconds = std::env::var("DMAKIT_FUZZ_CONTROL_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60.0);
    Budget {
        first_seed: 1,
        seconds,
        ops: u64::MAX,
        classes: fuzz::ops::Classes::ALL,
        devices: &fuzz::ALL_DEVICES,
        shrink_seconds: 3.0,
    }
}

struct Row {
    defect: Defect,
    out: Outcome,
}

impl Row {
    fn invariant(&self) -> &'static str {
        self.out
            .finding
            .as_ref()
            .map_or("(not found)", |f| f.failure.violation.invariant)
    }
    fn ok(&self) -> bool {
        expected(self.defect).contains(&self.invariant())
    }
}

#[test]
fn every_defect_put_back_is_found_by_the_fuzzer() {
    // A defect that hangs leaves its case thread spinning: run it last.
    // The command's own defects are caught by its controls (`dmakit-cli`'s
    // `hostile_inputs_controls`), not by the mapping layer's fuzzer.
    let mut order: Vec<Defect> = Defect::ALL.into_iter().filter(|d| !d.in_cli()).collect();
    order.sort_by_key(|&d| d == Defect::DeferHookUnderLock);
    let mut rows = Vec::new();
    for d in order {
        let out = {
            let _g = put_back(Some(d));
            fuzz::run(budget())
        };
        rows.push(Row { defect: d, out });
    }
    eprintln!("| defect | operations to find | seconds | invariant | seed, step |");
    eprintln!("|---|---:|---:|---|---|");
    for r in &rows {
        let (ops, secs, at) = match &r.out.finding {
            Some(f) => (
                f.ops_to_find.to_string(),
                format!("{:.1}", f.seconds_to_find),
                format!("{}, {}", f.seed, f.failure.step),
            ),
            None => (
                format!("> {}", r.out.ops),
                format!("> {:.0}", r.out.seconds),
                "-".into(),
            ),
        };
        eprintln!(
            "| {:?} | {ops} | {secs} | {} | {at} |",
            r.defect,
            r.invariant()
        );
    }
    for r in rows.iter().filter(|r| r.out.finding.is_some()).take(3) {
        eprintln!(
            "{:?}:\n{}",
            r.defect,
            r.out.finding.as_ref().unwrap().report()
        );
    }
    let missed: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            format!(
                "{:?} ({}; expected one of {:?})",
                r.defect,
                r.invariant(),
                expected(r.defect)
            )
        })
        .collect();
    assert!(
        missed.is_empty(),
        "not found by the invariant meant for it: {missed:#?}"
    );
}

#[test]
fn with_no_defect_put_back_the_same_budget_finds_nothing() {
    let _g = put_back(None);
    let out = fuzz::run(budget());
    eprintln!(
        "baseline: {} cases, {} operations in {:.1} s",
        out.cases, out.ops, out.seconds
    );
    if let Some(f) = &out.finding {
        panic!("{}", f.report());
    }
}
