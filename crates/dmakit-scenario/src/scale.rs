//! The memory side of the trade at the scale of a real machine.
//!
//! The simulated churn holds a few thousand objects, so what the policies' kmalloc caches
//! take *in the run* is small whatever the policy. A real machine holds millions: this
//! module applies each policy's kmalloc minimum alignment to the full population of the
//! scenario's slabinfo, with the model of [`crate::footprint`] (the figures `dmakit slab`
//! prints), and states what 8-byte kmalloc saves against line-aligned kmalloc.

use serde::Serialize;

use crate::footprint::kmalloc_footprint;
use crate::policy::Policy;
use crate::slabinfo::SlabinfoRow;
use dmakit_mem::{MemError, SlabOrderPolicy};

/// What one policy's kmalloc caches would take on the slabinfo's machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyKmalloc {
    /// Policy name.
    pub policy: String,
    /// The policy's kmalloc minimum alignment.
    pub min_align: u64,
    /// Slab memory of the slabinfo's live kmalloc objects under that alignment.
    pub kmalloc_bytes: u64,
}

/// The kmalloc memory of a slabinfo's full population under each policy, and the headline
/// figure: what 8-byte kmalloc saves against kmalloc aligned to the cache line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MachineScale {
    /// The cache line the line-aligned figure uses (the scenario's largest).
    pub line: u64,
    /// Live kmalloc objects in the slabinfo.
    pub objects: u64,
    /// Slab memory under minimum alignment 8.
    pub min_align_8_bytes: u64,
    /// Slab memory under minimum alignment `line`.
    pub line_aligned_bytes: u64,
    /// `line_aligned_bytes - min_align_8_bytes` (0 if alignment 8 were not smaller).
    pub saved_bytes: u64,
    /// `saved_bytes` as a percentage of `line_aligned_bytes`.
    pub saved_percent: f64,
    /// One entry per policy, in the order given.
    pub policies: Vec<PolicyKmalloc>,
}

impl MachineScale {
    /// The figures of `rows` (a parsed slabinfo) for `policies` on a machine whose largest
    /// cache line is `line`, with the default slab shapes.
    ///
    /// # Errors
    /// [`MemError`] for a line size kmalloc cannot use (not a power of two from 8 to 4096).
    pub fn new(rows: &[SlabinfoRow<'_>], line: u64, policies: &[Policy]) -> Result<Self, MemError> {
        let mut aligns = Vec::new();
        for &p in policies {
            aligns.push((p.name().to_string(), p.kmalloc_policy(line)?.min_align()));
        }
        Self::with_alignments(rows, line, &aligns)
    }

    /// As [`MachineScale::new`], for policies given by name with the minimum alignment
    /// each ran with (the one `auto` chose on the run's devices).
    ///
    /// # Errors
    /// [`MemError`] for a line or an alignment kmalloc cannot use.
    pub fn with_alignments(
        rows: &[SlabinfoRow<'_>],
        line: u64,
        policies: &[(String, u64)],
    ) -> Result<Self, MemError> {
        let slabs = SlabOrderPolicy::default();
        let small = kmalloc_footprint(rows, 8, &slabs)?;
        let aligned = kmalloc_footprint(rows, line, &slabs)?;
        let mut out = Vec::new();
        for (name, min_align) in policies {
            out.push(PolicyKmalloc {
                policy: name.clone(),
                min_align: *min_align,
                kmalloc_bytes: kmalloc_footprint(rows, *min_align, &slabs)?.slab_bytes,
            });
        }
        let saved_bytes = aligned.slab_bytes.saturating_sub(small.slab_bytes);
        Ok(MachineScale {
            line,
            objects: small.objects,
            min_align_8_bytes: small.slab_bytes,
            line_aligned_bytes: aligned.slab_bytes,
            saved_bytes,
            saved_percent: saved_bytes as f64 * 100.0 / aligned.slab_bytes.max(1) as f64,
            policies: out,
        })
    }

    /// The figure of the policy named `name`, if it was run.
    pub fn of(&self, name: &str) -> Option<&PolicyKmalloc> {
        self.policies.iter().find(|p| p.policy == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::footprint::{kmalloc_footprints, SHIPPED_SLABINFO};
    use crate::slabinfo::parse_slabinfo;

    #[test]
    fn policies_take_what_dmakit_slab_computes_for_their_alignment() {
        let rows = parse_slabinfo(SHIPPED_SLABINFO).unwrap();
        let slab = kmalloc_footprints(&rows);
        let at = |a: u64| slab.iter().find(|f| f.min_align == a).unwrap().slab_bytes;
        let s = MachineScale::new(&rows, 128, &Policy::ALL).unwrap();
        assert_eq!(s.of("minalign128").unwrap().kmalloc_bytes, at(128));
        for p in ["linux-size-only", "exact", "no-bounce"] {
            assert_eq!(s.of(p).unwrap().kmalloc_bytes, at(8), "{p}");
        }
        assert_eq!(
            (s.min_align_8_bytes, s.line_aligned_bytes),
            (at(8), at(128))
        );
        assert_eq!(s.saved_bytes, at(128) - at(8));
        assert!(s.saved_bytes > 0 && s.saved_percent > 10.0, "{s:?}");
        // On a 64-byte-line machine the old way aligns to 64.
        let s64 = MachineScale::new(&rows, 64, &[Policy::MinAlign128]).unwrap();
        assert_eq!(s64.policies[0].kmalloc_bytes, at(64));
        assert!(s64.saved_bytes < s.saved_bytes);
    }

    #[test]
    fn a_slabinfo_without_kmalloc_objects_saves_nothing_and_does_not_divide_by_zero() {
        let rows = parse_slabinfo("slabinfo - version: 2.1\n").unwrap();
        let s = MachineScale::new(&rows, 128, &Policy::ALL).unwrap();
        assert_eq!((s.saved_bytes, s.saved_percent), (0, 0.0));
        assert!(MachineScale::new(&rows, 100, &Policy::ALL).is_err());
    }
}
