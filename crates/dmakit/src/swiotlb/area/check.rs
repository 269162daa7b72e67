//! The area's invariant check, for tests.

use super::packed::{SlotEntry, NIL};
use super::{Area, AreaInner};
use crate::swiotlb::stripe_key::StripeKey;
use crate::swiotlb::sync::Ordering;

impl<T> Area<T> {
    /// Checks the allocator's invariants: that live allocations, packed slots, cached runs
    /// and free blocks partition the area, that no two live allocations share a line unit,
    /// that the packed list and records are consistent, and that the counters agree; for
    /// tests.
    #[cfg(test)]
    pub(crate) fn check(&self, key: &mut StripeKey) -> Result<(), alloc::string::String> {
        self.with_inner(key, |inner| self.check_inner(inner))
    }

    #[cfg(test)]
    fn check_inner(&self, inner: &AreaInner<T>) -> Result<(), alloc::string::String> {
        use alloc::format;
        inner.slots.check()?;
        let lo = inner.lines_order;
        let per_slot = 1u32 << lo;
        let all = u64::MAX >> (64 - per_slot);
        let n = inner.slots.len();
        let free_or_cached = |j: u32| inner.slots.is_free(j) || inner.cache.holds(j);
        let mut cached = 0u32;
        for (k, runs) in inner.cache.runs.iter().enumerate() {
            let c = k as u32 + 1;
            for &f in &runs[..inner.cache.depth[k] as usize] {
                if f >> inner.slots.max_order() != (f + c - 1) >> inner.slots.max_order() {
                    return Err(format!("cached run {f}+{c} crosses a segment"));
                }
                for j in f..f + c {
                    if inner.slots.is_free(j)
                        || !matches!(inner.entries[j as usize], SlotEntry::Empty)
                    {
                        return Err(format!("cached slot {j} is also free or live"));
                    }
                }
                cached += c;
            }
        }
        if cached != inner.cache.slots {
            return Err(format!("cache counts {} of {cached}", inner.cache.slots));
        }
        let (mut used, mut live, mut packed_free, mut partial, mut records) =
            (0u32, 0u32, 0u32, 0u32, 0u32);
        let mut held = alloc::vec![false; n as usize];
        let mut hold = |j: u32, what: &str| -> Result<(), alloc::string::String> {
            if free_or_cached(j) {
                return Err(format!("{what} slot {j} is also free"));
            }
            if core::mem::replace(&mut held[j as usize], true) {
                return Err(format!("{what} slot {j} is held twice"));
            }
            Ok(())
        };
        for (i, e) in inner.entries.iter().enumerate() {
            let i = i as u32;
            match e {
                SlotEntry::Empty => {}
                SlotEntry::Whole(l) => {
                    if l.claimed {
                        return Err(format!("run at {i} is still claimed"));
                    }
                    let (first, count) = (l.first >> lo, l.units >> lo);
                    if l.first % per_slot != 0
                        || l.units % per_slot != 0
                        || !(first..first + count).contains(&i)
                    {
                        return Err(format!("run at {i} holds {}+{} units", l.first, l.units));
                    }
                    if first + count > n {
                        return Err(format!("run at {i} leaves the area"));
                    }
                    for j in first..first + count {
                        hold(j, "live")?;
                    }
                    used += l.units;
                    live += 1;
                }
                SlotEntry::Packed(p) => {
                    hold(i, "packed")?;
                    let mut lines = 0u64;
                    let mut rec = p.head;
                    while rec != NIL {
                        let r = &inner.records[rec as usize];
                        let Some(l) = &r.live else {
                            return Err(format!("packed slot {i} chains free record {rec}"));
                        };
                        if l.claimed {
                            return Err(format!("packed run at {i} is still claimed"));
                        }
                        let line = l.first.wrapping_sub(i << lo);
                        if l.units == 0 || line >= per_slot || line + l.units > per_slot {
                            return Err(format!(
                                "packed run {}+{} is not in slot {i}",
                                l.first, l.units
                            ));
                        }
                        let bits = (u64::MAX >> (64 - l.units)) << line;
                        if lines & bits != 0 {
                            return Err(format!("packed runs of slot {i} share a line"));
                        }
                        if (l.offset >> inner.unit_shift) < line
                            || (l.offset as u64 + l.len) > (per_slot as u64) << inner.unit_shift
                        {
                            return Err(format!(
                                "packed bounce at {i}+{} is outside its slot or lines",
                                l.offset
                            ));
                        }
                        lines |= bits;
                        used += l.units;
                        live += 1;
                        records += 1;
                        rec = r.next;
                    }
                    if lines != p.used || (lines == 0) != (inner.spare == i) {
                        return Err(format!(
                            "packed slot {i}: lines {:#x}, records {lines:#x}",
                            p.used
                        ));
                    }
                    packed_free += per_slot - p.used.count_ones();
                    partial += u32::from(p.used != all);
                }
            }
        }
        let mut listed = 0u32;
        let (mut prev, mut s) = (NIL, inner.partial);
        while s != NIL {
            let SlotEntry::Packed(p) = &inner.entries[s as usize] else {
                return Err(format!("listed slot {s} is not packed"));
            };
            if p.prev != prev || p.used == all {
                return Err(format!("packed list broken at {s}"));
            }
            listed += 1;
            (prev, s) = (s, p.next);
        }
        if listed != partial {
            return Err(format!(
                "{listed} listed packed slots of {partial} with a free line"
            ));
        }
        let mut free_records = 0u32;
        let mut r = inner.free_record;
        while r != NIL {
            if inner.records[r as usize].live.is_some() {
                return Err(format!("free record {r} is live"));
            }
            free_records += 1;
            r = inner.records[r as usize].next;
        }
        if free_records + records != inner.records.len() as u32 {
            return Err(format!(
                "{free_records} free + {records} live records of {}",
                inner.records.len()
            ));
        }
        if packed_free != inner.packed_free {
            return Err(format!(
                "packed free lines {} counted {packed_free}",
                inner.packed_free
            ));
        }
        let held_slots = held.iter().filter(|&&h| h).count() as u32;
        if held_slots + inner.free_slots() != n {
            return Err(format!(
                "{held_slots} held + {} free + {cached} cached != {n}",
                inner.slots.free_slots()
            ));
        }
        if used + packed_free + (inner.free_slots() << lo) != n << lo {
            return Err(format!(
                "{used} used + {packed_free} packed free units do not fill the area"
            ));
        }
        if (used, live) != (self.counter.used(), self.counter.live()) {
            return Err(format!(
                "counters say {} units in {} allocations, table {used} in {live}",
                self.counter.used(),
                self.counter.live()
            ));
        }
        if self.counter.allowance() < used {
            return Err(format!("allowance below usage {used}"));
        }
        if self.orders_hint.load(Ordering::Relaxed) != inner.hint() {
            return Err(alloc::string::String::from("stale allocation hint"));
        }
        Ok(())
    }
}
