//! `DmaPool`: small coherent blocks for one device.
//!
//! Blocks are aligned, never cross the boundary and never overlap, whatever the shape and
//! the order of allocations and frees (proptest); destroying the pool gives every page
//! back. A non-coherent device writing one block while the CPU writes its neighbours in
//! the same cache lines corrupts nothing, because the blocks are coherent memory; the
//! control carves the same blocks out of cached memory and the evicted lines overwrite
//! what the device wrote.

use std::collections::BTreeMap;

use dmakit::dma_alloc::{
    AllocContext, DmaAllocator, DmaAllocatorConfig, DmaBlock, DmaPool, NoTranslation,
};
use dmakit::{DeviceId, DmaAddr, DmaAllocError, PageAllocator, PhysAddr, PhysRange, PAGE_SIZE};
use dmakit_mem::ZonedPageAllocator;
use dmakit_sim::{HazardConfig, Machine, Oracle, OracleReport, Owner};
use proptest::prelude::*;

use super::rig;

const MIB: u64 = 1 << 20;

/// A zoned allocator over 8 MiB of the machine's memory below 4 GiB.
fn zones(m: &Machine) -> ZonedPageAllocator {
    let base = m
        .alloc_pages_between(8 * MIB / PAGE_SIZE, 16 * MIB, u32::MAX as u64)
        .unwrap();
    ZonedPageAllocator::new(&[PhysRange::new(base, 8 * MIB).unwrap()]).unwrap()
}

