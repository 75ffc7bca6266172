//! Recovery with real files (FileStorage in a temporary directory): 100k transfers, dropped
//! without any shutdown, recovered to the same state hash; a byte flipped in the middle of
//! the WAL, a damaged checkpoint and a missing segment each make start-up fail with an error
//! naming the file and offset.

mod common;

use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 1000;

fn accounts() -> Operation {
    common::accounts(ACCOUNTS, 10)
}

/// A deterministic mix: posted transfers, pending ones with timeouts, posts and voids.
fn transfers(batch: u64, count: usize) -> Operation {
    let mut events = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let id = u128::from(batch * 1_000_000 + i + 1);
        let x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let dr = 1 + x % ACCOUNTS;
        let cr = 1 + (x / ACCOUNTS + 1) % ACCOUNTS;
        let mut t = Transfer {
            id,
            debit_account_id: dr,
            credit_account_id: if cr == dr { 1 + dr % ACCOUNTS } else { cr },
            amount: x % 1000,
            ledger: 1,
            code: 1,
            ..Default::default()
        };
        match i % 10 {
            0 => {
                t.flags = TransferFlags::PENDING;
                t.timeout = (x % 3) as u32;
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
            5 => t.flags = TransferFlags::PENDING,
            6 => {
                t = Transfer {
                    id,
                    pending_id: id - 1,
                    flags: TransferFlags::VOID_PENDING_TRANSFER,
                    ..Default::default()
                }
            }
            _ => {}
        }
        events.push(t);
    }
    Operation::CreateTransfers(events)
}

/// The state hash and the newest checkpoint's sequence after `fill`.
struct Filled {
    hash: u64,
    checkpoint_sequence: u64,
}

