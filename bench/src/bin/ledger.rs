//! Ledger benchmarks: apply rate in memory, durable rate with group commit to a real file, and
//! recovery time. Run in release:
//!
//! ```text
//! cargo run --release -p bench --bin ledger -- [--dir DIR] [--transfers N]
//! cargo run --release -p bench --bin ledger -- --adversarial [--dir DIR]
//! ```
//!
//! The durable runs are made three ways on the same transfers: `Ledger::submit` (one record
//! and one fdatasync per batch, in line), and the committer's pipeline as the ledger thread
//! runs it (`Ledger::write`, syncs on a second thread) with at most 1 batch unsynced (each
//! batch durable before the next is written) and with 2 (batch N+1 applied and written while
//! batch N's fdatasync runs): the last two differ only in the pipeline's depth.
//!
//! `--adversarial` compares crafted ids with random ids instead (apply and WAL recovery of
//! 32,768 accounts and 32,768 transfers per id family).
//!
//! Figures go to stdout; docs/ledger.md ("Performance") records a run and its method.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use ledger_svc::*;

#[derive(Parser, Debug)]
#[command(about = "Ledger apply, durable and recovery benchmarks")]
struct Args {
    /// Directory for the WAL (must be on a real disk, not tmpfs, for fsync to mean anything).
    #[arg(long, default_value = "target/ledger-bench")]
    dir: PathBuf,
    /// Transfers for the in-memory runs and for the recovery run.
    #[arg(long, default_value_t = 1_000_000)]
    transfers: usize,
    /// Accounts the transfers move between.
    #[arg(long, default_value_t = 10_000)]
    accounts: u128,
    /// Durable batches at batch size 1 (each costs one fdatasync).
    #[arg(long, default_value_t = 5_000)]
    durable_single_batches: usize,
    /// Repetitions of each in-memory run (the best and the median are reported: the machine
    /// may be shared).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only the in-memory apply runs (for profiling).
    #[arg(long)]
    apply_only: bool,
    /// Only the durable runs (submit, and the committer's pipeline at depth 1 and 2).
    #[arg(long)]
    durable_only: bool,
    /// Only the comparison of crafted ids with random ids (apply and recovery).
    #[arg(long)]
    adversarial: bool,
}

const NOW: u64 = 1_700_000_000_000_000_000;

fn accounts(count: u128) -> Vec<Vec<Account>> {
    let all: Vec<Account> = (1..=count)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    all.chunks(BATCH_EVENTS_MAX).map(|c| c.to_vec()).collect()
}

/// Plain transfers between pseudo-random accounts (a SplitMix-style sequence; no rng crate).
fn transfers(first_id: u128, count: usize, accounts: u128) -> Vec<Transfer> {
    (0..count as u128)
        .map(|i| {
            let id = first_id + i;
            let x = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((id as u64) >> 29);
            let dr = 1 + u128::from(x) % accounts;
            let mut cr = 1 + u128::from(x >> 32) % accounts;
            if cr == dr {
                cr = 1 + dr % accounts;
            }
            Transfer {
                id,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: 1 + (x % 1000) as u128,
                ledger: 1,
                code: 1,
                ..Default::default()
            }
        })
        .collect()
}

/// Nanoseconds this thread has spent on a CPU (Linux schedstat), so figures on a shared,
/// loaded machine can be read per CPU-second as well as per wall-second.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|ns| ns.parse().ok()))
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

fn rate(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64()
}

/// One in-memory run: a fresh state machine (preallocated at startup), then every batch.
/// Returns (wall, on-CPU) time of the batches alone.
fn apply_once(args: &Args, batch_size: usize, total: usize) -> Result<(Duration, Duration)> {
    let mut sm = StateMachine::with_capacity(args.accounts as usize, total);
    for chunk in accounts(args.accounts) {
        sm.create_accounts(NOW, &chunk);
    }
    let events = transfers(1, total, args.accounts);
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut ok = 0usize;
    for (i, batch) in events.chunks(batch_size).enumerate() {
        let results = sm.create_transfers(NOW + 1 + i as u64 * 1_000_000, batch);
        ok += results
            .iter()
            .filter(|r| **r == CreateTransferResult::Ok)
            .count();
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_start);
    anyhow::ensure!(ok == total, "only {ok} of {total} transfers succeeded");
    Ok((elapsed, cpu))
}

