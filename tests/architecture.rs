//! The shape of the house, checked mechanically so that it cannot rot (ARCHITECTURE.md
//! explains it):
//! - the library's modules form layers, and a module imports only modules of lower
//!   layers (no cycles, nothing upward);
//! - no source file is over 600 lines, except the tables listed here with the reason;
//! - comments say what the code is, not how it came to be;
//! - `docs/SETTINGS.md` is the settings table of `src/settings/vars.rs`.

use std::path::{Path, PathBuf};

/// The library's top-level modules, bottom layer first. A module may use the modules of
/// the layers before its own, never those of its own layer or after.
const LAYERS: &[&[&str]] = &[
    &["error", "types"],
    &["call", "wire"],
    &["settings"],
    &["sys", "cuda"],
    &["sync", "log"],
    &["reduce", "topology"],
    &["liveness", "bootstrap"],
    &["fault"],
    &["transport"],
    &["algo"],
    &["exec"],
    &["plan"],
    &["comm"],
    &["internals", "fuzzing"],
];

/// Files allowed over 600 lines, each with why.
const LONG_FILES: &[(&str, &str)] = &[("src/settings/vars.rs", "a table: one row per environment variable")];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The code of a file without its comments (`//` to the end of a line), so that a doc
/// link to another module does not count as an import.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| {
        let code = match l.find("//") {
            Some(at) if !l[..at].contains('"') => &l[..at],
            _ => l,
        };
        (i + 1, code)
    })
}

#[test]
fn modules_import_only_lower_layers() {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
        if first == "lib" || first == "bin" {
            continue;
        }
        let Some(mine) = layer_of(first) else {
            unknown.push(first.to_string());
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in code_lines(&text) {
            for (at, _) in line.match_indices("crate::") {
                let rest = &line[at + "crate::".len()..];
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if name == first || name.is_empty() {
                    continue;
                }
                if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    // The crate root's re-exports hide which module they come from.
                    wrong.push(format!("{}:{n}: {first} uses crate::{name}: name its module", rel.display()));
                    continue;
                }
                match layer_of(&name) {
                    Some(theirs) if theirs < mine => {}
                    Some(_) => wrong.push(format!("{}:{n}: {first} uses crate::{name}", rel.display())),
                    None => unknown.push(name),
                }
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(unknown.is_empty(), "modules missing from LAYERS (add them to ARCHITECTURE.md too): {unknown:?}");
    assert!(wrong.is_empty(), "imports that go up or sideways:\n{}", wrong.join("\n"));
}

#[test]
fn no_source_file_is_over_600_lines() {
    let mut files = Vec::new();
    for d in ["src", "ffi/src", "examples"] {
        rust_files(&root().join(d), &mut files);
    }
    let mut long = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(root()).unwrap().to_str().unwrap().to_string();
        let n = std::fs::read_to_string(f).unwrap().lines().count();
        if n > 600 && !LONG_FILES.iter().any(|(p, _)| *p == rel) {
            long.push(format!("{rel}: {n} lines"));
        }
    }
    assert!(long.is_empty(), "files over 600 lines (split them by concept):\n{}", long.join("\n"));
}

#[test]
fn comments_say_what_not_when() {
    let mut files = Vec::new();
    for d in ["src", "ffi/src", "ffi/tests", "examples", "tests", "benches"] {
        rust_files(&root().join(d), &mut files);
    }
    for d in ["ffi/tests/c", "scripts", "python/oxccl", "python/tests", "python/src", "python/benchmarks"] {
        // Folders included (python/src/comm, python/oxccl/torch); build outputs and
        // caches (a built module, bytecode) are not text.
        let mut stack = vec![root().join(d)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for p in entries.flatten().map(|e| e.path()) {
                if p.is_dir() && !p.file_name().is_some_and(|n| n == "__pycache__" || n == "target") {
                    stack.push(p);
                } else if p.is_file() && std::fs::read_to_string(&p).is_ok() {
                    files.push(p);
                }
            }
        }
    }
    files.push(root().join("Cargo.toml"));
    files.push(root().join("ffi/Cargo.toml"));
    let me = root().join("tests/architecture.rs");
    let phrases = [
        "in progress",
        "added later",
        "filled in by",
        "issue #",
        "(issue ",
        "issue 1",
        "issue 2",
        "issue 3",
        "issue 4",
        "issue 5",
        "issue 6",
        "issue 7",
        "issue 8",
        "issue 9",
        "todo: later",
    ];
    let mut found = Vec::new();
    for f in files.iter().filter(|f| **f != me) {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let Some(at) = line.find("//").or_else(|| line.find('#')) else { continue };
            let comment = line[at..].to_ascii_lowercase();
            if let Some(p) = phrases.iter().find(|p| comment.contains(*p)) {
                found.push(format!("{}:{}: '{p}'", f.strip_prefix(root()).unwrap().display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "comments that narrate history:\n{}", found.join("\n"));
}

#[test]
fn the_settings_page_is_the_settings_table() {
    let path = root().join("docs/SETTINGS.md");
    let head = std::fs::read_to_string(&path).unwrap_or_default();
    let head = head.split("\n### ").next().unwrap_or("").trim_end().to_string();
    let want = format!("{head}\n{}", oxccl::internals::settings_markdown());
    if std::env::var("OXCCL_WRITE_DOCS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/SETTINGS.md differs from src/settings/vars.rs: run OXCCL_WRITE_DOCS=1 cargo test --test architecture"
    );
}
