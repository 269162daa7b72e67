//! Runs the pool request stream's foreground steps on one allocator, for instruction
//! counts: `pool_stream_loop ALLOCATOR PERCENT STEPS`, ALLOCATOR one of `pool`, `talc`,
//! `buddy`, filled to PERCENT % held first (see `dmakit_sim::request_stream`). Used by
//! `scripts/pool_stream_instructions.sh`, which subtracts two runs so the fill does not
//! count.

#[path = "../tests/pool_stream/peers.rs"]
mod peers;

use std::hint::black_box;

use dmakit_sim::request_stream::{Filled, Level, StreamAllocator, StreamRequest};
use peers::{BuddyPeer, PoolPeer, TalcPeer};

/// Requests cycled through, as in the `pool_stream` benchmark.
const CYCLE: usize = 4096;

fn run<A: StreamAllocator>(alloc: A, percent: u64, steps: usize) -> u64 {
    let mut f = Filled::new(alloc, 15, Level::Held(percent));
    let reqs: Vec<StreamRequest> = f.stream.by_ref().take(CYCLE).collect();
    let mut served = 0;
    for i in 0..steps {
        served += u64::from(black_box(f.step(&reqs[i % CYCLE])));
    }
    served
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pool_stream_loop pool|talc|buddy PERCENT STEPS";
    let [which, percent, steps] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(percent), Ok(steps)) = (percent.parse(), steps.parse()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let served = match which.as_str() {
        "pool" => run(PoolPeer::new(), percent, steps),
        "talc" => run(TalcPeer::new(), percent, steps),
        "buddy" => run(BuddyPeer::new(), percent, steps),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    println!("{served} of {steps} served");
}
