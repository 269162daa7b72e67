//! An IOMMU domain's records of live mappings, in room allocated when the domain is made.
//!
//! Map, unmap and sync find and change records in interrupt context, where nothing may
//! allocate, so the records live in a [`FixedMap`] of [`super::DomainConfig::max_mappings`]
//! entries. Two rules keep that bound from ever costing a record:
//!
//! - a map **reserves** its record's room ([`Records::reserve`]) before it takes IOVA
//!   space or touches page tables, so a full table refuses the map with nothing to undo,
//!   and a reserved record always fits;
//! - an unmap that **takes** a record leaves its entry in place, marked as ending, until
//!   the page tables are gone: when the IOMMU refuses the unmap, the record goes back
//!   into its own entry, which no other map could have taken meanwhile.

use crate::sync::Mutex;

use crate::fixed_table::FixedMap;

/// One entry: a live mapping, or one whose unmap is under way (its page tables may still
/// translate; lookups no longer see it).
enum Entry<R> {
    Live(R),
    Ending,
}

/// The records (of type `R`) of one domain, keyed by each mapping's first device address.
pub(crate) struct Records<R> {
    map: FixedMap<u64, Entry<R>>,
    /// Room promised to maps under way.
    reserved: usize,
}

impl<R> Records<R> {
    /// Room for `capacity` mappings. Allocates: called when the domain is created.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            map: FixedMap::with_capacity(capacity),
            reserved: 0,
        }
    }

    /// Mappings the domain can hold at once.
    pub(crate) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    /// Mappings live or being unmapped.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no mapping is live or being unmapped.
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The live mapping whose first device address is `key`.
    pub(crate) fn get(&self, key: u64) -> Option<&R> {
        match self.map.get(&key)? {
            Entry::Live(r) => Some(r),
            Entry::Ending => None,
        }
    }

    /// The live mapping with the greatest first device address at or below `addr` (the
    /// only one that can hold `addr`), with that address.
    pub(crate) fn at_or_below(&self, addr: u64) -> Option<(u64, &R)> {
        match self.map.at_or_below(&addr)? {
            (key, Entry::Live(r)) => Some((key, r)),
            (_, Entry::Ending) => None,
        }
    }

    /// The live mappings, by first device address.
    pub(crate) fn values(&self) -> impl Iterator<Item = &R> + '_ {
        self.map.values().filter_map(|e| match e {
            Entry::Live(r) => Some(r),
            Entry::Ending => None,
        })
    }

    /// Takes the live record at `key` out; its entry stays, ending, until
    /// [`Records::forget`] or [`Records::put_back`].
    pub(crate) fn take(&mut self, key: u64) -> Option<R> {
        let e = self.map.get_mut(&key)?;
        match core::mem::replace(e, Entry::Ending) {
            Entry::Live(r) => Some(r),
            Entry::Ending => None,
        }
    }

    /// The unmap of the record taken at `key` is done: its room is free.
    pub(crate) fn forget(&mut self, key: u64) {
        let gone = self.map.remove(&key);
        debug_assert!(matches!(gone, Some(Entry::Ending)));
    }

    /// The unmap of the record taken at `key` was refused: it is live again.
    pub(crate) fn put_back(&mut self, key: u64, rec: R) {
        match self.map.get_mut(&key) {
            Some(e @ Entry::Ending) => *e = Entry::Live(rec),
            _ => unreachable!("a taken record's entry stays until it is forgotten"),
        }
    }
}

/// Room for one record, promised to a map under way by [`Records::reserve`]; given back
/// when dropped unused.
#[must_use = "dropping a reservation gives its room back"]
pub(crate) struct Reservation<'a, R> {
    records: &'a Mutex<Records<R>>,
}

impl<R> Records<R> {
    /// Promises room for one more record, or `None` when every entry is live, ending or
    /// promised.
    pub(crate) fn reserve(records: &Mutex<Records<R>>) -> Option<Reservation<'_, R>> {
        let mut r = records.lock();
        if r.map.len() + r.reserved >= r.map.capacity() {
            return None;
        }
        r.reserved += 1;
        Some(Reservation { records })
    }
}

impl<R> Reservation<'_, R> {
    /// Records the mapping whose first device address is `key`, in the promised room.
    pub(crate) fn insert(self, key: u64, rec: R) {
        let mut r = self.records.lock();
        r.reserved -= 1;
        // `len + reserved <= capacity` held, so there is a free entry; IOVA ranges are
        // unique while allocated, so the key is new.
        let fitted = r.map.insert(key, Entry::Live(rec));
        debug_assert!(matches!(fitted, Ok(None)));
        drop(r);
        core::mem::forget(self);
    }
}

impl<R> Drop for Reservation<'_, R> {
    fn drop(&mut self) {
        self.records.lock().reserved -= 1;
    }
}
