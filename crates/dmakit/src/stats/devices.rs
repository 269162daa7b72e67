//! Per-device counters: atomics, striped by CPU, found by device id without a lock and
//! added to without a locked instruction (`stats::per_cpu_add`).

use core::sync::atomic::{AtomicU64, Ordering};

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::breakdown::{ByDirection, ByReason};
use super::per_cpu_add;
use crate::decision::BounceReason;
use crate::device::DeviceId;
use crate::direction::Direction;

/// How many distinct devices the counters track; mappings of further devices are counted
/// in no per-device row (the mapping itself is unaffected).
pub(crate) const MAX_TRACKED_DEVICES: usize = 64;

/// Counters of one device (a snapshot; see [`crate::stats::StatsSnapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// The device.
    pub device: DeviceId,
    /// Successful mappings (single mappings and sg segments), by [`Direction`].
    pub mappings: ByDirection,
    /// Mappings that used the device's path directly (no bounce).
    pub direct: u64,
    /// Bounced mappings by [`BounceReason`].
    pub bounced: ByReason,
    /// Bounced mappings by direction.
    pub bounced_by_direction: ByDirection,
    /// Bytes copied from callers' buffers into bounces (map, `sync_for_device`).
    pub bytes_to_bounce: u64,
    /// Bytes copied from bounces back to callers' buffers (unmap, `sync_for_cpu`).
    pub bytes_from_bounce: u64,
    /// Mappings refused because a pool was full.
    pub exhaustion_errors: u64,
    /// Mappings queued for later completion.
    pub deferred: u64,
}

impl DeviceStats {
    /// All successful mappings.
    pub fn mappings_total(&self) -> u64 {
        self.mappings.total()
    }

    /// All bounced mappings.
    pub fn bounces_total(&self) -> u64 {
        self.bounced.total()
    }

    /// Bounces for `reason`.
    pub fn bounces(&self, reason: BounceReason) -> u64 {
        *self.bounced.get(reason)
    }

    pub(crate) fn add(&mut self, o: &DeviceStats) {
        self.mappings.add(&o.mappings);
        self.bounced_by_direction.add(&o.bounced_by_direction);
        self.bounced.add(&o.bounced);
        self.direct += o.direct;
        self.bytes_to_bounce += o.bytes_to_bounce;
        self.bytes_from_bounce += o.bytes_from_bounce;
        self.exhaustion_errors += o.exhaustion_errors;
        self.deferred += o.deferred;
    }
}

/// One device's counters in one stripe. Every total is derived when read, so a mapping
/// updates as few counters as possible: one for a direct mapping, two for a bounce.
/// `key` and `direct` come first, in 32 aligned bytes: a direct mapping's lookup and count
/// touch one cache line.
#[repr(C, align(32))]
struct Row {
    /// The id of the device owning the row, or [`FREE`].
    key: AtomicU64,
    /// Direct mappings by direction.
    direct: ByDirection<AtomicU64>,
    /// Bounced mappings by reason and direction.
    bounced: ByReason<ByDirection<AtomicU64>>,
    bytes_to_bounce: AtomicU64,
    bytes_from_bounce: AtomicU64,
    exhaustion_errors: AtomicU64,
    deferred: AtomicU64,
}

// The layout the comment on `Row` promises.
const _: () = assert!(core::mem::offset_of!(Row, bounced) == 32);

/// The key of a free row: above every device id, so a row's key is its owner's id itself,
/// compared with the id as it is.
const FREE: u64 = u64::MAX;

impl Default for Row {
    fn default() -> Self {
        Self {
            key: AtomicU64::new(FREE),
            direct: ByDirection::default(),
            bounced: ByReason::default(),
            bytes_to_bounce: AtomicU64::new(0),
            bytes_from_bounce: AtomicU64::new(0),
            exhaustion_errors: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
        }
    }
}

/// One CPU stripe: a small open-addressed table from device id to a row of counters,
/// probed from `id % MAX_TRACKED_DEVICES` (device ids are usually small and dense).
/// Aligned to 128 bytes so stripes never share a cache line.
#[repr(align(128))]
struct Stripe {
    rows: [Row; MAX_TRACKED_DEVICES],
}

impl Stripe {
    fn new() -> Self {
        Self {
            rows: core::array::from_fn(|_| Row::default()),
        }
    }

    /// The row of `dev`, claiming a free one on first use; `None` when the table is full.
    /// A device already counted in its home row (the usual case: ids are small and dense)
    /// is found with one load and one compare; the probe runs out of line.
    #[inline(always)]
    fn row(&self, dev: DeviceId) -> Option<&Row> {
        let home = &self.rows[dev.0 as usize % MAX_TRACKED_DEVICES];
        if home.key.load(Ordering::Acquire) == u64::from(dev.0) {
            return Some(home);
        }
        self.probe(dev)
    }

