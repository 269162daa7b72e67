//! The HAL's logic: on an arena at a physical address far from its CPU address
//! (`arena`), so every translation goes through a real linear map, and on the process's
//! own memory (`process`), the host DMA layer virtio-drivers' suite runs on.

mod arena;
mod process;
