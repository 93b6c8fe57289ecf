//! The library's layers point one way, down: a module may name only its own layer and the
//! layers below it (ARCHITECTURE.md, "Layers"). This test reads every source file of the
//! library and fails on an import that runs back up — say, anything under `src/storage/`
//! naming a service — so the layering cannot rot unnoticed.
//!
//! It reads the source as text: comments are dropped, then every `crate::<module>` path
//! (grouped imports `crate::{a, b}` included) and every `super::<module>` of a file one folder
//! down is checked against [`LAYERS`]; unit tests at the end of a file are not. The binaries (`main.rs`, `cli/`, `bin/`) sit on top of
//! everything and are not checked.

use std::path::Path;

/// Each top-level module of the library, by layer, lowest first. A module may name modules of
/// its own layer or of any layer below, except the pairs in [`SIBLINGS_APART`].
const LAYERS: &[&[&str]] = &[
    &["model", "limits"],
    &["error", "coalesce"],
    &["storage", "crypto"],
    &["core"],
    &["services"],
    &["store"],
    &["http", "server"],
];

/// Modules of one layer that must not name each other: the event database and the keys stay
/// apart, so that storage never sees key bytes and crypto never builds SQL.
const SIBLINGS_APART: &[(&str, &str)] = &[("storage", "crypto"), ("crypto", "storage")];

/// The model layer names nothing but itself and the limits (no errors above it, no I/O).
const MODEL_MAY_NAME: &[&str] = &["model", "limits"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The library module a file belongs to, and its sub-module (a file in a folder, or a
/// folder's `mod.rs`), from its path relative to `src/`. `None` for files outside the layers.
fn module_of(relative: &str) -> Option<(String, Option<String>)> {
    let relative = relative.trim_end_matches(".rs");
    if relative == "lib" || relative == "main" || relative.starts_with("bin/") || relative.starts_with("cli/") {
        return None;
    }
    let mut parts = relative.split('/');
    let top = parts.next()?.to_owned();
    let sub = parts.next().filter(|s| *s != "mod").map(str::to_owned);
    Some((top, sub))
}

/// Source text without comments (line comments, doc comments, block comments).
fn strip_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut in_block = 0;
    for line in source.lines() {
        let mut rest = line;
        loop {
            if in_block > 0 {
                match rest.find("*/") {
                    Some(end) => {
                        in_block -= 1;
                        rest = &rest[end + 2..];
                    }
                    None => break,
                }
            } else if let Some(start) = rest.find("/*").filter(|s| rest.find("//").is_none_or(|c| *s < c)) {
                out.push_str(&rest[..start]);
                in_block += 1;
                rest = &rest[start + 2..];
            } else {
                out.push_str(rest.split("//").next().unwrap_or(""));
                break;
            }
        }
        out.push('\n');
    }
    out
}

fn identifier_at(text: &str) -> String {
    text.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Every module a file names through `crate::…`, and through `super::…` when it is a file one
/// folder down (its `super` is its own top-level module, whose siblings it may then name).
fn named_modules(source: &str, sub: Option<&str>) -> Vec<String> {
    // Unit tests (`#[cfg(test)] mod tests`, at the end of a file) are not part of the library.
    let text = strip_comments(source.split("#[cfg(test)]").next().unwrap_or(source));
    let mut named = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        if text[..at].ends_with('$') {
            continue; // `$crate::` in a macro: the crate that defines the macro.
        }
        let after = &text[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            named.extend(inner.split(',').map(|item| identifier_at(item.trim())));
        } else {
            named.push(identifier_at(after));
        }
    }
    if sub.is_some() {
        // `super::x` inside `top/sub.rs` is `crate::top::x`: a sibling sub-module. Recorded as
        // `::x` so that the caller can tell it from a top-level module.
        for (at, _) in text.match_indices("super::") {
            let after = &text[at + "super::".len()..];
            if after.starts_with("super::") {
                named.push("<crate root via super::super>".to_owned());
            } else {
                named.push(format!("::{}", identifier_at(after)));
            }
        }
    }
    named.retain(|name| !name.is_empty());
    named
}

/// The items `lib.rs` re-exports at the crate root (`pub use module::{A, B};`), with the module
/// each comes from, so that `crate::Error` counts as naming `error`.
fn root_reexports(lib: &str) -> Vec<(String, String)> {
    let text = strip_comments(lib).replace('\n', " ");
    let mut items = Vec::new();
    for statement in text.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = identifier_at(path);
        let rest = &path[module.len()..];
        let names = match rest.find('{') {
            Some(open) => rest[open + 1..rest.find('}').unwrap_or(rest.len())].to_owned(),
            None => rest.rsplit("::").next().unwrap_or("").to_owned(),
        };
        for name in names
            .split(',')
            .map(|n| identifier_at(n.trim()))
            .filter(|n| !n.is_empty())
        {
            items.push((name, module.clone()));
        }
    }
    items
}

