//! The library's layers point one way, down: a module may name only its own layer and the
//! layers below it (ARCHITECTURE.md, "Layers"). This test parses every source file of the
//! library (with `syn`) and fails on a path that runs back up — say, anything under
//! `src/storage/` naming a service — so the layering cannot rot unnoticed.
//!
//! Every `use` tree and every path in a file is resolved against the file's own module:
//! `crate::…`, `super::…` (any number) and `self::…`; a crate-root re-export (`crate::Error`)
//! counts as naming the module it comes from, and a glob of the crate root is refused (it
//! would hide what it brings in). Unit-test modules (`#[cfg(test)]`) are not part of the
//! library and are not checked. The binaries (`main.rs`, `cli/`, `bin/`) sit on top of
//! everything and are not checked either.

use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Each top-level module of the library, by layer, lowest first. A module may name modules of
/// its own layer or of any layer below, within the rules below.
const LAYERS: &[&[&str]] = &[
    &["model", "limits"],
    &["error", "coalesce", "collections"],
    &["storage", "crypto", "journal"],
    &["core"],
    &["services"],
    &["store"],
    &["http", "server"],
];

/// Modules of one layer that must not name each other: the event database and the keys stay
/// apart, so that storage never sees key bytes and crypto never builds SQL; the erasure journal
/// (ids only) names neither.
const SIBLINGS_APART: &[(&str, &str)] = &[
    ("storage", "crypto"),
    ("crypto", "storage"),
    ("journal", "storage"),
    ("journal", "crypto"),
];

/// The model layer names nothing but itself and the limits (no errors above it, no I/O).
const MODEL_MAY_NAME: &[&str] = &["model", "limits"];

/// The edges reach the store through its façade: HTTP and the server name no service, no core
/// and no storage.
const EDGES_MAY_NAME: &[&str] = &["http", "server", "store", "model", "error", "limits"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The module path of a library file from its path relative to `src/` (`storage/sql.rs` is
/// `storage::sql`, `storage/mod.rs` is `storage`). `None` for the crate root and the binaries.
fn module_path(relative: &str) -> Option<Vec<String>> {
    let relative = relative.trim_end_matches(".rs");
    if relative == "lib" || relative == "main" || relative.starts_with("bin/") || relative.starts_with("cli/") {
        return None;
    }
    let mut path: Vec<String> = relative.split('/').map(str::to_owned).collect();
    if path.last().is_some_and(|last| last == "mod") {
        path.pop();
    }
    Some(path)
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg") && attr.parse_args::<syn::Ident>().is_ok_and(|arg| arg == "test")
            || attr.path().is_ident("test")
    })
}

