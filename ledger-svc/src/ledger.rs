//! The durable ledger: the state machine, its write-ahead log and its checkpoints.
//!
//! `submit` applies a batch of operations, appends the batch (its inputs and its ledger time)
//! as one WAL record, syncs once for the whole batch (group commit) and only then returns the
//! replies. The server's pipelined path splits that in two: `write` applies and appends without
//! syncing, `begin_sync` hands out a `SyncJob` (run on another thread) covering every record
//! written so far, and `sync_done` moves the durability watermark (`durable_sequence`) that
//! replies are released up to; batch N+1 is written while N's sync runs (docs/ledger.md,
//! "Pipelined group commit"). `open` recovers: newest checkpoint, then every later record replayed through the
//! same deterministic code path, so the state equals the state after the last durable batch.
//!
//! Failure policy (TigerBeetle, and the PostgreSQL "fsyncgate" lesson): after a failed write
//! or fsync the kernel may have dropped the dirty pages, so the ledger cannot know what is on
//! disk. Every `LedgerError` from `submit` except `BatchTooLarge` is fatal: the ledger refuses
//! further batches (`Poisoned`) and the caller must stop the process without sending the
//! batch's replies; recovery at the next start decides what was durable.
//!
//! Recovery never drops a record that may have been acknowledged: damage followed by a valid
//! record, in an older segment, or anywhere after a clean stop (`close` leaves a marker)
//! refuses start-up and writes nothing; only the torn newest record after a crash is cut, and
//! its bytes are kept aside first (`wal` has the rules, docs/ledger.md the reasons).
//!
//! Checkpoints are taken off the commit path in three steps, and the ledger thread's part
//! does no work that grows with the state:
//! 1. `begin_checkpoint` (ledger thread, between batches) rolls the WAL to a new segment (so
//!    every segment that exists now holds only batches up to the checkpoint's) and lists those
//!    segments and the older checkpoints. It neither encodes nor copies the state;
//! 2. `CheckpointJob::write` (any thread, its own `Storage::reopen` handle) brings the
//!    checkpoint writer's *replica* of the state up to the checkpoint's batch by replaying the
//!    closed segments through the same deterministic code path as recovery (the replica is
//!    loaded from the previous checkpoint the first time), checks it against a fingerprint of
//!    the ledger's state taken in step 1, streams it into `checkpoint.tmp` (synced every
//!    `checkpoint::WRITE_CHUNK_BYTES`), renames it, syncs the directory, and only then removes
//!    the files listed in step 1 and syncs the directory again, while `submit` keeps appending
//!    to the new segment. The removals run here too because unlinking a fragmented 130 MB
//!    file costs ext4 25-85 ms (measured);
//! 3. `finish_checkpoint` (ledger thread, once the write returned Ok) records the new
//!    checkpoint and keeps the replica for the next one. No I/O.
//!
//! The WAL already is the log of every change since the last checkpoint, so the writer
//! compacts it into the next checkpoint instead of the ledger thread encoding a second log
//! of the same changes (docs/ledger.md, "Checkpoints", says why this over copy-on-write
//! tables or dirty sets). The price is memory: the replica is a second copy of the state.
//!
//! A crash at any point leaves the previous checkpoint and every segment since it (nothing
//! is removed before the new checkpoint is durable), or the new checkpoint plus possibly some
//! segments it covers (recovery skips their records). At most one checkpoint is in flight.

use crate::checkpoint::{self, parse_checkpoint_name, CHECKPOINT_TEMP_NAME};
use crate::model::*;
use crate::state_machine::{IdHashKey, StateMachine};
use crate::storage::{FileSync, Storage, StorageError};
use crate::wal::{self, ReadOutcome, SegmentReader, Verdict, OPERATIONS_PER_RECORD_MAX};

/// When `submit` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Only after the batch's record is synced (fdatasync). The default, and the only setting
    /// for production.
    #[default]
    Fsync,
    /// Without syncing: a crash loses recent batches that were answered. Benchmarks only.
    None,
}

/// The ledger's bounds and durability.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    pub durability: Durability,
    /// Write a checkpoint every this many batches (0: never), bounding the WAL that recovery
    /// replays and letting older segments be removed.
    pub checkpoint_every_batches: u64,
    /// Also write one once this many events (accounts and transfers) were logged since the
    /// last (0: no bound by events). Replay costs per event, so this is what bounds recovery
    /// time when batches are large; the bound by batches then keeps the per-record cost of
    /// many small batches in check, and can be set far higher than a bound by batches alone.
    pub checkpoint_every_events: u64,
    /// Start a new segment once the current one holds at least this many bytes.
    pub segment_bytes_max: u64,
    /// Accounts and transfers to allocate room for at start.
    pub accounts_capacity: usize,
    pub transfers_capacity: usize,
    /// The secret key of the id tables' hash; `None` draws a fresh one from the OS at `open`
    /// (production). Tests and simulations may fix it; it changes nothing observable.
    pub id_hash_key: Option<IdHashKey>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            durability: Durability::Fsync,
            checkpoint_every_batches: 1024,
            checkpoint_every_events: 0,
            segment_bytes_max: 64 * 1024 * 1024,
            accounts_capacity: 0,
            transfers_capacity: 0,
            id_hash_key: None,
        }
    }
}

