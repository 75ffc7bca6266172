//! `cargo xtask sim` runs this: the deterministic simulator over many seeds
//! (`ledger_svc::sim`, docs/simulation.md).
//!
//! Usage: sim [--seeds N] [--seed S] [--first S] [--bug NAME] [--verbose]
//! Exit status 1 when any seed breaks an invariant; each failure is one line with its seed
//! and the command that replays it. With `--bug NAME` (built with the `sim-bugs` feature)
//! the expectation is reversed: it stops at the first seed that catches the injected bug and
//! exits 0, or exits 1 if no seed catches it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ledger_svc::sim::{self, Bug, FaultTally, SimConfig};

/// A seed's wall-time bound (the run stops itself past it, see `SimConfig::wall_max`; this
/// also catches the end-of-run recovery taking too long).
const SEED_WALL_MAX: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let mut seeds: u64 = 100;
    let mut first: u64 = 0;
    let mut bug = None;
    let mut verbose = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<String, String> { args.next().ok_or_else(|| format!("{name} needs a value")) };
        let parsed: Result<(), String> = match arg.as_str() {
            "--seeds" => value("--seeds").and_then(|v| v.parse().map(|n| seeds = n).map_err(|e| format!("--seeds: {e}"))),
            "--seed" => value("--seed").and_then(|v| {
                v.parse().map(|s| {
                    first = s;
                    seeds = 1;
                    verbose = true;
                })
                .map_err(|e| format!("--seed: {e}"))
            }),
            "--first" => value("--first").and_then(|v| v.parse().map(|s| first = s).map_err(|e| format!("--first: {e}"))),
            "--bug" => value("--bug").and_then(|v| match Bug::parse(&v) {
                Some(b) if cfg!(feature = "sim-bugs") => {
                    bug = Some(b);
                    Ok(())
                }
                Some(_) => Err("--bug needs the sim-bugs feature (cargo xtask sim --bug passes it)".to_string()),
                None => Err(format!("unknown bug {v:?} (early-release, double-apply, skip-fsync)")),
            }),
            "--verbose" => {
                verbose = true;
                Ok(())
            }
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(message) = parsed {
            eprintln!("sim: {message}");
            return ExitCode::from(2);
        }
    }
    let started = Instant::now();
    let (mut steps, mut failures, mut refused, mut acknowledged, mut recoveries) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut written, mut pipelined, mut mid_sync) = (0u64, 0u64, 0u64);
    let mut faults = FaultTally::default();
    for seed in first..first.saturating_add(seeds) {
        let seed_started = Instant::now();
        let report = sim::run(SimConfig { bug, ..SimConfig::new(seed) });
        let took = seed_started.elapsed();
        steps += report.steps;
        acknowledged += report.acknowledged;
        recoveries += report.recoveries;
        written += report.batches_written;
        pipelined += report.batches_pipelined;
        mid_sync += report.crashes_mid_sync;
        refused += u64::from(report.refused);
        faults.add(&report.faults);
        let slow = took > SEED_WALL_MAX;
        if verbose {
            println!(
                "seed {seed}: {} steps, {} replies, {} transfers acknowledged, {} recoveries{}, faults {:?}, digest {:016x}, {took:?}",
                report.steps,
                report.replies,
                report.acknowledged,
                report.recoveries,
                report.refusal.as_deref().map(|r| format!(" (refused to start: {r})")).unwrap_or_default(),
                report.faults,
                report.digest
            );
        }
        if !report.violations.is_empty() || slow {
            failures += 1;
            let what = if slow { format!("took {took:?}, over {SEED_WALL_MAX:?}") } else { report.violations.join("; ") };
            let bug_arg = bug.map(|b| format!(" --bug {}", bug_name(b))).unwrap_or_default();
            println!("FAIL seed {seed}: {what} (replay: cargo xtask sim --seed {seed}{bug_arg})");
            if let Some(b) = bug {
                println!("sim: the injected bug {} was caught by seed {seed} ({} seeds run, {:.1?})", bug_name(b), seed - first + 1, started.elapsed());
                return ExitCode::SUCCESS;
            }
        }
    }
    if let Some(b) = bug {
        println!("sim: the injected bug {} was NOT caught in {seeds} seeds", bug_name(b));
        return ExitCode::FAILURE;
    }
    println!(
        "sim: {seeds} seeds, {failures} failed, {steps} steps, {acknowledged} transfers acknowledged, {recoveries} recoveries ({refused} refused to start), in {:.1?}",
        started.elapsed()
    );
    println!("pipeline: {written} batches written, {pipelined} of them while the previous batch's sync was in flight; {mid_sync} crashes with a sync in flight");
    println!(
        "faults: {} crashes, {} fsync failures, {} read corruptions, {} ENOSPC, {} messages lost, {} duplicated, {} corrupted, {} partitions ({} in all)",
        faults.crashes, faults.sync_failures, faults.read_corruptions, faults.enospc, faults.lost, faults.duplicated, faults.corrupted, faults.partitions, faults.total()
    );
    if failures > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn bug_name(bug: Bug) -> &'static str {
    match bug {
        Bug::EarlyRelease => "early-release",
        Bug::DoubleApply => "double-apply",
        Bug::SkipFsync => "skip-fsync",
    }
}
