//! `checkpoint`: how long a checkpoint holds the ledger thread, what recovery and a backup
//! cost, at 1M (or `--transfers N`) transfers on real files. Figures only; docs/ledger.md
//! ("Checkpoint pause, recovery and backup") records runs at 1M and 10M.
//!
//! ```text
//! cargo run --release -p bench --bin checkpoint -- [--dir DIR] [--transfers N]
//! ```
//!
//! Same workload as the `ledger` benchmark: 10,000 accounts, plain transfers between
//! pseudo-random pairs, batches of 8189, `Durability::Fsync`, files under `--dir`.
//! Prints, best, median and max of several rounds: recovery from the WAL alone; the first
//! checkpoint (its writer replays the whole WAL); then rounds of `INTERVAL_BATCHES` batches
//! followed by a checkpoint: `begin` (the only step on the ledger thread), `write` (writer
//! thread: replay of the interval, stream, removals) and `finish`; the `submit` latency of
//! batches of 500 transfers every 10 ms (a steady load that leaves the state near its size)
//! alone, while a checkpoint is written and while a backup is taken by another thread; the
//! backup and restore times; recovery from the newest checkpoint.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use ledger_svc::*;

#[derive(Parser, Debug)]
#[command(about = "Checkpoint pause, recovery and backup cost on real files")]
struct Args {
    /// Directory for the data, the backup and the restored copy (a real disk: fsynced).
    /// Emptied at the start.
    #[arg(long, default_value = "target/checkpoint-bench")]
    dir: PathBuf,
    /// Transfers in the state before the measurements.
    #[arg(long, default_value_t = 1_000_000)]
    transfers: usize,
}

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 10_000;
const ROUNDS: usize = 5;
/// Batches between two checkpoints in the rounds (the server's default is 1024; fewer here
/// keep the run short, and the ledger thread's pause does not depend on it).
const INTERVAL_BATCHES: usize = 4;
const LATENCY_BATCH: usize = 500;
const LATENCY_PACE: Duration = Duration::from_millis(10);
/// Samples of the quiet phases; the busy ones sample until the work ends, up to 10 times this.
const LATENCY_SAMPLES: usize = 300;

fn accounts() -> Vec<Operation> {
    let all: Vec<Account> = (1..=ACCOUNTS)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    all.chunks(BATCH_EVENTS_MAX)
        .map(|c| Operation::CreateAccounts(c.to_vec()))
        .collect()
}

fn transfers(first_id: u128, count: usize) -> Vec<Operation> {
    let events: Vec<Transfer> = (0..count as u128)
        .map(|i| {
            let id = first_id + i;
            let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) as u64;
            x ^= x >> 31;
            let dr = 1 + u128::from(x) % ACCOUNTS;
            let cr = 1 + (dr + 1 + u128::from(x >> 20) % (ACCOUNTS - 1)) % ACCOUNTS;
            Transfer {
                id,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: 1 + u128::from(x % 1000),
                ledger: 1,
                code: 1,
                ..Default::default()
            }
        })
        .collect();
    events
        .chunks(BATCH_EVENTS_MAX)
        .map(|c| Operation::CreateTransfers(c.to_vec()))
        .collect()
}