    /// [`Stripe::row`] for a device not (yet) in its home row.
    #[inline(never)]
    fn probe(&self, dev: DeviceId) -> Option<&Row> {
        let key = u64::from(dev.0);
        let start = dev.0 as usize % MAX_TRACKED_DEVICES;
        for i in 0..MAX_TRACKED_DEVICES {
            let at = (start + i) % MAX_TRACKED_DEVICES;
            let k = self.rows[at].key.load(Ordering::Acquire);
            if k == key {
                return Some(&self.rows[at]);
            }
            if k == FREE {
                match self.rows[at].key.compare_exchange(
                    FREE,
                    key,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Some(&self.rows[at]),
                    Err(other) if other == key => return Some(&self.rows[at]),
                    Err(_) => continue,
                }
            }
        }
        None
    }
}

/// The per-device counters of a mapper.
pub(crate) struct DeviceCounters {
    /// Empty when statistics are off: every update is then a no-op.
    stripes: Box<[Stripe]>,
    /// `stripes.len() - 1` (a power of two less one), and 0 with no stripes: a CPU's
    /// stripe is `stripes.get(cpu & mask)`, which also finds none when statistics are off.
    mask: usize,
}

impl DeviceCounters {
    /// Counters with one stripe per CPU (rounded up to a power of two so a CPU finds its
    /// stripe with a mask, at most 64).
    pub(crate) fn new(cpus: usize) -> Self {
        let n = cpus.clamp(1, 64).next_power_of_two();
        Self {
            stripes: (0..n).map(|_| Stripe::new()).collect(),
            mask: n - 1,
        }
    }

    /// Counters that count nothing (statistics off).
    pub(crate) fn disabled() -> Self {
        Self {
            stripes: Box::new([]),
            mask: 0,
        }
    }

    #[inline]
    fn row(&self, cpu: usize, dev: DeviceId) -> Option<&Row> {
        self.stripes.get(cpu & self.mask)?.row(dev)
    }

    #[inline]
    pub(crate) fn mapped(
        &self,
        cpu: usize,
        dev: DeviceId,
        dir: Direction,
        bounce: Option<BounceReason>,
        copied: u64,
    ) {
        let Some(r) = self.row(cpu, dev) else {
            return;
        };
        match bounce {
            None => per_cpu_add(r.direct.get(dir), 1),
            Some(reason) => {
                per_cpu_add(r.bounced.get(reason).get(dir), 1);
                if copied > 0 {
                    per_cpu_add(&r.bytes_to_bounce, copied);
                }
            }
        }
    }

    pub(crate) fn copied_to_bounce(&self, cpu: usize, dev: DeviceId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(r) = self.row(cpu, dev) {
            per_cpu_add(&r.bytes_to_bounce, bytes);
        }
    }

    pub(crate) fn copied_from_bounce(&self, cpu: usize, dev: DeviceId, bytes: u64) {
        if bytes == 0 {
            return;
        }
        if let Some(r) = self.row(cpu, dev) {
            per_cpu_add(&r.bytes_from_bounce, bytes);
        }
    }

    pub(crate) fn exhausted(&self, cpu: usize, dev: DeviceId) {
        if let Some(r) = self.row(cpu, dev) {
            per_cpu_add(&r.exhaustion_errors, 1);
        }
    }

    pub(crate) fn deferred(&self, cpu: usize, dev: DeviceId) {
        if let Some(r) = self.row(cpu, dev) {
            per_cpu_add(&r.deferred, 1);
        }
    }

