//! The direct path: the device reaches the caller's buffer in place (at the bus address
//! the router found for it).
//!
//! Used when nothing forces a bounce. The only work is the cache maintenance the direction
//! needs on a non-coherent device; a coherent device needs none. The path knows nothing of
//! bounce pools or IOMMUs: the routing layer chose it.

use crate::addr::PhysRange;
use crate::attrs::MapAttrs;
use crate::device::Device;
use crate::direction::Direction;
use crate::maintenance;
use crate::platform::CacheMaintenance;

/// Hands `range` to the device for a transfer in `dir`. With [`MapAttrs::SKIP_CPU_SYNC`]
/// the maintenance is left to the caller's `sync_for_device`.
#[inline(always)]
pub(crate) fn map<C: CacheMaintenance + ?Sized>(
    cache: &C,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    attrs: MapAttrs,
) {
    if !attrs.skips_cpu_sync() {
        sync_for_device(cache, dev, range, dir);
    }
}

/// Gives `range` back to the CPU after a transfer in `dir`. With
/// [`MapAttrs::SKIP_CPU_SYNC`] the maintenance is left to the caller's `sync_for_cpu`.
#[inline(always)]
pub(crate) fn unmap<C: CacheMaintenance + ?Sized>(
    cache: &C,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
    attrs: MapAttrs,
) {
    if !attrs.skips_cpu_sync() {
        sync_for_cpu(cache, dev, range, dir);
    }
}

/// Ownership of `range` passes to the device.
#[inline(always)]
pub(crate) fn sync_for_device<C: CacheMaintenance + ?Sized>(
    cache: &C,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
) {
    if !dev.is_coherent() {
        maintenance::for_device(cache, range, dir);
    }
}

/// Ownership of `range` passes back to the CPU.
#[inline(always)]
pub(crate) fn sync_for_cpu<C: CacheMaintenance + ?Sized>(
    cache: &C,
    dev: &Device,
    range: PhysRange,
    dir: Direction,
) {
    if !dev.is_coherent() {
        maintenance::for_cpu(cache, range, dir);
    }
}
