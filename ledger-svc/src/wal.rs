//! The write-ahead log's record format and the reader that recovers it.
//!
//! The ledger logs each input batch, not the state it produced: replaying the same batches
//! through the deterministic state machine rebuilds the same state. One record per batch:
//!
//! ```text
//! offset size field
//!      0    4 checksum_header  CRC32C of bytes 4..32 (lets the reader trust `body_size`
//!                              before the body is known to be complete)
//!      4    4 checksum         CRC32C of bytes 8..32 followed by the body: header and body
//!      8    4 magic            "PWAL"
//!     12    4 body_size        bytes after the header (a multiple of 8)
//!     16    8 sequence         batch number, 1, 2, 3, ... with no gap across segments
//!     24    8 now_ns           the ledger time the batch was applied at
//!     32      body             operations, each: kind u8 (1 accounts, 2 transfers),
//!                              3 zero bytes, count u32, then count 128-byte events
//! ```
//! All integers little-endian. Records are appended to segment files `wal-<first seq>.log`
//! and synced once per batch (group commit).
//!
//! Recovery reads records in order. A record that runs past the end of the file, or fails its
//! checksum with no valid record after it, is the torn tail of a write that was never
//! acknowledged: it is cut off. A bad record *followed by a valid one* cannot be a torn write
//! (appends are sequential and each is synced before it is acknowledged), so it is
//! corruption of acknowledged data: start-up fails, naming the file and offset.
//! Known limit: a bit flip inside the very last record is indistinguishable from a torn
//! write and is truncated as one (TigerBeetle keeps redundant headers to tell them apart).

use crate::codec::{Reader, Writer, EVENT_SIZE};
use crate::model::{Operation, BATCH_EVENTS_MAX};

pub const RECORD_HEADER_SIZE: usize = 32;
pub const RECORD_MAGIC: [u8; 4] = *b"PWAL";
/// The most operations one record (one `Ledger::submit`) may carry.
pub const OPERATIONS_PER_RECORD_MAX: usize = 64;
const OPERATION_HEADER_SIZE: usize = 8;
/// The largest body a record can have; a header claiming more is corrupt.
pub const RECORD_BODY_BYTES_MAX: usize =
    OPERATIONS_PER_RECORD_MAX * (OPERATION_HEADER_SIZE + BATCH_EVENTS_MAX * EVENT_SIZE);

const KIND_CREATE_ACCOUNTS: u8 = 1;
const KIND_CREATE_TRANSFERS: u8 = 2;

/// The segment file holding records from `first_sequence` on.
pub fn segment_name(first_sequence: u64) -> String {
    format!("wal-{first_sequence:020}.log")
}

/// The first sequence of a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes one record into `out` (cleared first). The caller has checked the bounds.
pub fn encode_record(out: &mut Vec<u8>, sequence: u64, now_ns: u64, ops: &[Operation]) {
    assert!(ops.len() <= OPERATIONS_PER_RECORD_MAX);
    let body_size: usize = ops
        .iter()
        .map(|op| OPERATION_HEADER_SIZE + op.len() * EVENT_SIZE)
        .sum();
    assert!(body_size <= RECORD_BODY_BYTES_MAX);
    out.clear();
    let mut w = Writer {
        bytes: std::mem::take(out),
    };
    w.bytes.reserve(RECORD_HEADER_SIZE + body_size);
    w.u32(0); // checksum_header, filled below
    w.u32(0); // checksum, filled below
    w.bytes.extend_from_slice(&RECORD_MAGIC);
    w.u32(body_size as u32);
    w.u64(sequence);
    w.u64(now_ns);
    for op in ops {
        match op {
            Operation::CreateAccounts(events) => {
                assert!(events.len() <= BATCH_EVENTS_MAX);
                w.u8(KIND_CREATE_ACCOUNTS);
                w.bytes.extend_from_slice(&[0; 3]);
                w.u32(events.len() as u32);
                for a in events {
                    w.account(a);
                }
            }
            Operation::CreateTransfers(events) => {
                assert!(events.len() <= BATCH_EVENTS_MAX);
                w.u8(KIND_CREATE_TRANSFERS);
                w.bytes.extend_from_slice(&[0; 3]);
                w.u32(events.len() as u32);
                for t in events {
                    w.transfer(t);
                }
            }
        }
    }
    let mut bytes = w.bytes;
    debug_assert_eq!(bytes.len(), RECORD_HEADER_SIZE + body_size);
    let checksum = crc32c::crc32c(&bytes[8..]);
    bytes[4..8].copy_from_slice(&checksum.to_le_bytes());
    let checksum_header = crc32c::crc32c(&bytes[4..RECORD_HEADER_SIZE]);
    bytes[0..4].copy_from_slice(&checksum_header.to_le_bytes());
    *out = bytes;
}

/// A record's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub sequence: u64,
    pub now_ns: u64,
    pub body_size: u32,
}