    /// Bounced mappings and bytes copied to and from bounces, summed over every device
    /// and stripe: the `bounces_total()` and `bytes_to_bounce + bytes_from_bounce` of the
    /// sum of [`DeviceCounters::snapshot`], without building it.
    pub(crate) fn bounce_totals(&self) -> (u64, u64) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (mut bounces, mut bytes) = (0u64, 0u64);
        for stripe in self.stripes.iter() {
            for r in stripe.rows.iter() {
                // As in `snapshot`: only rows a device owns count.
                if u32::try_from(r.key.load(Ordering::Acquire)).is_err() {
                    continue;
                }
                for (_, by_dir) in r.bounced.iter() {
                    bounces += by_dir.map(load).total();
                }
                bytes += load(&r.bytes_to_bounce) + load(&r.bytes_from_bounce);
            }
        }
        (bounces, bytes)
    }

    /// Sums the stripes per device, in device id order.
    pub(crate) fn snapshot(&self) -> Vec<DeviceStats> {
        let mut out: Vec<DeviceStats> = Vec::new();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        for stripe in self.stripes.iter() {
            for r in stripe.rows.iter() {
                let key = r.key.load(Ordering::Acquire);
                // Every key but `FREE` is a device id.
                let Ok(id) = u32::try_from(key) else {
                    continue;
                };
                let device = DeviceId(id);
                let direct = r.direct.map(load);
                let matrix = r.bounced.map(|by_dir| by_dir.map(load));
                let mut by_direction = ByDirection::default();
                for (_, by_dir) in matrix.iter() {
                    by_direction.add(by_dir);
                }
                let mut mappings = direct;
                mappings.add(&by_direction);
                let row = DeviceStats {
                    device,
                    mappings,
                    direct: direct.total(),
                    bounced: matrix.map(ByDirection::total),
                    bounced_by_direction: by_direction,
                    bytes_to_bounce: load(&r.bytes_to_bounce),
                    bytes_from_bounce: load(&r.bytes_from_bounce),
                    exhaustion_errors: load(&r.exhaustion_errors),
                    deferred: load(&r.deferred),
                };
                match out.binary_search_by_key(&device, |d| d.device) {
                    Ok(i) => out[i].add(&row),
                    Err(i) => out.insert(i, row),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_device_across_stripes() {
        let c = DeviceCounters::new(4);
        let (a, b) = (DeviceId(7), DeviceId(9));
        c.mapped(0, a, Direction::ToDevice, None, 0);
        c.mapped(
            1,
            a,
            Direction::FromDevice,
            Some(BounceReason::Misaligned),
            13,
        );
        c.mapped(
            2,
            b,
            Direction::FromDevice,
            Some(BounceReason::AboveMask),
            100,
        );
        c.copied_from_bounce(3, a, 13);
        c.exhausted(1, b);
        c.deferred(1, b);
        let s = c.snapshot();
        let bounced: u64 = s.iter().map(DeviceStats::bounces_total).sum();
        let bytes: u64 = s
            .iter()
            .map(|d| d.bytes_to_bounce + d.bytes_from_bounce)
            .sum();
        assert_eq!(c.bounce_totals(), (bounced, bytes));
        assert_eq!(c.bounce_totals(), (2, 126));
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].device, a);
        assert_eq!(s[0].mappings_total(), 2);
        assert_eq!(s[0].direct + s[0].bounces_total(), s[0].mappings_total());
        assert_eq!(s[0].bounces(BounceReason::Misaligned), 1);
        assert_eq!((s[0].bytes_to_bounce, s[0].bytes_from_bounce), (13, 13));
        assert_eq!(s[1].bounces(BounceReason::AboveMask), 1);
        assert_eq!((s[1].exhaustion_errors, s[1].deferred), (1, 1));
    }

    /// The adds are plain loads and stores, exact when each CPU's stripe has one writer:
    /// two threads counting on their own CPUs at once lose nothing.
    #[cfg(feature = "std")]
    #[test]
    fn concurrent_counts_on_separate_cpus_are_exact() {
        extern crate std;
        // Under Miri (which checks the adds for data races) a few hundred are enough.
        const N: u64 = if cfg!(miri) { 200 } else { 2_000_000 };
        let c = DeviceCounters::new(2);
        let dev = DeviceId(3);
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for cpu in 0..2 {
                let (c, start) = (&c, &start);
                s.spawn(move || {
                    start.wait();
                    for _ in 0..N {
                        c.mapped(cpu, dev, Direction::FromDevice, None, 0);
                        c.copied_from_bounce(cpu, dev, 2);
                    }
                });
            }
        });
        let s = c.snapshot();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].direct, 2 * N);
        assert_eq!(s[0].bytes_from_bounce, 4 * N);
    }

    #[test]
    fn a_full_table_drops_rows_not_mappings() {
        let c = DeviceCounters::new(1);
        for id in 0..(MAX_TRACKED_DEVICES as u32 + 5) {
            c.mapped(0, DeviceId(id), Direction::ToDevice, None, 0);
        }
        assert_eq!(c.snapshot().len(), MAX_TRACKED_DEVICES);
        c.mapped(0, DeviceId(u32::MAX), Direction::ToDevice, None, 0);
    }

    #[test]
    fn every_device_id_can_own_a_row() {
        let c = DeviceCounters::new(1);
        for id in [0, u32::MAX, u32::MAX - 1] {
            c.mapped(0, DeviceId(id), Direction::FromDevice, None, 0);
            c.mapped(0, DeviceId(id), Direction::FromDevice, None, 0);
        }
        let s = c.snapshot();
        let seen: Vec<(DeviceId, u64)> = s.iter().map(|d| (d.device, d.direct)).collect();
        assert_eq!(
            seen,
            [
                (DeviceId(0), 2),
                (DeviceId(u32::MAX - 1), 2),
                (DeviceId(u32::MAX), 2)
            ]
        );
        // Statistics off: nothing is counted, nothing is found.
        let off = DeviceCounters::disabled();
        off.mapped(0, DeviceId(0), Direction::ToDevice, None, 0);
        assert!(off.snapshot().is_empty());
    }
}
