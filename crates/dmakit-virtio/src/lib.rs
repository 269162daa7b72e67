//! `virtio_drivers::Hal` over dmakit.
//!
//! [virtio-drivers](https://crates.io/crates/virtio-drivers) reaches its DMA layer through
//! a `Hal` trait whose methods have no `self`. This crate implements it, for the released
//! 0.13 signature, as [`DmakitHal`]:
//!
//! - `dma_alloc` / `dma_dealloc`: coherent memory from dmakit's `DmaAllocator`, handed
//!   out as the device address and a CPU pointer, freed by address (no side table);
//! - `share` / `unshare`: `DmaMapper::map` / `unmap` with the HAL's direction, so
//!   misaligned inbound buffers and force-bounce devices are bounced exactly as dmakit's
//!   rule says, and statistics name the virtio-drivers line that shared the buffer
//!   (`#[track_caller]` down to [`DmaOps::map_from`]);
//! - CPU pointers and physical addresses are translated by a [`LinearMap`].
//!
//! # Installing
//!
//! The `Hal` methods reach one global [`VirtioDma`], installed once with [`install`]
//! before the first driver is created (a `spin::Once`: no `std`, no allocation). It holds
//! the DMA layer as `&'static (dyn DmaOps + Send + Sync)` (a `dmakit::DmaStack` of the
//! kernel's mapper and allocator, leaked or in a `static`), the [`Device`] the virtio
//! devices are mapped as, the linear map, and what a share does when the pool is full
//! ([`WhenPoolFull`]):
//!
//! ```
//! use dmakit::dma_alloc::NoTranslation;
//! use dmakit::linear_map::{CpuAddr, LinearMap, LinearWindow};
//! use dmakit::{Device, DeviceId, DmaAllocator, DmaMapper, DmaStack, PhysAddr, PhysRange};
//! use dmakit_host::{HostMaintenance, HostPlatform};
//! use dmakit_mem::ZonedPageAllocator;
//! use dmakit_virtio::{install, DmakitHal, HalConfig, WhenPoolFull};
//! use virtio_drivers::{BufferDirection, Hal};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The board: 2 MiB of RAM at 1 GiB (on the host, an arena standing in for it).
//! let ram: &'static HostPlatform = Box::leak(Box::new(HostPlatform::new(
//!     1 << 30, 2 << 20, 1, 64, HostMaintenance::None,
//! )?));
//! let base = PhysAddr::new(1 << 30);
//! // A 256 KiB bounce pool, and 1 MiB of zones for coherent memory.
//! let mapper = DmaMapper::builder(ram).swiotlb(base, 256 << 10)?.build();
//! let zones = ZonedPageAllocator::new(&[PhysRange::new(base.add(1 << 20), 1 << 20).unwrap()])?;
//! let allocator =
//!     DmaAllocator::new(ram, zones, NoTranslation, ram.dma_allocator_config(), None)?;
//! let stack = Box::leak(Box::new(DmaStack::new(mapper, allocator)));
//! // The kernel's linear map: RAM is where the CPU sees it.
//! let cpu = CpuAddr::of_ptr(ram.ptr(base, 0)?.as_ptr());
//! let linear = LinearMap::new(&[LinearWindow { phys: base, cpu, len: 2 << 20 }])?;
//! install(HalConfig {
//!     ops: stack,
//!     device: Device::builder(DeviceId(1), "virtio").build()?,
//!     linear,
//!     when_full: WhenPoolFull::Wait { relax: core::hint::spin_loop, max_waits: u64::MAX },
//! })?;
//! // virtio-drivers now allocates and shares through dmakit
//! // (`VirtIOBlk::<DmakitHal, _>::new(transport)`), as here:
//! let (paddr, vaddr) = DmakitHal::dma_alloc(1, BufferDirection::Both);
//! assert_eq!(ram.phys_of(vaddr.as_ptr(), 4096)?.as_u64(), paddr);
//! // SAFETY: the page was just allocated, and is freed once.
//! assert_eq!(unsafe { DmakitHal::dma_dealloc(paddr, vaddr, 1) }, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # What cannot fail, and what panics
//!
//! `Hal::share` and `Hal::unshare` return no error. A share whose bounce pool is full
//! waits for room as [`WhenPoolFull`] says (the HAL is called where the driver may block:
//! virtio-drivers shares while submitting a request); a share that can never succeed
//! panics with a message naming the buffer and the reason: a buffer larger than the
//! largest bounce, a full pool under [`WhenPoolFull::Panic`] or after the last wait, a
//! buffer outside the linear map, or any other mapping error. An unshare the mapper
//! refuses panics too (the HAL's contract was broken). `dma_alloc` reports failure as
//! virtio-drivers expects, with a zero address, and `dma_dealloc` with a non-zero return.
//!
//! # Features
//!
//! - `access-platform`: the `Hal` of virtio-drivers' development head, whose methods take
//!   `access_platform: bool`; when true the buffer is bounced (and coherent memory is
//!   allocated) as for a confidential guest, through the installed device with
//!   `force_bounce` set. It builds only against a virtio-drivers with that signature; the
//!   logic underneath ([`VirtioDma`]) is the same and tested in every build.
//! - `host` (std): the `host` module, a DMA layer over this process's memory for tests
//!   of drivers (virtio-drivers' own suite runs on it).
//! - `hal` (default): [`DmakitHal`]. Without it the crate is [`VirtioDma`] alone, the
//!   HAL's logic over dmakit's types, for a build that brings its own copy of
//!   virtio-drivers (its test suite, patched to delegate to this crate).

#![cfg_attr(not(any(test, feature = "host")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod coherent;
mod config;
#[cfg(feature = "hal")]
mod hal;
#[cfg(any(test, feature = "host"))]
pub mod host;
mod install;
mod share;
#[cfg(test)]
mod tests;

pub use config::{HalConfig, WhenPoolFull};
#[cfg(feature = "hal")]
pub use hal::{direction, DmakitHal};
pub use install::{install, installed, InstallError, VirtioDma};

pub use dmakit::linear_map::LinearMap;
pub use dmakit::{Device, Direction, DmaOps};
