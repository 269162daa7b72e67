//! `dmakit slab`: what the kmalloc caches of a real machine take under each minimum
//! alignment.

use std::path::{Path, PathBuf};

use dmakit_scenario::footprint::{kmalloc_footprints, SHIPPED_SLABINFO};
use dmakit_scenario::input::{read_text, MAX_SLABINFO_BYTES};
use dmakit_scenario::slabinfo::parse_slabinfo;
use dmakit_scenario::units::format_bytes;
use serde::Serialize;

use crate::table::{self, count};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  dmakit slab                          /proc/slabinfo when readable, else the shipped snapshot
  dmakit slab --slabinfo data/slabinfo-x86_64-vm-6.18.txt --json
  dmakit slab --svg slab.svg")]
pub struct Args {
    /// A /proc/slabinfo file (default: /proc/slabinfo when readable, else the snapshot
    /// shipped with dmakit).
    #[arg(long, value_name = "FILE")]
    slabinfo: Option<PathBuf>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write a bar chart (SVG) to FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    min_align: u64,
    objects: u64,
    object_bytes: u64,
    slab_bytes: u64,
}

#[derive(Serialize)]
struct Out {
    slabinfo: String,
    alignments: Vec<Row>,
}

fn source(args: &Args) -> Result<(String, String), String> {
    if let Some(p) = &args.slabinfo {
        return read_text(p, MAX_SLABINFO_BYTES, "slabinfo file")
            .map(|t| (t, p.display().to_string()));
    }
    match read_text(
        Path::new("/proc/slabinfo"),
        MAX_SLABINFO_BYTES,
        "slabinfo file",
    ) {
        Ok(t) if parse_slabinfo(&t).is_ok() => Ok((t, "/proc/slabinfo".into())),
        _ => Ok((SHIPPED_SLABINFO.to_string(), "shipped snapshot".into())),
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), String> {
    let (text, origin) = source(&args)?;
    let rows = parse_slabinfo(&text).map_err(|e| format!("{origin}: {e}"))?;
    let fps = kmalloc_footprints(&rows);
    if fps.iter().all(|f| f.objects == 0) {
        return Err(format!("{origin}: no live kmalloc objects"));
    }
    let out = Out {
        slabinfo: origin.clone(),
        alignments: fps
            .iter()
            .map(|f| Row {
                min_align: f.min_align,
                objects: f.objects,
                object_bytes: f.object_bytes,
                slab_bytes: f.slab_bytes,
            })
            .collect(),
    };
    if let Some(p) = &args.svg {
        let bars: Vec<(String, f64)> = out
            .alignments
            .iter()
            .map(|r| (format!("{}", r.min_align), r.slab_bytes as f64 / 1048576.0))
            .collect();
        let svg = crate::html::bar_chart("kmalloc slab memory by minimum alignment", "MiB", &bars)?;
        std::fs::write(p, svg).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    println!("kmalloc caches of {origin}");
    let base = out.alignments.first().map_or(1, |r| r.slab_bytes.max(1));
    let mut t = table::new(&[
        "min align",
        "live objects",
        "object bytes",
        "slab memory",
        "vs 8",
    ]);
    for r in &out.alignments {
        t.add_row(vec![
            format!("{} B", r.min_align),
            count(r.objects),
            format_bytes(r.object_bytes),
            format_bytes(r.slab_bytes),
            format!("{:+.1}%", (r.slab_bytes as f64 / base as f64 - 1.0) * 100.0),
        ]);
    }
    println!("{t}");
    Ok(())
}
