//! The scenario runner: the built-in phone under the four policies, and scenario file errors.

use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use dmakit_scenario::churn::SizeDistribution;
use dmakit_scenario::model::SlabinfoSource;
use dmakit_scenario::{
    default_scenario, parse_scenario, run_policy, simulate, Policy, RunOptions, Scenario,
};

fn phone() -> Scenario {
    let mut sc = default_scenario().expect("built-in scenario parses");
    sc.churn.slabinfo = SlabinfoSource::Shipped;
    sc.churn.live_objects = 5_000;
    sc
}

fn opts(transfers: u64) -> RunOptions {
    RunOptions {
        seed: 7,
        transfers,
        top_sites: 5,
        log_mappings_of: None,
        threads: dmakit_scenario::workers::machine_cores(),
    }
}

#[test]
fn phone_under_four_policies() {
    let sc = phone();
    let progress = AtomicU64::new(0);
    let r = simulate(&sc, &Policy::ALL, &opts(20_000), &progress).expect("runs");
    assert_eq!(progress.into_inner(), 20_000 * Policy::ALL.len() as u64);
    let by = |n: &str| r.policies.iter().find(|p| p.name == n).expect(n);
    for p in &r.policies {
        eprintln!(
            "{}: kmalloc {} pool {} bounces {:?} bytes {} wrong {}/{}/{} map errors {} hw {} {:?} {:?} {:?}",
            p.name, p.kmalloc_bytes, p.bounce_pool_bytes, p.bounces, p.bounced_bytes,
            p.corrupted_bytes, p.stale_bytes, p.leaked_bytes, p.map_errors,
            p.pool_high_water_bytes, p.elapsed, p.top_sites, p.first_errors
        );
        assert_eq!(p.transfers, 20_000);
        assert_eq!(p.map_errors, 0, "{:?}", p.first_map_error);
        assert_eq!(p.device_faults, 0);
    }
    let exact = by("exact");
    assert_eq!(exact.wrong_bytes(), 0, "{:?}", exact.first_errors);
    assert!(exact.bounces["misaligned"] > 0);
    assert!(exact.bounces["above-mask"] > 0);
    assert!(!exact.top_sites.is_empty());
    assert!(by("no-bounce").corrupted_bytes > 0);
    assert!(by("linux-size-only").wrong_bytes() > 0);
    assert_eq!(
        by("minalign128").wrong_bytes(),
        0,
        "{:?}",
        by("minalign128").first_errors
    );
    assert!(by("minalign128").kmalloc_bytes > exact.kmalloc_bytes);
    assert_eq!(by("minalign128").bounces["misaligned"], 0);
}

#[test]
fn runs_are_deterministic() {
    let sc = phone();
    let sizes =
        SizeDistribution::from_slabinfo(dmakit_scenario::footprint::SHIPPED_SLABINFO).unwrap();
    let p = AtomicU64::new(0);
    let a = run_policy(&sc, Policy::Exact, &sizes, &opts(3_000), &p).unwrap();
    let b = run_policy(&sc, Policy::Exact, &sizes, &opts(3_000), &p).unwrap();
    assert_eq!(
        (a.kmalloc_bytes, &a.bounces, a.bounced_bytes, &a.top_sites),
        (b.kmalloc_bytes, &b.bounces, b.bounced_bytes, &b.top_sites)
    );
}

#[test]
fn the_report_is_the_same_on_one_thread_and_on_several() {
    let sc = phone();
    let run = |threads: usize| {
        let o = RunOptions {
            threads: NonZeroUsize::new(threads).expect("non-zero"),
            log_mappings_of: Some(Policy::Exact),
            ..opts(4_000)
        };
        let mut r = simulate(&sc, &Policy::ALL, &o, &AtomicU64::new(0)).expect("runs");
        // The only figure that changes run to run: how long each policy took.
        for p in &mut r.policies {
            p.elapsed = Duration::ZERO;
        }
        r
    };
    let one = run(1);
    let names: Vec<_> = one.policies.iter().map(|p| p.name.as_str()).collect();
    let all: Vec<_> = Policy::ALL.iter().map(|p| p.name()).collect();
    assert_eq!(names, all, "reports in the order of the policies");
    for threads in [2, 3, Policy::ALL.len() + 1] {
        assert!(run(threads) == one, "{threads} threads: another report");
    }
}

fn err(src: &str) -> String {
    parse_scenario(src, "bad.toml")
        .expect_err("must be refused")
        .to_string()
}

const HEAD: &str = "name = \"t\"\n[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = \"0\", size = \"1 GiB\" }]\nbounce_pool = \"4 MiB\"\n";

#[test]
fn scenario_errors_name_file_line_and_field() {
    let e = err("name = \"t\"\n[machine]\ncpus = \"many\"\n");
    assert!(e.starts_with("bad.toml:3:"), "{e}");
    let e = err(&format!("{HEAD}[[device]]\nname = \"d\"\ndma_bits = 80\n"));
    assert!(
        e.starts_with("bad.toml:9:") && e.contains("device[0].dma_bits"),
        "{e}"
    );
    let e = err(&format!("{HEAD}[[device]]\nname = \"d\"\ncolour = 3\n"));
    assert!(
        e.starts_with("bad.toml:9:") && e.contains("unknown field"),
        "{e}"
    );
    let e = err(&HEAD.replace("\"4 MiB\"", "0"));
    assert!(
        e.contains("machine.bounce_pool") && e.contains("256 KiB"),
        "{e}"
    );
    let e = err(&format!(
        "{}[[device]]\nname = \"d\"\ndma_bits = 20\n",
        HEAD.replace("start = \"0\"", "start = \"2 GiB\"")
    ));
    assert!(e.contains("RAM starts at 0x80000000"), "{e}");
    let e = err(&format!(
        "{HEAD}[[device]]\nname = \"d\"\n[[driver]]\nname = \"x\"\ndevice = \"e\"\nweight = 1\n[[driver.transfer]]\nsite = \"s\"\ndirection = \"in\"\nsize = 4\nbuffer = \"kmalloc\"\n"
    ));
    assert!(
        e.starts_with("bad.toml:11:") && e.contains("driver[0].device"),
        "{e}"
    );
}
