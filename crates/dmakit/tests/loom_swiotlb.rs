//! Model checks of the bounce pool's locking with loom: every interleaving of two threads
//! allocating and freeing (and growing the pool) must keep allocations disjoint and the
//! accounting exact, including the per-area usage words and the high-water grants that
//! move allowance between areas, the run caches, and the lock-free region directory; and
//! unmaps that claim a bounce while they copy back, against each other, against frees and
//! against removal of the region; and allocations against the removal of the region they
//! would land in.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p dmakit --test loom_swiotlb --release`.
//!
//! loom is a dev-dependency, so the library built for this test cannot use it. The pool's
//! module tree is therefore compiled into this test crate, where `cfg(all(loom, test))`
//! makes its `sync` shim use loom's mutex and atomics.

#![cfg(loom)]
#![allow(dead_code, unused_imports)]

extern crate alloc;

/// The crate paths the pool module refers to.
mod addr {
    pub use dmakit::*;
}
mod platform {
    pub use dmakit::platform::*;
}
mod bounce {
    pub use dmakit::bounce::*;
}
mod error {
    pub use dmakit::DmaError;
}
mod reintroduce {
    pub use dmakit::reintroduce::*;
}

/// The pool's bounce backend grows through it.
#[path = "../src/growth/mod.rs"]
mod growth;
#[path = "../src/swiotlb/mod.rs"]
mod swiotlb;

use addr::PhysAddr;
use loom::sync::Arc;
use loom::thread;
use swiotlb::{Pool, PoolConfig, SlotRequest};

fn tiny_pool() -> Pool<usize> {
    // 64-byte slots, 2 slots per segment, 2 segments, one area per segment.
    let cfg = PoolConfig::builder()
        .slot_size(64)
        .segment_slots(2)
        .areas(2)
        .build()
        .unwrap();
    Pool::with_region(cfg, PhysAddr::new(0x1000), 256).unwrap()
}

fn bounded() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(3);
    }
    b
}

#[test]
fn two_threads_never_share_slots() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    // Both start in area 0 so they contend for one lock.
                    let b = pool
                        .alloc(0, SlotRequest::new(PhysAddr::new(t as u64), 64, 0), t)
                        .unwrap();
                    // Had another thread been given the same slot, its metadata would show
                    // here or its free would fail.
                    assert_eq!(pool.get(b.addr).unwrap(), (b, t));
                    assert_eq!(pool.free(b.addr).unwrap(), (b, t));
                })
            })
            .collect();
        let held = pool
            .alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 9)
            .unwrap();
        assert_eq!(pool.get(held.addr).unwrap().1, 9);
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(pool.free(held.addr).unwrap().1, 9);
        let s = pool.stats();
        assert_eq!((s.used_bytes, s.live), (0, 0));
        assert_eq!(s.total_bytes, 256);
    });
}

#[test]
fn concurrent_allocs_are_disjoint() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let pool = Arc::clone(&pool);
                thread::spawn(move || {
                    pool.alloc(t, SlotRequest::new(PhysAddr::new(0), 128, 0), t)
                        .unwrap()
                })
            })
            .collect();
        let a: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(a[0].slot_start, a[1].slot_start);
        assert_eq!(pool.stats().used_bytes, 256);
        for (t, b) in a.iter().enumerate() {
            assert_eq!(pool.free(b.addr).unwrap().1, t);
        }
        assert_eq!(pool.stats().used_bytes, 0);
    });
}

#[test]
fn growth_while_allocating() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let grower = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.add_region(PhysAddr::new(0x8000), 128).unwrap())
        };
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 1)
            .unwrap();
        let r = grower.join().unwrap();
        assert_eq!(pool.regions().len(), 2);
        assert_eq!(pool.free(b.addr).unwrap().1, 1);
        assert_eq!(pool.remove_region(r.start()), Ok(r));
        assert_eq!(pool.stats().total_bytes, 256);
    });
}

#[test]
fn allowance_moves_between_areas_under_contention() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        // Area 0 reaches one slot and frees it (into its cache): its allowance stays.
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 0)
            .unwrap();
        pool.free(b.addr).unwrap();
        let other = {
            let pool = Arc::clone(&pool);
            // Area 1 must take area 0's unused allowance (or raise the mark) while area 0
            // allocates again from its cache.
            thread::spawn(move || {
                let b = pool
                    .alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 1)
                    .unwrap();
                assert_eq!(pool.free(b.addr).unwrap().1, 1);
            })
        };
        let a = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 2)
            .unwrap();
        assert_eq!(a.slot_start, b.slot_start, "reused from the cache");
        let high = pool.stats().high_water_bytes;
        other.join().unwrap();
        assert_eq!(pool.free(a.addr).unwrap().1, 2);
        pool.check().unwrap();
        let s = pool.stats();
        assert_eq!((s.used_bytes, s.live), (0, 0));
        // Never more than both threads' slot at once, never less than one.
        assert!((64..=128).contains(&s.high_water_bytes));
        assert!(high >= 64);
    });
}

