//! The coherent object pool and the transient pool allocate nothing on map, unmap or sync.
//!
//! Coherent-pool bounces of several sizes, many live at once (so the free blocks are split
//! and merged again), their syncs both ways, their unmaps and a refusal by an exhausted
//! pool; transient bounces while the SWIOTLB pool waits for growth, and the refusal once
//! the transient records are all taken: all watched, with statistics on. The control
//! watches growth, which is allowed to allocate, and shows the watch sees it.

use std::sync::{Arc, Mutex};

use dmakit::bounce::{BounceBackend, TRANSIENT_BOUNCES};
use dmakit::{
    BouncePool, Device, Direction, DmaAddr, DmaError, DmaMapper, PageAllocator, PhysAddr,
};

use dmakit_sim::Machine;

use super::paths::{buffers, materialise, round};
use super::{atomic, steady, watched};
use crate::testbed::{
    add_coherent_chunk, coherent, device, machine, swiotlb, GrowthQueue, BELOW_4G,
};

/// Bounces taken by all devices of `mapper`.
fn bounces<P: dmakit::Platform>(mapper: &DmaMapper<P>) -> u64 {
    mapper
        .stats()
        .devices
        .iter()
        .map(|d| d.bounces_total())
        .sum()
}

#[test]
fn coherent_pool_bounces_allocate_nothing() {
    let m = machine(11);
    let pool = coherent(&m, 1 << 20);
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(pool.clone())
        .build();
    let dev = device(21, BouncePool::Coherent);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    let whole = pool.objects().usage();
    steady("coherent pool, 64 bytes", || {
        round(&mapper, &dev, base, 8, 64)
    });
    steady("coherent pool, misaligned", || {
        round(&mapper, &dev, base, 24, 300)
    });
    steady("coherent pool, several pages", || {
        round(&mapper, &dev, base, 8, 9000)
    });
    let u = pool.objects().usage();
    assert!(
        u.high_water > 48 * 9000,
        "many bounces were live at once: {u:?}"
    );
    // Every object came back and merged: the pool is whole again.
    assert_eq!(
        (u.used, u.live, u.free, u.largest_free),
        (0, 0, whole.total, whole.largest_free)
    );
    assert_eq!(pool.usage().used, 0);
    // The inbound two thirds of every round bounced (each round runs twice).
    assert_eq!(bounces(&mapper), 3 * 2 * 32);
}

#[test]
fn an_exhausted_coherent_pool_refuses_without_allocating() {
    let m = machine(12);
    let pool = coherent(&m, 64 * 1024);
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(pool.clone())
        .build();
    let dev = device(22, BouncePool::Coherent);
    m.attach(dev.clone()).unwrap();
    let base = buffers(&m);
    // One bounce takes the whole pool.
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, base.add(8), 60_000, Direction::FromDevice) }.unwrap();
    let before = pool.objects().usage();
    steady("coherent pool exhausted", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let full = unsafe { mapper.map(&dev, base.add(0x2_0008), 100, Direction::FromDevice) };
        assert!(
            matches!(full, Err(DmaError::PoolExhausted { .. })),
            "{full:?}"
        );
    });
    assert_eq!(pool.objects().usage(), before, "refusals changed the pool");
    atomic("coherent pool, unmap of the whole pool", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, hog, 60_000, Direction::FromDevice) }.unwrap()
    });
    assert_eq!(pool.objects().usage().largest_free, 64 * 1024);
}

/// Pages for transient bounces in slots of [`SLOT_PAGES`] pages of model memory, kept on a
/// free stack whose room is made up front: the page allocator of an atomic context, which
/// takes nothing from the heap. (`dmakit_mem`'s zone allocator keeps B-tree free lists
/// that allocate nodes as blocks split and merge: the page allocator's cost, not the
/// transient pool's.)
struct SlotPages(Mutex<Vec<PhysAddr>>);

/// Pages per slot: enough for every bounce these tests take.
const SLOT_PAGES: u64 = 4;

impl SlotPages {
    fn new(m: &Machine, slots: usize) -> Self {
        let base = m.alloc_pages(slots as u64 * SLOT_PAGES, BELOW_4G).unwrap();
        materialise(m, base, slots as u64 * SLOT_PAGES * 4096);
        let free = (0..slots as u64)
            .rev()
            .map(|i| base.add(i * SLOT_PAGES * 4096))
            .collect();
        Self(Mutex::new(free))
    }
}

impl PageAllocator for SlotPages {
    fn alloc_pages(&self, pages: u64, max_addr: u64) -> Option<PhysAddr> {
        let mut free = self.0.lock().unwrap();
        let last = free.last()?.as_u64() + SLOT_PAGES * 4096 - 1;
        (pages <= SLOT_PAGES && last <= max_addr).then(|| free.pop())?
    }

    fn free_pages(&self, base: PhysAddr, _pages: u64) {
        // Within the room made in `new`: at most every slot is free.
        self.0.lock().unwrap().push(base);
    }
}

