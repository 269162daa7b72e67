//! Sibling edges of a module tree and the cycles among them.
//!
//! A reference from module `m` to module `t` (found by following the path through the
//! tree, and through `pub use` re-exports to where the item lives) joins the two children
//! of their closest common ancestor that contain them: `crate::a::x` naming
//! `crate::b::y` is an edge `a -> b` under the root. A module naming its own ancestor or
//! descendant makes no edge (a child using its parent is no cycle). Siblings that reach
//! each other, directly or through other siblings, form a cycle: a strongly connected
//! component of two or more children of one parent.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::modtree::{ModPath, ModTree, Reference};

/// Where an edge was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The module that names the path.
    pub from: ModPath,
    /// The path as written.
    pub path: String,
    /// Its file.
    pub file: PathBuf,
    /// Its line.
    pub line: u32,
}

/// Siblings under one parent that reach each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// The common parent.
    pub parent: ModPath,
    /// The siblings, sorted.
    pub members: Vec<String>,
    /// Each edge between members (`from -> to`) with the first place it was found.
    pub edges: Vec<(String, String, Evidence)>,
}

/// Follows re-exports this many times at most (a `pub use` loop is a compile error, but
/// the tool must not hang on one).
const MAX_REEXPORT_HOPS: usize = 16;

/// The module `segments`, named in `scope`, leads to: the deepest module on the path, or
/// the module an item re-exported there comes from. `None` for a path outside the crate.
fn resolve(tree: &ModTree, scope: &[String], segments: &[String], hops: usize) -> Option<ModPath> {
    let (mut cur, mut rest): (ModPath, &[String]) = match segments.first()?.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (scope.to_vec(), &segments[1..]),
        "super" => {
            let mut cur = scope.to_vec();
            let mut rest = segments;
            while rest.first().is_some_and(|s| s == "super") {
                cur.pop()?;
                rest = &rest[1..];
            }
            (cur, rest)
        }
        // A bare path is the scope's own child module, or another crate.
        first => {
            let module = tree.modules.get(scope)?;
            if !module.children.iter().any(|c| c == first) {
                return None;
            }
            (scope.to_vec(), segments)
        }
    };
    while let Some(seg) = rest.first() {
        let module = tree.modules.get(&cur)?;
        if module.children.iter().any(|c| c == seg) {
            cur.push(seg.clone());
        } else if let Some(source) = module
            .reexports
            .get(seg)
            .filter(|_| hops < MAX_REEXPORT_HOPS)
        {
            return resolve(tree, &cur, source, hops + 1).or(Some(cur));
        } else {
            break;
        }
        rest = &rest[1..];
    }
    Some(cur)
}

/// Every cycle between sibling modules of `tree`, parents in tree order.
pub fn cycles(tree: &ModTree) -> Vec<Cycle> {
    // parent -> (from child, to child) -> first evidence
    let mut edges: BTreeMap<ModPath, BTreeMap<(String, String), Evidence>> = BTreeMap::new();
    for (from, module) in &tree.modules {
        for Reference {
            segments,
            file,
            line,
        } in &module.references
        {
            let Some(to) = resolve(tree, from, segments, 0) else {
                continue;
            };
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue;
            }
            edges
                .entry(from[..common].to_vec())
                .or_default()
                .entry((from[common].clone(), to[common].clone()))
                .or_insert_with(|| Evidence {
                    from: from.clone(),
                    path: segments.join("::"),
                    file: file.clone(),
                    line: *line,
                });
        }
    }
    let mut out = Vec::new();
    for (parent, pairs) in edges {
        let mut adjacency: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in pairs.keys() {
            adjacency.entry(a).or_default().push(b);
            adjacency.entry(b).or_default();
        }
        for component in strongly_connected(&adjacency) {
            if component.len() < 2 {
                continue;
            }
            let members: Vec<String> = component.iter().map(|s| s.to_string()).collect();
            let edges = pairs
                .iter()
                .filter(|((a, b), _)| members.contains(a) && members.contains(b))
                .map(|((a, b), e)| (a.clone(), b.clone(), e.clone()))
                .collect();
            out.push(Cycle {
                parent: parent.clone(),
                members,
                edges,
            });
        }
    }
    out
}

/// The strongly connected components of a small graph, each sorted (Tarjan's algorithm).
fn strongly_connected<'a>(adjacency: &BTreeMap<&'a str, Vec<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<&'a str>>,
    }
    fn visit<'a>(v: &'a str, adj: &BTreeMap<&'a str, Vec<&'a str>>, st: &mut State<'a>) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        for &w in &adj[v] {
            if !st.index.contains_key(w) {
                visit(w, adj, st);
                let lw = st.low[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if st.stack.contains(&w) {
                let iw = st.index[w];
                let lv = st.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if st.low[v] == st.index[v] {
            let mut component = Vec::new();
            while let Some(w) = st.stack.pop() {
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            st.out.push(component);
        }
    }
    let mut st = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for &v in adjacency.keys() {
        if !st.index.contains_key(v) {
            visit(v, adjacency, &mut st);
        }
    }
    st.out
}
