//! Paired comparisons: every ratio the performance targets are stated in, measured by
//! interleaving the two sides.
//!
//! The criterion benchmarks time each case in its own window of seconds. On a shared
//! machine the speed of the whole machine changes between windows (by up to 2× on the
//! 2-core VM these numbers come from), so a ratio of two criterion medians can be off by
//! more than the effect it measures. Here every comparison is a set of cases run in short
//! rounds (about 2 ms per case), one after another, in a rotating order; each case's result
//! is the median of its per-round times, and each ratio is taken between medians of the same
//! rounds. Both sides of a ratio thus see the same load.
//!
//! Cases are compared only with the cases of their own comparison: small operations slow
//! down measurably when they share rounds with 64 KiB copies.
//!
//! Peers: `peers_64`, `peers_512`, `peers_4096` and `peers_16384` put a dmakit bounce of
//! that many bytes (`FromDevice`, 8 bytes off a line) in the same rounds as what it costs
//! without dmakit (`common/peers.rs`): a driver writer's bounce through the global
//! allocator, the `dma-api` crate's streaming map with such a bounce behind it, and the
//! floor, two plain copies between addresses that do not 4K-alias; and the same two copies
//! between the buffer and the slot dmakit gives it, whose ratio to the floor is what the
//! slot's placement costs the copies. `bounce_vs_memcpy`
//! instead copies between the very addresses a bounce uses (the buffer and the slot the
//! pool hands it), so it shows the bounce's overhead over its own copies, and hides what
//! its slot placement costs those copies.
//!
//! Run with `cargo bench -p dmakit-sim --bench paired [-- NAME...]`, where a name is part of
//! `direct_vs_bounced`, `bounce_vs_memcpy`, `peers_64`, `peers_512`, `peers_4096`,
//! `peers_16384`, `observability`, `occupancy`, `pool_stream` or `threads` (`peers` selects
//! the four peer comparisons); `DMAKIT_BENCH_ROUNDS` sets the number of rounds (default
//! 201). Absolute times stay in the criterion benches.

mod common;
#[path = "common/peers.rs"]
mod peers;
#[path = "../tests/pool_stream/peers.rs"]
mod stream_peers;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{device, mapper, MIB, POOL};
use dmakit::swiotlb::{Pool, PoolConfig, SlotRequest};
use dmakit::{CpuMemory, Device, Direction, DmaMapper, PhysAddr};
use dmakit_sim::host::HostPlatform;
use dmakit_sim::request_stream::{Filled, Level, StreamAllocator, StreamRequest};
use dmakit_sim::SimRng;
use stream_peers::{BuddyPeer, PoolPeer, TalcPeer};

/// Time each case is given per round.
const ROUND_TARGET: Duration = Duration::from_millis(2);

/// One side of a comparison: runs `n` operations and returns the time they took.
struct Case {
    name: String,
    run: Box<dyn FnMut(u64) -> Duration>,
}

impl Case {
    fn new(name: impl Into<String>, mut op: impl FnMut() + 'static) -> Self {
        Self::timed(name, move |n| {
            let t = Instant::now();
            for _ in 0..n {
                op();
            }
            t.elapsed()
        })
    }

    fn timed(name: impl Into<String>, run: impl FnMut(u64) -> Duration + 'static) -> Self {
        Self {
            name: name.into(),
            run: Box::new(run),
        }
    }
}

/// A comparison: its cases, and the ratios to report as `(numerator, denominator, target)`
/// by case index.
struct Comparison {
    title: &'static str,
    cases: Vec<Case>,
    ratios: Vec<(usize, usize, &'static str)>,
}

/// Median per-operation times of every case, in ns.
fn measure(cases: &mut [Case], rounds: usize) -> Vec<f64> {
    // Calibrate: operations per round so that each case takes about ROUND_TARGET.
    let per_round: Vec<u64> = cases
        .iter_mut()
        .map(|c| {
            let mut n = 1u64;
            loop {
                let t = (c.run)(n);
                if t >= ROUND_TARGET / 4 || n >= 1 << 30 {
                    let per_op = t.as_secs_f64() / n as f64;
                    return ((ROUND_TARGET.as_secs_f64() / per_op) as u64).max(1);
                }
                n *= 4;
            }
        })
        .collect();
    let mut times = vec![Vec::with_capacity(rounds); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let t = (cases[i].run)(per_round[i]);
            times[i].push(t.as_nanos() as f64 / per_round[i] as f64);
        }
    }
    times
        .into_iter()
        .map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect()
}

