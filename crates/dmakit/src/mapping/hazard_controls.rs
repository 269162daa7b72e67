//! Switches that turn a safety mechanism of the mapper off.
//!
//! The machine model and its tests turn a mechanism off to show the corruption it
//! prevents. A product has no use for that, so the switches exist only with the
//! model/test-only cargo feature `hazard-controls`; without it [`HazardControls`] is an
//! empty private type and every mechanism is always on.

use crate::device::Device;
#[cfg(feature = "hazard-controls")]
use crate::platform::HostSharing;

/// Switches that turn a safety mechanism off, so tests and the model can show the failure
/// it prevents (cargo feature `hazard-controls`). Never set them outside such a
/// demonstration; the default turns nothing off.
#[cfg(feature = "hazard-controls")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HazardControls {
    /// Do not fill inbound bounces from the original buffer (at map and at
    /// `sync_for_device`): a short device write then copies back whatever the bounce memory
    /// held before — data of an earlier user.
    pub skip_inbound_fill: bool,
    /// Route devices that have a restricted pool like every other device: aligned buffers
    /// then map in place and the others bounce through the global pool, outside the one
    /// window the device may reach.
    pub restricted_pools_ignored: bool,
    /// Ignore every device's bus windows ([`crate::DeviceBuilder::dma_range`]): the mapper
    /// hands out physical addresses as bus addresses and takes bus addresses back as
    /// physical ones, so a device with windows reaches the wrong memory or none.
    pub identity_bus_translation: bool,
    /// Let the deferred-mapping queue grow past its capacity instead of refusing with
    /// [`crate::DmaError::DeferQueueFull`]: queueing then allocates on the map path, which
    /// must not allocate in interrupt context.
    pub grow_defer_queue: bool,
    /// Do not share pool memory with the host: a [`HostSharing`] given these controls
    /// (see [`HostSharing::with_controls`]) skips every conversion, so in a confidential
    /// guest the bounce pools and coherent allocations stay private and the devices that
    /// use them fault.
    pub skip_memory_sharing: bool,
}

#[cfg(feature = "hazard-controls")]
impl HostSharing {
    /// The same sharing with `controls` applied (model/test-only feature
    /// `hazard-controls`): with [`HazardControls::skip_memory_sharing`] no conversion is
    /// made.
    pub fn with_controls(mut self, controls: HazardControls) -> Self {
        self.skip = controls.skip_memory_sharing;
        self
    }
}

/// Without the `hazard-controls` feature there is nothing to switch off.
#[cfg(not(feature = "hazard-controls"))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HazardControls {}

impl HazardControls {
    /// Runs `f` on `args` with the device as the mapper's paths see it: `dev` itself, or
    /// without its bus windows when `identity_bus_translation` is on (only with the
    /// feature; a copy of the description on the stack, no heap memory). The copy is made
    /// out of line and `f` is called in one place either way, so with the control off the
    /// cost is one load and one branch: `args` (passed rather than captured by a hot
    /// caller) and `dev` stay in registers.
    #[inline(always)]
    pub(crate) fn with_bus_view<A, R>(
        &self,
        dev: &Device,
        args: A,
        f: impl FnOnce(&Device, A) -> R,
    ) -> R {
        #[cfg(feature = "hazard-controls")]
        let identity;
        #[cfg(feature = "hazard-controls")]
        let dev = if self.identity_bus_translation {
            identity = identity_view(dev);
            &identity
        } else {
            dev
        };
        f(dev, args)
    }

    /// Whether inbound bounces are left unfilled (always `false` without the feature).
    #[inline(always)]
    pub(crate) const fn skips_inbound_fill(&self) -> bool {
        #[cfg(feature = "hazard-controls")]
        {
            self.skip_inbound_fill
        }
        #[cfg(not(feature = "hazard-controls"))]
        {
            false
        }
    }

    /// Whether restricted pools are ignored (always `false` without the feature).
    #[inline(always)]
    pub(crate) const fn ignores_restricted_pools(&self) -> bool {
        #[cfg(feature = "hazard-controls")]
        {
            self.restricted_pools_ignored
        }
        #[cfg(not(feature = "hazard-controls"))]
        {
            false
        }
    }

    /// Whether the deferred queue grows past its capacity (always `false` without the
    /// feature).
    #[inline(always)]
    pub(crate) const fn grows_defer_queue(&self) -> bool {
        #[cfg(feature = "hazard-controls")]
        {
            self.grow_defer_queue
        }
        #[cfg(not(feature = "hazard-controls"))]
        {
            false
        }
    }
}

/// `dev` without its bus windows (the `identity_bus_translation` control).
#[cfg(feature = "hazard-controls")]
#[cold]
#[inline(never)]
fn identity_view(dev: &Device) -> Device {
    dev.without_bus_ranges()
}
