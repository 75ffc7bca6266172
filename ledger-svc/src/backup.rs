//! Online backup and restore of a ledger's data directory.
//!
//! A backup is a consistent copy of the ledger at one batch, its *sequence*: the newest
//! checkpoint, every WAL segment since it cut at the last whole record, and every other file
//! of the directory (the superblock and whatever else the directory holds that is not a
//! checkpoint, a segment or a temporary file), plus a manifest written last. It is taken
//! from the files alone, while the appliance serves, without asking the running process
//! anything, and so without pausing it:
//!
//! - checkpoints and closed segments are never modified, only removed (by the checkpoint
//!   writer, once a newer checkpoint is durable). A file removed between the listing and its
//!   read shows as `NotFound`: the backup starts over from a fresh listing (at most
//!   `ATTEMPTS_MAX` times; a checkpoint is rare next to the time a copy takes);
//! - the active segment only grows: a record being appended shows as a torn tail and is
//!   left out, so the copy ends at the last whole record. That record may be the batch
//!   being committed at that instant (written, its fsync not yet returned): a state the
//!   ledger computed and, unless the host lost power at that instant, also kept;
//! - before the manifest is written, the copy is opened as a ledger (the same recovery as a
//!   start: checksums, consecutive sequences, replay) and must reach the sequence with no
//!   torn tail; its state hash goes into the manifest.
//!
//! A restore copies the files the manifest lists into an empty directory, checking each
//! size and CRC32C, then opens the ledger there and requires the manifest's sequence and
//! state hash.
//!
//! Manifest (`backup-manifest`, text, one field per line, written as `backup-manifest.tmp`,
//! synced and renamed, so a backup without one is incomplete):
//!
//! ```text
//! pantera-backup 1
//! sequence <last batch in the backup>
//! checkpoint <sequence of the checkpoint included, 0 for none>
//! state_hash <16 hex digits>
//! file <name> <size> <crc32c, 8 hex digits>     (one line per file)
//! end <crc32c of every line above, newlines included, 8 hex digits>
//! ```
//!
//! Bound: each file is read whole into memory, one at a time (a segment is at most
//! `segment_bytes_max` plus one record; the checkpoint is the size of the state).

use crate::checkpoint::{parse_checkpoint_name, CHECKPOINT_TEMP_NAME, WRITE_CHUNK_BYTES};
use crate::ledger::{Ledger, LedgerConfig, LedgerError};
use crate::storage::{Storage, StorageError};
use crate::wal::{self, ReadOutcome, SegmentReader};

/// The manifest's name in a backup directory.
pub const MANIFEST_NAME: &str = "backup-manifest";
const MANIFEST_TEMP_NAME: &str = "backup-manifest.tmp";
const MANIFEST_MAGIC: &str = "pantera-backup 1";
/// How many times a backup starts over when the checkpoint writer removed a file it was
/// about to copy.
pub const ATTEMPTS_MAX: u32 = 8;
/// The most files a manifest may list (a data directory holds a checkpoint, its segments
/// and a few other files; a manifest listing more is not one of ours).
pub const MANIFEST_FILES_MAX: usize = 100_000;

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the copy does not open as a ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("the target directory {0} is not empty: refusing to overwrite anything")]
    TargetNotEmpty(String),
    #[error("the source holds no ledger (no checkpoint and no WAL segment)")]
    SourceEmpty,
    #[error("files kept disappearing under the copy ({ATTEMPTS_MAX} attempts): is a checkpoint being written every few milliseconds?")]
    Unstable,
    #[error("WAL damaged in {file} at byte offset {offset}: {reason}")]
    Corrupt {
        file: String,
        offset: u64,
        reason: String,
    },
    #[error("backup manifest {file}: {reason}")]
    Manifest { file: String, reason: String },
    #[error("backup file {file}: {reason}")]
    File { file: String, reason: String },
    #[error("the copy does not verify: {0}")]
    Verify(String),
}

/// One file of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    pub name: String,
    pub size: u64,
    pub crc32c: u32,
}

