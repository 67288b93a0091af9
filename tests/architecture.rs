//! The layer rules of docs/ARCHITECTURE.md, checked on the source itself: every
//! `crate::…` path in the library's code (comments excluded) must point at its own
//! layer or one below it, and the CLI's modules must not import each other in a
//! cycle. A change that breaks a rule fails here with the file and the path.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The library's top-level modules and what each may import, lowest layer first.
/// `lib.rs` and the binary (`main.rs`, `cli/`) stand above all of them.
const LAYERS: &[(&str, &[&str])] = &[
    ("torch", &[]),
    ("error", &["torch"]),
    ("engine", &["error", "torch"]),
    ("analysis", &["engine", "error"]),
    ("recipe", &["engine", "error"]),
    ("method", &["analysis", "engine", "error", "recipe"]),
    ("search", &["analysis", "engine", "error", "method", "recipe"]),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file with `//` comments (doc comments included) and string
/// literals blanked, so prose and messages that mention a module do not count.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_string = false;
        let mut escaped = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                out.push(' ');
                continue;
            }
            if c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
        out.push('\n');
    }
    out
}

/// The first path segment after every `prefix` (`crate::`, `super::`), expanding
/// `prefix{a::b, c}` groups.
fn imported_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[at + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('{') {
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            for item in split_top_level(&group[..end]) {
                if let Some(ident) = leading_ident(item.trim()) {
                    found.insert(ident);
                }
            }
        } else if let Some(ident) = leading_ident(trimmed) {
            found.insert(ident);
        }
    }
    found
}

fn split_top_level(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

fn leading_ident(text: &str) -> Option<String> {
    let ident: String = text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
    (!ident.is_empty() && ident != "self").then_some(ident)
}

/// The top-level module a library file belongs to (`src/engine/plan.rs` →
/// `engine`, `src/error.rs` → `error`); `None` for `lib.rs` and the binary.
fn top_module(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative.components().next()?.as_os_str().to_str()?.to_owned();
    match first.as_str() {
        "lib.rs" | "main.rs" | "cli" => None,
        _ => Some(first.trim_end_matches(".rs").to_owned()),
    }
}

#[test]
fn every_library_module_imports_only_its_own_layer_and_those_below() {
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let Some(module) = top_module(file) else { continue };
        let may = allowed.get(module.as_str()).unwrap_or_else(|| {
            panic!("{}: module {module:?} has no layer in LAYERS", file.display())
        });
        let code = code_only(&fs::read_to_string(file).unwrap());
        for target in imported_after(&code, "crate::") {
            checked += 1;
            let known = allowed.contains_key(target.as_str()) || target == "cli";
            let fine = target == module || may.contains(&target.as_str());
            // Items re-exported at the crate root (`crate::Checkpoint`) belong to
            // the engine or the error type.
            let root_item = target.chars().next().is_some_and(char::is_uppercase);
            let root_layer =
                if target == "Result" || target.ends_with("Error") || target == "Difference" {
                    "error"
                } else {
                    "engine"
                };
            if root_item {
                if module != root_layer && !may.contains(&root_layer) {
                    broken.push(format!("{}: crate::{target} ({root_layer})", file.display()));
                }
            } else if !known || !fine {
                broken.push(format!("{}: crate::{target}", file.display()));
            }
        }
    }
    assert!(checked > 40, "the scan found only {checked} crate paths: is it reading the source?");
    assert!(broken.is_empty(), "imports that break the layer rules:\n{}", broken.join("\n"));
}

#[test]
fn the_cli_modules_import_each_other_without_cycles() {
    let cli = src().join("cli");
    let mut files = Vec::new();
    rust_files(&cli, &mut files);
    // Module name (path under cli/ without extension, `mod.rs` as its folder) →
    // the sibling modules it names through `super::` or `crate::cli::`.
    let name_of = |file: &Path| -> String {
        let relative = file.strip_prefix(&cli).unwrap().with_extension("");
        let mut parts: Vec<String> =
            relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.last().map(String::as_str) == Some("mod") {
            parts.pop();
        }
        parts.join("/")
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let name = name_of(file);
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
        let code = code_only(&fs::read_to_string(file).unwrap());
        let is_folder_module = file.file_name().is_some_and(|f| f == "mod.rs");
        let mut targets = BTreeSet::new();
        for t in imported_after(&code, "super::") {
            // `super` of a folder's mod.rs is the folder's parent.
            let base = if is_folder_module {
                parent.rsplit_once('/').map_or("", |(p, _)| p).to_owned()
            } else {
                parent.clone()
            };
            targets.insert(if base.is_empty() { t } else { format!("{base}/{t}") });
        }
        for t in imported_after(&code, "crate::cli::") {
            targets.insert(t);
        }
        targets.remove(&name);
        targets.retain(|t| !name.starts_with(&format!("{t}/")) && !t.is_empty());
        edges.insert(name, targets);
    }
    // Depth-first search for a back edge.
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    assert!(edges.len() > 5, "found only {} CLI modules", edges.len());
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut Vec::new(), &mut done) {
            panic!("the CLI modules import each other in a cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_scan_sees_grouped_and_nested_imports_and_ignores_comments() {
    let code = code_only(
        "use crate::{engine::plan, search::{a, b}};\n\
         // crate::cli in a comment\n\
         let x = \"crate::method in a string\";\n\
         use crate::recipe::Recipe; fn f() { crate::torch::g(); modelsoup::crate::no(); }\n",
    );
    let found = imported_after(&code, "crate::");
    let expected: BTreeSet<String> =
        ["engine", "search", "recipe", "torch"].iter().map(|s| s.to_string()).collect();
    assert_eq!(found, expected);
}