/// A mapper whose SWIOTLB pool is full and waits for growth, so bounces go to transient
/// pages ([`SlotPages`], room for every transient record and one more); with the hog
/// mapping that fills the pool and the buffers to map.
fn transient_rig(
    m: &Machine,
) -> (
    DmaMapper<&Machine>,
    Device,
    DmaAddr,
    PhysAddr,
    Arc<GrowthQueue>,
) {
    let grower = Arc::new(GrowthQueue::default());
    let pool = swiotlb(m, 256 * 1024, Some(grower.clone()));
    let mapper = DmaMapper::builder(m)
        .swiotlb_backend(pool.clone())
        .transient_pages(Arc::new(SlotPages::new(m, TRANSIENT_BOUNCES + 1)))
        .build();
    let dev = device(23, BouncePool::Swiotlb);
    m.attach(dev.clone()).unwrap();
    let base = buffers(m);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let hog = unsafe { mapper.map(&dev, base.add(8), 250_000, Direction::FromDevice) }.unwrap();
    assert!(pool.usage().used > 0);
    (mapper, dev, hog, base.add(0x4_0000), grower)
}

#[test]
fn transient_bounces_allocate_nothing() {
    let m = machine(13);
    let (mapper, dev, hog, base, grower) = transient_rig(&m);
    steady("transient, misaligned", || {
        round(&mapper, &dev, base, 8, 64)
    });
    steady("transient, several pages", || {
        round(&mapper, &dev, base, 24, 5000)
    });
    assert_eq!(grower.0.lock().unwrap().len(), 1, "growth is pending");
    let transient = mapper.transient().unwrap();
    let u = transient.usage();
    assert_eq!((u.live, u.used), (0, 0));
    assert!(u.high_water >= 32 * 4096, "{u:?}");
    assert_eq!(bounces(&mapper), 2 * 2 * 32 + 1);
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { mapper.unmap(&dev, hog, 250_000, Direction::FromDevice) }.unwrap();
}

#[test]
fn full_transient_records_refuse_without_allocating() {
    let m = machine(14);
    let (mapper, dev, _hog, base, _) = transient_rig(&m);
    // The SWIOTLB pool's last free slots take the first bounces (packed, two lines each,
    // while the area has records, then whole slots), the transient records the rest, until
    // a map is refused.
    let mut live = [DmaAddr::new(0); TRANSIENT_BOUNCES + 128];
    let take_all = |live: &mut [DmaAddr]| {
        for (i, dma) in live.iter_mut().enumerate() {
            let buf = base.add(i as u64 * 256 + 8);
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            match unsafe { mapper.map(&dev, buf, 64, Direction::FromDevice) } {
                Ok(d) => *dma = d,
                Err(e) => {
                    assert!(matches!(e, DmaError::PoolExhausted { .. }), "{e:?}");
                    return i;
                }
            }
        }
        live.len()
    };
    // First use (the model's lines, statistics) unwatched, then again watched.
    let n = take_all(&mut live);
    for &dma in &live[..n] {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { mapper.unmap(&dev, dma, 64, Direction::FromDevice) }.unwrap();
    }
    let again = atomic("transient, every record taken", || take_all(&mut live));
    assert_eq!(again, n);
    let live = &live[..n];
    let transient = mapper.transient().unwrap();
    let before = transient.usage();
    assert_eq!(before.live, TRANSIENT_BOUNCES as u64);
    atomic("transient, records full", || {
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let full = unsafe { mapper.map(&dev, base.add(0x2_0008), 64, Direction::FromDevice) };
        assert!(
            matches!(full, Err(DmaError::PoolExhausted { .. })),
            "{full:?}"
        );
    });
    assert_eq!(transient.usage(), before, "the refusal changed the pool");
    atomic("transient, unmaps", || {
        for &dma in live {
            // SAFETY: test-owned memory (model or host arena), untouched while mapped.
            unsafe { mapper.unmap(&dev, dma, 64, Direction::FromDevice) }.unwrap();
        }
    });
    assert_eq!(transient.usage().live, 0);
}

/// Control: growth is allowed to allocate (it makes the records of the memory it adds),
/// and the watch sees it do so; the bounces into the grown memory then allocate nothing.
#[test]
fn control_the_watch_sees_growth_allocate() {
    let m = machine(15);
    let pool = coherent(&m, 64 * 1024);
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(pool.clone())
        .build();
    let dev = device(24, BouncePool::Coherent);
    m.attach(dev.clone()).unwrap();
    let ((), n, first) = watched("coherent pool growth", || {
        add_coherent_chunk(&m, &pool, 1 << 20)
    });
    assert!(n > 0, "growth allocated nothing the watch saw");
    assert_eq!(first.map(|o| o.label), Some("coherent pool growth"));
    assert_eq!(pool.objects().usage().chunks, 2);
    let base = buffers(&m);
    steady("coherent pool, grown", || {
        round(&mapper, &dev, base, 8, 9000)
    });
}
