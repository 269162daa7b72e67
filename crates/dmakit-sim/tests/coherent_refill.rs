//! The small-machine variant's bounce pool on the machine model: a coherent pool that
//! starts small and is grown by a real worker thread while the mapping path runs.
//!
//! Non-coherent devices bounce misaligned buffers (each shares its first cache line with a
//! neighbour object the CPU keeps using) through a [`CoherentBouncePool`] of one 16 KiB
//! chunk, with queues of transfers in flight so the pool's occupancy climbs past its
//! refill threshold. Its growth hook is a [`GrowthWorker`]: a thread that, on its own
//! schedule, adds chunks of uncached memory reserved for it, racing the maps and unmaps of
//! the test thread. The cache misbehaves (evictions and speculative fills), and the oracle
//! judges every byte the devices read and the CPU sees.
//!
//! The control disables refill (no hook): the pool runs dry, the mappings that find it
//! full fail cleanly and are counted, and still no byte is wrong and every object comes
//! back.

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dmakit::coherent_pool::{CoherentBouncePool, ObjectPoolConfig};
use dmakit::growth::{GrowthHook, GrowthWorker};
use dmakit::{
    BouncePool, Device, DeviceId, Direction, DmaError, DmaMapper, PageAllocator, PhysAddr,
    PhysRange, PAGE_SIZE,
};
use dmakit_sim::transfer::{cpu_scribble, Neighbour, Scratch, Started, Transfer, TransferKnobs};
use dmakit_sim::{CacheConfig, HazardConfig, Machine, MachineConfig, Oracle, Owner, SimRng};

const KIB: u64 = 1024;
const LINE: u64 = 128;
const BELOW_4G: u64 = (1 << 32) - 1;
const CHUNK: u64 = 16 * KIB;
const MAX_OBJECT: u64 = 4 * KIB;
/// Chunks the worker may add.
const SPARE_CHUNKS: usize = 6;
const QUEUE: usize = 8;
const ROUNDS: u64 = 400;

fn machine(seed: u64) -> Machine {
    Machine::new(MachineConfig {
        seed,
        cache: CacheConfig {
            line_size: LINE,
            capacity: 32 * KIB,
            ways: 4,
        },
        // Evictions and speculative fills, each on one roll in five.
        hazards: HazardConfig::default(),
        cpus: 2,
        ..MachineConfig::default()
    })
    .unwrap()
}

/// `CHUNK` bytes of uncached memory aligned to `MAX_OBJECT`, below 4 GiB.
fn coherent_chunk(m: &Machine) -> PhysAddr {
    let raw = m
        .alloc_pages((CHUNK + MAX_OBJECT) / PAGE_SIZE, BELOW_4G)
        .unwrap();
    let base = PhysAddr::new(raw.as_u64().next_multiple_of(MAX_OBJECT));
    m.set_uncached(PhysRange::new(base, CHUNK).unwrap());
    base
}

fn config() -> ObjectPoolConfig {
    ObjectPoolConfig {
        min_object: LINE,
        max_object: MAX_OBJECT,
        chunk_bytes: CHUNK,
        refill_below: 8 * KIB,
        name: "coherent-pool",
    }
}

/// A pool of one chunk. With `refill`, a worker thread answers its growth requests with
/// the spare chunks (reserved on the machine beforehand: the model's memory is the test
/// thread's) and reports each chunk it added on the returned channel.
fn pool(m: &Machine, refill: bool) -> (Arc<CoherentBouncePool>, Option<Receiver<PhysAddr>>) {
    let first = coherent_chunk(m);
    if !refill {
        let p = CoherentBouncePool::new(config(), None).unwrap();
        p.add_chunk(first, CHUNK).unwrap();
        return (Arc::new(p), None);
    }
    let spare: Vec<PhysAddr> = (0..SPARE_CHUNKS).map(|_| coherent_chunk(m)).collect();
    let spare = Mutex::new(spare);
    let (tx, rx) = channel();
    let pool = Arc::new_cyclic(|weak: &Weak<CoherentBouncePool>| {
        let weak = weak.clone();
        let worker = GrowthWorker::spawn(move |_req| {
            // Held weakly: dropping the pool stops the thread.
            let Some(pool) = weak.upgrade() else { return };
            // Scheduled late, as a real worker may be: the mapping path keeps running.
            std::thread::sleep(Duration::from_micros(200));
            match spare.lock().unwrap().pop() {
                Some(base) => {
                    pool.add_chunk(base, CHUNK).unwrap();
                    let _ = tx.send(base);
                }
                None => pool.objects().growth_failed(),
            }
        })
        .unwrap();
        let p = CoherentBouncePool::new(config(), Some(Arc::new(worker) as Arc<dyn GrowthHook>))
            .unwrap();
        p.add_chunk(first, CHUNK).unwrap();
        p
    });
    (pool, Some(rx))
}

