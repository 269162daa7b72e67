//! `dmakit simulate`: a scenario under competing policies, side by side.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use dmakit::reintroduce::Defect;
use dmakit_scenario::input::{read_text, MAX_SCENARIO_BYTES};
use dmakit_scenario::model::SlabinfoSource;
use dmakit_scenario::workers::machine_cores;
use dmakit_scenario::{
    parse_scenario, simulate, Policy, RunOptions, Scenario, SimulationReport, DEFAULT_SCENARIO,
    DEFAULT_SCENARIO_FILE,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::bounce_cost::{self, HostCost};
use crate::table::count;
use crate::verdict::Verdict;

/// A policy on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// kmalloc aligned to the cache line, no alignment bouncing (the old way).
    Minalign128,
    /// 8-byte kmalloc, Linux 6.5's size-only bounce test.
    LinuxSizeOnly,
    /// 8-byte kmalloc, dmakit's exact bounce test.
    Exact,
    /// 8-byte kmalloc, no alignment bouncing (the hazard control).
    NoBounce,
    /// 8-byte kmalloc, exact test, bounces in a growable coherent pool instead of SWIOTLB.
    CoherentPool,
    /// Exact test; kmalloc line aligned only while a non-coherent device has no pool.
    Auto,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::Minalign128 => Policy::MinAlign128,
            PolicyArg::LinuxSizeOnly => Policy::LinuxSizeOnly,
            PolicyArg::Exact => Policy::Exact,
            PolicyArg::NoBounce => Policy::NoBounce,
            PolicyArg::CoherentPool => Policy::CoherentPool,
            PolicyArg::Auto => Policy::Auto,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  dmakit simulate                                   the arm64 phone, six policies
  dmakit simulate --transfers 20000 --policy exact,no-bounce
  dmakit simulate --json > result.json
  dmakit simulate --report out/                     writes out/report.html
  dmakit simulate --bounce-cost-ns 800,250          the same output run to run
  dmakit simulate --threads 1                       one policy after another
  dmakit simulate --slabinfo live --wide            this host's slabinfo, every column
  dmakit simulate --print-scenario > my.toml && dmakit simulate --scenario my.toml")]
pub struct Args {
    /// Scenario file (TOML); the built-in arm64 phone when absent.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Print the scenario (the built-in one unless --scenario is given) and exit.
    #[arg(long)]
    print_scenario: bool,
    /// Seed of the machine and of every random decision.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Transfers per policy.
    #[arg(long, default_value_t = 250_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    transfers: u64,
    /// Policies to run (one or several, comma separated); all four by default.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 1..)]
    policy: Vec<PolicyArg>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write an HTML report with SVG charts into DIR.
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Call sites listed per policy.
    #[arg(long, default_value_t = 5)]
    top: usize,
    /// The slabinfo to use instead of the scenario's: a file, or `live` for this host's
    /// /proc/slabinfo.
    #[arg(long, value_name = "FILE|live")]
    slabinfo: Option<PathBuf>,
    /// What a bounced mapping costs instead of measuring it on this host: nanoseconds per
    /// mapping, optionally with nanoseconds per KiB copied ("800" or "800,250").
    #[arg(long, value_name = "NS[,NS_PER_KIB]", value_parser = bounce_cost::parse)]
    bounce_cost_ns: Option<HostCost>,
    /// Every column, and no wrapping to 100 columns.
    #[arg(long)]
    wide: bool,
    /// How many policies run at once (each on its own thread); the machine's cores by
    /// default. The output is the same whatever the number.
    #[arg(long, value_name = "N")]
    threads: Option<NonZeroUsize>,
    /// Write the mappings of the exact policy's run (else the first policy's) as a Linux
    /// trace into FILE, for `dmakit replay`.
    #[arg(long, value_name = "FILE")]
    emit_trace: Option<PathBuf>,
}

/// The JSON output: the report, the bounce cost used and the verdicts.
#[derive(Serialize)]
struct JsonOut<'a> {
    #[serde(flatten)]
    report: &'a SimulationReport,
    bounce_cost: HostCost,
    verdicts: Vec<Verdict>,
}

