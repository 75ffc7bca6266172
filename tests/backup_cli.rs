//! `pantera backup` and `pantera restore`, run as an operator would, against a data directory
//! that another thread of this test keeps committing batches to (with checkpoints written
//! by a second thread, as in the server): the restored ledger's state hash equals the
//! source's at the backup's batch; directories are 0700 and files 0600; a non-empty target,
//! a missing data directory and a directory that is not a backup are refused with a clear
//! message and a non-zero exit.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;

fn pantera(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pantera"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run pantera");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn transfers(batch: u64) -> Operation {
    Operation::CreateTransfers(
        (0..50u64)
            .map(|i| Transfer {
                id: u128::from(batch * 100 + i + 1),
                debit_account_id: u128::from(1 + (batch + i) % 8),
                credit_account_id: u128::from(1 + (batch + i + 1) % 8),
                amount: u128::from(1 + i),
                ledger: 1,
                code: 1,
                ..Default::default()
            })
            .collect(),
    )
}

/// Commits batches into `dir` until `stop` (and at least 40), checkpointing every 5 batches
/// on a writer thread. Returns the state hash after each batch.
fn load(dir: &Path, stop: &AtomicBool, started: &AtomicBool) -> HashMap<u64, u64> {
    let config = LedgerConfig {
        checkpoint_every_batches: 5,
        segment_bytes_max: 32 * 1024,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(FileStorage::open(dir).unwrap(), config).unwrap();
    let accounts = (1..=8)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect();
    ledger.submit(NOW, &[Operation::CreateAccounts(accounts)]).unwrap();
    let mut hashes = HashMap::from([(ledger.sequence(), ledger.state().state_hash())]);
    let mut writer = ledger.storage().reopen().unwrap();
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<ledger::CheckpointJob>(1);
    let (done_tx, done_rx) = std::sync::mpsc::sync_channel::<ledger::CheckpointJob>(1);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for mut job in job_rx {
                job.write(&mut writer).unwrap();
                done_tx.send(job).unwrap();
            }
        });
        let mut batch = 0;
        while !stop.load(Ordering::Relaxed) || batch < 40 {
            ledger.submit(NOW + (batch + 1) * 1_000_000, &[transfers(batch)]).unwrap();
            batch += 1;
            hashes.insert(ledger.sequence(), ledger.state().state_hash());
            if batch == 12 {
                started.store(true, Ordering::Relaxed);
            }
            if let Ok(job) = done_rx.try_recv() {
                ledger.finish_checkpoint(job).unwrap();
            }
            if ledger.checkpoint_due() {
                job_tx.send(ledger.begin_checkpoint().unwrap().unwrap()).unwrap();
            }
            // A steady load rather than a spin: the backup process competes for the CPU.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        drop(job_tx);
        if ledger.checkpoint_in_flight().is_some() {
            ledger.finish_checkpoint(done_rx.recv().unwrap()).unwrap();
        }
    });
    hashes
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_backup_taken_under_load_restores_to_the_sources_state_at_its_batch() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let backup = root.path().join("backup");
    let restored = root.path().join("restored");
    // A data directory as `pantera format` makes it: the backup must carry its superblock.
    let formatted = ledger_svc::data_dir::format(&data, 7, 0xba5e, 1).expect("format");
    let stop = AtomicBool::new(false);
    let started = AtomicBool::new(false);
    let (hashes, output) = std::thread::scope(|scope| {
        let committer = scope.spawn(|| load(&data, &stop, &started));
        while !started.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let result = pantera(&[
            "backup",
            "--data-dir",
            data.to_str().unwrap(),
            "--to",
            backup.to_str().unwrap(),
        ]);
        stop.store(true, Ordering::Relaxed);
        (committer.join().unwrap(), result)
    });
    let (ok, text) = output;
    assert!(ok, "{text}");
    // "backup of ... : batch N, checkpoint C, state hash H, ..."
    let field = |text: &str, name: &str| -> String {
        let at = text.find(name).unwrap_or_else(|| panic!("{name} in {text}")) + name.len();
        text[at..].split([',', ' ']).next().unwrap().to_string()
    };
    let sequence: u64 = field(&text, "batch ").parse().unwrap();
    let hash = u64::from_str_radix(&field(&text, "state hash "), 16).unwrap();
    assert!(sequence >= 13, "{text}");
    assert_eq!(hash, hashes[&sequence], "the backup's state is the source's at batch {sequence}");
    assert_eq!(mode(&backup), 0o700);
    for entry in std::fs::read_dir(&backup).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }

    let (ok, text) = pantera(&["restore", "--from", backup.to_str().unwrap(), "--to", restored.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(mode(&restored), 0o700);
    // The restored directory is the source's: formatted, of its cluster, with its ledger id.
    let superblock = ledger_svc::data_dir::check(&restored, Some(7)).expect("a formatted data directory");
    assert_eq!(superblock.ledger_id, formatted.ledger_id);
    let ledger = Ledger::open(FileStorage::open(&restored).unwrap(), LedgerConfig::default()).unwrap();
    assert_eq!((ledger.sequence(), ledger.state().state_hash()), (sequence, hashes[&sequence]));
    drop(ledger);

    // Refusals: a target that holds files (the restored directory), a missing data
    // directory, a directory that is not a backup.
    let (ok, text) = pantera(&["restore", "--from", backup.to_str().unwrap(), "--to", restored.to_str().unwrap()]);
    assert!(!ok && text.contains("not empty"), "{text}");
    let missing = root.path().join("missing");
    let (ok, text) = pantera(&["backup", "--data-dir", missing.to_str().unwrap(), "--to", root.path().join("b2").to_str().unwrap()]);
    assert!(!ok && text.contains("does not exist"), "{text}");
    let (ok, text) = pantera(&["restore", "--from", data.to_str().unwrap(), "--to", root.path().join("r2").to_str().unwrap()]);
    assert!(!ok && text.contains("not a backup"), "{text}");
}
