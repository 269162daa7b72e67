//! The HTML report of `dmakit simulate --report DIR`: one page, SVG charts drawn with
//! plotters (memory by policy, bounces by reason, bounces by call site, pool occupancy over
//! the run) and the figures as a table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use dmakit_scenario::units::format_bytes;
use dmakit_scenario::{Scenario, SimulationReport};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

const MIB: f64 = 1048576.0;
const COLOURS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
];

fn e<E: std::fmt::Display>(x: E) -> String {
    format!("chart: {x}")
}

/// An axis value: whole numbers without decimals, small fractions with one.
fn num(v: &f64) -> String {
    if v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Bars stacked per group: `series` are `(name, value per group)`.
pub fn stacked_bars(
    title: &str,
    y_label: &str,
    groups: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let top = (0..groups.len())
            .map(|g| {
                series
                    .iter()
                    .map(|s| s.1.get(g).copied().unwrap_or(0.0))
                    .sum::<f64>()
            })
            .fold(0.0, f64::max)
            .max(1e-9)
            * 1.15;
        let n = groups.len() as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            // A segmented range is inclusive: 0..n-1 gives the n groups and no empty slot.
            .build_cartesian_2d((0u32..n.saturating_sub(1)).into_segmented(), 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(y_label)
            .y_label_formatter(&num)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                    groups.get(*i as usize).cloned().unwrap_or_default()
                }
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(e)?;
        let mut base = vec![0.0; groups.len()];
        for (si, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[si % COLOURS.len()];
            let bars: Vec<Rectangle<(SegmentValue<u32>, f64)>> = values
                .iter()
                .enumerate()
                .map(|(g, &v)| {
                    let b = base[g];
                    base[g] += v;
                    let mut r = Rectangle::new(
                        [
                            (SegmentValue::Exact(g as u32), b),
                            (SegmentValue::Exact(g as u32 + 1), b + v),
                        ],
                        colour.filled(),
                    );
                    r.set_margin(0, 0, 18, 18);
                    r
                })
                .collect();
            chart
                .draw_series(bars)
                .map_err(e)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// One bar per `(label, value)`.
pub fn bar_chart(title: &str, y_label: &str, bars: &[(String, f64)]) -> Result<String, String> {
    let groups: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let values: Vec<f64> = bars.iter().map(|b| b.1).collect();
    stacked_bars(title, y_label, &groups, &[(y_label, values)])
}

/// Horizontal bars, for long labels (call sites).
pub fn horizontal_bars(
    title: &str,
    x_label: &str,
    bars: &[(String, f64)],
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let height = 80 + 34 * bars.len().max(1) as u32;
        let root = SVGBackend::with_string(&mut svg, (900, height)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let top = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let n = bars.len().max(1) as u32;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(420)
            .build_cartesian_2d(0f64..top, (0u32..n.saturating_sub(1)).into_segmented())
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .x_desc(x_label)
            .x_label_formatter(&num)
            .y_labels(bars.len().max(1))
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => bars
                    .get(*i as usize)
                    .map(|b| b.0.clone())
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(e)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let mut r = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i as u32)),
                        (b.1, SegmentValue::Exact(i as u32 + 1)),
                    ],
                    COLOURS[0].filled(),
                );
                r.set_margin(6, 6, 0, 0);
                r
            }))
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Lines: `(name, points)`.
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<String, String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let pts = series.iter().flat_map(|s| s.1.iter());
        let (xmax, ymax) = pts.fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.15 };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&num)
            .y_label_formatter(&num)
            .draw()
            .map_err(e)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(1),
                ))
                .map_err(e)?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// `s` with `&`, `<` and `>` escaped for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The page for `r`.
