//! What a bounced mapping costs the CPU, for `dmakit simulate`'s CPU time per second:
//! measured on this host with the benchmark's loop (`dmakit bench`), or given with
//! `--bounce-cost-ns`.
//!
//! The measurement maps and unmaps inbound buffers of two sizes, bounced and direct, for a
//! short while each (under a second in all); the bounced pair's extra median latency at
//! each size gives a fixed part and a part per byte copied. It changes no count of the
//! simulation: only the CPU figures depend on it, and with `--bounce-cost-ns` the output
//! is the same run to run.

use std::time::Duration;

use dmakit::Direction;
use dmakit_scenario::rates::BounceCost;
use serde::Serialize;

use crate::bench::{measure, Domain, Mode, Setup};

/// Where a bounce cost came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CostSource {
    /// Measured on this host at start.
    Measured,
    /// Given on the command line.
    Given,
}

/// A bounce cost and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HostCost {
    /// The cost.
    #[serde(flatten)]
    pub cost: BounceCost,
    /// Measured or given.
    pub source: CostSource,
}

impl HostCost {
    /// How the output states the cost.
    pub fn describe(&self) -> String {
        let how = match self.source {
            CostSource::Measured => "measured on this host",
            CostSource::Given => "given with --bounce-cost-ns",
        };
        format!(
            "bounce cost {:.0} ns + {:.0} ns per KiB copied, {how}",
            self.cost.fixed_ns,
            self.cost.ns_per_byte * 1024.0
        )
    }
}

/// Sizes measured: a small buffer (the fixed part dominates) and a large one.
const SIZES: [u64; 2] = [64, 16 * 1024];

/// How long each of the four measurements runs.
const EACH: Duration = Duration::from_millis(150);

/// Parses `--bounce-cost-ns FIXED[,PER_KIB]`: nanoseconds per bounced mapping and,
/// optionally, per KiB copied.
///
/// # Errors
/// A message saying what the flag takes when the text is not one or two non-negative
/// finite numbers separated by a comma.
pub fn parse(text: &str) -> Result<HostCost, String> {
    let bad = || {
        format!(
            "--bounce-cost-ns {text}: give nanoseconds per bounced mapping, optionally with \
             nanoseconds per KiB copied after a comma (\"800\" or \"800,250\")"
        )
    };
    let mut parts = text.split(',').map(|p| p.trim().parse::<f64>());
    let fixed = parts.next().and_then(Result::ok).ok_or_else(bad)?;
    let per_kib = match parts.next() {
        None => 0.0,
        Some(p) => p.map_err(|_| bad())?,
    };
    let ok = |v: f64| v.is_finite() && (0.0..=1e9).contains(&v);
    if parts.next().is_some() || !ok(fixed) || !ok(per_kib) {
        return Err(bad());
    }
    Ok(HostCost {
        cost: BounceCost {
            fixed_ns: fixed,
            ns_per_byte: per_kib / 1024.0,
        },
        source: CostSource::Given,
    })
}

/// Median map+unmap latency and bytes copied per pair at `granule` on path `mode`.
fn pair(mode: Mode, granule: u64) -> Result<(f64, f64), String> {
    let setup = Setup {
        mode,
        domain: Domain::Strict,
        threads: 1,
        granule,
        dir: Direction::FromDevice,
    };
    let mut m = measure(&setup, EACH)?;
    let ns = (m.map_ns(0.5) + m.unmap_ns(0.5)) as f64;
    Ok((ns, m.bytes_copied as f64 / m.operations.max(1) as f64))
}

/// Measures the cost on this host (about 0.6 s).
///
/// # Errors
/// A message when the benchmark cannot set up host memory or a mapping fails.
pub fn measure_on_host() -> Result<HostCost, String> {
    let mut at = [(0.0, 0.0); 2];
    for (i, &g) in SIZES.iter().enumerate() {
        let (bounced, copied) = pair(Mode::Bounce, g)?;
        let (direct, _) = pair(Mode::Direct, g)?;
        at[i] = ((bounced - direct).max(0.0), copied);
    }
    let [(small, small_copied), (large, large_copied)] = at;
    let ns_per_byte = ((large - small) / (large_copied - small_copied).max(1.0)).max(0.0);
    Ok(HostCost {
        cost: BounceCost {
            fixed_ns: (small - ns_per_byte * small_copied).max(0.0),
            ns_per_byte,
        },
        source: CostSource::Measured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_takes_one_or_two_numbers() {
        let c = parse("800,256").unwrap();
        assert_eq!((c.cost.fixed_ns, c.cost.ns_per_byte), (800.0, 0.25));
        assert_eq!(c.source, CostSource::Given);
        assert_eq!(parse(" 90 ").unwrap().cost.ns_per_byte, 0.0);
        for bad in ["", "x", "1,2,3", "-1", "1,-2", "nan", "inf", "1e12", "1,"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("--bounce-cost-ns"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_host_measurement_is_quick_and_says_so() {
        // Each timing runs for `EACH`, so the whole takes about a second on an idle
        // machine. The bound is far above that: it tells a measurement that stops from one
        // that does not, on a machine shared with other work (a loaded 2-core machine took
        // 4.6 s), and is no measure of speed.
        let started = std::time::Instant::now();
        let c = measure_on_host().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
        assert!(c.cost.fixed_ns.is_finite() && c.cost.ns_per_byte.is_finite());
        assert!(c.cost.fixed_ns > 0.0 || c.cost.ns_per_byte > 0.0, "{c:?}");
        assert!(c.describe().ends_with("measured on this host"));
    }
}
