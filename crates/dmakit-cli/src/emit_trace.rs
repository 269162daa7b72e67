//! `dmakit simulate --emit-trace FILE`: the mappings of one policy's run written as the
//! kernel's `trace` file, for `dmakit replay` (which replays it to the run's own counts).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use dmakit_scenario::trace::emit::write_log;
use dmakit_scenario::{Policy, Scenario, SimulationReport};

/// The trace file, opened before the run so a bad path fails at once.
pub struct TraceFile {
    path: PathBuf,
    out: BufWriter<File>,
}

/// The policy whose mappings are written: `exact` when it runs, else the first.
pub fn policy_to_log(policies: &[Policy]) -> Option<Policy> {
    policies
        .iter()
        .copied()
        .find(|&p| p == Policy::Exact)
        .or_else(|| policies.first().copied())
}

/// Creates (truncates) `path`.
///
/// # Errors
/// A message naming the file when it cannot be created.
pub fn create(path: &Path) -> Result<TraceFile, String> {
    let file = File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(TraceFile {
        path: path.to_path_buf(),
        out: BufWriter::new(file),
    })
}

/// Writes the logged run of `report` into `t`; returns the policy written.
///
/// # Errors
/// A message naming the file when writing fails.
pub fn write(mut t: TraceFile, sc: &Scenario, report: &SimulationReport) -> Result<String, String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", t.path.display());
    let Some(p) = report.policies.iter().find(|p| p.mapping_log.is_some()) else {
        return Err("no policy logged its mappings".into());
    };
    if let Some(log) = &p.mapping_log {
        write_log(&mut t.out, sc, log).map_err(fail)?;
    }
    t.out.flush().map_err(fail)?;
    Ok(p.name.clone())
}
