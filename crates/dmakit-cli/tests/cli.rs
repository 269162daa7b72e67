//! The built binary, run as a new user would.

mod binary;

use binary::{dmakit, stderr, stdout, temp};

#[test]
fn default_simulate_prints_the_table() {
    let o = dmakit(&["simulate", "--transfers", "3000"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for p in [
        "minalign128",
        "linux-size-only",
        "exact",
        "no-bounce",
        "corrupted",
        "kmalloc",
        "untrusted",
    ] {
        assert!(out.contains(p), "{p} missing:\n{out}");
    }
}

#[test]
fn json_holds_the_documented_fields_and_the_verdicts() {
    let dir = temp("json");
    let o = dmakit(&[
        "simulate",
        "--transfers",
        "15000",
        "--seed",
        "3",
        "--json",
        "--report",
        dir.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("one JSON object");
    assert_eq!(v["scenario"], "arm64-phone");
    assert_eq!(v["seed"], 3);
    let policies = v["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 6);
    for p in policies {
        for f in [
            "name",
            "kmalloc_bytes",
            "bounce_pool_bytes",
            "transfers",
            "bounces",
            "bounced_bytes",
            "corrupted_bytes",
            "stale_bytes",
            "leaked_bytes",
            "pool_high_water_bytes",
            "top_sites",
        ] {
            assert!(!p[f].is_null(), "{f} missing in {p}");
        }
        assert_eq!(p["transfers"], 15000);
        for s in p["top_sites"].as_array().expect("sites") {
            assert!(s["site"].is_string() && s["bounces"].is_u64(), "{s}");
        }
    }
    let by = |n: &str| {
        policies
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let n = |p: &serde_json::Value, f: &str| p[f].as_u64().expect(f);
    let exact = by("exact");
    assert_eq!(
        (
            n(exact, "corrupted_bytes"),
            n(exact, "stale_bytes"),
            n(exact, "leaked_bytes")
        ),
        (0, 0, 0)
    );
    assert!(n(&exact["bounces"], "misaligned") > 0);
    // The untrusted USB4 NIC behind the IOMMU is bounced under every policy, and the
    // device's reads of its whole IOMMU pages show no one else's bytes.
    for p in policies {
        assert!(n(&p["bounces"], "untrusted") > 0, "{p}");
        assert_eq!(n(p, "leaked_bytes"), 0, "{p}");
        // Queues keep bounces mapped: the pool's high-water mark is more than one slot.
        assert!(n(p, "pool_high_water_bytes") >= 8 * 4096, "{p}");
    }
    assert!(exact["top_sites"]
        .as_array()
        .expect("sites")
        .iter()
        .any(|s| s["site"]
            .as_str()
            .is_some_and(|s| s.starts_with("usb4-nic"))));
    assert!(n(by("no-bounce"), "corrupted_bytes") > 0);
    assert!(n(by("minalign128"), "kmalloc_bytes") > n(exact, "kmalloc_bytes"));

    // The HTML report holds the four charts as SVG.
    let html = std::fs::read_to_string(dir.join("report.html")).expect("report written");
    for id in [
        "memory",
        "bounces-by-reason",
        "bounces-by-site",
        "pool-occupancy",
    ] {
        let at = html
            .find(&format!("<figure id=\"{id}\">"))
            .unwrap_or_else(|| panic!("{id}"));
        let rest = &html[at..];
        let end = rest.find("</figure>").expect("closed");
        assert!(
            rest[..end].contains("<svg") && rest[..end].contains("</svg>"),
            "{id}"
        );
        assert!(
            rest[..end].contains("<rect") || rest[..end].contains("<polyline"),
            "{id}"
        );
    }
    assert!(html.contains("i2c-touch"), "sites are named");
    // The occupancy chart says how it was sampled.
    let at = html.find("<figure id=\"pool-occupancy\">").expect("chart");
    assert!(
        html[at..].contains("sampled every"),
        "the sampling is stated"
    );
}

#[test]
fn policies_can_be_chosen() {
    let o = dmakit(&[
        "simulate",
        "--transfers",
        "2000",
        "--policy",
        "exact",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["policies"].as_array().map(Vec::len), Some(1));
}

#[test]
fn print_scenario_prints_the_built_in_file() {
    let o = dmakit(&["simulate", "--print-scenario"]);
    assert!(o.status.success());
    assert_eq!(stdout(&o), include_str!("../../../scenarios/phone.toml"));
}

#[test]
fn bad_scenarios_and_flags_fail_clearly() {
    let dir = temp("bad");
    let cases = [
        (
            "syntax.toml",
            "name = \"x\"\n[machine\ncpus = 2\n",
            "syntax.toml:2:",
        ),
        (
            "field.toml",
            "name = \"x\"\n[machine]\ncpus = 2\ncache_line = 96\nram = [{ start = 0, size = \"1GiB\" }]\nbounce_pool = \"1 MiB\"\n",
            "field.toml:4:14: `machine.cache_line`",
        ),
        (
            "pool.toml",
            "name = \"x\"\n[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = 0, size = \"1GiB\" }]\nbounce_pool = 0\n",
            "`machine.bounce_pool`",
        ),
        (
            "mask.toml",
            "name = \"x\"\n[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = \"8 GiB\", size = \"1GiB\" }]\nbounce_pool = \"none\"\n[[device]]\nname = \"old\"\ndma_bits = 32\n",
            "RAM starts at",
        ),
    ];
    for (name, text, want) in cases {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        let o = dmakit(&[
            "simulate",
            "--scenario",
            p.to_str().expect("utf-8"),
            "--transfers",
            "10",
        ]);
        assert!(!o.status.success(), "{name} accepted");
        let err = stderr(&o);
        assert!(err.contains(want), "{name}: {err}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let o = dmakit(&["simulate", "--scenario", "/nonexistent/x.toml"]);
    assert!(!o.status.success() && stderr(&o).contains("cannot read scenario file"));
    for bad in [
        vec!["simulate", "--policy", "fastest"],
        vec!["simulate", "--transfers", "0"],
        vec!["simulate", "--seed", "minus-one"],
        vec!["bench", "--granule", "0"],
        vec!["bench", "--mode", "iommu", "--domain", "sloppy"],
        vec!["frobnicate"],
    ] {
        let o = dmakit(&bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(!stderr(&o).is_empty(), "{bad:?}: no message");
    }
}

#[test]
fn help_on_every_subcommand_has_examples() {
    for sub in ["simulate", "slab", "bench"] {
        let o = dmakit(&[sub, "--help"]);
        assert!(o.status.success());
        assert!(stdout(&o).contains("Examples:"), "{sub}");
    }
}

#[test]
fn slab_reports_every_alignment() {
    let o = dmakit(&[
        "slab",
        "--slabinfo",
        "../../data/slabinfo-x86_64-vm-6.18.txt",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let a = v["alignments"].as_array().expect("rows");
    assert_eq!(a.len(), 5);
    assert!(a[4]["slab_bytes"].as_u64() > a[0]["slab_bytes"].as_u64());
    assert!(dmakit(&["slab"]).status.success());
}

#[test]
fn bench_measures_the_host() {
    let o = dmakit(&[
        "bench",
        "--mode",
        "bounce",
        "--granule",
        "1page",
        "--seconds",
        "0.2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert!(v["operations"].as_u64() > Some(0));
    assert!(v["map_median_ns"].as_u64() > Some(0));
}

#[test]
fn bench_measures_the_iommu_path() {
    for domain in ["strict", "lazy"] {
        let o = dmakit(&[
            "bench",
            "--mode",
            "iommu",
            "--domain",
            domain,
            "--threads",
            "2",
            "--seconds",
            "0.2",
            "--json",
        ]);
        assert!(o.status.success(), "{domain}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
        assert_eq!(v["mode"], "iommu");
        assert_eq!(v["domain"], domain);
        assert!(v["operations"].as_u64() > Some(0), "{v}");
        assert!(v["map_median_ns"].as_u64() > Some(0), "{v}");
    }
    let o = dmakit(&["bench", "--mode", "iommu", "--seconds", "0.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("iommu (strict) mode"), "{}", stdout(&o));
}
