//! Offline inspection and verification of a data directory (`pantera inspect`, `pantera
//! verify`; docs/operations.md).
//!
//! [`verify`] reads a directory's files through [`Storage::list`] and [`Storage::read`] only,
//! so it never changes anything, and it does not stop at the first problem: it checks every
//! checksum (superblock, every checkpoint, each record's header and body, the parent chain,
//! the clean-stop marker), replays the log from the newest valid checkpoint to the state hash,
//! and checks the state's own invariants (Σ debits = Σ credits, posted and pending; every
//! account's balance limits). It returns a typed [`Report`]; the command line only prints it.
//!
//! Looking at one account or transfer needs the state exactly as `serve` would recover it:
//! [`load_dir`] copies the directory's files into a [`SimStorage`] and [`recover_in_memory`]
//! runs `Ledger::open` there, so recovery's cutting path (a torn tail) touches only the copy.

use std::path::Path;

use serde::Serialize;

use crate::checkpoint::{self, parse_checkpoint_name};
use crate::data_dir::{Superblock, FORMAT_VERSION, SUPERBLOCK_NAME};
use crate::ledger::{apply_batch, Ledger, LedgerConfig, LedgerError};
use crate::model::{AccountFlags, Operation};
use crate::state_machine::{IdHashKey, StateMachine};
use crate::storage::{SimStorage, Storage, StorageError};
use crate::wal::{self, ReadOutcome, SegmentReader, Verdict};

/// One thing wrong with the directory. `file` is a name inside it; `offset` the byte offset of
/// the damaged record or structure in that file, when there is one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: String,
    pub offset: Option<u64>,
    /// The record's sequence (batch number), when its header could be read.
    pub sequence: Option<u64>,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(offset) = self.offset {
            write!(f, " byte offset {offset}")?;
        }
        if let Some(sequence) = self.sequence {
            write!(f, " record {sequence}")?;
        }
        write!(f, ": {}", self.what)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SuperblockInfo {
    pub format_version: u32,
    #[serde(serialize_with = "u128_string")]
    pub cluster_id: u128,
    /// 32 hex digits, as `pantera format` prints it.
    pub ledger_id: String,
    pub created_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckpointInfo {
    pub name: String,
    pub bytes: u64,
    /// The batch it holds the state after (from its name).
    pub sequence: u64,
    /// `None` when it verifies; what is wrong otherwise.
    pub damage: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CleanStopInfo {
    pub sequence: u64,
    pub segment: String,
    pub segment_bytes: u64,
    pub last_checksum: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentInfo {
    pub name: String,
    pub bytes: u64,
    /// Whole records whose checksums hold.
    pub records: u64,
    /// Damaged places.
    pub damaged: u64,
    pub first_sequence: Option<u64>,
    pub last_sequence: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OperationInfo {
    /// `create_accounts` or `create_transfers`.
    pub kind: &'static str,
    pub events: u64,
}

/// One record, or one damaged place, of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordInfo {
    pub segment: String,
    pub offset: u64,
    /// From the header, when the header passed its checksum.
    pub sequence: Option<u64>,
    pub now_ns: Option<u64>,
    pub bytes: Option<u64>,
    pub checksum_header: Option<String>,
    pub parent: Option<String>,
    pub operations: Vec<OperationInfo>,
    /// `ok`, or what is wrong with the record.
    pub status: String,
}

/// Σ over all accounts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    #[serde(serialize_with = "u128_string")]
    pub debits_posted: u128,
    #[serde(serialize_with = "u128_string")]
    pub credits_posted: u128,
    #[serde(serialize_with = "u128_string")]
    pub debits_pending: u128,
    #[serde(serialize_with = "u128_string")]
    pub credits_pending: u128,
}

/// What `verify` found. The directory verifies when `findings` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub superblock: Option<SuperblockInfo>,
    pub checkpoints: Vec<CheckpointInfo>,
    pub clean_stop: Option<CleanStopInfo>,
    pub segments: Vec<SegmentInfo>,
    /// Every record and damaged place, in log order.
    pub records: Vec<RecordInfo>,
    /// The checkpoint the replay started from (0: none, an empty state).
    pub replayed_from: u64,
    pub records_replayed: u64,
    /// The last batch replayed.
    pub last_sequence: u64,
    /// `StateMachine::state_hash` after `last_sequence`, 16 hex digits. When a finding stopped
    /// the replay early it is the hash at the last batch before it.
    pub state_hash: String,
    pub accounts: u64,
    pub transfers: u64,
    pub totals: Totals,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when every check holds.
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// The first finding about a WAL record (in log order), if any.
    pub fn first_bad_record(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|f| wal::parse_segment_name(&f.file).is_some())
    }
}