#[test]
fn lookups_race_with_growth() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let b = pool
            .alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 1)
            .unwrap();
        let grower = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let r = pool.add_region(PhysAddr::new(0x8000), 128).unwrap();
                pool.remove_region(r.start()).unwrap();
            })
        };
        // Whatever the directory shows meanwhile, lookups of the live bounce succeed and
        // addresses outside the first region are never taken for it.
        assert!(pool.region_of(b.addr).is_some());
        let new = pool.region_of(PhysAddr::new(0x8000));
        assert!(new.is_none() || new.unwrap().start() == PhysAddr::new(0x8000));
        assert_eq!(pool.get(b.addr).unwrap().1, 1);
        assert_eq!(pool.free(b.addr).unwrap().1, 1);
        grower.join().unwrap();
        assert_eq!(pool.region_of(PhysAddr::new(0x8000)), None);
        pool.check().unwrap();
    });
}

#[test]
fn abandon_races_with_an_allocation_in_another_area() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let kept = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                pool.alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 1)
                    .unwrap()
            })
        };
        // An allocation given back unused takes back only what it raised the mark by,
        // never what the other thread's bounce needs.
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 0)
            .unwrap();
        assert_eq!(pool.abandon(b.addr).unwrap().1, 0);
        let kept = kept.join().unwrap();
        pool.check().unwrap();
        let s = pool.stats();
        assert_eq!((s.used_bytes, s.live), (64, 1));
        assert!((64..=128).contains(&s.high_water_bytes), "{s:?}");
        assert_eq!(pool.free(kept.addr).unwrap().1, 1);
        pool.check().unwrap();
    });
}

#[test]
fn concurrent_ends_of_one_bounce_free_it_once() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 5)
            .unwrap();
        let other = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.end(b.addr, |_, &m| Ok::<_, ()>(m)).is_ok())
        };
        // A second unmap of the same address, as a racing driver would do: one of the two
        // frees it, the other finds nothing (never a double free).
        let mine = pool.end(b.addr, |_, &m| Ok::<_, ()>(m));
        let theirs = other.join().unwrap();
        assert_ne!(mine.is_ok(), theirs);
        if let Ok(r) = mine {
            assert_eq!(r, Ok((b, 5, 5)));
        }
        pool.check().unwrap();
        let s = pool.stats();
        assert_eq!((s.used_bytes, s.live), (0, 0));
    });
}

#[test]
fn a_failed_end_races_with_a_free() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 5)
            .unwrap();
        let freer = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || pool.free(b.addr).is_ok())
        };
        // An unmap whose copy back faults leaves the bounce live; a free meanwhile finds it
        // claimed (and fails) or finds it live before or after (and frees it).
        let ended = pool.end(b.addr, |_, _| Err::<(), _>("fault"));
        let freed = freer.join().unwrap();
        match ended {
            Ok(r) => assert_eq!(r, Err("fault")),
            Err(_) => assert!(freed, "only a free can have taken it"),
        }
        pool.check().unwrap();
        let live = pool.stats().live;
        assert_eq!(live, u64::from(!freed));
        if !freed {
            assert_eq!(pool.free(b.addr).unwrap(), (b, 5));
        }
        assert_eq!(pool.stats().used_bytes, 0);
    });
}

#[test]
fn only_the_claimant_frees_a_claimed_bounce() {
    bounded().check(|| {
        let pool = Arc::new(tiny_pool());
        let b = pool
            .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 5)
            .unwrap();
        // A racing free, and removal of the region once it is empty: while the end copies
        // back, neither may take the bounce or its region from under it.
        let other = {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                let freed = pool.free(b.addr).is_ok();
                let removed = freed && pool.remove_region(PhysAddr::new(0x1000)).is_ok();
                (freed, removed)
            })
        };
        let mut ran = false;
        let ended = pool.end(b.addr, |_, _| {
            ran = true;
            Ok::<_, ()>(())
        });
        let (freed, removed) = other.join().unwrap();
        assert_eq!(
            ran,
            ended.is_ok(),
            "an end whose copy ran must free the bounce"
        );
        assert_ne!(ended.is_ok(), freed, "freed exactly once");
        if let Ok(r) = ended {
            assert_eq!(r, Ok((b, 5, ())));
        }
        assert_eq!(removed, freed);
        let s = pool.stats();
        assert_eq!((s.used_bytes, s.live), (0, 0));
        pool.check().unwrap();
    });
}

