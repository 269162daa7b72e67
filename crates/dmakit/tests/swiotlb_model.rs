//! Random alloc/free sequences on the bounce pool, checked against a simple model: live
//! allocations never overlap or share a slot (a line, for packed ones), placement rules hold, usage is exact, and
//! everything is free at the end.

use std::collections::BTreeMap;

use dmakit::swiotlb::{Bounce, Pool, PoolConfig, SlotRequest, SwiotlbError};
use dmakit::{PhysAddr, PAGE_SIZE};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        len_pick: u64,
        mask_bits: u32,
        orig: u64,
        cpu: usize,
    },
    Free(usize),
    FreeBogus(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u64>(), 0u32..17, any::<u64>(), 0usize..8).prop_map(|(len_pick, mask_bits, orig, cpu)| Op::Alloc { len_pick, mask_bits, orig, cpu }),
        2 => any::<usize>().prop_map(Op::Free),
        1 => any::<u64>().prop_map(Op::FreeBogus),
    ]
}

/// (slot size, slots per segment, areas, region bases, segments per region)
fn geometry() -> impl Strategy<Value = (u64, u64, usize, Vec<u64>, u64)> {
    prop_oneof![
        Just((64, 8, 2, vec![0x1_0000, 0x3000, 0x8_0000], 4)),
        Just((2048, 16, 4, vec![0x10_3000, 0x40_0000], 3)),
        Just((128, 64, 3, vec![0x7000], 5)),
    ]
}

/// The pools' largest cache line (the builder's default).
const LINE: u64 = 64;