/// Parses a header whose `checksum_header` holds; `None` otherwise.
fn parse_header(bytes: &[u8]) -> Option<RecordHeader> {
    let header = bytes.get(..RECORD_HEADER_SIZE)?;
    let mut r = Reader::new(header);
    let checksum_header = r.u32()?;
    if crc32c::crc32c(&header[4..]) != checksum_header {
        return None;
    }
    let _checksum = r.u32()?;
    if r.take(4)? != RECORD_MAGIC {
        return None;
    }
    let body_size = r.u32()?;
    let sequence = r.u64()?;
    let now_ns = r.u64()?;
    Some(RecordHeader {
        sequence,
        now_ns,
        body_size,
    })
}

/// Decodes a record body into operations; `None` if malformed (the checksum held, so this
/// means a writer bug or a foreign file, reported as corruption).
pub fn decode_body(body: &[u8]) -> Option<Vec<Operation>> {
    let mut r = Reader::new(body);
    let mut ops = Vec::new();
    while r.remaining() > 0 {
        if ops.len() == OPERATIONS_PER_RECORD_MAX {
            return None;
        }
        let kind = r.u8()?;
        if r.take(3)? != [0, 0, 0] {
            return None;
        }
        let count = r.u32()? as usize;
        if count > BATCH_EVENTS_MAX || count * EVENT_SIZE > r.remaining() {
            return None;
        }
        match kind {
            KIND_CREATE_ACCOUNTS => {
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    events.push(r.account()?);
                }
                ops.push(Operation::CreateAccounts(events));
            }
            KIND_CREATE_TRANSFERS => {
                let mut events = Vec::with_capacity(count);
                for _ in 0..count {
                    events.push(r.transfer()?);
                }
                ops.push(Operation::CreateTransfers(events));
            }
            _ => return None,
        }
    }
    Some(ops)
}