/// What a backup holds (see the module documentation for its text form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The last batch in the backup: a restore recovers the state after it.
    pub sequence: u64,
    /// The checkpoint included (0: none, the WAL from batch 1).
    pub checkpoint_sequence: u64,
    /// `StateMachine::state_hash` after `sequence`.
    pub state_hash: u64,
    pub files: Vec<ManifestFile>,
}

impl Manifest {
    /// The manifest's text form.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{MANIFEST_MAGIC}\nsequence {}\ncheckpoint {}\nstate_hash {:016x}\n",
            self.sequence, self.checkpoint_sequence, self.state_hash
        );
        for file in &self.files {
            text.push_str(&format!(
                "file {} {} {:08x}\n",
                file.name, file.size, file.crc32c
            ));
        }
        let crc = crc32c::crc32c(text.as_bytes());
        text.push_str(&format!("end {crc:08x}\n"));
        text
    }

    /// Parses a manifest's text form; every malformed input is an error naming the line.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
        let end_at = text
            .rfind("end ")
            .filter(|&at| at == 0 || text.as_bytes()[at - 1] == b'\n')
            .ok_or("no end line: the manifest is incomplete")?;
        let end_line = text[end_at..]
            .strip_suffix('\n')
            .ok_or("end line unterminated")?;
        let crc = parse_hex32(&end_line[4..]).ok_or("end line: bad checksum")?;
        if crc32c::crc32c(&text.as_bytes()[..end_at]) != crc {
            return Err("checksum mismatch: the manifest is damaged".to_string());
        }
        let mut lines = text[..end_at].lines().enumerate();
        let mut next = |field: &str| -> Result<(usize, String), String> {
            let (number, line) = lines.next().ok_or(format!("missing line `{field}`"))?;
            let value = line
                .strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(' '))
                .ok_or(format!("line {}: expected `{field} ...`", number + 1))?;
            Ok((number + 1, value.to_string()))
        };
        let (_, magic) = next("pantera-backup")?;
        if magic != "1" {
            return Err(format!("unknown backup format version {magic:?}"));
        }
        let number = |(line, value): (usize, String)| {
            value
                .parse::<u64>()
                .map_err(|_| format!("line {line}: not a number: {value:?}"))
        };
        let sequence = number(next("sequence")?)?;
        let checkpoint_sequence = number(next("checkpoint")?)?;
        let (line, hash) = next("state_hash")?;
        let state_hash = u64::from_str_radix(&hash, 16)
            .ok()
            .filter(|_| hash.len() == 16)
            .ok_or(format!("line {line}: bad state hash {hash:?}"))?;
        let mut files = Vec::new();
        for (index, line) in lines {
            let line_number = index + 1;
            let fields: Vec<&str> = line.split(' ').collect();
            let [kind, name, size, crc] = fields[..] else {
                return Err(format!(
                    "line {line_number}: expected `file <name> <size> <crc32c>`"
                ));
            };
            if kind != "file" || !plain_name(name) || name == MANIFEST_NAME {
                return Err(format!("line {line_number}: bad file line {line:?}"));
            }
            let size = size
                .parse::<u64>()
                .map_err(|_| format!("line {line_number}: bad size {size:?}"))?;
            let crc32c =
                parse_hex32(crc).ok_or(format!("line {line_number}: bad checksum {crc:?}"))?;
            if files.len() == MANIFEST_FILES_MAX {
                return Err(format!("more than {MANIFEST_FILES_MAX} files"));
            }
            if files.iter().any(|f: &ManifestFile| f.name == name) {
                return Err(format!("line {line_number}: {name} listed twice"));
            }
            files.push(ManifestFile {
                name: name.to_string(),
                size,
                crc32c,
            });
        }
        Ok(Manifest {
            sequence,
            checkpoint_sequence,
            state_hash,
            files,
        })
    }
}