/// Device writes in bursts, CPU steps between them, some syncs and second rounds.
fn knobs() -> TransferKnobs {
    TransferKnobs {
        cpu_ops: (1, 4),
        device_chunk: (64, 1024),
        short_write_chance: 0.3,
        sync_chance: 0.25,
        second_round_chance: 0.05,
        rewrite_inbound_between_rounds: true,
        skip_sync_for_cpu: false,
    }
}

fn device(m: &Machine, id: u32) -> Device {
    let d = Device::builder(DeviceId(id), "nc")
        .cache_line(LINE)
        .dma_bits(32)
        .bounce_pool(BouncePool::Coherent)
        .build()
        .unwrap();
    m.attach(d.clone()).unwrap();
    d
}

#[derive(Debug)]
struct Outcome {
    mapped: u64,
    exhausted: u64,
    exhaustion_counted: u64,
    wrong_bytes: u64,
    growth_events: u64,
    chunks_added: usize,
    total: u64,
    used_after: u64,
    largest_free_after: u64,
}

/// Rounds of `QUEUE` transfers in flight at once, each of a misaligned buffer of 512 B to
/// 4 KiB whose first line it shares with a neighbour object the CPU keeps using.
fn run(seed: u64, refill: bool) -> Outcome {
    let m = machine(seed);
    let (pool, grown) = pool(&m, refill);
    let mapper = DmaMapper::builder(&m)
        .coherent_backend(pool.clone())
        .build();
    let devs = [device(&m, 1), device(&m, 2)];
    let mut oracle = Oracle::new(LINE).unwrap();
    let mut rng = SimRng::new(seed);
    let mut scratch = Scratch::default();
    // One 8 KiB slot per queue entry: a 64-byte neighbour, then the buffer.
    let slots = m.alloc_pages(2 * QUEUE as u64, BELOW_4G).unwrap().as_u64();
    let mut next_owner = 100u32;
    let mut out = Outcome {
        mapped: 0,
        exhausted: 0,
        exhaustion_counted: 0,
        wrong_bytes: 0,
        growth_events: 0,
        chunks_added: 0,
        total: 0,
        used_after: 0,
        largest_free_after: 0,
    };
    for round in 0..ROUNDS {
        let mut batch = Vec::new();
        for q in 0..QUEUE {
            let base = slots + q as u64 * 2 * PAGE_SIZE;
            let (nb_owner, owner) = (Owner(next_owner), Owner(next_owner + 1));
            next_owner += 2;
            let len = rng.between(1, 8) * 512;
            let buf = PhysRange::new(PhysAddr::new(base + 64), len).unwrap();
            oracle
                .register(&m, nb_owner, PhysAddr::new(base), 64, "neighbour")
                .unwrap();
            oracle
                .register(&m, owner, buf.start(), len, "buffer")
                .unwrap();
            cpu_scribble(&m, &mut oracle, &mut rng, &mut scratch, base, 64, nb_owner).unwrap();
            let neighbours: Vec<Neighbour> = vec![Neighbour {
                addr: base,
                len: 64,
                owner: nb_owner,
            }];
            let dev = &devs[q % 2];
            let dir = if round % 2 == 0 {
                Direction::FromDevice
            } else {
                Direction::Bidirectional
            };
            let mut tr = Transfer {
                machine: &m,
                mapper: &mapper,
                device: dev,
                knobs: knobs(),
                rng: &mut rng,
                oracle: &mut oracle,
                scratch: &mut scratch,
            };
            match tr.start(buf, dir, owner, &neighbours).unwrap() {
                Started::InFlight(f) => {
                    out.mapped += 1;
                    batch.push((dev, f, neighbours, base));
                }
                Started::MapFailed(DmaError::PoolExhausted { .. }) => {
                    out.exhausted += 1;
                    oracle.check_all(&m, Owner::NOBODY).unwrap();
                    oracle.unregister(buf.start()).unwrap();
                    oracle.unregister(PhysAddr::new(base)).unwrap();
                }
                Started::MapFailed(e) => panic!("unexpected map error: {e}"),
            }
        }
        for (dev, f, neighbours, base) in batch {
            let mut tr = Transfer {
                machine: &m,
                mapper: &mapper,
                device: dev,
                knobs: knobs(),
                rng: &mut rng,
                oracle: &mut oracle,
                scratch: &mut scratch,
            };
            tr.complete(&f, &neighbours).unwrap();
            oracle.check_all(&m, Owner::NOBODY).unwrap();
            oracle.unregister(f.buf.start()).unwrap();
            oracle.unregister(PhysAddr::new(base)).unwrap();
        }
    }
    out.wrong_bytes = oracle.take_report().wrong_bytes();
    out.exhaustion_counted = mapper.stats().total().exhaustion_errors;
    let u = pool.objects().usage();
    out.used_after = u.used;
    out.largest_free_after = u.largest_free;
    out.total = u.total;
    out.growth_events = dmakit::bounce::BounceBackend::growth_events(pool.as_ref());
    out.chunks_added = grown.map_or(0, |rx| rx.try_iter().count());
    out
}

