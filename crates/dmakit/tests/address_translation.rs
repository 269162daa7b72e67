//! Address discipline: in the core, a `PhysAddr` becomes a `DmaAddr` or back only in
//! `src/translation.rs`.
//!
//! The types cannot prevent it cheaply (each exposes its raw `u64` and is built from one),
//! so this test scans the crate's sources. Outside `translation.rs`, the argument of a
//! `DmaAddr::new(` or `PhysAddr::new(` call never contains `.as_u64()`: an address's raw
//! value is never wrapped again inline, which is what a raw conversion looks like. It is
//! a text scan, not a type check, so it also refuses an inline rewrap within one address
//! space (such arithmetic names its raw result first), and it cannot see a conversion
//! laundered through a `u64` variable or parameter, or through the arithmetic methods
//! (`DmaAddr::ZERO.add(phys.as_u64())`). Comment lines are skipped.

use std::fs;
use std::path::{Path, PathBuf};

/// The constructors whose argument must not be another address's raw value.
const CONSTRUCTORS: [&str; 2] = ["DmaAddr::new(", "PhysAddr::new("];

/// The one file allowed to convert.
const TRANSLATION: &str = "translation.rs";

/// The 1-based lines of `source` at which a constructor's argument holds `.as_u64()`.
fn raw_rewraps(source: &str) -> Vec<usize> {
    // Blank the comment lines, keeping the line numbers.
    let code = source
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut lines = Vec::new();
    for ctor in CONSTRUCTORS {
        for (at, _) in code.match_indices(ctor) {
            if argument(&code[at + ctor.len()..]).contains(".as_u64()") {
                lines.push(code[..at].matches('\n').count() + 1);
            }
        }
    }
    lines.sort_unstable();
    lines
}

/// The text up to the parenthesis closing a call whose opening one precedes `rest` (all of
/// `rest` if it never closes).
fn argument(rest: &str) -> &str {
    let mut depth = 1usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &rest[..i];
                }
            }
            _ => {}
        }
    }
    rest
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn only_the_translation_module_converts_between_the_address_spaces() {
    let mut files = Vec::new();
    sources(&src(), &mut files);
    assert!(files.len() > 50, "the scan found the sources");
    let mut found = Vec::new();
    for file in files {
        if file == src().join(TRANSLATION) {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for line in raw_rewraps(&text) {
            found.push(format!("{}:{line}", file.display()));
        }
    }
    assert!(
        found.is_empty(),
        "raw conversions between PhysAddr and DmaAddr outside {TRANSLATION} \
         (use translation::bus_of / phys_of_bus): {found:#?}"
    );
}

#[test]
fn control_the_scan_flags_raw_rewraps() {
    let flagged = "\
let dma = DmaAddr::new(phys.as_u64());
let slot = crate::addr::PhysAddr::new(
    s.dma.as_u64(),
);
let end = DmaAddr::new(r.start().as_u64() + (len - 1));
";
    assert_eq!(raw_rewraps(flagged), [1, 2, 5]);
    // The translation module's own conversions are what the scan sees.
    let translation = fs::read_to_string(src().join(TRANSLATION)).unwrap();
    assert_eq!(raw_rewraps(&translation).len(), 2);
}

#[test]
fn control_the_scan_passes_what_is_not_a_rewrap() {
    let clean = "\
let key = DmaAddr::new(at);
let r = PhysRange::new(PhysAddr::new(a), b.as_u64());
/// DmaAddr::new(phys.as_u64()) in a doc comment
    // PhysAddr::new(dma.as_u64()) in a comment
let dma = bus_of(phys);
";
    assert!(raw_rewraps(clean).is_empty());
}
