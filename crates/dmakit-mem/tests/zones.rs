//! Zoned buddy page allocator: placement, fallback, exhaustion and bookkeeping.

use std::collections::BTreeMap;

use dmakit::{Device, DeviceId, PageAllocator, PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_mem::{MemError, Zone, ZoneLayout, ZoneStats, ZonedPageAllocator};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn r(start: u64, len: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), len).unwrap()
}

fn dev(bits: u32) -> Device {
    Device::builder(DeviceId(bits), "t")
        .dma_bits(bits)
        .build()
        .unwrap()
}

/// A small machine with every zone present: DMA [0, 1M) and [15M, 16M), DMA32 [16M, 17M),
/// NORMAL [4G, 4G + 1M).
fn small() -> (ZonedPageAllocator, Vec<PhysRange>) {
    let ram = vec![
        r(0, MIB),
        r(15 * MIB, MIB),
        r(16 * MIB, MIB),
        r(4 * GIB, MIB),
    ];
    (ZonedPageAllocator::new(&ram).unwrap(), ram)
}

fn free_pages(s: &[ZoneStats; 3]) -> [u64; 3] {
    [
        s[0].pages.free_pages,
        s[1].pages.free_pages,
        s[2].pages.free_pages,
    ]
}

#[test]
fn ram_map_with_a_hole_is_split_into_zones() {
    let a = ZonedPageAllocator::new(&[r(0, 2 * GIB), r(4 * GIB, 4 * GIB)]).unwrap();
    let s = a.stats();
    assert_eq!(s[0].pages.managed_pages, 16 * MIB / PAGE_SIZE);
    assert_eq!(s[1].pages.managed_pages, (2 * GIB - 16 * MIB) / PAGE_SIZE);
    assert_eq!(s[2].pages.managed_pages, 4 * GIB / PAGE_SIZE);
    assert_eq!(s[2].pages.largest_free_pages, 4 * GIB / PAGE_SIZE);
    assert_eq!(s[1].extent, Some(r(16 * MIB, 2 * GIB - 16 * MIB)));
    assert!(s.iter().all(|z| z.pages.used_pages == 0));
    // A 32-bit device reaches DMA32 and DMA fully, NORMAL not at all.
    assert_eq!(a.zones_for_mask(u32::MAX as u64), [Zone::Dma32, Zone::Dma]);
    // A 31-bit device fully reaches DMA32 too, because RAM below 4 GiB ends at 2 GiB.
    assert_eq!(a.zones_for_mask((1 << 31) - 1), [Zone::Dma32, Zone::Dma]);
    assert_eq!(a.zones_for_mask((1 << 30) - 1), [Zone::Dma]);
}

#[test]
fn configurable_dma_limit_and_bad_configurations() {
    let layout = ZoneLayout::new(GIB).unwrap();
    let a = ZonedPageAllocator::with_layout(&[r(0, 2 * GIB)], layout).unwrap();
    assert_eq!(a.zone_stats(Zone::Dma).pages.managed_pages, GIB / PAGE_SIZE);
    assert_eq!(
        a.zone_stats(Zone::Dma32).pages.managed_pages,
        GIB / PAGE_SIZE
    );
    assert_eq!(ZoneLayout::new(100), Err(MemError::BadDmaLimit(100)));
    assert_eq!(
        ZoneLayout::new(8 * GIB),
        Err(MemError::BadDmaLimit(8 * GIB))
    );
    assert!(matches!(
        ZonedPageAllocator::new(&[r(0, 2 * MIB), r(MIB, 2 * MIB)]),
        Err(MemError::OverlappingRam { .. })
    ));
}

