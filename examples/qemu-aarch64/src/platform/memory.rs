//! CPU copies between physical ranges: through the identity map, a physical address is a
//! pointer. Only RAM is memory; anything else is a [`MemoryFault`].

use dmakit::platform::{CpuMemory, MemoryFault};
use dmakit::PhysAddr;

use super::Aarch64;
use crate::layout::RAM;

/// The pointer to `[addr, addr + len)`, or the fault for a range outside RAM.
fn ram(addr: PhysAddr, len: u64) -> Result<*mut u8, MemoryFault> {
    if RAM.contains(addr.as_u64(), len) {
        Ok(addr.as_u64() as usize as *mut u8)
    } else {
        Err(MemoryFault { addr, len })
    }
}

// SAFETY: `ram` admits only ranges inside RAM, and each call touches exactly the
// `len` bytes of the ranges it names.
unsafe impl CpuMemory for Aarch64 {
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        let (d, s) = (ram(dst, len)?, ram(src, len)?);
        // SAFETY: both ranges are RAM mapped read-write by the identity map; the caller
        // (dmakit) owns them for this copy. `copy` tolerates overlap.
        unsafe { core::ptr::copy(s, d, len as usize) };
        Ok(())
    }

    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        let d = ram(dst, len)?;
        // SAFETY: as in `copy`.
        unsafe { core::ptr::write_bytes(d, byte, len as usize) };
        Ok(())
    }
}
