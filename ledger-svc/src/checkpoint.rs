//! Checkpoints: the whole state after batch `sequence`, so that recovery replays only the WAL
//! written since, and older segments can be deleted.
//!
//! ```text
//! magic "PCKP" | version u32 | sequence u64 | state (StateMachine::encode) |
//! trailer: state_size u64 | crc32c u32 of everything before it | magic "PEND"
//! ```
//! The checksum sits in a trailer, computed by the writer: the ledger thread only encodes the
//! state into one reused buffer (`encode`), and the checksum and the I/O (`write_encoded`) run
//! off the commit path. Written as `checkpoint.tmp`, synced, renamed to
//! `checkpoint-<seq>.snap`, then the directory is synced: a crash leaves either the old
//! checkpoint or the new one, whole.

use crate::codec::{Reader, Writer};
use crate::state_machine::{IdHashKey, StateMachine};
use crate::storage::{Storage, StorageError};

pub const CHECKPOINT_MAGIC: [u8; 4] = *b"PCKP";
const TRAILER_MAGIC: [u8; 4] = *b"PEND";
pub const CHECKPOINT_VERSION: u32 = 1;
const HEADER_SIZE: usize = 16;
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

/// Encodes the header and the state after batch `sequence` into `out` (cleared first). This
/// is the part of a checkpoint that needs the state, so it runs on the ledger thread at a
/// batch boundary; `write_encoded` adds the trailer and does the I/O anywhere else. `out`
/// is meant to be reused from one checkpoint to the next: its capacity stays warm, so a
/// checkpoint costs no allocation and no page faults once the state stops growing fast.
pub fn encode(state: &StateMachine, sequence: u64, out: &mut Vec<u8>) {
    out.clear();
    // A lower bound of the encoded size (accounts without history, transfers), so the
    // first checkpoint grows the buffer at most a few times.
    let estimate = HEADER_SIZE
        + 32
        + state.accounts_count() * ACCOUNT_ENCODED_MIN
        + state.transfers_count() * TRANSFER_ENCODED
        + TRAILER_SIZE;
    out.reserve(estimate);
    out.extend_from_slice(&CHECKPOINT_MAGIC);
    out.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    state.encode(&mut |chunk| out.extend_from_slice(chunk));
}

/// The bytes `write_encoded` appends between two syncs of the checkpoint file: the most a
/// WAL sync can find dirty from a checkpoint and have to wait for.
pub const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// An encoded account (128 bytes) and its history count, at least.
const ACCOUNT_ENCODED_MIN: usize = 128 + 8;
/// An encoded transfer (128 bytes) and its pending status.
const TRANSFER_ENCODED: usize = 128 + 1;

/// Writes a checkpoint from `encoded` (`encode`'s output) durably: `checkpoint.tmp` gets the
/// bytes and the trailer, is synced, renamed to `checkpoint-<sequence>.snap`, and the
/// directory is synced. Returns the file's name and size. Touches no other file, so it may
/// run on another thread with its own storage handle while the WAL keeps appending.
pub fn write_encoded<S: Storage>(
    storage: &mut S,
    encoded: &[u8],
    sequence: u64,
) -> Result<(String, u64), StorageError> {
    debug_assert!(encoded.len() >= HEADER_SIZE && encoded[..4] == CHECKPOINT_MAGIC);
    storage.remove(CHECKPOINT_TEMP_NAME)?;
    let state_size = encoded.len().saturating_sub(HEADER_SIZE) as u64;
    let mut trailer = Writer::with_capacity(TRAILER_SIZE);
    trailer.u64(state_size);
    let crc = crc32c::crc32c_append(crc32c::crc32c(encoded), &trailer.bytes);
    trailer.u32(crc);
    trailer.bytes.extend_from_slice(&TRAILER_MAGIC);
    // Synced chunk by chunk so that dirty pages never pile up: on ext4 (data=ordered) the
    // WAL's fdatasync commits the journal, which waits for the data of every file written
    // in that transaction, so one unsynced 130 MB checkpoint stalls a WAL sync for as long
    // as the whole flush takes (measured: 190 ms; see docs/ledger.md). RocksDB's
    // `bytes_per_sync` bounds its background writes for the same reason.
    for chunk in encoded.chunks(WRITE_CHUNK_BYTES) {
        storage.append(CHECKPOINT_TEMP_NAME, chunk)?;
        storage.sync(CHECKPOINT_TEMP_NAME)?;
    }
    storage.append(CHECKPOINT_TEMP_NAME, &trailer.bytes)?;
    storage.sync(CHECKPOINT_TEMP_NAME)?;
    let name = checkpoint_name(sequence);
    storage.rename(CHECKPOINT_TEMP_NAME, &name)?;
    storage.sync_dir()?;
    Ok((name, (encoded.len() + TRAILER_SIZE) as u64))
}

/// Writes the checkpoint of `state` after batch `sequence` durably, in one call (`encode`
/// then `write_encoded`). Returns the file's name and size.
pub fn write<S: Storage>(
    storage: &mut S,
    state: &StateMachine,
    sequence: u64,
) -> Result<(String, u64), StorageError> {
    let mut encoded = Vec::new();
    encode(state, sequence, &mut encoded);
    write_encoded(storage, &encoded, sequence)
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
            assert!(read(&damaged, key).is_err(), "flip at {at} must be detected");
        }
        assert!(read(&bytes[..bytes.len() - 1], key).is_err());
    }
}
