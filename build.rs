//! Stamps the binary with the git commit it was built from (`pantera --version` and the
//! `pantera_build_info` metric): `git rev-parse --short=12 HEAD`, with `-dirty` when the work
//! tree had changes, or `unknown` outside a git checkout (a source tarball).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let commit = commit().unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PANTERA_COMMIT={commit}");
    // Rebuild the stamp when HEAD moves (checkout, commit) or the index changes (a file
    // staged or committed); an edit that is neither shows in `-dirty` at the next such change.
    for path in ["HEAD", "index", "packed-refs"] {
        if let Some(p) = git_path(path) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git_path(&reference) {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn commit() -> Option<String> {
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Any line means a tracked file differs from HEAD; untracked files do not count.
    let dirty = match Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
    {
        Ok(out) if out.status.success() => !out.stdout.is_empty(),
        _ => false,
    };
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}

/// Where git keeps `name` (HEAD, a ref, the index); works in a linked worktree too.
fn git_path(name: &str) -> Option<PathBuf> {
    git(&["rev-parse", "--git-path", name]).map(PathBuf::from)
}

/// A git command's trimmed standard output, `None` when git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
