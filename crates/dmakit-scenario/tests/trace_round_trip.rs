//! The round trip: the built-in scenario's mappings written as a Linux trace
//! (`simulate --emit-trace`) and replayed give the mapper's own statistics back.
//!
//! Which counts, exactly (replayed at the scenario's cache line):
//!
//! - per device: the replay's mappings are the mapper's successful mappings, its inbound
//!   mappings the mapper's `FROM_DEVICE` plus `BIDIRECTIONAL` ones, and its failed
//!   mappings the run's map errors;
//! - per trusted device: the run's rule's bounces in the replay (exact for the `exact` run,
//!   size-only for the `linux-size-only` run) are the mapper's `misaligned` bounces. An
//!   untrusted device's buffers that miss whole IOMMU pages are bounced for that reason
//!   first (`untrusted`), so there the replay's count is at most the mapper's `untrusted`
//!   one and the mapper counts no `misaligned`;
//! - per call site of the `exact` run whose device bounced for no other reason: the
//!   chain's exact bounces are the mapper's bounces of that site (`DmaMapper::top_sites`).
//!
//! The display engine's framebuffers come from the DMA allocator, not the mapper: no
//! mapping of that device is in the statistics or in the trace.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use dmakit_scenario::churn::SizeDistribution;
use dmakit_scenario::model::SlabinfoSource;
use dmakit_scenario::trace::emit::write_log;
use dmakit_scenario::trace::{replay, ReadOptions, ReplayConfig};
use dmakit_scenario::{default_scenario, run_policy, Policy, RunOptions};

#[test]
fn an_emitted_trace_replays_to_the_runs_own_counts() {
    let mut sc = default_scenario().unwrap();
    sc.churn.slabinfo = SlabinfoSource::Shipped;
    sc.churn.live_objects = 5_000;
    assert!(sc.devices.iter().all(|d| !d.is_coherent()));
    let sizes =
        SizeDistribution::from_slabinfo(dmakit_scenario::footprint::SHIPPED_SLABINFO).unwrap();
    let site_device: HashMap<String, usize> = sc
        .transfer_sites()
        .map(|(d, t)| (format!("{}: {}", d.name, t.site), d.device))
        .collect();
    for policy in [Policy::Exact, Policy::LinuxSizeOnly] {
        let opts = RunOptions {
            seed: 3,
            transfers: 20_000,
            top_sites: 32,
            log_mappings_of: Some(policy),
            threads: dmakit_scenario::workers::machine_cores(),
        };
        let run = run_policy(&sc, policy, &sizes, &opts, &AtomicU64::new(0)).unwrap();
        let log = run
            .mapping_log
            .as_ref()
            .expect("the run logged its mappings");
        let mut text = Vec::new();
        write_log(&mut text, &sc, log).unwrap();
        let cfg = ReplayConfig::new(sc.line(), 64).unwrap();
        let r = replay(&text[..], ReadOptions::default(), &cfg).unwrap();
        assert_eq!(r.failed_mappings, run.map_errors, "{policy}");
        let mut judged_devices = 0;
        for dev in &sc.devices {
            let stats = log.stats.devices.iter().find(|d| d.device == dev.id());
            let row = r.devices.iter().find(|d| d.device == dev.name());
            let (Some(stats), Some(row)) = (stats, row) else {
                assert_eq!(
                    dev.name(),
                    "display",
                    "{policy}: only the display maps nothing"
                );
                continue;
            };
            judged_devices += 1;
            let c = &row.counts;
            let m = &stats.mappings;
            assert_eq!(
                c.mappings,
                stats.mappings_total(),
                "{policy} {}",
                dev.name()
            );
            assert_eq!(c.inbound, m.from_device + m.bidirectional, "{}", dev.name());
            let bounced = match policy {
                Policy::Exact => c.exact_bounces,
                _ => c.size_only_bounces,
            };
            if dev.is_trusted() {
                assert_eq!(bounced, stats.bounced.misaligned, "{policy} {}", dev.name());
            } else {
                assert_eq!(stats.bounced.misaligned, 0);
                assert!(
                    bounced <= stats.bounced.untrusted,
                    "{policy} {}",
                    dev.name()
                );
            }
        }
        assert_eq!(judged_devices, sc.devices.len() - 1);
        let misaligned: u64 = run.bounces["misaligned"];
        assert!(
            misaligned > 1_000,
            "{policy}: {misaligned} bounces is too few to judge"
        );
        if policy == Policy::Exact {
            let mut sites_checked = 0;
            for site in &run.top_sites {
                let d = site_device[&site.site];
                let dev = &sc.devices[d];
                let stats = log
                    .stats
                    .devices
                    .iter()
                    .find(|s| s.device == dev.id())
                    .unwrap();
                if !dev.is_trusted() || stats.bounces_total() != stats.bounced.misaligned {
                    continue;
                }
                let chain = r.chains.iter().find(|c| c.chain == site.site).unwrap();
                assert_eq!(chain.counts.exact_bounces, site.bounces, "{}", site.site);
                sites_checked += 1;
            }
            assert!(sites_checked >= 4, "{sites_checked} sites checked");
        }
    }
}