/// An allocation races with the removal of the only region that has room for it (the
/// first region is full): it lands there only if the removal then finds the region busy,
/// and a removal that succeeds leaves the allocation refused, so no live bounce is ever in
/// memory the pool gave back.
fn allocation_meets_removal(pool: Pool<usize>) {
    let pool = Arc::new(pool);
    let extra = pool.add_region(PhysAddr::new(0x8000), 128).unwrap();
    let fill: Vec<_> = (0..4)
        .map(|i| {
            pool.alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), i)
                .unwrap()
        })
        .collect();
    let remover = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || pool.remove_region(extra.start()).is_ok())
    };
    let got = pool.alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 9);
    let removed = remover.join().unwrap();
    if let Ok(b) = &got {
        assert!(
            b.addr >= extra.start() && b.addr < extra.end(),
            "the first region was full"
        );
        assert!(!removed, "a region was removed under a live bounce");
        assert_eq!(pool.free(b.addr).map(|(_, m)| m), Ok(9));
    }
    assert!(
        removed || got.is_ok(),
        "the removal failed with nothing live in the region"
    );
    for b in fill {
        pool.free(b.addr).unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.live), (0, 0));
    pool.check().unwrap();
}

#[test]
fn an_allocation_never_lands_in_a_region_being_removed() {
    bounded().check(|| allocation_meets_removal(tiny_pool()));
}

/// Control: with the removal's busy check left out, the model finds a region removed under
/// a live bounce.
#[test]
#[should_panic(expected = "removed under a live bounce")]
fn a_removal_without_the_busy_check_takes_a_live_bounce() {
    bounded().check(|| allocation_meets_removal(tiny_pool().without_busy_check()));
}

/// The deferred-mapping wake-up without a fence on the free path: a waiter announces
/// itself (a read-modify-write of `waiting`), then allocates; a free releases its bounce,
/// then loads `waiting` with no fence. Either the waiter's allocation finds the room or the
/// free sees the waiter (and would drain the queue): a wake-up is never lost. Returns
fn waiter_meets_free(pool: Pool<usize>) {
    use loom::sync::atomic::{AtomicUsize, Ordering};
    let pool = Arc::new(pool);
    // Fill both areas: one run of two slots in each.
    let full: Vec<_> = (0..2)
        .map(|cpu| {
            pool.alloc(cpu, SlotRequest::new(PhysAddr::new(0), 128, 0), cpu)
                .unwrap()
        })
        .collect();
    let waiting = Arc::new(AtomicUsize::new(0));
    let freer = {
        let (pool, waiting) = (Arc::clone(&pool), Arc::clone(&waiting));
        let addr = full[1].addr;
        thread::spawn(move || {
            pool.free(addr).unwrap();
            waiting.load(Ordering::Acquire) > 0
        })
    };
    waiting.fetch_add(1, Ordering::SeqCst);
    let got = pool.alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 7);
    let saw_waiter = freer.join().unwrap();
    assert!(got.is_ok() || saw_waiter, "lost wake-up: {got:?}");
}

#[test]
fn a_free_never_misses_a_waiter() {
    bounded().check(|| waiter_meets_free(tiny_pool()));
}

/// Control: with a failed allocation deciding from the unlocked hints alone (no locked
/// second pass), the model finds the lost wake-up.
#[test]
#[should_panic(expected = "lost wake-up")]
fn a_free_misses_a_waiter_without_the_locked_pass() {
    bounded().check(|| waiter_meets_free(tiny_pool().without_locked_pass()));
}

/// The usage counters are plain stores under the area's lock: a grant lowers another
/// area's unused allowance only under that area's lock (taken with `try_lock`), so it never
/// lowers it below a usage that area is counting at the same time. Area 0 keeps one slot
/// of unused allowance; area 1 needs it (a grant) while area 0 allocates within it. With
/// both allocations live, every area's allowance covers its usage and the allowances add
/// up to at most the mark.
fn grant_meets_allocation(pool: Pool<usize>) {
    let pool = Arc::new(pool);
    let b = pool
        .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 0)
        .unwrap();
    pool.free(b.addr).unwrap();
    let other = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            pool.alloc(1, SlotRequest::new(PhysAddr::new(0), 64, 0), 1)
                .unwrap()
        })
    };
    let mine = pool
        .alloc(0, SlotRequest::new(PhysAddr::new(0), 64, 0), 2)
        .unwrap();
    let theirs = other.join().unwrap();
    pool.check().unwrap();
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.live), (128, 2));
    assert_eq!(s.high_water_bytes, 128, "{s:?}");
    assert_eq!(pool.free(mine.addr).unwrap().1, 2);
    assert_eq!(pool.free(theirs.addr).unwrap().1, 1);
    pool.check().unwrap();
}

#[test]
fn a_grant_never_takes_allowance_an_allocation_is_counting() {
    bounded().check(|| grant_meets_allocation(tiny_pool()));
}

/// Control: with a grant lowering the other area's allowance without that area's lock,
/// the model finds an area whose usage exceeds its allowance.
#[test]
#[should_panic(expected = "allowance below usage")]
fn a_grant_without_the_area_lock_takes_allowance_in_use() {
    bounded().check(|| grant_meets_allocation(tiny_pool().without_area_lock_for_slack()));
}
