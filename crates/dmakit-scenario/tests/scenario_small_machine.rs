//! The small-machine variant end to end: the low-end scenario (`scenarios/wearable.toml`)
//! and the phone under the growable coherent pool and the automatic kmalloc policy.

use std::sync::atomic::AtomicU64;

use dmakit_scenario::model::SlabinfoSource;
use dmakit_scenario::refill::{INITIAL_BYTES, MAX_OBJECT};
use dmakit_scenario::{
    default_scenario, parse_scenario, simulate, Policy, RunOptions, Scenario, SimulationReport,
};

const WEARABLE: &str = include_str!("../../../scenarios/wearable.toml");

fn wearable() -> Scenario {
    let mut sc = parse_scenario(WEARABLE, "scenarios/wearable.toml").expect("wearable parses");
    sc.churn.live_objects = 5_000;
    sc
}

fn phone() -> Scenario {
    let mut sc = default_scenario().expect("built-in scenario parses");
    sc.churn.slabinfo = SlabinfoSource::Shipped;
    sc.churn.live_objects = 5_000;
    sc
}

fn run(sc: &Scenario, policies: &[Policy]) -> SimulationReport {
    let opts = RunOptions {
        seed: 11,
        transfers: 15_000,
        top_sites: 3,
        log_mappings_of: None,
        threads: dmakit_scenario::workers::machine_cores(),
    };
    simulate(sc, policies, &opts, &AtomicU64::new(0)).expect("runs")
}

#[test]
fn on_the_wearable_auto_keeps_kmalloc_line_aligned_and_nothing_breaks() {
    let sc = wearable();
    assert_eq!(sc.line(), 64);
    let r = run(&sc, &[Policy::Auto, Policy::Exact, Policy::CoherentPool]);
    let by = |n: &str| r.policies.iter().find(|p| p.name == n).expect(n);
    let auto = by("auto");
    // No SWIOTLB, non-coherent devices: nothing could repair a shared line.
    assert_eq!(
        (auto.kmalloc_min_align, auto.pool_kind.as_str()),
        (64, "none")
    );
    assert_eq!((auto.wrong_bytes(), auto.map_errors), (0, 0), "{auto:?}");
    assert_eq!(auto.bounces_total(), 0);
    // 8-byte kmalloc with no pool cannot map what must be bounced: why auto chose 64.
    let exact = by("exact");
    assert_eq!(exact.kmalloc_min_align, 8);
    assert!(exact.map_errors > 0, "{exact:?}");
    assert!(exact
        .first_map_error
        .as_deref()
        .unwrap()
        .contains("no bounce pool"));
    // The coherent pool makes 8-byte kmalloc work with a pool a thousand times smaller
    // than the phone's SWIOTLB.
    let cp = by("coherent-pool");
    assert_eq!(
        (cp.kmalloc_min_align, cp.pool_kind.as_str()),
        (8, "coherent")
    );
    assert_eq!((cp.wrong_bytes(), cp.map_errors), (0, 0), "{cp:?}");
    assert!(cp.bounces_total() > 0);
    assert!(cp.bounce_pool_bytes <= 4 * INITIAL_BYTES, "{cp:?}");
    // At the slabinfo's scale, auto pays the line-aligned kmalloc; coherent-pool does not.
    let k = |n: &str| r.machine_scale.of(n).expect(n).kmalloc_bytes;
    assert_eq!(k("auto"), r.machine_scale.line_aligned_bytes);
    assert_eq!(k("coherent-pool"), r.machine_scale.min_align_8_bytes);
    assert!(k("auto") > k("coherent-pool"));
}

#[test]
fn on_the_phone_auto_keeps_8_bytes_and_the_coherent_pool_grows_from_its_worker() {
    let r = run(&phone(), &[Policy::Auto, Policy::CoherentPool]);
    let auto = &r.policies[0];
    // The phone's 64 MiB SWIOTLB serves every non-coherent device.
    assert_eq!(
        (auto.kmalloc_min_align, auto.pool_kind.as_str()),
        (8, "swiotlb")
    );
    assert_eq!(auto.bounce_pool_bytes, 64 << 20);
    assert_eq!((auto.wrong_bytes(), auto.map_errors), (0, 0), "{auto:?}");
    let cp = &r.policies[1];
    assert_eq!(cp.pool_kind, "coherent");
    assert_eq!((cp.wrong_bytes(), cp.map_errors), (0, 0), "{cp:?}");
    // The queues need more than the first chunk: the worker grew the pool, between
    // operations, and every mapping found room.
    let g = cp.pool_growth.as_ref().expect("growth reported");
    assert!(g.growth_events >= 1, "{g:?}");
    assert_eq!(g.growth_failures, 0);
    assert_eq!(g.size_over_time.len() as u64, 1 + g.growth_events);
    assert_eq!(g.size_over_time[0], (0, INITIAL_BYTES));
    assert!(g
        .size_over_time
        .windows(2)
        .all(|w| w[0].1 < w[1].1 && w[0].0 <= w[1].0));
    assert_eq!(g.size_over_time.last().unwrap().1, cp.bounce_pool_bytes);
    assert!(cp.pool_high_water_bytes > INITIAL_BYTES / 2);
    assert!(cp.pool_high_water_bytes <= cp.bounce_pool_bytes);
    // Freed objects merged again under this load: whole blocks once everything is unmapped.
    assert_eq!(g.largest_free_at_end, MAX_OBJECT, "{g:?}");
    // Reserved against used: the coherent pool is a fraction of the SWIOTLB.
    assert!(cp.bounce_pool_bytes * 100 < auto.bounce_pool_bytes);
}
