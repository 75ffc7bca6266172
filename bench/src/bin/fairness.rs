//! Ledger-thread fairness: the latency of durable writes alone, then with a flood of maximal
//! read queries beside them, in one run, through the appliance's own ledger thread
//! (`committer::run`, real WAL with fsync). Each reply is rendered as a connection renders it,
//! and its size is checked against the reply byte cap.
//!
//! ```text
//! cargo run --release -p bench --bin fairness -- [--dir DIR] [--seconds N]
//! ```
//!
//! Figures go to stdout; docs/PERFORMANCE.md ("Ledger fairness") records a run and its method.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use ledger_svc::api::{self, Command, QUERY_REPLY_BYTES_MAX};
use ledger_svc::{Account, AccountFilter, FileStorage, Ledger, LedgerConfig, Operation, Transfer};
use pantera::committer::{self, Channels, Completion, ReplyTo, Submission};
use pantera::metrics::Metrics;

#[derive(Parser, Debug)]
#[command(about = "Write latency with and without a flood of maximal reads")]
struct Args {
    /// Directory for the WAL (a real disk: every write batch is fsynced).
    #[arg(long, default_value = "target/fairness-bench")]
    dir: PathBuf,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writer threads, each with one transfer in flight.
    #[arg(long, default_value_t = 4)]
    writers: usize,
    /// Reader threads, each keeping `reads_in_flight` maximal queries in flight.
    #[arg(long, default_value_t = 4)]
    readers: usize,
    #[arg(long, default_value_t = 8)]
    reads_in_flight: usize,
    /// Transfers on account 1 before the run, so every query returns a full page.
    #[arg(long, default_value_t = 20_000)]
    history: usize,
}

