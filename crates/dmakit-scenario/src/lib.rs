//! Realistic scenarios: a machine, its devices and drivers with their real DMA patterns,
//! run side by side under competing kmalloc-alignment and bounce policies.
//!
//! - [`config`]: the scenario file format (TOML) and its validation, with file, line and
//!   field in every error;
//! - [`model`]: the validated scenario;
//! - [`policy`]: the policies and the bounce pool each gets;
//! - [`refill`]: the growable coherent bounce pool of `coherent-pool` and its refill
//!   worker;
//! - [`heap`]: every simulated object, from a real kmalloc, known to the oracle;
//! - [`slabinfo`]: `/proc/slabinfo` parsing;
//! - [`footprint`]: the memory the kmalloc caches of a real machine take under each
//!   minimum alignment (`dmakit slab`);
//! - [`churn`]: background kmalloc traffic shaped like a real `/proc/slabinfo`;
//! - [`drivers`]: where drivers put their DMA buffers (kmalloc objects, structure fields,
//!   page fragments, pages);
//! - [`input`]: input files read with a size limit;
//! - [`iommu`]: the machine's IOMMU in front of the devices a scenario puts behind it;
//! - [`frames`]: noncontiguous framebuffers a display engine behind the IOMMU scans out;
//! - [`sites`]: a distinct call site per transfer pattern, for the mapper's statistics;
//! - [`mapping_log`]: a run's mappings, for `simulate --emit-trace`;
//! - [`trace`]: Linux's `dma:` trace events read and replayed (`dmakit replay`);
//! - [`run`]: the runner;
//! - [`report`]: the results;
//! - [`scale`]: each policy's kmalloc memory over the slabinfo's full population;
//! - [`rates`]: bounces, bytes copied and CPU time per second at the drivers' rates;
//! - [`units`]: byte sizes in files and reports;
//! - [`workers`]: the policies on a bounded number of threads, reports in order.
//!
//! This crate is the experiment behind `dmakit simulate`, not a general-purpose
//! simulator: its drivers model the DMA patterns of real drivers, and its API serves the
//! command.
//!
//! # Example
//!
//! The built-in phone, with the shipped slabinfo, under the exact policy and its control:
//!
//! ```
//! use std::sync::atomic::AtomicU64;
//!
//! use dmakit_scenario::model::SlabinfoSource;
//! use dmakit_scenario::workers::machine_cores;
//! use dmakit_scenario::{default_scenario, simulate, Policy, RunOptions};
//!
//! let mut scenario = default_scenario()?;
//! scenario.churn.slabinfo = SlabinfoSource::Shipped;
//! let options = RunOptions {
//!     seed: 1,
//!     transfers: 2_000,
//!     top_sites: 3,
//!     log_mappings_of: None,
//!     threads: machine_cores(),
//! };
//! let progress = AtomicU64::new(0);
//! let report = simulate(&scenario, &[Policy::Exact, Policy::NoBounce], &options, &progress)?;
//! let exact = &report.policies[0];
//! assert_eq!(exact.corrupted_bytes + exact.stale_bytes + exact.leaked_bytes, 0);
//! assert!(report.policies[1].corrupted_bytes > 0, "the control shows the hazard");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod churn;
pub mod config;
pub mod drivers;
pub mod footprint;
pub mod frames;
pub mod heap;
pub mod input;
pub mod iommu;
pub mod mapping_log;
pub mod model;
pub mod policy;
pub mod rates;
pub mod refill;
pub mod report;
pub mod run;
pub mod scale;
pub mod sites;
pub mod slabinfo;
pub mod trace;
pub mod units;
pub mod workers;

pub use config::{parse_scenario, ScenarioError};
pub use model::Scenario;
pub use policy::Policy;
pub use report::{PolicyReport, SimulationReport, SiteReport};
pub use run::{run_policy, simulate, RunError, RunOptions};

/// The built-in scenario (`scenarios/phone.toml`): a modelled arm64 phone.
pub const DEFAULT_SCENARIO: &str = include_str!("../../../scenarios/phone.toml");

/// The name the built-in scenario goes by in messages.
pub const DEFAULT_SCENARIO_FILE: &str = "scenarios/phone.toml";

/// The built-in scenario, parsed.
///
/// # Errors
/// Only if the shipped file is broken (a test guards against that).
pub fn default_scenario() -> Result<Scenario, ScenarioError> {
    parse_scenario(DEFAULT_SCENARIO, DEFAULT_SCENARIO_FILE)
}
