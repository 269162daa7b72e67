//! DMA engines: devices attached to the machine, what they may reach, and their faults.
//!
//! A device is only allowed to touch what the mapping layer handed it. The model enforces
//! that the way hardware does (a device cannot emit an address above its DMA mask) and the
//! way a test harness must (every access has to fall inside a window *granted* from what
//! `map` returned). A violating access does not happen; it is recorded as a
//! [`DeviceFault`], never silently dropped. The bus-to-physical translation sits behind the
//! one small [`DmaTranslation`] seam: by default a device reaches memory through its own
//! bus windows ([`BusWindowTranslation`], the table its [`Device`] describes), and an
//! IOMMU can take a device's place there. The model reads the table itself, so a mapper
//! that translated wrongly hands the device an address that reaches other memory, or none.

use dmakit::{Device, DeviceId, DmaAddr, PhysAddr};

pub use crate::device_fault::{DeviceFault, FaultReason};
use crate::error::SimError;

/// Translation of bus addresses to physical addresses: the seam where an IOMMU plugs in.
pub trait DmaTranslation {
    /// Translates the start of an access of `len` bytes at `dma` by `device` (as attached
    /// to the machine); `write` says
    /// whether it is a write, so a translation with permissions can refuse it. Returns the
    /// physical address of `dma` and how many bytes from there are physically contiguous
    /// (at least 1, at most `len`); the engine calls again for the rest.
    ///
    /// # Errors
    /// The [`FaultReason`] to record when `dma` has no translation or forbids the access.
    fn translate(
        &self,
        device: &Device,
        dma: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<(PhysAddr, u64), FaultReason>;
}

/// The translation of a device with no IOMMU: its bus windows
/// ([`dmakit::DeviceBuilder::dma_range`]) map bus `[dma, dma + size)` to physical
/// `[cpu, cpu + size)`; with no window the bus address is the physical address. A bus
/// address outside every window is [`FaultReason::NoTranslation`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BusWindowTranslation;

impl DmaTranslation for BusWindowTranslation {
    fn translate(
        &self,
        device: &Device,
        dma: DmaAddr,
        len: u64,
        _write: bool,
    ) -> Result<(PhysAddr, u64), FaultReason> {
        let windows = device.bus_ranges();
        if windows.is_identity() {
            return Ok((PhysAddr::new(dma.as_u64()), len));
        }
        let a = dma.as_u64();
        windows
            .entries()
            .iter()
            .find_map(|w| {
                let off = a.checked_sub(w.dma().as_u64())?;
                let left = w.size().checked_sub(off).filter(|&n| n > 0)?;
                Some((PhysAddr::new(w.cpu().as_u64() + off), left.min(len)))
            })
            .ok_or(FaultReason::NoTranslation)
    }
}

struct Attached {
    dev: Device,
    /// Granted bus windows as half-open `(start, end)`; duplicates allowed (counted).
    grants: Vec<(u64, u64)>,
}

/// The attached devices, their grants and the fault log.
pub struct DmaEngines {
    devices: Vec<Attached>,
    faults: Vec<DeviceFault>,
    translation: Box<dyn DmaTranslation>,
}

impl Default for DmaEngines {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            faults: Vec::new(),
            translation: Box::new(BusWindowTranslation),
        }
    }
}

fn window(addr: u64, len: u64) -> Result<(u64, u64), SimError> {
    addr.checked_add(len)
        .filter(|_| len != 0)
        .map(|end| (addr, end))
        .ok_or(SimError::BadRange { addr, len })
}

impl DmaEngines {
    /// Replaces the bus-to-physical translation.
    pub fn set_translation(&mut self, t: Box<dyn DmaTranslation>) {
        self.translation = t;
    }

    fn find(&self, id: DeviceId) -> Result<usize, SimError> {
        self.devices
            .iter()
            .position(|a| a.dev.id() == id)
            .ok_or(SimError::UnknownDevice(id))
    }

    /// Attaches a device (no grants yet).
    ///
    /// # Errors
    /// [`SimError::DuplicateDevice`] when a device with the same id is attached.
    pub fn attach(&mut self, dev: Device) -> Result<(), SimError> {
        if self.find(dev.id()).is_ok() {
            return Err(SimError::DuplicateDevice(dev.id()));
        }
        self.devices.push(Attached {
            dev,
            grants: Vec::new(),
        });
        Ok(())
    }

