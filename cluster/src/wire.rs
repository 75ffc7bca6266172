//! TigerBeetle 0.16's request and reply bodies, to and from the ledger's own model.
//!
//! The model (`ledger_svc::model`) already follows TigerBeetle's field order, sizes and result
//! codes, so the mapping is the wire layout and nothing else: accounts and transfers are the
//! 128-byte little-endian structs the write-ahead log stores (`ledger_svc::codec`), filters are
//! TigerBeetle's `AccountFilter` (128 bytes) and `QueryFilter` (64 bytes), and a create reply is
//! TigerBeetle's sparse list of `(index, result)` pairs for the events that did not succeed,
//! which [`create_results`] turns into the dense list the HTTPS API renders.
//!
//! Pure functions, no I/O, always compiled: the client (`client`, feature `tigerbeetle`) moves
//! these bytes, and the tests below pin the layouts with golden bytes.

use ledger_svc::codec::{self, EVENT_SIZE};
use ledger_svc::model::{
    Account, AccountBalance, AccountFilter, CreateAccountResult, CreateTransferResult, Operation, OperationReply,
    QueryFilter, Transfer,
};

/// TigerBeetle 0.16's client operations (`vsr_operations_reserved` = 128 plus the state
/// machine's index), the codes a request carries on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    CreateAccounts = 138,
    CreateTransfers = 139,
    LookupAccounts = 140,
    LookupTransfers = 141,
    GetAccountTransfers = 142,
    GetAccountBalances = 143,
    QueryAccounts = 144,
    QueryTransfers = 145,
}

/// Events one TigerBeetle request may carry: its message body (1 MiB less the 256-byte
/// header) over 128-byte events.
pub const BATCH_EVENTS_MAX: usize = 8189;

/// Size of an encoded `AccountFilter`.
pub const ACCOUNT_FILTER_SIZE: usize = 128;
/// Size of an encoded `QueryFilter`.
pub const QUERY_FILTER_SIZE: usize = 64;
/// Size of one `(index, result)` pair of a create reply.
pub const CREATE_RESULT_SIZE: usize = 8;

/// A reply body that does not have the shape its request promises: the cluster (or the link to
/// it) broke the protocol. Never expected; the caller answers 500 and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("reply of {op:?} is {len} bytes, not a multiple of {size}")]
    Length { op: Op, len: usize, size: usize },
    #[error("reply of {op:?} names event {index} of a batch of {events}")]
    IndexOutOfRange { op: Op, index: u32, events: usize },
    #[error("reply of {op:?} lists event {index} twice or out of order")]
    IndexOrder { op: Op, index: u32 },
    #[error("reply of {op:?} carries result code {code}, unknown to TigerBeetle 0.16")]
    UnknownResult { op: Op, code: u32 },
    #[error("reply of {op:?} holds {rows} rows, more than the {limit} asked for")]
    TooManyRows { op: Op, rows: usize, limit: usize },
    /// A create reply's header timestamp T gives its n events `T - n + 1 ..= T`, so it must
    /// exceed n (0 is a reply without one).
    #[error("reply of {op:?} carries the header timestamp {timestamp}, too small for its {events} events")]
    HeaderTimestamp { op: Op, timestamp: u64, events: u64 },
}

/// Appends the body of a create operation (its events, 128 bytes each) and names the request.
pub fn encode_operation(operation: &Operation, out: &mut Vec<u8>) -> Op {
    out.reserve(operation.len() * EVENT_SIZE);
    match operation {
        Operation::CreateAccounts(accounts) => {
            for account in accounts {
                codec::write_account(out, account);
            }
            Op::CreateAccounts
        }
        Operation::CreateTransfers(transfers) => {
            for transfer in transfers {
                codec::write_transfer(out, transfer);
            }
            Op::CreateTransfers
        }
    }
}

/// Appends the body of `lookup_accounts` / `lookup_transfers`: the ids, 16 bytes each.
pub fn encode_ids(ids: &[u128], out: &mut Vec<u8>) {
    for id in ids {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

/// Appends TigerBeetle's `AccountFilter` (flags: bit 0 debits, bit 1 credits, bit 2 reversed).
pub fn encode_account_filter(filter: &AccountFilter, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&filter.account_id.to_le_bytes());
    out.extend_from_slice(&filter.user_data_128.to_le_bytes());
    out.extend_from_slice(&filter.user_data_64.to_le_bytes());
    out.extend_from_slice(&filter.user_data_32.to_le_bytes());
    out.extend_from_slice(&filter.code.to_le_bytes());
    out.extend_from_slice(&[0u8; 58]);
    out.extend_from_slice(&filter.timestamp_min.to_le_bytes());
    out.extend_from_slice(&filter.timestamp_max.to_le_bytes());
    out.extend_from_slice(&filter.limit.to_le_bytes());
    let flags = u32::from(filter.debits) | u32::from(filter.credits) << 1 | u32::from(filter.reversed) << 2;
    out.extend_from_slice(&flags.to_le_bytes());
    debug_assert_eq!(out.len() - start, ACCOUNT_FILTER_SIZE);
}

/// Appends TigerBeetle's `QueryFilter` (flags: bit 0 reversed).
pub fn encode_query_filter(filter: &QueryFilter, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&filter.user_data_128.to_le_bytes());
    out.extend_from_slice(&filter.user_data_64.to_le_bytes());
    out.extend_from_slice(&filter.user_data_32.to_le_bytes());
    out.extend_from_slice(&filter.ledger.to_le_bytes());
    out.extend_from_slice(&filter.code.to_le_bytes());
    out.extend_from_slice(&[0u8; 6]);
    out.extend_from_slice(&filter.timestamp_min.to_le_bytes());
    out.extend_from_slice(&filter.timestamp_max.to_le_bytes());
    out.extend_from_slice(&filter.limit.to_le_bytes());
    out.extend_from_slice(&u32::from(filter.reversed).to_le_bytes());
    debug_assert_eq!(out.len() - start, QUERY_FILTER_SIZE);
}

