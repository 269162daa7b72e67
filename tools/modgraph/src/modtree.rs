//! The module tree of one crate and the paths each module names.
//!
//! Starting at the crate root, every `mod NAME;` is followed to `NAME.rs` or `NAME/mod.rs`
//! (beside the root or a `mod.rs`, in a directory named after any other file) and every
//! inline `mod NAME { ... }` becomes a module of its own. Whatever is declared — under
//! `#[cfg]` or not — is part of the tree. Each module records the paths it names: every
//! leaf of its `use` trees (groups expanded), and every `crate::`, `super::` or `self::`
//! path in its code; a `pub use` is also kept as a re-export, so a path through it can be
//! followed to where the item lives.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::lex::{tokens, Tok, Token};

/// A module, by its path from the crate root (the root is the empty path).
pub type ModPath = Vec<String>;

/// A path named in a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// The segments as written (`crate`, `super`, `self` or a name first).
    pub segments: Vec<String>,
    /// The file and line where it is written.
    pub file: PathBuf,
    /// Its line.
    pub line: u32,
}

/// What one module declares and names.
#[derive(Clone, Debug, Default)]
pub struct Module {
    /// Names of its child modules.
    pub children: Vec<String>,
    /// Paths it names.
    pub references: Vec<Reference>,
    /// `pub use` items: the name it exports and the path it was imported from.
    pub reexports: BTreeMap<String, Vec<String>>,
}

/// A crate's modules by path.
#[derive(Clone, Debug, Default)]
pub struct ModTree {
    /// Every module, the root included.
    pub modules: BTreeMap<ModPath, Module>,
}

/// Why a crate's module tree could not be read.
#[derive(Debug)]
pub enum TreeError {
    /// A source file could not be read.
    Read(PathBuf, std::io::Error),
    /// `mod NAME;` with neither `NAME.rs` nor `NAME/mod.rs`.
    MissingModule {
        /// The file that declares it.
        file: PathBuf,
        /// The module's name.
        name: String,
    },
    /// A `#[path]` attribute on a module, which the tool does not follow.
    PathAttribute(PathBuf),
}

impl std::fmt::Display for TreeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TreeError::Read(p, e) => write!(f, "{}: {e}", p.display()),
            TreeError::MissingModule { file, name } => {
                write!(f, "{}: no file for `mod {name};`", file.display())
            }
            TreeError::PathAttribute(p) => {
                write!(f, "{}: `#[path]` on a module is not followed", p.display())
            }
        }
    }
}

impl std::error::Error for TreeError {}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t.map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&Token>, c: char) -> bool {
    matches!(t.map(|t| &t.tok), Some(Tok::Punct(p)) if *p == c)
}

fn is_sep(t: Option<&Token>) -> bool {
    matches!(t.map(|t| &t.tok), Some(Tok::PathSep))
}

/// Whether the `use` at `at` is `pub` or `pub(...)`.
fn is_pub(toks: &[Token], at: usize) -> bool {
    let mut i = at;
    if i > 0 && is(toks.get(i - 1), ')') {
        while i > 0 && !is(toks.get(i - 1), '(') {
            i -= 1;
        }
        i = i.saturating_sub(1);
    }
    i > 0 && ident(toks.get(i - 1)) == Some("pub")
}

/// One leaf of a `use` tree: its full path and the name it binds (none for a glob).
struct UseLeaf {
    segments: Vec<String>,
    name: Option<String>,
    line: u32,
}

/// Parses the use tree at `*i` under `prefix`, up to (not including) the `,`, `}` or `;`
/// that ends it.
fn use_tree(toks: &[Token], i: &mut usize, prefix: &[String], out: &mut Vec<UseLeaf>) {
    let mut segs = prefix.to_vec();
    let line = toks.get(*i).map_or(0, |t| t.line);
    loop {
        match toks.get(*i).map(|t| &t.tok) {
            Some(Tok::PathSep) => *i += 1,
            Some(Tok::Punct('{')) => {
                *i += 1;
                while !is(toks.get(*i), '}') && *i < toks.len() {
                    use_tree(toks, i, &segs, out);
                    if is(toks.get(*i), ',') {
                        *i += 1;
                    }
                }
                *i += 1;
                return;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push(UseLeaf {
                    segments: segs,
                    name: None,
                    line,
                });
                return;
            }
            Some(Tok::Ident(s)) if s != "as" => {
                segs.push(s.clone());
                *i += 1;
                if !is_sep(toks.get(*i)) {
                    break;
                }
            }
            _ => break,
        }
    }
    let mut name = segs.iter().rev().find(|s| *s != "self").cloned();
    if ident(toks.get(*i)) == Some("as") {
        name = ident(toks.get(*i + 1)).map(str::to_owned);
        *i += 2;
    }
    out.push(UseLeaf {
        segments: segs,
        name,
        line,
    });
}

