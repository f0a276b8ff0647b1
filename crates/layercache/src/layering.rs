//! Tests that keep the crate's shape true (and the source walk the telemetry test shares): no import cycle between its top-level modules, and
//! no source file over 500 lines outside its tests (see the architecture section of the crate
//! docs).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Every `.rs` file under `src/`, with the top-level module it belongs to.
pub(crate) fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .map(|f| {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let top = rel
                .split('/')
                .next()
                .unwrap()
                .trim_end_matches(".rs")
                .to_owned();
            (top, f)
        })
        .collect()
}

/// The code of a file without its tests and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| l.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The crate's own modules a piece of code names: `crate::name` and the first segment of each
/// item of a `use crate::{…}` group.
fn named_modules(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut note = |name: &str| {
        let name = match name {
            "LayerCache" => "cache",
            "LayerCacheBuilder" => "builder",
            "Region" | "RegionBuilder" => "region",
            other => other,
        };
        if modules.contains(name) {
            found.insert(name.to_owned());
        }
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0usize;
            let mut item = String::new();
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        note(item.trim().split("::").next().unwrap_or_default());
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(ch);
                }
            }
            note(item.trim().split("::").next().unwrap_or_default());
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            note(&name);
        }
    }
    found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let files = sources();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, path) in &files {
        if module == "lib" || module == "layering" {
            continue;
        }
        let mut named = named_modules(&code(path), &modules);
        named.remove(module);
        named.remove("lib");
        graph.entry(module.clone()).or_default().extend(named);
    }
    assert!(graph.len() > 20, "the scan found too little: {graph:?}");
    // Depth-first search for a back edge; report the cycle it closes.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = path.iter().position(|p| p == m) {
            panic!("module cycle: {} -> {m}", path[at..].join(" -> "));
        }
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(m.to_owned());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_import_scan_finds_grouped_and_path_imports() {
    let modules: BTreeSet<String> = ["a", "b"].iter().map(|s| (*s).to_owned()).collect();
    let named = named_modules("use crate::{a::X, b};\nlet x = crate::a::y();", &modules);
    assert_eq!(named.len(), 2, "{named:?}");
}

#[test]
fn no_source_file_is_over_500_lines_outside_its_tests() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter_map(|(_, path)| {
            let text = std::fs::read_to_string(&path).unwrap();
            let lines = text
                .split("#[cfg(test)]")
                .next()
                .unwrap_or_default()
                .lines()
                .count();
            (lines > 500).then(|| format!("{}: {lines}", path.display()))
        })
        .collect();
    assert!(long.is_empty(), "over 500 lines: {long:?}");
}