fn summary(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: usize| ms(samples[(samples.len() * q / 100).min(samples.len() - 1)]);
    println!(
        "{label:<47} best {:>8.3} ms  median {:>8.3} ms  p90 {:>8.3} ms  p99 {:>8.3} ms  max {:>8.3} ms  ({} samples)",
        ms(samples[0]),
        at(50),
        at(90),
        at(99),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

/// This process's resident memory, MB (Linux).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1e3
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.transfers > 0, "--transfers must be at least 1");
    let transfers_count = args.transfers;
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let data = args.dir.join("data");
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        accounts_capacity: ACCOUNTS as usize,
        // Room for every transfer of the run: growing the transfer table (a reallocation and
        // a rehash of every entry) is a stall of its own that must not land in the samples.
        transfers_capacity: transfers_count + transfers_count / 2 + 2_000_000,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(FileStorage::create(&data)?, config.clone())?;
    let mut now = NOW;
    let started = Instant::now();
    for op in accounts() {
        now += 1_000;
        ledger.submit(now, &[op])?;
    }
    let mut next_id = 1u128;
    let mut left = transfers_count;
    while left > 0 {
        let n = left.min(BATCH_EVENTS_MAX);
        now += 1_000;
        ledger.submit(now, &transfers(next_id, n))?;
        next_id += n as u128;
        left -= n;
    }
    println!(
        "state: {} accounts, {} transfers (filled in {:.1} s)",
        ledger.state().accounts_count(),
        ledger.state().transfers_count(),
        started.elapsed().as_secs_f64()
    );

    println!("resident memory, one state: {:.0} MB", rss_mb());
    // Recovery from the WAL alone (no checkpoint yet). The state hash is one pass over the
    // whole state through `StateMachine::encode`, as the ledger thread's checkpoint encode
    // was before the writer built checkpoints from the WAL: the side-by-side reference.
    let started = Instant::now();
    let hash = ledger.state().state_hash();
    println!(
        "one pass over the state (state_hash, as the old begin_checkpoint's encode): {:.1} ms",
        ms(started.elapsed())
    );
    drop(ledger);
    let started = Instant::now();
    let mut ledger = Ledger::open(FileStorage::open(&data)?, config.clone())?;
    println!(
        "recovery from the WAL alone: {:.2} s ({} records)",
        started.elapsed().as_secs_f64(),
        ledger.recovery().records_replayed
    );
    ensure!(
        ledger.state().state_hash() == hash,
        "the recovered state differs from the state before"
    );

    // The first checkpoint: its writer has no replica and replays the whole WAL.
    let mut writer = ledger.storage().reopen()?;
    let started = Instant::now();
    let mut job = ledger
        .begin_checkpoint()?
        .context("no checkpoint to take")?;
    let begin_first = started.elapsed();
    let started = Instant::now();
    job.write(&mut writer)?;
    println!(
        "first checkpoint: begin {:.3} ms, write {:.2} s (replayed {} records, {:.1} MB written)",
        ms(begin_first),
        started.elapsed().as_secs_f64(),
        job.work().records_replayed,
        job.file_bytes() as f64 / 1e6
    );
    println!(
        "resident memory with the writer's replica: {:.0} MB",
        rss_mb()
    );
    ledger.finish_checkpoint(job)?;

    let batch =
        |ledger: &mut Ledger<FileStorage>, now: &mut u64, next_id: &mut u128, events: usize| {
            let ops = transfers(*next_id, events);
            *next_id += events as u128;
            *now += 1_000;
            let started = Instant::now();
            ledger.submit(*now, &ops)?;
            Ok::<_, anyhow::Error>(started.elapsed())
        };

    // Rounds: an interval of full batches, then a checkpoint written by another thread.
    let (mut begin, mut write, mut finish) = (Vec::new(), Vec::new(), Vec::new());
    let mut work = None;
    for _ in 0..ROUNDS {
        for _ in 0..INTERVAL_BATCHES {
            batch(&mut ledger, &mut now, &mut next_id, BATCH_EVENTS_MAX)?;
        }
        let started = Instant::now();
        let mut job = ledger
            .begin_checkpoint()?
            .context("no checkpoint to take")?;
        begin.push(started.elapsed());
        let mut writer = ledger.storage().reopen()?;
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            job.write(&mut writer)?;
            Ok::<_, anyhow::Error>((job, started.elapsed()))
        });
        let (job, took) = joined(thread)?;
        write.push(took);
        work = Some(job.work());
        let started = Instant::now();
        ledger.finish_checkpoint(job)?;
        finish.push(started.elapsed());
    }
    println!(
        "state now: {} transfers; last checkpoint's work: {work:?}",
        ledger.state().transfers_count()
    );
    summary("begin_checkpoint (ledger thread)", begin);
    summary("CheckpointJob::write (writer: replay+write+rm)", write);
    summary("finish_checkpoint (ledger thread, no I/O)", finish);

    // Submit latency under a steady load (a batch of LATENCY_BATCH transfers every
    // LATENCY_PACE, at most LATENCY_SAMPLES of them, so the state stays near its size):
    // alone, while a checkpoint is written, while a backup is taken, alone again.
    let paced = |ledger: &mut Ledger<FileStorage>,
                 now: &mut u64,
                 next_id: &mut u128,
                 busy: &dyn Fn() -> bool| {
        let mut samples = Vec::new();
        while busy() && samples.len() < 10 * LATENCY_SAMPLES {
            let started = Instant::now();
            samples.push(batch(ledger, now, next_id, LATENCY_BATCH)?);
            if let Some(rest) = LATENCY_PACE.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        Ok::<_, anyhow::Error>(samples)
    };
    let quiet = std::cell::Cell::new(0);
    let quiet_phase = || {
        quiet.set(quiet.get() + 1);
        quiet.get() <= LATENCY_SAMPLES
    };
    let alone = paced(&mut ledger, &mut now, &mut next_id, &quiet_phase)?;
    summary("submit 500 transfers, alone", alone);

    let mut job = ledger
        .begin_checkpoint()?
        .context("no checkpoint to take")?;
    let mut writer = ledger.storage().reopen()?;
    let thread = std::thread::spawn(move || {
        job.write(&mut writer)?;
        Ok::<_, anyhow::Error>(job)
    });
    let during = paced(&mut ledger, &mut now, &mut next_id, &|| {
        !thread.is_finished()
    })?;
    ledger.finish_checkpoint(joined(thread)?)?;
    summary("submit 500 transfers, checkpoint being written", during);

    let backup_dir = args.dir.join("backup");
    let thread = {
        let data = data.clone();
        let backup_dir = backup_dir.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let manifest = ledger_svc::backup::take(
                &mut FileStorage::open(&data)?,
                &mut FileStorage::create(&backup_dir)?,
            )?;
            Ok::<_, anyhow::Error>((manifest, started.elapsed()))
        })
    };
    let backing_up = paced(&mut ledger, &mut now, &mut next_id, &|| {
        !thread.is_finished()
    })?;
    let (manifest, took) = joined(thread)?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!(
        "backup under load: {:.2} s for {:.1} MB in {} files, at batch {} (checkpoint {})",
        took.as_secs_f64(),
        bytes as f64 / 1e6,
        manifest.files.len(),
        manifest.sequence,
        manifest.checkpoint_sequence
    );
    summary("submit 500 transfers, backup being taken", backing_up);
    quiet.set(0);
    let alone_after = paced(&mut ledger, &mut now, &mut next_id, &quiet_phase)?;
    summary("submit 500 transfers, alone (after)", alone_after);
    println!(
        "state at the end: {} transfers",
        ledger.state().transfers_count()
    );

    // Recovery from the newest checkpoint and the batches since.
    let hash = ledger.state().state_hash();
    drop(ledger);
    let started = Instant::now();
    let ledger = Ledger::open(FileStorage::open(&data)?, config.clone())?;
    println!(
        "recovery from the checkpoint: {:.2} s (checkpoint {}, {} records after it)",
        started.elapsed().as_secs_f64(),
        ledger.recovery().checkpoint_sequence,
        ledger.recovery().records_replayed
    );
    ensure!(
        ledger.state().state_hash() == hash,
        "the recovered state differs from the state before"
    );
    drop(ledger);
    let restored = args.dir.join("restored");
    let started = Instant::now();
    ledger_svc::backup::restore(
        &mut FileStorage::open(&backup_dir)?,
        &mut FileStorage::create(&restored)?,
    )?;
    println!(
        "restore (copy, verify, recover): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    // The data, the backup and the restored copy are several times the state: not left behind.
    std::fs::remove_dir_all(&args.dir)
        .with_context(|| format!("removing {}", args.dir.display()))?;
    Ok(())
}

/// The result of a helper thread; its panic becomes an error.
fn joined<T>(thread: std::thread::JoinHandle<Result<T>>) -> Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("a helper thread panicked"))?
}
