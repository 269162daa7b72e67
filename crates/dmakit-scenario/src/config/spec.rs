//! What a scenario file may say: the serde types the TOML is read into.
//!
//! These mirror the file format field by field (unknown fields are refused), keeping the
//! span of every value that validation may need to point at. They say nothing about what
//! makes sense; [`super::validate`] decides that.

use serde::Deserialize;
use toml::Spanned;

/// A size: a number of bytes or a string with a unit (`"4 GiB"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SizeText {
    Bytes(u64),
    Text(String),
}

/// One size or an inclusive range `[min, max]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum SizeRange {
    One(SizeText),
    Range(Vec<SizeText>),
}

/// One direction or a list to pick from.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Directions {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSpec {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) machine: MachineSpec,
    #[serde(default)]
    pub(super) kmalloc: KmallocSpec,
    #[serde(default, rename = "device")]
    pub(super) devices: Vec<Spanned<DeviceSpec>>,
    #[serde(default, rename = "driver")]
    pub(super) drivers: Vec<Spanned<DriverSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MachineSpec {
    pub(super) cpus: Spanned<u64>,
    pub(super) cache_line: Spanned<u64>,
    #[serde(default)]
    pub(super) cache_size: Option<Spanned<SizeText>>,
    #[serde(default)]
    pub(super) cache_ways: Option<Spanned<u64>>,
    pub(super) ram: Spanned<Vec<RamSpec>>,
    pub(super) bounce_pool: Spanned<SizeText>,
    #[serde(default)]
    pub(super) hazards: Option<HazardSpec>,
    #[serde(default)]
    pub(super) iommu_granule: Option<Spanned<SizeText>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RamSpec {
    pub(super) start: Spanned<SizeText>,
    pub(super) size: Spanned<SizeText>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HazardSpec {
    pub(super) evict_rate: Spanned<f64>,
    pub(super) speculate_rate: Spanned<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KmallocSpec {
    #[serde(default = "auto")]
    pub(super) slabinfo: Spanned<String>,
    #[serde(default = "default_live")]
    pub(super) live_objects: Spanned<u64>,
    #[serde(default = "default_churn")]
    pub(super) churn_per_transfer: Spanned<f64>,
}

pub(super) fn auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".into())
}
pub(super) fn default_live() -> Spanned<u64> {
    Spanned::new(0..0, 20_000)
}
pub(super) fn default_churn() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}

impl Default for KmallocSpec {
    fn default() -> Self {
        Self {
            slabinfo: auto(),
            live_objects: default_live(),
            churn_per_transfer: default_churn(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeviceSpec {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) dma_bits: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) coherent: bool,
    #[serde(default)]
    pub(super) cache_line: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) iommu: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) trusted: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DriverSpec {
    pub(super) name: String,
    pub(super) device: Spanned<String>,
    pub(super) weight: Spanned<f64>,
    #[serde(default)]
    pub(super) rate: Option<Spanned<f64>>,
    #[serde(rename = "transfer")]
    pub(super) transfers: Spanned<Vec<Spanned<TransferSpec>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TransferSpec {
    pub(super) site: Spanned<String>,
    pub(super) direction: Spanned<Directions>,
    pub(super) size: Spanned<SizeRange>,
    #[serde(default)]
    pub(super) step: Option<Spanned<u64>>,
    pub(super) buffer: Spanned<String>,
    #[serde(default)]
    pub(super) chance: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) burst: Option<Spanned<[u64; 2]>>,
    #[serde(default)]
    pub(super) struct_size: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) offset: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) next_field: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) align: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) headroom: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) tail: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) in_flight: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) frames: Option<Spanned<u64>>,
    #[serde(default)]
    pub(super) queue_depth: Option<Spanned<u64>>,
}
