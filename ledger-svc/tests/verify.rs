//! `verify` (docs/operations.md, "Inspecting and verifying a data directory"): a healthy data
//! directory verifies, replaying to the ledger's own state hash with Σ debits = Σ credits;
//! each kind of damage (a flipped header bit, a flipped body bit, a truncated record, a
//! record spliced in from another log, a damaged checkpoint, superblock or clean-stop marker)
//! fails, naming the file, the byte offset and, for a record, its sequence; and neither the
//! verification nor the in-memory recovery that `inspect --account` uses changes a byte.

use std::collections::BTreeMap;
use std::path::Path;

use ledger_svc::verify::{self, Report};
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;

fn accounts() -> Operation {
    Operation::CreateAccounts(
        (1..=4)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: if id == 4 {
                    AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS
                } else {
                    AccountFlags::default()
                },
                ..Default::default()
            })
            .collect(),
    )
}

fn transfers(batch: u64) -> Operation {
    Operation::CreateTransfers(
        (0..1 + batch % 3)
            .map(|i| Transfer {
                id: u128::from(batch * 100 + i + 1),
                debit_account_id: 1 + u128::from((batch + i) % 3),
                credit_account_id: 1 + u128::from((batch + i + 1) % 3),
                amount: u128::from(batch + 1),
                ledger: 1,
                code: 1,
                // Some stay pending (no timeout), so the pending sums are not trivially zero.
                flags: if i == 1 {
                    TransferFlags::PENDING
                } else {
                    TransferFlags::default()
                },
                ..Default::default()
            })
            .collect(),
    )
}