/// An operating error of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A storage call failed. Fatal.
    #[error("ledger storage failed: {0}")]
    Storage(#[from] StorageError),
    /// Acknowledged data on disk is damaged: the ledger refuses to start rather than drop it.
    #[error("ledger data corrupt in {file} at byte offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    /// The batch breaks a bound; nothing was applied or logged. Not fatal: the caller's
    /// validation should have refused it.
    #[error("batch too large: {operations} operations (max {OPERATIONS_PER_RECORD_MAX}), largest has {events} events (max {BATCH_EVENTS_MAX})")]
    BatchTooLarge { operations: usize, events: usize },
    /// An earlier storage failure stopped the ledger. Fatal.
    #[error("ledger stopped after an earlier storage failure")]
    Poisoned,
    #[error("invalid ledger configuration: {0}")]
    Config(&'static str),
    /// The checkpoint API was called out of order (a bug in the caller). Fatal.
    #[error("checkpoint protocol violated: {0}")]
    CheckpointProtocol(&'static str),
    /// The pipelined sync API (`write`, `begin_sync`, `sync_done`) was called out of order
    /// (a bug in the caller). Fatal.
    #[error("WAL sync protocol violated: {0}")]
    SyncProtocol(&'static str),
    /// The thread that writes checkpoints could not start or stopped. Fatal.
    #[error("checkpoint writer thread: {0}")]
    CheckpointWriter(String),
    /// The checkpoint writer's replica, rebuilt from the WAL, does not match the ledger's
    /// state at the same batch: replay is not deterministic (a bug). Fatal, and no
    /// checkpoint is written from it.
    #[error("checkpoint replica diverged at batch {sequence}: {detail}")]
    ReplicaDiverged { sequence: u64, detail: String },
}

impl LedgerError {
    /// True for every error after which the process must stop.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, LedgerError::BatchTooLarge { .. })
    }
}

/// What `open` found and did, for the operator's log and for tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The sequence of the checkpoint loaded (0: none).
    pub checkpoint_sequence: u64,
    /// Records replayed after it.
    pub records_replayed: u64,
    /// Events (accounts and transfers) replayed.
    pub events_replayed: u64,
    /// A torn tail cut off: (file, offset, bytes removed).
    pub truncated: Option<(String, u64, u64)>,
    /// Where the cut bytes were kept (`wal-<seq>.log.cut-<offset>`).
    pub kept_as: Option<String>,
    /// The ledger had stopped cleanly (its `clean-stop` marker was found and removed).
    pub clean_stop: bool,
    /// The sequence of the last durable batch.
    pub last_sequence: u64,
}

/// Applies one batch to the state: expiries due at `now_ns` first, then the operations in
/// order. The one code path for `submit` and for replay, which is what makes replay exact.
pub(crate) fn apply_batch(state: &mut StateMachine, now_ns: u64, ops: &[Operation]) -> Vec<OperationReply> {
    state.expire_pending_transfers(now_ns);
    ops.iter()
        .map(|op| match op {
            Operation::CreateAccounts(events) => {
                OperationReply::CreateAccounts(state.create_accounts(now_ns, events))
            }
            Operation::CreateTransfers(events) => {
                OperationReply::CreateTransfers(state.create_transfers(now_ns, events))
            }
        })
        .collect()
}

/// The checkpoint writer's copy of the state: the state after batch `sequence`, rebuilt from
/// a checkpoint and the WAL. Kept by the `Ledger` between checkpoints and lent to each
/// `CheckpointJob`, so only one thread touches it at a time.
#[derive(Debug)]
struct Replica {
    state: StateMachine,
    sequence: u64,
}

/// A summary of the ledger's state after a batch, O(1) to take, that the replica must match
/// after its replay: a paired check across the two threads (a full `state_hash` would cost
/// the ledger thread the very pass over the state this design removes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fingerprint {
    timestamp: u64,
    accounts: usize,
    transfers: usize,
    last_transfer: Option<Transfer>,
}

impl Fingerprint {
    fn of(state: &StateMachine) -> Fingerprint {
        Fingerprint {
            timestamp: state.timestamp(),
            accounts: state.accounts_count(),
            transfers: state.transfers_count(),
            last_transfer: state.transfers().last().copied(),
        }
    }
}

/// The work a checkpoint did, counted rather than timed (tests show with it that the ledger
/// thread's part does not grow with the state; the server logs it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckpointWork {
    /// Directory entries `begin_checkpoint` listed on the ledger thread: its only work that
    /// is not constant (the segments since the last checkpoint, and the checkpoint).
    pub ledger_thread_entries: u64,
    /// Bytes of the previous checkpoint the writer read to build its replica (only for the
    /// first checkpoint after `open`; 0 afterwards).
    pub checkpoint_bytes_loaded: u64,
    /// WAL records and events the writer replayed into its replica.
    pub records_replayed: u64,
    pub events_replayed: u64,
    /// The size of the checkpoint file written.
    pub bytes_written: u64,
}

/// Copies `tail` (the bytes of `segment` from `offset` on) to a new file that no later
/// cut overwrites (`wal::cut_name`), durably, before recovery truncates the segment: a torn
/// tail is cut, never destroyed. Returns the file's name.
fn keep_aside<S: Storage>(
    storage: &mut S,
    names: &[String],
    segment: &str,
    offset: u64,
    tail: &[u8],
) -> Result<String, LedgerError> {
    let mut n = 0;
    let kept = loop {
        let candidate = wal::cut_name(segment, offset, n);
        if !names.contains(&candidate) {
            break candidate;
        }
        n += 1;
    };
    let temp = format!("{kept}.tmp");
    storage.remove(&temp)?;
    storage.append(&temp, tail)?;
    storage.sync(&temp)?;
    storage.rename(&temp, &kept)?;
    storage.sync_dir()?;
    log::warn!(
        "ledger recovery: the {} cut bytes are kept in {}",
        tail.len(),
        storage.describe(&kept)
    );
    Ok(kept)
}

/// A checkpoint begun by `Ledger::begin_checkpoint`: the state after batch `sequence`, to be
/// built and written by `write` (on any thread) and handed back to
/// `Ledger::finish_checkpoint`.
#[derive(Debug)]
pub struct CheckpointJob {
    sequence: u64,
    /// The ledger's `events_logged` at `sequence`: where its bound by events counts from once
    /// this checkpoint is finished.
    events_logged: u64,
    /// The newest durable checkpoint when the job began (0: none): where the replica starts
    /// when the ledger had none to lend (the first checkpoint after `open`).
    base_sequence: u64,
    id_hash_key: IdHashKey,
    replica: Option<Replica>,
    expected: Fingerprint,
    /// The segments and checkpoints this one supersedes, to remove once it is durable. The
    /// segments among them hold every batch up to `sequence` the replica still needs.
    superseded: Vec<String>,
    written: bool,
    work: CheckpointWork,
}

