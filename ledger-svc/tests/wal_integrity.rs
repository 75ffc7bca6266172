//! The recovery rules that tell a torn tail from damage to acknowledged data (docs/ledger.md,
//! "Recovery"), each shown on the simulated disk and on real files:
//! - after a clean stop, a bit flipped in any record (first, middle, newest; header or body),
//!   in the marker, or a WAL shortened or grown refuses start-up, naming the file and the
//!   record's byte offset, and every file is byte-identical afterwards;
//! - after a crash, damage followed by a valid record refuses the same way, while the torn
//!   newest record is cut and its bytes kept aside, exactly;
//! - `repair::truncate` cuts where the operator chooses and keeps every byte it takes out.

use std::collections::BTreeMap;
use std::path::Path;

use ledger_svc::wal::{self, ScanEntry};
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;

fn config() -> LedgerConfig {
    LedgerConfig {
        checkpoint_every_batches: 0,
        // Several records per segment, several segments.
        segment_bytes_max: 2048,
        ..LedgerConfig::default()
    }
}

fn accounts() -> Operation {
    Operation::CreateAccounts(
        (1..=4)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    )
}

fn transfers(batch: u64) -> Operation {
    Operation::CreateTransfers(
        (0..1 + batch % 5)
            .map(|i| Transfer {
                id: u128::from(batch * 100 + i + 1),
                debit_account_id: 1 + u128::from((batch + i) % 4),
                credit_account_id: 1 + u128::from((batch + i + 1) % 4),
                amount: u128::from(batch + 1),
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    )
}

/// Fills a ledger with `batches` batches and returns the state hash after each one (index 0:
/// after the accounts).
fn fill<S: Storage>(ledger: &mut Ledger<S>, batches: u64) -> Vec<u64> {
    let mut hashes = Vec::new();
    ledger.submit(NOW, &[accounts()]).unwrap();
    hashes.push(ledger.state().state_hash());
    for batch in 1..=batches {
        ledger.submit(NOW + batch, &[transfers(batch)]).unwrap();
        hashes.push(ledger.state().state_hash());
    }
    hashes
}

/// Every record of the WAL: (segment, offset, length, sequence).
fn records<S: Storage>(storage: &mut S) -> Vec<(String, u64, u64, u64)> {
    let scan = repair::scan(storage).unwrap();
    assert!(scan.findings().is_empty(), "a healthy WAL has no findings");
    scan.records()
        .map(|(name, offset, h)| (name.to_string(), offset, h.record_bytes(), h.sequence))
        .collect()
}

/// Positions to flip in a record: first and last header byte, the middle of the header, the
/// first, middle and last body byte.
fn positions(offset: u64, length: u64) -> Vec<(u64, &'static str)> {
    let h = wal::RECORD_HEADER_SIZE as u64;
    vec![
        (offset, "header"),
        (offset + 17, "header"),
        (offset + h - 1, "header"),
        (offset + h, "body"),
        (offset + h + (length - h) / 2, "body"),
        (offset + length - 1, "body"),
    ]
}

fn expect_corrupt<S: Storage + std::fmt::Debug>(
    result: Result<Ledger<S>, LedgerError>,
    file_ends_with: &str,
    at: u64,
    context: &str,
) -> String {
    match result {
        Err(LedgerError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert!(
                file.ends_with(file_ends_with),
                "{context}: error names {file}, expected {file_ends_with}"
            );
            assert_eq!(offset, at, "{context}: {reason}");
            format!("{file} {offset} {reason}")
        }
        Err(other) => panic!("{context}: expected Corrupt, got {other}"),
        Ok(_) => panic!("{context}: damaged data was accepted"),
    }
}

#[test]
fn after_a_clean_stop_any_flipped_bit_refuses_start_up_and_changes_nothing() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    let hashes = fill(&mut ledger, 30);
    let mut storage = ledger.close().unwrap();
    let all = records(&mut storage);
    let segments: std::collections::BTreeSet<_> = all.iter().map(|r| r.0.clone()).collect();
    assert!(
        segments.len() >= 3,
        "the test wants several segments: {segments:?}"
    );
    let first = 0;
    let middle = all.len() / 2;
    let newest = all.len() - 1;
    let mut checked = 0;
    for (index, label) in [(first, "first"), (middle, "middle"), (newest, "newest")] {
        let (name, offset, length, _) = all[index].clone();
        for (at, part) in positions(offset, length) {
            for bit in [0u8, 5] {
                let mut disk = storage.clone();
                disk.flip_bit(&name, at as usize, bit).unwrap();
                let before = disk.files();
                let context = format!("{label} record, {part} byte {at} bit {bit}");
                let message = expect_corrupt(
                    Ledger::open(disk.reopen().unwrap(), config()),
                    &name,
                    offset,
                    &context,
                );
                let expected_kind = if part == "header" {
                    "header checksum"
                } else {
                    "body checksum"
                };
                assert!(message.contains(expected_kind), "{context}: {message}");
                assert_eq!(disk.files(), before, "{context}: the files changed");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 36);
    // Undamaged, the same disk opens to the state after the last batch, as a clean stop,
    // and the marker is gone (a crash from now on is recovered as a crash).
    let ledger = Ledger::open(storage, config()).unwrap();
    assert!(ledger.recovery().clean_stop);
    assert_eq!(ledger.state().state_hash(), *hashes.last().unwrap());
    assert!(ledger
        .storage()
        .files()
        .keys()
        .all(|n| n != wal::CLEAN_STOP_NAME));
}

#[test]
fn after_a_clean_stop_a_wal_that_ends_elsewhere_or_a_damaged_marker_refuses() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    fill(&mut ledger, 12);
    let storage = ledger.close().unwrap();
    let newest = storage
        .files()
        .keys()
        .rfind(|n| wal::parse_segment_name(n).is_some())
        .unwrap()
        .clone();
    let len = storage.len_of(&newest).unwrap() as u64;

    // Bytes after the end the marker names (a whole valid-looking record or garbage).
    let mut grown = storage.clone();
    grown.append(&newest, &[0u8; 100]).unwrap();
    let before = grown.files();
    let message = expect_corrupt(
        Ledger::open(grown.reopen().unwrap(), config()),
        &newest,
        len,
        "grown",
    );
    assert!(
        message.contains("partial record header") || message.contains("header checksum"),
        "{message}"
    );
    assert_eq!(grown.files(), before);

    // The newest record cut short.
    let mut shortened = storage.clone();
    shortened.truncate(&newest, len - 8).unwrap();
    let before = shortened.files();
    assert!(matches!(
        Ledger::open(shortened.reopen().unwrap(), config()),
        Err(LedgerError::Corrupt { .. })
    ));
    assert_eq!(shortened.files(), before);

    // The marker itself damaged.
    for at in [0usize, 5, 20, 47] {
        let mut marked = storage.clone();
        marked.flip_bit(wal::CLEAN_STOP_NAME, at, 1).unwrap();
        let before = marked.files();
        let message = expect_corrupt(
            Ledger::open(marked.reopen().unwrap(), config()),
            wal::CLEAN_STOP_NAME,
            0,
            "marker",
        );
        assert!(message.contains("clean-stop marker"), "{message}");
        assert_eq!(marked.files(), before);
    }
}

#[test]
fn after_a_crash_the_torn_newest_record_is_cut_and_kept_aside() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    let hashes = fill(&mut ledger, 10);
    // No clean stop: the process died right after the last batch was written.
    let storage = ledger.into_storage().crash_clean();
    let mut probe = storage.clone();
    let all = records(&mut probe);
    let (name, offset, length, _) = all.last().unwrap().clone();
    for (at, part) in positions(offset, length) {
        let mut disk = storage.clone();
        disk.flip_bit(&name, at as usize, 3).unwrap();
        let tail = disk.files()[&name][offset as usize..].to_vec();
        let ledger = Ledger::open(disk.reopen().unwrap(), config()).unwrap();
        // The state of the batch before the torn one.
        assert_eq!(
            ledger.state().state_hash(),
            hashes[hashes.len() - 2],
            "{part} {at}"
        );
        let (file, cut_at, removed) = ledger.recovery().truncated.clone().unwrap();
        assert_eq!(
            (file.as_str(), cut_at, removed),
            (name.as_str(), offset, length)
        );
        let kept = ledger.recovery().kept_as.clone().unwrap();
        assert_eq!(kept, wal::cut_name(&name, offset, 0));
        let files = ledger.storage().files();
        assert_eq!(files[&kept], tail, "the cut bytes are kept, exactly");
        assert_eq!(files[&name].len() as u64, offset);
    }
    // A partial record (the file ends inside it) is cut the same way.
    let mut disk = storage.clone();
    disk.truncate(&name, offset + length - 3).unwrap();
    let ledger = Ledger::open(disk, config()).unwrap();
    assert_eq!(ledger.state().state_hash(), hashes[hashes.len() - 2]);
    assert!(ledger.recovery().kept_as.is_some());
}

#[test]
fn after_a_crash_damage_followed_by_a_valid_record_refuses_and_changes_nothing() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    fill(&mut ledger, 20);
    let storage = ledger.into_storage().crash_clean();
    let mut probe = storage.clone();
    let all = records(&mut probe);
    let newest_segment = all.last().unwrap().0.clone();
    // Every record but the newest: it is followed by a valid record, or it lies in a segment
    // that is not the newest.
    for (name, offset, length, sequence) in &all[..all.len() - 1] {
        for (at, part) in positions(*offset, *length) {
            let mut disk = storage.clone();
            disk.flip_bit(name, at as usize, 6).unwrap();
            let before = disk.files();
            let context = format!("record {sequence} ({name}), {part} byte {at}");
            let message = expect_corrupt(
                Ledger::open(disk.reopen().unwrap(), config()),
                name,
                *offset,
                &context,
            );
            if name != &newest_segment || all.iter().any(|r| &r.0 == name && r.1 > *offset) {
                assert!(
                    message.contains("valid record follows") || message.contains("newest segment"),
                    "{context}: {message}"
                );
            }
            assert_eq!(disk.files(), before, "{context}: the files changed");
        }
    }
}

