//! Sparse physical memory whose every byte carries a provenance stamp.
//!
//! The model must hold gigabytes of address space but touch only a few pages, so pages of
//! 4 KiB materialise on first write (untouched memory reads as zero, owned by nobody). Each
//! byte is stored with an [`Owner`] stamp, and every copy (CPU, cache line fill or write-back,
//! DMA) carries the stamps along with the data: that is how the oracle tells a byte that
//! leaked from another owner from one that was merely corrupted.

use std::cell::Cell;

use dmakit::{MemoryFault, PhysAddr, PhysRange};
use rustc_hash::FxHashMap;

use crate::error::SimError;

/// Size of a materialised page of the sparse memory.
pub const MEM_PAGE: u64 = 4096;
const PAGE: usize = MEM_PAGE as usize;

/// The provenance stamp of a byte: who put the data there. `Owner(0)` is nobody (untouched
/// memory, fills).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(transparent)]
pub struct Owner(pub u32);

/// Whether two stamp slices are equal, compared as one block of words (a derived
/// `PartialEq` on `[Owner]` compares element by element).
#[inline]
pub(crate) fn owners_eq(a: &[Owner], b: &[Owner]) -> bool {
    as_words(a) == as_words(b)
}

fn as_words(o: &[Owner]) -> &[u32] {
    // SAFETY: `Owner` is `repr(transparent)` over `u32`, so a slice of owners has the
    // layout, alignment and validity of a slice of `u32` of the same length; the result
    // borrows `o` and lives no longer.
    unsafe { std::slice::from_raw_parts(o.as_ptr().cast::<u32>(), o.len()) }
}

impl Owner {
    /// Nobody: memory never written, or written by a fill.
    pub const NOBODY: Owner = Owner(0);
}

/// Bytes together with their stamps, as returned by device reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stamped {
    /// The bytes.
    pub data: Vec<u8>,
    /// `owners[i]` is the stamp of `data[i]`.
    pub owners: Vec<Owner>,
}

impl Stamped {
    /// `len` zero bytes owned by nobody.
    pub fn zeroed(len: usize) -> Self {
        Self {
            data: vec![0; len],
            owners: vec![Owner::NOBODY; len],
        }
    }
}

/// Which physical ranges are RAM. Kept sorted with overlapping and adjacent ranges merged, so
/// an access is in RAM exactly when one range contains it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamMap {
    ranges: Vec<(u64, u64)>,
}

impl RamMap {
    /// A RAM map from `(start, len)` pairs.
    ///
    /// # Errors
    /// [`SimError::EmptyRamMap`] with no ranges, [`SimError::BadRamRange`] for an empty or
    /// overflowing range, or one whose start or length is not a multiple of [`MEM_PAGE`]
    /// (so a cache line is always wholly RAM or wholly not).
    pub fn new(ranges: &[(u64, u64)]) -> Result<Self, SimError> {
        if ranges.is_empty() {
            return Err(SimError::EmptyRamMap);
        }
        let mut v = Vec::with_capacity(ranges.len());
        for &(start, len) in ranges {
            let end = start
                .checked_add(len)
                .filter(|_| len != 0 && (start | len) % MEM_PAGE == 0)
                .ok_or(SimError::BadRamRange { start, len })?;
            v.push((start, end));
        }
        v.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (s, e) in v {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Ok(Self { ranges: merged })
    }

    /// The RAM ranges as half-open `(start, end)` pairs, sorted and merged.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Whether every byte of `[addr, addr + len)` is RAM (`false` for zero or overflowing
    /// lengths).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len).filter(|_| len != 0) else {
            return false;
        };
        self.ranges.iter().any(|&(s, e)| s <= addr && end <= e)
    }

    /// `Ok` when [`RamMap::contains`] holds.
    ///
    /// # Errors
    /// [`MemoryFault`] naming the access otherwise.
    pub fn check(&self, addr: u64, len: u64) -> Result<(), MemoryFault> {
        if self.contains(addr, len) {
            Ok(())
        } else {
            Err(MemoryFault {
                addr: PhysAddr::new(addr),
                len,
            })
        }
    }

    /// Total bytes of RAM.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e - s).sum()
    }
}

/// Slots of [`Memory`]'s cache of recent page lookups (a power of two).
const RECENT: usize = 64;

struct Page {
    data: [u8; PAGE],
    owners: [Owner; PAGE],
}

/// Sparse, stamped physical memory over a [`RamMap`]. Accesses go straight to "RAM"; the
/// caches sit in front of it in [`crate::Machine`].
pub struct Memory {
    ram: RamMap,
    index: FxHashMap<u64, u32>,
    pages: Vec<Box<Page>>,
    /// Pages looked up lately, as (page frame number, index into `pages`), in the slot
    /// `pfn % RECENT`: most lookups are answered here without hashing. A slot is either
    /// `(u64::MAX, _)` (empty) or right.
    recent: [Cell<(u64, u32)>; RECENT],
}

