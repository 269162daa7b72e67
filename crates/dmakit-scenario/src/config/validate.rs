//! Turning a [`FileSpec`] into the validated [`Scenario`]: every value checked against the
//! machine and the model's [limits](super::limits), every mistake reported at its position.

use std::collections::HashMap;
use std::path::PathBuf;

use dmakit::reintroduce::{self, Defect};
use dmakit::{Device, DeviceId, Direction};
use dmakit_sim::cache::CacheConfig;
use dmakit_sim::hazard::HazardConfig;
use dmakit_sim::iommu::Granule;
use toml::Spanned;

use super::error::{Ctx, ScenarioError};
use super::limits::{
    MAX_BOUNCE_POOL_BYTES, MAX_CACHE_BYTES, MAX_CACHE_WAYS, MAX_DEVICES, MAX_DRIVER_WEIGHT,
    MAX_LIVE_OBJECTS, MAX_RAM_RANGES, MAX_RESIDENT_BYTES, MAX_TRANSFER_SITES,
};
use super::spec::{
    DeviceSpec, Directions, DriverSpec, FileSpec, KmallocSpec, MachineSpec, SizeRange, SizeText,
    TransferSpec,
};
use crate::model::{
    BufferModel, ChurnModel, DriverModel, IommuMode, MachineModel, PoolSize, Scenario,
    SlabinfoSource, TransferModel,
};

/// How many device names an "unknown device" error lists.
const NAMES_LISTED: usize = 8;

const GIB: u64 = 1 << 30;
const SEGMENT: u64 = 256 * 1024;

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