/// What is wrong with a file of module `top` (sub-module `sub`) naming what it names; `root`
/// resolves the crate root's re-exports ([`root_reexports`]).
fn violations(relative: &str, source: &str, root: &[(String, String)]) -> Vec<String> {
    let Some((top, sub)) = module_of(relative) else {
        return Vec::new();
    };
    let Some(own_layer) = layer_of(&top) else {
        return vec![format!(
            "{relative}: module `{top}` is in no layer (add it to LAYERS in tests/it/layers.rs)"
        )];
    };
    let mut found = Vec::new();
    for name in named_modules(source, sub.as_deref()) {
        if let Some(sibling) = name.strip_prefix("::") {
            // One service never names another: the façade puts them side by side.
            if top == "services" && Some(sibling) != sub.as_deref() {
                found.push(format!(
                    "{relative}: a service names another service (`super::{sibling}`)"
                ));
            }
            continue;
        }
        if name == "services" && top == "services" {
            found.push(format!("{relative}: a service names the services (`crate::services`)"));
            continue;
        }
        let name = match root.iter().find(|(item, _)| *item == name) {
            Some((_, module)) => module.clone(),
            None => name,
        };
        let Some(layer) = layer_of(&name) else {
            found.push(format!(
                "{relative}: names `crate::{name}`, neither a module of a layer nor a re-export"
            ));
            continue;
        };
        if layer > own_layer {
            found.push(format!(
                "{relative}: `{top}` (layer {own_layer}) names `{name}` (layer {layer}), above it"
            ));
        }
        if SIBLINGS_APART.contains(&(top.as_str(), name.as_str())) {
            found.push(format!(
                "{relative}: `{top}` names `{name}`, which it must stay apart from"
            ));
        }
        if layer_of(&top) == Some(0) && !MODEL_MAY_NAME.contains(&name.as_str()) {
            found.push(format!("{relative}: the model layer names `{name}`"));
        }
    }
    found
}

fn source_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let root = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs"));
    assert!(
        root.iter()
            .any(|(item, module)| item == "EventStore" && module == "store")
    );
    let mut found = Vec::new();
    let mut checked = 0;
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        if module_of(&relative).is_some() {
            checked += 1;
        }
        let source = std::fs::read_to_string(path).expect("read a source file");
        found.extend(violations(&relative, &source, &root));
    }
    assert!(
        checked >= 30,
        "only {checked} library files were found under {}",
        src.display()
    );
    assert!(
        found.is_empty(),
        "imports that run up the layers:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_catches_imports_that_run_up() {
    let root = root_reexports("pub use error::{Error, StorageError};\npub use store::{EventStore, StoreConfig};");
    let check = |path: &str, source: &str| violations(path, source, &root);
    // Storage naming a service, the façade or HTTP; the model naming errors; crypto and storage
    // naming each other; one service naming another; a crate-root re-export.
    assert_eq!(
        check("storage/sqlite.rs", "use crate::services::erasure::drive;").len(),
        1
    );
    assert_eq!(check("storage/mod.rs", "let s: crate::store::EventStore;").len(), 1);
    assert_eq!(check("core/append.rs", "use crate::{http, model};").len(), 1);
    assert_eq!(check("model/event.rs", "use crate::error::Error;").len(), 2);
    assert_eq!(check("crypto.rs", "use crate::storage::StoredEvent;").len(), 1);
    assert_eq!(check("services/export.rs", "use super::erasure::drive;").len(), 1);
    assert_eq!(check("services/export.rs", "use crate::services::erasure;").len(), 1);
    assert_eq!(check("storage/sql.rs", "let s: crate::EventStore;").len(), 1);
    assert_eq!(check("storage/sql.rs", "use crate::Unknown;").len(), 1);
    // What may be named: anything below, its own module, comments.
    assert!(check("services/export.rs", "use crate::core::Core; use super::export::x;").is_empty());
    assert!(check("http/admin.rs", "use crate::{model, store, services};").is_empty());
    assert!(
        check(
            "storage/sql.rs",
            "// crate::services::erasure is above\nuse crate::model::X;"
        )
        .is_empty()
    );
    assert!(check("storage/sql.rs", "use crate::Error;").is_empty());
    assert!(check("main.rs", "use crate::whatever;").is_empty());
}
