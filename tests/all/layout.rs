//! The source's structure, as `//! # Layout` of each crate promises it: no module imports
//! from one that imports it back (directly or around a loop), every module is named in its
//! crate's layout, and no source file outgrows what a reader takes in (~800 lines).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library crates whose modules are checked, from the repository root.
const CRATES: [&str; 3] = ["host/src", "crates/contract/src", "guest-sdk/src"];

/// Longest a source file may be.
const MAX_LINES: usize = 800;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module a file under `src` is (`daemon::batch` for `daemon/batch.rs`, `daemon` for
/// `daemon/mod.rs`), or `None` for the crate root and binaries.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> =
        rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["lib"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests` (tests may
/// reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The module paths a file's code names through `crate::` or `super::` (a `{…}` group gives
/// each of its items, up to a nested group).
fn named_paths(code: &str, me: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", me[..me.len() - 1].to_vec())] {
        let mut rest = code;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(is_ident) {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                for item in inner.split(',') {
                    let path: String =
                        item.trim().chars().take_while(|&c| is_ident(c) || c == ':').collect();
                    let names: Vec<String> =
                        path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
                    if !names.is_empty() {
                        paths.push([base.clone(), names].concat());
                    }
                }
                continue;
            }
            let path: String = rest.chars().take_while(|&c| is_ident(c) || c == ':').collect();
            let names: Vec<String> =
                path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect();
            paths.push([base.clone(), names].concat());
        }
    }
    paths
}

/// Each module of a crate and the modules it imports from (siblings and cousins; a module and
/// its own parent or children are one unit).
fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in &files {
        if let Some(m) = module_of(src, file) {
            modules.insert(m, code(&std::fs::read_to_string(file).unwrap()));
        }
    }
    let names: BTreeSet<Vec<String>> = modules.keys().cloned().collect();
    let resolve = |path: &[String]| {
        (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| names.contains(p))
    };
    let mut graph = BTreeMap::new();
    for (me, code) in &modules {
        let deps: BTreeSet<String> = named_paths(code, me)
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|d| !d.starts_with(me) && !me.starts_with(d))
            .map(|d| d.join("::"))
            .collect();
        graph.insert(me.join("::"), deps);
    }
    graph
}

/// A loop of imports, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_module_imports_from_one_that_imports_it_back() {
    for krate in CRATES {
        let graph = imports(&root().join(krate));
        assert!(graph.len() > 3, "{krate}: modules found: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: an import cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec![])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
            .collect();
    assert_eq!(find_cycle(&graph), Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]));
    let me = ["daemon".to_string(), "batch".to_string()];
    let paths = named_paths("use crate::{fold::X, guest};\nuse super::folder::Y;", &me);
    assert!(paths.contains(&vec!["fold".to_string(), "X".to_string()]), "{paths:?}");
    assert!(paths.contains(&vec!["guest".to_string()]), "{paths:?}");
    assert!(paths.contains(&vec!["daemon".into(), "folder".into(), "Y".into()]), "{paths:?}");
}

#[test]
fn every_module_is_named_in_its_crates_layout() {
    for krate in ["host/src", "crates/contract/src"] {
        let lib = std::fs::read_to_string(root().join(krate).join("lib.rs")).unwrap();
        let layout =
            lib.split("//! # Layout").nth(1).unwrap_or_else(|| panic!("{krate}: no layout"));
        for line in lib.lines() {
            let module = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub use jetfold_contract::"))
                .map(|m| m.trim_end_matches(';'));
            if let Some(module) = module {
                assert!(
                    layout.contains(&format!("[`{module}`]")),
                    "{krate}/lib.rs: `{module}` is not in its # Layout"
                );
            }
        }
    }
}

#[test]
fn no_source_file_is_over_800_lines() {
    let mut files = Vec::new();
    for dir in ["host/src", "host/benches", "crates", "guest-sdk/src", "plugins", "tests"] {
        rust_files(&root().join(dir), &mut files);
    }
    assert!(files.len() > 50, "found {}", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}