/// The dense results of a create request of `events` events from TigerBeetle's sparse reply
/// (only the events that did not succeed, ascending by index); every event not listed is `ok`.
pub fn create_results(op: Op, events: usize, body: &[u8]) -> Result<OperationReply, WireError> {
    if body.len() % CREATE_RESULT_SIZE != 0 {
        return Err(WireError::Length { op, len: body.len(), size: CREATE_RESULT_SIZE });
    }
    let mut codes = vec![0u32; events];
    let mut next = 0usize;
    for pair in body.chunks_exact(CREATE_RESULT_SIZE) {
        let index = u32::from_le_bytes(pair[0..4].try_into().expect("4 bytes"));
        let code = u32::from_le_bytes(pair[4..8].try_into().expect("4 bytes"));
        let at = index as usize;
        if at >= events {
            return Err(WireError::IndexOutOfRange { op, index, events });
        }
        // TigerBeetle lists each failed event once, in order; `ok` is never listed.
        if at < next || code == 0 {
            return Err(WireError::IndexOrder { op, index });
        }
        next = at + 1;
        codes[at] = code;
    }
    match op {
        Op::CreateAccounts => codes
            .into_iter()
            .map(|code| CreateAccountResult::from_code(code).ok_or(WireError::UnknownResult { op, code }))
            .collect::<Result<_, _>>()
            .map(OperationReply::CreateAccounts),
        Op::CreateTransfers => codes
            .into_iter()
            .map(|code| CreateTransferResult::from_code(code).ok_or(WireError::UnknownResult { op, code }))
            .collect::<Result<_, _>>()
            .map(OperationReply::CreateTransfers),
        _ => unreachable!("create_results of {op:?}: only create operations have create results"),
    }
}

fn rows<T>(op: Op, body: &[u8], limit: usize, read: impl Fn(&[u8]) -> Option<T>) -> Result<Vec<T>, WireError> {
    if body.len() % EVENT_SIZE != 0 {
        return Err(WireError::Length { op, len: body.len(), size: EVENT_SIZE });
    }
    let count = body.len() / EVENT_SIZE;
    if count > limit {
        return Err(WireError::TooManyRows { op, rows: count, limit });
    }
    Ok(body.chunks_exact(EVENT_SIZE).map(|row| read(row).expect("a 128-byte row always decodes")).collect())
}

/// The accounts of a `lookup_accounts` or `query_accounts` reply, at most `limit` of them.
pub fn accounts(op: Op, body: &[u8], limit: usize) -> Result<Vec<Account>, WireError> {
    rows(op, body, limit, codec::read_account)
}

/// The transfers of a `lookup_transfers`, `get_account_transfers` or `query_transfers` reply.
pub fn transfers(op: Op, body: &[u8], limit: usize) -> Result<Vec<Transfer>, WireError> {
    rows(op, body, limit, codec::read_transfer)
}

