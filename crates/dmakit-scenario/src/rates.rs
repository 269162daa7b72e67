//! The cost side of the trade per second of the real machine.
//!
//! A run picks driver operations by weight; a real machine runs each driver at its own
//! rate (`rate`, operations per second, in the scenario file). Each driver's simulated
//! operations give its bounces and bytes copied *per operation*; times its rate, they give
//! what the machine would bounce and copy per second, and with a [`BounceCost`] the CPU
//! time that takes. Drivers without a rate, or that ran no operation, count for nothing
//! (the report says how many drivers were counted).

use serde::Serialize;

/// What one driver's operations did in a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DriverLoad {
    /// Driver name.
    pub driver: String,
    /// Its operations per second on the real machine, if the scenario gives one.
    pub rate: Option<f64>,
    /// Operations it ran (a run may end within one).
    pub operations: u64,
    /// Bounced mappings its operations made.
    pub bounces: u64,
    /// Bytes its operations copied into and out of bounce buffers.
    pub bytes_copied: u64,
}

/// The load of a run's drivers at their rates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PerSecond {
    /// Driver operations per second (of the drivers counted).
    pub operations: f64,
    /// Bounced mappings per second.
    pub bounces: f64,
    /// Bytes copied into and out of bounce buffers per second.
    pub bytes_copied: f64,
    /// Drivers counted: with a rate and at least one operation in the run.
    pub drivers_counted: usize,
}

impl PerSecond {
    /// Each counted driver's bounces and bytes per operation, times its rate, summed.
    pub fn of(loads: &[DriverLoad]) -> Self {
        let mut out = PerSecond::default();
        for l in loads {
            let Some(rate) = l.rate.filter(|_| l.operations > 0) else {
                continue;
            };
            let per_op = rate / l.operations as f64;
            out.operations += rate;
            out.bounces += l.bounces as f64 * per_op;
            out.bytes_copied += l.bytes_copied as f64 * per_op;
            out.drivers_counted += 1;
        }
        out
    }
}

/// What one bounced mapping costs the CPU (map and unmap, copies included) beyond a direct
/// mapping: a fixed part and a part per byte copied.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct BounceCost {
    /// Nanoseconds per bounced mapping, whatever its size.
    pub fixed_ns: f64,
    /// Nanoseconds per byte copied into or out of a bounce buffer.
    pub ns_per_byte: f64,
}

impl BounceCost {
    /// CPU nanoseconds per second that the bounces of `load` take (1e9 is one CPU).
    pub fn cpu_ns_per_second(&self, load: &PerSecond) -> f64 {
        self.fixed_ns * load.bounces + self.ns_per_byte * load.bytes_copied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(rate: Option<f64>, operations: u64, bounces: u64, bytes: u64) -> DriverLoad {
        DriverLoad {
            driver: "d".into(),
            rate,
            operations,
            bounces,
            bytes_copied: bytes,
        }
    }

    #[test]
    fn per_operation_figures_scale_by_each_drivers_rate() {
        // 10 operations, 5 bounces, 1000 bytes at 100/s: 50 bounces/s, 10,000 B/s; plus
        // 4 operations, 8 bounces, 400 bytes at 2/s: 4 bounces/s, 200 B/s.
        let p = PerSecond::of(&[
            load(Some(100.0), 10, 5, 1000),
            load(Some(2.0), 4, 8, 400),
            load(None, 50, 50, 50),
            load(Some(1e6), 0, 0, 0),
        ]);
        assert_eq!(
            p,
            PerSecond {
                operations: 102.0,
                bounces: 54.0,
                bytes_copied: 10_200.0,
                drivers_counted: 2,
            }
        );
        let cost = BounceCost {
            fixed_ns: 1000.0,
            ns_per_byte: 0.5,
        };
        assert_eq!(cost.cpu_ns_per_second(&p), 54_000.0 + 5_100.0);
        assert_eq!(cost.cpu_ns_per_second(&PerSecond::of(&[])), 0.0);
    }
}
