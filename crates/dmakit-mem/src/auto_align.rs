//! The automatic kmalloc minimum alignment, kept up to date as devices are added.
//!
//! [`MinAlignPolicy::auto`] states the rule; this module feeds it what the mapper knows:
//! for each device, whether it is non-coherent and whether the mapper has a bounce pool
//! that serves it ([`dmakit::DmaMapper::needs_line_aligned_kmalloc`]). Kmalloc stays
//! 8-byte aligned while every non-coherent device has a pool to repair its misaligned
//! buffers, and is line aligned from the first non-coherent device that has none (nothing
//! could repair a line it shares with a neighbour object). Each added device re-evaluates
//! the choice, so a machine probing its devices one by one knows after every probe which
//! alignment new kmalloc caches must take.

use dmakit::{Device, DmaMapper, Platform};

use crate::error::MemError;
use crate::policy::MinAlignPolicy;

/// The automatic choice over the devices added so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoMinAlign {
    /// The largest cache line of the CPU and the devices added.
    line: u64,
    /// Devices added so far.
    devices: usize,
    /// Non-coherent devices added that no bounce pool of the mapper serves.
    unserved: usize,
}

impl AutoMinAlign {
    /// No device yet, on a CPU whose cache line is `cpu_line`: 8-byte kmalloc.
    ///
    /// # Errors
    /// [`MemError::BadCacheLine`] unless `cpu_line` is a power of two from 8 to 4096.
    pub fn new(cpu_line: u64) -> Result<Self, MemError> {
        MinAlignPolicy::auto(false, false, cpu_line)?;
        Ok(Self {
            line: cpu_line,
            devices: 0,
            unserved: 0,
        })
    }

    /// Adds `dev`, as `mapper` would map it, and returns the re-evaluated policy.
    ///
    /// # Errors
    /// [`MemError::BadCacheLine`] only if the device's line were outside 8..=4096, which
    /// [`Device`]'s invariant rules out; the state is unchanged then.
    pub fn add_device<P: Platform>(
        &mut self,
        mapper: &DmaMapper<P>,
        dev: &Device,
    ) -> Result<MinAlignPolicy, MemError> {
        let unserved = mapper.needs_line_aligned_kmalloc([dev]);
        let next = Self {
            line: self.line.max(dev.cache_line()),
            devices: self.devices + 1,
            unserved: self.unserved + usize::from(unserved),
        };
        let policy = next.policy()?;
        *self = next;
        Ok(policy)
    }

    /// The policy for the devices added so far.
    ///
    /// # Errors
    /// As [`AutoMinAlign::add_device`].
    pub fn policy(&self) -> Result<MinAlignPolicy, MemError> {
        // "Non-coherent without a pool" is exactly what `unserved` counts.
        MinAlignPolicy::auto(self.unserved > 0, false, self.line)
    }

    /// Devices added so far.
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// Non-coherent devices added that no bounce pool serves.
    pub fn unserved(&self) -> usize {
        self.unserved
    }
}
