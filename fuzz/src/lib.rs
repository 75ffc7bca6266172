//! What the fuzz targets and the seed writer share: the input formats of the binary targets.
//!
//! The fuzzer mutates bytes; these formats let it reach deep states cheaply. A frame record
//! can ask the harness to fix its checksums or to acknowledge the stack's last SYN-ACK, since
//! a blind mutator would almost never find a valid TCP checksum or a SYN cookie, and the
//! checks behind them would hide the code under test.

use std::collections::BTreeMap;


// The `tcp_frames` format lives with the stack (`tcp::frames`), which replays it.
pub use tcp::frames::{
    encode_frame_records, fix_checksums, flags, frame_records, set_ack, FrameRecord, Segment,
    CLIENT_IP, CLIENT_MAC, PORT, SERVER_IP, SERVER_MAC,
};

/// Files of a data directory in one fuzz input (`wal_recovery`): records of
/// `[name length: u8][name][length: u32 LE][bytes]`; a short last record takes what is left,
/// a later file of the same name replaces an earlier one.
pub fn decode_files(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    while let Some((&name_len, rest)) = data.split_first() {
        let name_len = usize::from(name_len).min(rest.len());
        let name = String::from_utf8_lossy(&rest[..name_len]).into_owned();
        let rest = &rest[name_len..];
        if rest.len() < 4 {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let rest = &rest[4..];
        let len = len.min(rest.len());
        files.insert(name, rest[..len].to_vec());
        data = &rest[len..];
    }
    files
}

/// The inverse of [`decode_files`] (for the seed writer).
pub fn encode_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}
