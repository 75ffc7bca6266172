//! `cargo xtask sim --stack` runs this: the whole appliance in the deterministic simulator
//! over many seeds (`pantera::sim`, feature `sim`; docs/simulation.md).
//!
//! Usage: stack_sim [--seeds N] [--seed S] [--first S] [--verbose]
//! Exit status 1 when any seed breaks an invariant; each failure is one line with its seed
//! and the command that replays it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use pantera::sim::{self, StackSimConfig, Totals};

/// A seed's wall-time bound (the run also stops itself past `StackSimConfig::wall_max`).
const SEED_WALL_MAX: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let mut seeds: u64 = 20;
    let mut first: u64 = 0;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            let v = args.next().ok_or_else(|| format!("{name} needs a value"))?;
            v.parse().map_err(|e| format!("{name}: {e}"))
        };
        let parsed: Result<(), String> = match arg.as_str() {
            "--seeds" => value("--seeds").map(|n| seeds = n),
            "--seed" => value("--seed").map(|s| {
                first = s;
                seeds = 1;
                verbose = true;
            }),
            "--first" => value("--first").map(|s| first = s),
            "--verbose" => {
                verbose = true;
                Ok(())
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(message) = parsed {
            eprintln!("stack_sim: {message}");
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let mut totals = Totals::default();
    for seed in first..first.saturating_add(seeds) {
        let seed_started = Instant::now();
        let report = sim::run(StackSimConfig {
            wall_max: SEED_WALL_MAX,
            ..StackSimConfig::new(seed)
        });
        let took = seed_started.elapsed();
        totals.add(&report);
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
            println!(
                "FAIL seed {seed}: {} (replay: cargo xtask sim --stack --seed {seed})",
                report.violations.join("; ")
            );
        }
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
    if totals.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
