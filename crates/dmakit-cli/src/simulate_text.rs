//! The text output of `dmakit simulate`: the headline, the trade-off at the machine's
//! scale, the run's own counts, the top bounce sites and the verdicts, in 100 columns
//! unless `--wide`.

use std::fmt::Write as _;

use comfy_table::{CellAlignment, Table};
use dmakit_scenario::refill::PoolGrowth;
use dmakit_scenario::units::format_bytes;
use dmakit_scenario::{Scenario, SimulationReport};

use crate::bounce_cost::HostCost;
use crate::table::{self, count, wrap};
use crate::verdict::Verdict;

/// A table whose columns marked wide-only appear only with `--wide`.
struct Columns<'a> {
    wide: bool,
    header: Vec<&'a str>,
    rows: Vec<Vec<String>>,
    keep: Vec<bool>,
}

impl<'a> Columns<'a> {
    fn new(columns: &[(&'a str, bool)], wide: bool) -> Self {
        Columns {
            wide,
            header: columns.iter().map(|c| c.0).collect(),
            rows: Vec::new(),
            keep: columns.iter().map(|&(_, w)| wide || !w).collect(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn table(self) -> Table {
        let pick = |v: Vec<String>, keep: &[bool]| {
            v.into_iter()
                .zip(keep)
                .filter_map(|(c, &k)| k.then_some(c))
                .collect::<Vec<_>>()
        };
        let header: Vec<&str> = self
            .header
            .iter()
            .zip(&self.keep)
            .filter_map(|(h, &k)| k.then_some(*h))
            .collect();
        let mut t = table::fitted(&header, self.wide);
        for r in self.rows {
            t.add_row(pick(r, &self.keep));
        }
        t
    }
}

/// The whole text output of a run.
pub fn render(
    sc: &Scenario,
    r: &SimulationReport,
    cost: &HostCost,
    transfers: u64,
    wide: bool,
) -> String {
    let mut o = String::new();
    let line = |o: &mut String, text: &str| {
        let _ = writeln!(o, "{}", wrap(text, 2, wide));
    };
    line(
        &mut o,
        &format!(
            "scenario {} ({}), seed {}, {} transfers per policy",
            sc.name,
            sc.description,
            r.seed,
            count(transfers)
        ),
    );
    line(&mut o, &format!("kmalloc sizes from {}", r.slabinfo));
    line(&mut o, &cost.describe());
    let s = &r.machine_scale;
    o.push('\n');
    line(
        &mut o,
        &format!(
            "8-byte kmalloc saves {} ({:.1} %) on this slabinfo: its {} live kmalloc objects \
             take {} at 8-byte alignment, {} at {}.",
            format_bytes(s.saved_bytes),
            s.saved_percent,
            count(s.objects),
            format_bytes(s.min_align_8_bytes),
            format_bytes(s.line_aligned_bytes),
            s.line
        ),
    );
    let counted = r
        .policies
        .first()
        .map_or(0, |p| p.per_second.drivers_counted);
    let rated = format!(
        "\nAt the machine's scale: kmalloc of the slabinfo's objects (\"kmalloc run\": the \
         run's {} background objects); bounce pool reserved and its peak use; per second at the drivers' rates ({counted} of {} \
         drivers have one).",
        count(sc.churn.live_objects),
        sc.drivers.len()
    );
    line(&mut o, &rated);
    let mut t = Columns::new(
        &[
            ("policy", false),
            ("min\nalign", true),
            ("kmalloc\nslabinfo", false),
            ("kmalloc\nrun", true),
            ("pool\nreserved", false),
            ("pool\npeak", false),
            ("bounces/s", false),
            ("copied\nMiB/s", false),
            ("CPU\nms/s", false),
            ("CPU %", true),
            ("corrupted\nbytes", false),
        ],
        wide,
    );
    for (p, v) in r.policies.iter().zip(Verdict::all(r, cost)) {
        let k = s.of(&p.name);
        t.row(vec![
            p.name.clone(),
            k.map_or_else(|| "?".into(), |k| format!("{} B", k.min_align)),
            k.map_or_else(|| "?".into(), |k| format_bytes(k.kmalloc_bytes)),
            format_bytes(p.kmalloc_bytes),
            format_bytes(p.bounce_pool_bytes),
            format_bytes(p.pool_high_water_bytes),
            count(p.per_second.bounces.round() as u64),
            format!("{:.1}", p.per_second.bytes_copied / 1048576.0),
            format!("{:.2}", v.cpu_ns_per_second / 1e6),
            format!("{:.3}", v.cpu_ns_per_second / 1e7),
            count(p.corrupted_bytes),
        ]);
    }
    let _ = writeln!(o, "{}", t.table());
    let _ = writeln!(o, "\nIn the run:");
    let mut t = Columns::new(
        &[
            ("policy", false),
            ("transfers", true),
            ("bounced:\nmisaligned", false),
            ("above\nmask", false),
            ("untrusted", false),
            ("bytes\ncopied", false),
            ("stale\nbytes", false),
            ("leaked\nbytes", false),
            ("pool\npeak", true),
            ("pool\nfull", false),
        ],
        wide,
    );
    for p in &r.policies {
        let reason = |k: &str| count(p.bounces.get(k).copied().unwrap_or(0));
        t.row(vec![
            p.name.clone(),
            count(p.transfers),
            reason("misaligned"),
            reason("above-mask"),
            reason("untrusted"),
            format_bytes(p.bounced_bytes),
            count(p.stale_bytes),
            count(p.leaked_bytes),
            format_bytes(p.pool_high_water_bytes),
            count(p.pool_exhausted),
        ]);
    }
    let _ = writeln!(o, "{}", t.table());
    for p in &r.policies {
        if let Some(g) = &p.pool_growth {
            line(&mut o, &growth_line(&p.name, g, p.pool_exhausted));
        }
        if p.map_errors > 0 {
            let first = p.first_map_error.as_deref().unwrap_or("?");
            let text = format!(
                "{}: {} mappings failed (first: {first})",
                p.name,
                count(p.map_errors)
            );
            line(&mut o, &text);
        }
        if let Some(first) = p.first_errors.first() {
            line(&mut o, &format!("{}: first wrong byte: {first}", p.name));
        }
    }
    let exact = r.policies.iter().find(|p| p.name == "exact");
    if let Some(p) = exact.filter(|p| !p.top_sites.is_empty()) {
        let _ = writeln!(o, "\nTop bounce sites under exact:");
        let mut t = table::fitted(&["site", "bounces", "bytes", "suggestion"], wide);
        if let Some(c) = t.column_mut(3) {
            c.set_cell_alignment(CellAlignment::Left);
        }
        for site in &p.top_sites {
            t.add_row(vec![
                site.site.clone(),
                count(site.bounces),
                format_bytes(site.bytes),
                site.suggestion.clone(),
            ]);
        }
        let _ = writeln!(o, "{t}");
    }
    let _ = writeln!(
        o,
        "\nVerdict (kmalloc saved on this slabinfo, CPU paid, bytes corrupted, mappings failed):"
    );
    let verdicts = Verdict::all(r, cost);
    let width = verdicts.iter().map(|v| v.policy.len()).max().unwrap_or(0);
    for v in &verdicts {
        line(&mut o, &format!("  {}", v.line(width)));
    }
    o
}

/// How a growable pool grew: its size over time, and the mappings that found it full.
fn growth_line(policy: &str, g: &PoolGrowth, full: u64) -> String {
    let sizes: Vec<String> = g
        .size_over_time
        .iter()
        .map(|&(at, bytes)| format!("{} at {}", format_bytes(bytes), count(at)))
        .collect();
    format!(
        "{policy}: the refill worker grew the pool {} times ({} failed), size by transfers \
         done: {}; {} mappings found it full",
        count(g.growth_events),
        count(g.growth_failures),
        sizes.join(", "),
        count(full)
    )
}
