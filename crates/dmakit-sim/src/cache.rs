//! A write-back, write-allocate, set-associative CPU data cache.
//!
//! This is the component that makes non-coherent DMA dangerous, so it behaves like the real
//! thing: a store only dirties a line, RAM sees it when the line is cleaned or evicted; a
//! load of a line already cached returns the cached copy even when RAM has changed under it;
//! maintenance acts on whole lines, including bytes outside the requested range. Lines carry
//! the provenance stamps of their bytes. The cache itself is deterministic (LRU replacement);
//! the random misbehaviour (evictions and speculative fills at arbitrary moments) is driven
//! from outside through [`Cache::evict`] and [`Cache::speculative_fill`].

use crate::error::SimError;
use crate::memory::{owners_eq, Memory, Owner, Stamps};

/// Geometry of the data cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Line size in bytes: 32, 64 or 128.
    pub line_size: u64,
    /// Total capacity in bytes.
    pub capacity: u64,
    /// Ways per set (associativity).
    pub ways: u64,
}

impl Default for CacheConfig {
    /// 64-byte lines, 32 KiB, 4 ways: small enough that capacity evictions happen often.
    fn default() -> Self {
        Self {
            line_size: 64,
            capacity: 32 * 1024,
            ways: 4,
        }
    }
}

impl CacheConfig {
    /// Checks the geometry.
    ///
    /// # Errors
    /// [`SimError::BadLineSize`] unless the line is 32, 64 or 128 bytes;
    /// [`SimError::BadCacheGeometry`] unless capacity is a non-zero multiple of
    /// `ways * line_size` (with `ways` non-zero).
    pub fn validate(&self) -> Result<(), SimError> {
        if !matches!(self.line_size, 32 | 64 | 128) {
            return Err(SimError::BadLineSize(self.line_size));
        }
        let way_bytes = self.ways.checked_mul(self.line_size).unwrap_or(0);
        if way_bytes == 0 || self.capacity == 0 || self.capacity % way_bytes != 0 {
            return Err(SimError::BadCacheGeometry {
                capacity: self.capacity,
                ways: self.ways,
                line: self.line_size,
            });
        }
        Ok(())
    }
}

/// What the cache has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Accesses that found their line.
    pub hits: u64,
    /// Accesses that had to fill a line.
    pub misses: u64,
    /// Valid lines evicted to make room for another (natural evictions).
    pub capacity_evictions: u64,
    /// Dirty lines written back to RAM, for any reason.
    pub writebacks: u64,
}

#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    tag: u64,
    valid: bool,
    dirty: bool,
    lru: u64,
}

/// The data cache. Every method that may move data to or from RAM takes the [`Memory`]
/// behind it; the cache never checks that lines are RAM (the machine does that first).
pub struct Cache {
    line: u64,
    line_bytes: usize,
    /// `log2(line)`: a line address's line number is `la >> line_shift`.
    line_shift: u32,
    sets: u64,
    /// `sets - 1` when `sets` is a power of two (the set of a line is then a mask of its
    /// number, not a division); `None` otherwise.
    set_mask: Option<u64>,
    ways: usize,
    meta: Vec<Meta>,
    data: Vec<u8>,
    owners: Vec<Owner>,
    clock: u64,
    stats: CacheStats,
}

/// One piece of a CPU or device access that stays inside one cache line: `n` bytes at
/// offset `off` of the line at `la`, being bytes `done..done + n` of the access.
struct Piece {
    done: usize,
    la: u64,
    off: usize,
    n: usize,
}

/// Splits the access `[addr, addr + len)` into pieces that each stay inside one line of
/// `line_bytes` (a power of two).
fn pieces(addr: u64, len: usize, line_bytes: usize) -> impl Iterator<Item = Piece> {
    let mut done = 0usize;
    core::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let a = addr + done as u64;
        let off = (a & (line_bytes as u64 - 1)) as usize;
        let n = (line_bytes - off).min(len - done);
        let piece = Piece {
            done,
            la: a - off as u64,
            off,
            n,
        };
        done += n;
        Some(piece)
    })
}

impl Cache {
    /// An empty cache.
    ///
    /// # Errors
    /// As [`CacheConfig::validate`].
    pub fn new(cfg: CacheConfig) -> Result<Self, SimError> {
        cfg.validate()?;
        let lines = (cfg.capacity / cfg.line_size) as usize;
        let sets = cfg.capacity / (cfg.line_size * cfg.ways);
        Ok(Self {
            line: cfg.line_size,
            line_bytes: cfg.line_size as usize,
            line_shift: cfg.line_size.trailing_zeros(),
            sets,
            set_mask: sets.is_power_of_two().then(|| sets - 1),
            ways: cfg.ways as usize,
            meta: vec![Meta::default(); lines],
            data: vec![0; cfg.capacity as usize],
            owners: vec![Owner::NOBODY; cfg.capacity as usize],
            clock: 0,
            stats: CacheStats::default(),
        })
    }

