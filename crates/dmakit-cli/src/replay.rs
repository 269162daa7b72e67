//! `dmakit replay TRACE`: a Linux `dma:` trace judged by dmakit's exact rule and by
//! Linux's size-only rule, per device and per call chain.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::time::Instant;

use comfy_table::{CellAlignment, ContentArrangement, Table};
use dmakit_scenario::trace::replay::{ChainReplay, DeviceReplay};
use dmakit_scenario::trace::{replay, ReadOptions, ReplayConfig, ReplayReport};
use dmakit_scenario::units::format_bytes;

use crate::table::{self, count};

/// Columns the default tables fit in.
const WIDTH: u16 = 100;

#[derive(clap::Args)]
#[command(
    after_help = "Record a trace on the board (Linux 6.12 or later, as root):
  cd /sys/kernel/tracing
  echo 1 > events/dma/enable
  for e in dma_map_phys dma_map_page dma_map_sg; do
    [ -e events/dma/$e ] && echo stacktrace > events/dma/$e/trigger; done
  ... run the workload ...
  cat trace > trace.txt

Examples:
  dmakit replay trace.txt
  dmakit replay trace.txt --cache-line 64 --json
  trace-cmd report | dmakit replay - --lenient
  dmakit replay trace.txt --report out/          writes out/replay.html"
)]
pub struct Args {
    /// The trace: the tracefs `trace` file saved, or `trace-cmd report` output; `-` reads
    /// standard input.
    trace: PathBuf,
    /// Cache line of the machine judged, in bytes (every device taken as non-coherent).
    #[arg(long, default_value_t = 128, value_parser = cache_line)]
    cache_line: u64,
    /// Count and skip malformed lines instead of stopping at the first.
    #[arg(long)]
    lenient: bool,
    /// Print one JSON object instead of the tables.
    #[arg(long)]
    json: bool,
    /// Write an HTML page with charts into DIR (DIR/replay.html).
    #[arg(long, value_name = "DIR")]
    report: Option<PathBuf>,
    /// Call chains listed.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Every column, whatever the width.
    #[arg(long)]
    wide: bool,
}

fn cache_line(s: &str) -> Result<u64, String> {
    match s {
        "64" => Ok(64),
        "128" => Ok(128),
        _ => Err(format!("`{s}`: the cache line is 64 or 128 bytes")),
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    let name = args.trace.display().to_string();
    let input: Box<dyn BufRead> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = File::open(&args.trace).map_err(|e| format!("cannot read {name}: {e}"))?;
        Box::new(BufReader::with_capacity(1 << 16, f))
    };
    if let Some(dir) = &args.report {
        crate::replay_html::prepare(dir)?;
    }
    let cfg = ReplayConfig::new(args.cache_line, args.top).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let read = ReadOptions {
        lenient: args.lenient,
    };
    let r = replay(input, read, &cfg).map_err(|e| format!("{name}: {e}"))?;
    let elapsed = started.elapsed();
    if let Some(dir) = &args.report {
        let path = crate::replay_html::write(dir, &name, &r)?;
        if !args.json {
            eprintln!("report written to {}", path.display());
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&r).map_err(|e| e.to_string())?;
        if let Some(o) = v.as_object_mut() {
            o.insert("trace".into(), serde_json::Value::String(name));
        }
        let s = serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?;
        println!("{s}");
    } else {
        print_tables(&name, &r, args.wide, elapsed.as_secs_f64());
    }
    Ok(())
}

fn sized(mut t: Table, wide: bool) -> Table {
    if wide {
        t.set_content_arrangement(ContentArrangement::Disabled);
    } else {
        t.set_content_arrangement(ContentArrangement::Dynamic);
        t.set_width(WIDTH);
    }
    t
}

fn device_row(d: &DeviceReplay) -> Vec<String> {
    let c = &d.counts;
    vec![
        d.device.clone(),
        count(c.mappings),
        count(c.inbound),
        count(c.exact_bounces),
        format_bytes(c.exact_bytes),
        count(c.size_only_bounces),
        format_bytes(c.size_only_bytes),
        count(c.size_only_misses),
    ]
}

fn chain_row(c: &ChainReplay, wide: bool) -> Vec<String> {
    let n = &c.counts;
    let share = format!("{:.1} %", c.share_ppm as f64 / 10_000.0);
    let mut row = vec![c.chain.clone(), c.devices.clone()];
    if wide {
        row.extend([count(n.mappings), count(n.inbound)]);
    }
    row.extend([count(n.exact_bounces), format_bytes(n.exact_bytes)]);
    if wide {
        row.push(count(n.size_only_bounces));
    }
    row.extend([count(n.size_only_misses), share]);
    if wide {
        row.push(c.suggestion.clone());
    }
    row
}