impl CheckpointJob {
    /// The batch the checkpoint is taken after.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The size of the checkpoint file, in bytes, once written (0 before).
    pub fn file_bytes(&self) -> u64 {
        self.work.bytes_written
    }

    /// The work done so far (see `CheckpointWork`).
    pub fn work(&self) -> CheckpointWork {
        self.work
    }

    /// True once `write` has returned Ok.
    pub fn is_written(&self) -> bool {
        self.written
    }

    /// Builds the checkpoint and writes it durably: brings the replica up to `sequence` by
    /// replaying the superseded segments, checks it against the ledger's fingerprint, writes
    /// `checkpoint.tmp` (syncs), renames it to `checkpoint-<sequence>.snap` (directory sync),
    /// then removes the segments and older checkpoints it supersedes (directory sync). Use a
    /// handle of its own (`Storage::reopen`) to run it on another thread while the ledger
    /// appends. An error is fatal for the process (the same policy as the WAL: a failed fsync
    /// proves nothing about what is on disk, and a segment that no longer replays is damage
    /// to acknowledged data); nothing acknowledged is lost by it, since nothing is removed
    /// before the new checkpoint is durable.
    pub fn write<S: Storage>(&mut self, storage: &mut S) -> Result<(), LedgerError> {
        if self.written {
            return Err(LedgerError::CheckpointProtocol("checkpoint written twice"));
        }
        let mut replica = match self.replica.take() {
            Some(replica) => replica,
            None => self.load_replica(storage)?,
        };
        self.replay(storage, &mut replica)?;
        let found = Fingerprint::of(&replica.state);
        if found != self.expected {
            return Err(LedgerError::ReplicaDiverged {
                sequence: self.sequence,
                detail: format!("ledger {:?}, replica {found:?}", self.expected),
            });
        }
        let (name, size) = checkpoint::write(storage, &replica.state, self.sequence)?;
        self.work.bytes_written = size;
        log::info!(
            "ledger checkpoint {} written ({size} bytes) at batch {}: {} records replayed",
            storage.describe(&name),
            self.sequence,
            self.work.records_replayed
        );
        for old in &self.superseded {
            storage.remove(old)?;
        }
        if !self.superseded.is_empty() {
            storage.sync_dir()?;
        }
        self.replica = Some(replica);
        self.written = true;
        Ok(())
    }

    /// The replica at the newest checkpoint when the job began, read from its file (or an
    /// empty state if there is none).
    fn load_replica<S: Storage>(&mut self, storage: &mut S) -> Result<Replica, LedgerError> {
        if self.base_sequence == 0 {
            return Ok(Replica {
                state: StateMachine::with_id_hash_key(self.id_hash_key),
                sequence: 0,
            });
        }
        let name = checkpoint::checkpoint_name(self.base_sequence);
        let bytes = storage.read(&name)?;
        self.work.checkpoint_bytes_loaded = bytes.len() as u64;
        let corrupt = |offset, reason: &str| LedgerError::Corrupt {
            file: storage.describe(&name),
            offset,
            reason: reason.to_string(),
        };
        let (sequence, state) = checkpoint::read(&bytes, self.id_hash_key)
            .map_err(|damage| corrupt(damage.offset, damage.reason))?;
        if sequence != self.base_sequence {
            return Err(corrupt(8, "checkpoint sequence differs from its name"));
        }
        Ok(Replica { state, sequence })
    }

    /// Replays the records after the replica's batch, up to `sequence`, from the segments the
    /// job supersedes (closed before the job began, so no other handle writes them).
    fn replay<S: Storage>(
        &mut self,
        storage: &mut S,
        replica: &mut Replica,
    ) -> Result<(), LedgerError> {
        let mut segments: Vec<(u64, &String)> = self
            .superseded
            .iter()
            .filter_map(|name| wal::parse_segment_name(name).map(|first| (first, name)))
            .collect();
        segments.sort();
        for (position, &(_, name)) in segments.iter().enumerate() {
            if replica.sequence >= self.sequence {
                break;
            }
            if segments
                .get(position + 1)
                .is_some_and(|&(next, _)| next <= replica.sequence + 1)
            {
                continue; // Wholly covered by the replica (a leftover of an older checkpoint).
            }
            let bytes = storage.read(name)?;
            let corrupt = |offset: u64, reason: String| LedgerError::Corrupt {
                file: storage.describe(name),
                offset,
                reason,
            };
            let mut reader = SegmentReader::new(&bytes);
            loop {
                match reader.next_record() {
                    ReadOutcome::Record {
                        offset,
                        header,
                        body,
                    } => {
                        if header.sequence <= replica.sequence {
                            continue;
                        }
                        if header.sequence != replica.sequence + 1
                            || header.sequence > self.sequence
                        {
                            return Err(corrupt(
                                offset,
                                format!(
                                    "record sequence {} where {} was expected (checkpoint replay up to {})",
                                    header.sequence,
                                    replica.sequence + 1,
                                    self.sequence
                                ),
                            ));
                        }
                        let ops = wal::decode_body(body)
                            .ok_or_else(|| corrupt(offset, "record body malformed".to_string()))?;
                        apply_batch(&mut replica.state, header.now_ns, &ops);
                        replica.sequence = header.sequence;
                        self.work.records_replayed += 1;
                        self.work.events_replayed +=
                            ops.iter().map(|op| op.len() as u64).sum::<u64>();
                    }
                    ReadOutcome::End => break,
                    // A closed segment was whole when the ledger rolled past it: any damage
                    // now is damage to acknowledged data.
                    ReadOutcome::Damaged(damage) => {
                        return Err(corrupt(
                            damage.offset,
                            format!(
                                "{} (found by the checkpoint writer in a closed segment)",
                                damage.kind.describe()
                            ),
                        ))
                    }
                }
            }
        }
        if replica.sequence != self.sequence {
            return Err(LedgerError::Corrupt {
                file: storage.describe(""),
                offset: 0,
                reason: format!(
                    "the WAL segments end at batch {}, the checkpoint is of batch {}",
                    replica.sequence, self.sequence
                ),
            });
        }
        Ok(())
    }
}

