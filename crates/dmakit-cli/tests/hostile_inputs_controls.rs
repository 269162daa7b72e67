#![cfg(feature = "reintroduce-defects")]
//! Controls for `hostile_inputs.rs`: each defect of finding 12 put back (in the binary,
//! through `DMAKIT_PUT_BACK`), and the same scenario observes the old failure. Run with
//! `cargo test -p dmakit-cli --features reintroduce-defects --test hostile_inputs_controls`.

mod support;

use std::time::Duration;

use dmakit::reintroduce::{put_back, Defect};
use support::*;

/// The name the binary knows `d` by.
fn name(d: Defect) -> String {
    format!("{d:?}")
}

#[test]
fn control_a_cache_of_any_size_exhausts_memory() {
    let d = Defect::CliCacheSizeUnbounded;
    let _g = put_back(Some(d));
    for f in ["cache_size_2gib.toml", "cache_size_1tib.toml"] {
        let o = run_corpus_file(&corpus_file(f), Some(&name(d)));
        assert!(o.ran_out_of_memory(), "{f}: {o:?}");
        assert!(!o.stderr.contains("machine.cache_size"), "{f}: {o:?}");
    }
}

#[test]
fn control_bottomless_inputs_exhaust_memory() {
    let d = Defect::CliInputUnbounded;
    let _g = put_back(Some(d));
    for slab in [false, true] {
        let o = dev_zero(slab, Some(&name(d)));
        assert!(o.ran_out_of_memory(), "slab {slab}: {o:?}");
        assert!(!o.stderr.contains("larger than"), "slab {slab}: {o:?}");
    }
}

#[test]
fn control_overlapping_ram_is_merged_without_a_word() {
    let d = Defect::CliRamOverlapMerged;
    let _g = put_back(Some(d));
    let o = run_corpus_file(&corpus_file("ram_overlap.toml"), Some(&name(d)));
    assert_eq!(o.code, Some(0), "the run goes ahead: {o:?}");
    assert!(!o.stderr.contains("overlap"), "{o:?}");
    assert!(o.stdout.contains("200"), "200 transfers ran: {o:?}");
}

#[test]
fn control_the_report_directory_is_checked_after_the_run_started() {
    let d = Defect::CliReportCheckedLate;
    let _g = put_back(Some(d));
    let o = report_into_a_file(Some(&name(d)));
    assert!(o.code.is_some_and(|c| c != 0), "{o:?}");
    assert!(
        o.stderr.contains("missing.slabinfo"),
        "the run started: {o:?}"
    );
    assert!(!o.stderr.contains("cannot create"), "{o:?}");
}

#[test]
fn control_quadratic_device_names_take_minutes() {
    let d = Defect::CliDeviceValidationQuadratic;
    let _g = put_back(Some(d));
    // Measured against the fixed binary in the same test, so machine load cancels out: the
    // fixed validation answers in about 1 s; the quadratic one still runs after ten times
    // as long (it takes about 27 s on a 2-core VM).
    let (fixed, _, _) = many_devices(None, Duration::from_secs(30));
    assert!(!fixed.timed_out, "{fixed:?}");
    let budget = (fixed.elapsed * 10).max(Duration::from_secs(5));
    let (o, _, _) = many_devices(Some(&name(d)), budget);
    assert!(o.timed_out, "{o:?}");
}