fn machine(cx: &Ctx<'_>, m: &MachineSpec) -> Result<MachineModel, ScenarioError> {
    let cpus = *m.cpus.get_ref();
    if !(1..=256).contains(&cpus) {
        return Err(cx.err(m.cpus.span(), "machine.cpus", "must be from 1 to 256"));
    }
    let line = *m.cache_line.get_ref();
    if !matches!(line, 32 | 64 | 128) {
        return Err(cx.err(
            m.cache_line.span(),
            "machine.cache_line",
            format!("{line}: the model supports cache lines of 32, 64 or 128 bytes"),
        ));
    }
    let capacity = match &m.cache_size {
        Some(s) => cx.size(s, "machine.cache_size")?,
        None => 64 * 1024,
    };
    let ways = m.cache_ways.as_ref().map_or(4, |w| *w.get_ref());
    if !reintroduce::active(Defect::CliCacheSizeUnbounded) {
        if let Some(s) = m.cache_size.as_ref().filter(|_| capacity > MAX_CACHE_BYTES) {
            return Err(cx.err(
                s.span(),
                "machine.cache_size",
                format!(
                    "{capacity} bytes: the model holds caches of at most {MAX_CACHE_BYTES} bytes \
                     (16 MiB)"
                ),
            ));
        }
        if let Some(w) = m.cache_ways.as_ref().filter(|_| ways > MAX_CACHE_WAYS) {
            return Err(cx.err(
                w.span(),
                "machine.cache_ways",
                format!("{ways}: the model has at most {MAX_CACHE_WAYS} ways per set"),
            ));
        }
    }
    let cache = CacheConfig {
        line_size: line,
        capacity,
        ways,
    };
    if cache.validate().is_err() {
        let span = m
            .cache_size
            .as_ref()
            .map_or(m.cache_line.span(), Spanned::span);
        return Err(cx.err(
            span,
            "machine.cache_size",
            format!("{capacity} bytes is not a non-zero multiple of cache_ways ({ways}) lines of {line} bytes"),
        ));
    }
    if m.ram.get_ref().len() > MAX_RAM_RANGES {
        return Err(cx.err(
            m.ram.span(),
            "machine.ram",
            format!(
                "{} ranges: the model has at most {MAX_RAM_RANGES}",
                m.ram.get_ref().len()
            ),
        ));
    }
    let mut ram: Vec<(u64, u64)> = Vec::new();
    for (i, r) in m.ram.get_ref().iter().enumerate() {
        let start = cx.size(&r.start, &format!("machine.ram[{i}].start"))?;
        let size = cx.size(&r.size, &format!("machine.ram[{i}].size"))?;
        if size == 0 || start % 4096 != 0 || size % 4096 != 0 || start.checked_add(size).is_none() {
            return Err(cx.err(
                r.size.span(),
                format!("machine.ram[{i}]"),
                "RAM ranges must be non-empty, page aligned and inside the 64-bit address space",
            ));
        }
        let end = start + size;
        let overlap = ram.iter().position(|&(s, l)| start < s + l && s < end);
        if let Some(j) = overlap.filter(|_| !reintroduce::active(Defect::CliRamOverlapMerged)) {
            let (s, l) = ram[j];
            return Err(cx.err(
                r.start.span(),
                format!("machine.ram[{i}]"),
                format!(
                    "[{start:#x}, {end:#x}) overlaps machine.ram[{j}] [{s:#x}, {:#x}): RAM ranges \
                     must not overlap",
                    s + l
                ),
            ));
        }
        ram.push((start, size));
    }
    if ram.is_empty() {
        return Err(cx.err(m.ram.span(), "machine.ram", "the machine has no RAM"));
    }
    let hazards = match &m.hazards {
        None => HazardConfig::default(),
        Some(h) => {
            for (v, name) in [
                (&h.evict_rate, "machine.hazards.evict_rate"),
                (&h.speculate_rate, "machine.hazards.speculate_rate"),
            ] {
                if !(0.0..=1.0).contains(v.get_ref()) {
                    return Err(cx.err(v.span(), name, "a probability must be from 0 to 1"));
                }
            }
            HazardConfig {
                evict_rate: *h.evict_rate.get_ref(),
                speculate_rate: *h.speculate_rate.get_ref(),
                ..HazardConfig::default()
            }
        }
    };
    let bounce_pool = match m.bounce_pool.get_ref() {
        SizeText::Text(t) if t == "linux-arm64" => PoolSize::LinuxArm64,
        SizeText::Text(t) if t == "none" => PoolSize::None,
        _ => {
            let bytes = cx.size(&m.bounce_pool, "machine.bounce_pool")?;
            if bytes > MAX_BOUNCE_POOL_BYTES {
                return Err(cx.err(
                    m.bounce_pool.span(),
                    "machine.bounce_pool",
                    format!(
                        "{bytes} bytes: the model holds bounce pools of at most \
                         {MAX_BOUNCE_POOL_BYTES} bytes (1 GiB)"
                    ),
                ));
            }
            if bytes == 0 || bytes % SEGMENT != 0 {
                return Err(cx.err(
                    m.bounce_pool.span(),
                    "machine.bounce_pool",
                    format!(
                        "{bytes} bytes: a bounce pool holds whole 256 KiB segments (128 slots of 2 KiB), \
                         so its size must be a non-zero multiple of 256 KiB; write \"none\" for no pool \
                         or \"linux-arm64\" for Linux's default"
                    ),
                ));
            }
            PoolSize::Bytes(bytes)
        }
    };
    let iommu_granule = match &m.iommu_granule {
        None => Granule::K4,
        Some(g) => match cx.size(g, "machine.iommu_granule")? {
            0x1000 => Granule::K4,
            0x4000 => Granule::K16,
            0x10000 => Granule::K64,
            other => {
                return Err(cx.err(
                    g.span(),
                    "machine.iommu_granule",
                    format!("{other} bytes: the IOMMU model has 4 KiB, 16 KiB or 64 KiB pages"),
                ))
            }
        },
    };
    Ok(MachineModel {
        cpus: cpus as usize,
        cache,
        ram,
        hazards,
        bounce_pool,
        iommu_granule,
    })
}

fn churn(cx: &Ctx<'_>, k: &KmallocSpec) -> Result<ChurnModel, ScenarioError> {
    let slabinfo = match k.slabinfo.get_ref().as_str() {
        "auto" => SlabinfoSource::Auto,
        "shipped" => SlabinfoSource::Shipped,
        "" => {
            return Err(cx.err(
                k.slabinfo.span(),
                "kmalloc.slabinfo",
                "write \"auto\", \"shipped\" or a file path",
            ))
        }
        path => SlabinfoSource::File(PathBuf::from(path)),
    };
    let live = *k.live_objects.get_ref();
    if live > MAX_LIVE_OBJECTS {
        return Err(cx.err(
            k.live_objects.span(),
            "kmalloc.live_objects",
            format!(
                "{live}: at most {MAX_LIVE_OBJECTS} live background objects (each policy's \
                 model holds them all; 1,000,000 took 2.9 GB per policy)"
            ),
        ));
    }
    let c = *k.churn_per_transfer.get_ref();
    if !(0.0..=16.0).contains(&c) {
        return Err(cx.err(
            k.churn_per_transfer.span(),
            "kmalloc.churn_per_transfer",
            "must be from 0 to 16",
        ));
    }
    Ok(ChurnModel {
        slabinfo,
        live_objects: live,
        churn_per_transfer: c,
    })
}

fn device(
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

fn driver(
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
        transfers,
    })
}

