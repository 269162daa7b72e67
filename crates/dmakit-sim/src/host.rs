//! A platform over real memory, for benchmarks and multi-threaded tests: `dmakit-host`'s
//! [`HostPlatform`], re-exported so the model's tests and benchmarks reach it here.

pub use dmakit_host::{ForeignPointer, HostError, HostMaintenance, HostPlatform};