/// One step of reading a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome<'a> {
    /// A whole, checksummed record at `offset`.
    Record {
        offset: u64,
        header: RecordHeader,
        body: &'a [u8],
    },
    /// The segment ends cleanly.
    End,
    /// A torn write from `offset` to the end: cut it off.
    Torn { offset: u64, reason: &'static str },
    /// Damage to acknowledged data at `offset`.
    Corrupt { offset: u64, reason: &'static str },
}

/// Reads the records of one segment in order.
#[derive(Debug)]
pub struct SegmentReader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> SegmentReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        SegmentReader { bytes, offset: 0 }
    }

    /// True when a record with a valid header starts at an 8-aligned offset after `from`:
    /// the damage at `from` is then not at the tail.
    fn valid_header_after(&self, from: usize) -> bool {
        let mut p = (from + 8) & !7;
        while p + RECORD_HEADER_SIZE <= self.bytes.len() {
            if parse_header(&self.bytes[p..]).is_some() {
                return true;
            }
            p += 8;
        }
        false
    }

    pub fn next_record(&mut self) -> ReadOutcome<'a> {
        let offset = self.offset;
        let rest = &self.bytes[offset..];
        if rest.is_empty() {
            return ReadOutcome::End;
        }
        let o = offset as u64;
        if rest.len() < RECORD_HEADER_SIZE {
            return ReadOutcome::Torn {
                offset: o,
                reason: "partial record header",
            };
        }
        let Some(header) = parse_header(rest) else {
            if self.valid_header_after(offset) {
                return ReadOutcome::Corrupt {
                    offset: o,
                    reason: "record header checksum mismatch",
                };
            }
            return ReadOutcome::Torn {
                offset: o,
                reason: "record header checksum mismatch at the tail",
            };
        };
        let body_size = header.body_size as usize;
        if body_size > RECORD_BODY_BYTES_MAX || body_size % 8 != 0 {
            return ReadOutcome::Corrupt {
                offset: o,
                reason: "record body size out of bounds",
            };
        }
        let end = RECORD_HEADER_SIZE + body_size;
        if rest.len() < end {
            return ReadOutcome::Torn {
                offset: o,
                reason: "partial record body",
            };
        }
        let checksum = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        let mut crc = crc32c::crc32c(&rest[8..RECORD_HEADER_SIZE]);
        crc = crc32c::crc32c_append(crc, &rest[RECORD_HEADER_SIZE..end]);
        if crc != checksum {
            if rest.len() > end && self.valid_header_after(offset + end - 8) {
                return ReadOutcome::Corrupt {
                    offset: o,
                    reason: "record checksum mismatch",
                };
            }
            return ReadOutcome::Torn {
                offset: o,
                reason: "record checksum mismatch at the tail",
            };
        }
        self.offset += end;
        ReadOutcome::Record {
            offset: o,
            header,
            body: &rest[RECORD_HEADER_SIZE..end],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn sample_ops() -> Vec<Operation> {
        vec![
            Operation::CreateAccounts(vec![Account {
                id: 1,
                ledger: 2,
                code: 3,
                ..Default::default()
            }]),
            Operation::CreateTransfers(vec![Transfer {
                id: 9,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 100,
                ledger: 2,
                code: 1,
                flags: TransferFlags::LINKED,
                ..Default::default()
            }]),
        ]
    }

    /// Golden bytes: the format is a contract with every WAL already on disk.
    #[test]
    fn record_golden_bytes() {
        let mut out = Vec::new();
        encode_record(&mut out, 7, 0x1122_3344_5566_7788, &sample_ops());
        assert_eq!(out.len(), 32 + 8 + 128 + 8 + 128);
        assert_eq!(out.len(), 304);
        let header_hex: String = out[..32].iter().map(|b| format!("{b:02x}")).collect();
        // checksum_header, checksum, "PWAL", body_size 272, sequence 7, now_ns.
        let body_size = 272u32.to_le_bytes();
        assert_eq!(&out[8..12], b"PWAL");
        assert_eq!(&out[12..16], &body_size);
        assert_eq!(&out[16..24], &7u64.to_le_bytes());
        assert_eq!(&out[24..32], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&out[32..40], &[1, 0, 0, 0, 1, 0, 0, 0]);
        // Account id 1 (u128 LE), then zeros to ledger 2 at offset 32+8+112, code 3.
        assert_eq!(&out[40..56], &1u128.to_le_bytes());
        assert_eq!(&out[40 + 108..40 + 112], &[0, 0, 0, 0]);
        assert_eq!(&out[40 + 112..40 + 116], &2u32.to_le_bytes());
        assert_eq!(&out[40 + 116..40 + 118], &3u16.to_le_bytes());
        assert_eq!(&out[168..176], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&out[176..192], &9u128.to_le_bytes());
        assert_eq!(&out[176 + 48..176 + 64], &100u128.to_le_bytes());
        assert_eq!(&out[176 + 118..176 + 120], &1u16.to_le_bytes()); // flags: linked
                                                                     // The checksums, pinned (cross-checked with an independent CRC32C in Python): any
                                                                     // change to the layout or to the checksummed ranges shows.
        assert_eq!(header_hex, GOLDEN_HEADER_HEX);
    }

    const GOLDEN_HEADER_HEX: &str =
        "bf97ed39a34d731b5057414c1001000007000000000000008877665544332211";

    #[test]
    fn record_round_trip_and_tail_handling() {
        let ops = sample_ops();
        let mut segment = Vec::new();
        let mut record = Vec::new();
        for sequence in 1..=3 {
            encode_record(&mut record, sequence, 1000 + sequence, &ops);
            segment.extend_from_slice(&record);
        }
        let mut reader = SegmentReader::new(&segment);
        for sequence in 1..=3 {
            match reader.next_record() {
                ReadOutcome::Record { header, body, .. } => {
                    assert_eq!(header.sequence, sequence);
                    assert_eq!(header.now_ns, 1000 + sequence);
                    assert_eq!(decode_body(body), Some(ops.clone()));
                }
                other => panic!("expected a record, got {other:?}"),
            }
        }
        assert_eq!(reader.next_record(), ReadOutcome::End);

        // Every cut of the last record is a torn tail at its offset.
        let last = (segment.len() - record.len()) as u64;
        for cut in (last as usize + 1)..segment.len() {
            let mut reader = SegmentReader::new(&segment[..cut]);
            assert!(matches!(reader.next_record(), ReadOutcome::Record { .. }));
            assert!(matches!(reader.next_record(), ReadOutcome::Record { .. }));
            match reader.next_record() {
                ReadOutcome::Torn { offset, .. } => assert_eq!(offset, last),
                other => panic!("cut at {cut}: expected torn, got {other:?}"),
            }
        }

        // A flipped byte anywhere in the first record is corruption at offset 0.
        for at in 0..record.len() {
            let mut damaged = segment.clone();
            damaged[at] ^= 0x01;
            let mut reader = SegmentReader::new(&damaged);
            match reader.next_record() {
                ReadOutcome::Corrupt { offset, .. } => assert_eq!(offset, 0),
                other => panic!("flip at {at}: expected corrupt, got {other:?}"),
            }
        }
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(42), "wal-00000000000000000042.log");
        assert_eq!(parse_segment_name("wal-00000000000000000042.log"), Some(42));
        assert_eq!(parse_segment_name("wal-42.log"), None);
        assert_eq!(parse_segment_name("checkpoint.tmp"), None);
    }

    #[test]
    fn malformed_bodies_decode_to_none() {
        assert_eq!(decode_body(&[3, 0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_body(&[1, 0, 0, 0, 1, 0, 0, 0]), None);
        assert_eq!(decode_body(&[1, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_body(&[]), Some(vec![]));
    }
}
