//! Segregated-fit object allocator over chunks of coherent memory.
//!
//! Objects come in power-of-two size classes from `min_object` (at least a cache line, so
//! no two objects share a line) to `max_object`, each aligned to its size. A class's free
//! objects sit on its own free list; an empty list is refilled by carving the next object
//! from a chunk's unused tail. Allocation and free are O(1) apart from the number of
//! classes; freed objects stay in their class (like a slab), so the pool never needs to
//! search.

use alloc::sync::Arc;
use alloc::vec::Vec;

use spin::Mutex;

use crate::addr::PhysAddr;
use crate::bounce::MemorySpan;
use crate::growth::{Growth, GrowthHook, GrowthRequest};
use crate::platform::PAGE_SIZE;

/// Shape of an [`ObjectPool`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectPoolConfig {
    /// Smallest object (power of two, at least the largest cache line).
    pub min_object: u64,
    /// Largest object (power of two, at most the chunk size).
    pub max_object: u64,
    /// Size of the chunks growth adds (a multiple of [`PAGE_SIZE`]).
    pub chunk_bytes: u64,
    /// Request growth when free bytes fall below this.
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
pub enum PoolError {
    /// The configuration breaks the rules on [`ObjectPoolConfig`].
    BadConfig,
    /// A chunk is not page aligned, not a multiple of a page, overflows or overlaps another.
    BadChunk,
    /// The request is larger than the largest object.
    TooLarge {
        /// The largest object.
        max: u64,
    },
    /// No free object of the needed class and no room to carve one.
    Exhausted {
        /// Bytes in live objects.
        used: u64,
        /// Bytes of all chunks.
        total: u64,
    },
    /// Free of an address that is not a live object.
    NotLive(PhysAddr),
}

struct Chunk {
    base: u64,
    end: u64,
    /// Next uncarved byte.
    carve: u64,
}

struct State {
    chunks: Vec<Chunk>,
    free: Vec<Vec<u64>>,
    /// Live objects: start address → class, sorted for O(log n) lookup.
    live: alloc::collections::BTreeMap<u64, u8>,
    total: u64,
    used: u64,
    high_water: u64,
    free_bytes: u64,
}

/// A growable pool of size-class objects in coherent memory. Thread-safe; never blocks
/// beyond a short spin lock.
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
    /// Bytes available without growth (free lists plus uncarved tails).
    pub free: u64,
    /// Live objects.
    pub live: u64,
    /// Chunks added so far.
    pub chunks: u64,
}

