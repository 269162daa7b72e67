//! Acceptance: every map, unmap and sync path is callable from atomic context.
//!
//! Two properties, one module each: no path allocates from the heap (`no_alloc`), and a
//! map from an interrupt that arrives inside another map's critical section on the same
//! CPU completes instead of deadlocking (`interrupts`).

#[path = "atomic_context/interrupts.rs"]
mod interrupts;
#[path = "iommu_rig/mod.rs"]
mod iommu_rig;
#[path = "atomic_context/no_alloc.rs"]
mod no_alloc;
#[path = "testbed/mod.rs"]
mod testbed;

/// Every allocation of this binary goes through the watch: a flagged region that allocates
/// fails its test.
#[global_allocator]
static WATCH: no_alloc::Watch = no_alloc::Watch;
