//! Fixed little-endian encodings of accounts and transfers (128 bytes each, TigerBeetle's field
//! order and sizes), shared by the write-ahead log and the checkpoint.
//!
//! One fixed size per event keeps the WAL body a plain array: the decoder needs no framing per
//! event and a record's length says exactly how many events it holds.

use crate::model::{Account, AccountFlags, Transfer, TransferFlags};

/// Encoded size of an `Account` and of a `Transfer`.
pub const EVENT_SIZE: usize = 128;

/// Appends little-endian fields to a byte vector.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn with_capacity(capacity: usize) -> Self {
        Writer {
            bytes: Vec::with_capacity(capacity),
        }
    }
    pub fn u8(&mut self, v: u8) {
        self.bytes.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u128(&mut self, v: u128) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }
    pub fn account(&mut self, a: &Account) {
        let start = self.bytes.len();
        self.u128(a.id);
        self.u128(a.debits_pending);
        self.u128(a.debits_posted);
        self.u128(a.credits_pending);
        self.u128(a.credits_posted);
        self.u128(a.user_data_128);
        self.u64(a.user_data_64);
        self.u32(a.user_data_32);
        self.u32(0); // reserved, as in TigerBeetle's layout
        self.u32(a.ledger);
        self.u16(a.code);
        self.u16(a.flags.bits());
        self.u64(a.timestamp);
        debug_assert_eq!(self.bytes.len() - start, EVENT_SIZE);
    }
    pub fn transfer(&mut self, t: &Transfer) {
        let start = self.bytes.len();
        self.u128(t.id);
        self.u128(t.debit_account_id);
        self.u128(t.credit_account_id);
        self.u128(t.amount);
        self.u128(t.pending_id);
        self.u128(t.user_data_128);
        self.u64(t.user_data_64);
        self.u32(t.user_data_32);
        self.u32(t.timeout);
        self.u32(t.ledger);
        self.u16(t.code);
        self.u16(t.flags.bits());
        self.u64(t.timestamp);
        debug_assert_eq!(self.bytes.len() - start, EVENT_SIZE);
    }
}

/// Reads little-endian fields from a byte slice; every read is bounds-checked and a short
/// input yields `None` (never a panic: the bytes come from disk).
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, offset: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.offset.checked_add(n)?;
        let slice = self.bytes.get(self.offset..end)?;
        self.offset = end;
        Some(slice)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Some(out)
    }
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    pub fn u128(&mut self) -> Option<u128> {
        Some(u128::from_le_bytes(self.array()?))
    }
    pub fn account(&mut self) -> Option<Account> {
        let id = self.u128()?;
        let debits_pending = self.u128()?;
        let debits_posted = self.u128()?;
        let credits_pending = self.u128()?;
        let credits_posted = self.u128()?;
        let user_data_128 = self.u128()?;
        let user_data_64 = self.u64()?;
        let user_data_32 = self.u32()?;
        let _reserved = self.u32()?;
        let ledger = self.u32()?;
        let code = self.u16()?;
        let flags = AccountFlags::from_bits_retain(self.u16()?);
        let timestamp = self.u64()?;
        Some(Account {
            id,
            debits_pending,
            debits_posted,
            credits_pending,
            credits_posted,
            user_data_128,
            user_data_64,
            user_data_32,
            ledger,
            code,
            flags,
            timestamp,
        })
    }
    pub fn transfer(&mut self) -> Option<Transfer> {
        Some(Transfer {
            id: self.u128()?,
            debit_account_id: self.u128()?,
            credit_account_id: self.u128()?,
            amount: self.u128()?,
            pending_id: self.u128()?,
            user_data_128: self.u128()?,
            user_data_64: self.u64()?,
            user_data_32: self.u32()?,
            timeout: self.u32()?,
            ledger: self.u32()?,
            code: self.u16()?,
            flags: TransferFlags::from_bits_retain(self.u16()?),
            timestamp: self.u64()?,
        })
    }
}

/// Appends `account` in TigerBeetle's 128-byte wire layout (the TigerBeetle cluster backend
/// sends these bytes as they are).
pub fn write_account(bytes: &mut Vec<u8>, account: &Account) {
    let mut writer = Writer { bytes: std::mem::take(bytes) };
    writer.account(account);
    *bytes = writer.bytes;
}

/// Appends `transfer` in TigerBeetle's 128-byte wire layout.
pub fn write_transfer(bytes: &mut Vec<u8>, transfer: &Transfer) {
    let mut writer = Writer { bytes: std::mem::take(bytes) };
    writer.transfer(transfer);
    *bytes = writer.bytes;
}

/// Reads one account from exactly [`EVENT_SIZE`] bytes; `None` for any other length.
pub fn read_account(bytes: &[u8]) -> Option<Account> {
    if bytes.len() != EVENT_SIZE {
        return None;
    }
    Reader::new(bytes).account()
}

/// Reads one transfer from exactly [`EVENT_SIZE`] bytes; `None` for any other length.
pub fn read_transfer(bytes: &[u8]) -> Option<Transfer> {
    if bytes.len() != EVENT_SIZE {
        return None;
    }
    Reader::new(bytes).transfer()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_and_transfer_round_trip() {
        let a = Account {
            id: u128::MAX - 1,
            debits_pending: 1,
            debits_posted: 2,
            credits_pending: 3,
            credits_posted: 4,
            user_data_128: 5,
            user_data_64: 6,
            user_data_32: 7,
            ledger: 8,
            code: 9,
            flags: AccountFlags::HISTORY | AccountFlags::from_bits_retain(1 << 15),
            timestamp: 10,
        };
        let t = Transfer {
            id: 1,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: u128::MAX,
            pending_id: 5,
            user_data_128: 6,
            user_data_64: 7,
            user_data_32: 8,
            timeout: 9,
            ledger: 10,
            code: 11,
            flags: TransferFlags::PENDING,
            timestamp: 12,
        };
        let mut w = Writer::default();
        w.account(&a);
        w.transfer(&t);
        assert_eq!(w.bytes.len(), 2 * EVENT_SIZE);
        let mut r = Reader::new(&w.bytes);
        assert_eq!(r.account(), Some(a));
        assert_eq!(r.transfer(), Some(t));
        assert_eq!(r.remaining(), 0);
        assert_eq!(r.u8(), None);
    }
}