    /// Line size in bytes.
    #[inline]
    pub fn line_size(&self) -> u64 {
        self.line
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Number of lines the cache can hold.
    pub fn capacity_lines(&self) -> usize {
        self.meta.len()
    }

    #[inline]
    fn set_of(&self, line_addr: u64) -> usize {
        let number = line_addr >> self.line_shift;
        let set = match self.set_mask {
            Some(mask) => number & mask,
            None => number % self.sets,
        };
        set as usize * self.ways
    }

    #[inline]
    fn find(&self, line_addr: u64) -> Option<usize> {
        let base = self.set_of(line_addr);
        self.meta[base..base + self.ways]
            .iter()
            .position(|m| m.valid && m.tag == line_addr)
            .map(|w| base + w)
    }

    /// Whether the line containing `addr` is cached, and if so whether it is dirty.
    pub fn lookup(&self, addr: u64) -> Option<bool> {
        self.find(addr & !(self.line - 1))
            .map(|i| self.meta[i].dirty)
    }

    /// Every cached line as `(line address, dirty)`, in slot order (deterministic).
    pub fn lines(&self) -> Vec<(u64, bool)> {
        self.meta
            .iter()
            .filter(|m| m.valid)
            .map(|m| (m.tag, m.dirty))
            .collect()
    }

    fn write_back(&mut self, mem: &mut Memory, i: usize) {
        let m = &mut self.meta[i];
        if m.valid && m.dirty {
            m.dirty = false;
            let tag = m.tag;
            let s = i * self.line_bytes;
            let e = s + self.line_bytes;
            // A line never crosses a page: lines are aligned and at most a page long.
            mem.write_in_page(tag, &self.data[s..e], Stamps::Each(&self.owners[s..e]));
            self.stats.writebacks += 1;
        }
    }

    /// Brings `line_addr` into the cache (clean), evicting the LRU line of its set.
    fn fill(&mut self, mem: &mut Memory, line_addr: u64) -> usize {
        let victim = self.claim(mem, line_addr);
        let s = victim * self.line_bytes;
        let e = s + self.line_bytes;
        mem.read_in_page(line_addr, &mut self.data[s..e], &mut self.owners[s..e]);
        victim
    }

    /// Gives `line_addr` the LRU slot of its set (written back first when dirty), as
    /// [`Cache::fill`] does, but leaves the slot's bytes and stamps as they were: for a
    /// store that overwrites the whole line at once, whose old contents nobody can see.
    fn claim(&mut self, mem: &mut Memory, line_addr: u64) -> usize {
        let base = self.set_of(line_addr);
        // The first invalid way, else the first of the least recently used.
        let set = &self.meta[base..base + self.ways];
        let victim = base
            + set.iter().position(|m| !m.valid).unwrap_or_else(|| {
                (1..set.len()).fold(0, |v, w| if set[w].lru < set[v].lru { w } else { v })
            });
        if self.meta[victim].valid {
            self.write_back(mem, victim);
            self.stats.capacity_evictions += 1;
        }
        self.meta[victim] = Meta {
            tag: line_addr,
            valid: true,
            dirty: false,
            lru: self.clock,
        };
        victim
    }

    #[inline]
    fn touch(&mut self, i: usize) {
        self.clock += 1;
        self.meta[i].lru = self.clock;
    }

    /// The slot holding `line_addr` for a CPU access, filled on a miss. With `whole`
    /// (the access overwrites every byte of the line) a miss takes its slot without reading
    /// RAM: the line ends up exactly as if it had been filled, then overwritten.
    fn slot_for_access(&mut self, mem: &mut Memory, line_addr: u64, whole: bool) -> usize {
        match self.find(line_addr) {
            Some(i) => {
                self.stats.hits += 1;
                self.touch(i);
                i
            }
            None => {
                self.stats.misses += 1;
                let i = if whole {
                    self.claim(mem, line_addr)
                } else {
                    self.fill(mem, line_addr)
                };
                self.touch(i);
                i
            }
        }
    }

    /// A CPU load of `data.len()` bytes at `addr` (stamps into `owners`, same length),
    /// filling missing lines from `mem`.
    pub fn load(&mut self, mem: &mut Memory, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        for Piece { done, la, off, n } in pieces(addr, data.len(), self.line_bytes) {
            let i = self.slot_for_access(mem, la, false);
            let s = i * self.line_bytes + off;
            data[done..done + n].copy_from_slice(&self.data[s..s + n]);
            owners[done..done + n].copy_from_slice(&self.owners[s..s + n]);
        }
    }

    /// A CPU load of `len` bytes at `addr` whose bytes nobody looks at: the cache changes
    /// exactly as under [`Cache::load`] (fills, evictions, LRU order, counters), without
    /// copying the bytes out.
    pub fn load_discard(&mut self, mem: &mut Memory, addr: u64, len: usize) {
        for Piece { la, .. } in pieces(addr, len, self.line_bytes) {
            self.slot_for_access(mem, la, false);
        }
    }

    /// A CPU store of `data` at `addr`: allocates missing lines and dirties them.
    pub(crate) fn store(&mut self, mem: &mut Memory, addr: u64, data: &[u8], owners: Stamps<'_>) {
        for Piece { done, la, off, n } in pieces(addr, data.len(), self.line_bytes) {
            let i = self.slot_for_access(mem, la, n == self.line_bytes);
            let s = i * self.line_bytes + off;
            self.data[s..s + n].copy_from_slice(&data[done..done + n]);
            match owners {
                Stamps::Each(o) => self.owners[s..s + n].copy_from_slice(&o[done..done + n]),
                Stamps::All(o) => self.owners[s..s + n].fill(o),
            }
            self.meta[i].dirty = true;
        }
    }

    /// A CPU store of `data` at `addr`, every byte stamped `owner`.
    pub fn store_owned(&mut self, mem: &mut Memory, addr: u64, data: &[u8], owner: Owner) {
        self.store(mem, addr, data, Stamps::All(owner));
    }

    /// What a load would return, without touching LRU state or filling lines: cached bytes
    /// from the cache, the rest from `mem`.
    pub fn peek(&self, mem: &Memory, addr: u64, data: &mut [u8], owners: &mut [Owner]) {
        // Consecutive lines that are not cached are read from `mem` in one go: bytes
        // `from..done` of the access, once a cached line or the end closes the run.
        let mut from = 0usize;
        for Piece { done, la, off, n } in pieces(addr, data.len(), self.line_bytes) {
            if let Some(i) = self.find(la) {
                if from < done {
                    let r = from..done;
                    mem.read_unchecked(addr + from as u64, &mut data[r.clone()], &mut owners[r]);
                }
                from = done + n;
                let s = i * self.line_bytes + off;
                data[done..done + n].copy_from_slice(&self.data[s..s + n]);
                owners[done..done + n].copy_from_slice(&self.owners[s..s + n]);
            }
        }
        if from < data.len() {
            let r = from..data.len();
            mem.read_unchecked(addr + from as u64, &mut data[r.clone()], &mut owners[r]);
        }
    }

    /// Whether a [`Cache::peek`] of `data.len()` bytes at `addr` would return exactly
    /// `data` and `owners` (same length); compares in place, copying nothing, and like
    /// `peek` changes nothing.
    pub fn peek_eq(&self, mem: &Memory, addr: u64, data: &[u8], owners: &[Owner]) -> bool {
        // Runs of lines that are not cached are compared with `mem` in one go, as in `peek`.
        let mut from = 0usize;
        for Piece { done, la, off, n } in pieces(addr, data.len(), self.line_bytes) {
            if let Some(i) = self.find(la) {
                if from < done {
                    let r = from..done;
                    if !mem.eq_unchecked(addr + from as u64, &data[r.clone()], &owners[r]) {
                        return false;
                    }
                }
                from = done + n;
                let s = i * self.line_bytes + off;
                if data[done..done + n] != self.data[s..s + n]
                    || !owners_eq(&owners[done..done + n], &self.owners[s..s + n])
                {
                    return false;
                }
            }
        }
        from >= data.len() || {
            let r = from..data.len();
            mem.eq_unchecked(addr + from as u64, &data[r.clone()], &owners[r])
        }
    }

    /// A coherent device wrote `data` to RAM at `addr`: cached copies of those bytes are
    /// updated too (dirty state unchanged), as a snooping interconnect does.
    pub(crate) fn snoop_write(&mut self, addr: u64, data: &[u8], owner: Owner) {
        for Piece { done, la, off, n } in pieces(addr, data.len(), self.line_bytes) {
            if let Some(i) = self.find(la) {
                let s = i * self.line_bytes + off;
                self.data[s..s + n].copy_from_slice(&data[done..done + n]);
                self.owners[s..s + n].fill(owner);
            }
        }
    }

    /// Calls `f` with the slot of every cached line overlapping `[start, start + len)`.
    fn for_lines(&mut self, start: u64, len: u64, mut f: impl FnMut(&mut Self, usize)) {
        if len == 0 {
            return;
        }
        let first = start & !(self.line - 1);
        let last = (start.saturating_add(len - 1)) & !(self.line - 1);
        let count = ((last - first) >> self.line_shift) + 1;
        if count as usize > self.meta.len() {
            for i in 0..self.meta.len() {
                let m = self.meta[i];
                if m.valid && m.tag >= first && m.tag <= last {
                    f(self, i);
                }
            }
        } else {
            let mut la = first;
            loop {
                if let Some(i) = self.find(la) {
                    f(self, i);
                }
                if la >= last {
                    break;
                }
                la += self.line;
            }
        }
    }

    /// Writes back every dirty line overlapping the range; lines stay cached, clean.
    /// Returns the number of lines written back.
    pub fn clean(&mut self, mem: &mut Memory, start: u64, len: u64) -> u64 {
        let before = self.stats.writebacks;
        self.for_lines(start, len, |c, i| c.write_back(mem, i));
        self.stats.writebacks - before
    }

    /// Drops every line overlapping the range without writing it back: dirty data in those
    /// lines, inside the range or not, is lost. Returns the number of lines dropped.
    pub fn invalidate(&mut self, start: u64, len: u64) -> u64 {
        let mut n = 0;
        self.for_lines(start, len, |c, i| {
            c.meta[i].valid = false;
            c.meta[i].dirty = false;
            n += 1;
        });
        n
    }

    /// Writes back then drops every line overlapping the range. Returns the number of lines
    /// dropped.
    pub fn clean_invalidate(&mut self, mem: &mut Memory, start: u64, len: u64) -> u64 {
        let mut n = 0;
        self.for_lines(start, len, |c, i| {
            c.write_back(mem, i);
            c.meta[i].valid = false;
            n += 1;
        });
        n
    }

    /// Evicts the line at `line_addr` if cached (writing it back when dirty). Returns
    /// `Some(was_dirty)` when a line was evicted.
    pub fn evict(&mut self, mem: &mut Memory, line_addr: u64) -> Option<bool> {
        let i = self.find(line_addr & !(self.line - 1))?;
        let dirty = self.meta[i].dirty;
        self.write_back(mem, i);
        self.meta[i].valid = false;
        Some(dirty)
    }

    /// Pulls the line at `line_addr` from RAM into the cache unasked, as a prefetcher or a
    /// speculative load does. Returns `false` (and does nothing) when it is already cached.
    /// The caller guarantees the line is cacheable RAM.
    pub fn speculative_fill(&mut self, mem: &mut Memory, line_addr: u64) -> bool {
        let la = line_addr & !(self.line - 1);
        if self.find(la).is_some() {
            return false;
        }
        let i = self.fill(mem, la);
        // A speculative fill is not a use: it gets the oldest LRU position of its set.
        self.meta[i].lru = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::RamMap;

    fn setup(line: u64) -> (Cache, Memory) {
        let c = Cache::new(CacheConfig {
            line_size: line,
            capacity: line * 8,
            ways: 2,
        })
        .unwrap();
        let m = Memory::new(RamMap::new(&[(0, 1 << 20)]).unwrap());
        (c, m)
    }

    fn ram(m: &Memory, a: u64, n: usize) -> (Vec<u8>, Vec<Owner>) {
        let mut d = vec![0; n];
        let mut o = vec![Owner(0); n];
        m.read(a, &mut d, &mut o).unwrap();
        (d, o)
    }

    fn view(c: &Cache, m: &Memory, a: u64, n: usize) -> Vec<u8> {
        let mut d = vec![0; n];
        let mut o = vec![Owner(0); n];
        c.peek(m, a, &mut d, &mut o);
        d
    }

    #[test]
    fn geometry_is_validated() {
        let bad = |l, c, w| {
            Cache::new(CacheConfig {
                line_size: l,
                capacity: c,
                ways: w,
            })
            .err()
        };
        assert_eq!(bad(48, 4096, 4), Some(SimError::BadLineSize(48)));
        assert!(bad(64, 4096, 0).is_some());
        assert!(bad(64, 100, 1).is_some());
        assert!(bad(64, 0, 1).is_some());
        assert!(bad(128, 128 * 3, 1).is_none());
    }

    #[test]
    fn stores_stay_in_cache_until_cleaned() {
        let (mut c, mut m) = setup(64);
        c.store_owned(&mut m, 0x100, &[7; 4], Owner(2));
        assert_eq!(ram(&m, 0x100, 4).0, [0; 4]);
        assert_eq!(view(&c, &m, 0x100, 4), [7; 4]);
        assert_eq!(c.lookup(0x13f), Some(true));
        // Clean of one byte writes back the whole line.
        assert_eq!(c.clean(&mut m, 0x13f, 1), 1);
        assert_eq!(ram(&m, 0x100, 4), (vec![7; 4], vec![Owner(2); 4]));
        assert_eq!(c.lookup(0x100), Some(false));
    }

    #[test]
    fn invalidate_drops_whole_lines_including_neighbour_bytes() {
        let (mut c, mut m) = setup(64);
        // Neighbour at 0x100..0x108 dirty; "buffer" at 0x108..0x140.
        c.store_owned(&mut m, 0x100, &[1; 8], Owner(1));
        c.invalidate(0x108, 0x38);
        assert_eq!(c.lookup(0x100), None);
        assert_eq!(view(&c, &m, 0x100, 8), [0; 8], "neighbour's store lost");
        // clean_invalidate keeps the data.
        c.store_owned(&mut m, 0x100, &[2; 8], Owner(1));
        assert_eq!(c.clean_invalidate(&mut m, 0x108, 0x38), 1);
        assert_eq!(ram(&m, 0x100, 8).0, [2; 8]);
    }

    #[test]
    fn cached_line_hides_ram_changes() {
        let (mut c, mut m) = setup(32);
        let mut d = [0u8; 4];
        let mut o = [Owner(0); 4];
        c.load(&mut m, 0x40, &mut d, &mut o);
        m.write_owned(0x40, &[9; 4], Owner(5)).unwrap();
        c.load(&mut m, 0x40, &mut d, &mut o);
        assert_eq!(d, [0; 4], "stale line");
        c.invalidate(0x40, 1);
        c.load(&mut m, 0x40, &mut d, &mut o);
        assert_eq!((d, o), ([9; 4], [Owner(5); 4]));
    }

    #[test]
    fn capacity_eviction_writes_back() {
        let (mut c, mut m) = setup(64);
        // 4 sets x 2 ways; lines 0x000, 0x100, 0x200 all map to set 0.
        c.store_owned(&mut m, 0x000, &[1], Owner(1));
        c.store_owned(&mut m, 0x100, &[2], Owner(1));
        c.store_owned(&mut m, 0x200, &[3], Owner(1));
        assert_eq!(c.stats().capacity_evictions, 1);
        assert_eq!(c.lookup(0x000), None, "LRU line went");
        assert_eq!(ram(&m, 0, 1).0, [1]);
        assert_eq!(c.stats().writebacks, 1);
    }

    #[test]
    fn evict_and_speculative_fill() {
        let (mut c, mut m) = setup(128);
        c.store_owned(&mut m, 0x80, &[4; 2], Owner(3));
        assert_eq!(c.evict(&mut m, 0x85), Some(true));
        assert_eq!(c.evict(&mut m, 0x85), None);
        assert_eq!(ram(&m, 0x80, 2).0, [4; 2]);
        assert!(c.speculative_fill(&mut m, 0x80));
        assert!(!c.speculative_fill(&mut m, 0x80));
        assert_eq!(c.lookup(0x80), Some(false));
        m.write_owned(0x80, &[5; 2], Owner(4)).unwrap();
        assert_eq!(view(&c, &m, 0x80, 2), [4; 2], "speculated line is stale");
        assert_eq!(c.lines(), vec![(0x80, false)]);
    }

    #[test]
    fn large_range_maintenance_scans_the_cache() {
        let (mut c, mut m) = setup(64);
        c.store_owned(&mut m, 0x4000, &[1; 8], Owner(1));
        c.store_owned(&mut m, 0x8040, &[2; 8], Owner(1));
        assert_eq!(c.clean_invalidate(&mut m, 0, 1 << 20), 2);
        assert!(c.lines().is_empty());
        assert_eq!(ram(&m, 0x8040, 1).0, [2]);
    }

    #[test]
    fn snoop_write_updates_cached_copies() {
        let (mut c, mut m) = setup(64);
        c.store_owned(&mut m, 0x0, &[1; 64], Owner(1));
        c.snoop_write(0x10, &[8; 4], Owner(9));
        assert_eq!(view(&c, &m, 0x10, 4), [8; 4]);
        assert_eq!(c.lookup(0), Some(true));
    }
}
