//! The DMA API calls drivers expect, on the machine model: mapping attributes
//! (`SKIP_CPU_SYNC`, `need_sync`), `map_resource`, `sync_sg_for_*`, the small-block coherent
//! pool (`DmaPool`), IOMMU identity domains, and scatter-gather lists filling an IOMMU
//! domain's piece table. Bytes are judged by the oracle under a
//! misbehaving cache; each mechanism has a control that shows the model catches its
//! failure.

mod dma_api {
    pub mod identity;
    pub mod iommu_sg_full;
    pub mod no_alloc;
    pub mod pool;
    pub mod resource;
    pub mod rig;
    pub mod sg_sync;
    pub mod skip_sync;
}
