//! Every repository path the docs cite exists, and every `docs/*.md` a source file cites
//! exists: a moved or deleted file must take its citations with it. Files of other projects are
//! cited by URL, which this check skips.
//!
//! A cited path is a token that starts with one of the repository's top-level directories
//! (`docs/`, `src/`, `tests/`, a crate's folder, ...) and is not part of a longer path or URL.
//! Docs describe crates in their own terms (ledger.md says `tests/wal_crash.rs` for
//! `ledger-svc/tests/wal_crash.rs`), so a path may resolve against the repository root or any
//! crate's folder. Patterns (`tests/lab_*.rs`) are not paths and are skipped.

use std::fs;
use std::path::{Path, PathBuf};

/// Top-level directories of the repository a citation may start with.
const TOP: &[&str] = &[
    "docs/",
    "src/",
    "tests/",
    "bench/",
    "xtask/",
    "tcp/",
    "tls-term/",
    "ledger-svc/",
    "dataplane/",
    "xdp-programs/",
    "third_party/",
    ".ci/",
];

/// Where a cited path may be rooted: the repository and each crate's folder.
const BASES: &[&str] = &[
    "",
    "xdp-programs",
    "dataplane",
    "tcp",
    "tls-term",
    "ledger-svc",
    "bench",
    "xtask",
    "third_party/smoltcp",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')
}

/// The paths cited in `text` that start with one of `prefixes`: maximal runs of path
/// characters, not preceded by one (so not the tail of a URL or of `../x`), trailing
/// punctuation trimmed; patterns and placeholders (followed by `*`, `{`, `<`, or holding `...`)
/// are left out.
fn cited(text: &str, prefixes: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (start, c) = chars[i];
        let preceded = i > 0 && (path_char(chars[i - 1].1) || chars[i - 1].1 == ':');
        if !path_char(c) || preceded {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && path_char(chars[j].1) {
            j += 1;
        }
        let end = chars.get(j).map_or(text.len(), |&(at, _)| at);
        let next = chars.get(j).map(|&(_, c)| c);
        i = j;
        let token = text[start..end].trim_end_matches(['.', '/', '-']);
        if !prefixes
            .iter()
            .any(|p| token.starts_with(p) && token.len() > p.len())
            || matches!(next, Some('*' | '{' | '<'))
            || token.contains("...")
        {
            continue;
        }
        found.push(token.to_string());
    }
    found
}

fn exists_somewhere(root: &Path, path: &str) -> bool {
    BASES.iter().any(|base| root.join(base).join(path).exists())
}

#[test]
fn the_scanner_finds_paths_and_skips_urls_and_patterns() {
    let text = "see `docs/tcp.md` and src/lab.rs, https://example.org/src/x.rs, ../src/y.rs, \
                tests/lab_*.rs, docs/{a,b}.md, .../wal-...log and tcp/src/stack.rs.";
    assert_eq!(
        cited(text, TOP),
        ["docs/tcp.md", "src/lab.rs", "tcp/src/stack.rs"]
    );
}

#[test]
fn every_path_the_docs_cite_exists() {
    let root = root();
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.push(root.join("README.md"));
    assert!(docs.len() > 5, "found only {docs:?}");
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = fs::read_to_string(doc).expect("a readable doc");
        for (line, text) in text.lines().enumerate() {
            for path in cited(text, TOP) {
                checked += 1;
                if !exists_somewhere(&root, &path) {
                    missing.push(format!("{}:{}: {path}", doc.display(), line + 1));
                }
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} paths found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "cited but absent:\n{}",
        missing.join("\n")
    );
}

/// Every `.rs` file of the repository outside `target/` and the vendored crate.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("a readable directory") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | "third_party" | ".git") && !name.starts_with('.') {
                sources(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".c") || name == "Cargo.toml" {
            out.push(path);
        }
    }
}

#[test]
fn every_doc_the_code_cites_exists() {
    let root = root();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut missing = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = fs::read_to_string(file).expect("a readable source");
        for (line, text) in text.lines().enumerate() {
            for path in cited(text, &["docs/"]) {
                checked += 1;
                if !root.join(&path).exists() {
                    missing.push(format!("{}:{}: {path}", file.display(), line + 1));
                }
            }
        }
    }
    assert!(
        checked > 20,
        "only {checked} citations found: is the scanner broken?"
    );
    assert!(
        missing.is_empty(),
        "cited but absent:\n{}",
        missing.join("\n")
    );
}
