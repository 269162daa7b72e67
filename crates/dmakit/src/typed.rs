//! The typed streaming API: ownership and direction in the type system.
//!
//! The raw API trusts the caller to pass matching lengths and directions and to stay off a
//! buffer while the device owns it. Here the compiler does that work:
//!
//! - a [`Mapping`] owns (or borrows, through `&B`) its buffer, so the CPU cannot touch it
//!   while the device may; unmapping hands the buffer back, and a failed mapping returns it
//!   together with the error — a buffer is never dropped on the floor;
//! - the direction is a type parameter: syncing for the CPU exists only on inbound mappings,
//!   writing for the device only on outbound ones;
//! - the CPU's temporary ownership inside a mapping is a `#[must_use]` [`CpuAccess`] token
//!   that must be handed back to the device (or explicitly kept) before the device may use
//!   the buffer again.
//!
//! Dropping a mapping unmaps it, so a device can never keep access to a buffer whose owner
//! is gone.
//!
//! An inbound sync compiles on a `FromDevice` mapping:
//!
//! ```
//! use dmakit::typed::{DmaBuffer, FromDevice, Mapping};
//! fn reap<P: dmakit::Platform, B: DmaBuffer>(m: &mut Mapping<'_, P, FromDevice, B>) {
//!     let _ = m.sync_for_cpu(0, 1).map(|token| token.keep());
//! }
//! ```
//!
//! and does not exist on a `ToDevice` one:
//!
//! ```compile_fail
//! use dmakit::typed::{DmaBuffer, Mapping, ToDevice};
//! fn reap<P: dmakit::Platform, B: DmaBuffer>(m: &mut Mapping<'_, P, ToDevice, B>) {
//!     let _ = m.sync_for_cpu(0, 1).map(|token| token.keep());
//! }
//! ```

use core::marker::PhantomData;

use crate::addr::{DmaAddr, PhysAddr};
use crate::device::Device;
use crate::direction::Direction;
use crate::error::DmaError;
use crate::mapping::DmaMapper;
use crate::platform::Platform;

mod sealed {
    pub trait Sealed {}
}

/// A transfer direction as a type. Sealed: [`ToDevice`], [`FromDevice`], [`Bidirectional`].
pub trait DirectionType: sealed::Sealed {
    /// The runtime direction.
    const DIR: Direction;
}

/// Directions in which the device writes the buffer.
pub trait Inbound: DirectionType {}
/// Directions in which the device reads the buffer.
pub trait Outbound: DirectionType {}

/// The device reads the buffer.
#[derive(Debug)]
pub enum ToDevice {}
/// The device writes the buffer.
#[derive(Debug)]
pub enum FromDevice {}
/// The device reads and writes the buffer.
#[derive(Debug)]
pub enum Bidirectional {}

impl sealed::Sealed for ToDevice {}
impl sealed::Sealed for FromDevice {}
impl sealed::Sealed for Bidirectional {}
impl DirectionType for ToDevice {
    const DIR: Direction = Direction::ToDevice;
}
impl DirectionType for FromDevice {
    const DIR: Direction = Direction::FromDevice;
}
impl DirectionType for Bidirectional {
    const DIR: Direction = Direction::Bidirectional;
}
impl Outbound for ToDevice {}
impl Outbound for Bidirectional {}
impl Inbound for FromDevice {}
impl Inbound for Bidirectional {}

/// Memory that can be lent to a device: a physically contiguous byte range.
///
/// # Implementation safety
/// The typed API maps the range safely on the strength of this trait. An implementation
/// guarantees that `phys()` and `len()` do not change while the value exists, that the
/// range is memory the platform's `CpuMemory` can access, and that the value owns it: no
/// other code reads or writes those bytes, or frees them, while the value exists except
/// through the value itself (a mapping holds the value, so nothing touches the range while
/// the device may).
pub unsafe trait DmaBuffer {
    /// First byte.
    fn phys(&self) -> PhysAddr;
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the buffer is empty (it cannot be mapped then).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A live streaming mapping of buffer `B` for direction `D`. The device may use
/// [`Mapping::dma_addr`] until the mapping is unmapped or dropped.
#[must_use = "dropping a mapping unmaps it at once"]
pub struct Mapping<'m, P: Platform, D: DirectionType, B: DmaBuffer> {
    mapper: &'m DmaMapper<P>,
    dev: &'m Device,
    buf: Option<B>,
    dma: DmaAddr,
    _dir: PhantomData<D>,
}

impl<P: Platform> DmaMapper<P> {
    /// Maps `buf` for `dev` in direction `D`.
    ///
    /// # Errors
    /// Every error of [`DmaMapper::map`], returned with the buffer.
    #[track_caller]
    pub fn map_buffer<'m, D: DirectionType, B: DmaBuffer>(
        &'m self,
        dev: &'m Device,
        buf: B,
    ) -> Result<Mapping<'m, P, D, B>, (B, DmaError)> {
        // SAFETY: `B: DmaBuffer` owns the range, and the mapping keeps `buf` until it is
        // unmapped (or hands it back on failure), so nothing touches the range meanwhile.
        match unsafe { self.map(dev, buf.phys(), buf.len(), D::DIR) } {
            Ok(dma) => Ok(Mapping {
                mapper: self,
                dev,
                buf: Some(buf),
                dma,
                _dir: PhantomData,
            }),
            Err(e) => Err((buf, e)),
        }
    }
}