/// `text` broken into lines of at most [`WIDTH`] columns.
fn wrapped(text: &str) -> String {
    let mut out = String::new();
    let mut col = 0;
    for w in text.split_whitespace() {
        if col > 0 && col + 1 + w.len() > WIDTH as usize {
            out.push('\n');
            col = 0;
        } else if col > 0 {
            out.push(' ');
            col += 1;
        }
        out.push_str(w);
        col += w.len();
    }
    out
}

fn print_tables(name: &str, r: &ReplayReport, wide: bool, secs: f64) {
    let events: u64 = r.events.values().sum();
    println!(
        "{}",
        wrapped(&format!(
            "{name}: {} lines, {} dma: events, {} devices; judged as non-coherent with {}-byte \
             cache lines.",
            count(r.lines),
            count(events),
            r.devices.len(),
            r.cache_line
        ))
    );
    let header: &[&str] = if wide {
        &[
            "device",
            "mappings",
            "inbound",
            "exact: bounces",
            "exact: copied",
            "size-only: bounces",
            "size-only: copied",
            "size-only: misses",
        ]
    } else {
        &[
            "device",
            "mappings",
            "inbound",
            "exact",
            "exact copied",
            "size-only",
            "size-only copied",
            "misses",
        ]
    };
    let mut t = sized(table::new(header), wide);
    for d in &r.devices {
        t.add_row(device_row(d));
    }
    let total = DeviceReplay {
        device: "all".into(),
        counts: r.total,
    };
    t.add_row(device_row(&total));
    println!("{t}");
    if !r.chains.is_empty() {
        println!("\nTop call chains by exact bounces:");
        let header: &[&str] = if wide {
            &[
                "call chain",
                "devices",
                "mappings",
                "inbound",
                "exact: bounces",
                "exact: copied",
                "size-only: bounces",
                "size-only: misses",
                "share of exact",
                "suggestion",
            ]
        } else {
            &[
                "call chain",
                "devices",
                "exact",
                "copied",
                "misses",
                "share",
            ]
        };
        let mut c = sized(table::new(header), wide);
        let left = if wide {
            vec![1, header.len() - 1]
        } else {
            vec![1]
        };
        for i in left {
            if let Some(col) = c.column_mut(i) {
                col.set_cell_alignment(CellAlignment::Left);
            }
        }
        for ch in &r.chains {
            c.add_row(chain_row(ch, wide));
        }
        println!("{c}");
        if !wide {
            println!("\nSuggestions:");
            for ch in &r.chains {
                println!("{}", wrapped(&format!("- {}: {}", ch.chain, ch.suggestion)));
            }
        }
    }
    let mut notes = Vec::new();
    let apart = [
        (r.failed_mappings, "failed mappings"),
        (r.mmio_mappings, "MMIO mappings (not RAM)"),
        (r.invalid_ranges, "empty or overflowing ranges"),
        (
            r.unsized_sg_entries,
            "scatter-gather entries merged by an IOMMU (sizes not traced)",
        ),
        (
            r.untraced_sg_entries,
            "scatter-gather entries beyond the 128 traced per list",
        ),
    ];
    let apart: Vec<String> = apart
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{} {what}", count(*n)))
        .collect();
    if !apart.is_empty() {
        notes.push(format!("Not judged: {}.", apart.join(", ")));
    }
    if r.lost_events > 0 {
        notes.push(format!(
            "The kernel lost {} entries (ring buffer full; a larger buffer_size_kb keeps them): \
             every count is a lower bound.",
            count(r.lost_events)
        ));
    }
    if let Some(first) = &r.first_skipped {
        notes.push(format!(
            "Skipped {} malformed lines; the first: {first}",
            count(r.skipped_lines)
        ));
    }
    notes.push(format!(
        "exact: inbound mappings whose first or last {}-byte line is partial, which dmakit \
         bounces; size-only: what Linux's size-only rule bounces; misses: exact bounces the \
         size-only rule lets through. A trace shows no neighbours, so at most `exact` mappings \
         must bounce and at most `misses` are open to corruption. Copied: twice the size of \
         each bounced mapping (in at map, out at unmap) and the bytes each of its syncs copies.",
        r.cache_line
    ));
    notes.push(format!("{} lines replayed in {secs:.2} s.", count(r.lines)));
    for n in notes {
        println!("\n{}", wrapped(&n));
    }
}