fn report(c: &Comparison, medians: &[f64], rounds: usize) {
    println!("\n## {} ({rounds} rounds)\n", c.title);
    for (case, ns) in c.cases.iter().zip(medians) {
        println!("{:<34} {:>12.1} ns", case.name, ns);
    }
    for &(num, den, target) in &c.ratios {
        println!(
            "{:<34} {:>12.3}   target {target}",
            format!("{} / {}", c.cases[num].name, c.cases[den].name),
            medians[num] / medians[den]
        );
    }
}

type Mapper = Arc<DmaMapper<Arc<HostPlatform>>>;

/// Builds one comparison (its setup runs only when the comparison is selected).
type Build = fn() -> Comparison;

fn map_unmap(m: &Mapper, dev: &Device, buf: PhysAddr, len: u64) {
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    let dma = unsafe { m.map(dev, black_box(buf), len, Direction::FromDevice) }.unwrap();
    // SAFETY: test-owned memory (model or host arena), untouched while mapped.
    unsafe { m.unmap(dev, dma, len, Direction::FromDevice) }.unwrap();
}

/// A case of `len`-byte map+unmaps of `buf` through `m`.
fn map_case(name: String, m: &Mapper, buf: PhysAddr, len: u64) -> Case {
    let (m, dev) = (m.clone(), device());
    Case::new(name, move || map_unmap(&m, &dev, buf, len))
}

/// Direct against bounced, 64 bytes each. Kept apart from the large copies below: run in
/// the same rounds, those slow the small cases by up to a third.
fn direct_vs_bounced() -> Comparison {
    let m: Mapper = Arc::new(mapper(1).build());
    Comparison {
        title: "direct vs bounced: 64 B map+unmap",
        cases: vec![
            map_case("direct 64 B".into(), &m, PhysAddr::new(POOL), 64),
            map_case("bounced 64 B".into(), &m, PhysAddr::new(POOL + 8), 64),
        ],
        ratios: vec![(0, 1, "<= 0.10")],
    }
}

/// Each bounce against two plain copies of the bytes it moves, between the same addresses
/// (the buffer and its slot), so any 4K aliasing of the bounce's copies is on both sides.
fn bounce_vs_memcpy() -> Comparison {
    let m: Mapper = Arc::new(mapper(1).build());
    let dev = device();
    let buf = PhysAddr::new(POOL + 8);
    let mut cases = Vec::new();
    let mut ratios = Vec::new();
    for size in [4096u64, 16384, 65536] {
        // The slot this mapping gets (the pool hands the same one back each time).
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        let dma = unsafe { m.map(&dev, buf, size, Direction::FromDevice) }.unwrap();
        // SAFETY: test-owned memory (model or host arena), untouched while mapped.
        unsafe { m.unmap(&dev, dma, size, Direction::FromDevice) }.unwrap();
        let slot = PhysAddr::new(dma.as_u64());
        ratios.push((cases.len(), cases.len() + 1, "<= 1.25"));
        cases.push(map_case(format!("bounce {size} B"), &m, buf, size));
        let host = m.platform().clone();
        cases.push(Case::new(
            format!("memcpy 2x {size} B, same addresses"),
            move || {
                host.copy(slot, black_box(buf), size).unwrap();
                host.copy(buf, black_box(slot), size).unwrap();
            },
        ));
    }
    Comparison {
        title: "bounce vs memcpy between the bounce's own addresses (FromDevice)",
        cases,
        ratios,
    }
}