/// Bytes `t` keeps alive at once in the model's memory (see [`MAX_RESIDENT_BYTES`]). Every
/// term is bounded by the validation of `t`, so this cannot overflow.
fn resident_bytes(t: &TransferModel) -> u64 {
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

fn directions(
    cx: &Ctx<'_>,
    f: &str,
    d: &Spanned<Directions>,
) -> Result<Vec<Direction>, ScenarioError> {
    let names: Vec<&String> = match d.get_ref() {
        Directions::One(s) => vec![s],
        Directions::Many(v) => v.iter().collect(),
    };
    let mut out = Vec::new();
    for n in names {
        out.push(match n.as_str() {
            "to-device" => Direction::ToDevice,
            "from-device" => Direction::FromDevice,
            "bidirectional" => Direction::Bidirectional,
            other => {
                return Err(cx.err(
                    d.span(),
                    f,
                    format!("`{other}`: write \"to-device\", \"from-device\" or \"bidirectional\""),
                ))
            }
        });
    }
    if out.is_empty() {
        return Err(cx.err(d.span(), f, "at least one direction"));
    }
    Ok(out)
}

fn size_range(cx: &Ctx<'_>, f: &str, s: &Spanned<SizeRange>) -> Result<(u64, u64), ScenarioError> {
    let one = |t: &SizeText| cx.size(&Spanned::new(s.span(), t.clone()), f);
    let (lo, hi) = match s.get_ref() {
        SizeRange::One(t) => {
            let v = one(t)?;
            (v, v)
        }
        SizeRange::Range(v) if v.len() == 2 => (one(&v[0])?, one(&v[1])?),
        SizeRange::Range(_) => {
            return Err(cx.err(s.span(), f, "write one size or a range [min, max]"));
        }
    };
    if lo == 0 || lo > hi || hi > 256 * 1024 {
        return Err(cx.err(
            s.span(),
            f,
            format!("need 0 < min <= max <= 256 KiB (the largest bounce), got [{lo}, {hi}]"),
        ));
    }
    Ok((lo, hi))
}

fn opt(v: &Option<Spanned<u64>>) -> Option<u64> {
    v.as_ref().map(|s| *s.get_ref())
}

fn transfer(
    cx: &Ctx<'_>,
    f: &str,
    t: &Spanned<TransferSpec>,
) -> Result<TransferModel, ScenarioError> {
    let s = t.get_ref();
    let directions = directions(cx, &format!("{f}.direction"), &s.direction)?;
    let size = size_range(cx, &format!("{f}.size"), &s.size)?;
    let step = opt(&s.step).unwrap_or(1);
    if step == 0 || size.0 % step != 0 {
        let span = s.step.as_ref().map_or(s.size.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.step"),
            "must be non-zero and divide the smallest size",
        ));
    }
    let chance = s.chance.as_ref().map_or(1.0, |c| *c.get_ref());
    if !(0.0..=1.0).contains(&chance) {
        let span = s.chance.as_ref().map_or(t.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.chance"),
            "a probability must be from 0 to 1",
        ));
    }
    let burst = s.burst.as_ref().map_or([8, 64], |b| *b.get_ref());
    if burst[0] == 0 || burst[0] > burst[1] {
        let span = s.burst.as_ref().map_or(t.span(), Spanned::span);
        return Err(cx.err(span, format!("{f}.burst"), "need 0 < min <= max"));
    }
    let buffer = buffer(cx, f, s, size)?;
    let queue_depth = opt(&s.queue_depth).unwrap_or(1);
    let qd_span = s.queue_depth.as_ref().map_or(t.span(), Spanned::span);
    if !(1..=256).contains(&queue_depth) {
        return Err(cx.err(qd_span, format!("{f}.queue_depth"), "must be from 1 to 256"));
    }
    let one_buffer = matches!(
        buffer,
        BufferModel::StructField { .. } | BufferModel::Noncontiguous { .. }
    );
    if queue_depth > 1 && one_buffer {
        return Err(cx.err(
            qd_span,
            format!("{f}.queue_depth"),
            format!(
                "buffer \"{}\" is one buffer reused by every transfer; it cannot be in flight \
                 more than once",
                s.buffer.get_ref()
            ),
        ));
    }
    if matches!(buffer, BufferModel::Noncontiguous { .. })
        && directions.iter().any(|d| *d != Direction::ToDevice)
    {
        return Err(cx.err(
            s.direction.span(),
            format!("{f}.direction"),
            "noncontiguous buffers model scanout: the CPU writes a frame, the device reads it; \
             write direction = \"to-device\"",
        ));
    }
    Ok(TransferModel {
        site: s.site.get_ref().clone(),
        directions,
        size,
        step,
        buffer,
        chance,
        burst: (burst[0], burst[1]),
        queue_depth: queue_depth as usize,
    })
}