#[test]
fn device_allocations_fall_back_downwards_in_order() {
    let (a, _) = small();
    let d64 = dev(64);
    // 1 MiB = 256 pages per zone except DMA (512 pages in two 256-page pieces).
    let n = a.alloc_for_device(&d64, 256).unwrap();
    assert_eq!(a.layout().zone_of(n), Zone::Normal);
    let m = a.alloc_for_device(&d64, 256).unwrap();
    assert_eq!(a.layout().zone_of(m), Zone::Dma32);
    let l1 = a.alloc_for_device(&d64, 256).unwrap();
    let l2 = a.alloc_for_device(&d64, 256).unwrap();
    assert_eq!(a.layout().zone_of(l1), Zone::Dma);
    assert_eq!(a.layout().zone_of(l2), Zone::Dma);
    assert_eq!(
        a.alloc_for_device(&d64, 1),
        Err(MemError::OutOfMemory { pages: 1 })
    );
    for (base, pages) in [(n, 256), (m, 256), (l1, 256), (l2, 256)] {
        a.free(base, pages).unwrap();
    }

    // A 32-bit device never gets NORMAL; a 24-bit one only DMA.
    let d32 = dev(32);
    let x = a.alloc_for_device(&d32, 1).unwrap();
    assert_eq!(a.layout().zone_of(x), Zone::Dma32);
    let d24 = dev(24);
    let y = a.alloc_for_device(&d24, 1).unwrap();
    assert_eq!(a.layout().zone_of(y), Zone::Dma);
    // A 20-bit device (1 MiB) does not fully reach the DMA zone ([0, 16M) holds memory at 15M).
    assert_eq!(
        a.alloc_for_device(&dev(20), 1),
        Err(MemError::NoReachableZone {
            dma_mask: (1 << 20) - 1
        })
    );
    // ... but the address-bounded path can still serve it from the low part of DMA.
    let z = a.alloc_below(1, MIB - 1).unwrap();
    assert!(z.as_u64() + PAGE_SIZE <= MIB);
    assert_eq!(a.alloc_in(Zone::Dma32, 0), Err(MemError::ZeroSize));
}

#[test]
fn failed_allocations_leave_nothing_behind() {
    let (a, _) = small();
    let held = a.alloc_in(Zone::Dma, 3).unwrap();
    let before = a.stats();
    // Bigger than any zone's largest block: every zone is tried and none changes.
    assert_eq!(
        a.alloc_for_device(&dev(64), 300),
        Err(MemError::OutOfMemory { pages: 300 })
    );
    assert_eq!(
        a.alloc_below(300, u64::MAX),
        Err(MemError::OutOfMemory { pages: 300 })
    );
    assert!(matches!(
        a.alloc_in(Zone::Normal, 1 << 30),
        Err(MemError::TooLarge { .. })
    ));
    assert_eq!(a.stats(), before);
    // Bad frees are errors and change nothing either.
    assert_eq!(
        a.free(held, 2),
        Err(MemError::NotAllocated {
            base: held,
            pages: 2
        })
    );
    assert!(a.free(PhysAddr::new(4 * GIB), 1).is_err());
    a.free_pages(PhysAddr::new(5 * GIB), 1); // through the trait: logged, ignored
    assert_eq!(a.stats(), before);
    a.free(held, 3).unwrap();
    assert_eq!(
        a.free(held, 3).unwrap_err(),
        MemError::NotAllocated {
            base: held,
            pages: 3
        }
    );
}

#[test]
fn page_allocator_trait_respects_max_addr() {
    let (a, _) = small();
    let p: &dyn PageAllocator = &a;
    let base = p.alloc_pages(4, 17 * MIB - 1).unwrap();
    assert!(base.as_u64() + 4 * PAGE_SIZE <= 17 * MIB);
    assert_eq!(a.layout().zone_of(base), Zone::Dma32);
    assert_eq!(p.alloc_pages(1, 0), None);
    p.free_pages(base, 4);
    assert!(a.stats().iter().all(|z| z.pages.used_pages == 0));
}

