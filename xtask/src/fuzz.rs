//! `cargo xtask fuzz`: builds the libFuzzer targets under fuzz/ and runs them (docs/fuzzing.md).
//!
//! The fuzzer is libFuzzer through the `libfuzzer-sys` crate, built on the stable toolchain:
//! LLVM's coverage pass (`-C passes=sancov-module` and its `-C llvm-args`) is a stable flag, so
//! neither nightly nor cargo-fuzz is needed; cargo fetches `libfuzzer-sys`, which compiles
//! libFuzzer with the system C++ compiler. No sanitizer: AddressSanitizer needs the unstable
//! `-Z sanitizer`, and the code under test is safe Rust, where a memory error would be a bug in
//! a dependency's `unsafe`; debug assertions and overflow checks are on instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use std::{env, fs};

use anyhow::{bail, ensure, Context, Result};

/// Every target, with the largest input libFuzzer may make for it (bytes).
const TARGETS: &[(&str, usize)] = &[
    ("tcp_frames", 8192),
    ("tls_records", 8192),
    ("http_request", 8192),
    ("api_json", 8192),
    ("wal_recovery", 16384),
    ("config_file", 8192),
];

/// Seconds per target in `--smoke`, and for one target run alone.
const SMOKE_SECONDS: u64 = 15;
const LONG_SECONDS: u64 = 600;

/// The coverage instrumentation cargo-fuzz applies, minus its unstable sanitizer flag.
const RUSTFLAGS: &str = "--cfg fuzzing -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cforce-frame-pointers";

pub fn main(args: &[&str]) -> Result<()> {
    let mut seconds = None;
    let mut smoke = false;
    let mut seeds = false;
    let mut target = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match *arg {
            "--smoke" => smoke = true,
            "--seeds" => seeds = true,
            "--seconds" => {
                let n = rest.next().context("--seconds takes a number")?;
                seconds = Some(n.parse::<u64>().context("--seconds takes a number")?);
            }
            name if !name.starts_with('-') && target.is_none() => target = Some(name),
            other => bail!("cargo xtask fuzz: unexpected argument {other}"),
        }
    }
    let bins = build()?;
    if seeds {
        let corpus = env::current_dir()?.join("fuzz/corpus");
        let status = Command::new(bins.join("make_seeds"))
            .env("PANTERA_FUZZ_CORPUS", &corpus)
            .stderr(Stdio::null())
            .status()
            .context("cannot run make_seeds")?;
        ensure!(status.success(), "make_seeds failed: {status}");
        println!("xtask fuzz: seeds written under {}", corpus.display());
        return Ok(());
    }
    let chosen: Vec<(&str, usize)> = match (smoke, target) {
        (true, None) => TARGETS.to_vec(),
        (false, Some(name)) => {
            let found = TARGETS.iter().find(|(n, _)| *n == name);
            vec![*found.with_context(|| {
                format!("unknown fuzz target {name}; one of {:?}", TARGETS.iter().map(|t| t.0).collect::<Vec<_>>())
            })?]
        }
        _ => bail!("usage: cargo xtask fuzz --smoke [--seconds N] | fuzz TARGET [--seconds N] | fuzz --seeds"),
    };
    let seconds = seconds.unwrap_or(if smoke { SMOKE_SECONDS } else { LONG_SECONDS });
    ensure!(seconds > 0, "--seconds must be at least 1");
    let started = Instant::now();
    // Every target runs even after one fails, so one run reports every finding.
    let mut summary = Vec::new();
    let mut failed = Vec::new();
    for (name, max_len) in chosen {
        match run(&bins, name, max_len, seconds)? {
            Ok(execs) => summary.push(format!("  {name:<14} {execs:>10} executions, no crash")),
            Err(failure) => {
                summary.push(format!("  {name:<14} FAILED: {failure}"));
                failed.push(name);
            }
        }
    }
    println!("xtask fuzz: {} s per target, {:.0} s in all", seconds, started.elapsed().as_secs_f64());
    for line in summary {
        println!("{line}");
    }
    ensure!(failed.is_empty(), "fuzz targets failed: {}", failed.join(", "));
    Ok(())
}

fn host_triple() -> Result<String> {
    let out = Command::new("rustc").arg("-vV").output().context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV printed no host triple")
}

/// Builds every fuzz binary; returns the directory holding them. The build has its own target
/// directory (target/fuzz): the flags apply to every crate, so nothing is shared with the
/// workspace build. `--target` keeps the flags off build scripts and proc macros.
fn build() -> Result<PathBuf> {
    let triple = host_triple()?;
    let target_dir = env::current_dir()?.join("target/fuzz");
    let started = Instant::now();
    let status = super::cargo()
        .args(["build", "--release", "--bins", "--target", &triple])
        .current_dir("fuzz")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", RUSTFLAGS)
        .status()
        .context("cannot run cargo build for fuzz/")?;
    ensure!(status.success(), "building the fuzz targets failed: {status}");
    println!("xtask fuzz: targets built in {:.0} s", started.elapsed().as_secs_f64());
    Ok(target_dir.join(triple).join("release"))
}

/// Runs one target for `seconds` over its checked-in seeds; returns its executions, or for a
/// crash, hang or memory blow-up the reproducer's path and the command that replays it. New
/// inputs go to a scratch corpus under target/fuzz, never into fuzz/corpus.
fn run(bins: &Path, name: &str, max_len: usize, seconds: u64) -> Result<Result<u64, String>> {
    let root = env::current_dir()?;
    let scratch = root.join("target/fuzz/corpus").join(name);
    let artifacts = root.join("target/fuzz/artifacts").join(name);
    let seeds = root.join("fuzz/corpus").join(name);
    fs::create_dir_all(&scratch)?;
    fs::create_dir_all(&artifacts)?;
    let bin = bins.join(name);
    println!("xtask fuzz: {name} for {seconds} s");
    let out = Command::new(&bin)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={max_len}"))
        // One input running longer than this is a hang; one allocation above the malloc limit,
        // or the process above the RSS limit, is unbounded memory: all three are crashes.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=1024")
        .arg("-malloc_limit_mb=512")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(&scratch)
        .arg(&seeds)
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
        let reproducer = log
            .lines()
            .find_map(|l| l.split("Test unit written to ").nth(1))
            .unwrap_or("(none written)");
        return Ok(Err(format!(
            "{}; reproducer: {reproducer}; replay: {} {reproducer}",
            out.status,
            bin.display()
        )));
    }
    let execs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .context("libFuzzer printed no execution count")?;
    Ok(Ok(execs))
}