#[test]
fn a_record_from_another_log_breaks_the_parent_chain() {
    // Two ledgers with the same batches except the second: record 2 of the other log, spliced
    // into the first, passes its checksums, but record 3 names another parent.
    let mut a = Ledger::open(
        SimStorage::new(),
        LedgerConfig {
            segment_bytes_max: 1 << 20,
            ..config()
        },
    )
    .unwrap();
    let mut b = Ledger::open(
        SimStorage::new(),
        LedgerConfig {
            segment_bytes_max: 1 << 20,
            ..config()
        },
    )
    .unwrap();
    for ledger in [&mut a, &mut b] {
        ledger.submit(NOW, &[accounts()]).unwrap();
    }
    a.submit(NOW + 1, &[transfers(1)]).unwrap();
    b.submit(NOW + 1, &[transfers(6)]).unwrap();
    for ledger in [&mut a, &mut b] {
        ledger.submit(NOW + 2, &[transfers(3)]).unwrap();
    }
    let mut a = a.into_storage();
    let b = b.into_storage();
    let name = wal::segment_name(1);
    let mut sa = a.clone();
    let ra = records(&mut sa);
    let fb = b.files();
    let fa = a.files();
    // a's log: records 1 and 3 of a, record 2 of b (the same length: 2 transfers each).
    let (start, end) = (ra[1].1 as usize, ra[2].1 as usize);
    let mut spliced = fa[&name][..start].to_vec();
    spliced.extend_from_slice(&fb[&name][start..end]);
    spliced.extend_from_slice(&fa[&name][end..]);
    assert_eq!(spliced.len(), fa[&name].len());
    a.remove(&name).unwrap();
    a.append(&name, &spliced).unwrap();
    a.sync(&name).unwrap();
    let message = expect_corrupt(Ledger::open(a, config()), &name, ra[2].1, "spliced");
    assert!(message.contains("parent"), "{message}");
}

