//! The HTML page of `dmakit replay --report DIR`: bounces and bytes copied by rule, per
//! device (which rule bounces what) and the top call chains, drawn with the charts of the
//! simulation report.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use dmakit_scenario::trace::ReplayReport;
use dmakit_scenario::units::format_bytes;

use crate::html::{
    bar_chart, esc, horizontal_bars, page_end, page_start, prepare_page, stacked_bars,
};

/// Devices drawn in the per-device chart (most exact bounces first).
const DEVICES_DRAWN: usize = 12;

/// Creates `dir` and checks `dir/replay.html` can be written; returns its path.
///
/// # Errors
/// A message naming the directory or the file.
pub fn prepare(dir: &Path) -> Result<PathBuf, String> {
    prepare_page(dir, "replay.html")
}

/// The page for the replay `r` of `trace`.
///
/// # Errors
/// A message when a chart cannot be drawn.
pub fn render(trace: &str, r: &ReplayReport) -> Result<String, String> {
    let t = &r.total;
    let by_rule = bar_chart(
        "Bounced mappings by rule",
        "mappings",
        &[
            ("exact".into(), t.exact_bounces as f64),
            ("linux-size-only".into(), t.size_only_bounces as f64),
            ("size-only misses".into(), t.size_only_misses as f64),
        ],
    )?;
    let bytes = bar_chart(
        "Bytes copied by rule",
        "KiB",
        &[
            ("exact".into(), t.exact_bytes as f64 / 1024.0),
            ("linux-size-only".into(), t.size_only_bytes as f64 / 1024.0),
        ],
    )?;
    let mut devices: Vec<_> = r.devices.iter().collect();
    devices.sort_by_key(|d| std::cmp::Reverse(d.counts.exact_bounces));
    devices.truncate(DEVICES_DRAWN);
    let names: Vec<String> = devices.iter().map(|d| d.device.clone()).collect();
    // Exact bounces are those size-only also bounces plus its misses.
    let both: Vec<f64> = devices
        .iter()
        .map(|d| (d.counts.exact_bounces - d.counts.size_only_misses) as f64)
        .collect();
    let misses: Vec<f64> = devices
        .iter()
        .map(|d| d.counts.size_only_misses as f64)
        .collect();
    let size_only_alone: Vec<f64> = devices
        .iter()
        .map(|d| {
            let both = d.counts.exact_bounces - d.counts.size_only_misses;
            d.counts.size_only_bounces.saturating_sub(both) as f64
        })
        .collect();
    let per_device = stacked_bars(
        "Bounces per device",
        "mappings",
        &names,
        &[
            ("both rules", both),
            ("exact only (size-only misses)", misses),
            ("size-only only", size_only_alone),
        ],
    )?;
    let chains = horizontal_bars(
        "Exact bounces by call chain",
        "mappings",
        &r.chains
            .iter()
            .map(|c| (c.chain.clone(), c.counts.exact_bounces as f64))
            .collect::<Vec<_>>(),
    )?;
    let mut h = page_start(&format!("dmakit replay: {trace}"));
    let _ = write!(
        h,
        "<p>{lines} lines; \
         every device judged as non-coherent with {line}-byte cache lines. A trace shows no neighbours: \
         the exact count is what dmakit bounces and at most what must bounce; the size-only misses are \
         at most the mappings left open to corruption.</p>\n<table><tr><th>device</th><th>mappings</th>\
         <th>inbound</th><th>exact bounces</th><th>exact copied</th><th>size-only bounces</th>\
         <th>size-only copied</th><th>size-only misses</th></tr>\n",
        lines = r.lines,
        line = r.cache_line
    );
    for d in &r.devices {
        let c = &d.counts;
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.device),
            c.mappings,
            c.inbound,
            c.exact_bounces,
            format_bytes(c.exact_bytes),
            c.size_only_bounces,
            format_bytes(c.size_only_bytes),
            c.size_only_misses
        );
    }
    h.push_str("</table>\n");
    Ok(page_end(
        h,
        [
            ("bounces-by-rule", by_rule),
            ("bytes-by-rule", bytes),
            ("bounces-per-device", per_device),
            ("bounces-by-chain", chains),
        ],
    ))
}

/// Writes `DIR/replay.html`; returns its path.
///
/// # Errors
/// A message naming the file when it cannot be written or a chart drawn.
pub fn write(dir: &Path, trace: &str, r: &ReplayReport) -> Result<PathBuf, String> {
    let path = prepare(dir)?;
    std::fs::write(&path, render(trace, r)?)
        .map_err(|x| format!("cannot write {}: {x}", path.display()))?;
    Ok(path)
}
