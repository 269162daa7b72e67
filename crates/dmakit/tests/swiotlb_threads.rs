//! Several threads allocate and free mixed sizes and alignments on one pool while a shared
//! checker records every live slot range: no two live allocations may ever overlap.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::thread;

use dmakit::swiotlb::{Pool, PoolConfig, SlotRequest, SwiotlbError};
use dmakit::PhysAddr;

/// Small deterministic generator (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn concurrent_alloc_free_never_overlaps() {
    let cfg = PoolConfig::builder()
        .slot_size(2048)
        .segment_slots(32)
        .cpu_count(4)
        .build()
        .unwrap();
    let pool: Arc<Pool<(usize, u64)>> = Arc::new(Pool::new(cfg));
    pool.add_region(PhysAddr::new(0x100_0000), 8 * cfg.segment_size())
        .unwrap();
    pool.add_region(PhysAddr::new(0x400_3000), 4 * cfg.segment_size())
        .unwrap();
    // slot_start -> (end, owner)
    let checker: Arc<Mutex<BTreeMap<u64, (u64, usize)>>> = Arc::default();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let pool = Arc::clone(&pool);
            let checker = Arc::clone(&checker);
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((t as u64 + 1) * 0x1234_5678));
                let mut mine = Vec::new();
                let mut grown = false;
                for i in 0..4000u64 {
                    if mine.is_empty() || rng.next() % 2 == 0 {
                        let mask = [0u64, 0x3f, 0xfff, 0x7fff][(rng.next() % 4) as usize];
                        let max = pool.max_mapping_size(mask);
                        let len = 1 + rng.next() % if rng.next() % 8 == 0 { max } else { 9000 };
                        let orig = rng.next();
                        let req = SlotRequest::new(PhysAddr::new(orig), len, mask);
                        match pool.alloc(t, req, (t, i)) {
                            Ok(b) => {
                                assert_eq!(b.addr.as_u64() & mask, orig & mask);
                                let (s, e) =
                                    (b.slot_start.as_u64(), b.slot_start.as_u64() + b.slot_bytes);
                                let mut c = checker.lock().unwrap();
                                if let Some((_, &(pe, owner))) = c.range(..=s).next_back() {
                                    assert!(
                                        pe <= s,
                                        "[{s:#x},{e:#x}) overlaps a range of thread {owner}"
                                    );
                                }
                                if let Some((&ns, &(_, owner))) = c.range(s..).next() {
                                    assert!(
                                        e <= ns,
                                        "[{s:#x},{e:#x}) overlaps a range of thread {owner}"
                                    );
                                }
                                c.insert(s, (e, t));
                                drop(c);
                                mine.push((b, i));
                            }
                            Err(SwiotlbError::Exhausted { used, total, .. }) => {
                                assert!(used <= total);
                                // Grow once under pressure, while others keep working.
                                if !grown && t < 2 {
                                    grown = true;
                                    let base = 0x1000_0000 + t as u64 * 0x100_0000;
                                    pool.add_region(PhysAddr::new(base), 2 * cfg.segment_size())
                                        .unwrap();
                                }
                            }
                            Err(e) => panic!("unexpected {e}"),
                        }
                    } else {
                        let k = (rng.next() % mine.len() as u64) as usize;
                        let (b, i) = mine.swap_remove(k);
                        // Remove from the checker before freeing: once freed the slots may
                        // be handed out again at once.
                        checker.lock().unwrap().remove(&b.slot_start.as_u64());
                        assert_eq!(pool.free(b.addr), Ok((b, (t, i))));
                    }
                }
                for (b, i) in mine {
                    checker.lock().unwrap().remove(&b.slot_start.as_u64());
                    assert_eq!(pool.free(b.addr), Ok((b, (t, i))));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = pool.stats();
    assert_eq!((s.used_bytes, s.live), (0, 0));
    assert!(s.high_water_bytes > 0);
    assert!(checker.lock().unwrap().is_empty());
}