    /// The attached device with this id.
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`].
    pub fn device(&self, id: DeviceId) -> Result<&Device, SimError> {
        Ok(&self.devices[self.find(id)?].dev)
    }

    /// Allows `id` to access `[dma, dma + len)`.
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`]; [`SimError::BadRange`] for an empty or overflowing window.
    pub fn grant(&mut self, id: DeviceId, dma: DmaAddr, len: u64) -> Result<(), SimError> {
        let i = self.find(id)?;
        let w = window(dma.as_u64(), len)?;
        self.devices[i].grants.push(w);
        Ok(())
    }

    /// Withdraws one grant of exactly `[dma, dma + len)`.
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`]; [`SimError::NoSuchGrant`] when no such grant exists.
    pub fn revoke(&mut self, id: DeviceId, dma: DmaAddr, len: u64) -> Result<(), SimError> {
        let i = self.find(id)?;
        let w = (dma.as_u64(), dma.as_u64().wrapping_add(len));
        let grants = &mut self.devices[i].grants;
        match grants.iter().rposition(|&g| g == w) {
            Some(p) => {
                grants.swap_remove(p);
                Ok(())
            }
            None => Err(SimError::NoSuchGrant {
                device: id,
                addr: dma.as_u64(),
                len,
            }),
        }
    }

    /// Number of windows currently granted to `id` (0 for an unknown device).
    pub fn grant_count(&self, id: DeviceId) -> usize {
        self.find(id).map_or(0, |i| self.devices[i].grants.len())
    }

    /// Every fault recorded so far, in order.
    pub fn faults(&self) -> &[DeviceFault] {
        &self.faults
    }

    /// Checks an access and translates it into physical chunks `(phys, len)` appended to
    /// `out`; `reach` judges each chunk (is it RAM, and may devices reach it) and names the
    /// fault when not. A refused access is recorded and returned as the fault.
    ///
    /// # Errors
    /// [`SimError::UnknownDevice`], [`SimError::BadRange`] for requests the bus cannot
    /// carry; [`SimError::DeviceFault`] for a refused (and recorded) access.
    pub(crate) fn plan(
        &mut self,
        id: DeviceId,
        dma: DmaAddr,
        len: u64,
        write: bool,
        reach: impl Fn(u64, u64) -> Result<(), FaultReason>,
        out: &mut Vec<(u64, u64)>,
    ) -> Result<(), SimError> {
        let i = self.find(id)?;
        let (start, end) = window(dma.as_u64(), len)?;
        let a = &self.devices[i];
        let mut reason = None;
        if !a.dev.can_address(start, len) {
            reason = Some(FaultReason::AboveMask);
        } else if !a.grants.iter().any(|&(s, e)| s <= start && end <= e) {
            reason = Some(FaultReason::NotGranted);
        } else {
            let mut done = 0;
            while done < len {
                let d = DmaAddr::new(start + done);
                match self.translation.translate(&a.dev, d, len - done, write) {
                    Ok((p, n)) if n >= 1 && n <= len - done => {
                        if let Err(r) = reach(p.as_u64(), n) {
                            reason = Some(r);
                            break;
                        }
                        out.push((p.as_u64(), n));
                        done += n;
                    }
                    Ok(_) => {
                        reason = Some(FaultReason::NoTranslation);
                        break;
                    }
                    Err(r) => {
                        reason = Some(r);
                        break;
                    }
                }
            }
        }
        match reason {
            None => Ok(()),
            Some(reason) => {
                out.clear();
                let f = DeviceFault {
                    device: id,
                    addr: dma,
                    len,
                    write,
                    reason,
                };
                self.faults.push(f);
                Err(SimError::DeviceFault(f))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev32() -> Device {
        Device::builder(DeviceId(1), "d32")
            .dma_bits(32)
            .build()
            .unwrap()
    }

    #[test]
    fn attach_grant_revoke() {
        let mut e = DmaEngines::default();
        e.attach(dev32()).unwrap();
        assert_eq!(
            e.attach(dev32()),
            Err(SimError::DuplicateDevice(DeviceId(1)))
        );
        assert_eq!(
            e.grant(DeviceId(2), DmaAddr::new(0), 1),
            Err(SimError::UnknownDevice(DeviceId(2)))
        );
        assert!(e.grant(DeviceId(1), DmaAddr::new(0x1000), 0).is_err());
        e.grant(DeviceId(1), DmaAddr::new(0x1000), 0x100).unwrap();
        assert_eq!(e.grant_count(DeviceId(1)), 1);
        assert!(e.revoke(DeviceId(1), DmaAddr::new(0x1000), 0x80).is_err());
        e.revoke(DeviceId(1), DmaAddr::new(0x1000), 0x100).unwrap();
        assert_eq!(e.grant_count(DeviceId(1)), 0);
    }

    #[test]
    fn plan_checks_mask_grants_and_memory() {
        let mut e = DmaEngines::default();
        e.attach(dev32()).unwrap();
        let ram = |a: u64, n: u64| {
            if a + n <= 1 << 40 {
                Ok(())
            } else {
                Err(FaultReason::NotMemory)
            }
        };
        let mut out = Vec::new();
        let hi = DmaAddr::new(1 << 33);
        e.grant(DeviceId(1), hi, 64).unwrap();
        let r = e.plan(DeviceId(1), hi, 64, false, ram, &mut out);
        assert!(matches!(r, Err(SimError::DeviceFault(f)) if f.reason == FaultReason::AboveMask));
        let lo = DmaAddr::new(0x2000);
        let r = e.plan(DeviceId(1), lo, 64, true, ram, &mut out);
        assert!(matches!(r, Err(SimError::DeviceFault(f)) if f.reason == FaultReason::NotGranted));
        e.grant(DeviceId(1), lo, 64).unwrap();
        assert!(e
            .plan(DeviceId(1), DmaAddr::new(0x2008), 64, true, ram, &mut out)
            .is_err());
        e.plan(DeviceId(1), DmaAddr::new(0x2008), 56, true, ram, &mut out)
            .unwrap();
        assert_eq!(out, vec![(0x2008, 56)]);
        assert_eq!(e.faults().len(), 3);
        assert_eq!(e.faults()[1].reason, FaultReason::NotGranted);
        assert!(e.faults()[1].write);
    }
}