/// A dmakit bounce of `len` bytes against its peers (`common/peers.rs`), all over one buffer
/// 8 bytes off a line. The floor's second buffer sits 8 bytes into a page too, so its copies
/// do not 4K-alias; the same two copies between the buffer and the slot dmakit gives it show
/// what the slot's placement costs them. `targets` are those of dmakit / global-allocator
/// bounce and of dmakit / floor.
fn bounce_peers(len: u64, targets: [&'static str; 2]) -> Comparison {
    let m: Mapper = Arc::new(mapper(1).build());
    let dev = device();
    let buf = PhysAddr::new(POOL + 8);
    // The slot this mapping gets (the pool hands the same one back each time).
    // SAFETY: test-owned memory (host arena), untouched while mapped.
    let dma = unsafe { m.map(&dev, buf, len, Direction::FromDevice) }.unwrap();
    // SAFETY: the mapping just made; no device uses it.
    unsafe { m.unmap(&dev, dma, len, Direction::FromDevice) }.unwrap();
    let host = m.platform();
    let size = len as usize;
    let slot = PhysAddr::new(dma.as_u64());
    let [ptr, other, slot] = [buf, PhysAddr::new(POOL + 4 * MIB + 8), slot]
        .map(|at| host.ptr(at, len).expect("buffer in the arena"));
    // SAFETY (every peer below): the buffers lie in the host arena, which each case keeps
    // alive (`arena_case`); the cases run one at a time, and nothing else touches the
    // buffers while one runs (dmakit's slot is free between its bounces).
    let dma_api = unsafe { peers::DmaApiBounce::new(ptr, size) };
    Comparison {
        title: "peers: a FromDevice bounce with and without dmakit",
        cases: vec![
            map_case(format!("dmakit bounce {len} B"), &m, buf, len),
            arena_case(format!("global-alloc bounce {len} B"), host, move || {
                // SAFETY: see above.
                unsafe { peers::global_alloc_bounce(ptr, size) }
            }),
            arena_case(format!("dma-api bounce {len} B"), host, move || {
                dma_api.map_unmap()
            }),
            arena_case(
                format!("memcpy 2x {len} B, non-aliasing"),
                host,
                move || {
                    // SAFETY: see above.
                    unsafe { peers::two_copies(ptr, other, size) }
                },
            ),
            arena_case(
                format!("memcpy 2x {len} B, bounce's addresses"),
                host,
                move || {
                    // SAFETY: see above.
                    unsafe { peers::two_copies(ptr, slot, size) }
                },
            ),
        ],
        ratios: vec![
            (0, 1, targets[0]),
            (0, 2, "(peer)"),
            (0, 3, targets[1]),
            (1, 3, "(peer)"),
            (4, 3, "(slot placement)"),
        ],
    }
}

/// A case of `op` that keeps `host`'s arena, which `op`'s pointers point into, alive.
fn arena_case(name: String, host: &Arc<HostPlatform>, mut op: impl FnMut() + 'static) -> Case {
    let host = host.clone();
    Case::new(name, move || {
        let _arena = &host;
        op()
    })
}

fn peers_64() -> Comparison {
    bounce_peers(64, ["<= 0.5", "(floor)"])
}

fn peers_512() -> Comparison {
    bounce_peers(512, ["(peer)", "(floor)"])
}

fn peers_4096() -> Comparison {
    bounce_peers(4096, ["(peer)", "<= 1.25"])
}

fn peers_16384() -> Comparison {
    bounce_peers(16384, ["(peer)", "<= 1.25"])
}

/// Requests the `pool_stream` cases cycle through, after the fill.
const STREAM_CYCLE: usize = 4096;

/// A `pool_stream` case: `alloc` filled to `percent` % held, then one foreground step
/// (allocate into the window of live allocations, free the oldest) per operation.
fn stream_case<A: StreamAllocator + 'static>(name: &str, alloc: A, percent: u64) -> Case {
    let mut f = Filled::new(alloc, 15, Level::Held(percent));
    let reqs: Vec<StreamRequest> = f.stream.by_ref().take(STREAM_CYCLE).collect();
    let mut i = 0;
    Case::new(format!("{name} {percent} % held"), move || {
        black_box(f.step(&reqs[i]));
        i = (i + 1) % reqs.len();
    })
}

