//! Background kmalloc traffic shaped like a real machine's.
//!
//! The sizes follow the live objects of the kmalloc caches in a `/proc/slabinfo`: a cache
//! `kmalloc-c` with `n` active objects stands for `n` requests of sizes between the class
//! below and `c`. These objects are what DMA buffers share their cache lines with.

use std::path::Path;

use dmakit_mem::AllocKind;

use crate::footprint::{kmalloc_cache, SHIPPED_SLABINFO};
use crate::heap::{Heap, HeapError};
use crate::input::{read_text, MAX_SLABINFO_BYTES};
use crate::model::SlabinfoSource;
use crate::slabinfo::parse_slabinfo;
use dmakit_sim::oracle::Oracle;
use dmakit_sim::rng::SimRng;
use dmakit_sim::transfer::Scratch;

/// Where the live slabinfo is read from when the source is `live` or `auto`.
pub const PROC_SLABINFO: &str = "/proc/slabinfo";

/// Reads the slabinfo text of `source`; returns it with a description of its origin.
///
/// # Errors
/// A message naming the file when a configured file (or, for `live`, [`PROC_SLABINFO`])
/// cannot be read, is larger than [`MAX_SLABINFO_BYTES`] or is not UTF-8.
pub fn load_slabinfo(source: &SlabinfoSource) -> Result<(String, String), String> {
    let shipped = || {
        (
            SHIPPED_SLABINFO.to_string(),
            "shipped snapshot (x86-64 VM, Linux 6.18)".to_string(),
        )
    };
    match source {
        SlabinfoSource::Shipped => Ok(shipped()),
        SlabinfoSource::Auto => match read_text(
            Path::new(PROC_SLABINFO),
            MAX_SLABINFO_BYTES,
            "slabinfo file",
        ) {
            Ok(t) if SizeDistribution::from_slabinfo(&t).is_ok() => {
                Ok((t, PROC_SLABINFO.to_string()))
            }
            _ => Ok(shipped()),
        },
        SlabinfoSource::Live => read_text(
            Path::new(PROC_SLABINFO),
            MAX_SLABINFO_BYTES,
            "slabinfo file",
        )
        .map(|t| (t, PROC_SLABINFO.to_string())),
        SlabinfoSource::File(p) => {
            read_text(p, MAX_SLABINFO_BYTES, "slabinfo file").map(|t| (t, display(p)))
        }
    }
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

/// Request sizes weighted by a slabinfo's live kmalloc objects.
#[derive(Clone, Debug)]
pub struct SizeDistribution {
    /// `(smallest size, largest size, cumulative weight)` per class.
    classes: Vec<(u64, u64, u64)>,
}

impl SizeDistribution {
    /// The distribution of `text` (a `/proc/slabinfo`).
    ///
    /// # Errors
    /// A message when it does not parse or has no live kmalloc object.
    pub fn from_slabinfo(text: &str) -> Result<Self, String> {
        let rows = parse_slabinfo(text).map_err(|e| format!("slabinfo: {e}"))?;
        let mut by_class = std::collections::BTreeMap::<u64, u64>::new();
        for r in &rows {
            if let Some((_, class)) = kmalloc_cache(r.name) {
                *by_class.entry(class).or_default() += r.active_objs;
            }
        }
        let mut classes = Vec::new();
        let mut prev = 0;
        let mut total = 0;
        for (&class, &n) in &by_class {
            if n > 0 {
                total += n;
                classes.push((prev + 1, class, total));
            }
            prev = class;
        }
        if classes.is_empty() {
            return Err("slabinfo has no live kmalloc objects".into());
        }
        Ok(Self { classes })
    }

    /// A request size.
    pub fn sample(&self, rng: &mut SimRng) -> u64 {
        let total = self.classes.last().map_or(1, |c| c.2);
        let pick = rng.below(total);
        let i = self.classes.partition_point(|c| c.2 <= pick);
        let (lo, hi, _) = self.classes[i.min(self.classes.len() - 1)];
        rng.between(lo, hi)
    }
}

/// The live background objects.
pub struct Churn {
    sizes: SizeDistribution,
    live: Vec<u64>,
}

impl Churn {
    /// No objects yet.
    pub fn new(sizes: SizeDistribution) -> Self {
        Self {
            sizes,
            live: Vec::new(),
        }
    }

    /// Allocates one object, which the CPU initialises.
    ///
    /// # Errors
    /// As [`Heap::kmalloc`].
    pub fn grow(
        &mut self,
        heap: &mut Heap<'_>,
        oracle: &mut Oracle,
        rng: &mut SimRng,
        scratch: &mut Scratch,
    ) -> Result<(), HeapError> {
        let size = self.sizes.sample(rng);
        let (addr, _) = heap.kmalloc_filled(
            oracle,
            rng,
            scratch,
            size,
            AllocKind::Normal,
            "kmalloc-object",
        )?;
        self.live.push(addr);
        Ok(())
    }

    /// Frees a random live object.
    ///
    /// # Errors
    /// As [`Heap::kfree`].
    pub fn shrink(
        &mut self,
        heap: &mut Heap<'_>,
        oracle: &mut Oracle,
        rng: &mut SimRng,
    ) -> Result<(), HeapError> {
        if self.live.is_empty() {
            return Ok(());
        }
        let i = rng.below(self.live.len() as u64) as usize;
        let addr = self.live.swap_remove(i);
        heap.kfree(oracle, addr)
    }

    /// Live objects.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether none is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_distribution_covers_the_classes() {
        let d = SizeDistribution::from_slabinfo(SHIPPED_SLABINFO).unwrap();
        let mut rng = SimRng::new(3);
        let mut small = 0;
        for _ in 0..10_000 {
            let s = d.sample(&mut rng);
            assert!((1..=8192).contains(&s));
            small += u64::from(s <= 64);
        }
        assert!(small > 1000, "small objects dominate real slabs: {small}");
        assert!(SizeDistribution::from_slabinfo("slabinfo - version: 2.1\n").is_err());
    }
}
