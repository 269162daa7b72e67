//! The machine model for dmakit: memory, caches that really misbehave, DMA engines, and the
//! oracle that judges every transfer.
//!
//! Everything dmakit claims ("no byte corrupted") is proven here, against hardware that
//! does what real hardware may do: write-back caches that evict and speculatively fill lines
//! at any moment, devices that bypass those caches, and devices that stray outside what
//! they were given. Every byte carries a provenance stamp, so the [`oracle`] can tell stale
//! data, leaked data and corrupted data apart. A run is deterministic in its seed.
//!
//! Modules, one concept each:
//! - [`rng`]: the single seeded source of randomness ([`SimRng`]), for reproducible runs;
//! - [`memory`]: sparse, stamped physical memory over a RAM map;
//! - [`cache`]: the write-back, write-allocate CPU data cache, with whole-line maintenance;
//! - [`hazard`]: seeded evictions and speculative fills aimed near recent CPU activity;
//! - [`device`]: DMA engines with masks, granted windows, a fault log and the translation
//!   seam where an IOMMU will plug in;
//! - [`device_fault`]: the record of a refused device access ([`DeviceFault`]);
//! - [`fault_inject`]: dropping selected cache maintenance, to show the model can fail;
//! - [`page_alloc`]: a first-fit page allocator so pools and workloads never overlap;
//! - [`iommu`]: an IOMMU with per-domain page tables, an IOTLB that keeps translations
//!   until invalidated, and a fault log, plugged in through the translation seam;
//! - [`host`]: a platform over real memory, for benchmarks and multi-threaded tests;
//! - [`interrupts`]: per-CPU interrupt masking, pending interrupts and a deadlock watchdog,
//!   installed as the core's interrupt control;
//! - [`machine`]: the [`Machine`] tying them together;
//! - [`sharing`]: a confidential guest's private memory and the pages it shared with the
//!   host ([`SharedPages`]), which devices alone may reach;
//! - [`platform`]: the core crate's platform traits implemented for [`Machine`];
//! - [`coherent`]: uncached pages for the core's coherent allocations;
//! - [`vmap`]: contiguous virtual views, with an aliasing-cache mode;
//! - [`oracle`]: what every tracked byte must hold, and the classification of wrong bytes;
//! - [`placement`]: where a buffer and its neighbours sit (line aligned, kmalloc-packed,
//!   struct field);
//! - [`request_stream`]: the bounce pool's benchmark request stream, and the fills and
//!   counts that measure an allocator on it;
//! - [`transfer`]: one transfer through the mapping layer, judged by the oracle;
//! - [`workload`]: the randomized transfer harness driving a `DmaMapper` on the machine;
//! - [`workload_error`]: why a workload or one of its transfers could not run.
//!
//! This crate is dmakit's test and measurement harness, not a hardware emulator: its API
//! follows what the tests, benchmarks and the scenario runner need.
//!
//! # Example
//!
//! A misbehaving machine with a SWIOTLB pool below 4 GiB, a non-coherent device, and a
//! thousand randomized transfers through the real mapper, every byte judged by the oracle:
//!
//! ```
//! use dmakit::prelude::*;
//! use dmakit::PageAllocator;
//! use dmakit_sim::{run_workload, Machine, MachineConfig, WorkloadConfig};
//!
//! let machine = Machine::new(MachineConfig::default())?;
//! let below_4g = (1 << 32) - 1;
//! let pool_bytes = 4 << 20;
//! let base = machine.alloc_pages(pool_bytes / 4096, below_4g).expect("free pages");
//! let mapper = DmaMapper::builder(&machine).swiotlb(base, pool_bytes)?.build();
//! let device = Device::builder(DeviceId(1), "nic").dma_bits(32).build()?;
//!
//! let outcome = run_workload(&machine, &mapper, &device, WorkloadConfig::default())?;
//! assert!(outcome.report.is_clean(), "{:?}", outcome.report);
//! assert!(mapper.stats().total().bounces_total() > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod buffers;
pub mod cache;
pub mod coherent;
pub mod device;
pub mod device_fault;
pub mod error;
pub mod fault_inject;
pub mod hazard;
pub mod host;
pub mod interrupts;
pub mod iommu;
pub mod machine;
pub mod memory;
pub mod oracle;
pub mod page_alloc;
pub mod placement;
pub mod platform;
mod range_map;
pub mod request_stream;
pub mod rng;
pub mod routed;
pub mod sharing;
pub mod transfer;
pub mod vmap;
pub mod workload;
pub mod workload_error;

pub use cache::{CacheConfig, CacheStats};
pub use device::{BusWindowTranslation, DmaTranslation};
pub use device_fault::{DeviceFault, FaultReason};
pub use error::SimError;
pub use fault_inject::{MaintenanceFaults, MaintenanceKind};
pub use hazard::HazardConfig;
pub use interrupts::{Deadlock, InterruptStats, SimInterrupts};
pub use iommu::{Granule, IommuFault, IommuFaultReason, IommuStats, SimIommu, SimIommuConfig};
pub use machine::{Machine, MachineConfig, MachineStats};
pub use memory::{Owner, Stamped, MEM_PAGE};
pub use oracle::{ByteReport, ErrorKind, ErrorSite, Oracle, OracleReport};
pub use placement::Placement;
pub use rng::SimRng;
pub use routed::RoutedTranslation;
pub use sharing::SharedPages;
pub use vmap::{VmapMachine, VmapMode};
pub use workload::{run_workload, WorkloadConfig, WorkloadOutcome};