fn u128_string<S: serde::Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    // TigerBeetle's JSON clients, and this ledger's API, write 128-bit integers as strings.
    serializer.collect_str(value)
}

/// Copies every regular file of `dir` into memory, reading only (subdirectories are skipped).
pub fn load_dir(dir: &Path) -> Result<SimStorage, std::io::Error> {
    let mut storage = SimStorage::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if !entry.file_type()?.is_file() {
            continue;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let bytes = std::fs::read(entry.path())?;
        storage
            .append(&name, &bytes)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(storage)
}

/// Recovers the ledger from `storage` exactly as `serve` would (the same `Ledger::open`); give
/// it a copy ([`load_dir`]), since recovery may cut a torn tail and removes the clean-stop
/// marker.
pub fn recover_in_memory(storage: SimStorage) -> Result<Ledger<SimStorage>, LedgerError> {
    Ledger::open(
        storage,
        LedgerConfig {
            checkpoint_every_batches: 0,
            ..LedgerConfig::default()
        },
    )
}

/// Verifies everything in `storage` (see the module documentation). `Err` only when a file
/// cannot be read at all.
pub fn verify<S: Storage>(storage: &mut S) -> Result<Report, StorageError> {
    let names = storage.list()?;
    let mut findings = Vec::new();

    // The superblock.
    let superblock = if names.iter().any(|n| n == SUPERBLOCK_NAME) {
        match Superblock::parse(&storage.read(SUPERBLOCK_NAME)?) {
            Ok(sb) => {
                if sb.format_version != FORMAT_VERSION {
                    findings.push(Finding {
                        file: SUPERBLOCK_NAME.to_string(),
                        offset: Some(8),
                        sequence: None,
                        what: format!(
                            "format version {} (this build reads {FORMAT_VERSION})",
                            sb.format_version
                        ),
                    });
                }
                Some(SuperblockInfo {
                    format_version: sb.format_version,
                    cluster_id: sb.cluster_id,
                    ledger_id: format!("{:032x}", sb.ledger_id),
                    created_ns: sb.created_ns,
                })
            }
            Err(why) => {
                findings.push(Finding {
                    file: SUPERBLOCK_NAME.to_string(),
                    offset: Some(0),
                    sequence: None,
                    what: format!("the superblock {why}"),
                });
                None
            }
        }
    } else {
        findings.push(Finding {
            file: SUPERBLOCK_NAME.to_string(),
            offset: None,
            sequence: None,
            what: "missing: not a formatted data directory".to_string(),
        });
        None
    };

    // Every checkpoint; the replay starts from the newest that verifies.
    let key = IdHashKey::from_os();
    let mut checkpoint_names: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| parse_checkpoint_name(n).map(|s| (s, n)))
        .collect();
    checkpoint_names.sort();
    let mut checkpoints = Vec::new();
    let mut base: Option<(u64, StateMachine)> = None;
    for (sequence, name) in checkpoint_names.iter().rev() {
        let bytes = storage.read(name)?;
        let damage = match checkpoint::read(&bytes, key) {
            Ok((inner, state)) if inner == *sequence => {
                if base.is_none() {
                    base = Some((inner, state));
                }
                None
            }
            Ok((inner, _)) => Some((
                8,
                format!("holds batch {inner}, but its name says {sequence}"),
            )),
            Err(d) => Some((d.offset, d.reason.to_string())),
        };
        if let Some((offset, what)) = &damage {
            findings.push(Finding {
                file: (*name).clone(),
                offset: Some(*offset),
                sequence: None,
                what: format!("checkpoint: {what}"),
            });
        }
        checkpoints.push(CheckpointInfo {
            name: (*name).clone(),
            bytes: bytes.len() as u64,
            sequence: *sequence,
            damage: damage.map(|(_, what)| what),
        });
    }
    checkpoints.reverse();
    let (replayed_from, mut state) =
        base.unwrap_or_else(|| (0, StateMachine::with_id_hash_key(key)));

    // Every segment, every record, in log order; replay while nothing is wrong.
    let mut segment_names: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| wal::parse_segment_name(n).map(|s| (s, n)))
        .collect();
    segment_names.sort();
    let clean_stop_bytes = if names.iter().any(|n| n == wal::CLEAN_STOP_NAME) {
        Some(storage.read(wal::CLEAN_STOP_NAME)?)
    } else {
        None
    };
    let clean_stop = clean_stop_bytes.as_deref().map(wal::CleanStop::parse);
    let mut segments = Vec::new();
    let mut records = Vec::new();
    let mut replaying = true;
    let mut expected = replayed_from + 1;
    let mut last_sequence = replayed_from;
    let mut records_replayed = 0;
    // The checksum_header of the record before, for the parent chain (None: unknown).
    let mut previous: Option<u32> = None;
    let mut resync = false;
    let mut last_record: Option<(u64, u32)> = None;
    let segments_count = segment_names.len();
    for (position, (named, name)) in segment_names.iter().enumerate() {
        let bytes = storage.read(name)?;
        let mut info = SegmentInfo {
            name: (*name).clone(),
            bytes: bytes.len() as u64,
            records: 0,
            damaged: 0,
            first_sequence: None,
            last_sequence: None,
        };
        let mut reader = SegmentReader::new(&bytes);
        loop {
            match reader.next_record() {
                ReadOutcome::End => break,
                ReadOutcome::Damaged(damage) => {
                    info.damaged += 1;
                    replaying = false;
                    previous = None;
                    // The sequence goes on from the next whole record, unreported: after
                    // damage a gap tells nothing new.
                    resync = true;
                    let newest = position + 1 == segments_count;
                    let clean = matches!(clean_stop, Some(Ok(_)));
                    let start_up = match wal::classify(&damage, newest, clean) {
                        Verdict::TornTail => {
                            "start-up would cut it as a torn tail, keeping the bytes aside"
                                .to_string()
                        }
                        Verdict::Corrupt(why) => format!("start-up refuses: {why}"),
                    };
                    let what = format!("{}; {start_up}", damage.kind.describe());
                    findings.push(Finding {
                        file: (*name).clone(),
                        offset: Some(damage.offset),
                        sequence: damage.header.map(|h| h.sequence),
                        what: what.clone(),
                    });
                    records.push(RecordInfo {
                        segment: (*name).clone(),
                        offset: damage.offset,
                        sequence: damage.header.map(|h| h.sequence),
                        now_ns: damage.header.map(|h| h.now_ns),
                        bytes: damage.header.map(|h| h.record_bytes()),
                        checksum_header: damage
                            .header
                            .map(|h| format!("{:08x}", h.checksum_header)),
                        parent: damage.header.map(|h| format!("{:08x}", h.parent)),
                        operations: Vec::new(),
                        status: what,
                    });
                    match damage.valid_header_after {
                        Some(next) => reader.seek(next),
                        None => break,
                    }
                }
                ReadOutcome::Record {
                    offset,
                    header,
                    body,
                } => {
                    info.records += 1;
                    let first = info.first_sequence.is_none();
                    info.first_sequence.get_or_insert(header.sequence);
                    info.last_sequence = Some(header.sequence);
                    last_record = Some((header.sequence, header.checksum_header));
                    let mut problems = Vec::new();
                    if first && header.sequence != *named {
                        problems.push(format!(
                            "the segment's first record is batch {}, but its name says {named} (renamed or copied over another?); start-up refuses it",
                            header.sequence
                        ));
                    }
                    if let Some(p) = previous.filter(|&p| header.parent != 0 && header.parent != p)
                    {
                        problems.push(format!(
                            "parent chain broken: the record names parent {:08x}, but the record before it is {p:08x} (a record from another log?)",
                            header.parent
                        ));
                    }
                    previous = Some(header.checksum_header);
                    if header.sequence > replayed_from {
                        if header.sequence != expected && !std::mem::take(&mut resync) {
                            problems.push(format!(
                                "sequence {} where {expected} was expected",
                                header.sequence
                            ));
                        }
                        expected = header.sequence + 1;
                    }
                    resync = false;
                    let ops = wal::decode_body(body);
                    if ops.is_none() {
                        problems.push(
                            "record body malformed (its checksum holds: a writer bug or a foreign file)"
                                .to_string(),
                        );
                    }
                    let status = if problems.is_empty() {
                        "ok".to_string()
                    } else {
                        problems.join("; ")
                    };
                    if !problems.is_empty() {
                        replaying = false;
                        findings.push(Finding {
                            file: (*name).clone(),
                            offset: Some(offset),
                            sequence: Some(header.sequence),
                            what: status.clone(),
                        });
                    }
                    let ops = ops.unwrap_or_default();
                    if replaying && header.sequence > replayed_from {
                        apply_batch(&mut state, header.now_ns, &ops);
                        records_replayed += 1;
                        last_sequence = header.sequence;
                    }
                    records.push(RecordInfo {
                        segment: (*name).clone(),
                        offset,
                        sequence: Some(header.sequence),
                        now_ns: Some(header.now_ns),
                        bytes: Some(header.record_bytes()),
                        checksum_header: Some(format!("{:08x}", header.checksum_header)),
                        parent: Some(format!("{:08x}", header.parent)),
                        operations: ops
                            .iter()
                            .map(|op| OperationInfo {
                                kind: match op {
                                    Operation::CreateAccounts(_) => "create_accounts",
                                    Operation::CreateTransfers(_) => "create_transfers",
                                },
                                events: op.len() as u64,
                            })
                            .collect(),
                        status,
                    });
                }
            }
        }
        segments.push(info);
    }

    // The clean-stop marker, and whether the log ends where it says.
    let clean_stop = match clean_stop {
        None => None,
        Some(Err(why)) => {
            findings.push(Finding {
                file: wal::CLEAN_STOP_NAME.to_string(),
                offset: Some(0),
                sequence: None,
                what: format!("the clean-stop marker {why}"),
            });
            None
        }
        Some(Ok(marker)) => {
            let found = segments
                .last()
                .map(|s| (wal::parse_segment_name(&s.name).unwrap_or(0), s.bytes))
                .unwrap_or((0, 0));
            let found_sequence = last_record.map_or(replayed_from, |(s, _)| s.max(replayed_from));
            let checksum_ok = marker.last_checksum == 0
                || last_record.is_none_or(|(_, c)| c == marker.last_checksum);
            if found != (marker.segment_first_sequence, marker.segment_bytes)
                || found_sequence != marker.sequence
                || !checksum_ok
            {
                findings.push(Finding {
                    file: wal::CLEAN_STOP_NAME.to_string(),
                    offset: Some(0),
                    sequence: Some(marker.sequence),
                    what: format!(
                        "the clean stop left the WAL at batch {} ({} bytes of {}, last record {:08x}), but it ends at batch {found_sequence} ({} bytes of {})",
                        marker.sequence,
                        marker.segment_bytes,
                        wal::segment_name(marker.segment_first_sequence),
                        marker.last_checksum,
                        found.1,
                        wal::segment_name(found.0),
                    ),
                });
            }
            Some(CleanStopInfo {
                sequence: marker.sequence,
                segment: wal::segment_name(marker.segment_first_sequence),
                segment_bytes: marker.segment_bytes,
                last_checksum: format!("{:08x}", marker.last_checksum),
            })
        }
    };

    // The state's invariants.
    let (totals, mut state_findings) = check_state(&state);
    findings.append(&mut state_findings);

    Ok(Report {
        superblock,
        checkpoints,
        clean_stop,
        segments,
        records,
        replayed_from,
        records_replayed,
        last_sequence,
        state_hash: format!("{:016x}", state.state_hash()),
        accounts: state.accounts_count() as u64,
        transfers: state.transfers_count() as u64,
        totals,
        findings,
    })
}