impl ModTree {
    /// Reads the tree of the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`).
    ///
    /// # Errors
    /// [`TreeError`] when a file cannot be read, a declared module has no file, or a module
    /// carries `#[path]`.
    pub fn read(root: &Path) -> Result<Self, TreeError> {
        let mut tree = ModTree::default();
        tree.read_file(root, true, Vec::new())?;
        Ok(tree)
    }

    fn read_file(&mut self, file: &Path, owns_dir: bool, path: ModPath) -> Result<(), TreeError> {
        let src = fs::read_to_string(file).map_err(|e| TreeError::Read(file.to_owned(), e))?;
        let toks = tokens(&src);
        self.modules.entry(path.clone()).or_default();
        // The modules open at this point of the file, with the brace depth each opened at.
        let mut scopes: Vec<(ModPath, usize)> = vec![(path, 0)];
        let mut depth = 0usize;
        let mut i = 0;
        while i < toks.len() {
            let scope = scopes.last().map(|s| s.0.clone()).unwrap_or_default();
            match &toks[i].tok {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    if scopes.len() > 1 && scopes.last().is_some_and(|s| s.1 == depth) {
                        scopes.pop();
                    }
                }
                Tok::Ident(k) if k == "mod" => {
                    if let Some(name) = ident(toks.get(i + 1)) {
                        let name = name.to_owned();
                        let mut child = scope.clone();
                        child.push(name.clone());
                        self.modules
                            .entry(scope.clone())
                            .or_default()
                            .children
                            .push(name.clone());
                        self.modules.entry(child.clone()).or_default();
                        if is(toks.get(i + 2), '{') {
                            depth += 1;
                            scopes.push((child, depth - 1));
                            i += 3;
                            continue;
                        }
                        if has_path_attribute(&toks, i) {
                            return Err(TreeError::PathAttribute(file.to_owned()));
                        }
                        // Children live in the directory a `mod.rs` or the root sits in,
                        // else in one named after the file; then in one per inline module.
                        let mut dir = if owns_dir {
                            file.parent().map(Path::to_path_buf).unwrap_or_default()
                        } else {
                            file.with_extension("")
                        };
                        dir.extend(&scope[scopes[0].0.len()..]);
                        let candidates = [
                            dir.join(format!("{name}.rs")),
                            dir.join(&name).join("mod.rs"),
                        ];
                        match candidates.iter().find(|p| p.is_file()) {
                            Some(p) => {
                                let owns = p.file_name().is_some_and(|n| n == "mod.rs");
                                self.read_file(p, owns, child)?;
                            }
                            None => {
                                return Err(TreeError::MissingModule {
                                    file: file.to_owned(),
                                    name,
                                })
                            }
                        }
                        i += 2;
                        continue;
                    }
                }
                Tok::Ident(k) if k == "use" => {
                    let public = is_pub(&toks, i);
                    i += 1;
                    let mut leaves = Vec::new();
                    use_tree(&toks, &mut i, &[], &mut leaves);
                    let m = self.modules.entry(scope.clone()).or_default();
                    for leaf in leaves {
                        if public {
                            if let Some(n) = &leaf.name {
                                m.reexports.insert(n.clone(), leaf.segments.clone());
                            }
                        }
                        m.references.push(Reference {
                            segments: leaf.segments,
                            file: file.to_owned(),
                            line: leaf.line,
                        });
                    }
                    continue;
                }
                Tok::Ident(k)
                    if matches!(k.as_str(), "crate" | "super" | "self")
                        && is_sep(toks.get(i + 1)) =>
                {
                    let line = toks[i].line;
                    let mut segments = vec![k.clone()];
                    i += 1;
                    while is_sep(toks.get(i)) {
                        match ident(toks.get(i + 1)) {
                            Some(s) => segments.push(s.to_owned()),
                            None => break,
                        }
                        i += 2;
                    }
                    self.modules
                        .entry(scope)
                        .or_default()
                        .references
                        .push(Reference {
                            segments,
                            file: file.to_owned(),
                            line,
                        });
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
        Ok(())
    }
}

/// Whether the `mod` at `at` is preceded, among its attributes, by `#[path ...]`.
fn has_path_attribute(toks: &[Token], at: usize) -> bool {
    let mut i = at;
    while i > 0 {
        i -= 1;
        match &toks[i].tok {
            Tok::Ident(s)
                if s == "pub" || s == "crate" || s == "in" || s == "self" || s == "super" => {}
            Tok::Punct('(' | ')') => {}
            Tok::Punct(']') => {
                // Back to this attribute's `#[`.
                let mut j = i;
                while j > 0 && !is(toks.get(j), '[') {
                    j -= 1;
                }
                if ident(toks.get(j + 1)) == Some("path") {
                    return true;
                }
                i = j.saturating_sub(1);
                if !is(toks.get(i), '#') {
                    return false;
                }
            }
            _ => return false,
        }
    }
    false
}
