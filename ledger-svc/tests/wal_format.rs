//! Bad bytes from disk never panic: random segments, record bodies and checkpoints (with a
//! valid checksum around random content) are read as torn, corrupt or malformed.

use ledger_svc::wal::{decode_body, encode_record, ReadOutcome, SegmentReader};
use ledger_svc::*;
use proptest::prelude::*;

/// Wraps `state` in a checkpoint file with a correct checksum, so the decoder itself is
/// exercised (see checkpoint.rs for the layout).
fn checkpoint_file(state: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(b"PCKP");
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.extend_from_slice(&9u64.to_le_bytes());
    bytes.extend_from_slice(state);
    bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
    let crc = crc32c_of(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(b"PEND");
    bytes
}

/// CRC32C (Castagnoli), bitwise: an independent implementation for the test.
fn crc32c_of(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_segments_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let mut reader = SegmentReader::new(&bytes);
        for _ in 0..64 {
            match reader.next_record() {
                ReadOutcome::Record { body, .. } => { let _ = decode_body(body); }
                _ => break,
            }
        }
    }

    #[test]
    fn damaged_records_are_never_accepted(flip in 0usize..(40 + 8 + 2 * 128), bit in 0u8..8) {
        let ops = vec![Operation::CreateTransfers(vec![Transfer { id: 1, ..Default::default() }; 2])];
        let mut record = Vec::new();
        encode_record(&mut record, 1, 5, 0, &ops);
        record[flip] ^= 1 << bit;
        let mut reader = SegmentReader::new(&record);
        let accepted = matches!(reader.next_record(), ReadOutcome::Record { .. });
        prop_assert!(!accepted, "a damaged record was accepted");
    }

    #[test]
    fn random_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode_body(&bytes);
    }

    #[test]
    fn random_checkpoint_states_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = checkpoint::read(&checkpoint_file(&bytes), IdHashKey::new([1, 2, 3, 4]));
    }
}

#[test]
fn the_test_checkpoint_wrapper_matches_the_real_format() {
    // An empty state: clock 0, no accounts, no transfers, no failed ids.
    let state = [0u8; 32];
    let key = IdHashKey::new([1, 2, 3, 4]);
    let (sequence, sm) = checkpoint::read(&checkpoint_file(&state), key).expect("valid");
    assert_eq!(sequence, 9);
    assert_eq!(sm.state_hash(), StateMachine::new().state_hash());
}