struct Phase {
    writes: Histogram<u64>,
    reads: u64,
    reply_bytes_max: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).with_context(|| format!("{}", args.dir.display()))?;
    let storage = FileStorage::open(&args.dir)?;
    let mut ledger = Ledger::open(storage, LedgerConfig::default())?;
    // Two accounts and a history on account 1 (applied directly, before the clock starts).
    let accounts = (1..=2u128).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
    ledger.submit(committer::now_ns(), &[Operation::CreateAccounts(accounts)])?;
    let mut id = 1_000u128;
    for chunk in 0..args.history.div_ceil(8189) {
        let n = (args.history - chunk * 8189).min(8189);
        let batch = (0..n).map(|_| {
            id += 1;
            transfer(id)
        });
        ledger.submit(committer::now_ns(), &[Operation::CreateTransfers(batch.collect())])?;
    }
    let workers = args.writers + args.readers;
    let Channels { client, submissions, replies_tx, replies_rx } = committer::channels(4096, workers);
    let metrics = Metrics::new();
    let ledger_thread = thread::spawn(move || {
        committer::run(&mut ledger, &submissions, &replies_tx, &committer::CommitSettings::fsync(32_756, pantera::config::LEDGER_PIPELINE_DEPTH_DEFAULT), &metrics).expect("ledger thread");
    });

    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(10_000_000));
    let mut phases = Vec::new();
    for with_reads in [false, true] {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for (w, replies) in replies_rx.iter().enumerate().take(args.writers) {
            let (client, replies, stop, next_id) = (client.clone(), replies.clone(), Arc::clone(&stop), Arc::clone(&next_id));
            writers.push(thread::spawn(move || {
                let mut h = Histogram::<u64>::new(3).expect("histogram");
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let id = next_id.fetch_add(1, Ordering::Relaxed) as u128;
                    let command = Command::Mutate(Operation::CreateTransfers(vec![transfer(id)]));
                    let started = Instant::now();
                    seq += 1;
                    if client.submit(Submission { reply_to: ReplyTo { worker: w, slot: 0, generation: 0, seq }, command }).is_err() {
                        thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    let c: Completion = replies.recv().expect("reply");
                    let response = api::render(&c.reply);
                    assert_eq!(response.status, 200);
                    h.record(started.elapsed().as_micros() as u64).expect("record");
                }
                h
            }));
        }
        let mut readers = Vec::new();
        if with_reads {
            for r in 0..args.readers {
                let worker = args.writers + r;
                let (client, replies, stop) = (client.clone(), replies_rx[worker].clone(), Arc::clone(&stop));
                let in_flight_max = args.reads_in_flight;
                readers.push(thread::spawn(move || {
                    let filter = AccountFilter { account_id: 1, limit: 8189, debits: true, credits: true, ..AccountFilter::default() };
                    let (mut reads, mut in_flight, mut bytes_max, mut seq) = (0u64, 0, 0usize, 0);
                    while !stop.load(Ordering::Relaxed) {
                        while in_flight < in_flight_max {
                            seq += 1;
                            let s = Submission { reply_to: ReplyTo { worker, slot: 0, generation: 0, seq }, command: Command::AccountTransfers(filter) };
                            if client.submit(s).is_err() {
                                break;
                            }
                            in_flight += 1;
                        }
                        let Ok(c) = replies.recv_timeout(Duration::from_millis(100)) else { continue };
                        in_flight -= 1;
                        let response = api::render(&c.reply);
                        bytes_max = bytes_max.max(response.body.len());
                        reads += 1;
                    }
                    // Collect what is still in flight so the next phase starts clean.
                    while in_flight > 0 && replies.recv_timeout(Duration::from_secs(5)).is_ok() {
                        in_flight -= 1;
                    }
                    (reads, bytes_max)
                }));
            }
        }
        thread::sleep(Duration::from_secs(args.seconds));
        stop.store(true, Ordering::Relaxed);
        let mut writes = Histogram::<u64>::new(3)?;
        for w in writers {
            writes.add(w.join().expect("writer"))?;
        }
        let (mut reads, mut reply_bytes_max) = (0, 0);
        for r in readers {
            let (n, b) = r.join().expect("reader");
            reads += n;
            reply_bytes_max = reply_bytes_max.max(b);
        }
        phases.push(Phase { writes, reads, reply_bytes_max });
    }
    drop(client);
    ledger_thread.join().expect("ledger thread");

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("# Ledger fairness: {} writers (1 transfer in flight each, fsync), {} readers x {} maximal queries (limit=8189) in flight, {} s per phase; load {}", args.writers, args.readers, args.reads_in_flight, args.seconds, load.trim());
    println!("| phase | writes/s | write p50 µs | write p99 µs | write p99.9 µs | reads/s | largest reply bytes |");
    println!("|---|---|---|---|---|---|---|");
    for (name, p) in ["writes alone", "writes + read flood"].iter().zip(&phases) {
        println!(
            "| {name} | {:.0} | {} | {} | {} | {:.0} | {} |",
            p.writes.len() as f64 / args.seconds as f64,
            p.writes.value_at_quantile(0.5),
            p.writes.value_at_quantile(0.99),
            p.writes.value_at_quantile(0.999),
            p.reads as f64 / args.seconds as f64,
            p.reply_bytes_max
        );
    }
    let ratio = phases[1].writes.value_at_quantile(0.99) as f64 / phases[0].writes.value_at_quantile(0.99).max(1) as f64;
    println!("write p99 with the read flood / alone: {ratio:.2}x (the bound: 2x); reply cap {QUERY_REPLY_BYTES_MAX} bytes");
    ensure!(phases[1].reply_bytes_max <= QUERY_REPLY_BYTES_MAX, "a reply exceeded the byte cap");
    ensure!(phases[1].reads > 0, "the read flood got no answers");
    Ok(())
}

fn transfer(id: u128) -> Transfer {
    Transfer { id, debit_account_id: 1, credit_account_id: 2, amount: 1, ledger: 1, code: 1, ..Transfer::default() }
}