fn apply_in_memory(args: &Args, batch_size: usize) -> Result<()> {
    // Batch size 1 runs fewer transfers: per-call overhead dominates, 200k is plenty.
    let total = if batch_size == 1 {
        args.transfers.min(200_000)
    } else {
        args.transfers
    };
    let mut runs = Vec::new();
    for _ in 0..args.runs {
        runs.push(apply_once(args, batch_size, total)?);
    }
    runs.sort();
    let (best, best_cpu) = runs[0];
    let (median, _) = runs[runs.len() / 2];
    println!(
        "apply in memory  batch {batch_size:>5}: {total:>8} transfers, best of {}: {:>10.0} transfers/s (median {:.0}; on-CPU {:.0} transfers per CPU-second)",
        runs.len(),
        rate(total, best),
        rate(total, median),
        rate(total, best_cpu)
    );
    Ok(())
}

fn durable(args: &Args, batch_size: usize, dir: &std::path::Path) -> Result<(u64, usize)> {
    let total = match batch_size {
        1 => args.durable_single_batches,
        100 => 100_000.min(args.transfers),
        _ => args.transfers,
    };
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        ..LedgerConfig::default()
    };
    let storage = FileStorage::open(dir).context("open the WAL directory")?;
    let mut ledger = Ledger::open(storage, config).context("open the ledger")?;
    for chunk in accounts(args.accounts) {
        ledger.submit(NOW, &[Operation::CreateAccounts(chunk)])?;
    }
    let events = transfers(1, total, args.accounts);
    let ops: Vec<Operation> = events
        .chunks(batch_size)
        .map(|c| Operation::CreateTransfers(c.to_vec()))
        .collect();
    let start = Instant::now();
    for (i, op) in ops.iter().enumerate() {
        ledger.submit(NOW + 1 + i as u64 * 1_000_000, std::slice::from_ref(op))?;
    }
    let elapsed = start.elapsed();
    println!(
        "durable (fsync)  batch {batch_size:>5}: {total:>8} transfers in {:>8.3} s = {:>10.0} transfers/s, {:>8.0} batches/s ({:.0} µs per batch)",
        elapsed.as_secs_f64(),
        rate(total, elapsed),
        rate(ops.len(), elapsed),
        elapsed.as_secs_f64() * 1e6 / ops.len() as f64
    );
    Ok((ledger.state().state_hash(), total))
}

