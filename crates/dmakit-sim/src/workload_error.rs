//! Why a workload, or one transfer of it, could not run.
//!
//! A leaf of its own because both the one-transfer step ([`crate::transfer`]) and the
//! harness driving many of them ([`crate::workload`]) return it.

use std::fmt;

use dmakit::DmaError;

use crate::error::SimError;

/// Why a workload could not run.
#[derive(Clone, Debug, PartialEq)]
pub enum WorkloadError {
    /// The model refused a request (bad configuration, no memory for the slots, ...).
    Sim(SimError),
    /// The mapper refused an unmap or sync of a mapping it had made.
    Mapper(DmaError),
    /// The configuration cannot produce transfers (empty lists, bad ranges).
    Config(&'static str),
}

impl fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadError::Sim(e) => write!(f, "machine model: {e}"),
            WorkloadError::Mapper(e) => write!(f, "mapper: {e}"),
            WorkloadError::Config(m) => write!(f, "workload configuration: {m}"),
        }
    }
}

impl std::error::Error for WorkloadError {}

impl From<SimError> for WorkloadError {
    fn from(e: SimError) -> Self {
        WorkloadError::Sim(e)
    }
}

impl From<DmaError> for WorkloadError {
    fn from(e: DmaError) -> Self {
        WorkloadError::Mapper(e)
    }
}
