//! The bounce pool against talc and a buddy heap on the benchmark request stream (see
//! `dmakit_sim::request_stream`): refusals with 50 % of the region requested, and requested
//! over held bytes with 90 % held. The counts are deterministic; they are printed (run with
//! `--nocapture`) for BENCHMARKS.md, and the stream itself is checked here.

#[path = "pool_stream/peers.rs"]
mod peers;

use dmakit_sim::request_stream::{
    Filled, Level, RequestStream, StreamAllocator, StreamRequest, LINE, MAX_LEN, PAGE_MASK,
    REGION_BYTES,
};
use peers::{BuddyPeer, PoolPeer, TalcPeer};

const SEED: u64 = 15;
/// Foreground requests after the fill.
const FOREGROUND: usize = 20_000;

/// What one allocator reaches on the stream.
#[derive(Debug, PartialEq)]
struct Counts {
    refusal_rate_at_50_requested: f64,
    utilisation_at_90_held: f64,
}

fn counts<A: StreamAllocator>(new: impl Fn() -> A) -> Counts {
    let mut half = Filled::new(new(), SEED, Level::Requested(50));
    half.foreground(FOREGROUND);
    let mut full = Filled::new(new(), SEED, Level::Held(90));
    full.foreground(FOREGROUND);
    Counts {
        refusal_rate_at_50_requested: half.refusal_rate(),
        utilisation_at_90_held: full.utilisation(),
    }
}

#[test]
fn stream_counts_per_allocator() {
    let all = [
        ("dmakit pool", counts(PoolPeer::new)),
        ("talc", counts(TalcPeer::new)),
        ("buddy_system_allocator", counts(BuddyPeer::new)),
    ];
    println!("allocator                refused at 50 % requested   requested / held at 90 % held");
    for (name, c) in &all {
        println!(
            "{name:<24} {:>24.2} % {:>30.1} %",
            100.0 * c.refusal_rate_at_50_requested,
            100.0 * c.utilisation_at_90_held
        );
    }
    // Deterministic: the same seed gives the same counts.
    assert_eq!(all[0].1, counts(PoolPeer::new));
}

#[test]
fn stream_has_the_documented_shape() {
    let reqs: Vec<StreamRequest> = RequestStream::new(SEED).take(80_000).collect();
    assert_eq!(
        reqs,
        RequestStream::new(SEED).take(80_000).collect::<Vec<_>>()
    );
    assert!(reqs.iter().all(|r| r.orig % LINE == 0));
    assert!(reqs.iter().all(|r| (1..=MAX_LEN).contains(&r.len)));
    let masked = reqs
        .iter()
        .filter(|r| r.min_align_mask == PAGE_MASK)
        .count();
    assert!(reqs
        .iter()
        .all(|r| r.min_align_mask == 0 || r.min_align_mask == PAGE_MASK));
    assert!(
        (9_000..11_000).contains(&masked),
        "{masked} of 80000 masked"
    );
    // Log-uniform: each octave of sizes gets about a sixteenth of the requests.
    for octave in 1..16 {
        let (lo, hi) = (1u64 << octave, 2u64 << octave);
        let n = reqs.iter().filter(|r| (lo..hi).contains(&r.len)).count();
        assert!((4_000..6_000).contains(&n), "{n} requests in [{lo}, {hi})");
    }
}

/// Checks the placement every allocation of a wrapped allocator gets.
struct Checked<A>(A, fn(&A::Handle, &StreamRequest) -> u64)
where
    A: StreamAllocator;

impl<A: StreamAllocator> StreamAllocator for Checked<A> {
    type Handle = A::Handle;

    fn alloc(&mut self, req: &StreamRequest) -> Option<A::Handle> {
        let h = self.0.alloc(req)?;
        let addr = (self.1)(&h, req);
        assert_eq!(addr % LINE, 0, "{req:?} at {addr:#x}");
        assert_eq!(
            addr & req.min_align_mask,
            req.lead(),
            "{req:?} at {addr:#x}"
        );
        Some(h)
    }

    fn free(&mut self, h: A::Handle) {
        self.0.free(h)
    }

    fn held_bytes(&self) -> u64 {
        self.0.held_bytes()
    }
}

#[test]
fn every_allocator_places_as_the_stream_asks() {
    let pool = Checked(PoolPeer::new(), |a, _| a.as_u64());
    let mut f = Filled::new(pool, SEED, Level::Held(90));
    f.foreground(2_000);
    assert!(f.alloc.held_bytes() >= REGION_BYTES * 9 / 10);
    // The peers hand out the block: the bounce address is its lead-in further.
    let talc = Checked(TalcPeer::new(), |h, r| h.0.as_ptr() as u64 + r.lead());
    Filled::new(talc, SEED, Level::Held(50)).foreground(2_000);
    let buddy = Checked(BuddyPeer::new(), |h, r| h.0.as_ptr() as u64 + r.lead());
    Filled::new(buddy, SEED, Level::Held(50)).foreground(2_000);
}
