//! Hostile input through the real binary: every malformed scenario and slabinfo of the
//! corpus in `tests/hostile/`, bottomless files, a model too large to hold, overlapping
//! RAM, an unwritable report directory, 200,000 devices. Each must end in one clear
//! `error:` line naming the file (and `FILE:LINE:COLUMN: field` where there is one), a
//! non-zero exit, no panic and no signal, within a time budget and `prlimit --as` of
//! 1 GiB. The controls (`hostile_inputs_controls.rs`) run the same scenarios with each
//! defect put back.

mod support;

use std::time::Duration;

use support::*;

#[test]
fn every_corpus_file_fails_cleanly_with_its_position() {
    let listed = manifest();
    let mut on_disk: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "MANIFEST"))
        .collect();
    on_disk.sort();
    let mut names: Vec<_> = listed.iter().map(|(p, _)| p.clone()).collect();
    names.sort();
    assert_eq!(
        names, on_disk,
        "every corpus file is in MANIFEST, and only those"
    );
    assert!(
        listed.len() >= 30,
        "the corpus holds {} files",
        listed.len()
    );
    let failures: Vec<String> = listed
        .iter()
        .filter_map(|(path, expect)| run_corpus_file(path, None).clean_error(expect).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} corpus files:\n{}",
        failures.len(),
        listed.len(),
        failures.join("\n")
    );
}

#[test]
fn a_cache_larger_than_the_model_holds_is_refused_with_its_position() {
    for name in ["cache_size_2gib.toml", "cache_size_1tib.toml"] {
        let path = corpus_file(name);
        let o = run_corpus_file(&path, None);
        o.assert_clean_error(&format!("{}:5:14: `machine.cache_size`: ", path.display()));
        assert!(o.stderr.contains("at most 16777216 bytes"), "{o:?}");
    }
}

#[test]
fn bottomless_inputs_fail_fast_within_bounded_memory() {
    let o = dev_zero(false, None);
    o.assert_clean_error("scenario file /dev/zero is larger than 4194304 bytes");
    let o = dev_zero(true, None);
    o.assert_clean_error("slabinfo file /dev/zero is larger than 4194304 bytes");
    assert!(o.elapsed < Duration::from_secs(10), "{o:?}");
}

#[test]
fn overlapping_ram_is_refused_with_its_position() {
    let path = corpus_file("ram_overlap.toml");
    let o = run_corpus_file(&path, None);
    o.assert_clean_error(&format!(
        "{}:7:13: `machine.ram[1]`: [0x20000000, 0x60000000) overlaps machine.ram[0] \
         [0x0, 0x40000000)",
        path.display()
    ));
}

#[test]
fn the_report_directory_is_checked_before_the_run() {
    let o = report_into_a_file(None);
    o.assert_clean_error("cannot create");
    assert!(o.stderr.contains("not-a-dir"), "{o:?}");
    assert!(
        !o.stderr.contains("missing.slabinfo"),
        "the run started: {o:?}"
    );
}

#[test]
fn a_report_directory_that_can_be_written_still_gets_its_report() {
    let dir = temp("report-ok").join("nested/out");
    let o = run(
        &[
            "simulate",
            "--transfers",
            "500",
            "--policy",
            "exact",
            "--report",
            dir.to_str().expect("utf-8"),
        ],
        None,
        4 * MEMORY_LIMIT,
        Duration::from_secs(120),
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report written");
    assert!(html.contains("<svg"), "a report with charts");
}

#[test]
fn two_hundred_thousand_devices_are_validated_within_seconds() {
    let (o, path, column) = many_devices(None, BUDGET);
    o.assert_clean_error(&format!(
        "{}:2:{column}: `device[4096]`: 200000 devices: the model runs at most 4096",
        path.display()
    ));
    // About 1 s in a debug build on an idle machine; the quadratic check took minutes.
    assert!(o.elapsed < Duration::from_secs(15), "{o:?}");
}

#[test]
fn too_many_devices_are_refused_even_when_each_is_valid() {
    let dir = temp("4097");
    let mut devices: String = (0..4097)
        .map(|i| format!("[[device]]\nname = \"d{i}\"\n"))
        .collect();
    devices.push_str("[[device]]");
    let text = dmakit_scenario::DEFAULT_SCENARIO.replacen("[[device]]", &devices, 1);
    let path = dir.join("devices.toml");
    std::fs::write(&path, text).expect("write");
    let o = run(
        &["simulate", "--scenario", path.to_str().expect("utf-8")],
        None,
        MEMORY_LIMIT,
        BUDGET,
    );
    o.assert_clean_error("`device[4096]`: 4105 devices: the model runs at most 4096");
}

#[test]
fn a_long_benchmark_keeps_its_memory_bounded() {
    // The host arena alone takes about 78 MiB. Every map+unmap pair used to keep its two
    // latencies on top: a peak of 471 MiB after 6 s on a 2-core VM, about 100 GB for the
    // longest --seconds allowed (3600). A uniform sample of 2^20 pairs takes 8 MiB.
    let o = run(
        &["bench", "--seconds", "6", "--threads", "2"],
        None,
        MEMORY_LIMIT,
        BUDGET,
    );
    assert_eq!(o.code, Some(0), "{o:?}");
    assert!(o.stdout.contains("map+unmap pairs"), "{o:?}");
    assert!(o.peak_rss_kib > 0, "measured: {o:?}");
    assert!(
        o.peak_rss_kib < 128 * 1024,
        "peak RSS {} KiB: {o:?}",
        o.peak_rss_kib
    );
}
