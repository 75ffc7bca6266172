//! Online backup and restore (`backup::take`, `backup::restore`) on real files: backups taken
//! while another thread commits batches and a checkpoint writer thread removes the files it
//! supersedes restore to a ledger whose state hash equals the source's at the backup's
//! sequence; a checkpoint that removes files right under a backup makes it start over (on the
//! simulated disk, deterministically); a damaged backup, a missing manifest, a non-empty target
//! and an empty source are refused with a clear error.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ledger_svc::backup::{self, BackupError};
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u128 = 32;

fn config() -> LedgerConfig {
    LedgerConfig {
        checkpoint_every_batches: 6,
        segment_bytes_max: 16 * 1024,
        ..LedgerConfig::default()
    }
}

fn accounts() -> Operation {
    common::accounts(ACCOUNTS, 4)
}

fn transfers(batch: u64) -> Operation {
    Operation::CreateTransfers(
        (0..40u64)
            .map(|i| {
                let id = u128::from(batch * 100 + i + 1);
                let x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let dr = 1 + x % ACCOUNTS;
                Transfer {
                    id,
                    debit_account_id: dr,
                    credit_account_id: 1 + dr % ACCOUNTS,
                    amount: 1 + x % 50,
                    ledger: 1,
                    code: 1,
                    flags: if i % 5 == 0 {
                        TransferFlags::PENDING
                    } else {
                        TransferFlags::empty()
                    },
                    timeout: if i % 10 == 0 { 1 } else { 0 },
                    ..Default::default()
                }
            })
            .collect(),
    )
}

/// Commits batches on this thread until `stop`, with checkpoints written by a second thread
/// on its own handle (as the server does). Returns each batch's state hash, by sequence.
fn serve(dir: &std::path::Path, stop: &AtomicBool, started: &AtomicBool) -> HashMap<u64, u64> {
    let mut ledger = Ledger::open(FileStorage::create(dir).unwrap(), config()).unwrap();
    let mut hashes = HashMap::new();
    ledger.submit(NOW, &[accounts()]).unwrap();
    hashes.insert(ledger.sequence(), ledger.state().state_hash());
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
        while !stop.load(Ordering::Relaxed) || batch < 60 {
            ledger
                .submit(NOW + (batch + 1) * 200_000_000, &[transfers(batch)])
                .unwrap();
            batch += 1;
            hashes.insert(ledger.sequence(), ledger.state().state_hash());
            if batch == 20 {
                started.store(true, Ordering::Relaxed);
            }
            if let Ok(job) = done_rx.try_recv() {
                ledger.finish_checkpoint(job).unwrap();
            }
            if ledger.checkpoint_due() {
                job_tx
                    .send(ledger.begin_checkpoint().unwrap().unwrap())
                    .unwrap();
            }
        }
        drop(job_tx);
        if ledger.checkpoint_in_flight().is_some() {
            ledger.finish_checkpoint(done_rx.recv().unwrap()).unwrap();
        }
    });
    hashes
}

#[test]
fn backups_taken_under_load_restore_to_the_sources_state_at_their_sequence() {
    let root = tempfile::tempdir().unwrap();
    let source = root.path().join("data");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (hashes, manifests) = std::thread::scope(|scope| {
        let load = scope.spawn(|| serve(&source, &stop, &started));
        while !started.load(Ordering::Relaxed) {
            std::thread::yield_now();
        }
        let mut manifests = Vec::new();
        for n in 0..6 {
            let to = root.path().join(format!("backup-{n}"));
            let mut target = FileStorage::create(&to).unwrap();
            let mut from = FileStorage::create(&source).unwrap();
            let manifest = backup::take(&mut from, &mut target).unwrap();
            manifests.push((to, manifest));
        }
        stop.store(true, Ordering::Relaxed);
        (load.join().unwrap(), manifests)
    });
    let sequences: Vec<u64> = manifests.iter().map(|(_, m)| m.sequence).collect();
    println!("backups at batches {sequences:?} of {}", hashes.len());
    assert!(sequences.windows(2).all(|w| w[0] <= w[1]), "{sequences:?}");
    assert!(sequences[0] >= 20);
    // At least one backup started from a checkpoint: the race with the writer's removals was
    // run, not avoided.
    assert!(manifests.iter().any(|(_, m)| m.checkpoint_sequence > 0));
    for (n, (dir, manifest)) in manifests.iter().enumerate() {
        let source_hash = hashes[&manifest.sequence];
        assert_eq!(manifest.state_hash, source_hash, "backup {n}");
        let restored_dir = root.path().join(format!("restored-{n}"));
        let mut target = FileStorage::create(&restored_dir).unwrap();
        let restored = backup::restore(&mut FileStorage::create(dir).unwrap(), &mut target).unwrap();
        assert_eq!(&restored, manifest);
        let ledger = Ledger::open(FileStorage::create(&restored_dir).unwrap(), config()).unwrap();
        assert_eq!(
            (ledger.sequence(), ledger.state().state_hash()),
            (manifest.sequence, source_hash),
            "restored backup {n}"
        );
    }
}

