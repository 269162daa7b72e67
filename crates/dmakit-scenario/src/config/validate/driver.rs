//! One `[[driver]]`: the device it drives (by name), its weight, its transfer patterns, and
//! the bytes they keep alive in the model.

use std::collections::HashMap;

use dmakit::Device;
use toml::Spanned;

use super::transfer::transfer;
use crate::config::error::{Ctx, ScenarioError};
use crate::config::limits::{MAX_DRIVER_RATE, MAX_DRIVER_WEIGHT};
use crate::config::spec::DriverSpec;
use crate::model::{BufferModel, DriverModel, IommuMode, TransferModel};

/// How many device names an "unknown device" error lists.
const NAMES_LISTED: usize = 8;

pub(super) fn driver(
    cx: &Ctx<'_>,
    i: usize,
    d: &Spanned<DriverSpec>,
    devices: &[Device],
    index: &HashMap<&str, usize>,
    iommu: &[Option<IommuMode>],
) -> Result<DriverModel, ScenarioError> {
    let s = d.get_ref();
    let device = *index.get(s.device.get_ref().as_str()).ok_or_else(|| {
        let mut known: Vec<&str> = devices
            .iter()
            .take(NAMES_LISTED)
            .map(Device::name)
            .collect();
        if devices.len() > NAMES_LISTED {
            known.push("...");
        }
        let known = if devices.is_empty() {
            "the scenario has none".to_string()
        } else {
            format!("{} of them: {}", devices.len(), known.join(", "))
        };
        cx.err(
            s.device.span(),
            format!("driver[{i}].device"),
            format!(
                "no [[device]] named `{}` (devices: {known})",
                s.device.get_ref()
            ),
        )
    })?;
    let w = *s.weight.get_ref();
    if !(w > 0.0 && w <= MAX_DRIVER_WEIGHT) {
        return Err(cx.err(
            s.weight.span(),
            format!("driver[{i}].weight"),
            format!("must be positive and at most {MAX_DRIVER_WEIGHT:e}"),
        ));
    }
    let rate = match &s.rate {
        Some(r) if !(*r.get_ref() > 0.0 && *r.get_ref() <= MAX_DRIVER_RATE) => {
            return Err(cx.err(
                r.span(),
                format!("driver[{i}].rate"),
                format!("operations per second: must be positive and at most {MAX_DRIVER_RATE:e}"),
            ))
        }
        r => r.as_ref().map(|r| *r.get_ref()),
    };
    let mut transfers = Vec::new();
    for (j, t) in s.transfers.get_ref().iter().enumerate() {
        let f = format!("driver[{i}].transfer[{j}]");
        let model = transfer(cx, &f, t)?;
        if matches!(model.buffer, BufferModel::Noncontiguous { .. }) && iommu[device].is_none() {
            return Err(cx.err(
                t.get_ref().buffer.span(),
                format!("{f}.buffer"),
                format!(
                    "noncontiguous buffers are scattered pages made contiguous by the IOMMU, \
                     but device `{}` is not behind it; add iommu = \"strict\" or \"lazy\" to the \
                     device",
                    s.device.get_ref()
                ),
            ));
        }
        transfers.push(model);
    }
    if transfers.is_empty() {
        return Err(cx.err(
            s.transfers.span(),
            format!("driver[{i}].transfer"),
            "a driver needs at least one [[driver.transfer]]",
        ));
    }
    Ok(DriverModel {
        name: s.name.clone(),
        device,
        weight: w,
        rate,
        transfers,
    })
}

/// Bytes `t` keeps alive at once in the model's memory (see [`MAX_RESIDENT_BYTES`]). Every
/// term is bounded by the validation of `t`, so this cannot overflow.
pub(super) fn resident_bytes(t: &TransferModel) -> u64 {
    let depth = t.queue_depth as u64;
    match t.buffer {
        BufferModel::PageFrag {
            headroom,
            tail,
            in_flight,
            ..
        } => (headroom + t.size.1 + tail) * (in_flight as u64 + depth),
        BufferModel::Noncontiguous { frames } => t.size.1 * frames as u64,
        BufferModel::StructField { struct_size, .. } => struct_size,
        BufferModel::Kmalloc | BufferModel::DmaKmalloc | BufferModel::Pages => t.size.1 * depth,
    }
}
