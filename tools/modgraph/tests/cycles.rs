//! The checker on fixtures with known cycles (the controls that show it can fail), on one
//! without, and on this workspace.

use std::path::{Path, PathBuf};

use modgraph::{check_crate, describe, workspace, Cycle};

fn fixture(name: &str) -> Vec<Cycle> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .join("src/lib.rs");
    check_crate(&root).unwrap()
}

fn members(c: &Cycle) -> Vec<&str> {
    c.members.iter().map(String::as_str).collect()
}

fn edges(c: &Cycle) -> Vec<(&str, &str)> {
    c.edges
        .iter()
        .map(|(a, b, _)| (a.as_str(), b.as_str()))
        .collect()
}

#[test]
fn reports_a_direct_cycle() {
    let cycles = fixture("direct");
    assert_eq!(cycles.len(), 1);
    assert!(cycles[0].parent.is_empty());
    assert_eq!(members(&cycles[0]), ["a", "b"]);
    assert_eq!(edges(&cycles[0]), [("a", "b"), ("b", "a")]);
    let (_, _, e) = &cycles[0].edges[1];
    assert_eq!((e.path.as_str(), e.line), ("super::a::A", 2));
    assert!(e.file.ends_with("direct/src/b.rs"));
}

#[test]
fn reports_a_cycle_through_a_third_module_and_a_reexport() {
    let cycles = fixture("through_third");
    assert_eq!(cycles.len(), 1);
    assert_eq!(members(&cycles[0]), ["a", "b", "c"]);
    assert_eq!(edges(&cycles[0]), [("a", "b"), ("b", "c"), ("c", "a")]);
    let text = describe(&cycles[0], Path::new(env!("CARGO_MANIFEST_DIR")));
    assert!(
        text.contains("c -> a: `crate::A` in `crate::c` (tests/fixtures/through_third/src/c.rs:1)"),
        "{text}"
    );
}

#[test]
fn reports_a_cycle_through_a_grouped_use() {
    let cycles = fixture("grouped");
    assert_eq!(cycles.len(), 1);
    assert_eq!(members(&cycles[0]), ["x", "y"]);
    assert_eq!(edges(&cycles[0]), [("x", "y"), ("y", "x")]);
    assert_eq!(cycles[0].edges[0].2.path, "crate::y::self");
}

#[test]
fn accepts_an_acyclic_crate() {
    assert_eq!(fixture("acyclic"), []);
}

/// The real workspace: every crate, the core included, is free of cycles.
#[test]
fn workspace_crates_have_no_import_cycles() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let crates = workspace::crates(&dir).unwrap();
    assert!(crates.len() >= 5, "{crates:?}");
    for c in &crates {
        let cycles = check_crate(&c.root).unwrap();
        let text: String = cycles.iter().map(|cy| describe(cy, &dir)).collect();
        assert!(cycles.is_empty(), "{}:\n{text}", c.name);
    }
}
