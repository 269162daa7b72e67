//! Buddy allocator of power-of-two objects over chunks of coherent memory.
//!
//! Objects come in power-of-two size classes from `min_object` (at least a cache line, so
//! no two objects share a line) to `max_object`, each aligned to its size. A chunk is cut,
//! when it is added, into the largest aligned free blocks that fit it (at most
//! `max_object`). An allocation takes the lowest-addressed free block of the smallest class
//! that fits below the caller's address limit and splits it, the unused upper halves going
//! to the smaller classes. A freed object merges with its buddy (the other half of the
//! aligned block twice its size) whenever the buddy is free, and the result again with its
//! own buddy, up to `max_object`: a pool whose objects are all freed holds again the
//! maximal blocks its chunks were cut into (or larger ones, where chunks abut), so any
//! request up to the largest of them succeeds.
//!
//! Records: each chunk carries, sized when it is added, one bitmap of free blocks per class
//! (bit `i` of class `c` is the block of `min_object << c` bytes at the chunk's `i`-th
//! address aligned to that size) and the class of the live object starting at each
//! `min_object` slot. A block is recorded in the chunk its start lies in, even when a merge
//! across abutting chunks made it reach into the next one. So [`ObjectPool::alloc`] and
//! [`ObjectPool::free`] never allocate (they run on map paths, in interrupt context), and
//! the records can never be full; only [`ObjectPool::add_chunk`] allocates.
//!
//! Cost: a free is O(log chunks + classes); an allocation scans, per class tried, the
//! class's bitmap words of the chunks in address order up to the first free block (the
//! lowest one), a few dozen words per 256 KiB chunk.
//!
//! Growth: the pool asks its hook for a chunk when it could no longer serve one object of
//! `min(refill_below, max_object)` bytes, or when its free bytes fall below
//! `refill_below`. Free bytes left in blocks too small for that object do not put growth
//! off.

use core::fmt;

use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::sync::Mutex;

use crate::addr::{PhysAddr, PhysRange};
use crate::bounce::MemorySpan;
use crate::growth::{Growth, GrowthHook, GrowthRequest};
use crate::platform::{MemoryFault, PAGE_SIZE};
use crate::reintroduce::Defect;

/// Shape of an [`ObjectPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectPoolConfig {
    /// Smallest object (power of two, at least the largest cache line).
    pub min_object: u64,
    /// Largest object (power of two, at most the chunk size).
    pub max_object: u64,
    /// Size of the chunks growth adds (a multiple of [`PAGE_SIZE`]).
    pub chunk_bytes: u64,
    /// Request growth when the pool could no longer serve one object of
    /// `min(refill_below, max_object)` bytes, or its free bytes fall below this.
    pub refill_below: u64,
    /// Name for reports and growth requests.
    pub name: &'static str,
}

impl Default for ObjectPoolConfig {
    fn default() -> Self {
        Self {
            min_object: 128,
            max_object: 256 * 1024,
            chunk_bytes: 256 * 1024,
            refill_below: 256 * 1024,
            name: "coherent-pool",
        }
    }
}

/// Errors of the object pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectPoolError {
    /// The configuration breaks the rules on [`ObjectPoolConfig`].
    BadConfig,
    /// A chunk is empty, not aligned to or a multiple of a page (or of `min_object` when
    /// larger), overflows or overlaps another.
    BadChunk,
    /// The request is larger than the largest object.
    TooLarge {
        /// The largest object.
        max: u64,
    },
    /// No free block of the needed class or larger lies below the address limit.
    Exhausted {
        /// Bytes in live objects.
        used: u64,
        /// Bytes of all chunks.
        total: u64,
    },
    /// Free of an address that is not a live object.
    NotLive(PhysAddr),
    /// The platform refused to share a chunk with the host (a confidential guest's devices
    /// reach only shared memory); the chunk stays private and out of the pool.
    NotShared(MemoryFault),
}

impl fmt::Display for ObjectPoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ObjectPoolError::BadConfig => f.write_str("unusable object pool configuration"),
            ObjectPoolError::BadChunk => f.write_str("unusable object pool chunk"),
            ObjectPoolError::TooLarge { max } => {
                write!(f, "object larger than the pool's largest, {max} bytes")
            }
            ObjectPoolError::Exhausted { used, total } => {
                write!(f, "object pool exhausted: {used} of {total} bytes in use")
            }
            ObjectPoolError::NotLive(addr) => write!(f, "{addr} is not a live object"),
            ObjectPoolError::NotShared(fault) => {
                write!(f, "chunk could not be shared with the host: {fault}")
            }
        }
    }
}

