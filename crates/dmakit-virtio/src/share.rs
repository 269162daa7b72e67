//! `share` / `unshare`: a streaming mapping per shared buffer.
//!
//! A share maps the buffer for the device with the HAL's direction; dmakit decides
//! whether it is used in place or bounced (a misaligned inbound buffer on a non-coherent
//! device, memory beyond the device's reach, a force-bounce device) and the unshare
//! copies an inbound bounce back. The HAL returns no errors, so a full pool is waited out
//! as [`WhenPoolFull`] says and anything else that cannot succeed panics with a message
//! naming the buffer.

use core::panic::Location;
use core::ptr::NonNull;

use dmakit::linear_map::CpuAddr;
use dmakit::{Direction, DmaAddr, DmaError, PhysAddr};

use crate::config::WhenPoolFull;
use crate::install::VirtioDma;

impl VirtioDma {
    /// Shares `buffer` with the device for a transfer in `dir` (`BufferDirection`'s
    /// `DriverToDevice`, `DeviceToDriver`, `Both` are `ToDevice`, `FromDevice`,
    /// `Bidirectional`) and returns the address
    /// the device uses (`Hal::share`). With `access_platform` the buffer is bounced as for
    /// a confidential guest. Statistics name the caller's line.
    ///
    /// # Panics
    /// For an empty buffer or one outside the linear map; for a buffer larger than the
    /// largest bounce ("too large to bounce"); when the pool is full and
    /// [`WhenPoolFull`] allows no (more) waiting ("bounce pool is full"); for any other
    /// mapping error.
    ///
    /// # Safety
    /// `buffer` is valid memory the caller owns and leaves alone (neither reads nor
    /// writes it) until it passes it to [`VirtioDma::unshare`]: `Hal::share`'s contract,
    /// with the driver's own promise to keep the buffer until the unshare.
    #[track_caller]
    pub unsafe fn share(
        &self,
        buffer: NonNull<[u8]>,
        dir: Direction,
        access_platform: bool,
    ) -> u64 {
        let site = Location::caller();
        let (phys, len) = self.buffer_phys(buffer);
        let dev = self.device(access_platform);
        let mut waits = 0;
        loop {
            // SAFETY: the caller owns `buffer` and leaves it alone until the unshare, which
            // unmaps this mapping; `phys` is its physical address (checked translation).
            let mapped = unsafe { self.cfg.ops.map_from(dev, phys, len, dir, site) };
            match mapped {
                Ok(dma) => return dma.as_u64(),
                Err(e @ DmaError::PoolExhausted { .. }) => match self.cfg.when_full {
                    WhenPoolFull::Wait { relax, max_waits } if waits < max_waits => {
                        waits += 1;
                        relax();
                    }
                    _ => panic!(
                        "dmakit-virtio: bounce pool is full, cannot share {len} bytes at \
                         {phys} (waited {waits} times): {e}"
                    ),
                },
                Err(e @ DmaError::TooLargeToBounce { .. }) => {
                    panic!("dmakit-virtio: buffer of {len} bytes at {phys} is too large to bounce: {e}")
                }
                Err(e) => panic!("dmakit-virtio: cannot share {len} bytes at {phys}: {e}"),
            }
        }
    }

    /// Ends the share of `buffer` made at `paddr` (`Hal::unshare`): an inbound bounce is
    /// copied back into the buffer, and the bounce memory is free for the next share.
    /// `dir` and `access_platform` are those of the share.
    ///
    /// # Panics
    /// For a buffer outside the linear map, or when the mapper refuses the unmap (not a
    /// live share of this buffer and direction).
    ///
    /// # Safety
    /// `paddr` is what [`VirtioDma::share`] returned for `buffer` with `dir` and
    /// `access_platform`, not unshared since, and the device has stopped using it.
    #[track_caller]
    pub unsafe fn unshare(
        &self,
        paddr: u64,
        buffer: NonNull<[u8]>,
        dir: Direction,
        access_platform: bool,
    ) {
        let site = Location::caller();
        let (phys, len) = self.buffer_phys(buffer);
        let dev = self.device(access_platform);
        let dma = DmaAddr::new(paddr);
        // SAFETY: the caller passes the live share of `buffer` and the device is done.
        let unmapped = unsafe { self.cfg.ops.unmap_from(dev, dma, len, dir, site) };
        if let Err(e) = unmapped {
            panic!(
                "dmakit-virtio: cannot unshare {len} bytes at {phys} (device address {dma}): {e}"
            );
        }
    }

    /// The physical address and length of `buffer`.
    #[track_caller]
    fn buffer_phys(&self, buffer: NonNull<[u8]>) -> (PhysAddr, u64) {
        let len = buffer.len() as u64;
        let cpu = CpuAddr::of_ptr(buffer.as_ptr());
        if len == 0 {
            panic!("dmakit-virtio: cannot share an empty buffer at {cpu}");
        }
        match self.cfg.linear.phys_of(cpu, len) {
            Some(phys) => (phys, len),
            None => {
                panic!("dmakit-virtio: buffer of {len} bytes at {cpu} lies outside the linear map")
            }
        }
    }
}
