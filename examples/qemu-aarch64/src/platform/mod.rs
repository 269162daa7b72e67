//! dmakit's platform traits, implemented for this machine: one AArch64 CPU with its real
//! caches, over the identity map built in `boot.rs`.
//!
//! - [`CacheMaintenance`](dmakit::platform::CacheMaintenance): `dc cvac` / `dc ivac` /
//!   `dc civac` over every line of the range, then `dsb sy` (`cache.rs`);
//! - [`CpuMemory`](dmakit::platform::CpuMemory): CPU copies through the identity map
//!   (`memory.rs`);
//! - [`CpuTopology`](dmakit::platform::CpuTopology): the CPU number from `MPIDR_EL1`
//!   (`cpu.rs`);
//! - [`InterruptControl`](dmakit::platform::InterruptControl): `DAIF` (`interrupts.rs`);
//! - [`CoherentRemap`](dmakit::platform::CoherentRemap): refused; coherent memory comes
//!   from the non-cacheable window set aside at boot (`coherent_remap.rs`).

mod cache;
mod coherent_remap;
mod cpu;
mod interrupts;
mod memory;

pub use interrupts::Daif;

use core::sync::atomic::AtomicU64;

/// The machine, as dmakit's streaming paths see it: cache maintenance, CPU copies and the
/// CPU number. Holds counters of the cache lines maintained.
pub struct Aarch64 {
    /// Data cache line size in bytes, from `CTR_EL0`.
    line: u64,
    cleaned: AtomicU64,
    invalidated: AtomicU64,
    clean_invalidated: AtomicU64,
}

impl Aarch64 {
    /// The platform of the CPU this runs on.
    pub fn new() -> Self {
        Self {
            line: cache::dcache_line_size(),
            cleaned: AtomicU64::new(0),
            invalidated: AtomicU64::new(0),
            clean_invalidated: AtomicU64::new(0),
        }
    }
}