/// A sync of the WAL begun by `Ledger::begin_sync`: when run (on any thread, the ledger
/// thread meanwhile writing the next batch), it makes every record up to batch `upto`
/// durable; its result goes back to `Ledger::sync_done`. It holds one handle per segment
/// written since the previous sync (two when a batch rolled the WAL), oldest first.
#[derive(Debug)]
pub struct SyncJob {
    upto: u64,
    files: Vec<Box<dyn FileSync>>,
}

impl SyncJob {
    /// The last batch this sync makes durable.
    pub fn upto(&self) -> u64 {
        self.upto
    }

    /// Runs the fsyncs and gives back `upto` (pass the result to `Ledger::sync_done`). An
    /// error is fatal, as any WAL sync's.
    pub fn run(self) -> Result<u64, StorageError> {
        for file in self.files {
            file.sync()?;
        }
        Ok(self.upto)
    }
}

/// The durable ledger. See the module documentation.
#[derive(Debug)]
pub struct Ledger<S: Storage> {
    storage: S,
    config: LedgerConfig,
    state: StateMachine,
    /// The sequence of the last batch logged.
    sequence: u64,
    /// The sequence of the last batch known durable (`sequence` with `Durability::None`):
    /// the watermark a pipelined caller releases replies up to.
    durable: u64,
    /// Segments holding records no sync has covered yet, oldest first (two at most in
    /// practice: the one a batch rolled away from and the new one).
    unsynced: Vec<String>,
    /// The `upto` of the sync handed out by `begin_sync` and not reported yet.
    sync_in_flight: Option<u64>,
    /// The last batch whose record is appended to the WAL (`sequence`, unless one is staged).
    appended: u64,
    /// A batch written (applied, record encoded) while an appended record was not yet
    /// durable: its record waits here and is appended by the next `begin_sync`, so that the
    /// WAL never holds a record behind one that is not durable (only the newest record can
    /// be torn by a crash, the rule recovery relies on). One at most.
    staged: Option<(u64, Vec<u8>)>,
    /// The segment being appended to and its size; `None` until the next append starts one.
    segment: Option<(String, u64)>,
    checkpoint_sequence: u64,
    /// Events in the batches logged since `open`'s checkpoint (those replayed included), and
    /// their count at the newest checkpoint's batch.
    events_logged: u64,
    checkpoint_events: u64,
    /// The sequence of the checkpoint begun and not yet finished.
    checkpoint_in_flight: Option<u64>,
    /// The checkpoint writer's replica of the state (at `checkpoint_sequence`), lent to each
    /// `CheckpointJob` and taken back when it finishes; `None` until the first one after
    /// `open` finishes (that job loads it from the newest checkpoint).
    replica: Option<Replica>,
    poisoned: bool,
    /// Reused record buffer (no allocation per batch once warm).
    record: Vec<u8>,
    /// The checksum_header of the last record logged (0: unknown), the next one's parent.
    last_checksum: u32,
    recovery: RecoveryReport,
}

impl<S: Storage> Ledger<S> {
    /// Opens the ledger on `storage`, recovering its state. Fails with `Corrupt` (naming the
    /// file and offset) if acknowledged data is damaged.
    pub fn open(mut storage: S, config: LedgerConfig) -> Result<Self, LedgerError> {
        if config.segment_bytes_max == 0 {
            return Err(LedgerError::Config("segment_bytes_max must be positive"));
        }
        let names = storage.list()?;
        let mut checkpoints: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| parse_checkpoint_name(n).map(|s| (s, n.clone())))
            .collect();
        checkpoints.sort();
        let mut segments: Vec<(u64, String)> = names
            .iter()
            .filter_map(|n| wal::parse_segment_name(n).map(|s| (s, n.clone())))
            .collect();
        segments.sort();

        let mut report = RecoveryReport::default();
        let id_hash_key = config.id_hash_key.unwrap_or_else(IdHashKey::from_os);
        let (checkpoint_sequence, mut state) = match checkpoints.last() {
            Some((named, name)) => {
                let bytes = storage.read(name)?;
                let (sequence, state) =
                    checkpoint::read(&bytes, id_hash_key).map_err(|d| LedgerError::Corrupt {
                        file: storage.describe(name),
                        offset: d.offset,
                        reason: d.reason.to_string(),
                    })?;
                // The name chose this checkpoint as the newest and decides which segments are
                // obsolete: a file whose content is another batch (renamed, or copied over) would
                // replay the WAL from the wrong place. verify reports the same mismatch.
                if sequence != *named {
                    return Err(LedgerError::Corrupt {
                        file: storage.describe(name),
                        offset: 8,
                        reason: format!("holds batch {sequence}, but its name says {named}"),
                    });
                }
                // A checksum catches damage, not a file written wrong with a valid checksum (a
                // fuzzer made one): books that do not balance would be served as they are.
                // `verify` reports the same findings after its replay.
                if let Some(finding) = crate::verify::check_state(&state).1.first() {
                    return Err(LedgerError::Corrupt {
                        file: storage.describe(name),
                        offset: checkpoint::STATE_OFFSET,
                        reason: format!("its state breaks the ledger's invariants: {}", finding.what),
                    });
                }
                (sequence, state)
            }
            None => {
                let mut state = StateMachine::with_id_hash_key(id_hash_key);
                state.reserve(config.accounts_capacity, config.transfers_capacity);
                (0, state)
            }
        };
        report.checkpoint_sequence = checkpoint_sequence;

        // A clean stop left a marker: no write was in flight, so recovery is strict.
        let clean_stop = if names.iter().any(|n| n == wal::CLEAN_STOP_NAME) {
            let bytes = storage.read(wal::CLEAN_STOP_NAME)?;
            let marker = wal::CleanStop::parse(&bytes).map_err(|reason| LedgerError::Corrupt {
                file: storage.describe(wal::CLEAN_STOP_NAME),
                offset: 0,
                reason: format!("the clean-stop marker {reason}"),
            })?;
            Some(marker)
        } else {
            None
        };
        report.clean_stop = clean_stop.is_some();