/// The rows of a `get_account_balances` reply (TigerBeetle's 128-byte `AccountBalance`).
pub fn balances(body: &[u8], limit: usize) -> Result<Vec<AccountBalance>, WireError> {
    rows(Op::GetAccountBalances, body, limit, |row| {
        let u128_at = |at: usize| u128::from_le_bytes(row[at..at + 16].try_into().expect("16 bytes"));
        Some(AccountBalance {
            debits_pending: u128_at(0),
            debits_posted: u128_at(16),
            credits_pending: u128_at(32),
            credits_posted: u128_at(48),
            timestamp: u64::from_le_bytes(row[64..72].try_into().expect("8 bytes")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_svc::model::{AccountFlags, TransferFlags};

    #[test]
    fn account_filter_golden_bytes() {
        let filter = AccountFilter {
            account_id: 1,
            user_data_128: 2,
            user_data_64: 3,
            user_data_32: 4,
            code: 5,
            timestamp_min: 6,
            timestamp_max: 7,
            limit: 8,
            debits: true,
            credits: false,
            reversed: true,
        };
        let mut out = Vec::new();
        encode_account_filter(&filter, &mut out);
        let mut want = vec![0u8; ACCOUNT_FILTER_SIZE];
        want[0] = 1;
        want[16] = 2;
        want[32] = 3;
        want[40] = 4;
        want[44] = 5;
        want[104] = 6;
        want[112] = 7;
        want[120] = 8;
        want[124] = 0b101;
        assert_eq!(out, want);
    }

    #[test]
    fn query_filter_golden_bytes() {
        let filter = QueryFilter {
            user_data_128: 1,
            user_data_64: 2,
            user_data_32: 3,
            ledger: 4,
            code: 5,
            timestamp_min: 6,
            timestamp_max: 7,
            limit: 8,
            reversed: true,
        };
        let mut out = Vec::new();
        encode_query_filter(&filter, &mut out);
        let mut want = vec![0u8; QUERY_FILTER_SIZE];
        want[0] = 1;
        want[16] = 2;
        want[24] = 3;
        want[28] = 4;
        want[32] = 5;
        want[40] = 6;
        want[48] = 7;
        want[56] = 8;
        want[60] = 1;
        assert_eq!(out, want);
    }

    #[test]
    fn transfer_layout_is_tigerbeetles() {
        let transfer = Transfer {
            id: 1,
            debit_account_id: 2,
            credit_account_id: 3,
            amount: 4,
            pending_id: 5,
            user_data_128: 6,
            user_data_64: 7,
            user_data_32: 8,
            timeout: 9,
            ledger: 10,
            code: 11,
            flags: TransferFlags::PENDING,
            timestamp: 0,
        };
        let mut out = Vec::new();
        assert_eq!(encode_operation(&Operation::CreateTransfers(vec![transfer]), &mut out), Op::CreateTransfers);
        assert_eq!(out.len(), 128);
        for (at, value) in [(0, 1), (16, 2), (32, 3), (48, 4), (64, 5), (80, 6), (96, 7), (104, 8), (108, 9), (112, 10), (116, 11)] {
            assert_eq!(out[at], value, "byte {at}");
        }
        assert_eq!(u16::from_le_bytes([out[118], out[119]]), TransferFlags::PENDING.bits());
        assert_eq!(transfers(Op::LookupTransfers, &out, 1).unwrap(), vec![transfer]);
    }

    #[test]
    fn sparse_create_results_become_dense() {
        let mut body = Vec::new();
        for (index, code) in [(1u32, 21u32), (3, 1)] {
            body.extend_from_slice(&index.to_le_bytes());
            body.extend_from_slice(&code.to_le_bytes());
        }
        let reply = create_results(Op::CreateAccounts, 4, &body).unwrap();
        assert_eq!(
            reply,
            OperationReply::CreateAccounts(vec![
                CreateAccountResult::Ok,
                CreateAccountResult::Exists,
                CreateAccountResult::Ok,
                CreateAccountResult::LinkedEventFailed,
            ])
        );
        assert_eq!(create_results(Op::CreateTransfers, 0, &[]).unwrap(), OperationReply::CreateTransfers(vec![]));
    }

    #[test]
    fn malformed_create_replies_are_errors_not_panics() {
        let pair = |index: u32, code: u32| [index.to_le_bytes(), code.to_le_bytes()].concat();
        assert!(matches!(create_results(Op::CreateAccounts, 2, &[0; 7]), Err(WireError::Length { .. })));
        assert!(matches!(create_results(Op::CreateAccounts, 2, &pair(2, 21)), Err(WireError::IndexOutOfRange { .. })));
        assert!(matches!(create_results(Op::CreateAccounts, 2, &[pair(1, 21), pair(0, 21)].concat()), Err(WireError::IndexOrder { .. })));
        assert!(matches!(create_results(Op::CreateAccounts, 2, &[pair(1, 21), pair(1, 21)].concat()), Err(WireError::IndexOrder { .. })));
        assert!(matches!(create_results(Op::CreateAccounts, 2, &pair(0, 0)), Err(WireError::IndexOrder { .. })));
        assert!(matches!(create_results(Op::CreateTransfers, 2, &pair(0, 9999)), Err(WireError::UnknownResult { .. })));
        assert!(matches!(accounts(Op::LookupAccounts, &[0; 129], 2), Err(WireError::Length { .. })));
        assert!(matches!(accounts(Op::LookupAccounts, &[0; 256], 1), Err(WireError::TooManyRows { .. })));
    }

    #[test]
    fn accounts_and_balances_decode() {
        let account = Account { id: 7, ledger: 1, code: 1, flags: AccountFlags::HISTORY, timestamp: 99, credits_posted: 5, ..Default::default() };
        let mut out = Vec::new();
        encode_operation(&Operation::CreateAccounts(vec![account]), &mut out);
        assert_eq!(accounts(Op::LookupAccounts, &out, 8189).unwrap(), vec![account]);
        let mut row = vec![0u8; 128];
        row[16] = 3; // debits_posted
        row[48] = 4; // credits_posted
        row[64..72].copy_from_slice(&42u64.to_le_bytes());
        let got = balances(&row, 1).unwrap();
        assert_eq!(got, vec![AccountBalance { debits_posted: 3, credits_posted: 4, timestamp: 42, ..Default::default() }]);
    }
}