#[test]
fn a_worker_thread_grows_the_pool_while_mappings_race_it_and_no_byte_is_wrong() {
    for seed in [1, 2, 3] {
        let o = run(seed, true);
        assert_eq!(o.wrong_bytes, 0, "seed {seed}: {o:?}");
        // The queue needs more than the first chunk: the worker added chunks, each an
        // answered growth request, and the pool's size is what it added.
        assert!(o.growth_events >= 1, "seed {seed}: {o:?}");
        assert_eq!(
            o.growth_events as usize, o.chunks_added,
            "seed {seed}: {o:?}"
        );
        assert_eq!(
            o.total,
            CHUNK * (1 + o.chunks_added as u64),
            "seed {seed}: {o:?}"
        );
        // Once grown, the pool serves the whole queue: most mappings never meet it full.
        assert!(o.mapped > o.exhausted * 10, "seed {seed}: {o:?}");
        assert_eq!(o.exhausted, o.exhaustion_counted, "seed {seed}: {o:?}");
        // Everything unmapped: every object freed and merged back to whole blocks.
        assert_eq!(o.used_after, 0, "seed {seed}: {o:?}");
        assert_eq!(o.largest_free_after, MAX_OBJECT, "seed {seed}: {o:?}");
    }
}

#[test]
fn control_without_refill_the_pool_runs_dry_failures_are_counted_and_nothing_is_corrupted() {
    let o = run(1, false);
    assert_eq!(o.growth_events, 0, "{o:?}");
    assert_eq!(o.total, CHUNK, "{o:?}");
    // The queue wants up to 8 × 4 KiB at once from 16 KiB: mappings meet a full pool.
    assert!(o.exhausted > 0, "{o:?}");
    assert_eq!(o.exhausted, o.exhaustion_counted, "{o:?}");
    let grown = run(1, true);
    assert!(o.exhausted > grown.exhausted, "{o:?} vs {grown:?}");
    // Failed maps left the pool as it was; the mapped ones kept their bytes.
    assert_eq!(o.wrong_bytes, 0, "{o:?}");
    assert_eq!(o.used_after, 0, "{o:?}");
    assert_eq!(o.largest_free_after, MAX_OBJECT, "{o:?}");
}
