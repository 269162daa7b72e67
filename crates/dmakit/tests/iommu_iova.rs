//! The IOVA allocator: masks, size alignment, reuse, exhaustion, the range caches, and a
//! randomised comparison with a reference model of the address space.

use dmakit::iommu::{IovaAllocator, IovaConfig, IovaError, IovaRange};
use proptest::prelude::*;

fn alloc(first: u64, last: u64) -> IovaAllocator {
    IovaAllocator::new(IovaConfig::new(first, last, 2)).unwrap()
}

#[test]
fn bad_configurations_are_refused() {
    for cfg in [
        IovaConfig::new(0, 10, 1),
        IovaConfig::new(5, 4, 1),
        IovaConfig::new(1, 10, 0),
        IovaConfig {
            magazine_size: 0,
            ..IovaConfig::new(1, 10, 1)
        },
        IovaConfig {
            rcache_max_order: 21,
            ..IovaConfig::new(1, 10, 1)
        },
    ] {
        assert_eq!(IovaAllocator::new(cfg).unwrap_err(), IovaError::BadConfig);
    }
    assert_eq!(alloc(1, 10).alloc(0, 10, 0), Err(IovaError::ZeroPages));
}

#[test]
fn allocations_respect_the_limit_and_are_size_aligned() {
    // A 48-bit space of 4 KiB pages; a 32-bit device's limit.
    let a = alloc(1, (1 << 36) - 1);
    let limit32 = (1u64 << 20) - 1;
    for pages in [1u64, 2, 3, 5, 8, 13, 64, 300, 513, 1000] {
        let r = a.alloc(pages, limit32, 0).unwrap();
        assert!(r.end() - 1 <= limit32, "{r:?}");
        assert!(r.pages >= pages);
        assert_eq!(r.pfn % pages.next_power_of_two(), 0, "{r:?}");
        let full = a.alloc(pages, u64::MAX, 1).unwrap();
        assert_eq!(full.pfn % pages.next_power_of_two(), 0);
        assert!(
            full.pfn > limit32,
            "unlimited requests go top down: {full:?}"
        );
    }
    // Cacheable sizes round up to a power of two, larger ones stay exact.
    assert_eq!(a.reserved_pages(3), 4);
    assert_eq!(a.reserved_pages(512), 512);
    assert_eq!(a.reserved_pages(513), 513);
}

#[test]
fn freed_ranges_come_back_from_the_cache_without_touching_the_tree() {
    let a = alloc(1, 1 << 20);
    let r = a.alloc(4, u64::MAX, 0).unwrap();
    let free_before = a.stats().tree_free_pages;
    a.free(r, 0).unwrap();
    assert_eq!(
        a.stats().tree_free_pages,
        free_before,
        "cached, not in the tree"
    );
    assert_eq!(a.stats().cached_ranges, 1);
    let again = a.alloc(3, u64::MAX, 0).unwrap();
    assert_eq!(again, r, "same size class: the cached range is reused");
    let s = a.stats();
    assert_eq!((s.rcache_hits, s.tree_allocs), (1, 1));
    // A cached range above a request's limit is not handed out.
    a.free(again, 0).unwrap();
    let low = a.alloc(4, r.pfn - 1, 0).unwrap();
    assert!(low.end() <= r.pfn);
    assert_eq!(a.stats().cached_ranges, 1);
}

#[test]
fn the_depot_is_bounded_and_overflow_returns_to_the_tree() {
    let cfg = IovaConfig {
        magazine_size: 4,
        depot_magazines: 2,
        ..IovaConfig::new(1, (1 << 16) - 1, 1)
    };
    let a = IovaAllocator::new(cfg).unwrap();
    let rs: Vec<IovaRange> = (0..100).map(|_| a.alloc(1, u64::MAX, 0).unwrap()).collect();
    let tree_before = a.stats().tree_free_pages;
    for r in &rs {
        a.free(*r, 0).unwrap();
    }
    // Two magazines per CPU plus two in the depot, four ranges each.
    assert!(a.stats().cached_ranges <= 16, "{}", a.stats().cached_ranges);
    assert_eq!(
        a.stats().tree_free_pages - tree_before + a.stats().cached_ranges as u64,
        100
    );
    assert!(a.stats().tree_frees > 0);
}

