//! An ordered map whose room is allocated once, when it is created.
//!
//! Map paths run in interrupt context, where the heap may not be used, yet several of them
//! keep records of live mappings (an IOMMU domain's, for one). A `BTreeMap` allocates a
//! node whenever one fills, so those records live here instead: [`FixedMap`] allocates its
//! whole capacity in [`FixedMap::with_capacity`] and never again; an insert beyond the
//! capacity is refused (the value comes back), so a caller reports it instead of dropping
//! a record.
//!
//! Why not a crate: `heapless` maps fix their capacity at compile time (a const generic),
//! while these capacities come from run-time configuration, and its `FnvIndexMap` is not
//! ordered, which the "mapping that holds this address" lookup
//! ([`FixedMap::at_or_below`]) needs.
//!
//! The layout is a slab with a sorted index: values sit in slots that never move (so a
//! value may be large), and the index holds `(key, slot)` pairs in key order. Lookups are
//! binary searches; an insert or remove shifts the index entries after its position,
//! `O(len)` small copies — a few hundred nanoseconds at thousands of live entries, less
//! than the tree's node allocation costs at the sizes mapping tables have.

use alloc::vec::Vec;

/// An ordered map of at most [`FixedMap::capacity`] entries that allocates only when it is
/// created.
pub(crate) struct FixedMap<K, V> {
    /// Keys in ascending order, each with the slot holding its value.
    index: Vec<(K, u32)>,
    /// Values by slot; `None` is a free slot.
    slots: Vec<Option<V>>,
    /// The free slots.
    free: Vec<u32>,
}

impl<K: Ord + Copy, V> FixedMap<K, V> {
    /// An empty map with room for `capacity` entries (at most `u32::MAX`). Allocates: call
    /// outside atomic context.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.min(u32::MAX as usize);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize_with(capacity, || None);
        Self {
            index: Vec::with_capacity(capacity),
            slots,
            // Popped from the end: slot 0 is used first.
            free: (0..capacity as u32).rev().collect(),
        }
    }

    /// Makes room for `capacity` entries in all (never less than the map has now; at most
    /// `u32::MAX`), keeping every entry. Allocates: call outside atomic context.
    pub(crate) fn grow_to(&mut self, capacity: usize) {
        let capacity = capacity.min(u32::MAX as usize);
        let old = self.slots.len();
        if capacity <= old {
            return;
        }
        self.index.reserve_exact(capacity - self.index.len());
        self.free.reserve_exact(capacity - self.free.len());
        self.slots.resize_with(capacity, || None);
        self.free.extend((old as u32..capacity as u32).rev());
    }

    /// Entries the map can hold.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no entry is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.index.binary_search_by(|(k, _)| k.cmp(key))
    }

    fn slot(&self, i: usize) -> &V {
        let slot = self.index[i].1 as usize;
        self.slots[slot]
            .as_ref()
            .unwrap_or_else(|| unreachable!("an indexed slot holds a value"))
    }

    /// The value at `key`.
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| self.slot(i))
    }

    /// The value at `key`, to change in place.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = self.index[self.find(key).ok()?].1 as usize;
        self.slots[slot].as_mut()
    }

    /// Puts `value` at `key`, returning the value it replaces. Never allocates.
    ///
    /// # Errors
    /// `Err(value)`, the map unchanged, when `key` is new and the map is full.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Result<Option<V>, V> {
        match self.find(&key) {
            Ok(i) => {
                let slot = self.index[i].1 as usize;
                Ok(self.slots[slot].replace(value))
            }
            Err(i) => {
                let Some(slot) = self.free.pop() else {
                    return Err(value);
                };
                self.slots[slot as usize] = Some(value);
                // Within the capacity reserved at creation: no reallocation.
                self.index.insert(i, (key, slot));
                Ok(None)
            }
        }
    }

    /// Takes the value at `key` out. Never allocates.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let (_, slot) = self.index.remove(i);
        // At most `capacity` slots are ever free: within the reserved capacity.
        self.free.push(slot);
        self.slots[slot as usize].take()
    }

    /// The entry with the greatest key at or below `key`.
    pub(crate) fn at_or_below(&self, key: &K) -> Option<(K, &V)> {
        let i = match self.find(key) {
            Ok(i) => i,
            Err(0) => return None,
            Err(i) => i - 1,
        };
        Some((self.index[i].0, self.slot(i)))
    }

    /// The entries at or below `key`, in descending key order.
    pub(crate) fn at_or_below_rev(&self, key: &K) -> impl Iterator<Item = (K, &V)> + '_ {
        let end = match self.find(key) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        (0..end).rev().map(|i| (self.index[i].0, self.slot(i)))
    }

    /// The entry with the least key above `key`.
    pub(crate) fn above(&self, key: &K) -> Option<(K, &V)> {
        let i = match self.find(key) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        (i < self.index.len()).then(|| (self.index[i].0, self.slot(i)))
    }

    /// The entries in ascending key order.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (K, &V)> + '_ {
        (0..self.index.len()).map(|i| (self.index[i].0, self.slot(i)))
    }

    /// The values in ascending key order.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        (0..self.index.len()).map(|i| self.slot(i))
    }
}