impl core::error::Error for ObjectPoolError {}

/// The free blocks of one class whose start lies in a chunk.
struct FreeBits {
    /// The chunk's first address aligned to the class's block size.
    first: u64,
    /// Bit `i`: the block at `first + i * size` is free.
    words: Vec<u64>,
}

impl FreeBits {
    /// The bit of the block at `a` (aligned to `size`, at or after `first`).
    fn bit(&self, a: u64, size: u64) -> (usize, u64) {
        let i = ((a - self.first) / size) as usize;
        (i / 64, 1 << (i % 64))
    }
}

struct Chunk {
    base: u64,
    end: u64,
    /// Free blocks by class.
    free: Vec<FreeBits>,
    /// Class + 1 of the live object starting at each `min_object` slot; 0 where none does.
    live: Vec<u8>,
}

impl Chunk {
    /// An empty chunk `[base, end)` with records for every block and object it can hold.
    /// Allocates.
    fn new(base: u64, end: u64, min_object: u64, classes: usize) -> Self {
        let free = (0..classes)
            .map(|c| {
                let size = min_object << c;
                let first = base.next_multiple_of(size);
                let blocks = end.saturating_sub(first).div_ceil(size);
                FreeBits {
                    first,
                    words: alloc::vec![0; blocks.div_ceil(64) as usize],
                }
            })
            .collect();
        let slots = ((end - base) / min_object) as usize;
        Self {
            base,
            end,
            free,
            live: alloc::vec![0; slots],
        }
    }

    /// The lowest free block of `class` (of `size` bytes).
    fn lowest_free(&self, class: usize, size: u64) -> Option<u64> {
        let bits = &self.free[class];
        let (w, word) = bits.words.iter().enumerate().find(|(_, w)| **w != 0)?;
        let i = w as u64 * 64 + u64::from(word.trailing_zeros());
        Some(bits.first + i * size)
    }
}

struct State {
    /// Chunks by address.
    chunks: Vec<Chunk>,
    /// Free blocks of each class, over all chunks.
    free_blocks: Vec<u64>,
    /// Live objects.
    live: u64,
    total: u64,
    used: u64,
    high_water: u64,
    free_bytes: u64,
}

/// A growable pool of size-class objects in coherent memory. Thread-safe; never blocks
/// beyond a short spin lock.
///
/// Guarantees: live objects never overlap one another or a free block, so a freed object's
/// bytes are handed out again only after it was freed; every object lies in the pool's
/// chunks; `used + free == total` at all times; and once every object is freed, every
/// block the chunks were cut into when added is free again, whole.
pub struct ObjectPool {
    cfg: ObjectPoolConfig,
    state: Mutex<State>,
    growth: Growth,
    span: Arc<MemorySpan>,
}

/// Occupancy of an [`ObjectPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectPoolUsage {
    /// Bytes of all chunks.
    pub total: u64,
    /// Bytes in live objects (at class granularity).
    pub used: u64,
    /// Highest `used` seen.
    pub high_water: u64,
    /// Bytes in free blocks (`total - used`).
    pub free: u64,
    /// The largest object the pool can hand out now without growth (0 when full).
    pub largest_free: u64,
    /// Live objects.
    pub live: u64,
    /// Chunks added so far.
    pub chunks: u64,
}

