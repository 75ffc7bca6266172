//! Checkpoints: the whole state after batch `sequence`, so that recovery replays only the WAL
//! written since, and older segments can be deleted.
//!
//! ```text
//! magic "PCKP" | version u32 | sequence u64 | state (StateMachine::encode) |
//! trailer: state_size u64 | crc32c u32 of everything before it | magic "PEND"
//! ```
//! The checksum sits in a trailer, so the writer can compute it while it streams the state
//! out. Written as `checkpoint.tmp`, synced, renamed to `checkpoint-<seq>.snap`, then the
//! directory is synced: a crash leaves either the old checkpoint or the new one, whole.
//!
//! Checkpoints are written by the checkpoint writer from its own copy of the state, rebuilt
//! from the WAL (see `ledger.rs`), never from the ledger thread's state: the ledger thread
//! does no work that grows with the state.

use crate::codec::{Reader, Writer};
use crate::state_machine::{IdHashKey, StateMachine};
use crate::storage::{Storage, StorageError};

pub const CHECKPOINT_MAGIC: [u8; 4] = *b"PCKP";
const TRAILER_MAGIC: [u8; 4] = *b"PEND";
pub const CHECKPOINT_VERSION: u32 = 1;
const HEADER_SIZE: usize = 16;
/// Where the encoded state starts in a checkpoint file (after its header).
pub const STATE_OFFSET: u64 = HEADER_SIZE as u64;
pub(crate) const TRAILER_SIZE: usize = 16;
pub const CHECKPOINT_TEMP_NAME: &str = "checkpoint.tmp";

pub fn checkpoint_name(sequence: u64) -> String {
    format!("checkpoint-{sequence:020}.snap")
}

pub fn parse_checkpoint_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("checkpoint-")?.strip_suffix(".snap")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The bytes `write_state` appends between two syncs of the checkpoint file: the most a
/// WAL sync can find dirty from a checkpoint and have to wait for.
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// Writes the checkpoint of `state` after batch `sequence` durably: `checkpoint.tmp` gets
/// the header, the state (`StateMachine::encode`, streamed) and the trailer, synced every
/// `WRITE_CHUNK_BYTES`, then is renamed to `checkpoint-<sequence>.snap` and the directory is
/// synced. Returns the file's name and size. Touches no other file, so it may run on another
/// thread with its own storage handle while the WAL keeps appending.
///
/// The state is encoded straight into one `WRITE_CHUNK_BYTES` buffer and checksummed as it
/// goes: no copy of the whole encoded state is ever held (at 10M transfers that would be
/// 1.3 GB next to the state itself).
pub fn write<S: Storage>(
    storage: &mut S,
    state: &StateMachine,
    sequence: u64,
) -> Result<(String, u64), StorageError> {
    storage.remove(CHECKPOINT_TEMP_NAME)?;
    let mut out = ChunkedWriter {
        storage,
        chunk: Vec::with_capacity(WRITE_CHUNK_BYTES),
        crc: 0,
        size: 0,
        error: None,
    };
    let mut header = Writer::with_capacity(HEADER_SIZE);
    header.bytes.extend_from_slice(&CHECKPOINT_MAGIC);
    header.u32(CHECKPOINT_VERSION);
    header.u64(sequence);
    out.push(&header.bytes);
    state.encode(&mut |bytes| out.push(bytes));
    let state_size = out.size - HEADER_SIZE as u64;
    let mut trailer = Writer::with_capacity(TRAILER_SIZE);
    trailer.u64(state_size);
    out.push(&trailer.bytes);
    let crc = out.crc;
    let mut trailer = Writer::with_capacity(8);
    trailer.u32(crc);
    trailer.bytes.extend_from_slice(&TRAILER_MAGIC);
    out.push(&trailer.bytes);
    out.flush();
    let size = out.size;
    if let Some(error) = out.error {
        return Err(error);
    }
    debug_assert_eq!(size, HEADER_SIZE as u64 + state_size + TRAILER_SIZE as u64);
    let name = checkpoint_name(sequence);
    storage.rename(CHECKPOINT_TEMP_NAME, &name)?;
    storage.sync_dir()?;
    Ok((name, size))
}

/// Appends to `checkpoint.tmp` one chunk at a time, each synced. Synced chunk by chunk so
/// that dirty pages never pile up: on ext4 (data=ordered) the WAL's fdatasync commits the
/// journal, which waits for the data of every file written in that transaction, so one
/// unsynced 130 MB checkpoint stalls a WAL sync for as long as the whole flush takes
/// (measured: 190 ms; see docs/ledger.md). RocksDB's `bytes_per_sync` bounds its background
/// writes for the same reason. The encoder's sink cannot fail, so the first error is kept
/// and everything after it skipped.
struct ChunkedWriter<'a, S: Storage> {
    storage: &'a mut S,
    chunk: Vec<u8>,
    /// CRC32C of every byte pushed so far.
    crc: u32,
    size: u64,
    error: Option<StorageError>,
}

