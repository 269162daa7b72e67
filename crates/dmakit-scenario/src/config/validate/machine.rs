//! The `[machine]` table and the `[kmalloc]` background churn: CPUs, cache, RAM map, bounce
//! pool, hazards and IOMMU granule, checked against the model's limits.

use std::path::PathBuf;

use dmakit::reintroduce::{self, Defect};
use dmakit_sim::cache::CacheConfig;
use dmakit_sim::hazard::HazardConfig;
use dmakit_sim::iommu::Granule;
use toml::Spanned;

use crate::config::error::{Ctx, ScenarioError};
use crate::config::limits::{
    MAX_BOUNCE_POOL_BYTES, MAX_CACHE_BYTES, MAX_CACHE_WAYS, MAX_LIVE_OBJECTS, MAX_RAM_RANGES,
};
use crate::config::spec::{KmallocSpec, MachineSpec, SizeText};
use crate::model::{ChurnModel, MachineModel, PoolSize, SlabinfoSource};

const SEGMENT: u64 = 256 * 1024;

pub(super) fn machine(cx: &Ctx<'_>, m: &MachineSpec) -> Result<MachineModel, ScenarioError> {
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

pub(super) fn churn(cx: &Ctx<'_>, k: &KmallocSpec) -> Result<ChurnModel, ScenarioError> {
    let slabinfo = match k.slabinfo.get_ref().as_str() {
        "auto" => SlabinfoSource::Auto,
        "live" => SlabinfoSource::Live,
        "shipped" => SlabinfoSource::Shipped,
        "" => {
            return Err(cx.err(
                k.slabinfo.span(),
                "kmalloc.slabinfo",
                "write \"shipped\", \"live\", \"auto\" or a file path",
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