/// The bounce pool against talc and a buddy heap over the same 64 MiB on the request
/// stream of `dmakit_sim::request_stream`, 10 % and 90 % held.
fn pool_stream() -> Comparison {
    let mut cases = Vec::new();
    let mut ratios = Vec::new();
    for percent in [10, 90] {
        let base = cases.len();
        cases.push(stream_case("pool", PoolPeer::new(), percent));
        cases.push(stream_case("talc", TalcPeer::new(), percent));
        cases.push(stream_case(
            "buddy_system_allocator",
            BuddyPeer::new(),
            percent,
        ));
        ratios.push((base, base + 1, "<= 1.0"));
        ratios.push((base, base + 2, "(peer)"));
    }
    Comparison {
        title:
            "pool stream: alloc + free of the oldest, window of 64, after fill and fragmentation",
        cases,
        ratios,
    }
}

/// The cost of statistics and of the debug checker on the map+unmap path.
fn observability() -> Comparison {
    let variants: [(&str, Mapper); 3] = [
        ("neither", Arc::new(mapper(1).without_statistics().build())),
        ("statistics", Arc::new(mapper(1).build())),
        (
            "statistics + checker",
            Arc::new(mapper(1).debug_checker().build()),
        ),
    ];
    let mut cases = Vec::new();
    let mut ratios = Vec::new();
    for (kind, buf) in [
        ("direct", PhysAddr::new(POOL)),
        ("bounced", PhysAddr::new(POOL + 8)),
    ] {
        let base = cases.len();
        for (name, m) in &variants {
            cases.push(map_case(format!("{kind} {name}"), m, buf, 64));
        }
        ratios.push((base + 1, base, "< 1.10"));
        ratios.push((base + 2, base, "(debugging only)"));
    }
    Comparison {
        title: "observability: 64 B map+unmap",
        cases,
        ratios,
    }
}

/// A 1 GiB pool's allocation cost at 10 %, 50 % and 90 % occupancy.
fn occupancy() -> Comparison {
    let req = SlotRequest::new(PhysAddr::new(0x1008), 4096, 0);
    let cases = [10u64, 50, 90]
        .into_iter()
        .map(|percent| {
            let pool = filled_pool(percent);
            Case::new(format!("pool {percent} % full"), move || {
                let got = pool.alloc(0, black_box(req), ()).unwrap();
                pool.free(got.addr).unwrap();
            })
        })
        .collect();
    Comparison {
        title: "pool allocation by occupancy (4 KiB alloc + free)",
        cases,
        ratios: vec![(2, 0, "<= 2.0")],
    }
}

/// A two-area 1 GiB pool filled to `percent` with a seeded mix of sizes and alignments.
fn filled_pool(percent: u64) -> Pool<()> {
    const GIB: u64 = 1 << 30;
    let cfg = PoolConfig::builder().cpu_count(2).build().expect("config");
    let pool: Pool<()> = Pool::with_region(cfg, PhysAddr::new(0), GIB).expect("region");
    let mut rng = SimRng::new(percent);
    while pool.stats().used_bytes < GIB * percent / 100 {
        let len = rng.between(1, 32 * 1024);
        let orig = PhysAddr::new(rng.below(1 << 40));
        let mask = [0, 0xfff][rng.below(2) as usize];
        let req = SlotRequest::new(orig, len, mask);
        if pool.alloc(rng.below(2) as usize, req, ()).is_err() {
            break;
        }
    }
    pool
}