/// The durable run through the sans-IO committer and a syncer thread, as the ledger thread
/// drives them: one operation per batch (as `durable`), at most `unsynced_max` batches
/// written and not durable. Every batch's requests are waiting from the start (a client
/// that never lets the ledger idle).
fn durable_pipelined(args: &Args, batch_size: usize, dir: &std::path::Path, unsynced_max: usize) -> Result<(u64, usize)> {
    use ledger_svc::api::Command;
    use ledger_svc::committer::{Committer, CommitterConfig, LedgerStatus, Step};
    let total = match batch_size {
        1 => args.durable_single_batches,
        100 => 100_000.min(args.transfers),
        _ => args.transfers,
    };
    let config = LedgerConfig { checkpoint_every_batches: 0, ..LedgerConfig::default() };
    let storage = FileStorage::open(dir).context("open the WAL directory")?;
    let mut ledger = Ledger::open(storage, config).context("open the ledger")?;
    for chunk in accounts(args.accounts) {
        ledger.submit(NOW, &[Operation::CreateAccounts(chunk)])?;
    }
    let events = transfers(1, total, args.accounts);
    let ops: Vec<Operation> = events.chunks(batch_size).map(|c| Operation::CreateTransfers(c.to_vec())).collect();
    let batches = ops.len();
    let mut waiting = ops.into_iter().enumerate();
    let mut core: Committer<usize> = Committer::new(CommitterConfig {
        batch_events_max: batch_size,
        operations_per_batch_max: 1,
        reads_per_turn_max: 1,
        batches_unsynced_max: unsynced_max,
    });
    let (jobs_tx, jobs_rx) = std::sync::mpsc::sync_channel::<SyncJob>(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let (elapsed, overlapped) = std::thread::scope(|scope| -> Result<(Duration, usize)> {
        scope.spawn(move || {
            for job in jobs_rx {
                if done_tx.send(job.run()).is_err() {
                    break;
                }
            }
        });
        let start = Instant::now();
        let (mut released, mut overlapped, mut batch_ns) = (0, 0, NOW);
        while released < batches {
            while core.wants_write() {
                let Some((i, op)) = waiting.next() else { break };
                core.submit(i, Command::Mutate(op));
            }
            let mut progressed = false;
            while let Some(step) = core.poll(batch_ns + 1, &LedgerStatus::default()) {
                progressed = true;
                match step {
                    Step::Write { now_ns, ops } => {
                        overlapped += usize::from(core.is_syncing());
                        let replies = ledger.write(now_ns, &ops)?;
                        core.written(ledger.sequence(), replies);
                        batch_ns += 1_000_000;
                    }
                    Step::Sync { upto } => match ledger.begin_sync()? {
                        Some(job) => jobs_tx.send(job).map_err(|_| anyhow::anyhow!("the syncer stopped"))?,
                        None => core.synced(upto),
                    },
                    Step::Release { replies, .. } => released += replies.len(),
                    other => anyhow::bail!("unexpected step {other:?}"),
                }
            }
            if !progressed {
                let durable = ledger.sync_done(done_rx.recv().context("the syncer stopped")?)?;
                core.synced(durable);
            }
        }
        drop(jobs_tx);
        Ok((start.elapsed(), overlapped))
    })?;
    println!(
        "durable (pipeline, {unsynced_max} unsynced) batch {batch_size:>5}: {total:>8} transfers in {:>8.3} s = {:>10.0} transfers/s, {:>8.0} batches/s ({:.0} µs per batch; {overlapped} written during a sync)",
        elapsed.as_secs_f64(),
        rate(total, elapsed),
        rate(batches, elapsed),
        elapsed.as_secs_f64() * 1e6 / batches as f64
    );
    Ok((ledger.state().state_hash(), total))
}

fn recover(dir: &std::path::Path, expected_hash: u64, label: &str) -> Result<()> {
    let start = Instant::now();
    let ledger = Ledger::open(FileStorage::open(dir)?, LedgerConfig::default())?;
    let elapsed = start.elapsed();
    anyhow::ensure!(
        ledger.state().state_hash() == expected_hash,
        "recovered state differs"
    );
    let report = ledger.recovery();
    println!(
        "recovery {label}: {} transfers, {} records replayed ({} events), checkpoint {}: {:.3} s",
        ledger.state().transfers_count(),
        report.records_replayed,
        report.events_replayed,
        report.checkpoint_sequence,
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Ids per family in `--adversarial`: one full table's worth at hashbrown's 7/8 load for
/// 2^15 buckets, enough that a hash collapsing them costs seconds rather than microseconds.
const ADVERSARIAL_IDS_COUNT: usize = 32_768;

/// The multiplier an earlier id hasher folded the high half with: every id whose high half
/// equals it hashed to one value whatever the seed.
const OLD_HASHER_MULTIPLIER: u64 = 0x243f_6a88_85a3_08d3;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Random ids first (the baseline every ratio divides by), then crafted families.
fn id_families() -> Vec<(&'static str, Vec<u128>)> {
    let n = ADVERSARIAL_IDS_COUNT as u128;
    let mut rng = 0x5eed;
    let random = (0..n)
        .map(|_| (u128::from(splitmix(&mut rng)) << 64) | u128::from(splitmix(&mut rng)))
        .collect();
    vec![
        ("random", random),
        (
            "high half = old multiplier",
            (1..=n)
                .map(|lo| (u128::from(OLD_HASHER_MULTIPLIER) << 64) | lo)
                .collect(),
        ),
        ("only high half varies", (1..=n).map(|hi| (hi << 64) | 1).collect()),
        ("sequential", (1..=n).collect()),
        ("lo == hi", (1..=n).map(|x| (x << 64) | x).collect()),
    ]
}

/// One account per id, then one transfer per id (the same ids, in the transfers' table) from
/// each account to the next, in full batches.
fn adversarial_operations(ids: &[u128]) -> Vec<Operation> {
    let accounts: Vec<Account> = ids
        .iter()
        .map(|&id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    let transfers: Vec<Transfer> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| Transfer {
            id,
            debit_account_id: id,
            credit_account_id: ids[(i + 1) % ids.len()],
            amount: 1,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    let mut ops: Vec<Operation> = accounts
        .chunks(BATCH_EVENTS_MAX)
        .map(|c| Operation::CreateAccounts(c.to_vec()))
        .collect();
    ops.extend(
        transfers
            .chunks(BATCH_EVENTS_MAX)
            .map(|c| Operation::CreateTransfers(c.to_vec())),
    );
    ops
}

/// Applies the operations to a fresh state machine sized as a default ledger (no
/// preallocation, so the tables grow and rehash as in production). Returns the (wall,
/// on-CPU) time and the state hash.
fn adversarial_apply(ops: &[Operation]) -> Result<(Duration, Duration, u64)> {
    let mut sm = StateMachine::new();
    let start = Instant::now();
    let cpu_start = cpu_time();
    for (i, op) in ops.iter().enumerate() {
        let now = NOW + i as u64 * 1_000_000;
        let ok = match op {
            Operation::CreateAccounts(events) => sm
                .create_accounts(now, events)
                .iter()
                .all(|r| *r == CreateAccountResult::Ok),
            Operation::CreateTransfers(events) => sm
                .create_transfers(now, events)
                .iter()
                .all(|r| *r == CreateTransferResult::Ok),
        };
        anyhow::ensure!(ok, "batch {i} did not succeed in full");
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_start);
    Ok((elapsed, cpu, sm.state_hash()))
}

/// Logs the operations to a WAL in `dir` (not synced: only recovery is measured), then times
/// `Ledger::open` replaying it. Returns (wall, on-CPU) time of the open.
fn adversarial_recover(
    dir: &std::path::Path,
    ops: &[Operation],
    expected_hash: u64,
) -> Result<(Duration, Duration)> {
    let run = tempfile::tempdir_in(dir)?;
    let config = LedgerConfig {
        durability: Durability::None,
        checkpoint_every_batches: 0,
        ..LedgerConfig::default()
    };
    {
        let mut ledger = Ledger::open(FileStorage::open(run.path())?, config.clone())?;
        for (i, op) in ops.iter().enumerate() {
            ledger.submit(NOW + i as u64 * 1_000_000, std::slice::from_ref(op))?;
        }
    }
    let start = Instant::now();
    let cpu_start = cpu_time();
    let ledger = Ledger::open(FileStorage::open(run.path())?, config)?;
    let elapsed = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_start);
    anyhow::ensure!(
        ledger.recovery().records_replayed == ops.len() as u64,
        "recovery replayed {} records, {} were logged",
        ledger.recovery().records_replayed,
        ops.len()
    );
    anyhow::ensure!(
        ledger.state().state_hash() == expected_hash,
        "recovered state differs from the applied state"
    );
    Ok((elapsed, cpu))
}

/// Crafted id families against random ids: apply and recovery, the least wall and the least
/// on-CPU time of `runs` each, and their ratios to random ids (the bar: within 2x). On-CPU
/// time comes in scheduler ticks on some kernels, so at these durations the wall ratio of
/// many interleaved runs is the steadier one.
fn adversarial(args: &Args) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    println!(
        "{ADVERSARIAL_IDS_COUNT} accounts then {ADVERSARIAL_IDS_COUNT} transfers per id family, batches of {BATCH_EVENTS_MAX}, best of {}: wall ms, on-CPU ms, ratios to random ids (wall, on-CPU)",
        args.runs
    );
    println!(
        "{:<28} {:>9} {:>9} {:>8} {:>8}   {:>9} {:>9} {:>8} {:>8}",
        "ids", "apply", "CPU", "ratio", "CPU", "recovery", "CPU", "ratio", "CPU"
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ratio = |d: Duration, base: Duration| d.as_secs_f64() / base.as_secs_f64();
    // Round-robin over the families, so a burst of load from other processes on a shared
    // machine lands on all of them alike rather than on one.
    let families: Vec<(&str, Vec<Operation>)> = id_families()
        .into_iter()
        .map(|(family, ids)| (family, adversarial_operations(&ids)))
        .collect();
    let mut best = vec![[Duration::MAX; 4]; families.len()];
    for _ in 0..args.runs {
        for ((_, ops), best) in families.iter().zip(&mut best) {
            let (apply, apply_cpu, hash) = adversarial_apply(ops)?;
            let (recovery, recovery_cpu) = adversarial_recover(&args.dir, ops, hash)?;
            for (b, d) in best.iter_mut().zip([apply, apply_cpu, recovery, recovery_cpu]) {
                *b = (*b).min(d);
            }
        }
    }
    let base = best[0];
    for ((family, _), best) in families.iter().zip(&best) {
        println!(
            "{family:<28} {:>9.1} {:>9.1} {:>7.2}x {:>7.2}x   {:>9.1} {:>9.1} {:>7.2}x {:>7.2}x",
            ms(best[0]),
            ms(best[1]),
            ratio(best[0], base[0]),
            ratio(best[1], base[1]),
            ms(best[2]),
            ms(best[3]),
            ratio(best[2], base[2]),
            ratio(best[3], base[3]),
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.adversarial {
        return adversarial(&args);
    }
    for batch_size in [1, 100, BATCH_EVENTS_MAX] {
        if !args.durable_only {
            apply_in_memory(&args, batch_size)?;
        }
    }
    if args.apply_only {
        return Ok(());
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("create {}", args.dir.display()))?;
    let mut last = None;
    for batch_size in [1, 100, BATCH_EVENTS_MAX] {
        let run = tempfile::tempdir_in(&args.dir)?;
        let (hash, total) = durable(&args, batch_size, run.path())?;
        // The same transfers through the committer's pipeline, without and with overlap;
        // each must reach the same state.
        for unsynced_max in [1, 2] {
            let pipelined = tempfile::tempdir_in(&args.dir)?;
            let (pipelined_hash, _) = durable_pipelined(&args, batch_size, pipelined.path(), unsynced_max)?;
            anyhow::ensure!(pipelined_hash == hash, "the pipelined run (depth {unsynced_max}) reached another state");
        }
        if batch_size == BATCH_EVENTS_MAX {
            last = Some((run, hash, total));
        }
    }
    if args.durable_only {
        return Ok(());
    }
    let (run, hash, _) = last.expect("the 8189 run");
    // Drop the page cache's advantage as far as we can without root tricks: this measures
    // recovery from a warm cache (the common restart case); see docs/ledger.md.
    recover(run.path(), hash, "from the WAL only      ")?;
    {
        let mut ledger = Ledger::open(FileStorage::open(run.path())?, LedgerConfig::default())?;
        let start = Instant::now();
        ledger.checkpoint()?;
        println!("checkpoint write: {:.3} s", start.elapsed().as_secs_f64());
    }
    recover(run.path(), hash, "from a checkpoint      ")?;
    Ok(())
}