/// The paths of a `use` tree, each as its segments (`*` for a glob).
fn flatten(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(path) => {
            prefix.push(path.ident.to_string());
            flatten(&path.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(name) => out.push([prefix.as_slice(), &[name.ident.to_string()]].concat()),
        syn::UseTree::Rename(rename) => out.push([prefix.as_slice(), &[rename.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push([prefix.as_slice(), &["*".to_owned()]].concat()),
        syn::UseTree::Group(group) => group.items.iter().for_each(|item| flatten(item, prefix, out)),
    }
}

/// Collects every crate-relative path a file names, resolved to an absolute module path.
struct Names {
    /// The module the visitor is in (the file's, plus inline modules).
    module: Vec<String>,
    named: Vec<Vec<String>>,
    /// Paths that cannot be resolved (`super` past the crate root).
    unresolved: Vec<String>,
}

impl Names {
    fn resolve(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let absolute = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => [self.module.as_slice(), &segments[1..]].concat(),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let Some(base) = self.module.len().checked_sub(ups) else {
                    self.unresolved.push(segments.join("::"));
                    return;
                };
                [&self.module[..base], &segments[ups..]].concat()
            }
            // An external crate, or an item in scope: a crate-relative one was named by the
            // `use` that brought it into scope.
            _ => return,
        };
        self.named.push(absolute);
    }
}

impl<'ast> Visit<'ast> for Names {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if is_test_only(&item.attrs) {
            return;
        }
        let mut paths = Vec::new();
        flatten(&item.tree, &mut Vec::new(), &mut paths);
        for path in paths {
            self.resolve(&path);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.resolve(&segments);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if is_test_only(&item.attrs) {
            return;
        }
        self.module.push(item.ident.to_string());
        syn::visit::visit_item_mod(self, item);
        self.module.pop();
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test_only(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    /// A macro's arguments are tokens, not parsed paths (`tokio::select!`, `json!`, …): the
    /// paths in them are read from the tokens.
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        let mut tokens = Vec::new();
        flat_tokens(mac.tokens.clone(), &mut tokens);
        for path in paths_in_tokens(&tokens) {
            self.resolve(&path);
        }
    }
}

/// A token stream without its groups' delimiters.
fn flat_tokens(stream: proc_macro2::TokenStream, out: &mut Vec<proc_macro2::TokenTree>) {
    for token in stream {
        match token {
            proc_macro2::TokenTree::Group(group) => flat_tokens(group.stream(), out),
            other => out.push(other),
        }
    }
}

/// The `crate::…`, `super::…` and `self::…` paths in a flat token list.
fn paths_in_tokens(tokens: &[proc_macro2::TokenTree]) -> Vec<Vec<String>> {
    use proc_macro2::TokenTree::{Ident, Punct};
    let mut paths = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let starts = matches!(&tokens[i], Ident(id) if id == "crate" || id == "super" || id == "self");
        let preceded_by_dollar = i > 0 && matches!(&tokens[i - 1], Punct(p) if p.as_char() == '$');
        if !starts || preceded_by_dollar {
            i += 1;
            continue;
        }
        let mut path = vec![tokens[i].to_string()];
        let mut j = i + 1;
        while let (Some(Punct(a)), Some(Punct(b)), Some(Ident(next))) =
            (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
        {
            if a.as_char() != ':' || b.as_char() != ':' {
                break;
            }
            path.push(next.to_string());
            j += 3;
        }
        if path.len() > 1 {
            paths.push(path);
        }
        i = j;
    }
    paths
}

/// The items `lib.rs` re-exports at the crate root (`pub use module::{A, B};`), with the module
/// each comes from, so that `crate::Error` counts as naming `error`.
fn root_reexports(lib: &str) -> Vec<(String, String)> {
    let file = syn::parse_file(lib).expect("lib.rs parses");
    let mut items = Vec::new();
    for item in &file.items {
        let syn::Item::Use(item) = item else {
            continue;
        };
        if !matches!(item.vis, syn::Visibility::Public(_)) {
            continue;
        }
        let mut paths = Vec::new();
        flatten(&item.tree, &mut Vec::new(), &mut paths);
        for path in paths {
            if let (Some(module), Some(name)) = (path.first(), path.last()) {
                items.push((name.clone(), module.clone()));
            }
        }
    }
    items
}

/// What is wrong with the library file at `relative` (to `src/`) holding `source`; `root`
/// resolves the crate root's re-exports ([`root_reexports`]).
fn violations(relative: &str, source: &str, root: &[(String, String)]) -> Vec<String> {
    let Some(module) = module_path(relative) else {
        return Vec::new();
    };
    let own = module[0].clone();
    let own_sub = module.get(1).cloned();
    let Some(own_layer) = layer_of(&own) else {
        return vec![format!(
            "{relative}: module `{own}` is in no layer (add it to LAYERS in tests/it/layers.rs)"
        )];
    };
    let file = match syn::parse_file(source) {
        Ok(file) => file,
        Err(e) => return vec![format!("{relative}: does not parse: {e}")],
    };
    let mut names = Names {
        module: module.clone(),
        named: Vec::new(),
        unresolved: Vec::new(),
    };
    names.visit_file(&file);

    let mut found: Vec<String> = names
        .unresolved
        .iter()
        .map(|path| format!("{relative}: `{path}` goes past the crate root"))
        .collect();
    for path in names.named {
        let Some(first) = path.first() else {
            continue;
        };
        if first == "*" {
            found.push(format!("{relative}: a glob of the crate root hides what it brings in"));
            continue;
        }
        let target = match root.iter().find(|(item, _)| item == first) {
            Some((_, module)) => module.clone(),
            None => first.clone(),
        };
        let Some(layer) = layer_of(&target) else {
            found.push(format!(
                "{relative}: names `crate::{}`, neither a module of a layer nor a re-export",
                path.join("::")
            ));
            continue;
        };
        let named = format!("crate::{}", path.join("::"));
        if layer > own_layer {
            found.push(format!(
                "{relative}: `{own}` (layer {own_layer}) names `{named}` (layer {layer}), above it"
            ));
        }
        if SIBLINGS_APART.contains(&(own.as_str(), target.as_str())) {
            found.push(format!(
                "{relative}: `{own}` names `{named}`, which it must stay apart from"
            ));
        }
        if layer_of(&own) == Some(0) && !MODEL_MAY_NAME.contains(&target.as_str()) {
            found.push(format!("{relative}: the model layer names `{named}`"));
        }
        if EDGES_MAY_NAME[..2].contains(&own.as_str()) && !EDGES_MAY_NAME.contains(&target.as_str()) {
            found.push(format!(
                "{relative}: `{own}` names `{named}` instead of going through the store"
            ));
        }
        // One service never names another: the façade puts them side by side.
        if own == "services" && target == "services" && own_sub.is_some() && path.get(1) != own_sub.as_ref() {
            found.push(format!("{relative}: a service names `{named}`"));
        }
    }
    found.sort();
    found.dedup();
    found
}

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
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
    let root = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs"));
    assert!(
        root.iter()
            .any(|(item, module)| item == "EventStore" && module == "store")
    );
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let mut found = Vec::new();
    let mut checked = 0;
    for path in &files {
        let relative = path
            .strip_prefix(&src)
            .expect("under src/")
            .to_string_lossy()
            .replace('\\', "/");
        if module_path(&relative).is_some() {
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
    // Storage naming a service, the façade or HTTP, by any path.
    assert_eq!(
        check("storage/sqlite.rs", "use crate::services::erasure::drive;").len(),
        1
    );
    assert_eq!(check("storage/mod.rs", "fn f(_: crate::store::EventStore) {}").len(), 1);
    assert_eq!(check("storage/sql.rs", "fn f(_: crate::EventStore) {}").len(), 1);
    assert_eq!(check("storage/sql.rs", "use super::super::http;").len(), 1);
    assert_eq!(check("crypto.rs", "use super::services::x;").len(), 1);
    assert_eq!(
        check(
            "core/append.rs",
            "use crate::{model, error::{Error, StorageError}, http::x};"
        )
        .len(),
        1
    );
    // The model naming errors; crypto and storage naming each other; one service naming
    // another; the edges going around the façade; globs and unknown names.
    assert_eq!(check("model/event.rs", "use crate::error::Error;").len(), 2);
    assert_eq!(check("crypto.rs", "use crate::storage::StoredEvent;").len(), 1);
    assert_eq!(check("services/export.rs", "use super::erasure::drive;").len(), 1);
    assert_eq!(check("services/export.rs", "use crate::services::erasure;").len(), 1);
    assert_eq!(check("http/admin.rs", "use crate::services::erasure;").len(), 1);
    assert_eq!(check("storage/sql.rs", "use crate::*;").len(), 1);
    assert_eq!(check("storage/sql.rs", "use crate::Unknown;").len(), 1);
    assert_eq!(check("storage/sql.rs", "use super::super::super::x;").len(), 1);
    // What may be named: anything below, one's own module, test code, comments and strings.
    assert!(
        check(
            "services/export.rs",
            "use crate::core::Core; use super::export::x; use self::y::z;"
        )
        .is_empty()
    );
    assert!(check("http/admin.rs", "use crate::{model, store, limits::X, Error};").is_empty());
    assert!(check("storage/sql.rs", "use crate::Error; use super::rows::DecodeRow;").is_empty());
    assert!(
        check(
            "storage/sql.rs",
            "// crate::services::erasure\nconst S: &str = \"crate::http /* x\";"
        )
        .is_empty()
    );
    assert!(
        check(
            "storage/sql.rs",
            "#[cfg(test)]\nmod tests { use crate::store::EventStore; }"
        )
        .is_empty()
    );
    assert!(check("main.rs", "use crate::whatever;").is_empty());
    // Paths in macro arguments count too; `$crate` is the macro's own crate.
    assert_eq!(
        check(
            "storage/sql.rs",
            "fn f() { tokio::select! { x = crate::services::f() => {} } }"
        )
        .len(),
        1
    );
    assert!(check("storage/sql.rs", "macro_rules! m { () => { $crate::http::x() }; }").is_empty());
}