/// Threads that run map+unmaps of their own buffers when told to, kept alive across
/// rounds (threads started per round may share a CPU until the scheduler spreads them) and
/// each pinned to a core of its own where the machine has enough (a kernel's per-CPU
/// mapping paths run where they are: two busy threads on one core measure the scheduler).
struct Workers {
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    /// Operations per thread in the next run; 0 tells the threads to exit.
    per_thread: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// One worker per mapper of `mappers`.
    fn new(mappers: &[Mapper]) -> Self {
        let count = mappers.len();
        let start = Arc::new(Barrier::new(count + 1));
        let done = Arc::new(Barrier::new(count + 1));
        let per_thread = Arc::new(AtomicU64::new(0));
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        if cores.len() < count {
            eprintln!(
                "threads: {} cores for {count} workers, not pinned",
                cores.len()
            );
        }
        let threads = (0..count)
            .map(|t| {
                let (m, start, done, per) = (
                    mappers[t].clone(),
                    start.clone(),
                    done.clone(),
                    per_thread.clone(),
                );
                let core = (cores.len() >= count).then(|| cores[t]);
                std::thread::spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            eprintln!("threads: worker {t} not pinned to core {}", core.id);
                        }
                    }
                    m.platform().bind_current_thread(t);
                    let dev = device();
                    let buf = PhysAddr::new(POOL + 8 + t as u64 * MIB);
                    loop {
                        start.wait();
                        let n = per.load(Ordering::Acquire);
                        if n == 0 {
                            return;
                        }
                        for _ in 0..n {
                            map_unmap(&m, &dev, buf, 512);
                        }
                        done.wait();
                    }
                })
            })
            .collect();
        Self {
            start,
            done,
            per_thread,
            threads,
        }
    }

    /// Runs `n` operations spread over the threads; the time per operation, scaled to `n`.
    fn run(&self, n: u64) -> Duration {
        let count = self.threads.len() as u64;
        let per = n.div_ceil(count).max(1);
        self.per_thread.store(per, Ordering::Release);
        self.start.wait();
        let t = Instant::now();
        self.done.wait();
        t.elapsed().mul_f64(n as f64 / (per * count) as f64)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.per_thread.store(0, Ordering::Release);
        self.start.wait();
        for t in self.threads.drain(..) {
            t.join().expect("worker");
        }
    }
}

/// Map+unmap throughput of one thread against two, each on its own CPU's pool area. Both
/// cases run on workers woken the same way, so the wake-up cost is on both sides. The third
/// case is the machine's own ceiling for this work: two threads with a mapper each share
/// nothing of dmakit, so what keeps them from twice one thread's throughput is the machine
/// (cores that share an execution unit or a cache, a host that lends its cores).
fn threads() -> Comparison {
    let m: Mapper = Arc::new(mapper(2).build());
    let one = Workers::new(std::slice::from_ref(&m));
    let two = Workers::new(&[m.clone(), m]);
    let apart = Workers::new(&[Arc::new(mapper(2).build()), Arc::new(mapper(2).build())]);
    Comparison {
        title: "threads: 512 B map+unmap, time per operation over all threads",
        cases: vec![
            Case::timed("1 thread", move |n| one.run(n)),
            Case::timed("2 threads", move |n| two.run(n)),
            Case::timed("2 threads, a mapper each", move |n| apart.run(n)),
        ],
        // Throughput of two over one is the inverse ratio of time per operation.
        ratios: vec![
            (0, 1, ">= 1.9 (throughput 2 / 1)"),
            (0, 2, "(the machine: nothing shared)"),
        ],
    }
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let rounds = std::env::var("DMAKIT_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&r: &usize| r > 0)
        .unwrap_or(201);
    let comparisons: [(&str, Build); 10] = [
        ("direct_vs_bounced", direct_vs_bounced),
        ("bounce_vs_memcpy", bounce_vs_memcpy),
        ("peers_64", peers_64),
        ("peers_512", peers_512),
        ("peers_4096", peers_4096),
        ("peers_16384", peers_16384),
        ("observability", observability),
        ("occupancy", occupancy),
        ("pool_stream", pool_stream),
        ("threads", threads),
    ];
    for (name, build) in comparisons {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let mut c = build();
        let medians = measure(&mut c.cases, rounds);
        report(&c, &medians, rounds);
    }
}