#[test]
fn repair_truncates_where_the_operator_chooses_and_keeps_every_byte() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    let hashes = fill(&mut ledger, 30);
    let mut storage = ledger.close().unwrap();
    let all = records(&mut storage);
    let middle = all.len() / 2;
    let (name, offset, _, sequence) = all[middle].clone();
    storage.flip_bit(&name, offset as usize + 50, 2).unwrap();
    let original = storage.files();
    assert!(Ledger::open(storage.reopen().unwrap(), config()).is_err());

    let scan = repair::scan(&mut storage).unwrap();
    let findings = scan.findings();
    assert_eq!(findings.len(), 1);
    assert_eq!(
        (findings[0].segment.as_str(), findings[0].offset),
        (name.as_str(), offset)
    );
    assert_eq!(findings[0].sequence, Some(sequence));
    let plan = scan.plan_at_damage().unwrap();
    assert_eq!(plan, scan.plan_at_record(sequence).unwrap());
    assert_eq!(plan.records_lost as usize, all.len() - middle);
    let kept = repair::truncate(&mut storage, &plan).unwrap();

    // The ledger now opens at the batch before the damaged one.
    let ledger = Ledger::open(storage.reopen().unwrap(), config()).unwrap();
    assert_eq!(ledger.sequence(), sequence - 1);
    assert_eq!(ledger.state().state_hash(), hashes[sequence as usize - 2]);
    assert_eq!(ledger.recovery().truncated, None);
    // Every byte taken out of the log is in the kept files.
    let files = storage.files();
    let kept_bytes: usize = kept.iter().map(|k| files[k].len()).sum();
    let log_before: usize = original
        .iter()
        .filter(|(n, _)| wal::parse_segment_name(n).is_some())
        .map(|(_, b)| b.len())
        .sum();
    let log_after: usize = files
        .iter()
        .filter(|(n, _)| wal::parse_segment_name(n).is_some())
        .map(|(_, b)| b.len())
        .sum();
    let marker = wal::CLEAN_STOP_SIZE;
    assert_eq!(log_before - log_after + marker, kept_bytes);
    let cut = &files[&wal::cut_name(&name, offset, 0)];
    assert_eq!(cut[..], original[&name][offset as usize..]);
}

