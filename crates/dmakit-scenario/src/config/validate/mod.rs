//! Turning a spec into the validated [`Scenario`]: every value checked against the machine
//! and the model's limits, every mistake reported at its position.
//!
//! [`parse_scenario`] reads the file and checks what spans tables (duplicate device names,
//! device, transfer-pattern and resident-memory counts); each table is checked in the
//! module named for it: [`machine`] (with the background churn), [`device`], [`driver`],
//! and [`transfer`] for each of a driver's patterns.

mod device;
mod driver;
mod machine;
mod transfer;

use std::collections::HashMap;

use dmakit::reintroduce::{self, Defect};
use dmakit::Device;

use super::error::{Ctx, ScenarioError};
use super::limits::{MAX_DEVICES, MAX_RESIDENT_BYTES, MAX_TRANSFER_SITES};
use super::spec::FileSpec;
use crate::model::{MachineModel, Scenario};

use device::device;
use driver::{driver, resident_bytes};
use machine::{churn, machine};

const GIB: u64 = 1 << 30;

/// Parses and validates the scenario in `src`; `file` names it in errors.
///
/// # Errors
/// A [`ScenarioError`] for the first mistake: TOML syntax, an unknown or missing field, a
/// value of the wrong type, a value that makes no sense for the machine, or one beyond the
/// limits of the model (see the module docs).
pub fn parse_scenario(src: &str, file: &str) -> Result<Scenario, ScenarioError> {
    let cx = Ctx { file, src };
    let spec: FileSpec = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let text = src
            .get(span.clone())
            .unwrap_or("")
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        cx.err(span, text, e.message().trim().to_string())
    })?;
    let machine = machine(&cx, &spec.machine)?;
    let churn = churn(&cx, &spec.kmalloc)?;
    let mut devices = Vec::with_capacity(spec.devices.len());
    let mut iommu = Vec::with_capacity(spec.devices.len());
    let mut index = HashMap::with_capacity(spec.devices.len());
    for (i, d) in spec.devices.iter().enumerate() {
        let name = d.get_ref().name.get_ref().as_str();
        let taken = if reintroduce::active(Defect::CliDeviceValidationQuadratic) {
            devices.iter().any(|o: &Device| o.name() == name)
        } else {
            index.contains_key(name)
        };
        if taken {
            return Err(cx.err(
                d.get_ref().name.span(),
                format!("device[{i}].name"),
                format!("a device named `{name}` already exists"),
            ));
        }
        let (dev, mode) = device(&cx, i, d, &machine)?;
        index.insert(name, i);
        devices.push(dev);
        iommu.push(mode);
    }
    if let Some(d) = spec.devices.get(MAX_DEVICES) {
        return Err(cx.err(
            d.span(),
            format!("device[{MAX_DEVICES}]"),
            format!(
                "{} devices: the model runs at most {MAX_DEVICES}",
                spec.devices.len()
            ),
        ));
    }
    let mut drivers = Vec::new();
    let mut sites = 0;
    let mut resident = 0;
    for (i, d) in spec.drivers.iter().enumerate() {
        // Checked before each driver: the file may hold any number of them.
        sites += d.get_ref().transfers.get_ref().len();
        if sites > MAX_TRANSFER_SITES {
            return Err(cx.err(
                d.span(),
                format!("driver[{i}]"),
                format!(
                    "{sites} transfer patterns up to this driver; at most {MAX_TRANSFER_SITES} \
                     are supported"
                ),
            ));
        }
        let model = driver(&cx, i, d, &devices, &index, &iommu)?;
        for (j, t) in model.transfers.iter().enumerate() {
            resident += resident_bytes(t);
            if resident > MAX_RESIDENT_BYTES {
                return Err(cx.err(
                    d.get_ref().transfers.get_ref()[j].span(),
                    format!("driver[{i}].transfer[{j}]"),
                    format!(
                        "the transfer patterns up to this one keep {resident} bytes alive at \
                         once (buffers in flight, fragments, frames); the model holds at most \
                         {MAX_RESIDENT_BYTES} (16 MiB): lower queue_depth, in_flight, frames \
                         or size"
                    ),
                ));
            }
        }
        drivers.push(model);
    }
    if drivers.is_empty() {
        return Err(cx.err(
            0..0,
            "driver",
            "the scenario has no [[driver]]: nothing to run",
        ));
    }
    Ok(Scenario {
        name: spec.name,
        description: spec.description,
        machine,
        churn,
        devices,
        iommu,
        drivers,
    })
}

/// The lowest address of the machine's RAM (used to explain impossible machines).
pub fn lowest_ram(m: &MachineModel) -> u64 {
    m.ram.iter().map(|r| r.0).min().unwrap_or(0)
}

/// Whether the machine has RAM above 4 GiB.
pub fn has_ram_above_4g(m: &MachineModel) -> bool {
    m.ram.iter().any(|&(s, l)| s + l > 4 * GIB)
}