/// A stopped ledger with a checkpoint and batches after it, and a backup of it.
fn backed_up(root: &std::path::Path) -> (std::path::PathBuf, backup::Manifest) {
    let source = root.join("data");
    let mut ledger = Ledger::open(FileStorage::create(&source).unwrap(), config()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    for batch in 0..10 {
        ledger
            .submit(NOW + (batch + 1) * 1_000_000, &[transfers(batch)])
            .unwrap();
        if batch == 5 {
            ledger.checkpoint().unwrap();
        }
    }
    // Something the ledger does not know, as a superblock would be: copied whole.
    std::fs::write(source.join("superblock"), b"cluster 1\n").unwrap();
    let to = root.join("backup");
    let manifest = backup::take(
        &mut FileStorage::create(&source).unwrap(),
        &mut FileStorage::create(&to).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.sequence, 11);
    assert_eq!(manifest.checkpoint_sequence, 7);
    assert_eq!(manifest.state_hash, ledger.state().state_hash());
    assert!(manifest.files.iter().any(|f| f.name == "superblock"));
    (to, manifest)
}

#[test]
fn a_damaged_backup_is_refused_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let (dir, manifest) = backed_up(root.path());
    let segment = manifest
        .files
        .iter()
        .find(|f| f.name.starts_with("wal-"))
        .unwrap();
    let path = dir.join(&segment.name);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let error = backup::restore(
        &mut FileStorage::create(&dir).unwrap(),
        &mut FileStorage::create(&root.path().join("r1")).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(error, BackupError::File { .. }), "{error}");
    assert!(
        error.to_string().contains(&segment.name) && error.to_string().contains("checksum"),
        "{error}"
    );

    std::fs::remove_file(dir.join(backup::MANIFEST_NAME)).unwrap();
    let error = backup::restore(
        &mut FileStorage::create(&dir).unwrap(),
        &mut FileStorage::create(&root.path().join("r2")).unwrap(),
    )
    .unwrap_err();
    assert!(error.to_string().contains("missing"), "{error}");
}

#[test]
fn a_backup_or_restore_never_writes_into_a_directory_that_holds_files() {
    let root = tempfile::tempdir().unwrap();
    let (dir, _) = backed_up(root.path());
    let busy = root.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("keep"), b"x").unwrap();
    let error = backup::restore(
        &mut FileStorage::create(&dir).unwrap(),
        &mut FileStorage::create(&busy).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(error, BackupError::TargetNotEmpty(_)), "{error}");
    let error = backup::take(
        &mut FileStorage::create(&root.path().join("data")).unwrap(),
        &mut FileStorage::create(&busy).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(error, BackupError::TargetNotEmpty(_)), "{error}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // An empty source is not a ledger.
    let error = backup::take(
        &mut FileStorage::create(&root.path().join("empty")).unwrap(),
        &mut FileStorage::create(&root.path().join("b2")).unwrap(),
    )
    .unwrap_err();
    assert!(matches!(error, BackupError::SourceEmpty), "{error}");
}

/// A data directory whose checkpoint writer finishes a checkpoint (writing the new one and
/// removing the files it supersedes) right after the backup listed the directory, before it
/// read anything: the race `backup::take` answers by starting over.
#[derive(Debug)]
struct RacingWriter {
    inner: SimStorage,
    writer: Option<(ledger::CheckpointJob, SimStorage)>,
    reads: u64,
}

impl Storage for RacingWriter {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        self.inner.list()
    }
    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.reads += 1;
        if let Some((mut job, mut writer)) = self.writer.take() {
            job.write(&mut writer).unwrap();
        }
        self.inner.read(name)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.inner.append(name, bytes)
    }
    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.inner.sync(name)
    }
    fn sync_handle(&mut self, name: &str) -> Result<Box<dyn ledger_svc::FileSync>, StorageError> {
        self.inner.sync_handle(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.inner.truncate(name, len)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.inner.rename(from, to)
    }
    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.inner.remove(name)
    }
    fn sync_dir(&mut self) -> Result<(), StorageError> {
        self.inner.sync_dir()
    }
    fn reopen(&self) -> Result<Self, StorageError> {
        Ok(RacingWriter {
            inner: self.inner.reopen()?,
            writer: None,
            reads: 0,
        })
    }
}

#[test]
fn a_checkpoint_that_removes_files_under_a_backup_makes_it_start_over() {
    let mut ledger = Ledger::open(SimStorage::new(), config()).unwrap();
    ledger.submit(NOW, &[accounts()]).unwrap();
    for batch in 0..10 {
        ledger
            .submit(NOW + (batch + 1) * 1_000_000, &[transfers(batch)])
            .unwrap();
        if batch == 3 {
            ledger.checkpoint().unwrap();
        }
    }
    let hash = ledger.state().state_hash();
    let job = ledger.begin_checkpoint().unwrap().unwrap();
    assert_eq!(job.sequence(), 11);
    let mut source = RacingWriter {
        inner: ledger.storage().reopen().unwrap(),
        writer: Some((job, ledger.storage().reopen().unwrap())),
        reads: 0,
    };
    let before = source.inner.list().unwrap();
    assert!(
        before.contains(&checkpoint::checkpoint_name(5)),
        "{before:?}"
    );
    let mut target = SimStorage::new();
    let manifest = backup::take(&mut source, &mut target).unwrap();
    // The first attempt found checkpoint 5 gone; the second copied checkpoint 11 alone.
    assert_eq!(manifest.checkpoint_sequence, 11);
    assert_eq!(manifest.sequence, 11);
    assert_eq!(manifest.state_hash, hash);
    assert_eq!(source.reads, 2, "one failed read, then the new checkpoint");
    let mut restored = SimStorage::new();
    backup::restore(&mut target, &mut restored).unwrap();
    let ledger = Ledger::open(restored, config()).unwrap();
    assert_eq!((ledger.sequence(), ledger.state().state_hash()), (11, hash));
}