pub fn render(sc: &Scenario, r: &SimulationReport) -> Result<String, String> {
    let names: Vec<String> = r.policies.iter().map(|p| p.name.clone()).collect();
    // kmalloc at the scale of the slabinfo's machine (its full population), not the run's
    // few thousand background objects.
    let memory = stacked_bars(
        "Memory by policy (kmalloc: the slabinfo's live objects)",
        "MiB",
        &names,
        &[
            (
                "kmalloc",
                r.policies
                    .iter()
                    .map(|p| {
                        r.machine_scale
                            .of(&p.name)
                            .map_or(0.0, |k| k.kmalloc_bytes as f64 / MIB)
                    })
                    .collect(),
            ),
            (
                "bounce pool used (high-water)",
                r.policies
                    .iter()
                    .map(|p| p.pool_high_water_bytes.min(p.bounce_pool_bytes) as f64 / MIB)
                    .collect(),
            ),
            (
                "bounce pool reserved, never used",
                r.policies
                    .iter()
                    .map(|p| {
                        p.bounce_pool_bytes.saturating_sub(p.pool_high_water_bytes) as f64 / MIB
                    })
                    .collect(),
            ),
        ],
    )?;
    let reasons: Vec<&str> = ["misaligned", "above-mask", "forced", "untrusted"]
        .into_iter()
        .filter(|k| {
            r.policies
                .iter()
                .any(|p| p.bounces.get(*k).copied().unwrap_or(0) > 0)
        })
        .collect();
    let reason_series: Vec<(&str, Vec<f64>)> = reasons
        .iter()
        .map(|k| {
            (
                *k,
                r.policies
                    .iter()
                    .map(|p| p.bounces.get(*k).copied().unwrap_or(0) as f64)
                    .collect(),
            )
        })
        .collect();
    let by_reason = stacked_bars(
        "Bounces by reason",
        "bounced mappings",
        &names,
        &reason_series,
    )?;
    let sites_of = r
        .policies
        .iter()
        .find(|p| p.name == "exact")
        .or_else(|| r.policies.iter().max_by_key(|p| p.bounces_total()));
    let by_site = match sites_of {
        Some(p) => horizontal_bars(
            &format!("Bounces by call site ({})", p.name),
            "bounced mappings",
            &p.top_sites
                .iter()
                .map(|s| (s.site.clone(), s.bounces as f64))
                .collect::<Vec<_>>(),
        )?,
        None => String::new(),
    };
    let every = r
        .policies
        .first()
        .and_then(|p| p.occupancy.get(1))
        .map_or(0, |s| s.0);
    let occupancy = line_chart(
        &format!("Bounce pool in use over the run (sampled every {every} transfers)"),
        "transfers",
        "KiB in use",
        &r.policies
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    p.occupancy
                        .iter()
                        .map(|&(t, b)| (t as f64, b as f64 / 1024.0))
                        .collect(),
                )
            })
            .collect::<Vec<_>>(),
    )?;
    let mut h = page_start(&format!("dmakit simulate: {}", sc.name));
    let _ = write!(
        h,
        "<p>{desc}. Seed {seed}; \
         background allocation sizes from {slab}.</p>\n<table><tr><th>policy</th><th>kmalloc</th><th>bounce pool</th>\
         <th>transfers</th><th>bounces</th><th>bytes copied</th><th>corrupted</th><th>stale</th><th>leaked</th>\
         <th>pool high-water</th></tr>\n",
        desc = esc(&sc.description),
        seed = r.seed,
        slab = esc(&r.slabinfo)
    );
    for p in &r.policies {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&p.name),
            format_bytes(p.kmalloc_bytes),
            format_bytes(p.bounce_pool_bytes),
            p.transfers,
            p.bounces_total(),
            format_bytes(p.bounced_bytes),
            p.corrupted_bytes,
            p.stale_bytes,
            p.leaked_bytes,
            format_bytes(p.pool_high_water_bytes)
        );
    }
    h.push_str("</table>\n");
    Ok(page_end(
        h,
        [
            ("memory", memory),
            ("bounces-by-reason", by_reason),
            ("bounces-by-site", by_site),
            ("pool-occupancy", occupancy),
        ],
    ))
}

/// The start of a report page titled `title` (escaped here): its head and style, and the
/// title as its heading.
pub fn page_start(title: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}\
         figure{{margin:1em 0}}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    )
}

/// The page `h` ends with: each chart in a `<figure>` of its id, then the closing tags.
pub fn page_end<const N: usize>(mut h: String, figures: [(&str, String); N]) -> String {
    for (id, svg) in figures {
        let _ = write!(h, "<figure id=\"{id}\">\n{svg}\n</figure>\n");
    }
    h.push_str("</body></html>\n");
    h
}

/// Writes `DIR/report.html` (creating DIR); returns its path.
///
/// # Errors
/// A message naming the directory or the file when either cannot be written.
pub fn write_report(dir: &Path, sc: &Scenario, r: &SimulationReport) -> Result<PathBuf, String> {
    let path = prepare_report(dir)?;
    std::fs::write(&path, render(sc, r)?)
        .map_err(|x| format!("cannot write {}: {x}", path.display()))?;
    Ok(path)
}

/// Makes sure the report can be written into `dir` before a run starts: creates `dir`
/// (and its parents) and opens `dir/report.html` for writing without changing it.
/// Returns the report's path.
///
/// # Errors
/// A message naming the directory or the file when either cannot be created or written.
pub fn prepare_report(dir: &Path) -> Result<PathBuf, String> {
    prepare_page(dir, "report.html")
}

/// Creates `dir` (and its parents) and opens `dir/file` for writing without changing it,
/// so a page that cannot be written is known before the work that fills it; returns the
/// page's path.
///
/// # Errors
/// A message naming the directory or the file when either cannot be created or written.
pub fn prepare_page(dir: &Path, file: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|x| format!("cannot create {}: {x}", dir.display()))?;
    let path = dir.join(file);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|x| format!("cannot write {}: {x}", path.display()))?;
    Ok(path)
}
