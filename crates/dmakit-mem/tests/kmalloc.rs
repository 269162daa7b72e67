//! kmalloc: alignment, DMA caches, the automatic policy and errors (its slabinfo output is
//! parsed back in `dmakit-scenario`'s `tests/slabinfo.rs`).

use std::collections::BTreeMap;

use dmakit::{Device, DeviceId, PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_mem::{AllocKind, Kmalloc, MemError, MinAlignPolicy, ZonedPageAllocator};
use proptest::prelude::*;

const MIB: u64 = 1 << 20;

fn pages() -> ZonedPageAllocator {
    // Physical memory that is never touched: kmalloc only computes addresses.
    ZonedPageAllocator::new(&[PhysRange::new(PhysAddr::new(64 * MIB), 64 * MIB).unwrap()]).unwrap()
}

fn kmalloc(min_align: u64, line: u64) -> Kmalloc<ZonedPageAllocator> {
    Kmalloc::new(pages(), MinAlignPolicy::fixed(min_align, line).unwrap())
}

fn used_pages(k: &Kmalloc<ZonedPageAllocator>) -> u64 {
    k.page_allocator()
        .stats()
        .iter()
        .map(|z| z.pages.used_pages)
        .sum()
}

#[test]
fn automatic_policy_raises_alignment_exactly_when_it_must() {
    // (non-coherent device present, bounce pool present, line) -> minimum alignment
    let table = [
        (false, false, 128, 8),
        (false, true, 128, 8),
        (true, true, 128, 8),
        (true, false, 128, 128),
        (true, false, 64, 64),
        (false, false, 64, 8),
        (true, true, 64, 8),
    ];
    for (noncoherent, pool, line, want) in table {
        let p = MinAlignPolicy::auto(noncoherent, pool, line).unwrap();
        assert_eq!(
            p.min_align(),
            want,
            "noncoherent={noncoherent} pool={pool} line={line}"
        );
        assert_eq!(p.line(), line);
        assert_eq!(p.is_line_aligned(), want == line);
    }
    assert_eq!(
        MinAlignPolicy::auto(true, false, 48),
        Err(MemError::BadCacheLine(48))
    );
    assert_eq!(
        MinAlignPolicy::fixed(256, 128),
        Err(MemError::BadAlignment(256))
    );
    assert_eq!(MinAlignPolicy::fixed(4, 64), Err(MemError::BadAlignment(4)));

    let coherent = Device::builder(DeviceId(1), "c")
        .coherent(true)
        .build()
        .unwrap();
    let noncoherent = Device::builder(DeviceId(2), "n")
        .cache_line(128)
        .build()
        .unwrap();
    let p = MinAlignPolicy::for_devices(std::slice::from_ref(&coherent), false, 64).unwrap();
    assert_eq!(p.min_align(), 8);
    let p = MinAlignPolicy::for_devices(&[coherent, noncoherent.clone()], false, 64).unwrap();
    assert_eq!((p.min_align(), p.line()), (128, 128));
    let p = MinAlignPolicy::for_devices(&[noncoherent], true, 64).unwrap();
    assert_eq!((p.min_align(), p.line()), (8, 128));
}

#[test]
fn size_classes_follow_the_minimum_alignment() {
    let cases = [
        (8, 1, 8),
        (8, 65, 96),
        (32, 65, 96),
        (64, 65, 128),
        (64, 129, 192),
        (128, 8, 128),
        (128, 129, 256),
        (8, 8192, 8192),
        (8, 8193, 3 * PAGE_SIZE),
    ];
    for (align, size, usable) in cases {
        let k = kmalloc(align, 128);
        let a = k.alloc(size, AllocKind::Normal).unwrap();
        assert_eq!(
            k.usable_size(a).unwrap().usable,
            usable,
            "align {align} size {size}"
        );
        assert!(a.is_aligned(align));
    }
    // Caches below the minimum alignment, and 96/192 when not multiples of it, do not exist.
    let names: Vec<String> = kmalloc(128, 128)
        .cache_stats()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert!(names.contains(&"kmalloc-128".to_string()));
    assert!(!names
        .iter()
        .any(|n| n == "kmalloc-64" || n == "kmalloc-192"));
    assert!(names.contains(&"dma-kmalloc-8k".to_string()));
}

#[test]
fn small_alignment_saves_slab_pages() {
    let small = kmalloc(8, 128);
    let big = kmalloc(128, 128);
    for _ in 0..1000 {
        small.alloc(8, AllocKind::Normal).unwrap();
        big.alloc(8, AllocKind::Normal).unwrap();
    }
    // 512 objects of 8 bytes per page, against 32 objects of 128 bytes.
    assert_eq!(used_pages(&small), 2);
    assert_eq!(used_pages(&big), 32);
}

#[test]
fn dma_objects_own_their_lines() {
    let k = kmalloc(8, 128);
    let normal = k.alloc(8, AllocKind::Normal).unwrap();
    let d = k.alloc(8, AllocKind::Dma).unwrap();
    assert!(d.is_aligned(128));
    let info = k.usable_size(d).unwrap();
    assert_eq!((info.usable, info.kind), (128, AllocKind::Dma));
    // The normal object and the DMA object live in different caches and never share a line.
    assert_ne!(normal.align_down(128), d.align_down(128));
    let stats = k.cache_stats();
    let dma128 = stats.iter().find(|c| c.name == "dma-kmalloc-128").unwrap();
    assert_eq!(dma128.active_objs, 1);
}

#[test]
fn errors_are_values_and_change_nothing() {
    let k = kmalloc(8, 64);
    let a = k.alloc(24, AllocKind::Normal).unwrap();
    let before = k.slabinfo();
    assert_eq!(k.alloc(0, AllocKind::Normal), Err(MemError::ZeroSize));
    assert_eq!(
        k.alloc_aligned(8, 3, AllocKind::Normal),
        Err(MemError::BadAlignment(3))
    );
    assert_eq!(
        k.alloc_aligned(8, 2 * PAGE_SIZE, AllocKind::Normal),
        Err(MemError::BadAlignment(2 * PAGE_SIZE))
    );
    let inside = PhysAddr::new(a.as_u64() + 8);
    assert_eq!(
        k.free(inside),
        Err(MemError::UnknownObject { addr: inside })
    );
    let far = PhysAddr::new(3);
    assert_eq!(k.free(far), Err(MemError::UnknownObject { addr: far }));
    assert_eq!(k.slabinfo(), before);
    assert_eq!(k.free(a), Ok(32));
    assert_eq!(k.free(a), Err(MemError::UnknownObject { addr: a }));
    assert_eq!(k.usable_size(a), Err(MemError::UnknownObject { addr: a }));
}

#[test]
fn out_of_memory_is_an_error() {
    let tiny = ZonedPageAllocator::new(&[PhysRange::new(PhysAddr::new(0), 4 * PAGE_SIZE).unwrap()])
        .unwrap();
    let k = Kmalloc::new(tiny, MinAlignPolicy::fixed(8, 64).unwrap());
    // 2 KiB objects need 8-page slabs: more than the machine has.
    assert_eq!(
        k.alloc(2048, AllocKind::Normal),
        Err(MemError::OutOfMemory { pages: 8 })
    );
    assert_eq!(
        k.alloc(5 * PAGE_SIZE, AllocKind::Normal),
        Err(MemError::OutOfMemory { pages: 5 })
    );
    assert_eq!(used_pages(&k), 0);
    assert!(k.cache_stats().iter().all(|c| c.num_slabs == 0));
}

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: u64,
        align_shift: u32,
        dma: bool,
    },
    Free {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (
            prop_oneof![1u64..=256, 1u64..=9000, 8000u64..20000],
            0u32..=12,
            prop::bool::weighted(0.2)
        )
            .prop_map(|(size, align_shift, dma)| Op::Alloc { size, align_shift, dma }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn objects_are_aligned_and_never_overlap(
        min_shift in 3u32..=7,
        line_shift in 6u32..=7,
        ops in prop::collection::vec(op(), 1..300),
    ) {
        let line = 1u64 << line_shift;
        let min_align = (1u64 << min_shift).min(line);
        let k = kmalloc(min_align, line);
        let initial = k.page_allocator().stats();
        let mut live: BTreeMap<u64, u64> = BTreeMap::new(); // addr -> usable
        for op in ops {
            match op {
                Op::Alloc { size, align_shift, dma } => {
                    let align = 1u64 << align_shift;
                    let kind = if dma { AllocKind::Dma } else { AllocKind::Normal };
                    let a = k.alloc_aligned(size, align, kind).unwrap();
                    let info = k.usable_size(a).unwrap();
                    prop_assert!(info.usable >= size);
                    prop_assert_eq!(info.kind, kind);
                    prop_assert!(a.is_aligned(min_align));
                    prop_assert!(a.is_aligned(align));
                    if dma {
                        prop_assert!(a.is_aligned(line));
                        prop_assert_eq!(info.usable % line, 0);
                    }
                    let start = a.as_u64();
                    let end = start + info.usable;
                    if let Some((&s, &u)) = live.range(..end).next_back() {
                        prop_assert!(s + u <= start, "{:#x} overlaps {:#x}", start, s);
                    }
                    live.insert(start, info.usable);
                }
                Op::Free { pick } => {
                    if live.is_empty() {
                        continue;
                    }
                    let (&a, &u) = live.iter().nth(pick % live.len()).unwrap();
                    prop_assert_eq!(k.free(PhysAddr::new(a)), Ok(u));
                    live.remove(&a);
                }
            }
            let active: u64 = k.cache_stats().iter().map(|c| c.active_objs).sum();
            let large = live.values().filter(|&&u| u > 8192).count() as u64;
            prop_assert_eq!(active + large, live.len() as u64);
        }
        for a in live.keys() {
            k.free(PhysAddr::new(*a)).unwrap();
        }
        k.shrink();
        prop_assert_eq!(k.page_allocator().stats(), initial);
    }
}
