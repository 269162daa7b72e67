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
//! ```ignore
//! static STACK: spin::Once<DmaStack<&'static Board, ZonedPageAllocator>> = spin::Once::new();
//! let stack = STACK.call_once(|| DmaStack::new(mapper, allocator));
//! dmakit_virtio::install(HalConfig {
//!     ops: stack,
//!     device: Device::builder(DeviceId(1), "virtio").build()?,
//!     linear: LinearMap::identity(1 << 40)?,
//!     when_full: WhenPoolFull::Wait { relax: core::hint::spin_loop, max_waits: u64::MAX },
//! })?;
//! let blk = VirtIOBlk::<DmakitHal, _>::new(transport)?;
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
//! - `host` (std): [`host`], a DMA layer over this process's memory for tests of drivers.

#![cfg_attr(not(any(test, feature = "host")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod coherent;
mod config;
mod hal;
#[cfg(any(test, feature = "host"))]
pub mod host;
mod install;
mod share;
#[cfg(test)]
mod tests;

pub use config::{HalConfig, WhenPoolFull};
pub use hal::DmakitHal;
pub use install::{install, installed, InstallError, VirtioDma};

pub use dmakit::linear_map::LinearMap;
pub use dmakit::{Device, DmaOps};
