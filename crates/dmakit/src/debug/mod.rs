//! The DMA-API debug checker: driver bugs caught at the call that commits them.
//!
//! The raw mapping API trusts its caller to unmap what it mapped, with the same size and
//! direction, to sync only inside a mapping and only in an allowed direction, and to
//! release every mapping before the device goes away. A driver that breaks those rules
//! corrupts memory much later and far away. With the checker on (at run time,
//! [`crate::DmaMapperBuilder::debug_checker`]), every mapping is recorded in a shadow table
//! together with the call site that made it, and every later operation is checked against
//! that record. A violation becomes a [`DebugReport`] naming the device, the address, the
//! size, the offending call site and the site of the original mapping; it is logged and
//! kept for inspection (its message is formatted only when read: checking allocates nothing,
//! every table is sized at construction by a [`DebugConfig`]). The operation itself proceeds exactly as without the checker, so
//! turning it on changes no behaviour.
//!
//! Beyond what a kernel can see, a machine model can ask [`DebugChecker::check_cpu_access`]
//! on every CPU load and store: reading a buffer the device still owns (a missing
//! `sync_for_cpu`) and writing one the device owns are reported too.

pub(crate) mod checker;
mod config;
mod cpu_parts;
mod detail;
mod family;
mod report;

/// Checker scenarios for the tests and, with the test-only `reintroduce-defects` feature,
/// for their controls in `tests/checker_controls.rs`. Not an interface.
#[cfg(all(feature = "std", any(test, feature = "reintroduce-defects")))]
#[doc(hidden)]
pub mod scenarios;
#[cfg(all(test, feature = "std"))]
mod tests;

pub use checker::{DebugChecker, LiveMapping};
pub use config::DebugConfig;
pub use cpu_parts::{CpuParts, MAX_CPU_PARTS};
pub use family::MappingFamily;
pub use report::{DebugIssue, DebugReport};
