//! Finding the disk: the virt machine has 32 virtio-mmio slots; QEMU fills them from the
//! top with the devices given on its command line, and an empty slot reports device id 0.

use core::ptr::NonNull;

use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::{DeviceType, Transport};

use crate::hal::KernelHal;
use crate::layout::{VIRTIO_MMIO_BASE, VIRTIO_MMIO_SLOTS, VIRTIO_MMIO_STRIDE};

/// The block driver this kernel uses.
pub type Disk = VirtIOBlk<KernelHal, MmioTransport<'static>>;

/// The first virtio-blk device of the 32 slots, initialised by virtio-drivers, and its slot.
pub fn find() -> Option<(u64, Disk)> {
    (0..VIRTIO_MMIO_SLOTS).find_map(|slot| {
        let base = VIRTIO_MMIO_BASE + slot * VIRTIO_MMIO_STRIDE;
        let header = NonNull::new(base as usize as *mut VirtIOHeader)?;
        // SAFETY: every slot is a virtio-mmio register block of VIRTIO_MMIO_STRIDE bytes,
        // mapped as device memory by the identity map, and nothing else uses it: each slot
        // is probed once and only the block device's transport is kept.
        let transport = unsafe { MmioTransport::new(header, VIRTIO_MMIO_STRIDE as usize) }.ok()?;
        if transport.device_type() != DeviceType::Block {
            return None;
        }
        match VirtIOBlk::new(transport) {
            Ok(disk) => Some((slot, disk)),
            Err(e) => {
                crate::println!("virtio-blk in slot {slot} failed to initialise: {e}");
                None
            }
        }
    })
}
