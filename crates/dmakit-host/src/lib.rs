//! A dmakit platform over real host memory, with real pointers.
//!
//! dmakit's machine model (`dmakit-sim`) proves the mapping layer correct on simulated
//! hardware; it carries what a model needs (seeded randomness, scenario files). Code that
//! is not part of dmakit — a driver HAL adapter and its tests, a benchmark, a fuzzer — needs
//! something else: dmakit's platform traits over memory it can point into. This crate is
//! that platform, depending on `dmakit` and `std` only:
//!
//! - [`HostPlatform`]: one zeroed allocation presented as physical memory at a base of the
//!   caller's choice (also above 4 GiB), CPU copies as real `memcpy`s, cache maintenance
//!   as nothing or `clflush`, the current CPU as a per-thread number the caller binds, and
//!   uncached remapping that needs nothing (the host's caches are coherent with everything
//!   that reads the arena);
//! - real pointers: [`HostPlatform::ptr`] (physical address to pointer) and
//!   [`HostPlatform::phys_of`] (pointer to physical address), both bounds-checked;
//! - [`HostPlatform::dma_allocator_config`]: a DMA allocator configuration whose atomic
//!   pool lies in this memory wherever it is.
//!
//! Modules: `arena` (the allocation and its address arithmetic), `cpu` (per-thread CPU
//! binding), `error` ([`HostError`], [`ForeignPointer`]), `platform` (the platform traits).
//!
//! # Example
//!
//! ```
//! use dmakit::prelude::*;
//! use dmakit_host::{HostMaintenance, HostPlatform};
//!
//! // 4 MiB of "RAM" at 8 GiB, one CPU, 64-byte lines.
//! let host = HostPlatform::new(8 << 30, 4 << 20, 1, 64, HostMaintenance::None)?;
//! let buf = PhysAddr::new(8 << 30);
//! let p = host.ptr(buf, 16)?;
//! // SAFETY: `ptr` checked that 16 bytes at `p` lie in the arena, which outlives the write.
//! unsafe { p.as_ptr().write_bytes(0xab, 16) };
//! assert_eq!(host.phys_of(p.as_ptr(), 16)?, buf);
//! let mut back = [0u8; 16];
//! host.read(buf, &mut back)?;
//! assert_eq!(back, [0xab; 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod arena;
mod cpu;
mod error;
mod platform;

pub use error::{ForeignPointer, HostError};
pub use platform::{HostMaintenance, HostPlatform};