impl Memory {
    /// Empty memory (all zero, owned by nobody) over `ram`.
    pub fn new(ram: RamMap) -> Self {
        Self {
            ram,
            index: FxHashMap::default(),
            pages: Vec::new(),
            recent: [const { Cell::new((u64::MAX, 0)) }; RECENT],
        }
    }

    /// The RAM map.
    pub fn ram(&self) -> &RamMap {
        &self.ram
    }

    /// Number of pages materialised so far.
    pub fn resident_pages(&self) -> usize {
        self.pages.len()
    }

    fn lookup(&self, pfn: u64) -> Option<usize> {
        let slot = &self.recent[pfn as usize % RECENT];
        let (lp, li) = slot.get();
        if lp == pfn {
            return Some(li as usize);
        }
        let i = *self.index.get(&pfn)?;
        slot.set((pfn, i));
        Some(i as usize)
    }

    fn page_mut(&mut self, pfn: u64) -> &mut Page {
        let i = match self.lookup(pfn) {
            Some(i) => i,
            None => {
                let i = self.pages.len();
                self.pages.push(Box::new(Page {
                    data: [0; PAGE],
                    owners: [Owner::NOBODY; PAGE],
                }));
                self.index.insert(pfn, i as u32);
                self.recent[pfn as usize % RECENT].set((pfn, i as u32));
                i
            }
        };
        &mut self.pages[i]
    }

    /// Reads `data.len()` bytes at `addr` with their stamps into `owners`.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the two slices differ in length;
    /// nothing is read then.
    pub fn read(
        &self,
        addr: u64,
        data: &mut [u8],
        owners: &mut [Owner],
    ) -> Result<(), MemoryFault> {
        if data.len() != owners.len() {
            return Err(MemoryFault {
                addr: PhysAddr::new(addr),
                len: data.len() as u64,
            });
        }
        self.ram.check(addr, data.len() as u64)?;
        self.read_unchecked(addr, data, owners);
        Ok(())
    }

    /// Reads without the RAM check; the caller has checked the range.
    pub(crate) fn read_unchecked(&self, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        let mut done = 0usize;
        while done < data.len() {
            let a = addr + done as u64;
            let n = (PAGE - (a % MEM_PAGE) as usize).min(data.len() - done);
            self.read_in_page(a, &mut data[done..done + n], &mut owners[done..done + n]);
            done += n;
        }
    }

    /// [`Memory::read_unchecked`] of bytes all in one page (a cache line, say).
    #[inline]
    pub(crate) fn read_in_page(&self, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        let off = (addr % MEM_PAGE) as usize;
        match self.lookup(addr / MEM_PAGE) {
            Some(i) => {
                let p = &self.pages[i];
                data.copy_from_slice(&p.data[off..off + data.len()]);
                owners.copy_from_slice(&p.owners[off..off + owners.len()]);
            }
            None => {
                data.fill(0);
                owners.fill(Owner::NOBODY);
            }
        }
    }

    /// Whether `[addr, addr + data.len())` holds exactly `data` stamped `owners` (same
    /// length), without the RAM check: the caller has checked the range. Compares in place,
    /// copying nothing.
    pub(crate) fn eq_unchecked(&self, addr: u64, data: &[u8], owners: &[Owner]) -> bool {
        let mut done = 0usize;
        while done < data.len() {
            let a = addr + done as u64;
            let off = (a % MEM_PAGE) as usize;
            let n = (PAGE - off).min(data.len() - done);
            let (d, o) = (&data[done..done + n], &owners[done..done + n]);
            let same = match self.lookup(a / MEM_PAGE) {
                Some(i) => {
                    let p = &self.pages[i];
                    *d == p.data[off..off + n] && owners_eq(o, &p.owners[off..off + n])
                }
                None => d.iter().all(|&b| b == 0) && o.iter().all(|&w| w == Owner::NOBODY),
            };
            if !same {
                return false;
            }
            done += n;
        }
        true
    }

    /// Writes `data` at `addr`, stamping byte `i` with `owners[i]`.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM or the two slices differ in length;
    /// nothing is written then.
    pub fn write(&mut self, addr: u64, data: &[u8], owners: &[Owner]) -> Result<(), MemoryFault> {
        if data.len() != owners.len() {
            return Err(MemoryFault {
                addr: PhysAddr::new(addr),
                len: data.len() as u64,
            });
        }
        self.ram.check(addr, data.len() as u64)?;
        self.write_unchecked(addr, data, Stamps::Each(owners));
        Ok(())
    }

