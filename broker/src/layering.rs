//! The broker's layers, checked on every test run rather than left to review.
//!
//! The broker is one straight stack, each layer using only those below it:
//!
//! ```text
//! main → startup → gateway → workflow → delivery → store → wire, directory → referral, ids
//! ```
//!
//! `referral` and `ids` are the `spean-domain` crate, whose dependencies leave no way to import a
//! transport or a database: the compiler keeps that layer clean. Inside the broker this test does
//! the same for the rest. It reads every source file, finds each `crate::…` path (comments left
//! out) and each use of a transport or database crate, and fails on any that [`LAYERS`] does not
//! allow. Because [`LAYERS`] itself is checked to have no cycle, the broker has no import circle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module: the crate modules it may name, and the external crates it may not use.
/// `config`, `error`, `telemetry`, `pki` and `revocation` sit beside the stack: small, and used
/// from several layers.
#[rustfmt::skip]
const LAYERS: &[(&str, &[&str], &[&str])] = &[
    ("config",    &[], &["tonic", "lapin", "sqlx", "rusqlite"]),
    ("error",     &["referral"], &["lapin"]),
    ("telemetry", &["config"], &["tonic", "lapin", "sqlx", "rusqlite"]),
    ("pki",       &["ids"], &["lapin", "sqlx", "rusqlite"]),
    ("revocation", &["error", "ids", "directory"],
                  &["tonic", "lapin", "sqlx", "rusqlite", "prost", "spean_proto"]),
    ("directory", &["error", "ids", "referral"],
                  &["tonic", "lapin", "sqlx", "rusqlite", "prost", "spean_proto"]),
    ("wire",      &["error", "ids", "referral"],
                  &["tonic", "lapin", "sqlx", "rusqlite"]),
    ("store",     &["error", "ids", "referral", "directory", "revocation"],
                  &["tonic", "lapin", "prost", "spean_proto"]),
    ("delivery",  &["error", "ids", "referral", "directory", "store", "wire", "config"],
                  &["tonic", "sqlx", "rusqlite"]),
    ("workflow",  &["error", "ids", "referral", "directory", "store", "wire", "delivery"],
                  &["tonic", "lapin", "sqlx", "rusqlite", "prost", "spean_proto"]),
    ("gateway",   &["error", "ids", "referral", "directory", "store", "wire", "delivery", "workflow",
                    "config", "pki", "revocation"],
                  &["lapin", "sqlx", "rusqlite"]),
    ("startup",   &["error", "ids", "referral", "directory", "store", "wire", "delivery", "workflow",
                    "gateway", "config", "pki", "revocation", "telemetry"],
                  &["lapin"]),
    ("main",      &["error", "ids", "referral", "directory", "store", "delivery", "startup", "config",
                    "pki", "revocation", "telemetry", "Broker", "Config"],
                  &[]),
    ("lib",       &["ids", "referral"], &[]),
];

/// External crates whose use the table may forbid.
const WATCHED: &[&str] = &["tonic", "lapin", "sqlx", "rusqlite", "prost", "spean_proto"];

/// What one source file names: the crate modules (`crate::x`) and the watched external crates.
#[derive(Debug, Default, PartialEq, Eq)]
struct Names {
    modules: BTreeSet<String>,
    externals: BTreeSet<String>,
}

/// Reads what a source file names, leaving out comments (doc links say where to read on, they do
/// not make a dependency).
fn names(source: &str) -> Names {
    let mut found = Names::default();
    for line in source.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let code = match code.find(" // ") {
            Some(at) => &code[..at],
            None => code,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let preceded_by_ident = rest[..at]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !preceded_by_ident {
                if let Some(group) = after.strip_prefix('{') {
                    let inner = group.split('}').next().unwrap_or("");
                    for item in inner.split(',') {
                        let head = item.trim().split("::").next().unwrap_or("").trim();
                        if !head.is_empty() && head != "self" {
                            found.modules.insert(head.to_owned());
                        }
                    }
                } else {
                    let head: String = after
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !head.is_empty() {
                        found.modules.insert(head);
                    }
                }
            }
            rest = after;
        }
        for external in WATCHED {
            let mut rest = code;
            while let Some(at) = rest.find(external) {
                let before = rest[..at].chars().last();
                let after = &rest[at + external.len()..];
                let bounded = before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':'));
                if bounded && (after.starts_with("::") || after.starts_with(';')) {
                    found.externals.insert((*external).to_owned());
                }
                rest = after;
            }
        }
    }
    found
}

/// The top-level module a file under `src/` belongs to.
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every way the broker's files break [`LAYERS`], as `file: reason` lines.
fn violations(src: &Path) -> Vec<String> {
    let table: BTreeMap<&str, (&[&str], &[&str])> = LAYERS
        .iter()
        .map(|(m, may, not)| (*m, (*may, *not)))
        .collect();
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap_or(&file);
        let module = module_of(relative);
        if module == "layering" {
            continue;
        }
        let Some((may, not)) = table.get(module.as_str()) else {
            found.push(format!(
                "{}: module `{module}` has no place in LAYERS; give it one",
                relative.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap_or_default();
        let named = names(&source);
        for m in named.modules {
            if m != module && !may.contains(&m.as_str()) {
                found.push(format!(
                    "{}: `{module}` may not use `crate::{m}`",
                    relative.display()
                ));
            }
        }
        for e in named.externals {
            if not.contains(&e.as_str()) {
                found.push(format!(
                    "{}: `{module}` may not use `{e}`",
                    relative.display()
                ));
            }
        }
    }
    found
}

/// A module order in which each module comes after everything it may use; `Err` names a module
/// on a cycle.
fn order() -> Result<Vec<&'static str>, String> {
    let mut done: Vec<&'static str> = Vec::new();
    let mut left: Vec<&(
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
    )> = LAYERS.iter().collect();
    // Modules of the domain crate are below everything.
    let below = ["ids", "referral", "Broker", "Config"];
    while !left.is_empty() {
        let before = left.len();
        left.retain(|(m, may, _)| {
            let ready = may.iter().all(|d| below.contains(d) || done.contains(d));
            if ready {
                done.push(m);
            }
            !ready
        });
        if left.len() == before {
            return Err(format!("a cycle through `{}`", left[0].0));
        }
    }
    Ok(done)
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_layers_have_no_cycle() {
    let order = order().unwrap();
    let at = |m: &str| order.iter().position(|x| *x == m).unwrap();
    for (low, high) in [
        ("store", "delivery"),
        ("delivery", "workflow"),
        ("workflow", "gateway"),
        ("gateway", "startup"),
        ("wire", "delivery"),
    ] {
        assert!(at(low) < at(high), "{low} must sit below {high}");
    }
}

#[test]
fn the_check_sees_a_forbidden_import() {
    let source = "use crate::gateway::wire;\n\
                  use crate::{store::Store, delivery::Dispatch};\n\
                  // crate::workflow in a comment does not count\n\
                  fn f() -> tonic::Status { todo!() }\n\
                  let s = \"lapin is only named here\";\n";
    let named = names(source);
    assert_eq!(
        named.modules,
        ["delivery", "gateway", "store"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        named.externals,
        ["tonic"].into_iter().map(String::from).collect()
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("store")).unwrap();
    std::fs::write(dir.path().join("store/mod.rs"), source).unwrap();
    std::fs::write(dir.path().join("newcomer.rs"), "").unwrap();
    let found = violations(dir.path());
    assert!(
        found
            .iter()
            .any(|v| v.contains("may not use `crate::gateway`")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("may not use `tonic`")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|v| v.contains("`newcomer` has no place")),
        "{found:?}"
    );
}