impl ObjectPool {
    /// An empty pool; add memory with [`ObjectPool::add_chunk`].
    ///
    /// # Errors
    /// [`PoolError::BadConfig`] if sizes are not powers of two, `min_object` is below 64,
    /// `max_object` exceeds `chunk_bytes`, or `chunk_bytes` is not a multiple of a page.
    pub fn new(
        cfg: ObjectPoolConfig,
        hook: Option<Arc<dyn GrowthHook>>,
    ) -> Result<Self, PoolError> {
        let ok = cfg.min_object.is_power_of_two()
            && cfg.max_object.is_power_of_two()
            && cfg.min_object >= 64
            && cfg.min_object <= cfg.max_object
            && cfg.max_object <= cfg.chunk_bytes
            && cfg.chunk_bytes % PAGE_SIZE == 0;
        if !ok {
            return Err(PoolError::BadConfig);
        }
        let classes =
            (cfg.max_object.trailing_zeros() - cfg.min_object.trailing_zeros() + 1) as usize;
        Ok(Self {
            cfg,
            state: Mutex::new(State {
                chunks: Vec::new(),
                free: (0..classes).map(|_| Vec::new()).collect(),
                live: alloc::collections::BTreeMap::new(),
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
    pub fn config(&self) -> &ObjectPoolConfig {
        &self.cfg
    }

    /// Adds `[base, base + bytes)` of coherent memory. Completes an outstanding growth
    /// request.
    ///
    /// # Errors
    /// [`PoolError::BadChunk`] if the chunk is not page aligned, not a multiple of a page,
    /// overflows, or overlaps a chunk the pool has; nothing changed.
    pub fn add_chunk(&self, base: PhysAddr, bytes: u64) -> Result<(), PoolError> {
        let b = base.as_u64();
        let end = b.checked_add(bytes).ok_or(PoolError::BadChunk)?;
        if bytes == 0 || b % PAGE_SIZE != 0 || bytes % PAGE_SIZE != 0 {
            return Err(PoolError::BadChunk);
        }
        let mut s = self.state.lock();
        if s.chunks.iter().any(|c| b < c.end && c.base < end) {
            return Err(PoolError::BadChunk);
        }
        // Covered before the chunk can hand out objects.
        self.span.cover(b, bytes);
        let at = s.chunks.partition_point(|c| c.base < b);
        s.chunks.insert(
            at,
            Chunk {
                base: b,
                end,
                carve: b,
            },
        );
        s.total += bytes;
        s.free_bytes += bytes;
        drop(s);
        self.growth.grew();
        Ok(())
    }

    /// The class index and object size for a request of `size` bytes aligned to `align`.
    fn class_for(&self, size: u64, align: u64) -> Result<(usize, u64), PoolError> {
        let need = size.max(align).max(self.cfg.min_object);
        let obj = need.checked_next_power_of_two().unwrap_or(u64::MAX);
        if obj > self.cfg.max_object {
            return Err(PoolError::TooLarge {
                max: self.cfg.max_object,
            });
        }
        let class = (obj.trailing_zeros() - self.cfg.min_object.trailing_zeros()) as usize;
        Ok((class, obj))
    }

    /// Allocates an object of at least `size` bytes aligned to `align` (a power of two)
    /// whose last byte is at or below `max_addr`. Requests growth when free space falls below
    /// the threshold.
    ///
    /// # Errors
    /// [`PoolError::TooLarge`] or [`PoolError::Exhausted`]; nothing changed.
    pub fn alloc(&self, size: u64, align: u64, max_addr: u64) -> Result<PhysAddr, PoolError> {
        let (class, obj) = self.class_for(size, align)?;
        let mut s = self.state.lock();
        let got = take_split(&mut s, class, self.cfg.min_object, max_addr)
            .or_else(|| carve(&mut s, obj, max_addr, self.cfg.min_object));
        let result = match got {
            Some(addr) => {
                s.live.insert(addr, class as u8);
                s.used += obj;
                s.free_bytes -= obj;
                s.high_water = s.high_water.max(s.used);
                Ok(PhysAddr::new(addr))
            }
            None => Err(PoolError::Exhausted {
                used: s.used,
                total: s.total,
            }),
        };
        let low = s.free_bytes < self.cfg.refill_below || result.is_err();
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

    /// Frees the object at `addr`.
    ///
    /// # Errors
    /// [`PoolError::NotLive`] if `addr` is not the start of a live object; nothing changed.
    pub fn free(&self, addr: PhysAddr) -> Result<(), PoolError> {
        let mut s = self.state.lock();
        let class = s
            .live
            .remove(&addr.as_u64())
            .ok_or(PoolError::NotLive(addr))? as usize;
        let obj = self.cfg.min_object << class;
        s.free[class].push(addr.as_u64());
        s.used -= obj;
        s.free_bytes += obj;
        Ok(())
    }

    /// A span covering every chunk the pool has had (see [`MemorySpan`]).
    pub fn memory_span(&self) -> &Arc<MemorySpan> {
        &self.span
    }

    /// Whether `addr` lies in one of the pool's chunks.
    pub fn contains(&self, addr: PhysAddr) -> bool {
        let a = addr.as_u64();
        let s = self.state.lock();
        let i = s.chunks.partition_point(|c| c.base <= a);
        i > 0 && a < s.chunks[i - 1].end
    }

    /// The size of the live object at `addr`, if there is one.
    pub fn object_size(&self, addr: PhysAddr) -> Option<u64> {
        let s = self.state.lock();
        s.live
            .get(&addr.as_u64())
            .map(|&c| self.cfg.min_object << c)
    }

    /// The grower could not find memory: the next shortage may ask again.
    pub fn growth_failed(&self) {
        self.growth.completed();
    }

    /// How many times the pool grew in answer to its own request.
    pub fn growth_events(&self) -> u64 {
        self.growth.events()
    }

    /// Whether a growth request is outstanding.
    pub fn growth_pending(&self) -> bool {
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
            live: s.live.len() as u64,
            chunks: s.chunks.len() as u64,
        }
    }
}

/// Takes a free object of `class`, or splits the smallest larger free object that lies below
/// `max_addr`, putting the unused halves on the smaller classes' lists.
fn take_split(s: &mut State, class: usize, min_object: u64, max_addr: u64) -> Option<u64> {
    for c in class..s.free.len() {
        let size = min_object << c;
        if let Some(a) = take_free(&mut s.free[c], size, max_addr) {
            let mut half = size;
            for lower in (class..c).rev() {
                half /= 2;
                s.free[lower].push(a + half);
            }
            return Some(a);
        }
    }
    None
}

/// Pops a free object of the class that lies below `max_addr`. The common case (the last
/// freed object is reachable) is O(1); a device with a small mask may skip unreachable ones.
fn take_free(list: &mut Vec<u64>, obj: u64, max_addr: u64) -> Option<u64> {
    let pos = list.iter().rposition(|&a| a + (obj - 1) <= max_addr)?;
    Some(list.swap_remove(pos))
}

/// Carves one object from the first chunk with room below `max_addr`. The alignment padding
/// skipped before it is split into aligned smaller objects on their free lists, so no byte
/// is lost.
fn carve(s: &mut State, obj: u64, max_addr: u64, min_object: u64) -> Option<u64> {
    let (from, start) = s.chunks.iter_mut().find_map(|c| {
        let start = c.carve.next_multiple_of(obj);
        let end = start.checked_add(obj)?;
        if end <= c.end && end - 1 <= max_addr {
            let from = c.carve;
            c.carve = end;
            Some((from, start))
        } else {
            None
        }
    })?;
    let mut a = from;
    while a < start {
        // The largest object size that is aligned at `a` and fits before `start`.
        let mut size = min_object;
        while a % (size * 2) == 0 && a + size * 2 <= start {
            size *= 2;
        }
        let class = (size.trailing_zeros() - min_object.trailing_zeros()) as usize;
        s.free[class].push(a);
        a += size;
    }
    Some(start)
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
        assert_eq!(ObjectPool::new(c, None).err(), Some(PoolError::BadConfig));
        let mut c = cfg();
        c.max_object = 128 * 1024;
        assert_eq!(ObjectPool::new(c, None).err(), Some(PoolError::BadConfig));
        let p = ObjectPool::new(cfg(), None).unwrap();
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x1001), 4096),
            Err(PoolError::BadChunk)
        );
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x1000), 100),
            Err(PoolError::BadChunk)
        );
        assert_eq!(
            p.add_chunk(PhysAddr::new(!0xfff), 8192),
            Err(PoolError::BadChunk)
        );
        p.add_chunk(PhysAddr::new(0x10000), 0x10000).unwrap();
        assert_eq!(
            p.add_chunk(PhysAddr::new(0x18000), 0x10000),
            Err(PoolError::BadChunk)
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
            Err(PoolError::NotLive(PhysAddr::new(a0)))
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
            Err(PoolError::TooLarge { max: 64 * 1024 })
        );
        // Nothing is reachable below 1 MiB.
        assert!(matches!(
            p.alloc(10, 1, 0xfffff),
            Err(PoolError::Exhausted { .. })
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
            Err(PoolError::Exhausted {
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
}