        let mut sequence = checkpoint_sequence;
        let mut segment: Option<(String, u64)> = None;
        // The checksum_header of the last valid record read, for the parent chain.
        let mut last_checksum: Option<u32> = None;
        // The torn tail to cut: (segment, offset, the bytes from offset on).
        let mut torn: Option<(String, u64, Vec<u8>)> = None;
        let segments_count = segments.len();
        for (position, (named, name)) in segments.iter().enumerate() {
            let bytes = storage.read(name)?;
            let mut reader = SegmentReader::new(&bytes);
            let mut first_record = true;
            let corrupt = |offset: u64, reason: String| LedgerError::Corrupt {
                file: storage.describe(name),
                offset,
                reason,
            };
            let mut valid_len = bytes.len() as u64;
            loop {
                match reader.next_record() {
                    ReadOutcome::Record {
                        offset,
                        header,
                        body,
                    } => {
                        // A segment is named after its first record's batch, and the names
                        // order the replay: a segment renamed, or copied over another, would
                        // put old records after new ones (covered by the checkpoint, they
                        // would be skipped, and the WAL's end misplaced). verify reports it too.
                        if std::mem::take(&mut first_record) && header.sequence != *named {
                            return Err(corrupt(
                                offset,
                                format!("its first record is batch {}, but its name says {named}", header.sequence),
                            ));
                        }
                        let parent = last_checksum.replace(header.checksum_header);
                        if header.sequence <= checkpoint_sequence {
                            // Covered by the checkpoint; the segment outlived its removal.
                            continue;
                        }
                        if header.sequence != sequence + 1 {
                            return Err(corrupt(
                                offset,
                                format!(
                                    "record sequence {} where {} was expected",
                                    header.sequence,
                                    sequence + 1
                                ),
                            ));
                        }
                        // The parent chain: a record with a valid checksum and the expected
                        // sequence may still come from another log (0: its writer did not
                        // know its parent).
                        if let Some(parent) = parent.filter(|&p| header.parent != 0 && header.parent != p) {
                            return Err(corrupt(
                                offset,
                                format!(
                                    "record {} names parent {:08x}, but the record before it is {parent:08x}",
                                    header.sequence, header.parent
                                ),
                            ));
                        }
                        let ops = wal::decode_body(body)
                            .ok_or_else(|| corrupt(offset, "record body malformed".to_string()))?;
                        apply_batch(&mut state, header.now_ns, &ops);
                        sequence = header.sequence;
                        report.records_replayed += 1;
                        report.events_replayed += ops.iter().map(|op| op.len() as u64).sum::<u64>();
                    }
                    ReadOutcome::End => break,
                    ReadOutcome::Damaged(damage) => {
                        let newest = position + 1 == segments_count;
                        match wal::classify(&damage, newest, clean_stop.is_some()) {
                            Verdict::Corrupt(why) => {
                                return Err(corrupt(
                                    damage.offset,
                                    format!("{} ({why})", damage.kind.describe()),
                                ))
                            }
                            Verdict::TornTail => {
                                let offset = damage.offset;
                                log::warn!(
                                    "ledger recovery: torn WAL tail in {} at byte offset {offset} ({} bytes, {}): a write that was never acknowledged",
                                    storage.describe(name),
                                    bytes.len() as u64 - offset,
                                    damage.kind.describe()
                                );
                                torn = Some((name.clone(), offset, bytes[offset as usize..].to_vec()));
                                valid_len = offset;
                                break;
                            }
                        }
                    }
                }
            }
            segment = Some((name.clone(), valid_len));
        }
        if let Some(marker) = &clean_stop {
            // After a clean stop the WAL must end exactly where the marker says.
            let found = match &segment {
                Some((name, len)) => (wal::parse_segment_name(name).unwrap_or(0), *len),
                None => (0, 0),
            };
            let expected = (marker.segment_first_sequence, marker.segment_bytes);
            let checksum_ok = segment.is_none()
                || marker.last_checksum == 0
                || last_checksum == Some(marker.last_checksum);
            if found != expected || sequence != marker.sequence || !checksum_ok {
                let file = match &segment {
                    Some((name, _)) => storage.describe(name),
                    None => storage.describe(wal::CLEAN_STOP_NAME),
                };
                return Err(LedgerError::Corrupt {
                    file,
                    offset: found.1,
                    reason: format!(
                        "the WAL ends at batch {sequence} ({} bytes of {}), but the clean stop left it at batch {} ({} bytes of {})",
                        found.1,
                        wal::segment_name(found.0),
                        marker.sequence,
                        marker.segment_bytes,
                        wal::segment_name(marker.segment_first_sequence),
                    ),
                });
            }
        }
        if let Some((name, offset, tail)) = torn {
            // A torn tail and a durable record read back wrong look the same in one read; a
            // transient read error does not repeat. Read the segment again before cutting
            // anything: if the two reads disagree, the damage may be the disk's, not a crash's,
            // and cutting could drop acknowledged batches: refuse (the simulator found this).
            let again = storage.read(&name)?;
            if again.len() as u64 != offset + tail.len() as u64 || again[offset as usize..] != tail[..] {
                return Err(LedgerError::Corrupt {
                    file: storage.describe(&name),
                    offset,
                    reason: "two reads of the damaged WAL tail differ: the disk returns unstable data, so the damage may hide acknowledged batches; nothing was cut".to_string(),
                });
            }
            let kept = keep_aside(&mut storage, &names, &name, offset, &tail)?;
            storage.truncate(&name, offset)?;
            storage.sync(&name)?;
            report.truncated = Some((storage.describe(&name), offset, tail.len() as u64));
            report.kept_as = Some(storage.describe(&kept));
        }
        // A gap between the checkpoint and the first segment, or between segments, was caught
        // above by the sequence check. Leftovers of an interrupted checkpoint are of no use.
        if names.iter().any(|n| n == CHECKPOINT_TEMP_NAME) {
            storage.remove(CHECKPOINT_TEMP_NAME)?;
        }
        if names.iter().any(|n| n == wal::CLEAN_STOP_TEMP_NAME) {
            storage.remove(wal::CLEAN_STOP_TEMP_NAME)?;
        }
        if clean_stop.is_some() {
            // From the first append on, a crash must be recovered as a crash.
            storage.remove(wal::CLEAN_STOP_NAME)?;
            storage.sync_dir()?;
        }
        report.last_sequence = sequence;
        log::info!(
            "ledger recovered: checkpoint {}, {} records ({} events) replayed, last batch {}",
            report.checkpoint_sequence,
            report.records_replayed,
            report.events_replayed,
            report.last_sequence
        );
        Ok(Ledger {
            storage,
            config,
            state,
            sequence,
            durable: sequence,
            unsynced: Vec::new(),
            sync_in_flight: None,
            appended: sequence,
            staged: None,
            segment,
            checkpoint_sequence,
            events_logged: report.events_replayed,
            checkpoint_events: 0,
            checkpoint_in_flight: None,
            replica: None,
            poisoned: false,
            record: Vec::new(),
            last_checksum: last_checksum.unwrap_or(0),
            recovery: report,
        })
    }

    /// Applies all operations as ONE batch at ledger time `now_ns` (the ledger keeps its
    /// clock monotonic: timestamps strictly increase even if `now_ns` goes backwards), appends
    /// them as one WAL record, syncs once (group commit), and returns the replies only after
    /// the record is durable. `Err` is fatal unless `!err.is_fatal()` (see the module docs).
    /// Not while a pipelined sync is in flight (`begin_sync`): that is `SyncProtocol`.
    pub fn submit(
        &mut self,
        now_ns: u64,
        ops: &[Operation],
    ) -> Result<Vec<OperationReply>, LedgerError> {
        if self.sync_in_flight.is_some() || self.staged.is_some() {
            return Err(LedgerError::SyncProtocol("submit while a pipelined batch is not durable"));
        }
        let sequence = self.append_batch(now_ns, ops)?;
        // Durable before applied: a failed sync leaves the state as it was.
        self.sync_in_line(sequence)?;
        Ok(self.apply(sequence, now_ns, ops))
    }

    /// The first half of a pipelined commit: applies the batch and encodes its WAL record
    /// like `submit`, but does not sync. The replies it returns must not reach a client before
    /// `durable_sequence()` reaches this batch (`begin_sync`, `SyncJob::run` on another
    /// thread, `sync_done`). The record is appended at once when every appended record is
    /// durable; otherwise (the previous batch is syncing) it is staged, and the next
    /// `begin_sync` appends it: a crash can then tear only the newest record, as with
    /// `submit`. One batch may be staged (`SyncProtocol` for a second). `Err` is fatal unless
    /// `!err.is_fatal()`. With `Durability::None` the batch counts as durable at once.
    pub fn write(
        &mut self,
        now_ns: u64,
        ops: &[Operation],
    ) -> Result<Vec<OperationReply>, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        let behind_unsynced = self.sync_in_flight.is_some() || self.appended > self.durable;
        let sequence = if behind_unsynced && self.config.durability == Durability::Fsync {
            if self.staged.is_some() {
                return Err(LedgerError::SyncProtocol("a second batch written while one waits for a sync"));
            }
            let (sequence, record) = self.encode_batch(now_ns, ops)?;
            self.staged = Some((sequence, record));
            sequence
        } else {
            self.append_batch(now_ns, ops)?
        };
        Ok(self.apply(sequence, now_ns, ops))
    }

    /// Begins a sync of every record written so far (fdatasync semantics: the handles are
    /// taken after the writes returned, so they cover them): `Ok(None)` when every batch is
    /// already durable. At most one sync is in flight; run the job, then call `sync_done`.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        if self.sync_in_flight.is_some() {
            return Err(LedgerError::SyncProtocol("a second sync while one is in flight"));
        }
        if self.durable == self.sequence {
            debug_assert!(self.unsynced.is_empty() || self.config.durability == Durability::None);
            return Ok(None);
        }
        // Every appended record is durable here unless the caller skipped a sync; a staged
        // record goes to the disk now, and this sync covers it.
        if let Some((sequence, record)) = self.staged.take() {
            if self.appended > self.durable {
                self.poisoned = true;
                return Err(LedgerError::SyncProtocol("a staged record behind one not durable"));
            }
            let result = self.append_record(sequence, &record);
            self.record = record;
            if let Err(error) = result {
                self.poisoned = true;
                return Err(error.into());
            }
            self.appended = sequence;
        }
        let mut files = Vec::with_capacity(self.unsynced.len());
        for name in std::mem::take(&mut self.unsynced) {
            match self.storage.sync_handle(&name) {
                Ok(file) => files.push(file),
                Err(error) => {
                    self.poisoned = true;
                    return Err(error.into());
                }
            }
        }
        self.sync_in_flight = Some(self.sequence);
        Ok(Some(SyncJob { upto: self.sequence, files }))
    }

    /// Records the outcome of the sync `begin_sync` handed out (`SyncJob::run`'s result):
    /// returns the new durability watermark, or the error, which is fatal (the ledger
    /// poisons itself: nothing written since the last durable batch may be acknowledged).
    pub fn sync_done(&mut self, result: Result<u64, StorageError>) -> Result<u64, LedgerError> {
        let Some(expected) = self.sync_in_flight.take() else {
            return Err(LedgerError::SyncProtocol("sync_done without a sync in flight"));
        };
        match result {
            Ok(upto) if upto == expected => {
                debug_assert!(upto <= self.sequence);
                self.durable = self.durable.max(upto);
                Ok(self.durable)
            }
            Ok(_) => {
                self.poisoned = true;
                Err(LedgerError::SyncProtocol("sync_done with another sync's result"))
            }
            Err(error) => {
                self.poisoned = true;
                Err(error.into())
            }
        }
    }

    /// The last batch known durable: replies of batches up to it may be released.
    pub fn durable_sequence(&self) -> u64 {
        self.durable
    }

    /// True while a sync handed out by `begin_sync` has not been reported.
    pub fn sync_in_flight(&self) -> bool {
        self.sync_in_flight.is_some()
    }

    /// The last batch whose record is in the WAL (a staged one is not, until `begin_sync`).
    pub fn appended_sequence(&self) -> u64 {
        self.appended
    }

    /// Where the WAL ends now: the segment appended to and its length (`None` before the
    /// first append after `open` or a checkpoint). The simulator records it for
    /// `appended_sequence()` after each write and each `begin_sync`, to check that a batch's
    /// record is durable before its replies go.
    pub fn wal_position(&self) -> Option<(&str, u64)> {
        self.segment.as_ref().map(|(name, size)| (name.as_str(), *size))
    }

    /// Checks the bounds, then encodes and appends the next batch's record (no sync).
    /// Returns its sequence; the caller applies it. A failed append poisons the ledger.
    fn append_batch(&mut self, now_ns: u64, ops: &[Operation]) -> Result<u64, LedgerError> {
        let (sequence, record) = self.encode_batch(now_ns, ops)?;
        let result = self.append_record(sequence, &record);
        self.record = record;
        if let Err(error) = result {
            self.poisoned = true;
            return Err(error.into());
        }
        self.appended = sequence;
        Ok(sequence)
    }

    /// Checks the bounds and encodes the next batch's record (in the reused buffer, which
    /// the caller puts back once appended), chained to the previous record.
    fn encode_batch(&mut self, now_ns: u64, ops: &[Operation]) -> Result<(u64, Vec<u8>), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        let events_max = ops.iter().map(Operation::len).max().unwrap_or(0);
        if ops.len() > OPERATIONS_PER_RECORD_MAX || events_max > BATCH_EVENTS_MAX {
            return Err(LedgerError::BatchTooLarge {
                operations: ops.len(),
                events: events_max,
            });
        }
        let sequence = self.sequence + 1;
        let mut record = std::mem::take(&mut self.record);
        self.last_checksum = wal::encode_record(&mut record, sequence, now_ns, self.last_checksum, ops);
        Ok((sequence, record))
    }

    /// Applies the batch whose record `append_batch` appended as `sequence`.
    fn apply(&mut self, sequence: u64, now_ns: u64, ops: &[Operation]) -> Vec<OperationReply> {
        debug_assert_eq!(sequence, self.sequence + 1);
        let replies = apply_batch(&mut self.state, now_ns, ops);
        self.sequence = sequence;
        self.events_logged += ops.iter().map(|op| op.len() as u64).sum::<u64>();
        if self.config.durability == Durability::None {
            self.durable = sequence;
        }
        replies
    }

    /// Syncs every segment with unsynced records on this thread; then every batch up to
    /// `upto` is durable. A failure poisons the ledger.
    fn sync_in_line(&mut self, upto: u64) -> Result<(), LedgerError> {
        for name in std::mem::take(&mut self.unsynced) {
            if let Err(error) = self.storage.sync(&name) {
                self.poisoned = true;
                return Err(error.into());
            }
        }
        if self.config.durability == Durability::Fsync {
            self.durable = upto;
        }
        Ok(())
    }

    /// The simulator's injected bug "skip the WAL fsync": `submit` as with
    /// `Durability::None`. Compiled only with the `sim-bugs` feature (never in production).
    #[cfg(feature = "sim-bugs")]
    pub fn submit_without_sync(&mut self, now_ns: u64, ops: &[Operation]) -> Result<Vec<OperationReply>, LedgerError> {
        let durability = std::mem::replace(&mut self.config.durability, Durability::None);
        let result = self.submit(now_ns, ops);
        self.config.durability = durability;
        result
    }

    /// The same bug on the pipelined path: `write` as with `Durability::None`, so the batch
    /// counts as durable at once and no sync covers it.
    #[cfg(feature = "sim-bugs")]
    pub fn write_without_sync(&mut self, now_ns: u64, ops: &[Operation]) -> Result<Vec<OperationReply>, LedgerError> {
        let durability = std::mem::replace(&mut self.config.durability, Durability::None);
        let result = self.write(now_ns, ops);
        self.config.durability = durability;
        result
    }

    fn append_record(&mut self, sequence: u64, record: &[u8]) -> Result<(), StorageError> {
        let roll = match &self.segment {
            None => true,
            Some((_, size)) => {
                *size > 0 && *size + record.len() as u64 > self.config.segment_bytes_max
            }
        };
        if roll {
            self.segment = Some((wal::segment_name(sequence), 0));
        }
        let (name, size) = self.segment.as_mut().expect("set above");
        self.storage.append(name, record)?;
        *size += record.len() as u64;
        // The next sync (in line for `submit`, handed out by `begin_sync` for `write`)
        // covers this segment.
        if self.config.durability == Durability::Fsync && self.unsynced.last() != Some(name) {
            self.unsynced.push(name.clone());
        }
        Ok(())
    }

    /// True when `checkpoint_every_batches` batches, or `checkpoint_every_events` events,
    /// were logged since the last checkpoint and none is in flight: the caller should
    /// `begin_checkpoint` (`submit` never does).
    pub fn checkpoint_due(&self) -> bool {
        let (batches, events) = (self.config.checkpoint_every_batches, self.config.checkpoint_every_events);
        !self.poisoned
            && self.checkpoint_in_flight.is_none()
            && ((batches > 0 && self.sequence - self.checkpoint_sequence >= batches)
                || (events > 0 && self.events_logged - self.checkpoint_events >= events))
    }

    /// The sequence of the checkpoint begun and not yet finished, if any.
    pub fn checkpoint_in_flight(&self) -> Option<u64> {
        self.checkpoint_in_flight
    }

    /// The sequence of the newest durable checkpoint (0: none).
    pub fn checkpoint_sequence(&self) -> u64 {
        self.checkpoint_sequence
    }

    /// Step 1 of a checkpoint (module docs): rolls the WAL, so the next batch starts a new
    /// segment, and lists the files the checkpoint will supersede. `Ok(None)` if a checkpoint
    /// is already in flight. This is the only part of a checkpoint on the ledger thread: one
    /// directory listing, no pass over the state (no I/O beyond the listing with
    /// `Durability::Fsync`).
    pub fn begin_checkpoint(&mut self) -> Result<Option<CheckpointJob>, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        if self.checkpoint_in_flight.is_some() {
            return Ok(None);
        }
        // The checkpoint of batch `sequence` would make durable, and let the writer remove
        // the segments of, batches whose own sync has not returned: a failed sync could
        // then not keep them from counting. The committer begins one only with every batch
        // durable.
        if self.sync_in_flight.is_some() || self.durable != self.sequence {
            return Err(LedgerError::CheckpointProtocol("checkpoint begun while a batch is not durable"));
        }
        if self.config.durability == Durability::None {
            // The checkpoint must not claim batches that may not be on disk: otherwise a
            // crash could leave a checkpoint ahead of a WAL that lost its tail, and the next
            // batches would reuse sequence numbers the checkpoint already covers.
            if let Some((name, _)) = &self.segment {
                if let Err(error) = self.storage.sync(name) {
                    self.poisoned = true;
                    return Err(error.into());
                }
            }
        }
        // Every segment that exists now ends at or before `sequence` once the WAL rolls
        // below, so the writer can replay them and then remove them all while the WAL goes
        // on in the next one.
        let names = match self.storage.list() {
            Ok(names) => names,
            Err(error) => {
                self.poisoned = true;
                return Err(error.into());
            }
        };
        let ledger_thread_entries = names.len() as u64;
        let superseded: Vec<String> = names
            .into_iter()
            .filter(|name| {
                wal::parse_segment_name(name).is_some()
                    || parse_checkpoint_name(name).is_some_and(|s| s < self.sequence)
            })
            .collect();
        if let Some((name, _)) = self.segment.take() {
            // Our open handle would keep the file's blocks allocated after the writer
            // unlinks it, and the last close would pay for freeing them on this thread.
            self.storage.close(&name);
        }
        let replica = self.replica.take();
        debug_assert!(replica
            .as_ref()
            .is_none_or(|r| r.sequence == self.checkpoint_sequence));
        self.checkpoint_in_flight = Some(self.sequence);
        Ok(Some(CheckpointJob {
            sequence: self.sequence,
            events_logged: self.events_logged,
            base_sequence: self.checkpoint_sequence,
            id_hash_key: self.state.id_hash_key(),
            replica,
            expected: Fingerprint::of(&self.state),
            superseded,
            written: false,
            work: CheckpointWork {
                ledger_thread_entries,
                ..CheckpointWork::default()
            },
        }))
    }

    /// Step 3 of a checkpoint (module docs): `job` was written (`CheckpointJob::write`
    /// returned Ok, so it is durable and the files it supersedes are gone): the ledger
    /// records it and keeps its replica for the next one. No I/O.
    pub fn finish_checkpoint(&mut self, job: CheckpointJob) -> Result<(), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        if self.checkpoint_in_flight != Some(job.sequence) {
            return Err(LedgerError::CheckpointProtocol(
                "finish_checkpoint for a checkpoint that is not in flight",
            ));
        }
        if !job.written {
            return Err(LedgerError::CheckpointProtocol(
                "finish_checkpoint before the checkpoint was written",
            ));
        }
        self.checkpoint_in_flight = None;
        self.checkpoint_sequence = job.sequence;
        self.checkpoint_events = job.events_logged;
        self.replica = job.replica;
        Ok(())
    }

    /// Writes a checkpoint of the current state now, on this thread, and removes the
    /// segments and checkpoints it supersedes (all three steps in one call). For tests,
    /// tools and a clean shutdown; the server uses the three steps. Fails with
    /// `CheckpointProtocol` if a checkpoint is in flight.
    pub fn checkpoint(&mut self) -> Result<(), LedgerError> {
        let mut job = match self.begin_checkpoint()? {
            Some(job) => job,
            None => {
                return Err(LedgerError::CheckpointProtocol(
                    "checkpoint while another is in flight",
                ))
            }
        };
        if let Err(error) = job.write(&mut self.storage) {
            self.poisoned = true;
            return Err(error);
        }
        self.finish_checkpoint(job)
    }

    /// A clean stop: makes the WAL durable and leaves the `clean-stop` marker (where the WAL
    /// ends: newest segment, its length, last batch and its checksum), so the next `open`
    /// knows no write was in flight and refuses *any* damage instead of cutting a tail.
    /// Call it last, with no checkpoint in flight (finish or abandon it first); gives the
    /// storage back.
    pub fn close(mut self) -> Result<S, LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned);
        }
        if self.checkpoint_in_flight.is_some() {
            return Err(LedgerError::CheckpointProtocol(
                "close with a checkpoint in flight",
            ));
        }
        if self.sync_in_flight.is_some() {
            return Err(LedgerError::SyncProtocol("close with a sync in flight"));
        }
        let sequence = self.sequence;
        self.sync_in_line(sequence)?;
        let (segment_first_sequence, segment_bytes) = match &self.segment {
            Some((name, size)) => {
                self.storage.sync(name)?;
                (wal::parse_segment_name(name).unwrap_or(0), *size)
            }
            None => (0, 0),
        };
        let marker = wal::CleanStop {
            last_checksum: self.last_checksum,
            sequence: self.sequence,
            segment_first_sequence,
            segment_bytes,
        };
        let storage = &mut self.storage;
        storage.remove(wal::CLEAN_STOP_TEMP_NAME)?;
        storage.append(wal::CLEAN_STOP_TEMP_NAME, &marker.encode())?;
        storage.sync(wal::CLEAN_STOP_TEMP_NAME)?;
        storage.rename(wal::CLEAN_STOP_TEMP_NAME, wal::CLEAN_STOP_NAME)?;
        storage.sync_dir()?;
        log::info!(
            "ledger stopped cleanly at batch {} ({})",
            self.sequence,
            storage.describe(wal::CLEAN_STOP_NAME)
        );
        Ok(self.storage)
    }

    pub fn state(&self) -> &StateMachine {
        &self.state
    }

    /// The sequence number of the last batch logged.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// What recovery found when the ledger was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn config(&self) -> &LedgerConfig {
        &self.config
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, for fault injection in tests.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back (tests: crash it and recover).
    pub fn into_storage(self) -> S {
        self.storage
    }
}
