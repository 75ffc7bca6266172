//! Crash tests on the simulated storage: the process dies at a random storage call (during an
//! append, a sync, a checkpoint or a segment removal), the disk keeps a random torn prefix of
//! every unsynced write and may lose unsynced directory changes, and the ledger recovers.
//! Checkpoints run as the server runs them: begun between batches, written through a second
//! storage handle at a random later point while batches go on, finished later still; the
//! process may die at any call of the writer too, or with a checkpoint begun, written but not
//! finished.
//! After recovery the state must equal the state after the last acknowledged batch (or, if
//! the batch in flight reached the disk whole before the crash, the state after it: it was
//! never acknowledged, so either outcome is correct).
//!
//!
//! Each recovery rule (docs/ledger.md, "Recovery") has its case here:
//! - a quarter of the lives that did not die end in a clean stop (`Ledger::close`): then a
//!   bit flipped in a random record or in the marker must refuse start-up and leave every
//!   file byte-identical, and the undamaged disk recovers as a clean stop, nothing cut;
//!   `close` itself may meet the injected fault, and that disk recovers too;
//! - after every crash, a bit flipped in any record but the last valid one must refuse the
//!   same way (a valid record follows it, or it is in an older segment);
//! - a torn tail that recovery cuts is kept aside, every byte of it.
//!
//! Every failure message names the seed; rerun one with `LEDGER_CRASH_SEED=<seed>`.

use std::cell::RefCell;
use std::rc::Rc;

use ledger_svc::storage::SimRng;
use ledger_svc::*;

/// A storage handle that outlives a failed `Ledger::open`, so the test can crash the disk the
/// failed recovery left behind.
#[derive(Clone, Debug)]
struct Shared(Rc<RefCell<SimStorage>>);

impl Storage for Shared {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        self.0.borrow_mut().list()
    }
    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.0.borrow_mut().read(name)
    }
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.0.borrow_mut().append(name, bytes)
    }
    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.0.borrow_mut().sync(name)
    }
    fn sync_handle(&mut self, name: &str) -> Result<Box<dyn ledger_svc::FileSync>, StorageError> {
        self.0.borrow_mut().sync_handle(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.0.borrow_mut().truncate(name, len)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.0.borrow_mut().rename(from, to)
    }
    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.0.borrow_mut().remove(name)
    }
    fn sync_dir(&mut self) -> Result<(), StorageError> {
        self.0.borrow_mut().sync_dir()
    }
    fn reopen(&self) -> Result<Self, StorageError> {
        let handle = self.0.borrow().reopen()?;
        Ok(Shared(Rc::new(RefCell::new(handle))))
    }
}

const NOW: u64 = 1_700_000_000_000_000_000;
const ACCOUNTS: u64 = 12;

fn random_ops(rng: &mut SimRng, next_id: &mut u128) -> Vec<Operation> {
    let mut ops = Vec::new();
    for _ in 0..=rng.below(2) {
        let count = 1 + rng.below(40) as usize;
        let mut transfers = Vec::with_capacity(count);
        for _ in 0..count {
            // Mostly new ids, sometimes a retry of a recent one.
            let id = if rng.chance(1, 8) && *next_id > 1 {
                *next_id - 1 - rng.below(5.min(*next_id as u64 - 1)) as u128
            } else {
                *next_id += 1;
                *next_id
            };
            let dr = 1 + rng.below(ACCOUNTS) as u128;
            let cr = 1 + rng.below(ACCOUNTS) as u128;
            let mut t = Transfer {
                id,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: rng.below(100) as u128,
                ledger: 1,
                code: 1,
                ..Default::default()
            };
            match rng.below(6) {
                0 => {
                    t.flags = TransferFlags::PENDING;
                    t.timeout = rng.below(3) as u32;
                }
                1 => {
                    t = Transfer {
                        id,
                        pending_id: id.saturating_sub(1 + rng.below(4) as u128).max(1),
                        amount: AMOUNT_MAX,
                        flags: TransferFlags::POST_PENDING_TRANSFER,
                        ..Default::default()
                    }
                }
                2 => {
                    t = Transfer {
                        id,
                        pending_id: id.saturating_sub(1 + rng.below(4) as u128).max(1),
                        flags: TransferFlags::VOID_PENDING_TRANSFER,
                        ..Default::default()
                    }
                }
                _ => {}
            }
            if rng.chance(1, 6) {
                t.flags.insert(TransferFlags::LINKED);
            }
            transfers.push(t);
        }
        ops.push(Operation::CreateTransfers(transfers));
    }
    ops
}

