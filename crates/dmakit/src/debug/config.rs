//! How much the debug checker may remember, fixed when it is built.
//!
//! The checker runs inside the map, unmap and sync calls, which run in interrupt context
//! where the heap may not be used: every table it keeps is allocated once, at the size
//! given here, and what does not fit is counted rather than stored.

/// The checker's capacities (see [`crate::DmaMapperBuilder::debug_checker_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugConfig {
    /// Live mappings tracked at once (default 4096). A mapping made while the table is full
    /// is not tracked; [`crate::debug::DebugChecker::untracked`] counts them, and a later "not
    /// mapped" report says how many there were (the address may be one of them).
    pub live_mappings: usize,
    /// Devices whose latest failed mapping request is remembered, to explain a later use of
    /// its result (default 64). Past that, such a use is reported as "not mapped".
    pub failed_devices: usize,
    /// Reports kept (default 10 000). The oldest is dropped for a new one once full;
    /// [`crate::debug::DebugChecker::dropped_reports`] counts them (every report is still logged).
    pub reports: usize,
}

impl Default for DebugConfig {
    fn default() -> Self {
        Self {
            live_mappings: 4096,
            failed_devices: 64,
            reports: 10_000,
        }
    }
}