fn buffer(
    cx: &Ctx<'_>,
    f: &str,
    s: &TransferSpec,
    size: (u64, u64),
) -> Result<BufferModel, ScenarioError> {
    let bf = format!("{f}.buffer");
    let need = |v: &Option<Spanned<u64>>, name: &str| {
        opt(v).ok_or_else(|| {
            cx.err(
                s.buffer.span(),
                format!("{f}.{name}"),
                format!("buffer \"{}\" needs `{name}`", s.buffer.get_ref()),
            )
        })
    };
    let unused: Vec<(&Option<Spanned<u64>>, &str)> = match s.buffer.get_ref().as_str() {
        "noncontiguous" => vec![
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "kmalloc" | "dma-kmalloc" | "pages" => vec![
            (&s.frames, "frames"),
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "struct-field" => vec![
            (&s.frames, "frames"),
            (&s.align, "align"),
            (&s.headroom, "headroom"),
            (&s.tail, "tail"),
            (&s.in_flight, "in_flight"),
        ],
        "page-frag" => vec![
            (&s.frames, "frames"),
            (&s.struct_size, "struct_size"),
            (&s.offset, "offset"),
            (&s.next_field, "next_field"),
        ],
        other => {
            return Err(cx.err(
                s.buffer.span(),
                bf,
                format!(
                    "`{other}`: write \"kmalloc\", \"dma-kmalloc\", \"struct-field\", \"page-frag\", \"pages\" or \"noncontiguous\""
                ),
            ))
        }
    };
    if let Some((v, name)) = unused.into_iter().find(|(v, _)| v.is_some()) {
        let span = v.as_ref().map_or(s.buffer.span(), Spanned::span);
        return Err(cx.err(
            span,
            format!("{f}.{name}"),
            format!(
                "`{name}` does not apply to buffer \"{}\"",
                s.buffer.get_ref()
            ),
        ));
    }
    Ok(match s.buffer.get_ref().as_str() {
        "kmalloc" => BufferModel::Kmalloc,
        "dma-kmalloc" => BufferModel::DmaKmalloc,
        "pages" => BufferModel::Pages,
        "noncontiguous" => {
            let frames = opt(&s.frames).unwrap_or(2);
            if !(1..=8).contains(&frames) {
                let span = s.frames.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(span, format!("{f}.frames"), "must be from 1 to 8"));
            }
            BufferModel::Noncontiguous {
                frames: frames as usize,
            }
        }
        "struct-field" => {
            let struct_size = need(&s.struct_size, "struct_size")?;
            let offset = need(&s.offset, "offset")?;
            let field_size = size.1;
            // Checked before any arithmetic: the offsets may be anything up to u64::MAX.
            let field_end = offset.saturating_add(field_size);
            let next_field = opt(&s.next_field)
                .unwrap_or_else(|| field_end.checked_next_multiple_of(8).unwrap_or(u64::MAX));
            if offset % 8 != 0
                || struct_size > 8192
                || field_end > next_field
                || next_field > struct_size
            {
                let span = s.offset.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.offset"),
                    format!(
                        "the field [{offset}, {}) must start 8-byte aligned and fit before next_field \
                         ({next_field}) inside the structure ({struct_size} bytes, at most 8 KiB)",
                        offset.saturating_add(field_size)
                    ),
                ));
            }
            BufferModel::StructField {
                struct_size,
                offset,
                field_size,
                next_field,
            }
        }
        _ => {
            let align = opt(&s.align).unwrap_or(64);
            let headroom = opt(&s.headroom).unwrap_or(0);
            let tail = opt(&s.tail).unwrap_or(0);
            let in_flight = opt(&s.in_flight).unwrap_or(8);
            if !align.is_power_of_two() || !(8..=4096).contains(&align) {
                let span = s.align.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.align"),
                    "must be a power of two from 8 to 4096",
                ));
            }
            let fragment = headroom
                .checked_add(size.1)
                .and_then(|b| b.checked_add(tail));
            if fragment.is_none_or(|b| b > 16 * 1024) || in_flight > 4096 {
                let span = s.tail.as_ref().map_or(s.buffer.span(), Spanned::span);
                return Err(cx.err(
                    span,
                    format!("{f}.tail"),
                    "a fragment (headroom + size + tail) must fit 16 KiB; in_flight at most 4096",
                ));
            }
            BufferModel::PageFrag {
                align,
                headroom,
                tail,
                in_flight: in_flight as usize,
            }
        }
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