#[cfg(test)]
mod tests {
    use super::FixedMap;
    use alloc::collections::BTreeMap;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    #[test]
    fn holds_its_capacity_and_refuses_more() {
        let mut m = FixedMap::with_capacity(3);
        assert_eq!(m.capacity(), 3);
        assert!(m.is_empty());
        for k in [30u64, 10, 20] {
            assert_eq!(m.insert(k, k * 2), Ok(None));
        }
        assert_eq!(m.insert(40, 80), Err(80), "full: the value comes back");
        assert_eq!(
            m.insert(20, 21),
            Ok(Some(40)),
            "a known key is replaced, full or not"
        );
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(10, &20), (20, &21), (30, &60)]
        );
        assert_eq!(m.remove(&10), Some(20));
        assert_eq!(m.remove(&10), None);
        assert_eq!(m.insert(40, 80), Ok(None), "a removal makes room");
        assert_eq!(m.values().copied().collect::<Vec<_>>(), [21, 60, 80]);
    }

    #[test]
    fn finds_the_entry_at_or_below_a_key() {
        let mut m = FixedMap::with_capacity(4);
        for k in [100u64, 200, 300] {
            m.insert(k, ()).unwrap();
        }
        assert_eq!(m.at_or_below(&99), None);
        assert_eq!(m.at_or_below(&100).map(|e| e.0), Some(100));
        assert_eq!(m.at_or_below(&299).map(|e| e.0), Some(200));
        assert_eq!(m.at_or_below(&u64::MAX).map(|e| e.0), Some(300));
        *m.get_mut(&200).unwrap() = ();
        assert!(m.get(&200).is_some() && m.get(&201).is_none());
    }

    #[test]
    fn growing_keeps_the_entries_and_makes_room() {
        let mut m = FixedMap::with_capacity(2);
        m.insert(20u64, 'b').unwrap();
        m.insert(10, 'a').unwrap();
        assert_eq!(m.insert(30, 'c'), Err('c'));
        m.grow_to(1);
        assert_eq!(m.capacity(), 2, "never shrinks");
        m.grow_to(4);
        assert_eq!(m.capacity(), 4);
        assert_eq!(m.insert(30, 'c'), Ok(None));
        assert_eq!(m.insert(0, 'z'), Ok(None));
        assert_eq!(m.insert(40, 'd'), Err('d'));
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [(0, &'z'), (10, &'a'), (20, &'b'), (30, &'c')]
        );
        for k in [0, 10, 20, 30] {
            assert!(m.remove(&k).is_some());
        }
        assert!(m.is_empty());
    }

    #[test]
    fn a_map_of_no_capacity_refuses_everything() {
        let mut m: FixedMap<u64, u8> = FixedMap::with_capacity(0);
        assert_eq!(m.insert(1, 1), Err(1));
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.at_or_below(&1).map(|e| e.0), None);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Get(u8),
        AtOrBelow(u8),
        AtOrBelowRev(u8),
        Above(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<u8>(), any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            any::<u8>().prop_map(Op::Remove),
            any::<u8>().prop_map(Op::Get),
            any::<u8>().prop_map(Op::AtOrBelow),
            any::<u8>().prop_map(Op::AtOrBelowRev),
            any::<u8>().prop_map(Op::Above),
        ]
    }

    proptest! {
        /// Every operation answers as a `BTreeMap` that refuses new keys once it holds
        /// `capacity` entries would, and the two always hold the same entries in order.
        #[test]
        fn behaves_as_a_bounded_btreemap(
            capacity in 0usize..24,
            // Under Miri a case of 300 steps interprets for minutes; 40 still covers
            // filling, refusing and emptying a table of up to 23 entries.
            ops in proptest::collection::vec(op(), 0..if cfg!(miri) { 40 } else { 300 }),
        ) {
            let mut fixed = FixedMap::with_capacity(capacity);
            let mut model: BTreeMap<u8, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let want = if model.contains_key(&k) || model.len() < capacity {
                            Ok(model.insert(k, v))
                        } else {
                            Err(v)
                        };
                        prop_assert_eq!(fixed.insert(k, v), want);
                    }
                    Op::Remove(k) => prop_assert_eq!(fixed.remove(&k), model.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(fixed.get(&k), model.get(&k)),
                    Op::AtOrBelow(k) => prop_assert_eq!(
                        fixed.at_or_below(&k),
                        model.range(..=k).next_back().map(|(&k, v)| (k, v))
                    ),
                    Op::AtOrBelowRev(k) => prop_assert!(fixed
                        .at_or_below_rev(&k)
                        .eq(model.range(..=k).rev().map(|(&k, v)| (k, v)))),
                    Op::Above(k) => prop_assert_eq!(
                        fixed.above(&k),
                        model.range(k..).find(|e| *e.0 > k).map(|(&k, v)| (k, v))
                    ),
                }
                prop_assert_eq!(fixed.len(), model.len());
                prop_assert!(fixed.iter().eq(model.iter().map(|(&k, v)| (k, v))));
            }
        }
    }
}
