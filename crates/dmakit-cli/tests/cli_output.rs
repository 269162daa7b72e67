//! What `dmakit simulate` tells: the headline at the slabinfo's scale, the cost per
//! second, the verdicts; the same output run to run; 100 columns unless `--wide` (and the
//! same width for `slab` and `bench`).

mod binary;

use binary::dmakit;

fn ok(args: &[&str]) -> String {
    let o = dmakit(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("UTF-8")
}

const SHIPPED: &str = "../../data/slabinfo-x86_64-vm-6.18.txt";

/// A short run of the built-in phone with the bounce cost given.
fn simulate(extra: &[&str]) -> String {
    let mut args = vec![
        "simulate",
        "--transfers",
        "2500",
        "--bounce-cost-ns",
        "800,256",
    ];
    args.extend_from_slice(extra);
    ok(&args)
}

fn widest(text: &str) -> usize {
    text.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

#[test]
fn the_same_seed_gives_the_same_output_byte_for_byte() {
    let text = simulate(&["--seed", "4"]);
    assert_eq!(text, simulate(&["--seed", "4"]));
    let json = simulate(&["--seed", "4", "--json"]);
    assert_eq!(json, simulate(&["--seed", "4", "--json"]));
    // The seed matters: another gives other counts.
    assert_ne!(json, simulate(&["--seed", "5", "--json"]));
}

#[test]
fn the_output_is_the_same_on_one_thread_and_on_several() {
    for extra in [&[][..], &["--json"][..]] {
        let one = simulate(&[&["--threads", "1"][..], extra].concat());
        for n in ["2", "7"] {
            let text = simulate(&[&["--threads", n][..], extra].concat());
            assert_eq!(text, one, "--threads {n} {extra:?}");
        }
    }
    let o = binary::dmakit(&["simulate", "--threads", "0"]);
    assert!(!o.status.success(), "0 threads must be refused");
}

#[test]
fn the_headline_is_the_slabinfo_figure_dmakit_slab_computes() {
    let slab: serde_json::Value =
        serde_json::from_str(&ok(&["slab", "--slabinfo", SHIPPED, "--json"])).expect("json");
    let at = |a: u64| {
        slab["alignments"]
            .as_array()
            .expect("rows")
            .iter()
            .find(|r| r["min_align"] == a)
            .and_then(|r| r["slab_bytes"].as_u64())
            .expect("row")
    };
    let v: serde_json::Value = serde_json::from_str(&simulate(&["--json"])).expect("json");
    let s = &v["machine_scale"];
    assert_eq!(s["min_align_8_bytes"].as_u64(), Some(at(8)));
    assert_eq!(s["line_aligned_bytes"].as_u64(), Some(at(128)));
    assert_eq!(s["saved_bytes"].as_u64(), Some(at(128) - at(8)));
    assert_eq!(v["bounce_cost"]["source"], "given");
    assert_eq!(v["bounce_cost"]["fixed_ns"], 800.0);
    assert_eq!(v["bounce_cost"]["ns_per_byte"], 0.25);
    let verdicts = v["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 6);
    for (p, verdict) in v["policies"]
        .as_array()
        .expect("policies")
        .iter()
        .zip(verdicts)
    {
        assert_eq!(p["name"], verdict["policy"]);
        // CPU per second: 800 ns per bounce plus 0.25 ns per byte, at the drivers' rates.
        let ps = &p["per_second"];
        let cpu = 800.0 * ps["bounces"].as_f64().expect("bounces")
            + 0.25 * ps["bytes_copied"].as_f64().expect("bytes");
        let got = verdict["cpu_ns_per_second"].as_f64().expect("cpu");
        assert!((got - cpu).abs() <= 1e-6 * cpu.max(1.0), "{got} vs {cpu}");
        assert!(ps["bounces"].as_f64() > Some(0.0), "{p}");
        assert_eq!(verdict["corrupted_bytes"], p["corrupted_bytes"]);
        let saved = verdict["kmalloc_saved_bytes"].as_u64();
        let want = if p["name"] == "minalign128" {
            0
        } else {
            at(128) - at(8)
        };
        assert_eq!(saved, Some(want), "{verdict}");
    }

    let text = simulate(&[]);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    let headline = format!("8-byte kmalloc saves {}", mib(at(128) - at(8)));
    assert!(text.contains(&headline), "{headline}:\n{text}");
    assert!(text.contains("on this slabinfo"), "{text}");
    assert!(text.contains("given with --bounce-cost-ns"), "{text}");
    for p in ["minalign128", "linux-size-only", "exact", "no-bounce"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(p) && l.contains("ms CPU/s")),
            "no verdict for {p}:\n{text}"
        );
    }
}

#[test]
fn default_outputs_fit_100_columns_and_wide_keeps_every_column() {
    let text = simulate(&[]);
    assert!(widest(&text) <= 100, "{} columns:\n{text}", widest(&text));
    let wide = simulate(&["--wide"]);
    assert!(widest(&wide) > 100, "--wide does not wrap");
    let header_has = |out: &str, column: &str| {
        out.lines()
            .filter(|l| l.starts_with("| policy"))
            .any(|l| l.split('|').any(|c| c.trim() == column))
    };
    for column in ["transfers", "min", "CPU %"] {
        assert!(!header_has(&text, column), "{column} is wide-only:\n{text}");
        assert!(header_has(&wide, column), "{column} missing:\n{wide}");
    }
    assert!(header_has(&text, "bounces/s") && header_has(&text, "untrusted"));
    // The measured cost is said to be measured.
    let measured = ok(&["simulate", "--transfers", "300", "--policy", "exact"]);
    assert!(measured.contains("measured on this host"), "{measured}");
    assert!(widest(&measured) <= 100, "{measured}");
    for args in [
        &["slab", "--slabinfo", SHIPPED][..],
        &["slab"],
        &["bench", "--seconds", "0.1"],
        &[
            "bench",
            "--mode",
            "iommu",
            "--domain",
            "lazy",
            "--seconds",
            "0.1",
        ],
    ] {
        let out = ok(args);
        assert!(
            widest(&out) <= 100,
            "{args:?}: {} columns:\n{out}",
            widest(&out)
        );
    }
}

#[test]
fn the_slabinfo_can_be_chosen_and_bad_choices_fail_clearly() {
    let text = simulate(&["--slabinfo", SHIPPED, "--policy", "exact"]);
    assert!(
        text.contains(&format!("kmalloc sizes from {SHIPPED}")),
        "{text}"
    );
    let o = dmakit(&["simulate", "--slabinfo", "/nonexistent/slabinfo"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("cannot read slabinfo file"),
        "{err}"
    );
    let o = dmakit(&["simulate", "--bounce-cost-ns", "fast"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("nanoseconds per bounced mapping"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_verdict_names_the_mappings_a_policy_could_not_do() {
    // The wearable has no SWIOTLB: the exact rule has nowhere to bounce, so its memory
    // saving is paid for in failed mappings, and its verdict must say so; `auto` keeps
    // kmalloc line-aligned and fails none.
    let text = simulate(&[
        "--scenario",
        "../../scenarios/wearable.toml",
        "--policy",
        "exact,auto",
    ]);
    let verdict = |policy: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(policy) && l.contains(" pays "))
            .unwrap_or_else(|| panic!("no verdict for {policy} in:\n{text}"))
            .to_string()
    };
    // (The line may wrap at 100 columns after "mappings".)
    assert!(verdict("exact").contains(" mappings"), "{text}");
    assert!(!verdict("auto").contains(" mappings"), "{text}");
}