fn parse_hex32(text: &str) -> Option<u32> {
    if text.len() != 8 {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// What `take` copies from a listing: the newest checkpoint, the segments that hold batches
/// after it, and every other file but temporaries; segments whose successor starts at or
/// before the checkpoint's next batch hold nothing the backup needs.
fn plan(names: &[String]) -> (u64, Vec<String>) {
    let checkpoint = names
        .iter()
        .filter_map(|n| parse_checkpoint_name(n).map(|s| (s, n)))
        .max();
    let base = checkpoint.map_or(0, |(s, _)| s);
    let mut segments: Vec<(u64, &String)> = names
        .iter()
        .filter_map(|n| wal::parse_segment_name(n).map(|s| (s, n)))
        .collect();
    segments.sort();
    let mut files = Vec::new();
    if let Some((_, name)) = checkpoint {
        files.push(name.clone());
    }
    for (position, (_, name)) in segments.iter().enumerate() {
        let covered = segments
            .get(position + 1)
            .is_some_and(|&(next, _)| next <= base + 1);
        if !covered {
            files.push((*name).clone());
        }
    }
    for name in names {
        let ours = parse_checkpoint_name(name).is_some()
            || wal::parse_segment_name(name).is_some()
            || name == CHECKPOINT_TEMP_NAME
            || name == MANIFEST_NAME
            || name.ends_with(".tmp");
        if !ours {
            files.push(name.clone());
        }
    }
    (base, files)
}

/// The length of a segment's prefix of whole records (a record being appended is left out).
fn whole_records(name: &str, bytes: &[u8]) -> Result<usize, BackupError> {
    let mut reader = SegmentReader::new(bytes);
    loop {
        match reader.next_record() {
            ReadOutcome::Record { .. } => {}
            ReadOutcome::End => return Ok(bytes.len()),
            // The active segment may end in the record being appended: the backup stops
            // before it. Any other damage is recovery's to refuse, and the backup's too.
            ReadOutcome::Damaged(damage) => match wal::classify(&damage, true, false) {
                wal::Verdict::TornTail => return Ok(damage.offset as usize),
                wal::Verdict::Corrupt(why) => {
                    return Err(BackupError::Corrupt {
                        file: name.to_string(),
                        offset: damage.offset,
                        reason: format!("{}: {why}", damage.kind.describe()),
                    })
                }
            },
        }
    }
}

/// One consistent set of files read from a data directory: the checkpoint's sequence (0 for
/// none) and each file's name and bytes.
type CopiedFiles = (u64, Vec<(String, Vec<u8>)>);

/// Copies one consistent set of files, or `None` if one vanished under the copy.
fn copy_once<S: Storage>(source: &mut S) -> Result<Option<CopiedFiles>, BackupError> {
    let names = source.list()?;
    let (base, plan) = plan(&names);
    if !plan
        .iter()
        .any(|n| parse_checkpoint_name(n).is_some() || wal::parse_segment_name(n).is_some())
    {
        return Err(BackupError::SourceEmpty);
    }
    let mut copied = Vec::with_capacity(plan.len());
    for name in plan {
        let mut bytes = match source.read(&name) {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound(_)) => {
                if parse_checkpoint_name(&name).is_some()
                    || wal::parse_segment_name(&name).is_some()
                {
                    // The checkpoint writer removed it: a newer checkpoint exists.
                    return Ok(None);
                }
                continue; // Some other file went away: it is not the ledger's.
            }
            Err(error) => return Err(error.into()),
        };
        if wal::parse_segment_name(&name).is_some() {
            let len = whole_records(&source.describe(&name), &bytes)?;
            bytes.truncate(len);
        }
        copied.push((name, bytes));
    }
    Ok(Some((base, copied)))
}

/// Takes a backup of the ledger in `source` (a running appliance's data directory, or a
/// stopped one) into `target`, which must be empty. See the module documentation.
pub fn take<S: Storage, T: Storage>(
    source: &mut S,
    target: &mut T,
) -> Result<Manifest, BackupError> {
    if !target.list()?.is_empty() {
        return Err(BackupError::TargetNotEmpty(target.describe("")));
    }
    let mut attempt = 0;
    let (checkpoint_sequence, copied) = loop {
        if let Some(copy) = copy_once(source)? {
            break copy;
        }
        attempt += 1;
        if attempt == ATTEMPTS_MAX {
            return Err(BackupError::Unstable);
        }
    };
    let mut files = Vec::with_capacity(copied.len());
    for (name, bytes) in &copied {
        write_synced(target, name, bytes)?;
        files.push(ManifestFile {
            name: name.clone(),
            size: bytes.len() as u64,
            crc32c: crc32c::crc32c(bytes),
        });
    }
    drop(copied);
    target.sync_dir()?;
    let (sequence, state_hash) = open_and_check(target, checkpoint_sequence)?;
    let manifest = Manifest {
        sequence,
        checkpoint_sequence,
        state_hash,
        files,
    };
    target.append(MANIFEST_TEMP_NAME, manifest.encode().as_bytes())?;
    target.sync(MANIFEST_TEMP_NAME)?;
    target.rename(MANIFEST_TEMP_NAME, MANIFEST_NAME)?;
    target.sync_dir()?;
    Ok(manifest)
}

/// Writes `bytes` into `name`, synced every `checkpoint::WRITE_CHUNK_BYTES`: a backup on the
/// data directory's disk must not pile up dirty pages that the ledger's next WAL fsync would
/// wait for (the reason the checkpoint writer syncs in chunks, docs/ledger.md).
fn write_synced<T: Storage>(target: &mut T, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    for chunk in bytes.chunks(WRITE_CHUNK_BYTES) {
        target.append(name, chunk)?;
        target.sync(name)?;
    }
    if bytes.is_empty() {
        target.append(name, &[])?;
        target.sync(name)?;
    }
    Ok(())
}

/// Opens the ledger in `storage` (a second handle) as a start would, and requires a clean
/// recovery from the checkpoint `checkpoint_sequence`: (last sequence, state hash).
fn open_and_check<T: Storage>(
    storage: &T,
    checkpoint_sequence: u64,
) -> Result<(u64, u64), BackupError> {
    let config = LedgerConfig {
        checkpoint_every_batches: 0,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::open(storage.reopen()?, config)?;
    let report = ledger.recovery();
    if let Some((file, offset, bytes)) = &report.truncated {
        return Err(BackupError::Verify(format!(
            "recovery cut {bytes} bytes at offset {offset} of {file}"
        )));
    }
    if report.checkpoint_sequence != checkpoint_sequence {
        return Err(BackupError::Verify(format!(
            "recovery loaded checkpoint {}, the copy holds {checkpoint_sequence}",
            report.checkpoint_sequence
        )));
    }
    Ok((ledger.sequence(), ledger.state().state_hash()))
}

/// Reads and checks a backup's manifest.
pub fn read_manifest<B: Storage>(backup: &mut B) -> Result<Manifest, BackupError> {
    let bytes = match backup.read(MANIFEST_NAME) {
        Ok(bytes) => bytes,
        Err(StorageError::NotFound(_)) => {
            return Err(BackupError::Manifest {
                file: backup.describe(MANIFEST_NAME),
                reason: "missing: not a backup, or an incomplete one".to_string(),
            })
        }
        Err(error) => return Err(error.into()),
    };
    Manifest::decode(&bytes).map_err(|reason| BackupError::Manifest {
        file: backup.describe(MANIFEST_NAME),
        reason,
    })
}

/// Restores the backup in `backup` into `target`, which must be empty: copies every file the
/// manifest lists (checking its size and CRC32C), syncs, then opens the ledger there and
/// requires the manifest's sequence and state hash. Returns the manifest.
pub fn restore<B: Storage, T: Storage>(
    backup: &mut B,
    target: &mut T,
) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(backup)?;
    if !target.list()?.is_empty() {
        return Err(BackupError::TargetNotEmpty(target.describe("")));
    }
    for file in &manifest.files {
        let bytes = backup.read(&file.name).map_err(|error| BackupError::File {
            file: backup.describe(&file.name),
            reason: error.to_string(),
        })?;
        if bytes.len() as u64 != file.size {
            return Err(BackupError::File {
                file: backup.describe(&file.name),
                reason: format!("{} bytes, the manifest says {}", bytes.len(), file.size),
            });
        }
        if crc32c::crc32c(&bytes) != file.crc32c {
            return Err(BackupError::File {
                file: backup.describe(&file.name),
                reason: "checksum mismatch".to_string(),
            });
        }
        write_synced(target, &file.name, &bytes)?;
    }
    target.sync_dir()?;
    let (sequence, state_hash) = open_and_check(target, manifest.checkpoint_sequence)?;
    if (sequence, state_hash) != (manifest.sequence, manifest.state_hash) {
        return Err(BackupError::Verify(format!(
            "restored ledger is at batch {sequence} with state hash {state_hash:016x}, the manifest says batch {} and {:016x}",
            manifest.sequence, manifest.state_hash
        )));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint;

    fn sample() -> Manifest {
        Manifest {
            sequence: 42,
            checkpoint_sequence: 40,
            state_hash: 0x0123_4567_89ab_cdef,
            files: vec![
                ManifestFile {
                    name: checkpoint::checkpoint_name(40),
                    size: 1000,
                    crc32c: 0xdead_beef,
                },
                ManifestFile {
                    name: wal::segment_name(41),
                    size: 608,
                    crc32c: 7,
                },
            ],
        }
    }

    /// Golden text: the manifest is a contract with every backup already taken.
    #[test]
    fn manifest_golden_text_and_round_trip() {
        let text = sample().encode();
        let expected_head =
            "pantera-backup 1\nsequence 42\ncheckpoint 40\nstate_hash 0123456789abcdef\n\
            file checkpoint-00000000000000000040.snap 1000 deadbeef\n\
            file wal-00000000000000000041.log 608 00000007\nend ";
        assert!(text.starts_with(expected_head), "{text}");
        let crc = crc32c::crc32c(&text.as_bytes()[..expected_head.len() - 4]);
        assert!(text.ends_with(&format!("end {crc:08x}\n")), "{text}");
        assert_eq!(Manifest::decode(text.as_bytes()), Ok(sample()));
    }

    #[test]
    fn damaged_or_malformed_manifests_are_refused_with_a_reason() {
        let text = sample().encode();
        // Every single-byte flip and every cut is refused (never a panic).
        for at in 0..text.len() {
            let mut damaged = text.clone().into_bytes();
            damaged[at] ^= 0x01;
            assert!(Manifest::decode(&damaged).is_err(), "flip at {at}");
            assert!(
                Manifest::decode(&text.as_bytes()[..at]).is_err(),
                "cut at {at}"
            );
        }
        // Well-checksummed but malformed bodies.
        let body_cases = [
            "pantera-backup 2\nsequence 1\ncheckpoint 0\nstate_hash 0000000000000000\n",
            "pantera-backup 1\nsequence x\ncheckpoint 0\nstate_hash 0000000000000000\n",
            "pantera-backup 1\nsequence 1\ncheckpoint 0\nstate_hash 00\n",
            "pantera-backup 1\nsequence 1\ncheckpoint 0\nstate_hash 0000000000000000\nfile ../x 1 00000000\n",
            "pantera-backup 1\nsequence 1\ncheckpoint 0\nstate_hash 0000000000000000\nfile a 1 00000000\nfile a 1 00000000\n",
            "pantera-backup 1\nsequence 1\ncheckpoint 0\nstate_hash 0000000000000000\nfile a 1\n",
            "pantera-backup 1\nsequence 1\n",
        ];
        for body in body_cases {
            let text = format!("{body}end {:08x}\n", crc32c::crc32c(body.as_bytes()));
            let error = Manifest::decode(text.as_bytes()).unwrap_err();
            assert!(!error.is_empty(), "{body}");
        }
    }

    #[test]
    fn the_plan_takes_the_newest_checkpoint_its_segments_and_other_files() {
        let names: Vec<String> = [
            checkpoint::checkpoint_name(5),
            checkpoint::checkpoint_name(9),
            "checkpoint.tmp".to_string(),
            MANIFEST_NAME.to_string(),
            "superblock".to_string(),
            wal::segment_name(1),
            wal::segment_name(6),
            wal::segment_name(9),
            wal::segment_name(12),
        ]
        .into();
        let (base, files) = plan(&names);
        assert_eq!(base, 9);
        // wal-1 and wal-6 end before batch 10 (their successors start at or before it);
        // wal-9 may hold batch 10 onwards.
        assert_eq!(
            files,
            vec![
                checkpoint::checkpoint_name(9),
                wal::segment_name(9),
                wal::segment_name(12),
                "superblock".to_string()
            ]
        );
    }
}