#[test]
fn concurrent_use_keeps_the_books_balanced() {
    let (a, _) = small();
    let before = a.stats();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let a = &a;
            s.spawn(move || {
                let d = dev(if t == 0 { 64 } else { 32 });
                for i in 0..2000u64 {
                    let pages = 1 + (i * 7 + t) % 9;
                    if let Ok(b) = a.alloc_for_device(&d, pages) {
                        assert!(d.can_address(b.as_u64(), pages * PAGE_SIZE));
                        a.free(b, pages).unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(a.stats(), before);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { bits: u32, pages: u64 },
    AllocIn { zone: usize, pages: u64 },
    Below { pages: u64, max: u64 },
    Free { pick: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (prop::sample::select(vec![24u32, 30, 32, 33, 64]), 1u64..80)
            .prop_map(|(bits, pages)| Op::Alloc { bits, pages }),
        1 => (0usize..3, 1u64..40).prop_map(|(zone, pages)| Op::AllocIn { zone, pages }),
        1 => (1u64..20, prop::sample::select(vec![MIB - 1, 16 * MIB - 1, 17 * MIB - 1, u64::MAX]))
            .prop_map(|(pages, max)| Op::Below { pages, max }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

fn check_placement(a: &ZonedPageAllocator, ram: &[PhysRange], base: PhysAddr, pages: u64) {
    let bytes = pages * PAGE_SIZE;
    let range = PhysRange::new(base, bytes).unwrap();
    assert!(base.is_aligned(PAGE_SIZE));
    assert!(
        ram.iter().any(|m| m.contains_range(&range)),
        "{range:?} outside RAM"
    );
    let l = a.layout();
    assert_eq!(
        l.zone_of(base),
        l.zone_of(range.last()),
        "{range:?} straddles zones"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_sequences_keep_every_invariant(ops in prop::collection::vec(op(), 1..200)) {
        let (a, ram) = small();
        let initial = a.stats();
        let mut live: BTreeMap<u64, u64> = BTreeMap::new(); // base -> pages
        for op in ops {
            let before = a.stats();
            let (result, pages) = match op {
                Op::Alloc { bits, pages } => {
                    let d = dev(bits);
                    let res = a.alloc_for_device(&d, pages);
                    if let Ok(b) = res {
                        prop_assert!(d.can_address(b.as_u64(), pages * PAGE_SIZE));
                        let zone = a.layout().zone_of(b);
                        prop_assert!(a.zones_for_mask(d.dma_mask()).contains(&zone));
                    }
                    (res, pages)
                }
                Op::AllocIn { zone, pages } => {
                    let z = Zone::ALL[zone];
                    let res = a.alloc_in(z, pages);
                    if let Ok(b) = res {
                        prop_assert_eq!(a.layout().zone_of(b), z);
                    }
                    (res, pages)
                }
                Op::Below { pages, max } => {
                    let res = a.alloc_below(pages, max);
                    if let Ok(b) = res {
                        prop_assert!(b.as_u64() + pages * PAGE_SIZE - 1 <= max);
                    }
                    (res, pages)
                }
                Op::Free { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let (&b, &p) = live.iter().nth(pick % live.len()).unwrap();
                    a.free(PhysAddr::new(b), p).unwrap();
                    live.remove(&b);
                    continue;
                }
            };
            match result {
                Ok(b) => {
                    check_placement(&a, &ram, b, pages);
                    let start = b.as_u64();
                    let end = start + pages * PAGE_SIZE;
                    if let Some((&pb, &pp)) = live.range(..end).next_back() {
                        prop_assert!(pb + pp * PAGE_SIZE <= start, "overlap with {:#x}", pb);
                    }
                    live.insert(start, pages);
                }
                Err(e) => {
                    let expected = matches!(
                        e,
                        MemError::OutOfMemory { .. } | MemError::NoReachableZone { .. }
                    );
                    prop_assert!(expected, "unexpected error {:?}", e);
                    prop_assert_eq!(a.stats(), before, "a failed call changed the books");
                }
            }
            let used: u64 = a.stats().iter().map(|z| z.pages.used_pages).sum();
            prop_assert_eq!(used, live.values().sum::<u64>());
        }
        for (b, p) in live {
            a.free(PhysAddr::new(b), p).unwrap();
        }
        let after = a.stats();
        prop_assert_eq!(free_pages(&after), free_pages(&initial));
        prop_assert_eq!(after, initial);
    }
}
