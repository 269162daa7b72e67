//! What a scenario run produced, per policy: the figures `dmakit simulate` prints, writes
//! as JSON (field names are a stable interface, documented in the README) and charts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::mapping_log::MappingLog;
use crate::rates::{DriverLoad, PerSecond};
use crate::refill::PoolGrowth;
use crate::scale::MachineScale;

/// One call site that requested bounced mappings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteReport {
    /// The driver code (scenario `site`), as `driver: site`.
    pub site: String,
    /// Bounced mappings it requested.
    pub bounces: u64,
    /// Bytes of those mappings.
    pub bytes: u64,
    /// What to do about it.
    pub suggestion: String,
}

/// The results of one policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyReport {
    /// Policy name (`minalign128`, `linux-size-only`, `exact`, `no-bounce`,
    /// `coherent-pool`, `auto`).
    pub name: String,
    /// The kmalloc minimum alignment the run used (for `auto`, the one it chose).
    pub kmalloc_min_align: u64,
    /// Where bounces went: `swiotlb`, `coherent` (the growable coherent pool) or `none`.
    pub pool_kind: String,
    /// Memory the kmalloc caches held at the end of the run (whole slabs, as kmalloc counts
    /// them).
    pub kmalloc_bytes: u64,
    /// Bounce memory reserved at the end of the run: the SWIOTLB pool, or the coherent
    /// pool as grown (0 when the policy has none).
    pub bounce_pool_bytes: u64,
    /// Transfers attempted.
    pub transfers: u64,
    /// Bounced mappings by reason (`misaligned`, `above-mask`, `forced`, `untrusted`).
    pub bounces: BTreeMap<String, u64>,
    /// Bytes copied into and out of bounce buffers.
    pub bounced_bytes: u64,
    /// Bytes the oracle found corrupted.
    pub corrupted_bytes: u64,
    /// Bytes the oracle found stale.
    pub stale_bytes: u64,
    /// Bytes the oracle found leaked from another owner.
    pub leaked_bytes: u64,
    /// Highest bounce pool occupancy.
    pub pool_high_water_bytes: u64,
    /// Call sites with the most bounces, most first.
    pub top_sites: Vec<SiteReport>,
    /// Per driver, in scenario order: operations run, bounces and bytes copied.
    pub drivers: Vec<DriverLoad>,
    /// The drivers' bounces and copies at their rates (see [`crate::rates`]).
    pub per_second: PerSecond,
    /// Transfers whose `map` failed (pool full, no pool).
    pub map_errors: u64,
    /// Mappings that found their bounce pool full (failed, or waited for growth).
    pub pool_exhausted: u64,
    /// How the coherent pool grew (`coherent-pool` only).
    pub pool_growth: Option<PoolGrowth>,
    /// Device accesses the machine refused.
    pub device_faults: u64,
    /// Pool occupancy over the run: `(transfers done, bytes in use)`.
    #[serde(skip)]
    pub occupancy: Vec<(u64, u64)>,
    /// Wall-clock time of the run.
    #[serde(skip)]
    pub elapsed: Duration,
    /// The first wrong bytes, described.
    #[serde(skip)]
    pub first_errors: Vec<String>,
    /// The first map error, described.
    #[serde(skip)]
    pub first_map_error: Option<String>,
    /// The run's mappings, when [`RunOptions::log_mappings_of`](crate::RunOptions) named
    /// this policy.
    #[serde(skip)]
    pub mapping_log: Option<MappingLog>,
}

impl PolicyReport {
    /// All bounced mappings.
    pub fn bounces_total(&self) -> u64 {
        self.bounces.values().sum()
    }

    /// All wrong bytes.
    pub fn wrong_bytes(&self) -> u64 {
        self.corrupted_bytes + self.stale_bytes + self.leaked_bytes
    }
}

/// The results of a scenario under each policy run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimulationReport {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Where the background allocation sizes came from.
    pub slabinfo: String,
    /// What the kmalloc caches of that slabinfo's full population take under each policy
    /// (see [`crate::scale`]).
    pub machine_scale: MachineScale,
    /// One entry per policy, in the order run.
    pub policies: Vec<PolicyReport>,
}