/// Submits the accounts and `batches` batches of transfers, checkpointing as the server does:
/// begun after a batch when due, written by another thread on its own `FileStorage` handle
/// while batches go on, finished when the writer reports back. The last checkpoint in flight
/// is waited for and finished, then the ledger is dropped with no shutdown of any kind.
fn fill(dir: &std::path::Path, config: &LedgerConfig, batches: u64, per_batch: usize) -> Filled {
    let mut ledger = Ledger::open(FileStorage::open(dir).unwrap(), config.clone()).unwrap();
    let mut writer = ledger.storage().reopen().unwrap();
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<ledger::CheckpointJob>(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::spawn(move || {
        for mut job in job_rx {
            job.write(&mut writer).unwrap();
            done_tx.send(job).unwrap();
        }
    });
    let mut checkpoints_begun = 0;
    for batch in 0..=batches {
        let ops = if batch == 0 {
            accounts()
        } else {
            transfers(batch - 1, per_batch)
        };
        let replies = ledger.submit(NOW + batch * 300_000_000, &[ops]).unwrap();
        assert_eq!(replies.len(), 1);
        if let Ok(job) = done_rx.try_recv() {
            ledger.finish_checkpoint(job).unwrap();
        }
        if ledger.checkpoint_due() {
            job_tx
                .send(ledger.begin_checkpoint().unwrap().unwrap())
                .unwrap();
            checkpoints_begun += 1;
        }
    }
    drop(job_tx);
    thread.join().unwrap();
    if let Ok(job) = done_rx.try_recv() {
        ledger.finish_checkpoint(job).unwrap();
    }
    if config.checkpoint_every_batches > 0 && batches + 1 >= config.checkpoint_every_batches {
        assert!(checkpoints_begun > 0);
    }
    assert_eq!(ledger.checkpoint_in_flight(), None);
    assert!(ledger.state().transfers_count() > 0);
    Filled {
        hash: ledger.state().state_hash(),
        checkpoint_sequence: ledger.checkpoint_sequence(),
    }
}

#[test]
fn recovers_100k_transfers_from_real_files() {
    for checkpoint_every_batches in [0, 30] {
        let dir = tempfile::tempdir().unwrap();
        let config = LedgerConfig {
            checkpoint_every_batches,
            segment_bytes_max: 4 << 20,
            ..LedgerConfig::default()
        };
        let Filled {
            hash,
            checkpoint_sequence,
        } = fill(dir.path(), &config, 100, 1000);
        let ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config.clone()).unwrap();
        assert_eq!(
            ledger.state().state_hash(),
            hash,
            "checkpoint_every_batches={checkpoint_every_batches}"
        );
        assert_eq!(ledger.sequence(), 101);
        let report = ledger.recovery().clone();
        assert_eq!(report.truncated, None);
        if checkpoint_every_batches == 0 {
            assert_eq!(report.records_replayed, 101);
            assert_eq!(report.events_replayed, 100 * 1000 + ACCOUNTS as u64);
            // 101 records of ~128 KB in 4 MiB segments: several segments.
            let segments = std::fs::read_dir(dir.path()).unwrap().count();
            assert!(segments >= 3, "{segments} files");
        } else {
            // The first checkpoint begins at batch 30; later ones whenever 30 batches passed
            // since the last one finished.
            assert!(checkpoint_sequence >= 30, "{checkpoint_sequence}");
            assert_eq!(report.checkpoint_sequence, checkpoint_sequence);
            assert_eq!(report.records_replayed, 101 - checkpoint_sequence);
            // Older segments and checkpoints were removed.
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names[0], checkpoint::checkpoint_name(checkpoint_sequence));
            assert!(
                names[1..]
                    .iter()
                    .all(|n| wal::parse_segment_name(n).is_some_and(|s| s > checkpoint_sequence)),
                "{names:?}"
            );
        }
        // And it keeps going after recovery.
        let mut ledger = ledger;
        ledger
            .submit(NOW + 1_000 * 1_000_000_000, &[transfers(500, 10)])
            .unwrap();
    }
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_wal_refuses_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        ..LedgerConfig::default()
    };
    fill(dir.path(), &config, 20, 100);
    let path = dir.path().join(wal::segment_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let error = Ledger::open(FileStorage::open(dir.path()).unwrap(), config).unwrap_err();
    let message = error.to_string();
    match &error {
        LedgerError::Corrupt { file, offset, .. } => {
            assert!(file.ends_with(&wal::segment_name(1)), "{message}");
            // The offset is the start of the damaged record: at or before the flipped byte,
            // within one record (header + 100 events of 128 bytes).
            assert!(
                *offset <= middle as u64 && middle as u64 - *offset < 32 + 8 + 100 * 128,
                "{message}"
            );
            assert!(message.contains(&format!("offset {offset}")), "{message}");
            assert!(message.contains(path.to_str().unwrap()), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(error.is_fatal());
    // The WAL was left untouched for the operator.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

#[test]
fn a_damaged_checkpoint_refuses_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        checkpoint_every_batches: 5,
        ..LedgerConfig::default()
    };
    fill(dir.path(), &config, 7, 50);
    let path = dir.path().join(checkpoint::checkpoint_name(5));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    match Ledger::open(FileStorage::open(dir.path()).unwrap(), config) {
        Err(LedgerError::Corrupt { file, .. }) => {
            assert!(file.ends_with(&checkpoint::checkpoint_name(5)))
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_missing_segment_refuses_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        segment_bytes_max: 16 * 1024,
        ..LedgerConfig::default()
    };
    fill(dir.path(), &config, 10, 50);
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segments.sort();
    assert!(segments.len() >= 3);
    std::fs::remove_file(&segments[1]).unwrap();
    match Ledger::open(FileStorage::open(dir.path()).unwrap(), config) {
        Err(LedgerError::Corrupt { reason, .. }) => {
            assert!(reason.contains("sequence"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn oversized_batches_are_refused_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(
        FileStorage::open(dir.path()).unwrap(),
        LedgerConfig::default(),
    )
    .unwrap();
    let too_many = Operation::CreateAccounts(vec![Account::default(); BATCH_EVENTS_MAX + 1]);
    let error = ledger.submit(NOW, &[too_many]).unwrap_err();
    assert!(!error.is_fatal());
    assert_eq!(ledger.sequence(), 0);
    // Not poisoned: the next batch goes through.
    ledger.submit(NOW, &[accounts()]).unwrap();
    assert_eq!(ledger.sequence(), 1);
}

#[test]
fn an_empty_batch_logs_the_clock_and_expires_pending_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig::default();
    let mut ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config.clone()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    let pending = Transfer {
        id: 1,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 10,
        ledger: 1,
        code: 1,
        timeout: 1,
        flags: TransferFlags::PENDING,
        ..Default::default()
    };
    ledger
        .submit(NOW + 1, &[Operation::CreateTransfers(vec![pending])])
        .unwrap();
    let due = ledger.state().poll_at().expect("an expiry is scheduled");
    assert!(ledger.submit(due, &[]).unwrap().is_empty());
    assert_eq!(
        ledger.state().pending_status(1),
        Some(PendingStatus::Expired)
    );
    assert_eq!(ledger.state().lookup_account(1).unwrap().debits_pending, 0);
    let hash = ledger.state().state_hash();
    drop(ledger);
    let ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config).unwrap();
    assert_eq!(
        ledger.state().pending_status(1),
        Some(PendingStatus::Expired)
    );
    assert_eq!(ledger.state().state_hash(), hash);
}

#[test]
fn durability_none_still_recovers_after_a_clean_drop() {
    let dir = tempfile::tempdir().unwrap();
    let config = LedgerConfig {
        durability: Durability::None,
        checkpoint_every_batches: 3,
        ..LedgerConfig::default()
    };
    let filled = fill(dir.path(), &config, 8, 20);
    assert!(filled.checkpoint_sequence >= 3);
    // Without a crash the page cache still holds every write.
    let ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config).unwrap();
    assert_eq!(ledger.state().state_hash(), filled.hash);
    assert_eq!(
        ledger.recovery().checkpoint_sequence,
        filled.checkpoint_sequence
    );
}

#[test]
fn recovery_under_another_id_hash_key_gives_the_same_state() {
    // Written under one key, read back (checkpoint and WAL) under another: the key is an
    // input of the process, not of the ledger's data.
    let dir = tempfile::tempdir().unwrap();
    let written = IdHashKey::new([1, 2, 3, 4]);
    let config = LedgerConfig {
        durability: Durability::None,
        checkpoint_every_batches: 3,
        id_hash_key: Some(written),
        ..LedgerConfig::default()
    };
    let filled = fill(dir.path(), &config, 8, 20);
    assert!(filled.checkpoint_sequence >= 3);
    let read = IdHashKey::new([5, 6, 7, 8]);
    let config = LedgerConfig {
        id_hash_key: Some(read),
        ..config
    };
    let ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config).unwrap();
    assert_eq!(ledger.state().id_hash_key(), read);
    assert_eq!(ledger.state().state_hash(), filled.hash);
    assert_eq!(
        ledger.recovery().checkpoint_sequence,
        filled.checkpoint_sequence
    );
}

/// The fuzz regressions' ledger: accounts and a batch of transfers, checkpointed or not.
fn two_batches(checkpointed: bool) -> (SimStorage, LedgerConfig) {
    let config = LedgerConfig { checkpoint_every_batches: 0, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(SimStorage::new(), config.clone()).unwrap();
    ledger.submit(NOW, &[common::accounts(4, 10)]).unwrap();
    ledger.submit(NOW + 1, &[transfers(1, 3)]).unwrap();
    if checkpointed {
        ledger.checkpoint().unwrap();
    }
    (ledger.into_storage(), config)
}

/// The first file of `storage` whose name `parse` takes.
fn file_named(storage: &mut SimStorage, parse: fn(&str) -> Option<u64>) -> String {
    storage.list().unwrap().into_iter().find(|n| parse(n).is_some()).unwrap()
}

/// Recovery's refusal: the offset and reason of its `Corrupt`.
fn refusal(storage: SimStorage, config: LedgerConfig) -> (u64, String) {
    match Ledger::open(storage, config) {
        Err(LedgerError::Corrupt { offset, reason, .. }) => (offset, reason),
        other => panic!("expected Corrupt, got {:?}", other.map(|l| l.sequence())),
    }
}

/// Found by the `wal_recovery` fuzz target (docs/fuzzing.md): a checkpoint whose name says a
/// later batch than it holds was taken as the newest and the WAL replayed from its content,
/// while `verify` reported the mismatch. Recovery now refuses it with the same finding.
#[test]
fn a_checkpoint_whose_name_disagrees_with_its_content_is_refused() {
    let (mut storage, config) = two_batches(true);
    let held = file_named(&mut storage, checkpoint::parse_checkpoint_name);
    let sequence = checkpoint::parse_checkpoint_name(&held).unwrap();
    storage.rename(&held, &checkpoint::checkpoint_name(sequence + 2)).unwrap();
    let (offset, reason) = refusal(storage, config);
    assert_eq!(offset, 8);
    assert_eq!(reason, format!("holds batch {sequence}, but its name says {}", sequence + 2));
}

/// A checkpoint whose checksum holds but whose books do not balance (account 1's
/// credits_posted raised and the CRC recomputed, as the `wal_recovery` fuzz target did) is
/// refused, naming the finding, instead of served.
#[test]
fn a_checkpoint_whose_books_do_not_balance_is_refused() {
    let (mut storage, config) = two_batches(true);
    let name = file_named(&mut storage, checkpoint::parse_checkpoint_name);
    let mut bytes = storage.read(&name).unwrap();
    // The state: its clock (8), the account count (8), then account 1: id, debits_pending,
    // debits_posted, credits_pending, credits_posted (16 each).
    let at = checkpoint::STATE_OFFSET as usize + 8 + 8;
    assert_eq!(bytes[at..at + 16], 1u128.to_le_bytes(), "account 1 where the layout puts it");
    let credits = u128::from_le_bytes(bytes[at + 64..at + 80].try_into().unwrap());
    bytes[at + 64..at + 80].copy_from_slice(&(credits + 5).to_le_bytes());
    let trailer = bytes.len() - 16;
    let crc = crc32c::crc32c(&bytes[..trailer + 8]);
    bytes[trailer + 8..trailer + 12].copy_from_slice(&crc.to_le_bytes());
    storage.remove(&name).unwrap();
    storage.append(&name, &bytes).unwrap();
    let (offset, reason) = refusal(storage, config);
    assert_eq!(offset, checkpoint::STATE_OFFSET);
    assert!(reason.starts_with("its state breaks the ledger's invariants: "), "{reason}");
    assert!(reason.contains("credits_posted"), "{reason}");
}

/// A segment is named after its first record's batch, and the names order the replay: one
/// renamed (or copied over another) is refused, as `verify` reports it (found by the
/// `wal_recovery` fuzz target: old records after new ones were skipped as covered by the
/// checkpoint, and the clean stop then placed the WAL's end in the wrong segment).
#[test]
fn a_segment_whose_name_disagrees_with_its_first_record_is_refused() {
    let (mut storage, config) = two_batches(false);
    let segment = file_named(&mut storage, wal::parse_segment_name);
    assert_eq!(wal::parse_segment_name(&segment), Some(1));
    storage.rename(&segment, &wal::segment_name(5)).unwrap();
    let report = verify::verify(&mut storage).unwrap();
    assert!(
        report.findings.iter().any(|f| f.what.contains("first record is batch 1, but its name says 5")),
        "{:?}",
        report.findings
    );
    assert_eq!(refusal(storage, config), (0, "its first record is batch 1, but its name says 5".to_owned()));
}
