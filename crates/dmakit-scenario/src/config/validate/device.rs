//! One `[[device]]`: its DMA mask checked against the RAM it must reach, its cache line,
//! coherence, IOMMU domain and trust.

use dmakit::{Device, DeviceId};
use toml::Spanned;

use crate::config::error::{Ctx, ScenarioError};
use crate::config::spec::DeviceSpec;
use crate::model::{IommuMode, MachineModel, PoolSize};

pub(super) fn device(
    cx: &Ctx<'_>,
    i: usize,
    d: &Spanned<DeviceSpec>,
    m: &MachineModel,
) -> Result<(Device, Option<IommuMode>), ScenarioError> {
    let s = d.get_ref();
    let mode = match &s.iommu {
        None => None,
        Some(v) => match v.get_ref().as_str() {
            "strict" => Some(IommuMode::Strict),
            "lazy" => Some(IommuMode::Lazy),
            other => {
                return Err(cx.err(
                    v.span(),
                    format!("device[{i}].iommu"),
                    format!("`{other}`: write \"strict\" or \"lazy\" (or leave it out: no IOMMU)"),
                ))
            }
        },
    };
    let trusted = s.trusted.as_ref().is_none_or(|t| *t.get_ref());
    if !trusted && mode.is_none() {
        let span = s.trusted.as_ref().map_or(d.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("device[{i}].trusted"),
            format!(
                "device `{}` is untrusted but not behind the IOMMU: only an IOMMU can keep an \
                 untrusted device to its own buffers; add iommu = \"strict\" or \"lazy\"",
                s.name.get_ref()
            ),
        ));
    }
    if !trusted && m.bounce_pool == PoolSize::None {
        return Err(cx.err(
            s.trusted.as_ref().map_or(d.span(), Spanned::span),
            format!("device[{i}].trusted"),
            "untrusted devices bounce every buffer that does not fill whole IOMMU pages, and \
             the machine has no bounce pool (machine.bounce_pool = \"none\"); add one",
        ));
    }
    let bits = s.dma_bits.as_ref().map_or(64, |b| *b.get_ref());
    let bits_span = s.dma_bits.as_ref().map_or(d.span(), Spanned::span);
    if !(1..=64).contains(&bits) {
        return Err(cx.err(
            bits_span,
            format!("device[{i}].dma_bits"),
            "must be from 1 to 64",
        ));
    }
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    };
    let lowest = m.ram.iter().map(|r| r.0).min().unwrap_or(0);
    // Behind an IOMMU the device sees IOVAs below its mask, wherever RAM is.
    if lowest > mask && mode.is_none() {
        return Err(cx.err(
            bits_span,
            format!("device[{i}].dma_bits"),
            format!(
                "device `{}` can only reach addresses up to {mask:#x}, but RAM starts at {lowest:#x}: \
                 none of its buffers, and no bounce pool, could ever be reached; give it more \
                 address bits or add RAM below its limit",
                s.name.get_ref()
            ),
        ));
    }
    if m.bounce_pool == PoolSize::None && !s.coherent && mode.is_none() {
        let beyond = m.ram.iter().any(|&(st, len)| st + (len - 1) > mask);
        if beyond {
            return Err(cx.err(
                bits_span,
                format!("device[{i}].dma_bits"),
                format!(
                    "device `{}` cannot reach RAM above {mask:#x} and the machine has no bounce pool \
                     (machine.bounce_pool = \"none\"), so its buffers there could not be mapped; \
                     add a bounce pool",
                    s.name.get_ref()
                ),
            ));
        }
    }
    let line = s
        .cache_line
        .as_ref()
        .map_or(m.cache.line_size, |l| *l.get_ref());
    // Device names live as long as the program: reports refer to them by `&'static str`.
    let name: &'static str = Box::leak(s.name.get_ref().clone().into_boxed_str());
    Device::builder(DeviceId(i as u32 + 1), name)
        .dma_bits(bits as u32)
        .coherent(s.coherent)
        .cache_line(line)
        .max_segment_size(u64::MAX)
        .trusted(trusted)
        .build()
        .map(|dev| (dev, mode))
        .map_err(|e| {
            let span = s.cache_line.as_ref().map_or(d.span(), Spanned::span);
            cx.err(span, format!("device[{i}]"), e.to_string())
        })
}