impl ObjectPool {
    /// An empty pool; add memory with [`ObjectPool::add_chunk`].
    ///
    /// # Errors
    /// [`ObjectPoolError::BadConfig`] if sizes are not powers of two, `min_object` is below 64,
    /// `max_object` exceeds `chunk_bytes`, or `chunk_bytes` is not a multiple of a page.
    pub(crate) fn new(
        cfg: ObjectPoolConfig,
        hook: Option<Arc<dyn GrowthHook>>,
    ) -> Result<Self, ObjectPoolError> {
        let ok = cfg.min_object.is_power_of_two()
            && cfg.max_object.is_power_of_two()
            && cfg.min_object >= 64
            && cfg.min_object <= cfg.max_object
            && cfg.max_object <= cfg.chunk_bytes
            && cfg.chunk_bytes % PAGE_SIZE == 0;
        if !ok {
            return Err(ObjectPoolError::BadConfig);
        }
        let classes = class_count(&cfg);
        Ok(Self {
            cfg,
            state: Mutex::new(State {
                chunks: Vec::new(),
                free_blocks: alloc::vec![0; classes],
                live: 0,
                total: 0,
                used: 0,
                high_water: 0,
                free_bytes: 0,
            }),
            growth: Growth::new(hook),
            span: Arc::new(MemorySpan::new()),
        })
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &ObjectPoolConfig {
        &self.cfg
    }

    /// Adds `[base, base + bytes)` of coherent memory, cut into the largest aligned free
    /// blocks that fit it. Completes an outstanding growth request. Allocates the chunk's
    /// records: call outside atomic context (growth does, from its worker or hook).
    ///
    /// # Errors
    /// [`ObjectPoolError::BadChunk`] if the chunk is empty, not aligned to or not a multiple of
    /// a page (or of `min_object` when that is larger), overflows, or overlaps a chunk the
    /// pool has; nothing changed.
    pub(crate) fn add_chunk(&self, base: PhysAddr, bytes: u64) -> Result<(), ObjectPoolError> {
        let (b, end) = self.chunk_bounds(base, bytes)?;
        let min = self.cfg.min_object;
        let chunk = Chunk::new(b, end, min, class_count(&self.cfg));
        let mut s = self.state.lock();
        if s.chunks.iter().any(|c| b < c.end && c.base < end) {
            return Err(ObjectPoolError::BadChunk);
        }
        // Covered before the chunk can hand out objects.
        self.span.cover(b, bytes);
        let at = s.chunks.partition_point(|c| c.base < b);
        s.chunks.insert(at, chunk);
        let mut a = b;
        while a < end {
            // The largest block aligned at `a` that fits before `end`; `a` is always
            // aligned to `min_object` (checked above).
            let mut size = self.cfg.max_object;
            while size > min && (a % size != 0 || end - a < size) {
                size /= 2;
            }
            mark_free(&mut s, a, class_of(size, min), min);
            a += size;
        }
        s.total += bytes;
        s.free_bytes += bytes;
        drop(s);
        self.growth.grew();
        Ok(())
    }

    /// The chunk `[base, base + bytes)` as `(start, end)` if [`ObjectPool::add_chunk`]
    /// would take it now (it may still overlap a chunk added after this returns).
    ///
    /// # Errors
    /// [`ObjectPoolError::BadChunk`] as for [`ObjectPool::add_chunk`].
    pub(crate) fn check_chunk(
        &self,
        base: PhysAddr,
        bytes: u64,
    ) -> Result<PhysRange, ObjectPoolError> {
        let (b, end) = self.chunk_bounds(base, bytes)?;
        if self
            .state
            .lock()
            .chunks
            .iter()
            .any(|c| b < c.end && c.base < end)
        {
            return Err(ObjectPoolError::BadChunk);
        }
        PhysRange::new(base, bytes).ok_or(ObjectPoolError::BadChunk)
    }

    /// `(start, end)` of a chunk that is not empty, is aligned to and a multiple of a page
    /// (or of `min_object` when larger), and does not overflow.
    fn chunk_bounds(&self, base: PhysAddr, bytes: u64) -> Result<(u64, u64), ObjectPoolError> {
        let b = base.as_u64();
        let end = b.checked_add(bytes).ok_or(ObjectPoolError::BadChunk)?;
        let unit = PAGE_SIZE.max(self.cfg.min_object);
        if bytes == 0 || b % unit != 0 || bytes % unit != 0 {
            return Err(ObjectPoolError::BadChunk);
        }
        Ok((b, end))
    }

    /// The class index and object size for a request of `size` bytes aligned to `align`.
    fn class_for(&self, size: u64, align: u64) -> Result<(usize, u64), ObjectPoolError> {
        let need = size.max(align).max(self.cfg.min_object);
        let obj = need.checked_next_power_of_two().unwrap_or(u64::MAX);
        if obj > self.cfg.max_object {
            return Err(ObjectPoolError::TooLarge {
                max: self.cfg.max_object,
            });
        }
        Ok((class_of(obj, self.cfg.min_object), obj))
    }

    /// Allocates an object of at least `size` bytes aligned to `align` (a power of two)
    /// whose last byte is at or below `max_addr`: the lowest such block of the smallest
    /// class that has one. Requests growth when the pool is low (see
    /// [`ObjectPoolConfig::refill_below`]) or the request failed. Never allocates.
    ///
    /// # Errors
    /// [`ObjectPoolError::TooLarge`] or [`ObjectPoolError::Exhausted`]; nothing changed.
    pub(crate) fn alloc(
        &self,
        size: u64,
        align: u64,
        max_addr: u64,
    ) -> Result<PhysAddr, ObjectPoolError> {
        let (class, obj) = self.class_for(size, align)?;
        let mut s = self.state.lock();
        let result = match take_split(&mut s, class, self.cfg.min_object, max_addr) {
            Some(addr) => {
                *live_slot(&mut s, addr, self.cfg.min_object) = class as u8 + 1;
                s.live += 1;
                s.used += obj;
                s.free_bytes -= obj;
                s.high_water = s.high_water.max(s.used);
                Ok(PhysAddr::new(addr))
            }
            None => Err(ObjectPoolError::Exhausted {
                used: s.used,
                total: s.total,
            }),
        };
        let low = self.is_low(&s) || result.is_err();
        drop(s);
        if low {
            self.growth.request(GrowthRequest {
                pool: self.cfg.name,
                min_bytes: self.cfg.chunk_bytes.max(obj),
                max_addr,
            });
        }
        result
    }

    /// Whether the pool should grow: it could no longer serve one object of
    /// `min(refill_below, max_object)` bytes, or its free bytes are below `refill_below`.
    fn is_low(&self, s: &State) -> bool {
        let by_bytes = s.free_bytes < self.cfg.refill_below;
        if crate::reintroduce::active(Defect::CoherentNoCoalesce) {
            return by_bytes;
        }
        let want = self.cfg.refill_below.min(self.cfg.max_object);
        by_bytes || largest_free(s, self.cfg.min_object) < want
    }

    /// Frees the object at `addr`, merging it with its free buddies. Never allocates.
    ///
    /// # Errors
    /// [`ObjectPoolError::NotLive`] if `addr` is not the start of a live object; nothing changed.
    pub(crate) fn free(&self, addr: PhysAddr) -> Result<(), ObjectPoolError> {
        let min = self.cfg.min_object;
        let mut s = self.state.lock();
        let a = addr.as_u64();
        let class = match live_class(&s, a, min) {
            Some(class) => class,
            None => return Err(ObjectPoolError::NotLive(addr)),
        };
        *live_slot(&mut s, a, min) = 0;
        s.live -= 1;
        let obj = min << class;
        s.used -= obj;
        s.free_bytes += obj;
        if crate::reintroduce::active(Defect::CoherentNoCoalesce) {
            mark_free(&mut s, a, class, min);
            return Ok(());
        }
        let (mut a, mut c) = (a, class);
        // A free buddy is free pool memory of the same size, so the merged block is too
        // (even when the buddy lies in an abutting chunk).
        while c + 1 < s.free_blocks.len() {
            let size = min << c;
            if !take_free(&mut s, a ^ size, c, min) {
                break;
            }
            a &= !size;
            c += 1;
        }
        mark_free(&mut s, a, c, min);
        Ok(())
    }

    /// A span covering every chunk the pool has had (see [`MemorySpan`]).
    pub(crate) fn memory_span(&self) -> &Arc<MemorySpan> {
        &self.span
    }

    /// Whether `addr` lies in one of the pool's chunks.
    pub(crate) fn contains(&self, addr: PhysAddr) -> bool {
        let a = addr.as_u64();
        let s = self.state.lock();
        let i = s.chunks.partition_point(|c| c.base <= a);
        i > 0 && a < s.chunks[i - 1].end
    }

    /// The size of the live object at `addr`, if there is one.
    pub fn object_size(&self, addr: PhysAddr) -> Option<u64> {
        let s = self.state.lock();
        live_class(&s, addr.as_u64(), self.cfg.min_object).map(|c| self.cfg.min_object << c)
    }

    /// The grower could not find memory: the next shortage may ask again.
    pub fn growth_failed(&self) {
        self.growth.completed();
    }

    /// How many times the pool grew in answer to its own request.
    pub(crate) fn growth_events(&self) -> u64 {
        self.growth.events()
    }

    /// Whether a growth request is outstanding.
    pub(crate) fn growth_pending(&self) -> bool {
        self.growth.is_pending()
    }

    /// A snapshot of the pool's occupancy.
    pub fn usage(&self) -> ObjectPoolUsage {
        let s = self.state.lock();
        ObjectPoolUsage {
            total: s.total,
            used: s.used,
            high_water: s.high_water,
            free: s.free_bytes,
            largest_free: largest_free(&s, self.cfg.min_object),
            live: s.live,
            chunks: s.chunks.len() as u64,
        }
    }
}

/// The number of size classes of `cfg`.
fn class_count(cfg: &ObjectPoolConfig) -> usize {
    (cfg.max_object.trailing_zeros() - cfg.min_object.trailing_zeros() + 1) as usize
}

/// The class index of an object of `size` bytes (a power of two of at least `min_object`).
fn class_of(size: u64, min_object: u64) -> usize {
    (size.trailing_zeros() - min_object.trailing_zeros()) as usize
}

/// The largest free block (0 when there is none).
fn largest_free(s: &State, min_object: u64) -> u64 {
    s.free_blocks
        .iter()
        .rposition(|&n| n > 0)
        .map_or(0, |c| min_object << c)
}

/// The index of the chunk `a` lies in.
fn chunk_at(s: &State, a: u64) -> Option<usize> {
    let i = s.chunks.partition_point(|c| c.base <= a);
    (i > 0 && a < s.chunks[i - 1].end).then(|| i - 1)
}

/// The class of the live object starting at `a`, if there is one.
fn live_class(s: &State, a: u64, min_object: u64) -> Option<usize> {
    let chunk = &s.chunks[chunk_at(s, a)?];
    if a % min_object != 0 {
        return None;
    }
    let tag = chunk.live[((a - chunk.base) / min_object) as usize];
    (tag > 0).then(|| usize::from(tag - 1))
}

/// The live record of the object slot at `a` (a `min_object`-aligned address in a chunk).
fn live_slot(s: &mut State, a: u64, min_object: u64) -> &mut u8 {
    let i = chunk_at(s, a).unwrap_or_else(|| unreachable!("objects lie in chunks"));
    let chunk = &mut s.chunks[i];
    &mut chunk.live[((a - chunk.base) / min_object) as usize]
}

/// Records the block of `class` at `a` (in pool memory, aligned to its size) as free.
fn mark_free(s: &mut State, a: u64, class: usize, min_object: u64) {
    let size = min_object << class;
    let i = chunk_at(s, a).unwrap_or_else(|| unreachable!("blocks lie in chunks"));
    let bits = &mut s.chunks[i].free[class];
    let (w, bit) = bits.bit(a, size);
    bits.words[w] |= bit;
    s.free_blocks[class] += 1;
}

/// Takes the block of `class` at `a` (aligned to its size) off the free records; false
/// when it is not a free block of that class.
fn take_free(s: &mut State, a: u64, class: usize, min_object: u64) -> bool {
    let size = min_object << class;
    let Some(i) = chunk_at(s, a) else {
        return false;
    };
    let bits = &mut s.chunks[i].free[class];
    let (w, bit) = bits.bit(a, size);
    if bits.words[w] & bit == 0 {
        return false;
    }
    bits.words[w] &= !bit;
    s.free_blocks[class] -= 1;
    true
}

/// The lowest free block of `class`.
fn lowest_free(s: &State, class: usize, min_object: u64) -> Option<u64> {
    if s.free_blocks[class] == 0 {
        return None;
    }
    let size = min_object << class;
    s.chunks.iter().find_map(|c| c.lowest_free(class, size))
}

/// Takes the lowest free block of `class` whose last byte is at or below `max_addr`, or
/// splits the lowest block of the smallest larger class whose first `class` object ends at
/// or below `max_addr`, putting the unused upper halves on the smaller classes' sets.
fn take_split(s: &mut State, class: usize, min_object: u64, max_addr: u64) -> Option<u64> {
    let obj = min_object << class;
    for c in class..s.free_blocks.len() {
        // The object is the lowest part of the block, so the lowest block of the class is
        // usable if any is.
        let Some(a) = lowest_free(s, c, min_object) else {
            continue;
        };
        if a.checked_add(obj - 1).is_none_or(|last| last > max_addr) {
            continue;
        }
        let size = min_object << c;
        take_free(s, a, c, min_object);
        let mut half = size;
        for lower in (class..c).rev() {
            half /= 2;
            mark_free(s, a + half, lower, min_object);
        }
        return Some(a);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::sync::Arc;
    use alloc::vec;
    use core::sync::atomic::{AtomicU64, Ordering};

    fn cfg() -> ObjectPoolConfig {
        ObjectPoolConfig {
            min_object: 128,
            max_object: 64 * 1024,
            chunk_bytes: 64 * 1024,
            refill_below: 16 * 1024,
            name: "t",
        }
    }

    #[test]
    fn rejects_bad_config_and_chunks() {
        let mut c = cfg();
        c.min_object = 96;
        assert_eq!(
            ObjectPool::new(c, None).err(),
            Some(ObjectPoolError::BadConfig)
        );
        let mut c = cfg();
        c.max_object = 128 * 1024;
        assert_eq!(
            ObjectPool::new(c, None).err(),
            Some(ObjectPoolError::BadConfig)
        );
        let p = ObjectPool::new(cfg(), None).unwrap();
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x1001), 4096),
            Err(ObjectPoolError::BadChunk)
        );
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x1000), 100),
            Err(ObjectPoolError::BadChunk)
        );
        assert_eq!(
            p.add_chunk(PhysAddr::new(!0xfff), 8192),
            Err(ObjectPoolError::BadChunk)
        );
        p.add_chunk(PhysAddr::new(0x10000), 0x10000).unwrap();
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x18000), 0x10000),
            Err(ObjectPoolError::BadChunk)
        );
        assert_eq!(p.usage().total, 0x10000);
    }

    #[test]
    fn objects_are_aligned_disjoint_and_reused() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x10000).unwrap();
        let sizes = [1u64, 128, 129, 300, 4096, 5000, 13, 2048];
        let mut got = vec![];
        for &s in &sizes {
            let a = p.alloc(s, 1, u64::MAX).unwrap();
            let obj = p.object_size(a).unwrap();
            assert!(
                obj >= s && obj >= 128 && a.as_u64() % obj == 0,
                "{s} -> {a:?} {obj}"
            );
            got.push((a.as_u64(), obj));
        }
        for (i, &(a, la)) in got.iter().enumerate() {
            for &(b, lb) in &got[i + 1..] {
                assert!(a + la <= b || b + lb <= a, "overlap");
            }
        }
        let before = p.usage();
        assert_eq!(before.used, got.iter().map(|g| g.1).sum::<u64>());
        assert_eq!(before.used + before.free, before.total);
        let (a0, _) = got[0];
        p.free(PhysAddr::new(a0)).unwrap();
        assert_eq!(
            p.free(PhysAddr::new(a0)),
            Err(ObjectPoolError::NotLive(PhysAddr::new(a0)))
        );
        assert_eq!(p.alloc(100, 1, u64::MAX).unwrap().as_u64(), a0);
        for (a, _) in got.iter().skip(1) {
            p.free(PhysAddr::new(*a)).unwrap();
        }
        p.free(PhysAddr::new(a0)).unwrap();
        let after = p.usage();
        assert_eq!((after.used, after.live, after.free), (0, 0, after.total));
    }

    #[test]
    fn alignment_requests_and_limits() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x10000).unwrap();
        let a = p.alloc(10, 4096, u64::MAX).unwrap();
        assert_eq!(a.as_u64() % 4096, 0);
        assert_eq!(
            p.alloc(64 * 1024 + 1, 1, u64::MAX),
            Err(ObjectPoolError::TooLarge { max: 64 * 1024 })
        );
        // Nothing is reachable below 1 MiB.
        assert!(matches!(
            p.alloc(10, 1, 0xfffff),
            Err(ObjectPoolError::Exhausted { .. })
        ));
    }

    #[test]
    fn exhaustion_is_an_error_and_changes_nothing() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x4000).unwrap();
        let mut live = vec![];
        while let Ok(a) = p.alloc(4096, 1, u64::MAX) {
            live.push(a);
        }
        assert_eq!(live.len(), 4);
        let u = p.usage();
        assert_eq!(
            p.alloc(4096, 1, u64::MAX),
            Err(ObjectPoolError::Exhausted {
                used: u.used,
                total: u.total
            })
        );
        assert_eq!(p.usage(), u);
    }

    #[test]
    fn growth_is_requested_below_threshold_once() {
        let calls = Arc::new(AtomicU64::new(0));
        let c2 = calls.clone();
        let hook: Arc<dyn GrowthHook> = Arc::new(move |r: GrowthRequest| {
            assert_eq!(r.pool, "t");
            c2.fetch_add(1, Ordering::SeqCst);
        });
        let p = ObjectPool::new(cfg(), Some(hook)).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x8000).unwrap();
        // 32 KiB free, threshold 16 KiB: the first 4 KiB objects do not ask.
        for _ in 0..4 {
            p.alloc(4096, 1, u64::MAX).unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(!p.growth_pending());
        p.alloc(4096, 1, u64::MAX).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(p.growth_pending());
        p.alloc(4096, 1, u64::MAX).unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one request outstanding at a time"
        );
        assert_eq!(p.growth_events(), 0);
        p.add_chunk(PhysAddr::new(0x200000), 0x10000).unwrap();
        assert!(!p.growth_pending());
        assert_eq!(p.growth_events(), 1);
    }

    #[test]
    fn carving_padding_is_not_lost() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x10000).unwrap();
        let small = p.alloc(128, 1, u64::MAX).unwrap();
        assert_eq!(small.as_u64(), 0x100000);
        // The next 8 KiB object skips 8 KiB - 128 bytes of padding, which become smaller
        // objects, so the pool's free bytes stay exact.
        let big = p.alloc(8192, 1, u64::MAX).unwrap();
        assert_eq!(big.as_u64(), 0x102000);
        let u = p.usage();
        assert_eq!(u.used + u.free, u.total);
        let mut more = 0;
        while p.alloc(128, 1, 0x101fff).is_ok() {
            more += 1;
        }
        assert_eq!(more, (8192 - 128) / 128);
        // Splitting a larger free object also serves smaller classes.
        p.free(big).unwrap();
        let a = p.alloc(256, 1, u64::MAX).unwrap();
        assert_eq!(a, big);
    }

    #[test]
    fn a_freed_object_coalesces_back_into_the_whole_pool() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x10000).unwrap();
        let a = p.alloc(128, 1, u64::MAX).unwrap();
        assert_eq!(p.usage().largest_free, 32 * 1024);
        p.free(a).unwrap();
        let u = p.usage();
        assert_eq!((u.free, u.largest_free), (0x10000, 0x10000));
        let whole = p.alloc(64 * 1024, 1, u64::MAX).unwrap();
        assert_eq!(whole.as_u64(), 0x100000);
        p.free(whole).unwrap();
    }

    #[test]
    fn chunks_are_cut_into_maximal_aligned_blocks_and_buddies_merge_across_them() {
        let p = ObjectPool::new(cfg(), None).unwrap();
        // 12 KiB at 4 KiB: blocks 4 KiB at 0x101000 and 8 KiB at 0x102000.
        p.add_chunk(PhysAddr::new(0x101000), 0x3000).unwrap();
        assert_eq!(p.usage().largest_free, 8 * 1024);
        assert!(matches!(
            p.alloc(16 * 1024, 1, u64::MAX),
            Err(ObjectPoolError::Exhausted { .. })
        ));
        // The abutting 4 KiB below completes the 16 KiB block once its halves are freed.
        p.add_chunk(PhysAddr::new(0x100000), 0x1000).unwrap();
        let lo = p.alloc(4096, 1, u64::MAX).unwrap();
        let hi = p.alloc(4096, 1, u64::MAX).unwrap();
        assert_eq!((lo.as_u64(), hi.as_u64()), (0x100000, 0x101000));
        p.free(lo).unwrap();
        p.free(hi).unwrap();
        assert_eq!(p.usage().largest_free, 16 * 1024);
        assert_eq!(p.alloc(16 * 1024, 1, u64::MAX).unwrap().as_u64(), 0x100000);
    }

    #[test]
    fn fragmented_free_bytes_do_not_put_growth_off() {
        let calls = Arc::new(AtomicU64::new(0));
        let c2 = calls.clone();
        let hook: Arc<dyn GrowthHook> = Arc::new(move |_: GrowthRequest| {
            c2.fetch_add(1, Ordering::SeqCst);
        });
        let mut c = cfg();
        c.refill_below = 8 * 1024;
        let p = ObjectPool::new(c, Some(hook)).unwrap();
        p.add_chunk(PhysAddr::new(0x100000), 0x10000).unwrap();
        // Fill with 128-byte objects (asking for growth on the way, refused), then keep
        // one every 4 KiB: 62 KiB free, but no block of 8 KiB.
        let mut objs = vec![];
        while let Ok(a) = p.alloc(128, 1, u64::MAX) {
            objs.push(a);
        }
        assert_eq!(objs.len(), 512);
        p.growth_failed();
        calls.store(0, Ordering::SeqCst);
        for a in objs {
            if a.as_u64() % 4096 != 0 {
                p.free(a).unwrap();
            }
        }
        let u = p.usage();
        assert_eq!((u.free, u.largest_free), (62 * 1024, 2048), "{u:?}");
        p.alloc(128, 1, u64::MAX).unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "growth requested");
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Alloc {
                size: u64,
                align_log: u32,
                limit: u8,
            },
            Free(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1u64..=20_000, 0u32..=13, 0u8..4)
                    .prop_map(|(size, align_log, limit)| Op::Alloc { size, align_log, limit }),
                2 => any::<usize>().prop_map(Op::Free),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Random allocs and frees against a model that only knows the live objects:
            /// objects never overlap, lie in the pool, are aligned, and respect the limit;
            /// accounting is exact; an alloc fails only when no free aligned block of the
            /// class exists below the limit; all freed, the pool is whole again.
            #[test]
            fn matches_a_reference_model(ops in proptest::collection::vec(op(), 1..200)) {
                const BASE: u64 = 0x100000;
                const CHUNKS: [(u64, u64); 2] = [(BASE, 0x10000), (BASE + 0x14000, 0xc000)];
                let p = ObjectPool::new(cfg(), None).unwrap();
                for (b, n) in CHUNKS {
                    p.add_chunk(PhysAddr::new(b), n).unwrap();
                }
                let in_pool = |a: u64, n: u64| {
                    CHUNKS.iter().any(|&(b, len)| a >= b && a + n <= b + len)
                };
                let mut live: Vec<(u64, u64)> = vec![];
                for op in ops {
                    match op {
                        Op::Alloc { size, align_log, limit } => {
                            let align = 1u64 << align_log;
                            let max_addr = [u64::MAX, BASE + 0xffff, BASE + 0x7fff, BASE + 0x1ffff]
                                [limit as usize];
                            let obj = size.max(align).max(128).next_power_of_two();
                            let before = p.usage();
                            match p.alloc(size, align, max_addr) {
                                Ok(a) => {
                                    let a = a.as_u64();
                                    prop_assert_eq!(p.object_size(PhysAddr::new(a)), Some(obj));
                                    prop_assert_eq!(a % obj, 0);
                                    prop_assert!(a + obj - 1 <= max_addr);
                                    prop_assert!(in_pool(a, obj));
                                    for &(b, n) in &live {
                                        prop_assert!(a + obj <= b || b + n <= a, "overlap");
                                    }
                                    live.push((a, obj));
                                }
                                Err(ObjectPoolError::TooLarge { max }) => {
                                    prop_assert!(obj > max);
                                    prop_assert_eq!(p.usage(), before);
                                }
                                Err(e) => {
                                    let exhausted = matches!(e, ObjectPoolError::Exhausted { .. });
                                    prop_assert!(exhausted, "{:?}", e);
                                    prop_assert_eq!(p.usage(), before);
                                    // No aligned candidate below the limit is free of live
                                    // objects: the pool missed nothing it had.
                                    for &(b, len) in &CHUNKS {
                                        let mut c = b.next_multiple_of(obj);
                                        while c + obj <= b + len {
                                            let free = live.iter().all(|&(l, n)| c + obj <= l || l + n <= c);
                                            prop_assert!(!(free && c + obj - 1 <= max_addr), "missed {:#x}", c);
                                            c += obj;
                                        }
                                    }
                                }
                            }
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let (a, _) = live.swap_remove(i % live.len());
                            p.free(PhysAddr::new(a)).unwrap();
                            prop_assert_eq!(p.free(PhysAddr::new(a)), Err(ObjectPoolError::NotLive(PhysAddr::new(a))));
                        }
                        Op::Free(_) => {}
                    }
                    let u = p.usage();
                    prop_assert_eq!(u.used, live.iter().map(|l| l.1).sum::<u64>());
                    prop_assert_eq!(u.used + u.free, u.total);
                    prop_assert_eq!(u.live, live.len() as u64);
                }
                for (a, _) in live.drain(..) {
                    p.free(PhysAddr::new(a)).unwrap();
                }
                let u = p.usage();
                prop_assert_eq!((u.used, u.free, u.largest_free), (0, u.total, 0x10000));
                // Whole again: both chunks serve their largest blocks.
                prop_assert_eq!(p.alloc(0x10000, 1, u64::MAX), Ok(PhysAddr::new(BASE)));
                prop_assert_eq!(p.alloc(0x8000, 1, u64::MAX), Ok(PhysAddr::new(BASE + 0x18000)));
                prop_assert_eq!(p.alloc(0x4000, 1, u64::MAX), Ok(PhysAddr::new(BASE + 0x14000)));
            }
        }
    }
}