impl<'m, P: Platform, D: DirectionType, B: DmaBuffer> Mapping<'m, P, D, B> {
    /// The address the device must use.
    pub fn dma_addr(&self) -> DmaAddr {
        self.dma
    }

    /// Length of the mapping.
    pub(crate) fn len(&self) -> u64 {
        self.buffer().len()
    }

    fn buffer(&self) -> &B {
        match &self.buf {
            Some(b) => b,
            None => unreachable!("the buffer is present until unmap consumes the mapping"),
        }
    }

    /// Ends the mapping and hands the buffer back; the CPU sees what the device wrote.
    ///
    /// # Errors
    /// A copy fault of a bounced mapping; the mapping stays live and is returned.
    #[track_caller]
    pub fn unmap(mut self) -> Result<B, (Self, DmaError)> {
        let len = self.len();
        // SAFETY: `self` is the live mapping `map_buffer` made; it still holds the buffer,
        // and consuming it ends the device's use of `dma`.
        match unsafe { self.mapper.unmap(self.dev, self.dma, len, D::DIR) } {
            Ok(()) => match self.buf.take() {
                Some(b) => Ok(b),
                None => unreachable!("the buffer is present until unmap consumes the mapping"),
            },
            Err(e) => Err((self, e)),
        }
    }

    fn part(&self, offset: u64, len: u64) -> Result<(), DmaError> {
        match offset.checked_add(len) {
            Some(end) if len > 0 && end <= self.len() => Ok(()),
            _ => Err(DmaError::OutOfMapping {
                device: self.dev.id(),
                dma: self.dma,
                len,
                mapped_len: self.len(),
            }),
        }
    }
}

impl<'m, P: Platform, D: Inbound, B: DmaBuffer> Mapping<'m, P, D, B> {
    /// Gives `len` bytes at `offset` back to the CPU, which then sees what the device wrote
    /// there. The returned token must be handed back before the device uses them again.
    ///
    /// # Errors
    /// [`DmaError::OutOfMapping`] if the part leaves the mapping; a copy fault.
    #[track_caller]
    pub fn sync_for_cpu(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<CpuAccess<'_, 'm, P, D, B>, DmaError> {
        self.part(offset, len)?;
        // SAFETY: `self` is a live mapping holding its buffer; the `&mut` borrow means no
        // `CpuAccess` to it is outstanding while the copy runs.
        (unsafe {
            self.mapper
                .sync_for_cpu(self.dev, self.dma, offset, len, D::DIR)
        })?;
        Ok(CpuAccess {
            mapping: self,
            offset,
            len,
        })
    }
}

impl<'m, P: Platform, D: Outbound, B: DmaBuffer> Mapping<'m, P, D, B> {
    /// Lets the CPU update `len` bytes at `offset` (the device must not be reading them);
    /// handing the token back makes the update visible to the device.
    ///
    /// # Errors
    /// [`DmaError::OutOfMapping`] if the part leaves the mapping.
    #[track_caller]
    pub fn cpu_update(
        &mut self,
        offset: u64,
        len: u64,
    ) -> Result<CpuAccess<'_, 'm, P, D, B>, DmaError> {
        self.part(offset, len)?;
        Ok(CpuAccess {
            mapping: self,
            offset,
            len,
        })
    }
}

impl<P: Platform, D: DirectionType, B: DmaBuffer> Drop for Mapping<'_, P, D, B> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            // SAFETY: the mapping is live and held its buffer until now; dropping it ends the
            // device's use of `dma`.
            if let Err(e) = unsafe { self.mapper.unmap(self.dev, self.dma, buf.len(), D::DIR) } {
                log::error!("unmap on drop failed: {e}");
            }
        }
    }
}

/// The CPU's temporary ownership of part of a mapped buffer. Hand it back with
/// [`CpuAccess::for_device`] before the device touches that part again, or
/// [`CpuAccess::keep`] it when the mapping is about to end anyway.
#[must_use = "the device must not use the buffer until the CPU hands it back with for_device()"]
pub struct CpuAccess<'a, 'm, P: Platform, D: DirectionType, B: DmaBuffer> {
    mapping: &'a mut Mapping<'m, P, D, B>,
    offset: u64,
    len: u64,
}

impl<P: Platform, D: DirectionType, B: DmaBuffer> CpuAccess<'_, '_, P, D, B> {
    /// The buffer, for the CPU to read or write (within the synced part).
    pub fn buffer(&self) -> &B {
        self.mapping.buffer()
    }

    /// Hands the part back to the device, making the CPU's writes visible to it.
    ///
    /// # Errors
    /// A copy fault of a bounced mapping.
    #[track_caller]
    pub fn for_device(self) -> Result<(), DmaError> {
        let m = &*self.mapping;
        // SAFETY: the token borrows the live mapping, which holds its buffer; the CPU hands
        // the part back here, so the copy to the bounce memory races no CPU access.
        unsafe {
            m.mapper
                .sync_for_device(m.dev, m.dma, self.offset, self.len, D::DIR)
        }
    }

    /// Keeps CPU ownership (for example because the mapping is unmapped next).
    pub fn keep(self) {}
}
