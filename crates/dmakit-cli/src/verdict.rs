//! The one-line verdict per policy that `dmakit simulate` ends with: the kmalloc memory
//! it saves on the slabinfo's machine, the CPU it pays for bounces at the drivers' rates,
//! and the bytes it corrupted in the run.

use dmakit_scenario::units::format_bytes;
use dmakit_scenario::SimulationReport;
use serde::Serialize;

use crate::bounce_cost::HostCost;
use crate::table::count;

/// What one policy saves, pays and breaks.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Policy name.
    pub policy: String,
    /// kmalloc memory saved on the slabinfo's machine against kmalloc aligned to the cache
    /// line (0 for line-aligned kmalloc itself).
    pub kmalloc_saved_bytes: u64,
    /// CPU nanoseconds per second its bounces take at the drivers' rates (1e9: one CPU).
    pub cpu_ns_per_second: f64,
    /// Bytes the oracle found corrupted in the run.
    pub corrupted_bytes: u64,
    /// Bytes found stale or leaked from another owner.
    pub stale_or_leaked_bytes: u64,
    /// Mappings the mapper refused in the run (no pool to bounce through, a full pool):
    /// work the drivers could not do, which the memory and CPU figures do not show.
    pub failed_mappings: u64,
}

impl Verdict {
    /// One verdict per policy of `r`, in its order, with bounces costing `cost`.
    pub fn all(r: &SimulationReport, cost: &HostCost) -> Vec<Verdict> {
        let scale = &r.machine_scale;
        r.policies
            .iter()
            .map(|p| Verdict {
                policy: p.name.clone(),
                kmalloc_saved_bytes: scale.of(&p.name).map_or(0, |k| {
                    scale.line_aligned_bytes.saturating_sub(k.kmalloc_bytes)
                }),
                cpu_ns_per_second: cost.cost.cpu_ns_per_second(&p.per_second),
                corrupted_bytes: p.corrupted_bytes,
                stale_or_leaked_bytes: p.stale_bytes + p.leaked_bytes,
                failed_mappings: p.map_errors,
            })
            .collect()
    }

    /// The line: `exact  saves 318.2 MiB, pays 2.10 ms CPU/s (0.21 % of a CPU), 0 bytes
    /// corrupted`, the policy name padded to `name_width`; stale or leaked bytes and failed
    /// mappings are added when there are any.
    pub fn line(&self, name_width: usize) -> String {
        let saved = if self.kmalloc_saved_bytes == 0 {
            "saves nothing".to_string()
        } else {
            format!("saves {}", format_bytes(self.kmalloc_saved_bytes))
        };
        let mut s = format!(
            "{:name_width$}  {saved}, pays {:.2} ms CPU/s ({:.2} % of a CPU), {} bytes corrupted",
            self.policy,
            self.cpu_ns_per_second / 1e6,
            self.cpu_ns_per_second / 1e7,
            count(self.corrupted_bytes)
        );
        if self.stale_or_leaked_bytes > 0 {
            s += &format!(", {} stale or leaked", count(self.stale_or_leaked_bytes));
        }
        if self.failed_mappings > 0 {
            s += &format!(", {} mappings failed", count(self.failed_mappings));
        }
        s
    }
}