impl<S: Storage> ChunkedWriter<'_, S> {
    fn push(&mut self, mut bytes: &[u8]) {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            let n = (WRITE_CHUNK_BYTES - self.chunk.len()).min(bytes.len());
            self.chunk.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.chunk.len() == WRITE_CHUNK_BYTES {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.error.is_none() && !self.chunk.is_empty() {
            let result = self
                .storage
                .append(CHECKPOINT_TEMP_NAME, &self.chunk)
                .and_then(|()| self.storage.sync(CHECKPOINT_TEMP_NAME));
            if let Err(error) = result {
                self.error = Some(error);
            }
        }
        self.chunk.clear();
    }
}

/// Why a checkpoint could not be read, with the byte offset of the problem.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckpointDamage {
    pub offset: u64,
    pub reason: &'static str,
}

/// Verifies and decodes a checkpoint file: (sequence, state), the state's id tables keyed
/// with `key` (the key is never written: any key rebuilds the same state).
pub fn read(bytes: &[u8], key: IdHashKey) -> Result<(u64, StateMachine), CheckpointDamage> {
    let damage = |offset: usize, reason| CheckpointDamage {
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_SIZE + TRAILER_SIZE {
        return Err(damage(0, "checkpoint shorter than its header and trailer"));
    }
    let trailer_at = bytes.len() - TRAILER_SIZE;
    let mut t = Reader::new(&bytes[trailer_at..]);
    let size = t.u64().unwrap_or(u64::MAX);
    let checksum = t.u32().unwrap_or(0);
    if t.take(4) != Some(&TRAILER_MAGIC[..]) {
        return Err(damage(trailer_at, "checkpoint trailer magic missing"));
    }
    if size != (trailer_at - HEADER_SIZE) as u64 {
        return Err(damage(trailer_at, "checkpoint size mismatch"));
    }
    if crc32c::crc32c(&bytes[..trailer_at + 8]) != checksum {
        return Err(damage(trailer_at + 8, "checkpoint checksum mismatch"));
    }
    let mut h = Reader::new(&bytes[..HEADER_SIZE]);
    if h.take(4) != Some(&CHECKPOINT_MAGIC[..]) {
        return Err(damage(0, "checkpoint magic missing"));
    }
    if h.u32() != Some(CHECKPOINT_VERSION) {
        return Err(damage(4, "checkpoint version unknown"));
    }
    let sequence = h.u64().unwrap_or(0);
    let state = StateMachine::decode(&bytes[HEADER_SIZE..trailer_at], key)
        .ok_or_else(|| damage(HEADER_SIZE, "checkpoint state malformed"))?;
    Ok((sequence, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;
    use crate::storage::SimStorage;

    #[test]
    fn write_then_read_round_trips_and_detects_damage() {
        let mut sm = StateMachine::new();
        let accounts: Vec<Account> = (1..=3)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: AccountFlags::HISTORY,
                ..Default::default()
            })
            .collect();
        sm.create_accounts(10, &accounts);
        let transfers = [
            Transfer {
                id: 10,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 5,
                ledger: 1,
                code: 1,
                ..Default::default()
            },
            Transfer {
                id: 11,
                debit_account_id: 2,
                credit_account_id: 3,
                amount: 7,
                ledger: 1,
                code: 1,
                timeout: 60,
                flags: TransferFlags::PENDING,
                ..Default::default()
            },
            Transfer {
                id: 12,
                debit_account_id: 9,
                credit_account_id: 2,
                amount: 5,
                ledger: 1,
                code: 1,
                ..Default::default()
            },
        ];
        sm.create_transfers(20, &transfers);
        let mut storage = SimStorage::new();
        let (name, size) = write(&mut storage, &sm, 5).unwrap();
        assert_eq!(parse_checkpoint_name(&name), Some(5));
        let bytes = storage.read(&name).unwrap();
        assert_eq!(bytes.len() as u64, size);
        // Read back under another key: the key is no part of the state.
        let key = IdHashKey::new([1, 2, 3, 4]);
        let (sequence, restored) = read(&bytes, key).unwrap();
        assert_eq!(sequence, 5);
        assert_eq!(restored.state_hash(), sm.state_hash());
        assert_eq!(restored.poll_at(), sm.poll_at());
        // The orphaned id survived (12 failed with debit_account_not_found).
        let mut restored = restored;
        assert_eq!(
            restored.create_transfers(30, &transfers[2..]),
            vec![CreateTransferResult::IdAlreadyFailed]
        );

        for at in [0, 5, 20, bytes.len() / 2, bytes.len() - 10, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                read(&damaged, key).is_err(),
                "flip at {at} must be detected"
            );
        }
        assert!(read(&bytes[..bytes.len() - 1], key).is_err());
    }
}