fn read_dir(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn flip_file_bit(path: &Path, at: u64, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn real_files_after_a_clean_stop_refuse_a_flipped_bit_and_stay_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config()).unwrap();
    let hashes = fill(&mut ledger, 20);
    let mut storage = ledger.close().unwrap();
    let all = records(&mut storage);
    drop(storage);
    for index in [0, all.len() / 2, all.len() - 1] {
        let (name, offset, length, _) = all[index].clone();
        for (at, part) in [(offset + 3, "header"), (offset + length - 2, "body")] {
            let path = dir.path().join(&name);
            flip_file_bit(&path, at, 4);
            let before = read_dir(dir.path());
            let result = Ledger::open(FileStorage::open(dir.path()).unwrap(), config());
            let context = format!("record {index} {part}");
            let message = expect_corrupt(result, &path.display().to_string(), offset, &context);
            assert!(
                message.contains(&format!("{} {offset}", path.display())),
                "{message}"
            );
            assert_eq!(read_dir(dir.path()), before, "{context}: the files changed");
            flip_file_bit(&path, at, 4);
        }
    }
    let ledger = Ledger::open(FileStorage::open(dir.path()).unwrap(), config()).unwrap();
    assert!(ledger.recovery().clean_stop);
    assert_eq!(ledger.state().state_hash(), *hashes.last().unwrap());
    // Files the ledger creates are the owner's only.
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn the_scan_reports_every_record_and_goes_on_past_damage() {
    let mut ledger = Ledger::open(
        SimStorage::new(),
        LedgerConfig {
            segment_bytes_max: 1 << 20,
            ..config()
        },
    )
    .unwrap();
    fill(&mut ledger, 6);
    let mut storage = ledger.close().unwrap();
    let all = records(&mut storage);
    assert_eq!(
        all.iter().map(|r| r.3).collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
    storage
        .flip_bit(&all[2].0, all[2].1 as usize + 45, 0)
        .unwrap();
    let scan = repair::scan(&mut storage).unwrap();
    let entries = &scan.segments[0].entries;
    assert_eq!(entries.len(), 7);
    assert!(matches!(entries[2], ScanEntry::Damaged(d) if d.offset == all[2].1));
    assert_eq!(scan.records().count(), 6);
    assert!(matches!(scan.clean_stop, Some(Ok(_))));
}
