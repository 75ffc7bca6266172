//! Checkpoints built by the writer from the WAL (`CheckpointJob::write` replays the closed
//! segments into its replica of the state): the ledger thread's part does not grow with the
//! state (counted work, not wall time: the same directory entries and storage calls from 20k
//! to 110k transfers, and no pass over the state), the writer replays only the batches since the
//! previous checkpoint, every checkpoint holds exactly the ledger's state at its batch, the
//! first checkpoint after a restart starts from the previous one, and damage to a closed
//! segment, or a replica that does not match the ledger, stops the checkpoint before it
//! writes or removes anything.

mod common;

use ledger_svc::ledger::CheckpointJob;
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 64;
const PER_BATCH: u64 = 1000;
/// A checkpoint every this many batches of `PER_BATCH` transfers: every 10k transfers.
const EVERY: u64 = 10;

fn config() -> LedgerConfig {
    LedgerConfig {
        checkpoint_every_batches: EVERY,
        // Small segments: several per checkpoint interval, so the listing is not trivially 1.
        segment_bytes_max: 512 * 1024,
        id_hash_key: Some(IdHashKey::new([1, 2, 3, 4])),
        ..LedgerConfig::default()
    }
}

fn accounts() -> Operation {
    common::accounts(ACCOUNTS, 8)
}

/// Plain and pending transfers (some expiring, some posted or voided later in the batch).
fn transfers(batch: u64) -> Operation {
    let events = (0..PER_BATCH)
        .map(|i| {
            let id = u128::from(batch * PER_BATCH + i + 1);
            let x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let dr = 1 + x % ACCOUNTS;
            let cr = 1 + (dr + x / ACCOUNTS % (ACCOUNTS - 1)) % ACCOUNTS;
            let mut t = Transfer {
                id,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: 1 + x % 100,
                ledger: 1,
                code: 1,
                ..Default::default()
            };
            match i % 7 {
                0 => {
                    t.flags = TransferFlags::PENDING;
                    t.timeout = 1 + (x % 2) as u32;
                }
                1 if i > 0 => {
                    t = Transfer {
                        id,
                        pending_id: id - 1,
                        amount: AMOUNT_MAX,
                        flags: TransferFlags::POST_PENDING_TRANSFER,
                        ..Default::default()
                    }
                }
                _ => {}
            }
            t
        })
        .collect();
    Operation::CreateTransfers(events)
}

fn now(batch: u64) -> u64 {
    NOW + batch * 300_000_000
}

/// The checkpoint file of `sequence` holds exactly `hash`.
fn assert_checkpoint_holds(storage: &mut SimStorage, sequence: u64, hash: u64) {
    let bytes = storage
        .read(&checkpoint::checkpoint_name(sequence))
        .unwrap();
    let (read_sequence, state) = checkpoint::read(&bytes, IdHashKey::new([9, 9, 9, 9])).unwrap();
    assert_eq!(read_sequence, sequence);
    assert_eq!(state.state_hash(), hash, "checkpoint {sequence}");
}

/// Runs `batches` more batches, beginning, writing (on a second handle) and finishing a
/// checkpoint whenever one is due, the write while two more batches are acknowledged. Returns
/// the jobs' work and, for each, the storage calls `begin_checkpoint` made on the ledger's
/// handle.
fn run(
    ledger: &mut Ledger<SimStorage>,
    writer: &mut SimStorage,
    next_batch: &mut u64,
    batches: u64,
) -> Vec<(u64, ledger::CheckpointWork, u64)> {
    let mut jobs = Vec::new();
    for _ in 0..batches {
        ledger
            .submit(now(*next_batch), &[transfers(*next_batch)])
            .unwrap();
        *next_batch += 1;
        if ledger.checkpoint_due() {
            let hash = ledger.state().state_hash();
            let calls = ledger.storage().calls();
            let mut job: CheckpointJob = ledger.begin_checkpoint().unwrap().unwrap();
            let begin_calls = ledger.storage().calls() - calls;
            assert_eq!(
                job.file_bytes(),
                0,
                "nothing is encoded by begin_checkpoint"
            );
            let sequence = job.sequence();
            // The WAL goes on while the writer replays and writes.
            ledger
                .submit(now(*next_batch), &[transfers(*next_batch)])
                .unwrap();
            *next_batch += 1;
            job.write(writer).unwrap();
            ledger
                .submit(now(*next_batch), &[transfers(*next_batch)])
                .unwrap();
            *next_batch += 1;
            let work = job.work();
            ledger.finish_checkpoint(job).unwrap();
            assert_checkpoint_holds(writer, sequence, hash);
            jobs.push((sequence, work, begin_calls));
        }
    }
    jobs
}

