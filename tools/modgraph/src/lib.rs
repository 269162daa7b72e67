//! Finds import cycles between sibling modules of the crates of a workspace.
//!
//! Two modules with the same parent that reach each other — directly or through other
//! siblings — cannot be understood, tested or moved one without the other, whatever the
//! compiler allows. This tool reads each crate's module tree from its files ([`modtree`]),
//! records which modules each one names in `use` trees and in `crate::`/`super::`/`self::`
//! paths in code, ignoring comments and literals ([`lex`]), and reports every set of
//! siblings that reach each other ([`graph`]). A child naming its parent is not a cycle.
//!
//! What it does not see: paths that reach another module only through a glob re-export
//! (`pub use a::*`) or a macro expanded elsewhere, and modules placed with `#[path]`
//! (reported as an error rather than skipped).

pub mod graph;
pub mod lex;
pub mod modtree;
pub mod workspace;

use std::fmt::Write as _;
use std::path::Path;

pub use graph::{cycles, Cycle};
pub use modtree::{ModTree, TreeError};

/// The cycles of the crate whose root file is `root`.
///
/// # Errors
/// [`TreeError`] when its module tree cannot be read.
pub fn check_crate(root: &Path) -> Result<Vec<Cycle>, TreeError> {
    Ok(cycles(&ModTree::read(root)?))
}

/// A module path for people: `crate`, `crate::a::b`.
pub fn display_path(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

/// One cycle as a few lines of text, paths relative to `base`.
pub fn describe(cycle: &Cycle, base: &Path) -> String {
    let mut s = format!(
        "under `{}`: {} reach each other\n",
        display_path(&cycle.parent),
        cycle
            .members
            .iter()
            .map(|m| format!("`{m}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (from, to, e) in &cycle.edges {
        let file = e.file.strip_prefix(base).unwrap_or(&e.file);
        let _ = writeln!(
            s,
            "  {from} -> {to}: `{}` in `{}` ({}:{})",
            e.path,
            display_path(&e.from),
            file.display(),
            e.line
        );
    }
    s
}