fn load(args: &Args) -> Result<(String, String), String> {
    match &args.scenario {
        None => Ok((
            DEFAULT_SCENARIO.to_string(),
            DEFAULT_SCENARIO_FILE.to_string(),
        )),
        Some(p) => {
            read_text(p, MAX_SCENARIO_BYTES, "scenario file").map(|t| (t, p.display().to_string()))
        }
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    let (text, file) = load(&args)?;
    if args.print_scenario {
        print!("{text}");
        return Ok(());
    }
    let mut sc = parse_scenario(&text, &file).map_err(|e| e.to_string())?;
    match args.slabinfo.as_deref() {
        Some(p) if p.as_os_str() == "live" => sc.churn.slabinfo = SlabinfoSource::Live,
        Some(p) => sc.churn.slabinfo = SlabinfoSource::File(p.to_path_buf()),
        None => {}
    }
    let mut policies: Vec<Policy> = args.policy.iter().map(|&p| p.into()).collect();
    policies.dedup();
    if policies.is_empty() {
        policies = Policy::ALL.to_vec();
    }
    let opts = RunOptions {
        seed: args.seed,
        transfers: args.transfers,
        top_sites: args.top,
        log_mappings_of: args
            .emit_trace
            .as_ref()
            .and_then(|_| crate::emit_trace::policy_to_log(&policies)),
        threads: args.threads.unwrap_or_else(machine_cores),
    };
    let trace_file = args.emit_trace.as_deref().map(crate::emit_trace::create);
    let trace_file = trace_file.transpose()?;
    // Find out now, not after a long run, whether the report can be written.
    if let Some(dir) = &args.report {
        if !dmakit::reintroduce::active(Defect::CliReportCheckedLate) {
            crate::html::prepare_report(dir)?;
        }
    }
    // Measured before the run, on a quiet machine; it changes no count.
    let cost = match args.bounce_cost_ns {
        Some(c) => c,
        None => bounce_cost::measure_on_host()?,
    };
    let started = Instant::now();
    let report = run_with_progress(&sc, &policies, &opts)?;
    let elapsed = started.elapsed();
    if let Some(dir) = &args.report {
        let path = crate::html::write_report(dir, &sc, &report)?;
        if !args.json {
            eprintln!("report written to {}", path.display());
        }
    }
    if let Some(t) = trace_file {
        let policy = crate::emit_trace::write(t, &sc, &report)?;
        if !args.json {
            eprintln!("trace of the {policy} run written");
        }
    }
    if args.json {
        let out = JsonOut {
            report: &report,
            bounce_cost: cost,
            verdicts: Verdict::all(&report, &cost),
        };
        let s = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
        println!("{s}");
    } else {
        let text = crate::simulate_text::render(&sc, &report, &cost, args.transfers, args.wide);
        print!("{text}");
        // On stderr: the only figure that changes run to run.
        let total: u64 = report.policies.iter().map(|p| p.transfers).sum();
        eprintln!(
            "{} transfers in {:.1} s ({} transfers/s).",
            count(total),
            elapsed.as_secs_f64(),
            count((total as f64 / elapsed.as_secs_f64().max(1e-9)) as u64)
        );
    }
    Ok(())
}

fn run_with_progress(
    sc: &Scenario,
    policies: &[Policy],
    opts: &RunOptions,
) -> Result<SimulationReport, String> {
    let progress = AtomicU64::new(0);
    let total = opts.transfers * policies.len() as u64;
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} transfers ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let h = s.spawn(|| simulate(sc, policies, opts, &progress));
        let mut shown = false;
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
            if !shown && started.elapsed() > Duration::from_secs(1) {
                // Drawn only when stderr is a terminal.
                bar.set_draw_target(ProgressDrawTarget::stderr());
                shown = true;
            }
            bar.set_position(progress.load(Ordering::Relaxed));
        }
        h.join()
            .unwrap_or_else(|_| Err(dmakit_scenario::RunError::Model("panicked".into())))
    });
    bar.finish_and_clear();
    result.map_err(|e| e.to_string())
}