#[test]
fn exhaustion_is_an_error_after_the_caches_are_emptied() {
    let a = alloc(1, 16);
    let mut live: Vec<IovaRange> = (0..16).map(|_| a.alloc(1, u64::MAX, 0).unwrap()).collect();
    assert_eq!(
        a.alloc(1, u64::MAX, 0),
        Err(IovaError::Exhausted {
            pages: 1,
            limit_pfn: 16
        })
    );
    // Sixteen single pages cached; a two-page request needs them back in the tree.
    for r in live.drain(..) {
        a.free(r, 1).unwrap();
    }
    assert_eq!(a.stats().cached_ranges, 16);
    let two = a.alloc(2, u64::MAX, 0).unwrap();
    assert_eq!(two.pfn % 2, 0);
    assert_eq!(a.stats().cached_ranges, 0);
    // Once before the first exhaustion was reported, once for the two-page request.
    assert_eq!(a.stats().cache_flushes, 2);
    // A limit below the first page can never be met.
    assert!(matches!(a.alloc(1, 0, 0), Err(IovaError::Exhausted { .. })));
}

#[test]
fn frees_that_reach_the_tree_are_checked() {
    let a = alloc(1, 1 << 12);
    let big = a.alloc(1000, u64::MAX, 0).unwrap();
    a.free(big, 0).unwrap();
    assert_eq!(a.free(big, 0), Err(IovaError::NotAllocated(big)));
    let outside = IovaRange {
        pfn: 1 << 13,
        pages: 1,
    };
    assert_eq!(a.free(outside, 0), Err(IovaError::NotAllocated(outside)));
}

/// The reference: which pages of `first..=last` are taken.
struct Reference {
    first: u64,
    taken: Vec<bool>,
}

impl Reference {
    fn can_fit(&self, n: u64, limit: u64) -> bool {
        let align = n.next_power_of_two();
        let last = limit.min(self.first + self.taken.len() as u64 - 1);
        let mut at = self.first.next_multiple_of(align);
        while at + n - 1 <= last {
            let i = (at - self.first) as usize;
            if self.taken[i..i + n as usize].iter().all(|t| !t) {
                return true;
            }
            at += align;
        }
        false
    }

    fn set(&mut self, r: IovaRange, v: bool) {
        let i = (r.pfn - self.first) as usize;
        for t in &mut self.taken[i..i + r.pages as usize] {
            assert_ne!(*t, v, "overlap or double free at {r:?}");
            *t = v;
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { pages: u64, limit: u64, cpu: usize },
    Free { index: usize, cpu: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..40, 0u64..300, 0usize..3).prop_map(|(pages, limit, cpu)| Op::Alloc {
            pages,
            limit,
            cpu
        }),
        (any::<usize>(), 0usize..3).prop_map(|(index, cpu)| Op::Free { index, cpu }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn matches_a_reference_model(ops in prop::collection::vec(op(), 1..300)) {
        let (first, last) = (3u64, 258u64);
        let a = IovaAllocator::new(IovaConfig {
            rcache_max_order: 4,
            magazine_size: 3,
            depot_magazines: 2,
            ..IovaConfig::new(first, last, 2)
        })
        .unwrap();
        let mut reference = Reference {
            first,
            taken: vec![false; (last - first + 1) as usize],
        };
        let mut live: Vec<IovaRange> = Vec::new();
        for op in ops {
            match op {
                Op::Alloc { pages, limit, cpu } => {
                    let n = a.reserved_pages(pages);
                    match a.alloc(pages, limit, cpu) {
                        Ok(r) => {
                            prop_assert_eq!(r.pages, n);
                            prop_assert!(r.pfn >= first && r.end() - 1 <= last.min(limit));
                            prop_assert_eq!(r.pfn % n.next_power_of_two(), 0);
                            reference.set(r, true);
                            live.push(r);
                        }
                        Err(IovaError::Exhausted { .. }) => {
                            // Exhaustion is exact: no aligned free block exists.
                            prop_assert!(!reference.can_fit(n, limit));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Free { index, cpu } => {
                    if !live.is_empty() {
                        let r = live.swap_remove(index % live.len());
                        a.free(r, cpu).unwrap();
                        reference.set(r, false);
                    }
                }
            }
        }
        // Everything freed: the whole space is one free range again.
        for r in live.drain(..) {
            a.free(r, 0).unwrap();
        }
        a.flush_caches();
        prop_assert_eq!(a.stats().tree_free_pages, last - first + 1);
        prop_assert_eq!(a.stats().tree_free_ranges, 1);
    }
}