fn check_placement(pool: &Pool<u64>, b: &Bounce, r: &SlotRequest, slot: u64) {
    let addr = b.addr.as_u64();
    // A request below a page whose mask window fits a slot, in fewer lines than a slot,
    // is packed into lines of one slot (or, when its area has no free record for it,
    // takes whole slots as any other).
    let unit = LINE.max(slot / 64);
    let window = (r.min_align_mask + 1).max(unit);
    let lead = r.orig.as_u64() & (window - 1) & (r.min_align_mask | (LINE - 1));
    let lines = (lead + r.len).div_ceil(unit);
    if r.len < PAGE_SIZE
        && window <= slot
        && unit < slot
        && lines < slot / unit
        && b.slot_bytes < slot
    {
        let keep = r.min_align_mask | (LINE - 1);
        assert_eq!(addr & keep, r.orig.as_u64() & keep, "{b:?} {r:?}");
        assert_eq!(b.slot_start.as_u64(), addr - lead, "{b:?} {r:?}");
        assert_eq!(b.slot_start.as_u64() % window, 0, "{b:?} {r:?}");
        assert_eq!(
            b.slot_bytes,
            lines * unit,
            "holds exactly the lines it touches"
        );
        assert_eq!(
            b.slot_start.as_u64() / slot,
            (b.slot_start.as_u64() + b.slot_bytes - 1) / slot
        );
        return;
    }
    // The mask's bits, and the offset within the line where the request fits a segment
    // with it and is a page or more or needs no extra slot for it.
    let with_line = r.min_align_mask | (LINE - 1);
    let slots = |bits: u64| ((r.orig.as_u64() & bits & (slot - 1)) + r.len).div_ceil(slot);
    let free = slots(with_line) == slots(r.min_align_mask);
    let mask = if r.len <= pool.max_mapping_size(with_line) && (r.len >= PAGE_SIZE || free) {
        with_line
    } else {
        r.min_align_mask
    };
    assert_eq!(addr & mask, r.orig.as_u64() & mask, "{b:?} {r:?}");
    if r.len >= PAGE_SIZE {
        assert_eq!(addr % PAGE_SIZE, (r.orig.as_u64() & mask) % PAGE_SIZE);
    }
    assert_eq!(b.slot_start.as_u64() % slot, 0);
    assert!(b.slot_start.as_u64() <= addr);
    assert!(addr + r.len <= b.slot_start.as_u64() + b.slot_bytes);
    assert_eq!(
        b.slot_bytes,
        (addr - b.slot_start.as_u64() + r.len).div_ceil(slot) * slot,
        "holds exactly the slots it touches"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn pool_matches_model((slot, seg, areas, bases, segs) in geometry(), ops in proptest::collection::vec(op(), 1..300)) {
        let cfg = PoolConfig::builder().slot_size(slot).segment_slots(seg).areas(areas).build().unwrap();
        let pool: Pool<u64> = Pool::new(cfg);
        let segment = cfg.segment_size();
        let mut regions = Vec::new();
        for &b in &bases {
            regions.push(pool.add_region(PhysAddr::new(b), segs * segment).unwrap());
        }
        // Model: slot_start -> (bounce, meta).
        let mut live: BTreeMap<u64, (Bounce, u64)> = BTreeMap::new();
        let mut next_meta = 0u64;
        let mut high = 0u64;
        for op in ops {
            match op {
                Op::Alloc { len_pick, mask_bits, orig, cpu } => {
                    let mask = (1u64 << mask_bits) - 1;
                    let max = pool.max_mapping_size(mask);
                    let req = if max == 0 {
                        SlotRequest::new(PhysAddr::new(orig), 1, mask)
                    } else {
                        // Bias towards small requests, sometimes up to the limit.
                        let len = if len_pick % 4 == 0 { 1 + len_pick % max } else { 1 + len_pick % max.min(3 * slot) };
                        SlotRequest::new(PhysAddr::new(orig), len, mask)
                    };
                    let before = pool.stats();
                    match pool.alloc(cpu, req, next_meta) {
                        Ok(b) => {
                            check_placement(&pool, &b, &req, slot);
                            prop_assert!(regions.iter().any(|r| r.start() <= b.slot_start && b.slot_start.as_u64() + b.slot_bytes <= r.end().as_u64()));
                            let s = b.slot_start.as_u64();
                            if let Some((&ps, (pb, _))) = live.range(..=s).next_back() {
                                prop_assert!(ps + pb.slot_bytes <= s, "overlaps {:?}: {:?}", pb, b);
                            }
                            if let Some((&ns, _)) = live.range(s..).next() {
                                prop_assert!(s + b.slot_bytes <= ns, "overlaps next: {:?}", b);
                            }
                            live.insert(s, (b, next_meta));
                            next_meta += 1;
                        }
                        Err(SwiotlbError::BadAlignMask { .. }) => prop_assert!(max == 0),
                        Err(SwiotlbError::Exhausted { used, total, .. }) => {
                            prop_assert_eq!(pool.stats(), before);
                            prop_assert_eq!((used, total), (before.used_bytes, before.total_bytes));
                        }
                        Err(e) => prop_assert!(false, "unexpected {e:?}"),
                    }
                }
                Op::Free(i) => {
                    if live.is_empty() { continue; }
                    let key = *live.keys().nth(i % live.len()).unwrap();
                    let (b, meta) = live.remove(&key).unwrap();
                    prop_assert_eq!(pool.get(b.addr), Ok((b, meta)));
                    prop_assert_eq!(pool.free(b.addr), Ok((b, meta)));
                    prop_assert_eq!(pool.free(b.addr), Err(SwiotlbError::NotMapped { addr: b.addr }));
                }
                Op::FreeBogus(a) => {
                    // Any address that is not a live bounce address is refused.
                    let a = if live.is_empty() || a % 2 == 0 { a } else {
                        let (b, _) = live.values().nth(a as usize % live.len()).unwrap();
                        b.addr.as_u64() + 1 + a % b.slot_bytes
                    };
                    if !live.values().any(|(b, _)| b.addr.as_u64() == a) {
                        let before = pool.stats();
                        prop_assert_eq!(pool.free(PhysAddr::new(a)), Err(SwiotlbError::NotMapped { addr: PhysAddr::new(a) }));
                        prop_assert_eq!(pool.stats(), before);
                    }
                }
            }
            let used: u64 = live.values().map(|(b, _)| b.slot_bytes).sum();
            high = high.max(used);
            let s = pool.stats();
            prop_assert_eq!(s.used_bytes, used);
            prop_assert_eq!(s.high_water_bytes, high);
            prop_assert_eq!(s.live, live.len() as u64);
            prop_assert_eq!(pool.area_stats().iter().map(|a| a.used_bytes).sum::<u64>(), used);
        }
        for (_, (b, meta)) in std::mem::take(&mut live) {
            prop_assert_eq!(pool.free(b.addr), Ok((b, meta)));
        }
        prop_assert_eq!(pool.stats().used_bytes, 0);
        prop_assert!(pool.area_stats().iter().all(|a| a.used_bytes == 0 && a.live == 0));
        // Everything merged back: a whole segment fits in every area again.
        for r in &regions {
            prop_assert_eq!(pool.remove_region(r.start()), Ok(*r));
        }
    }
}