    /// Writes `data` at `addr`, every byte stamped `owner`.
    ///
    /// # Errors
    /// [`MemoryFault`] when the range is not RAM; nothing is written then.
    pub fn write_owned(&mut self, addr: u64, data: &[u8], owner: Owner) -> Result<(), MemoryFault> {
        self.ram.check(addr, data.len() as u64)?;
        self.write_unchecked(addr, data, Stamps::All(owner));
        Ok(())
    }

    pub(crate) fn write_unchecked(&mut self, addr: u64, data: &[u8], owners: Stamps<'_>) {
        let mut done = 0usize;
        while done < data.len() {
            let a = addr + done as u64;
            let n = (PAGE - (a % MEM_PAGE) as usize).min(data.len() - done);
            let o = match owners {
                Stamps::Each(o) => Stamps::Each(&o[done..done + n]),
                all => all,
            };
            self.write_in_page(a, &data[done..done + n], o);
            done += n;
        }
    }

    /// [`Memory::write_unchecked`] of bytes all in one page (a cache line, say).
    #[inline]
    pub(crate) fn write_in_page(&mut self, addr: u64, data: &[u8], owners: Stamps<'_>) {
        let off = (addr % MEM_PAGE) as usize;
        let p = self.page_mut(addr / MEM_PAGE);
        p.data[off..off + data.len()].copy_from_slice(data);
        let o = &mut p.owners[off..off + data.len()];
        match owners {
            Stamps::Each(s) => o.copy_from_slice(s),
            Stamps::All(s) => o.fill(s),
        }
    }

    /// The range `[addr, addr+len)` as a [`PhysRange`], if it is RAM.
    pub fn ram_range(&self, addr: u64, len: u64) -> Option<PhysRange> {
        if self.ram.contains(addr, len) {
            PhysRange::new(PhysAddr::new(addr), len)
        } else {
            None
        }
    }
}

/// Stamps for a write: one per byte, or the same for all.
#[derive(Clone, Copy)]
pub(crate) enum Stamps<'a> {
    Each(&'a [Owner]),
    All(Owner),
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn mem() -> Memory {
        Memory::new(RamMap::new(&[(0, 2 * GIB), (4 * GIB, 4 * GIB)]).unwrap())
    }

    #[test]
    fn ram_map_merges_and_validates() {
        assert_eq!(RamMap::new(&[]), Err(SimError::EmptyRamMap));
        assert_eq!(
            RamMap::new(&[(u64::MAX, 2)]),
            Err(SimError::BadRamRange {
                start: u64::MAX,
                len: 2
            })
        );
        let m = RamMap::new(&[(0x2000, 0x1000), (0, 0x1000), (0x1000, 0x1000)]).unwrap();
        assert_eq!(m.ranges(), &[(0, 0x3000)]);
        assert!(m.contains(0xfff, 2));
        assert!(!m.contains(0x2fff, 2));
        assert!(!m.contains(0, 0));
        assert_eq!(m.total(), 0x3000);
    }

    #[test]
    fn untouched_reads_zero_and_writes_materialise_pages() {
        let mut m = mem();
        let mut d = [1u8; 8];
        let mut o = [Owner(9); 8];
        m.read(0x1000, &mut d, &mut o).unwrap();
        assert_eq!((d, o), ([0; 8], [Owner::NOBODY; 8]));
        assert_eq!(m.resident_pages(), 0);
        // A write that crosses a page boundary.
        m.write_owned(0x1ffc, &[1, 2, 3, 4, 5, 6, 7, 8], Owner(3))
            .unwrap();
        assert_eq!(m.resident_pages(), 2);
        m.read(0x1ffc, &mut d, &mut o).unwrap();
        assert_eq!(d, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(o, [Owner(3); 8]);
        m.write(0x1ffe, &[9, 9], &[Owner(4), Owner(5)]).unwrap();
        m.read(0x1ffc, &mut d, &mut o).unwrap();
        assert_eq!(d, [1, 2, 9, 9, 5, 6, 7, 8]);
        assert_eq!(o[2..4], [Owner(4), Owner(5)]);
    }

    #[test]
    fn outside_ram_is_an_error_and_changes_nothing() {
        let mut m = mem();
        let f = m.write_owned(2 * GIB - 2, &[1; 4], Owner(1)).unwrap_err();
        assert_eq!((f.addr.as_u64(), f.len), (2 * GIB - 2, 4));
        assert_eq!(m.resident_pages(), 0);
        let mut d = [0u8; 4];
        let mut o = [Owner(0); 4];
        assert!(m.read(3 * GIB, &mut d, &mut o).is_err());
        assert!(m.read(4 * GIB, &mut d, &mut o).is_ok());
        assert!(m.write(0, &[1, 2], &[Owner(1)]).is_err());
        assert!(m.ram_range(8 * GIB - 1, 1).is_some());
        assert!(m.ram_range(8 * GIB, 1).is_none());
    }
}
