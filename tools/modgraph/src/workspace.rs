//! The crates of a Cargo workspace: member directories from the root manifest, and each
//! member's library and binary roots.
//!
//! Only what the check needs is read: the `members = [...]` list (paths, no globs) and each
//! member's `[package] name`. Test, bench and example targets are not crates of the
//! workspace's code and are not checked.

use std::fs;
use std::path::{Path, PathBuf};

/// One crate to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrateRoot {
    /// `package (lib)` or `package (bin)`.
    pub name: String,
    /// Its root file.
    pub root: PathBuf,
}

/// The quoted strings of the `key = [...]` array in `manifest` (one level, no nesting).
fn string_array(manifest: &str, key: &str) -> Option<Vec<String>> {
    let start = manifest.lines().position(|l| {
        l.trim_start()
            .strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with('='))
    })?;
    let text: String = manifest.lines().skip(start).collect::<Vec<_>>().join("\n");
    let open = text.find('[')?;
    let close = text[open..].find(']')? + open;
    Some(
        text[open + 1..close]
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// The `name` of a member manifest's `[package]`.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some(rest) = line.strip_prefix("name").filter(|_| in_package) {
            return Some(
                rest.trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .trim_matches('"')
                    .to_owned(),
            );
        }
    }
    None
}

/// Every library and binary crate of the workspace rooted at `dir`.
///
/// # Errors
/// A message when a manifest cannot be read or has no member list or package name, or a
/// member is given by a glob.
pub fn crates(dir: &Path) -> Result<Vec<CrateRoot>, String> {
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let manifest = dir.join("Cargo.toml");
    let members = string_array(&read(&manifest)?, "members")
        .ok_or_else(|| format!("{}: no `members` list", manifest.display()))?;
    let mut out = Vec::new();
    for member in members {
        if member.contains('*') {
            return Err(format!(
                "{}: member glob `{member}` is not expanded",
                manifest.display()
            ));
        }
        let mdir = dir.join(&member);
        let mmanifest = mdir.join("Cargo.toml");
        let name = package_name(&read(&mmanifest)?)
            .ok_or_else(|| format!("{}: no package name", mmanifest.display()))?;
        for (file, kind) in [("src/lib.rs", "lib"), ("src/main.rs", "bin")] {
            let root = mdir.join(file);
            if root.is_file() {
                out.push(CrateRoot {
                    name: format!("{name} ({kind})"),
                    root,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_and_names() {
        let ws = "[workspace]\nmembers = [\"a\",\n  \"crates/b\", ]\nexclude = [\"c\"]\n";
        assert_eq!(string_array(ws, "members").unwrap(), ["a", "crates/b"]);
        let m = "[package]\nname = \"x-y\"\n[dependencies]\nname = \"no\"\n";
        assert_eq!(package_name(m).as_deref(), Some("x-y"));
    }
}
