//! Which CPU is running. The boot code parks every CPU but the first, so there is one.

use core::arch::asm;

use dmakit::platform::CpuTopology;

use super::Aarch64;

impl CpuTopology for Aarch64 {
    fn cpu_count(&self) -> usize {
        1
    }

    /// `MPIDR_EL1.Aff0` of the CPU: 0 for the only CPU that runs dmakit.
    fn current_cpu(&self) -> usize {
        let mpidr: u64;
        // SAFETY: reading MPIDR_EL1 has no side effect.
        unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack)) };
        (mpidr & 0xff) as usize
    }
}