fn config() -> DmaAllocatorConfig {
    DmaAllocatorConfig {
        atomic_pool_bytes: 64 * 1024,
        ..DmaAllocatorConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every block is aligned in CPU and device space, inside one page, clear of the
    /// boundary and of every other live block; every page comes back at destroy.
    #[test]
    fn blocks_are_aligned_never_cross_the_boundary_and_never_overlap(
        size in 1u64..=4096,
        align_order in 0u32..=12,
        boundary_order in proptest::option::of(0u32..=14),
        ops in proptest::collection::vec(any::<(bool, u16)>(), 1..300),
    ) {
        let m = rig::machine(81, HazardConfig::NONE);
        let z = zones(&m);
        let a = DmaAllocator::new(&m, &z, NoTranslation, config(), None).unwrap();
        let free_before = z.stats();
        let dev = rig::device(&m, 1, 32, false, true);
        let align = 1u64 << align_order;
        let boundary = boundary_order.map(|o| (1u64 << o).max(size.next_power_of_two()));
        let pool = DmaPool::new(&dev, size, align, boundary).unwrap();
        let mut live: BTreeMap<u64, DmaBlock> = BTreeMap::new();
        for (take, pick) in ops {
            if take || live.is_empty() {
                let b = pool.alloc(&a, AllocContext::MayBlock).unwrap();
                let (d, p) = (b.dma().as_u64(), b.phys().as_u64());
                prop_assert_eq!(b.size(), size);
                prop_assert_eq!(d % align, 0);
                prop_assert_eq!(p % align, 0);
                prop_assert_eq!(d / PAGE_SIZE, (d + size - 1) / PAGE_SIZE, "inside one page");
                if let Some(bd) = boundary {
                    prop_assert_eq!(d / bd, (d + size - 1) / bd, "crosses {}", bd);
                }
                prop_assert!(dev.can_address(d, size));
                if let Some((&s, prev)) = live.range(..=d).next_back() {
                    prop_assert!(s + prev.size() <= d, "overlaps the block before");
                }
                if let Some((&s, _)) = live.range(d..).next() {
                    prop_assert!(d + size <= s, "overlaps the block after");
                }
                live.insert(d, b);
            } else {
                let key = *live.keys().nth(pick as usize % live.len()).unwrap();
                pool.free(live.remove(&key).unwrap()).unwrap();
            }
            prop_assert_eq!(pool.usage().live, live.len());
        }
        for (_, b) in std::mem::take(&mut live) {
            pool.free(b).unwrap();
        }
        pool.destroy(&a).unwrap();
        prop_assert_eq!(z.stats(), free_before);
    }
}

/// Blocks of 24 bytes, 8-byte aligned: five of them share each 128-byte line.
fn neighbours_survive(blocks: &[(PhysAddr, DmaAddr)], m: &Machine) -> OracleReport {
    let dev = dmakit::Device::builder(DeviceId(2), "nc").build().unwrap();
    m.attach(dev.clone()).unwrap();
    let mut oracle = Oracle::new(m.line_size()).unwrap();
    let size = 24;
    for (i, &(phys, _)) in blocks.iter().enumerate() {
        let owner = Owner(100 + i as u32);
        m.cpu_write(phys, &rig::pattern(size, i as u8), owner)
            .unwrap();
        oracle
            .register(m, owner, phys, size as u64, "block")
            .unwrap();
    }
    let dev_owner = Owner(900);
    for (i, pair) in blocks.chunks(2).enumerate() {
        let [(p0, d0), (p1, _)] = [pair[0], pair[1]];
        m.grant(dev.id(), d0, size as u64).unwrap();
        let data = rig::pattern(size, 200 + i as u8);
        m.device_write(dev.id(), d0, &data, dev_owner).unwrap();
        oracle.device_wrote(p0, &data, dev_owner);
        m.revoke(dev.id(), d0, size as u64).unwrap();
        // Meanwhile the CPU updates the neighbour, and its line leaves the cache.
        let next = rig::pattern(size, 100 + i as u8);
        let owner = Owner(100 + 2 * i as u32 + 1);
        m.cpu_write(p1, &next, owner).unwrap();
        oracle.cpu_stored(p1, &next, owner);
        m.evict_line(p0);
        m.evict_line(p1);
    }
    oracle.check_all(m, dev_owner).unwrap();
    oracle.take_report()
}

#[test]
fn a_device_writing_one_block_corrupts_no_neighbour() {
    let m = rig::machine(82, HazardConfig::default());
    let z = zones(&m);
    let a = DmaAllocator::new(&m, &z, NoTranslation, config(), None).unwrap();
    let dev = rig::device(&m, 1, 32, false, true);
    let pool = DmaPool::new(&dev, 24, 8, Some(128)).unwrap();
    let blocks: Vec<DmaBlock> = (0..40)
        .map(|_| pool.alloc(&a, AllocContext::MayBlock).unwrap())
        .collect();
    let addrs: Vec<(PhysAddr, DmaAddr)> = blocks.iter().map(|b| (b.phys(), b.dma())).collect();
    // Neighbours really share lines.
    assert_eq!(addrs[1].0.as_u64() - addrs[0].0.as_u64(), 24);
    let report = neighbours_survive(&addrs, &m);
    assert!(report.is_clean(), "{report}");
    for b in blocks {
        pool.free(b).unwrap();
    }
    pool.destroy(&a).unwrap();
}

#[test]
fn the_same_blocks_in_cached_memory_corrupt_their_neighbours() {
    // The control: the pool's blocks are safe because they are coherent memory.
    let m = rig::machine(83, HazardConfig::NONE);
    let page = m.alloc_pages(1, u32::MAX as u64).unwrap();
    let addrs: Vec<(PhysAddr, DmaAddr)> = (0..40)
        .map(|i| {
            // The layout a 24-byte, 8-aligned pool with a 128-byte boundary uses.
            let off = (i / 5) * 128 + (i % 5) * 24;
            (page.add(off), DmaAddr::new(page.add(off).as_u64()))
        })
        .collect();
    let report = neighbours_survive(&addrs, &m);
    assert!(report.wrong_bytes() > 0, "{report}");
}

#[test]
fn the_pool_grows_only_where_it_may_wait_and_refuses_misuse() {
    let m = rig::machine(84, HazardConfig::NONE);
    let z = zones(&m);
    let a = DmaAllocator::new(&m, &z, NoTranslation, config(), None).unwrap();
    let free_before = z.stats();
    let dev = rig::device(&m, 1, 32, false, true);
    let pool = DmaPool::new(&dev, 512, 64, None).unwrap();
    let empty = pool.alloc(&a, AllocContext::Atomic).unwrap_err();
    assert_eq!(
        empty,
        DmaAllocError::DmaPoolEmpty {
            device: DeviceId(1),
            size: 512
        }
    );
    assert!(empty.to_string().contains("atomic"), "{empty}");
    assert_eq!(pool.usage().pages, 0, "nothing taken by the failure");
    let first = pool.alloc(&a, AllocContext::MayBlock).unwrap();
    let per_page = pool.usage().blocks_per_page;
    assert_eq!(per_page, 8);
    // The rest of the page serves atomic context; then it is full.
    let mut blocks: Vec<DmaBlock> = (1..per_page)
        .map(|_| pool.alloc(&a, AllocContext::Atomic).unwrap())
        .collect();
    assert!(matches!(
        pool.alloc(&a, AllocContext::Atomic),
        Err(DmaAllocError::DmaPoolEmpty { .. })
    ));
    blocks.push(first);
    // A block is zeroed when handed out, even after an earlier user wrote it.
    let reused = blocks.pop().unwrap();
    m.cpu_write(reused.phys(), &[0xee; 512], Owner(5)).unwrap();
    pool.free(reused).unwrap();
    let again = pool.alloc(&a, AllocContext::Atomic).unwrap();
    let mut back = [1u8; 512];
    m.cpu_read(again.phys(), &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    blocks.push(again);
    // Another pool's block is refused and handed back.
    let other = DmaPool::new(&dev, 512, 64, None).unwrap();
    let foreign = other.alloc(&a, AllocContext::MayBlock).unwrap();
    let refused = pool.free(foreign).unwrap_err();
    assert_eq!(refused.error, DmaAllocError::ForeignHandle);
    other.free(refused.handle).unwrap();
    other.destroy(&a).unwrap();
    // Destroy refuses while blocks are live, and hands the pool back.
    let busy = pool.destroy(&a).unwrap_err();
    assert_eq!(busy.error, DmaAllocError::DmaPoolBusy { live: per_page });
    let pool = busy.handle;
    for b in blocks {
        pool.free(b).unwrap();
    }
    pool.destroy(&a).unwrap();
    assert_eq!(z.stats(), free_before, "every page back");
}

#[test]
fn bad_pool_shapes_are_refused() {
    let m = rig::machine(85, HazardConfig::NONE);
    let dev = rig::device(&m, 1, 32, false, true);
    for (size, align, boundary) in [(0, 8, None), (64, 8, Some(32)), (8, 24, None)] {
        let e = DmaPool::new(&dev, size, align, boundary).unwrap_err();
        assert!(matches!(e, DmaAllocError::BadPoolShape { .. }), "{e}");
        assert!(e.to_string().contains("bad DMA pool shape"), "{e}");
    }
}
