//! The module map's rules (ARCHITECTURE.md), checked against the code's own imports:
//! no two top-level modules of `src/` name each other, directly or around a loop;
//! handlers (`api`) never name `server`; chores and the volume watcher never name `node`.
//! Read from the source text: every `crate::<module>` path outside comments, including
//! grouped `use crate::{a, b::c}` forms.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read {}: {error}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            source_files(&path, found);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            found.push(path);
        }
    }
}

/// `src/api/blocks.rs` → `api`; `src/node.rs` → `node`.
fn top_module(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component");
    first.as_os_str().to_string_lossy().trim_end_matches(".rs").to_string()
}

/// Code of a line without its `//` comment (string literals holding `//` are rare enough
/// in this code base to be ignored).
fn code_of(line: &str) -> &str {
    line.split("//").next().unwrap_or("")
}

/// Top-level modules named by `crate::` paths in `text`.
fn named_modules(text: &str) -> BTreeSet<String> {
    let code: String = text.lines().map(code_of).collect::<Vec<_>>().join("\n");
    let mut names = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.insert(first_ident(&item));
            rest = &group[end.min(group.len())..];
        } else {
            names.insert(first_ident(rest));
        }
    }
    names.remove("");
    names
}

fn first_ident(text: &str) -> String {
    text.trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Module → the other top-level modules its files name; also file → modules it names.
fn module_graph() -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, BTreeSet<String>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_file = BTreeMap::new();
    for file in files {
        let module = top_module(&src, &file);
        if module == "main" || module == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        let named: BTreeSet<String> = named_modules(&text)
            .into_iter()
            .filter(|name| *name != module)
            .collect();
        graph.entry(module).or_default().extend(named.iter().cloned());
        let relative = file.strip_prefix(&src).expect("under src").display().to_string();
        by_file.insert(relative, named);
    }
    (graph, by_file)
}

/// A path from `from` back to itself through `graph`, if there is one.
fn loop_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_string(), vec![from.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == from {
                let mut found = path.clone();
                found.push(next.clone());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn the_parser_reads_single_and_grouped_paths() {
    let text = "use crate::a::b;\nuse crate::{c, d::{e, f}, g::h};\n// crate::commented\nlet x = crate::i::j();\n";
    let names: Vec<String> = named_modules(text).into_iter().collect();
    assert_eq!(names, ["a", "c", "d", "g", "i"]);
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let (graph, _) = module_graph();
    assert!(graph.len() > 10, "src/ not read: {graph:?}");
    let loops: Vec<String> = graph
        .keys()
        .filter_map(|module| loop_through(&graph, module))
        .map(|path| path.join(" -> "))
        .collect();
    assert!(loops.is_empty(), "module cycles:\n{}", loops.join("\n"));
}

#[test]
fn handlers_never_name_the_server_and_chores_never_name_the_node() {
    let (graph, by_file) = module_graph();
    assert!(!graph["api"].contains("server"), "api names server: {:?}", graph["api"]);
    assert!(
        !graph["chores"].contains("node"),
        "chores name node: {:?}",
        graph["chores"]
    );
    let watcher = &by_file["volumes/watcher.rs"];
    assert!(!watcher.contains("node"), "the watcher names node: {watcher:?}");
}

#[test]
fn the_s3_client_names_only_the_leaves_it_may_use() {
    let (graph, _) = module_graph();
    let allowed: BTreeSet<String> = ["limits", "error", "chunked", "tls"]
        .into_iter()
        .map(String::from)
        .collect();
    let beyond: Vec<&String> = graph["s3"].difference(&allowed).collect();
    assert!(
        beyond.is_empty(),
        "s3 names {beyond:?} (it may use only limits, error, chunked and tls)"
    );
}
