//! The names a driver needs to map a buffer, in one `use dmakit::prelude::*;`.
//!
//! Bouncing one buffer takes a platform (the three traits it implements and the two types
//! their methods use), a [`DmaMapper`] built with a SWIOTLB pool, a [`Device`] and the
//! address, direction and error types of the streaming API. The crate-level documentation
//! shows them end to end. Everything else — other pools, the IOMMU layer, statistics, the
//! debug checker, DMA allocators — lives in its module.

pub use crate::addr::{DmaAddr, PhysAddr, PhysRange};
pub use crate::device::{Device, DeviceId};
pub use crate::direction::Direction;
pub use crate::error::DmaError;
pub use crate::mapping::DmaMapper;
pub use crate::platform::{CacheMaintenance, CpuMemory, CpuTopology, MemoryFault, Platform};
