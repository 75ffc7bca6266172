//! Checkpoints off the commit path (`begin_checkpoint`, `CheckpointJob::write` on a second
//! storage handle, `finish_checkpoint`), on the simulated disk: a crash at every storage call
//! of the writer (its write and its removals), with batches acknowledged meanwhile, recovers
//! to the last acknowledged batch; a checkpoint renamed but not finished is loaded and the segments it
//! covers are skipped; the WAL appends to a segment the checkpoint never removes; the
//! protocol refuses calls out of order.

use ledger_svc::ledger::CheckpointJob;
use ledger_svc::storage::SimRng;
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;

fn accounts() -> Operation {
    Operation::CreateAccounts(
        (1..=4)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: AccountFlags::HISTORY,
                ..Default::default()
            })
            .collect(),
    )
}

fn transfers(batch: u64) -> Operation {
    Operation::CreateTransfers(
        (0..5u64)
            .map(|i| Transfer {
                id: u128::from(batch * 100 + i + 1),
                debit_account_id: u128::from(1 + (batch + i) % 4),
                credit_account_id: u128::from(1 + (batch + i + 1) % 4),
                amount: u128::from(1 + i),
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    )
}

/// Manual checkpoints only, and small segments so that several roll during a test.
fn config() -> LedgerConfig {
    LedgerConfig {
        checkpoint_every_batches: 0,
        segment_bytes_max: 2048,
        ..LedgerConfig::default()
    }
}

/// A ledger with the accounts and `batches` batches of transfers (sequence `batches + 1`).
fn ledger_with(batches: u64) -> Ledger<SimStorage> {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    for batch in 0..batches {
        submit(&mut ledger, batch);
    }
    ledger
}

fn submit(ledger: &mut Ledger<SimStorage>, batch: u64) {
    ledger
        .submit(NOW + (batch + 1) * 1_000_000, &[transfers(batch)])
        .unwrap();
}

fn recover(storage: SimStorage) -> Ledger<SimStorage> {
    Ledger::open(storage, config()).unwrap_or_else(|e| panic!("recovery failed: {e}"))
}

/// The storage calls of a whole `CheckpointJob::write` at this test's size: one read per
/// segment replayed, remove the temp file, one chunk (state and trailer) appended and
/// synced, rename, directory sync, then one removal per superseded file and a directory
/// sync.
fn write_calls(job_sequence: u64) -> u64 {
    let mut ledger = ledger_with(job_sequence - 1);
    let mut writer = ledger.storage().reopen().unwrap();
    let mut job = ledger.begin_checkpoint().unwrap().unwrap();
    job.write(&mut writer).unwrap();
    writer.calls()
}

#[test]
fn a_crash_at_any_call_of_a_background_checkpoint_recovers_the_acknowledged_state() {
    let calls = write_calls(13);
    // 12 batches of about 700 bytes in 2 KiB segments: several segments to remove.
    assert!(calls >= 5 + 2 * 4, "{calls} calls");
    let mut cases = 0;
    for writer_fails_after in 0..=calls {
        for seed in 0..16u64 {
            let mut rng = SimRng::new(seed ^ (writer_fails_after << 8));
            let mut ledger = ledger_with(12);
            let mut writer = ledger.storage().reopen().unwrap();
            let mut job = ledger.begin_checkpoint().unwrap().expect("none in flight");
            assert_eq!(job.sequence(), 13);
            // Batches are acknowledged while the checkpoint is being written.
            submit(&mut ledger, 12);
            submit(&mut ledger, 13);
            writer.fail_after(writer_fails_after);
            let written = job.write(&mut writer).is_ok();
            assert_eq!(written, writer_fails_after >= calls);
            if written {
                submit(&mut ledger, 14);
                ledger.finish_checkpoint(job).unwrap();
                assert_eq!(ledger.checkpoint_sequence(), 13);
                // The ledger goes on after its checkpoint.
                submit(&mut ledger, 15);
            }
            // Every batch submitted returned Ok: all are acknowledged.
            let acknowledged = (ledger.sequence(), ledger.state().state_hash());
            drop(writer);
            let crashed = ledger.into_storage().crash(&mut rng);
            let recovered = recover(crashed);
            assert_eq!(
                (recovered.sequence(), recovered.state().state_hash()),
                acknowledged,
                "writer fails after {writer_fails_after} of {calls} calls, seed {seed}"
            );
            // No leftover of an interrupted write survives recovery.
            let names = recovered.into_storage().list().unwrap();
            assert!(
                !names.iter().any(|n| n == checkpoint::CHECKPOINT_TEMP_NAME),
                "{names:?}"
            );
            cases += 1;
        }
    }
    assert_eq!(cases, (calls + 1) * 16);
}

#[test]
fn a_checkpoint_renamed_before_its_removals_is_loaded_and_its_segments_skipped() {
    let mut ledger = ledger_with(12);
    let segments_before = ledger
        .storage_mut()
        .list()
        .unwrap()
        .iter()
        .filter(|n| wal::parse_segment_name(n).is_some())
        .count();
    assert!(segments_before >= 2, "small segments roll");
    let mut job = ledger.begin_checkpoint().unwrap().unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    submit(&mut ledger, 12);
    submit(&mut ledger, 13);
    // The writer dies right after the rename is durable (read each segment to replay it,
    // remove the temp file, append and sync the one chunk that holds the whole small state
    // and its trailer, rename, directory sync: segments + 5 calls), before it removes
    // anything; then the process dies. Every write so far was synced.
    writer.fail_after(segments_before as u64 + 5);
    assert!(job.write(&mut writer).is_err());
    let names = ledger.storage_mut().list().unwrap();
    assert!(
        names.contains(&checkpoint::checkpoint_name(13)),
        "{names:?}"
    );
    let acknowledged = ledger.state().state_hash();
    let crashed = ledger.into_storage().crash(&mut SimRng::new(1));
    let mut recovered = recover(crashed);
    assert_eq!(recovered.state().state_hash(), acknowledged);
    assert_eq!(recovered.recovery().checkpoint_sequence, 13);
    assert_eq!(recovered.recovery().records_replayed, 2);
    // The old segments are still there; the next checkpoint removes them.
    let names = recovered.storage_mut().list().unwrap();
    assert!(names
        .iter()
        .any(|n| wal::parse_segment_name(n).is_some_and(|s| s <= 13)));
    recovered.checkpoint().unwrap();
    let names = recovered.storage_mut().list().unwrap();
    assert_eq!(
        names,
        vec![checkpoint::checkpoint_name(15)],
        "one checkpoint, no segment before the next batch"
    );
    submit(&mut recovered, 14);
    let hash = recovered.state().state_hash();
    let again = recover(recovered.into_storage().crash(&mut SimRng::new(2)));
    assert_eq!(again.state().state_hash(), hash);
}

#[test]
fn the_writer_removes_only_the_segments_begun_before_the_checkpoint() {
    let mut ledger = ledger_with(6);
    let mut job = ledger.begin_checkpoint().unwrap().unwrap();
    let sequence = job.sequence();
    // Enough batches to roll several segments while the checkpoint is in flight.
    for batch in 6..20 {
        submit(&mut ledger, batch);
    }
    let mut writer = ledger.storage().reopen().unwrap();
    job.write(&mut writer).unwrap();
    let after: Vec<String> = ledger
        .storage_mut()
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| wal::parse_segment_name(n).is_some_and(|s| s > sequence))
        .collect();
    assert!(after.len() >= 2, "{after:?}");
    assert_eq!(
        wal::parse_segment_name(&after[0]),
        Some(sequence + 1),
        "begin_checkpoint rolled the WAL"
    );
    ledger.finish_checkpoint(job).unwrap();
    let mut expected = vec![checkpoint::checkpoint_name(sequence)];
    expected.extend(after);
    assert_eq!(ledger.storage_mut().list().unwrap(), expected);
    let hash = ledger.state().state_hash();
    let recovered = recover(ledger.into_storage().crash(&mut SimRng::new(3)));
    assert_eq!(recovered.state().state_hash(), hash);
    assert_eq!(recovered.recovery().records_replayed, 14);
}

#[test]
fn the_checkpoint_protocol_refuses_calls_out_of_order() {
    let mut ledger = Ledger::open(
        SimStorage::new(),
        LedgerConfig {
            checkpoint_every_batches: 2,
            ..config()
        },
    )
    .unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    assert!(!ledger.checkpoint_due());
    submit(&mut ledger, 0);
    // `submit` never checkpoints by itself.
    assert!(ledger.checkpoint_due());
    assert_eq!(ledger.checkpoint_sequence(), 0);
    let job = ledger.begin_checkpoint().unwrap().unwrap();
    assert_eq!(ledger.checkpoint_in_flight(), Some(2));
    submit(&mut ledger, 1);
    submit(&mut ledger, 2);
    // One in flight at most.
    assert!(!ledger.checkpoint_due());
    assert!(ledger.begin_checkpoint().unwrap().is_none());
    assert!(matches!(
        ledger.checkpoint(),
        Err(LedgerError::CheckpointProtocol(_))
    ));
    // Not written yet.
    let error = ledger.finish_checkpoint(job).unwrap_err();
    assert!(
        matches!(error, LedgerError::CheckpointProtocol(_)) && error.is_fatal(),
        "{error}"
    );
    // A job of another ledger (a different sequence) is refused too.
    let mut other = ledger_with(0);
    let mut stranger: CheckpointJob = other.begin_checkpoint().unwrap().unwrap();
    stranger.write(other.storage_mut()).unwrap();
    assert!(
        stranger.write(other.storage_mut()).is_err(),
        "written twice"
    );
    assert!(matches!(
        ledger.finish_checkpoint(stranger),
        Err(LedgerError::CheckpointProtocol(_))
    ));
}

#[test]
fn the_encoded_checkpoint_reads_back_and_the_next_one_supersedes_it() {
    let mut ledger = ledger_with(10);
    let mut job = ledger.begin_checkpoint().unwrap().unwrap();
    assert_eq!(
        job.file_bytes(),
        0,
        "built by the writer, not by begin_checkpoint"
    );
    let mut writer = ledger.storage().reopen().unwrap();
    job.write(&mut writer).unwrap();
    let bytes = job.file_bytes();
    ledger.finish_checkpoint(job).unwrap();
    let name = checkpoint::checkpoint_name(11);
    let file = ledger.storage_mut().read(&name).unwrap();
    assert_eq!(file.len() as u64, bytes);
    let (sequence, state) = checkpoint::read(&file, IdHashKey::new([1, 2, 3, 4])).unwrap();
    assert_eq!(sequence, 11);
    assert_eq!(state.state_hash(), ledger.state().state_hash());
    // The next checkpoint (from the replica the first one handed back, advanced by one
    // batch) reads back too, and supersedes the first.
    submit(&mut ledger, 10);
    ledger.checkpoint().unwrap();
    let second = ledger
        .storage_mut()
        .read(&checkpoint::checkpoint_name(12))
        .unwrap();
    let (_, state) = checkpoint::read(&second, IdHashKey::new([1, 2, 3, 4])).unwrap();
    assert_eq!(state.state_hash(), ledger.state().state_hash());
    assert_eq!(
        ledger.storage_mut().list().unwrap(),
        vec![checkpoint::checkpoint_name(12)]
    );
}

/// Replay costs per event: with a bound by events, large batches bring the checkpoint sooner
/// than the bound by batches would, counting from the checkpoint's own batch (events logged
/// while it is in flight count toward the next), and across a restart (the events replayed
/// after the newest checkpoint count too).
#[test]
fn a_checkpoint_is_due_after_the_bound_by_events_as_well_as_by_batches() {
    let config = || LedgerConfig {
        checkpoint_every_batches: 1000,
        checkpoint_every_events: 12,
        ..config()
    };
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap(); // 4 events
    submit(&mut ledger, 0); // 9
    assert!(!ledger.checkpoint_due(), "9 events of 12");
    submit(&mut ledger, 1); // 14
    assert!(ledger.checkpoint_due(), "14 events of 12, 3 batches of 1000");
    let mut writer = ledger.storage().reopen().unwrap();
    let mut job = ledger.begin_checkpoint().unwrap().unwrap();
    submit(&mut ledger, 2); // 5 after the checkpoint's batch
    assert!(!ledger.checkpoint_due(), "one in flight");
    job.write(&mut writer).unwrap();
    ledger.finish_checkpoint(job).unwrap();
    assert!(!ledger.checkpoint_due(), "5 events since the checkpoint");
    submit(&mut ledger, 3); // 10
    assert!(!ledger.checkpoint_due(), "10 events since the checkpoint");
    submit(&mut ledger, 4); // 15
    assert!(ledger.checkpoint_due(), "15 events since the checkpoint");
    // A restart replays the 15 events after the checkpoint: still due.
    let recovered = Ledger::open(ledger.into_storage().crash(&mut SimRng::new(5)), config()).unwrap();
    assert_eq!(recovered.recovery().events_replayed, 15);
    assert!(recovered.checkpoint_due(), "the replayed events count");
    // Without the bound by events, 6 batches of 1000 are not due.
    let ledger = Ledger::open(recovered.into_storage(), LedgerConfig { checkpoint_every_events: 0, ..config() }).unwrap();
    assert!(!ledger.checkpoint_due());
}