fn accounts_op() -> Operation {
    Operation::CreateAccounts(
        (1..=ACCOUNTS as u128)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: if id % 3 == 0 {
                    AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                } else {
                    AccountFlags::HISTORY
                },
                ..Default::default()
            })
            .collect(),
    )
}

/// What `Ledger::submit` does to its state, applied to a reference state machine.
fn apply(sm: &mut StateMachine, now: u64, ops: &[Operation]) -> Vec<OperationReply> {
    sm.expire_pending_transfers(now);
    ops.iter()
        .map(|op| match op {
            Operation::CreateAccounts(e) => {
                OperationReply::CreateAccounts(sm.create_accounts(now, e))
            }
            Operation::CreateTransfers(e) => {
                OperationReply::CreateTransfers(sm.create_transfers(now, e))
            }
        })
        .collect()
}

fn config(rng: &mut SimRng, durability: Durability) -> LedgerConfig {
    LedgerConfig {
        durability,
        checkpoint_every_batches: [0, 2, 3, 7][rng.below(4) as usize],
        segment_bytes_max: [2048, 8192, 1 << 20][rng.below(3) as usize],
        ..LedgerConfig::default()
    }
}

/// One life of the ledger: open on `storage`, submit batches until the injected failure (or
/// the end), return the storage with the acknowledged and in-flight state hashes.
struct Life {
    storage: SimStorage,
    acked: u64,
    in_flight: Option<u64>,
}