/// A formatted data directory with a checkpoint at batch 4, the WAL after it in several
/// segments, stopped cleanly. Returns the ledger's state hash and last batch.
fn healthy(dir: &Path) -> (u64, u64) {
    data_dir::format(dir, 7, 42, NOW).unwrap();
    let storage = FileStorage::open(dir).unwrap();
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        segment_bytes_max: 1024,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(storage, config).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    for batch in 1..=12 {
        ledger.submit(NOW + batch, &[transfers(batch)]).unwrap();
        if batch == 3 {
            ledger.checkpoint().unwrap();
        }
    }
    let hash = ledger.state().state_hash();
    let sequence = ledger.sequence();
    ledger.close().unwrap();
    (hash, sequence)
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().into_string().unwrap(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn verify_sim(storage: &mut SimStorage) -> Report {
    verify::verify(storage).unwrap()
}

/// The WAL records of a healthy report: (segment, offset, bytes, sequence).
fn record_list(report: &Report) -> Vec<(String, u64, u64, u64)> {
    report
        .records
        .iter()
        .map(|r| {
            (
                r.segment.clone(),
                r.offset,
                r.bytes.unwrap(),
                r.sequence.unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_healthy_directory_verifies_to_the_ledgers_state_hash() {
    let dir = tempfile::tempdir().unwrap();
    let (hash, sequence) = healthy(dir.path());
    let before = files(dir.path());
    let mut storage = FileStorage::open(dir.path()).unwrap();
    let report = verify::verify(&mut storage).unwrap();
    assert!(report.ok(), "findings: {:?}", report.findings);
    assert_eq!(report.first_bad_record(), None);
    assert_eq!(report.state_hash, format!("{hash:016x}"));
    assert_eq!(report.last_sequence, sequence);
    assert_eq!(report.replayed_from, 4);
    assert_eq!(report.records_replayed, sequence - 4);
    assert_eq!(report.superblock.as_ref().unwrap().cluster_id, 7);
    assert_eq!(report.checkpoints.len(), 1);
    assert_eq!(report.checkpoints[0].damage, None);
    assert!(
        report.segments.len() >= 3,
        "several segments: {:?}",
        report.segments
    );
    assert_eq!(report.clean_stop.as_ref().unwrap().sequence, sequence);
    assert_eq!(report.accounts, 4);
    // Every record is listed with its operations, all `ok`, in sequence order.
    let listed: Vec<u64> = report.records.iter().map(|r| r.sequence.unwrap()).collect();
    let first = listed[0];
    assert_eq!(listed, (first..=sequence).collect::<Vec<_>>());
    assert!(report.records.iter().all(|r| r.status == "ok"));
    let last = report.records.last().unwrap();
    assert_eq!(last.operations.len(), 1);
    assert_eq!(last.operations[0].kind, "create_transfers");
    assert_eq!(
        last.operations[0].events, 1,
        "batch 12 has 1 + 12 % 3 transfers"
    );
    // The balances sum, and not trivially.
    let t = report.totals;
    assert_eq!(t.debits_posted, t.credits_posted);
    assert_eq!(t.debits_pending, t.credits_pending);
    assert!(t.debits_posted > 0 && t.debits_pending > 0, "{t:?}");
    // Verification and an in-memory recovery (what `inspect --account` uses) change nothing.
    let ledger = verify::recover_in_memory(verify::load_dir(dir.path()).unwrap()).unwrap();
    assert_eq!(ledger.state().state_hash(), hash);
    assert!(ledger.state().lookup_account(2).is_some());
    assert_eq!(files(dir.path()), before, "the files are byte-identical");
    // The report serialises (the `--json` output).
    let json: serde_json::Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["state_hash"], format!("{hash:016x}"));
    assert_eq!(json["totals"]["debits_posted"], t.debits_posted.to_string());
}

/// One damaged copy of a healthy directory, verified: the first finding must name `file`,
/// `offset` and `sequence`, and say `what`.
fn assert_fails(
    storage: &mut SimStorage,
    file: &str,
    offset: Option<u64>,
    sequence: Option<u64>,
    what: &str,
) -> Report {
    let before = storage.files();
    let report = verify_sim(storage);
    assert!(!report.ok(), "{file}: damage must fail verification");
    let finding = report
        .findings
        .iter()
        .find(|f| f.file == file)
        .unwrap_or_else(|| panic!("no finding names {file}: {:?}", report.findings));
    assert_eq!(finding.offset, offset, "{finding}");
    assert_eq!(finding.sequence, sequence, "{finding}");
    assert!(finding.what.contains(what), "{finding} should say {what:?}");
    assert_eq!(storage.files(), before, "verify changed nothing");
    report
}

#[test]
fn each_kind_of_damage_fails_naming_the_record() {
    let dir = tempfile::tempdir().unwrap();
    healthy(dir.path());
    let healthy_report = verify_sim(&mut verify::load_dir(dir.path()).unwrap());
    let records = record_list(&healthy_report);
    let fresh = || verify::load_dir(dir.path()).unwrap();

    // A flipped header bit and a flipped body bit, in the first, a middle and the newest
    // record.
    for index in [0, records.len() / 2, records.len() - 1] {
        let (segment, offset, bytes, sequence) = records[index].clone();
        let mut storage = fresh();
        storage
            .flip_bit(&segment, (offset + 20) as usize, 3)
            .unwrap();
        let report = assert_fails(
            &mut storage,
            &segment,
            Some(offset),
            None,
            "header checksum",
        );
        let first = report.first_bad_record().unwrap();
        assert_eq!(
            (first.file.as_str(), first.offset),
            (segment.as_str(), Some(offset))
        );

        let mut storage = fresh();
        storage
            .flip_bit(&segment, (offset + bytes - 9) as usize, 0)
            .unwrap();
        let report = assert_fails(
            &mut storage,
            &segment,
            Some(offset),
            Some(sequence),
            "body checksum",
        );
        // The replay stops before the damaged record.
        assert_eq!(report.last_sequence, sequence - 1);
    }

    // The newest record truncated: a partial body, and the WAL no longer ends where the
    // clean stop left it.
    let (segment, offset, bytes, sequence) = records.last().unwrap().clone();
    let mut storage = fresh();
    storage.truncate(&segment, offset + bytes - 8).unwrap();
    assert_fails(
        &mut storage,
        &segment,
        Some(offset),
        Some(sequence),
        "partial record body",
    );
    assert_fails(
        &mut storage,
        wal::CLEAN_STOP_NAME,
        Some(0),
        Some(sequence),
        "but it ends at",
    );

    // A record spliced in from another log: valid checksums, the same sequence, another
    // parent.
    let (segment, offset, bytes, sequence) = records[records.len() / 2].clone();
    let mut storage = fresh();
    let mut content = storage.read(&segment).unwrap();
    let original = &content[offset as usize..(offset + bytes) as usize];
    let header = wal::parse_header(original).unwrap();
    let ops = wal::decode_body(&original[wal::RECORD_HEADER_SIZE..]).unwrap();
    let mut foreign = Vec::new();
    wal::encode_record(&mut foreign, sequence, header.now_ns, 0x5eed_5eed, &ops);
    assert_eq!(foreign.len() as u64, bytes);
    content[offset as usize..(offset + bytes) as usize].copy_from_slice(&foreign);
    storage.remove(&segment).unwrap();
    storage.append(&segment, &content).unwrap();
    let report = assert_fails(
        &mut storage,
        &segment,
        Some(offset),
        Some(sequence),
        "parent chain broken",
    );
    assert_eq!(report.first_bad_record().unwrap().offset, Some(offset));

    // A damaged checkpoint.
    let checkpoint = healthy_report.checkpoints[0].name.clone();
    let middle = healthy_report.checkpoints[0].bytes / 2;
    let mut storage = fresh();
    storage.flip_bit(&checkpoint, middle as usize, 5).unwrap();
    let report = assert_fails(
        &mut storage,
        &checkpoint,
        Some(healthy_report.checkpoints[0].bytes - 8),
        None,
        "checksum",
    );
    assert!(report.checkpoints[0].damage.is_some());

    // A damaged superblock.
    let mut storage = fresh();
    storage.flip_bit(data_dir::SUPERBLOCK_NAME, 20, 1).unwrap();
    assert_fails(
        &mut storage,
        data_dir::SUPERBLOCK_NAME,
        Some(0),
        None,
        "fails its checksum",
    );
    // And a missing one.
    let mut storage = fresh();
    storage.remove(data_dir::SUPERBLOCK_NAME).unwrap();
    assert_fails(
        &mut storage,
        data_dir::SUPERBLOCK_NAME,
        None,
        None,
        "missing",
    );

    // A damaged clean-stop marker.
    let mut storage = fresh();
    storage.flip_bit(wal::CLEAN_STOP_NAME, 17, 2).unwrap();
    assert_fails(
        &mut storage,
        wal::CLEAN_STOP_NAME,
        Some(0),
        None,
        "fails its checksum",
    );
}

/// A whole segment missing from the middle of the log is a gap in the sequence.
#[test]
fn a_missing_segment_is_a_sequence_gap() {
    let dir = tempfile::tempdir().unwrap();
    healthy(dir.path());
    let mut storage = verify::load_dir(dir.path()).unwrap();
    let report = verify_sim(&mut storage);
    let middle = report.segments[1].clone();
    let next = &report.segments[2];
    storage.remove(&middle.name).unwrap();
    let report = assert_fails(
        &mut storage,
        &next.name,
        Some(0),
        next.first_sequence,
        &format!("where {} was expected", middle.first_sequence.unwrap()),
    );
    assert_eq!(report.last_sequence, middle.first_sequence.unwrap() - 1);
}

/// A checkpoint whose checksums hold but whose state breaks the ledger's invariants (account
/// 4's credits_posted raised, as a bug or a forged file would): the sums and the limit fail.
#[test]
fn a_state_that_does_not_balance_fails() {
    let dir = tempfile::tempdir().unwrap();
    healthy(dir.path());
    let mut storage = verify::load_dir(dir.path()).unwrap();
    let report = verify_sim(&mut storage);
    let name = report.checkpoints[0].name.clone();
    let mut bytes = storage.read(&name).unwrap();
    // Header 16, prepare_timestamp 8, account count 8, then per account its 128 bytes and a
    // history length (0: no account here keeps history).
    let at = 16 + 8 + 8 + 3 * (128 + 8);
    assert_eq!(
        &bytes[at..at + 16],
        &4u128.to_le_bytes(),
        "account 4 where the layout puts it"
    );
    bytes[at + 64..at + 80].copy_from_slice(&5u128.to_le_bytes()); // credits_posted
    let trailer = bytes.len() - 16;
    let crc = crc32c::crc32c(&bytes[..trailer + 8]);
    bytes[trailer + 8..trailer + 12].copy_from_slice(&crc.to_le_bytes());
    storage.remove(&name).unwrap();
    storage.append(&name, &bytes).unwrap();
    let report = verify_sim(&mut storage);
    assert_eq!(report.checkpoints[0].damage, None, "the checksums hold");
    assert_eq!(report.last_sequence, 13, "the replay goes through");
    let whats: Vec<&str> = report.findings.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(whats.len(), 2, "{whats:?}");
    assert!(
        whats[0]
            .starts_with("account 4: credits_pending 0 + credits_posted 5 exceed debits_posted 0"),
        "{whats:?}"
    );
    assert!(whats[1].starts_with("Σ debits_posted"), "{whats:?}");
    assert_eq!(
        report.totals.credits_posted,
        report.totals.debits_posted + 5
    );
    assert!(report.findings.iter().all(|f| f.file == "state"));
    assert_eq!(report.first_bad_record(), None);
}
