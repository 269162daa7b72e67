//! The one global the `Hal` methods reach, installed once.

use core::fmt;

use dmakit::DeviceError;
use spin::Once;

use crate::config::HalConfig;

/// The installed DMA layer: the configuration and the device derived from it for
/// platform access. [`crate::DmakitHal`] calls the one [`install`] put in place; tests and
/// adapters with their own global may make and call their own.
pub struct VirtioDma {
    pub(crate) cfg: HalConfig,
    /// `cfg.device` with `force_bounce` set: what a share asking for platform access
    /// (a confidential guest's) is mapped as.
    pub(crate) bounced: dmakit::Device,
}

impl VirtioDma {
    /// The HAL's state for `cfg`.
    ///
    /// # Errors
    /// The [`DeviceError`] of deriving the force-bounce device from `cfg.device` (none for
    /// a device that was valid).
    pub fn new(cfg: HalConfig) -> Result<Self, DeviceError> {
        let bounced = cfg.device.to_builder().force_bounce(true).build()?;
        Ok(Self { cfg, bounced })
    }

    /// The configuration.
    pub fn config(&self) -> &HalConfig {
        &self.cfg
    }

    /// The device a call is mapped as: the configured one, or with `force_bounce` when it
    /// asks for platform access.
    pub(crate) fn device(&self, access_platform: bool) -> &dmakit::Device {
        if access_platform {
            &self.bounced
        } else {
            &self.cfg.device
        }
    }
}

static INSTALLED: Once<VirtioDma> = Once::new();

/// Why [`install`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallError {
    /// A DMA layer is installed already; it stays.
    AlreadyInstalled,
    /// The configured device could not be derived for platform access.
    Device(DeviceError),
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InstallError::AlreadyInstalled => {
                f.write_str("a DMA layer is installed for virtio already (install once)")
            }
            InstallError::Device(e) => write!(f, "virtio device description: {e}"),
        }
    }
}

impl core::error::Error for InstallError {}

/// Installs the DMA layer [`crate::DmakitHal`] uses, once, before the first virtio driver
/// is created. Callable from `no_std`; allocates nothing. Returns the installed state.
///
/// # Errors
/// [`InstallError::AlreadyInstalled`] on a second call (the first installation stays);
/// [`InstallError::Device`] if the device cannot be derived for platform access.
pub fn install(cfg: HalConfig) -> Result<&'static VirtioDma, InstallError> {
    let state = VirtioDma::new(cfg).map_err(InstallError::Device)?;
    let mut fresh = false;
    let installed = INSTALLED.call_once(|| {
        fresh = true;
        state
    });
    if fresh {
        Ok(installed)
    } else {
        Err(InstallError::AlreadyInstalled)
    }
}

/// The installed DMA layer.
///
/// # Panics
/// If [`install`] has not been called: a virtio driver was created before its DMA layer.
#[track_caller]
pub fn installed() -> &'static VirtioDma {
    match INSTALLED.get() {
        Some(s) => s,
        None => panic!("dmakit-virtio: no DMA layer installed; call dmakit_virtio::install first"),
    }
}