#[test]
fn the_ledger_threads_share_does_not_grow_from_10k_to_100k_transfers() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    let mut next_batch = 0;
    let jobs = run(&mut ledger, &mut writer, &mut next_batch, 100);
    assert!(ledger.state().transfers_count() >= 100_000);
    // The second checkpoint (at about 20k transfers; the first has no checkpoint before it
    // to list) and the last (at about 110k).
    let (first_sequence, first, first_calls) = jobs[1];
    let (last_sequence, last, last_calls) = *jobs.last().unwrap();
    println!("at ~20k:  batch {first_sequence} {first:?}, begin calls {first_calls}");
    println!("at ~110k: batch {last_sequence} {last:?}, begin calls {last_calls}");
    assert!(jobs.len() >= 7, "{} checkpoints", jobs.len());
    // The ledger thread listed the same directory entries (the interval's segments and the
    // previous checkpoint) and made the same storage calls (one listing) with five times the
    // state: its share is constant.
    assert_eq!(first_calls, 1);
    for &(sequence, work, calls) in &jobs[1..] {
        assert_eq!(calls, first_calls, "batch {sequence}");
        assert_eq!(
            work.ledger_thread_entries, first.ledger_thread_entries,
            "batch {sequence}"
        );
    }
    // The writer replays what happened since the previous checkpoint, not the state; after
    // the first checkpoint it never reads one back (its replica is kept).
    for &(_, work, _) in &jobs[1..] {
        assert_eq!(work.records_replayed, EVERY);
        assert_eq!(work.events_replayed, EVERY * PER_BATCH);
        assert_eq!(work.checkpoint_bytes_loaded, 0);
    }
    // What it writes is the whole state, which did grow.
    assert!(
        last.bytes_written > 4 * first.bytes_written,
        "{first:?} {last:?}"
    );
    // And the ledger recovers from the newest checkpoint to its state.
    let hash = ledger.state().state_hash();
    let sequence = ledger.sequence();
    let recovered = Ledger::open(ledger.into_storage().crash_clean(), config()).unwrap();
    assert_eq!(recovered.recovery().checkpoint_sequence, last_sequence);
    assert_eq!(
        (recovered.sequence(), recovered.state().state_hash()),
        (sequence, hash)
    );
}

#[test]
fn the_first_checkpoint_after_a_restart_starts_from_the_previous_one() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    let mut next_batch = 0;
    let jobs = run(&mut ledger, &mut writer, &mut next_batch, 14);
    assert_eq!(jobs.len(), 1);
    // The replica of a fresh ledger starts empty and replays from batch 1.
    assert_eq!(jobs[0].1.checkpoint_bytes_loaded, 0);
    assert_eq!(jobs[0].1.records_replayed, jobs[0].0);
    drop(writer);
    // Stop without a checkpoint, with batches after the one written.
    let storage = ledger.into_storage().crash_clean();
    let mut ledger = Ledger::open(storage, config()).unwrap();
    let checkpoint_sequence = ledger.checkpoint_sequence();
    assert_eq!(checkpoint_sequence, jobs[0].0);
    let mut writer = ledger.storage().reopen().unwrap();
    let jobs = run(&mut ledger, &mut writer, &mut next_batch, 12);
    assert_eq!(jobs.len(), 2);
    let (sequence, work, _) = jobs[0];
    // It read the previous checkpoint back and replayed only the batches after it; the next
    // one starts from the replica the first one kept.
    assert!(work.checkpoint_bytes_loaded > 0);
    assert_eq!(work.records_replayed, sequence - checkpoint_sequence);
    assert_eq!(jobs[1].1.checkpoint_bytes_loaded, 0);
    assert_eq!(jobs[1].1.records_replayed, jobs[1].0 - sequence);
}

