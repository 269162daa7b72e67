//! Where the atomic pool may lie, derived from the machine's memory map.
//!
//! The default reach, 4 GiB - 1, puts the atomic pool where 32-bit devices reach it. That
//! is only possible when memory lies there: a host or board whose RAM starts above 4 GiB
//! has none, and an allocator with the default would fail to find its initial pool. No
//! 32-bit device reaches such RAM at all, so the pool's best place there is simply as low
//! as memory goes. [`DmaAllocatorConfig::for_memory`] makes that choice from the RAM ranges
//! the zones are built over, and is the default unchanged wherever RAM holds the pool below
//! 4 GiB.

use crate::addr::PhysRange;
use crate::dma_alloc::DmaAllocatorConfig;

/// The last byte 32-bit devices reach.
const BELOW_4G: u64 = u32::MAX as u64;

impl DmaAllocatorConfig {
    /// The [default](DmaAllocatorConfig::default) configuration, with an atomic pool reach
    /// that suits the RAM `ram` (the ranges the zones are built over):
    ///
    /// - 4 GiB - 1, as the default, when one range holds the initial pool's size of whole,
    ///   pool-aligned pages at or below it (32-bit devices reach the pool);
    /// - otherwise the last byte of the first 4 GiB above the lowest range's start (the
    ///   pool as low as memory goes, since too little memory, or none, lies below 4 GiB to
    ///   hold it), or the top of the address space if that overflows.
    ///
    /// With no ranges it is the default.
    pub fn for_memory(ram: &[PhysRange]) -> Self {
        let cfg = Self::default();
        let pool = cfg.atomic_pool_bytes;
        // The last byte of the first pool-aligned piece of each range, if it has one.
        let first_piece_end = |r: &PhysRange| {
            let last = r.start().checked_align_up(pool)?.checked_add(pool - 1)?;
            (last.as_u64() <= r.last().as_u64()).then_some(last.as_u64())
        };
        let holds_low_pool = ram
            .iter()
            .filter_map(first_piece_end)
            .any(|last| last <= BELOW_4G);
        let lowest = ram.iter().map(|r| r.start().as_u64()).min();
        let reach = match lowest {
            Some(low) if !holds_low_pool => low.saturating_add(BELOW_4G),
            _ => BELOW_4G,
        };
        Self {
            atomic_pool_reach: reach,
            ..cfg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;

    const GIB: u64 = 1 << 30;

    fn r(start: u64, len: u64) -> PhysRange {
        PhysRange::new(PhysAddr::new(start), len).unwrap()
    }

    #[test]
    fn memory_below_4g_keeps_the_default_reach() {
        let d = DmaAllocatorConfig::default();
        assert_eq!(DmaAllocatorConfig::for_memory(&[]), d);
        assert_eq!(DmaAllocatorConfig::for_memory(&[r(0, 8 * GIB)]), d);
        // A board whose RAM starts at 1 GiB and runs past 4 GiB.
        assert_eq!(DmaAllocatorConfig::for_memory(&[r(GIB, 8 * GIB)]), d);
        // Low memory in a second range counts too.
        assert_eq!(
            DmaAllocatorConfig::for_memory(&[r(16 * GIB, GIB), r(2 * GIB, GIB)]),
            d
        );
    }

    #[test]
    fn memory_above_4g_moves_the_reach_to_its_first_4g() {
        let c = DmaAllocatorConfig::for_memory(&[r(8 * GIB, 2 * GIB)]);
        assert_eq!(c.atomic_pool_reach, 12 * GIB - 1);
        assert_eq!(
            c.atomic_pool_bytes,
            DmaAllocatorConfig::default().atomic_pool_bytes
        );
        // Too little memory below 4 GiB for the pool: the same, from the lowest start.
        let tail = 4 * GIB - 64 * 1024;
        let c = DmaAllocatorConfig::for_memory(&[r(tail, 64 * 1024), r(6 * GIB, GIB)]);
        assert_eq!(c.atomic_pool_reach, tail + 4 * GIB - 1);
        // Memory at the top of the address space.
        let top = u64::MAX - 2 * GIB + 1;
        let c = DmaAllocatorConfig::for_memory(&[r(top, GIB)]);
        assert_eq!(c.atomic_pool_reach, u64::MAX);
    }
}
