//! `cargo xtask sim --stack` runs this: the whole appliance in the deterministic simulator
//! over many seeds (`pantera::sim`, feature `sim`; docs/simulation.md).
//!
//! Usage: appliance_sim [--seeds N] [--seed S] [--first S] [--bug NAME] [--verbose] [--check-replay]
//! Exit status 1 when any seed breaks an invariant; each failure is one line with its seed
//! and the command that replays it. With `--bug NAME` (built with the `sim-bugs` feature)
//! the expectation is reversed: it stops at the first seed that catches the injected bug and
//! exits 0, or exits 1 if no seed catches it. `--check-replay` runs the first seed once more
//! at the end and fails unless its trace digest is the same.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pantera::sim::{self, Bug, StackSimConfig, Totals};

/// A seed's wall-time bound (the run also stops itself past `StackSimConfig::wall_max`).
const SEED_WALL_MAX: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut seeds: u64 = 20;
    let mut first: u64 = 0;
    let mut verbose = false;
    let mut bug: Option<(Bug, String)> = None;
    let mut check_replay = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--verbose" => {
                verbose = true;
                continue;
            }
            "--check-replay" => {
                check_replay = true;
                continue;
            }
            _ => {}
        }
        let value = args.next();
        let number = |name: &str| -> Result<u64, String> {
            let v = value
                .as_deref()
                .ok_or_else(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| format!("{name}: {e}"))
        };
        let parsed: Result<(), String> = match arg.as_str() {
            "--seeds" => number("--seeds").map(|n| seeds = n),
            "--seed" => number("--seed").map(|s| {
                first = s;
                seeds = 1;
                verbose = true;
            }),
            "--first" => number("--first").map(|s| first = s),
            "--bug" => match value.as_deref().map(|v| (v, Bug::parse(v))) {
                Some((v, Some(b))) if cfg!(feature = "sim-bugs") => {
                    bug = Some((b, v.to_owned()));
                    Ok(())
                }
                Some((_, Some(_))) => Err(
                    "--bug needs the sim-bugs feature (cargo xtask sim --stack --bug passes it)"
                        .to_string(),
                ),
                Some((v, None)) => Err(format!(
                    "unknown bug {v:?} (early-release, double-apply, skip-fsync)"
                )),
                None => Err("--bug needs a value".to_string()),
            },
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(message) = parsed {
            eprintln!("appliance_sim: {message}");
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut first_digest = None;
    for seed in first..first.saturating_add(seeds) {
        let seed_started = Instant::now();
        let report = sim::run(StackSimConfig {
            wall_max: SEED_WALL_MAX,
            bug: bug.as_ref().map(|b| b.0),
            ..StackSimConfig::new(seed)
        });
        let took = seed_started.elapsed();
        totals.add(&report);
        first_digest = first_digest.or(Some(report.digest));
        if verbose {
            println!(
                "seed {seed}: {} steps, {} connections, {} retries, {} replies, {} transfers acknowledged, {} recoveries{}{}, faults {:?}, digest {:016x}, {took:?}",
                report.steps,
                report.connections,
                report.retries,
                report.replies,
                report.acknowledged,
                report.recoveries,
                report.refusal.as_deref().map(|r| format!(" (refused to start: {r})")).unwrap_or_default(),
                if report.finished { "" } else { ", clients unfinished at the end" },
                report.faults,
                report.digest
            );
        }
        if !report.violations.is_empty() {
            let bug_arg = bug
                .as_ref()
                .map(|b| format!(" --bug {}", b.1))
                .unwrap_or_default();
            println!(
                "FAIL seed {seed}: {} (replay: cargo xtask sim --stack --seed {seed}{bug_arg})",
                report.violations.join("; ")
            );
            if let Some((_, name)) = &bug {
                println!(
                    "stack sim: the injected bug {name} was caught by seed {seed} ({} seeds run, {:.1?})",
                    seed - first + 1,
                    started.elapsed()
                );
                return ExitCode::SUCCESS;
            }
        }
    }
    if let Some((_, name)) = &bug {
        println!("stack sim: the injected bug {name} was NOT caught in {seeds} seeds");
        return ExitCode::FAILURE;
    }
    let f = &totals.faults;
    println!(
        "stack sim: {seeds} seeds, {} failed, {} steps, {} transfers acknowledged, {} connections, {} recoveries ({} refused to start), {} runs with clients unfinished, in {:.1?}",
        totals.failed.len(),
        totals.steps,
        totals.acknowledged,
        totals.connections,
        totals.recoveries,
        totals.refused,
        totals.unfinished,
        started.elapsed()
    );
    println!(
        "faults: {} crashes, {} fsync failures, {} read corruptions, {} ENOSPC, {} frames lost, {} duplicated, {} reordered, {} corrupted, {} partitions ({} in all)",
        f.crashes, f.sync_failures, f.read_corruptions, f.enospc, f.frames_lost, f.frames_duplicated, f.frames_reordered, f.frames_corrupted, f.partitions, f.total()
    );
    if let (true, Some(digest)) = (check_replay, first_digest) {
        let again = sim::run(StackSimConfig {
            wall_max: SEED_WALL_MAX,
            bug: bug.as_ref().map(|b| b.0),
            ..StackSimConfig::new(first)
        });
        if again.digest != digest {
            println!("FAIL seed {first}: replayed with trace digest {:016x}, first run {digest:016x}: the run is not deterministic", again.digest);
            return ExitCode::FAILURE;
        }
        println!("replay: seed {first} ran again with the same trace digest {digest:016x}");
    }
    if totals.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