/// Σ debits = Σ credits (posted, and pending) over all accounts, and every account within the
/// limits its flags set. Findings name the file `state` (the replayed state, not a file).
pub fn check_state(state: &StateMachine) -> (Totals, Vec<Finding>) {
    let mut findings = Vec::new();
    let mut totals = Totals::default();
    let mut overflow = false;
    let finding = |what: String| Finding {
        file: "state".to_string(),
        offset: None,
        sequence: None,
        what,
    };
    for a in state.accounts() {
        let sums = [
            totals.debits_posted.checked_add(a.debits_posted),
            totals.credits_posted.checked_add(a.credits_posted),
            totals.debits_pending.checked_add(a.debits_pending),
            totals.credits_pending.checked_add(a.credits_pending),
        ];
        match sums {
            [Some(dp), Some(cp), Some(dn), Some(cn)] => {
                totals = Totals {
                    debits_posted: dp,
                    credits_posted: cp,
                    debits_pending: dn,
                    credits_pending: cn,
                }
            }
            _ => overflow = true,
        }
        if a.flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && a.debits_pending
                .checked_add(a.debits_posted)
                .is_none_or(|d| d > a.credits_posted)
        {
            findings.push(finding(format!(
                "account {}: debits_pending {} + debits_posted {} exceed credits_posted {} (debits_must_not_exceed_credits)",
                a.id, a.debits_pending, a.debits_posted, a.credits_posted
            )));
        }
        if a.flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && a.credits_pending
                .checked_add(a.credits_posted)
                .is_none_or(|c| c > a.debits_posted)
        {
            findings.push(finding(format!(
                "account {}: credits_pending {} + credits_posted {} exceed debits_posted {} (credits_must_not_exceed_debits)",
                a.id, a.credits_pending, a.credits_posted, a.debits_posted
            )));
        }
    }
    if overflow {
        findings.push(finding(
            "a sum of balances over all accounts overflows 128 bits".to_string(),
        ));
    } else {
        if totals.debits_posted != totals.credits_posted {
            findings.push(finding(format!(
                "Σ debits_posted {} ≠ Σ credits_posted {}",
                totals.debits_posted, totals.credits_posted
            )));
        }
        if totals.debits_pending != totals.credits_pending {
            findings.push(finding(format!(
                "Σ debits_pending {} ≠ Σ credits_pending {}",
                totals.debits_pending, totals.credits_pending
            )));
        }
    }
    (totals, findings)
}
