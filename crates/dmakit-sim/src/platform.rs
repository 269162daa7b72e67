//! The core crate's platform traits, implemented by the simulated [`Machine`].
//!
//! This is what lets the real mapping layer run on the model: `DmaMapper::builder(&machine).build()`
//! drives the simulated cache, and `CpuMemory` copies (bounce copies) go through that cache
//! and carry provenance stamps, so a bounce that leaks data is caught.

use dmakit::{
    CacheMaintenance, CpuMemory, CpuTopology, MemoryFault, PageAllocator, PhysAddr, PhysRange,
};

use crate::fault_inject::MaintenanceKind;
use crate::machine::Machine;

impl CacheMaintenance for Machine {
    fn cache_line_size(&self) -> u64 {
        self.line_size()
    }
    fn clean(&self, range: PhysRange) {
        self.maintain(MaintenanceKind::Clean, range);
    }
    fn invalidate(&self, range: PhysRange) {
        self.maintain(MaintenanceKind::Invalidate, range);
    }
    fn clean_invalidate(&self, range: PhysRange) {
        self.maintain(MaintenanceKind::CleanInvalidate, range);
    }
}

// SAFETY: the model's memory is its own sparse store, not Rust memory; an access outside
// its RAM map is a MemoryFault.
unsafe impl CpuMemory for Machine {
    /// Loads through the cache, then stores through it, stamps included.
    fn copy(&self, dst: PhysAddr, src: PhysAddr, len: u64) -> Result<(), MemoryFault> {
        self.copy_(dst.as_u64(), src.as_u64(), len)
    }
    /// Stores through the cache, stamped [`crate::Owner::NOBODY`].
    fn fill(&self, dst: PhysAddr, byte: u8, len: u64) -> Result<(), MemoryFault> {
        self.fill_(dst.as_u64(), byte, len)
    }
}

impl CpuTopology for Machine {
    fn cpu_count(&self) -> usize {
        self.cpu_count_()
    }
    fn current_cpu(&self) -> usize {
        self.current_cpu_()
    }
}

impl PageAllocator for Machine {
    fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        self.alloc_pages_between(pages, 0, max_addr)
    }
    /// A free of something that is not a live allocation is ignored and counted in
    /// [`crate::MachineStats::bad_frees`].
    fn free_pages(&self, base: PhysAddr, pages: u64) {
        // The trait has no error channel; a bad free is recorded in the statistics.
        let _ = self.free_pages_checked(base, pages);
    }
}