fn live(
    seed: u64,
    rng: &mut SimRng,
    storage: SimStorage,
    config: &LedgerConfig,
    reference: &mut StateMachine,
    now: &mut u64,
    next_id: &mut u128,
) -> Life {
    // Sometimes the process dies during recovery itself (while truncating a torn tail or
    // removing a leftover): the disk after that crash must recover the same way.
    let mut storage = storage;
    if rng.chance(1, 3) {
        let shared = Shared(Rc::new(RefCell::new(storage)));
        let calls = rng.below(6);
        shared.0.borrow_mut().fail_after(calls);
        let attempt = Ledger::open(shared.clone(), config.clone());
        let failed = attempt.is_err();
        drop(attempt);
        let disk = Rc::try_unwrap(shared.0)
            .expect("the ledger is gone")
            .into_inner();
        storage = if failed {
            disk.crash(rng)
        } else {
            disk.crash_clean()
        };
    }
    let mut ledger = Ledger::open(storage, config.clone())
        .unwrap_or_else(|e| panic!("seed {seed}: open failed: {e}"));
    assert_eq!(
        ledger.state().state_hash(),
        reference.state_hash(),
        "seed {seed}: recovered state differs"
    );
    let batches = 1 + rng.below(25);
    if rng.chance(3, 4) {
        // Die at a random storage call within the next batches (append, sync, segment
        // removal, directory sync).
        let calls = rng.below(batches * 3 + 5);
        ledger.storage_mut().fail_after(calls);
    }
    // The checkpoint writer's own handle on the same disk; it may die at any of its calls
    // (remove, append, append, sync, rename, directory sync).
    let mut writer = ledger.storage().reopen().expect("reopen");
    if rng.chance(1, 3) {
        writer.fail_after(rng.below(12));
    }
    let mut job: Option<ledger::CheckpointJob> = None;
    let mut in_flight = None;
    let mut died = false;
    'batches: for batch in 0..batches {
        // The background checkpoint advances at random points between batches.
        if let Some(mut j) = job.take() {
            if !j.is_written() && rng.chance(1, 2) && j.write(&mut writer).is_err() {
                died = true;
                break 'batches; // The writer died: so does the process.
            }
            if j.is_written() && rng.chance(1, 2) {
                if ledger.finish_checkpoint(j).is_err() {
                    died = true;
                    break 'batches;
                }
            } else {
                job = Some(j);
            }
        }
        *now += rng.below(1_500_000_000);
        let ops = if reference.accounts_count() == 0 {
            vec![accounts_op()]
        } else {
            random_ops(rng, next_id)
        };
        match ledger.submit(*now, &ops) {
            Ok(replies) => {
                let expected = apply(reference, *now, &ops);
                assert_eq!(
                    replies, expected,
                    "seed {seed}: batch {batch} replies differ from the reference"
                );
                if ledger.checkpoint_due() {
                    assert!(job.is_none(), "seed {seed}: due while one is in flight");
                    match ledger.begin_checkpoint() {
                        Ok(begun) => job = Some(begun.expect("none in flight")),
                        Err(error) => {
                            assert!(error.is_fatal(), "seed {seed}: {error}");
                            died = true;
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                assert!(error.is_fatal(), "seed {seed}: {error}");
                let mut after = reference.clone();
                apply(&mut after, *now, &ops);
                in_flight = Some((after.state_hash(), after));
                // The ledger is poisoned from now on.
                assert!(
                    matches!(ledger.submit(*now, &ops), Err(LedgerError::Poisoned)),
                    "seed {seed}"
                );
                died = true;
                break;
            }
        }
    }
    let acked = reference.state_hash();
    let in_flight_hash = in_flight.as_ref().map(|(hash, _)| *hash);
    // Some lives end in a clean stop: the checkpoint in flight is written and finished (as
    // `committer::run` drains it), then `close` leaves the clean-stop marker.
    if !died && rng.chance(1, 4) {
        let mut finished = true;
        if let Some(mut j) = job.take() {
            finished = (j.is_written() || j.write(&mut writer).is_ok())
                && ledger.finish_checkpoint(j).is_ok();
        }
        if finished {
            drop(writer);
            // A handle on the same disk, in case `close` meets the injected fault.
            let disk = ledger.storage().reopen().expect("reopen");
            let storage = ledger.close();
            if let Ok(storage) = storage {
                let clean = storage.crash(rng);
                check_clean_stop_rules(seed, rng, &clean, config);
                let probe = Ledger::open(clean.clone(), config.clone())
                    .unwrap_or_else(|e| panic!("seed {seed}: recovery after a clean stop failed: {e}"));
                assert!(probe.recovery().clean_stop, "seed {seed}");
                assert_eq!(probe.recovery().truncated, None, "seed {seed}");
                assert_eq!(probe.state().state_hash(), acked, "seed {seed}: clean stop");
                return Life {
                    storage: clean,
                    acked,
                    in_flight: None,
                };
            }
            // `close` met the injected fault: the process dies in the middle of leaving
            // the marker (which may then be missing, a leftover `clean-stop.tmp`, or
            // whole): recovery must reach the acknowledged state either way.
            let crashed = disk.crash(rng);
            let probe = Ledger::open(crashed.clone(), config.clone())
                .unwrap_or_else(|e| panic!("seed {seed}: recovery after a failed close failed: {e}"));
            assert_eq!(probe.state().state_hash(), acked, "seed {seed}: failed close");
            return Life {
                storage: crashed,
                acked,
                in_flight: None,
            };
        }
    }
    // A checkpoint may still be begun, or written and not finished: the crash takes it.
    drop(job);
    drop(writer);
    let storage = ledger.into_storage();
    let crashed = storage.crash(rng);
    check_crash_rules(seed, rng, &crashed, config);
    // Recover once to learn which outcome the disk holds, and move the reference to it.
    let probe = Ledger::open(crashed.clone(), config.clone())
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    if let Some((_, _, removed)) = probe.recovery().truncated.clone() {
        // The cut bytes are kept aside, exactly as many as were cut.
        let kept = probe.recovery().kept_as.clone().expect("a cut is kept");
        assert_eq!(
            probe.storage().files().get(&kept).map(|b| b.len() as u64),
            Some(removed),
            "seed {seed}: the cut bytes are not kept"
        );
    }
    let recovered = probe.state().state_hash();
    if recovered != acked {
        assert_eq!(
            Some(recovered),
            in_flight_hash,
            "seed {seed}: recovered state is neither the acknowledged state nor the in-flight batch's"
        );
        *reference = in_flight.expect("checked").1;
    }
    Life {
        storage: crashed,
        acked,
        in_flight: in_flight_hash,
    }
}

/// The valid records of a disk: (segment, offset, length).
fn valid_records(disk: &SimStorage) -> Vec<(String, u64, u64)> {
    let mut handle = disk.clone();
    let scan = ledger_svc::repair::scan(&mut handle).expect("scan");
    scan.records()
        .map(|(name, offset, h)| (name.to_string(), offset, h.record_bytes()))
        .collect()
}

/// Flips one bit, expects `open` to refuse with `Corrupt` and leave every file as it was,
/// then flips it back.
fn expect_refusal(seed: u64, disk: &SimStorage, config: &LedgerConfig, name: &str, at: u64, bit: u8, rule: &str) {
    let mut damaged = disk.clone();
    damaged.flip_bit(name, at as usize, bit).expect("flip");
    let before = damaged.files();
    match Ledger::open(damaged.reopen().expect("reopen"), config.clone()) {
        Err(LedgerError::Corrupt { file, .. }) => {
            assert_eq!(file, name, "seed {seed}: {rule}: the error names another file")
        }
        Err(other) => panic!("seed {seed}: {rule}: expected Corrupt, got {other}"),
        Ok(_) => panic!("seed {seed}: {rule}: a flipped bit at {name}:{at} was accepted"),
    }
    assert_eq!(damaged.files(), before, "seed {seed}: {rule}: a refused recovery changed the files");
}

/// After a clean stop any damage refuses: a bit in a random record (header or body), or in
/// the marker.
fn check_clean_stop_rules(seed: u64, rng: &mut SimRng, disk: &SimStorage, config: &LedgerConfig) {
    let records = valid_records(disk);
    if !records.is_empty() {
        let (name, offset, length) = &records[rng.below(records.len() as u64) as usize];
        let at = offset + rng.below(*length);
        expect_refusal(seed, disk, config, name, at, rng.below(8) as u8, "clean stop, record");
    }
    let at = rng.below(wal::CLEAN_STOP_SIZE as u64);
    expect_refusal(seed, disk, config, wal::CLEAN_STOP_NAME, at, rng.below(8) as u8, "clean stop, marker");
}

/// After a crash, damage to any record but the last valid one refuses (a valid record follows
/// it, or it is in an older segment).
fn check_crash_rules(seed: u64, rng: &mut SimRng, disk: &SimStorage, config: &LedgerConfig) {
    if disk.files().contains_key(wal::CLEAN_STOP_NAME) {
        return; // The crash hit a later open before it removed the marker: strict anyway.
    }
    let records = valid_records(disk);
    if records.len() < 2 {
        return;
    }
    let (name, offset, length) = &records[rng.below(records.len() as u64 - 1) as usize];
    let at = offset + rng.below(*length);
    expect_refusal(seed, disk, config, name, at, rng.below(8) as u8, "crash, acknowledged record");
}

fn run_seed(seed: u64, durability: Durability) {
    let mut rng = SimRng::new(seed);
    let config = config(&mut rng, durability);
    let mut reference = StateMachine::new();
    let mut now = NOW;
    let mut next_id = 0u128;
    let mut storage = SimStorage::new();
    storage.sector_bytes = [64, 512, 4096][rng.below(3) as usize];
    // Several lives: crash, recover, go on, crash again.
    for _ in 0..4 {
        let life = live(
            seed,
            &mut rng,
            storage,
            &config,
            &mut reference,
            &mut now,
            &mut next_id,
        );
        let _ = (life.acked, life.in_flight);
        storage = life.storage;
    }
    // The final disk recovers to the reference state.
    let ledger = Ledger::open(storage, config)
        .unwrap_or_else(|e| panic!("seed {seed}: final recovery failed: {e}"));
    assert_eq!(
        ledger.state().state_hash(),
        reference.state_hash(),
        "seed {seed}: final state differs"
    );
}

#[test]
fn recovery_after_random_crashes_equals_the_acknowledged_state() {
    if let Ok(seed) = std::env::var("LEDGER_CRASH_SEED") {
        run_seed(
            seed.parse().expect("LEDGER_CRASH_SEED is a u64"),
            Durability::Fsync,
        );
        return;
    }
    let base: u64 = std::env::var("LEDGER_CRASH_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ed6e5);
    for i in 0..150 {
        let seed = base.wrapping_add(i);
        let result = std::panic::catch_unwind(|| run_seed(seed, Durability::Fsync));
        if let Err(panic) = result {
            eprintln!("crash test failed with seed {seed} (rerun: LEDGER_CRASH_SEED={seed})");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let mut storage = SimStorage::new();
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(storage, config.clone()).unwrap();
    ledger.submit(NOW, &[accounts_op()]).unwrap();
    let hash = ledger.state().state_hash();
    storage = ledger.into_storage();
    let name = wal::segment_name(1);
    let len = storage.len_of(&name).unwrap();
    // Half a record of garbage at the tail: a write that never completed.
    storage.append(&name, &[0xab; 100]).unwrap();
    let ledger = Ledger::open(storage, config).unwrap();
    assert_eq!(ledger.state().state_hash(), hash);
    let (file, offset, removed) = ledger
        .recovery()
        .truncated
        .clone()
        .expect("truncation reported");
    assert_eq!(
        (file.as_str(), offset, removed),
        (name.as_str(), len as u64, 100)
    );
    assert_eq!(ledger.storage().len_of(&name), Some(len));
}

/// The harness can fail: with the WAL never synced, crashes lose acknowledged batches and
/// the same checks catch it.
#[test]
fn the_harness_catches_an_unsynced_wal() {
    let caught = (0..40u64)
        .filter(|i| std::panic::catch_unwind(|| run_seed(0xbad5eed + i, Durability::None)).is_err())
        .count();
    assert!(
        caught > 0,
        "no seed lost an acknowledged batch without fsync"
    );
}
