//! `dmakit replay` and `simulate --emit-trace`, through the built binary.

mod binary;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use binary::{dmakit, stderr, stdout, temp};

fn known() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../dmakit-scenario/tests/data/linux-trace/known-answers.txt")
        .display()
        .to_string()
}

#[test]
fn the_known_trace_replays_to_its_answers_in_100_columns() {
    let o = dmakit(&["replay", &known()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for l in out.lines() {
        assert!(
            l.chars().count() <= 100,
            "{} columns: {l}",
            l.chars().count()
        );
    }
    for want in [
        "fe320000.mmc",
        "usb_stor_Bulk_transport",
        "mark this allocation",
        "neighbours",
    ] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let wide = stdout(&dmakit(&["replay", &known(), "--wide"]));
    assert!(wide.lines().any(|l| l.chars().count() > 100));
    assert!(wide.contains("inbound") && wide.contains("share of exact"));
}

#[test]
fn json_holds_the_figures() {
    let dir = temp("report");
    let o = dmakit(&[
        "replay",
        &known(),
        "--cache-line",
        "64",
        "--json",
        "--report",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert_eq!(v["cache_line"], 64);
    assert_eq!(v["total"]["exact_bounces"], 4);
    assert_eq!(v["total"]["size_only_bounces"], 2);
    assert_eq!(v["total"]["size_only_misses"], 2);
    assert_eq!(v["lost_events"], 3);
    assert_eq!(v["devices"].as_array().map(Vec::len), Some(2));
    assert!(v["chains"][0]["suggestion"]
        .as_str()
        .unwrap()
        .starts_with("mark this allocation"));
    let page = std::fs::read_to_string(dir.join("replay.html")).expect("page written");
    for id in [
        "bounces-by-rule",
        "bytes-by-rule",
        "bounces-per-device",
        "bounces-by-chain",
    ] {
        assert!(
            page.contains(&format!("<figure id=\"{id}\">\n<svg")),
            "{id}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn malformed_traces_fail_with_the_line_or_are_skipped() {
    let dir = temp("bad");
    let bad = dir.join("bad.txt");
    let text = std::fs::read_to_string(known()).unwrap();
    let broken = text.replacen("size=13 ", "size=thirteen ", 1);
    std::fs::write(&bad, broken).unwrap();
    let bad = bad.to_str().unwrap();
    let o = dmakit(&["replay", bad]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("bad.txt: line 13: dma_map_phys: `size=thirteen`"),
        "{e}"
    );
    let o = dmakit(&["replay", bad, "--lenient"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("Skipped 1 malformed lines"),
        "{}",
        stdout(&o)
    );
    for (args, want) in [
        (
            vec!["replay", "/nonexistent/trace.txt"],
            "cannot read /nonexistent/trace.txt",
        ),
        (vec!["replay", &known(), "--cache-line", "32"], "64 or 128"),
    ] {
        let o = dmakit(&args);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    // An input without newlines fails at the line limit, at once.
    let started = Instant::now();
    let o = dmakit(&["replay", "/dev/zero"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 1: longer than 65536 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn simulate_emits_a_trace_that_replays() {
    let dir = temp("emit");
    let trace = dir.join("trace.txt");
    let t = trace.to_str().unwrap();
    let o = dmakit(&[
        "simulate",
        "--transfers",
        "3000",
        "--policy",
        "exact",
        "--json",
        "--emit-trace",
        t,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let sim: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let o = dmakit(&["replay", t, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    // Every transfer but the display's (allocated, not mapped) is one mapping.
    let mapped = r["total"]["mappings"].as_u64().unwrap() + r["failed_mappings"].as_u64().unwrap();
    assert!(mapped > 2_500 && mapped <= 3_000, "{mapped}");
    // The replay's exact bounces are the run's misaligned ones plus those of the untrusted
    // device, bounced first for being untrusted.
    let misaligned = sim["policies"][0]["bounces"]["misaligned"]
        .as_u64()
        .unwrap();
    let untrusted = sim["policies"][0]["bounces"]["untrusted"].as_u64().unwrap();
    let exact = r["total"]["exact_bounces"].as_u64().unwrap();
    assert!(
        exact >= misaligned && exact <= misaligned + untrusted,
        "{exact} {misaligned}"
    );
    assert!(dmakit(&[
        "simulate",
        "--transfers",
        "10",
        "--emit-trace",
        "/nonexistent/t.txt"
    ])
    .status
    .code()
    .is_some_and(|c| c != 0));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn help_has_examples_and_the_recording_recipe() {
    let o = dmakit(&["replay", "--help"]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(
        out.contains("Examples:") && out.contains("events/dma/enable"),
        "{out}"
    );
}
