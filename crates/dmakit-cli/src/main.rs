//! The `dmakit` command: realistic DMA workloads on a modelled machine under competing
//! policies (`simulate`), kmalloc memory by minimum alignment (`slab`), the map
//! benchmark on the host (`bench`), and Linux DMA traces replayed (`replay`).

mod bench;
mod bounce_cost;
mod emit_trace;
mod html;
mod replay;
mod replay_html;
mod reservoir;
mod simulate;
mod simulate_text;
mod slab;
mod table;
mod verdict;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dmakit",
    version,
    about = "DMA mapping that keeps small allocations small and DMA safe",
    long_about = "dmakit keeps kmalloc at 8-byte alignment and bounces exactly the inbound DMA \
                  mappings whose first or last cache line is shared.\n\nThis command runs \
                  realistic workloads on a modelled machine under competing policies and shows \
                  what each costs and whether any byte was corrupted.",
    after_help = "Examples:\n  dmakit simulate\n  dmakit simulate --transfers 20000 --json\n  \
                  dmakit slab --slabinfo /proc/slabinfo\n  dmakit bench --mode bounce --threads 2"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario under the four policies, side by side.
    Simulate(simulate::Args),
    /// Memory of the kmalloc caches under minimum alignments 8 to 128, from a slabinfo.
    Slab(slab::Args),
    /// Map/unmap latency and throughput on the host (like Linux's map_benchmark).
    Bench(bench::Args),
    /// What dmakit and Linux's size-only rule would bounce in a Linux `dma:` trace.
    Replay(replay::Args),
}

/// Test-only: puts back the defect `DMAKIT_PUT_BACK` names (see the crate's
/// `reintroduce-defects` feature).
#[cfg(feature = "reintroduce-defects")]
fn put_back_from_env() {
    use dmakit::reintroduce::{enable, Defect};
    if let Ok(name) = std::env::var("DMAKIT_PUT_BACK") {
        for d in Defect::ALL.into_iter().filter(|d| format!("{d:?}") == name) {
            enable(d);
        }
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "reintroduce-defects")]
    put_back_from_env();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate(a) => simulate::run(a),
        Command::Slab(a) => slab::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Replay(a) => replay::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
