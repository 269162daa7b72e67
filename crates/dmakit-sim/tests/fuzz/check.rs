//! The invariants checked after every step: pools untouched by failed calls, bounce
//! footprints (lead-ins and padding included) disjoint, and what devices and the CPU see.

use std::fmt;

use dmakit::bounce::{BounceBackend, PoolUsage};
use dmakit_sim::Owner;

use super::rig::Rig;

/// An invariant that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which invariant (a short stable name, used in reports and the controls' table).
    pub invariant: &'static str,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.invariant, self.detail)
    }
}

pub type Checked = Result<(), Violation>;

pub fn fail<T>(invariant: &'static str, detail: impl Into<String>) -> Result<T, Violation> {
    Err(Violation {
        invariant,
        detail: detail.into(),
    })
}

/// The pools, in a fixed order: the three SWIOTLB pools, the coherent pool, the transient
/// pool.
pub const POOL_NAMES: [&str; 6] = [
    "swiotlb-0",
    "swiotlb-1",
    "swiotlb-2",
    "coherent",
    "transient",
    "swiotlb-3",
];
pub const POOLS: usize = 6;
pub const COHERENT: usize = 3;
pub const TRANSIENT: usize = 4;

pub fn backends(r: &Rig) -> [&dyn BounceBackend; POOLS] {
    [
        r.swiotlb[0].as_ref(),
        r.swiotlb[1].as_ref(),
        r.swiotlb[2].as_ref(),
        r.coherent.as_ref(),
        r.mappers[0]
            .transient()
            .expect("the rig has a transient pool"),
        r.swiotlb[3].as_ref(),
    ]
}

pub fn usages(r: &Rig) -> [PoolUsage; POOLS] {
    backends(r).map(|b| b.usage())
}

/// The pool whose memory holds `addr`.
pub fn pool_of(r: &Rig, addr: u64) -> Option<usize> {
    let a = dmakit::PhysAddr::new(addr);
    backends(r).iter().position(|b| b.contains(a))
}

/// A failed call leaves every pool as it was: the high-water mark exactly, and nothing more
/// in use or live (a failed map may drain a lazy flush queue, which only frees).
pub fn pools_unchanged(
    before: &[PoolUsage; POOLS],
    after: &[PoolUsage; POOLS],
    what: &str,
) -> Checked {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        if a.high_water != b.high_water || a.used > b.used || a.live > b.live {
            return fail(
                "failed-call-changed-pool",
                format!("{what}: {} before {b:?}, after {a:?}", POOL_NAMES[i]),
            );
        }
    }
    Ok(())
}

/// Memory a live bounce owns: `[start, end)` in pool `pool`, for mapping `id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    pub pool: usize,
    pub start: u64,
    pub end: u64,
    pub id: u64,
}

/// No two live bounces' footprints overlap.
pub fn disjoint(all: &mut [Footprint]) -> Checked {
    all.sort_by_key(|f| (f.pool, f.start));
    for w in all.windows(2) {
        let (a, b) = (w[0], w[1]);
        if a.pool == b.pool && a.id != b.id && b.start < a.end {
            return fail(
                "bounce-footprints-overlap",
                format!(
                    "{}: mapping {} owns {:#x}..{:#x}, mapping {} owns {:#x}..{:#x}",
                    POOL_NAMES[a.pool], a.id, a.start, a.end, b.id, b.start, b.end
                ),
            );
        }
    }
    Ok(())
}

/// What a device read must hold: each byte the expected one with the expected owner.
pub fn same_bytes(
    what: &str,
    seen: (&[u8], &[Owner]),
    want: (&[u8], &[Owner]),
    invariant: &'static str,
) -> Checked {
    let n = seen.0.len();
    let bad = (0..n)
        .filter(|&i| seen.0[i] != want.0[i] || seen.1[i] != want.1[i])
        .collect::<Vec<_>>();
    if let Some(&i) = bad.first() {
        return fail(
            invariant,
            format!(
                "{what}: {} of {n} bytes wrong; first at +{i:#x}: {:#04x}/{:?}, expected {:#04x}/{:?}",
                bad.len(),
                seen.0[i],
                seen.1[i],
                want.0[i],
                want.1[i]
            ),
        );
    }
    Ok(())
}

/// The isolation oracle for one window a device read: every byte is one of `allowed`'s, or
/// an unowned zero.
pub fn isolated(what: &str, data: &[u8], owners: &[Owner], allowed: &[Owner]) -> Checked {
    let foreign: Vec<usize> = (0..data.len())
        .filter(|&i| {
            let o = owners[i];
            !(allowed.contains(&o) || (o == Owner::NOBODY && data[i] == 0))
        })
        .collect();
    if let Some(&i) = foreign.first() {
        return fail(
            "isolation",
            format!(
                "{what}: {} of {} bytes belong to someone else; first at +{i:#x}: {:#04x} of {:?}",
                foreign.len(),
                data.len(),
                data[i],
                owners[i]
            ),
        );
    }
    Ok(())
}
