//! How long a checkpoint holds the ledger thread, at 1M transfers on real files. A benchmark,
//! not a test (it asserts nothing about time); run it in release:
//!
//! ```text
//! cargo test --release -p ledger-svc --test checkpoint_pause -- --ignored --nocapture
//! ```
//!
//! Same workload as `bench --bin ledger`: 10,000 accounts, plain transfers between
//! pseudo-random pairs, batches of 8189, `Durability::Fsync`, files under the target dir.
//! Prints, best and median of several rounds: the synchronous `checkpoint()` (what `submit`
//! used to do every `checkpoint_every_batches` batches), and its three steps (`begin` is the
//! only one left on the ledger thread); then the `submit` latency of full batches with and
//! without a checkpoint being written by another thread at the same time.

use std::time::{Duration, Instant};

use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 10_000;
const TRANSFERS: usize = 1_000_000;
const ROUNDS: usize = 5;

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
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<47} best {:>6.1} ms  median {:>6.1} ms  p90 {:>6.1} ms  max {:>6.1} ms  ({} samples)",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() * 9 / 10]),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
}

#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn checkpoint_pause_at_1m_transfers() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        accounts_capacity: ACCOUNTS as usize,
        // Room for every transfer of the run: growing the transfer table (a reallocation and
        // a rehash of 1M entries) is a stall of its own that must not land in the samples.
        transfers_capacity: 2 * TRANSFERS,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config).unwrap();
    let mut now = NOW;
    for op in accounts() {
        now += 1_000;
        ledger.submit(now, &[op]).unwrap();
    }
    let mut next_id = 1u128;
    for op in transfers(next_id, TRANSFERS) {
        now += 1_000;
        ledger.submit(now, &[op]).unwrap();
    }
    next_id += TRANSFERS as u128;
    println!(
        "state: {} accounts, {} transfers",
        ledger.state().accounts_count(),
        ledger.state().transfers_count()
    );

    let mut full = Vec::new();
    let (mut begin, mut write, mut finish) = (Vec::new(), Vec::new(), Vec::new());
    let mut writer = ledger.storage().reopen().unwrap();
    let mut file_bytes = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        ledger.checkpoint().unwrap();
        full.push(started.elapsed());

        let started = Instant::now();
        let mut job = ledger.begin_checkpoint().unwrap().unwrap();
        begin.push(started.elapsed());
        file_bytes = job.file_bytes();
        let started = Instant::now();
        job.write(&mut writer).unwrap();
        write.push(started.elapsed());
        let started = Instant::now();
        ledger.finish_checkpoint(job).unwrap();
        finish.push(started.elapsed());
    }
    println!("checkpoint file: {:.1} MB", file_bytes as f64 / 1e6);
    summary("checkpoint() synchronous (before: in submit)", full);
    summary("begin_checkpoint (ledger thread: encode)", begin);
    summary("CheckpointJob::write (writer thread, + removals)", write);
    summary("finish_checkpoint (ledger thread, no I/O)", finish);

    // Submit latency of full batches, alone and while another thread writes a checkpoint.
    let batch = |ledger: &mut Ledger<FileStorage>, now: &mut u64, next_id: &mut u128| {
        let ops = transfers(*next_id, BATCH_EVENTS_MAX);
        *next_id += BATCH_EVENTS_MAX as u128;
        *now += 1_000;
        let started = Instant::now();
        ledger.submit(*now, &ops).unwrap();
        started.elapsed()
    };
    let alone: Vec<Duration> = (0..60)
        .map(|_| batch(&mut ledger, &mut now, &mut next_id))
        .collect();
    summary("submit 8189 transfers, no checkpoint", alone);
    let mut during = Vec::new();
    for _ in 0..4 {
        let mut job = ledger.begin_checkpoint().unwrap().unwrap();
        let mut writer = ledger.storage().reopen().unwrap();
        let thread = std::thread::spawn(move || {
            job.write(&mut writer).unwrap();
            job
        });
        while !thread.is_finished() {
            during.push(batch(&mut ledger, &mut now, &mut next_id));
        }
        ledger.finish_checkpoint(thread.join().unwrap()).unwrap();
    }
    summary("submit 8189 transfers, checkpoint being written", during);
}
