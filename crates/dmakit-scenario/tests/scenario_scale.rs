//! The trade-off at the machine's scale: the built-in phone is reproducible (shipped
//! slabinfo, a rate per driver), its slabinfo-scale memory is what `dmakit slab` computes,
//! and the per-driver loads add up to the mapper's own totals.

use std::sync::atomic::AtomicU64;

use dmakit_scenario::footprint::{kmalloc_footprints, SHIPPED_SLABINFO};
use dmakit_scenario::model::SlabinfoSource;
use dmakit_scenario::rates::PerSecond;
use dmakit_scenario::slabinfo::parse_slabinfo;
use dmakit_scenario::{default_scenario, parse_scenario, simulate, Policy, RunOptions};

#[test]
fn the_built_in_phone_uses_the_shipped_slabinfo_and_rates_every_driver() {
    let sc = default_scenario().unwrap();
    assert_eq!(sc.churn.slabinfo, SlabinfoSource::Shipped);
    for d in &sc.drivers {
        assert!(d.rate.is_some_and(|r| r > 0.0), "{} has no rate", d.name);
    }
    let display = sc.drivers.iter().find(|d| d.name == "display").unwrap();
    assert_eq!(display.rate, Some(60.0), "one scan-out per frame at 60 Hz");
}

#[test]
fn scale_and_loads_of_a_run() {
    let mut sc = default_scenario().unwrap();
    sc.churn.live_objects = 3_000;
    let opts = RunOptions {
        seed: 5,
        transfers: 4_000,
        top_sites: 3,
        log_mappings_of: None,
        threads: dmakit_scenario::workers::machine_cores(),
    };
    let r = simulate(&sc, &Policy::ALL, &opts, &AtomicU64::new(0)).unwrap();

    // Memory at the slabinfo's scale is what `dmakit slab` computes for each alignment.
    let slab = kmalloc_footprints(&parse_slabinfo(SHIPPED_SLABINFO).unwrap());
    let at = |a: u64| slab.iter().find(|f| f.min_align == a).unwrap().slab_bytes;
    let s = &r.machine_scale;
    assert_eq!(
        (s.line, s.min_align_8_bytes, s.line_aligned_bytes),
        (128, at(8), at(128))
    );
    assert_eq!(s.of("minalign128").unwrap().kmalloc_bytes, at(128));
    assert_eq!(s.of("exact").unwrap().kmalloc_bytes, at(8));

    for p in &r.policies {
        // Every bounce and every copied byte is some driver's.
        let bounces: u64 = p.drivers.iter().map(|d| d.bounces).sum();
        let copied: u64 = p.drivers.iter().map(|d| d.bytes_copied).sum();
        assert_eq!(bounces, p.bounces_total(), "{}", p.name);
        assert_eq!(copied, p.bounced_bytes, "{}", p.name);
        assert!(p.drivers.iter().all(|d| d.operations > 0), "{}", p.name);
        assert_eq!(p.per_second, PerSecond::of(&p.drivers));
        assert_eq!(p.per_second.drivers_counted, sc.drivers.len());
        let ops: f64 = sc.drivers.iter().filter_map(|d| d.rate).sum();
        assert_eq!(p.per_second.operations, ops);
    }
    let by = |n: &str| r.policies.iter().find(|p| p.name == n).unwrap();
    // The exact rule bounces what the old way does not: more bounces per second.
    assert!(by("exact").per_second.bounces > by("minalign128").per_second.bounces);
    assert!(by("exact").per_second.bytes_copied > by("linux-size-only").per_second.bytes_copied);
}

#[test]
fn rates_and_slabinfo_sources_are_checked() {
    const HEAD: &str = "name = \"t\"\n[machine]\ncpus = 2\ncache_line = 64\nram = [{ start = \"0\", size = \"1 GiB\" }]\nbounce_pool = \"4 MiB\"\n";
    let driver = |rate: &str| {
        format!(
            "{HEAD}[[device]]\nname = \"d\"\n[[driver]]\nname = \"x\"\ndevice = \"d\"\nweight = 1\n{rate}\n[[driver.transfer]]\nsite = \"s\"\ndirection = \"to-device\"\nsize = 4\nbuffer = \"kmalloc\"\n"
        )
    };
    for bad in ["rate = 0", "rate = -3", "rate = 1e10", "rate = nan"] {
        let e = parse_scenario(&driver(bad), "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("bad.toml:13:") && e.contains("driver[0].rate"),
            "{bad}: {e}"
        );
    }
    let sc = parse_scenario(&driver("rate = 250.5"), "ok.toml").unwrap();
    assert_eq!(sc.drivers[0].rate, Some(250.5));
    assert_eq!(
        parse_scenario(&driver(""), "ok.toml").unwrap().drivers[0].rate,
        None
    );
    let live = parse_scenario(
        &format!("{}[kmalloc]\nslabinfo = \"live\"\n", driver("")),
        "ok.toml",
    );
    assert_eq!(live.unwrap().churn.slabinfo, SlabinfoSource::Live);
}