/// A ledger with a checkpoint due, and a job begun (its segments closed).
fn begun() -> (Ledger<SimStorage>, CheckpointJob, Vec<String>) {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    for batch in 0..EVERY {
        ledger.submit(now(batch), &[transfers(batch)]).unwrap();
    }
    assert!(ledger.checkpoint_due());
    let job = ledger.begin_checkpoint().unwrap().unwrap();
    let names = ledger.storage_mut().list().unwrap();
    (ledger, job, names)
}

#[test]
fn a_damaged_closed_segment_stops_the_checkpoint_before_it_writes_or_removes_anything() {
    let (mut ledger, mut job, names) = begun();
    let segment = names
        .iter()
        .find(|n| wal::parse_segment_name(n).is_some())
        .unwrap()
        .clone();
    // Flip one byte in the middle of the first record's body.
    let mut bytes = ledger.storage_mut().read(&segment).unwrap();
    bytes[100] ^= 0x40;
    let storage = ledger.storage_mut();
    storage.truncate(&segment, 0).unwrap();
    storage.append(&segment, &bytes).unwrap();
    storage.sync(&segment).unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    let error = job.write(&mut writer).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, LedgerError::Corrupt { offset: 0, .. }),
        "{message}"
    );
    assert!(
        message.contains(&segment) && message.contains("closed segment"),
        "{message}"
    );
    assert!(error.is_fatal());
    assert_eq!(
        ledger.storage_mut().list().unwrap(),
        names,
        "nothing written or removed"
    );
}

#[test]
fn a_replica_that_does_not_match_the_ledger_is_never_written() {
    let (mut ledger, mut job, names) = begun();
    // Rewrite the newest closed segment's last record as a valid record of the same batch with
    // a different last transfer: the WAL no longer holds what the ledger applied, which only
    // a nondeterministic replay could otherwise produce.
    let segment = names
        .iter()
        .rev()
        .find(|n| wal::parse_segment_name(n).is_some())
        .unwrap()
        .clone();
    let bytes = ledger.storage_mut().read(&segment).unwrap();
    let mut reader = wal::SegmentReader::new(&bytes);
    let mut last = None;
    while let wal::ReadOutcome::Record {
        offset,
        header,
        body,
    } = reader.next_record()
    {
        last = Some((offset, header, wal::decode_body(body).unwrap()));
    }
    let (offset, header, mut ops) = last.unwrap();
    let Operation::CreateTransfers(events) = &mut ops[0] else {
        panic!("transfers expected")
    };
    events.last_mut().unwrap().amount += 1;
    let mut record = Vec::new();
    wal::encode_record(&mut record, header.sequence, header.now_ns, header.parent, &ops);
    let storage = ledger.storage_mut();
    storage.truncate(&segment, offset).unwrap();
    storage.append(&segment, &record).unwrap();
    storage.sync(&segment).unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    let error = job.write(&mut writer).unwrap_err();
    assert!(
        matches!(error, LedgerError::ReplicaDiverged { sequence, .. } if sequence == EVERY + 1),
        "{error}"
    );
    assert!(error.is_fatal());
    assert_eq!(
        ledger.storage_mut().list().unwrap(),
        names,
        "nothing written or removed"
    );
}
