//! TigerBeetle 0.16.78's state-machine test tables for imported events and for the queries
//! (`src/state_machine_tests.zig`: "imported events: *", "get_account_transfers: *",
//! "get_account_balances: *", "query_accounts", "query_transfers"), translated row by row:
//! each `account`/`transfer` row is an event with its expected result, each `commit` a batch,
//! each query row a filter with its expected results. Then what the translation cannot show:
//! bounded pages (`*_page`) followed to the end return exactly the unbounded result, imported
//! events replay from the WAL to the same state, and a history account's balances are per
//! transfer.

use ledger_svc::state_machine::TIMESTAMP_MAX;
use ledger_svc::storage::SimRng;
use ledger_svc::*;

// --- The harness: TigerBeetle's table rows as Rust --------------------------------------------

/// TigerBeetle's test harness starts its clock with `tick 10 nanoseconds` in the imported
/// tables; every batch here runs at ledger time 10, so the ledger's own timestamps are the
/// smallest the batch sizes allow (a batch of n events after timestamp p ends at max(10, p + n)).
const TICK: u64 = 10;

fn sm() -> StateMachine {
    StateMachine::with_id_hash_key(IdHashKey::new([5, 6, 7, 8]))
}

/// `account A<id> 0 0 0 0 U<ud128> U<ud64> U<ud32> _ L<ledger> C<code> <flags> ... <timestamp>`
fn account(id: u128, ledger: u32, code: u16) -> Account {
    Account {
        id,
        ledger,
        code,
        ..Default::default()
    }
}

fn imported_account(id: u128, timestamp: u64) -> Account {
    Account {
        flags: AccountFlags::IMPORTED,
        timestamp,
        ..account(id, 1, 1)
    }
}

fn linked_account(a: Account) -> Account {
    Account {
        flags: a.flags | AccountFlags::LINKED,
        ..a
    }
}

fn transfer(id: u128, dr: u128, cr: u128, amount: u128, code: u16) -> Transfer {
    Transfer {
        id,
        debit_account_id: dr,
        credit_account_id: cr,
        amount,
        ledger: 1,
        code,
        ..Default::default()
    }
}

fn imported(t: Transfer, timestamp: u64) -> Transfer {
    Transfer {
        flags: t.flags | TransferFlags::IMPORTED,
        timestamp,
        ..t
    }
}

fn with_user_data(t: Transfer, u128_: u128, u64_: u64, u32_: u32) -> Transfer {
    Transfer {
        user_data_128: u128_,
        user_data_64: u64_,
        user_data_32: u32_,
        ..t
    }
}

/// Runs one `commit create_accounts`: the events and their expected results.
fn commit_accounts(sm: &mut StateMachine, rows: &[(Account, CreateAccountResult)]) {
    let events: Vec<Account> = rows.iter().map(|(a, _)| *a).collect();
    let expected: Vec<CreateAccountResult> = rows.iter().map(|(_, r)| *r).collect();
    assert_eq!(sm.create_accounts(TICK, &events), expected, "{events:?}");
}

fn commit_transfers(sm: &mut StateMachine, rows: &[(Transfer, CreateTransferResult)]) {
    let events: Vec<Transfer> = rows.iter().map(|(t, _)| *t).collect();
    let expected: Vec<CreateTransferResult> = rows.iter().map(|(_, r)| *r).collect();
    assert_eq!(sm.create_transfers(TICK, &events), expected, "{events:?}");
}

/// `lookup_account A<id> <debits_pending> <debits_posted> <credits_pending> <credits_posted>`
fn lookup_account(sm: &StateMachine, id: u128) -> (u128, u128, u128, u128) {
    let a = sm.lookup_account(id).expect("account exists");
    (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
}

fn ts(sm: &StateMachine, transfer_id: u128) -> u64 {
    sm.lookup_transfer(transfer_id).expect("transfer exists").timestamp
}

fn account_ts(sm: &StateMachine, account_id: u128) -> u64 {
    sm.lookup_account(account_id).expect("account exists").timestamp
}

// --- imported events ---------------------------------------------------------------------------

#[test]
fn imported_events_imported_batch() {
    use CreateAccountResult as A;
    use CreateTransferResult as T;
    let mut sm = sm();
    // The first event determines if the batch is either imported or not.
    commit_accounts(
        &mut sm,
        &[
            (imported_account(1, 1), A::Ok),
            (account(2, 1, 1), A::ImportedEventExpected),
            (imported_account(2, 2), A::Ok),
        ],
    );
    commit_accounts(
        &mut sm,
        &[
            (account(3, 1, 1), A::Ok),
            (imported_account(4, 3), A::ImportedEventNotExpected),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (imported(transfer(1, 1, 2, 3, 2), 10), T::Ok),
            (transfer(2, 1, 2, 3, 2), T::ImportedEventExpected),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (transfer(3, 1, 2, 3, 2), T::Ok),
            (imported(transfer(4, 1, 2, 3, 2), 0), T::ImportedEventNotExpected),
        ],
    );
    // The imported objects keep their timestamps and their flag.
    assert_eq!(account_ts(&sm, 1), 1);
    assert_eq!(account_ts(&sm, 2), 2);
    assert_eq!(ts(&sm, 1), 10);
    assert!(sm.lookup_transfer(1).unwrap().flags.contains(TransferFlags::IMPORTED));
    assert!(sm.lookup_account(1).unwrap().flags.contains(AccountFlags::IMPORTED));
    // Failed imports are not transient: the ids stay free.
    assert!(sm.lookup_transfer(2).is_none() && sm.lookup_transfer(4).is_none());
}

#[test]
fn imported_events_timestamp() {
    use CreateAccountResult as A;
    use CreateTransferResult as T;
    let mut sm = sm();
    commit_accounts(
        &mut sm,
        &[
            (imported_account(1, 0), A::ImportedEventTimestampOutOfRange),
            (imported_account(1, u64::MAX), A::ImportedEventTimestampOutOfRange),
            (imported_account(1, 99), A::ImportedEventTimestampMustNotAdvance),
            (imported_account(1, 2), A::Ok),
            (imported_account(2, 1), A::ImportedEventTimestampMustNotRegress),
            (imported_account(2, 3), A::Ok),
            (imported_account(3, 9), A::Ok),
        ],
    );
    commit_accounts(
        &mut sm,
        &[
            (imported_account(2, 99), A::ImportedEventTimestampMustNotAdvance),
            (imported_account(2, 1), A::Exists),
            (imported_account(2, 3), A::Exists),
            (imported_account(2, 4), A::Exists),
            (imported_account(3, 9), A::Exists),
        ],
    );
    let t = |id, dr, cr, timestamp| imported(transfer(id, dr, cr, 3, 2), timestamp);
    commit_transfers(
        &mut sm,
        &[
            (t(1, 1, 2, 0), T::ImportedEventTimestampOutOfRange),
            (t(1, 1, 2, u64::MAX), T::ImportedEventTimestampOutOfRange),
            (t(1, 1, 2, 99), T::ImportedEventTimestampMustNotAdvance),
            // The same timestamp as the dr account.
            (t(1, 1, 2, 2), T::ImportedEventTimestampMustNotRegress),
            // The same timestamp as the cr account.
            (t(1, 1, 2, 3), T::ImportedEventTimestampMustNotRegress),
            (t(1, 3, 2, 4), T::ImportedEventTimestampMustPostdateDebitAccount),
            (t(1, 1, 3, 4), T::ImportedEventTimestampMustPostdateCreditAccount),
            (t(1, 1, 2, 4), T::Ok),
            (t(2, 1, 2, 3), T::ImportedEventTimestampMustNotRegress),
            (t(2, 1, 2, 5), T::Ok),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (t(2, 1, 2, 99), T::ImportedEventTimestampMustNotAdvance),
            // T2 `exists` regardless different timestamps.
            (t(2, 1, 2, 4), T::Exists),
            (t(2, 1, 2, 5), T::Exists),
            (t(2, 1, 2, 6), T::Exists),
        ],
    );
    commit_transfers(&mut sm, &[(t(3, 1, 2, 10), T::Ok)]);
    // The same timestamp as a transfer.
    commit_accounts(&mut sm, &[(imported_account(4, 10), A::ImportedEventTimestampMustNotRegress)]);
    // Past the end of the range: 2^63 is out of range, 2^63 - 1 is in range (and, being after
    // every batch's own timestamp here, must not advance).
    commit_accounts(
        &mut sm,
        &[
            (imported_account(4, TIMESTAMP_MAX + 1), A::ImportedEventTimestampOutOfRange),
            (imported_account(4, TIMESTAMP_MAX), A::ImportedEventTimestampMustNotAdvance),
        ],
    );
    assert_eq!(
        sm.transfers().iter().map(|t| t.timestamp).collect::<Vec<_>>(),
        vec![4, 5, 10]
    );
}

#[test]
fn imported_events_pending_transfers() {
    use CreateAccountResult as A;
    use CreateTransferResult as T;
    let mut sm = sm();
    commit_accounts(&mut sm, &[(imported_account(1, 1), A::Ok), (imported_account(2, 2), A::Ok)]);
    let pending = |id, amount, timeout, timestamp| {
        imported(
            Transfer {
                flags: TransferFlags::PENDING,
                timeout,
                ..transfer(id, 1, 2, amount, 2)
            },
            timestamp,
        )
    };
    commit_transfers(
        &mut sm,
        &[
            (imported(transfer(1, 1, 2, 3, 2), 3), T::Ok),
            (pending(2, 4, 1, 4), T::ImportedEventTimeoutMustBeZero),
            (pending(2, 4, 0, 4), T::Ok),
        ],
    );
    assert_eq!(lookup_account(&sm, 1), (4, 3, 0, 0));
    assert_eq!(lookup_account(&sm, 2), (0, 0, 4, 3));
    let post = Transfer {
        pending_id: 2,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..transfer(3, 1, 2, 4, 2)
    };
    commit_transfers(&mut sm, &[(imported(post, 5), T::Ok)]);
    assert_eq!(lookup_account(&sm, 1), (0, 7, 0, 0));
    assert_eq!(lookup_account(&sm, 2), (0, 0, 0, 7));
    assert_eq!((ts(&sm, 1), ts(&sm, 2), ts(&sm, 3)), (3, 4, 5));
    assert_eq!(sm.pending_status(2), Some(PendingStatus::Posted));
    // An imported pending transfer has no timeout, so nothing is waiting to expire.
    assert_eq!(sm.poll_at(), None);
}

#[test]
fn imported_events_linked_chain() {
    use CreateAccountResult as A;
    use CreateTransferResult as T;
    let mut sm = sm();
    commit_accounts(
        &mut sm,
        &[
            (linked_account(imported_account(1, 1)), A::LinkedEventFailed),
            (linked_account(imported_account(2, 2)), A::LinkedEventFailed),
            (imported_account(3, 0), A::ImportedEventTimestampOutOfRange),
        ],
    );
    commit_accounts(
        &mut sm,
        &[
            (linked_account(imported_account(1, 1)), A::Ok),
            (linked_account(imported_account(2, 2)), A::Ok),
            (imported_account(3, 3), A::Ok),
        ],
    );
    let linked = |t: Transfer| Transfer {
        flags: t.flags | TransferFlags::LINKED,
        ..t
    };
    commit_transfers(
        &mut sm,
        &[
            (linked(imported(transfer(1, 1, 2, 3, 2), 4)), T::LinkedEventFailed),
            (linked(imported(transfer(2, 1, 2, 3, 2), 5)), T::LinkedEventFailed),
            (imported(transfer(3, 1, 2, 3, 2), 0), T::ImportedEventTimestampOutOfRange),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (linked(imported(transfer(1, 1, 2, 3, 2), 4)), T::Ok),
            (linked(imported(transfer(2, 1, 2, 3, 2), 5)), T::Ok),
            (imported(transfer(3, 1, 2, 3, 2), 6), T::Ok),
        ],
    );
    assert_eq!(lookup_account(&sm, 1), (0, 9, 0, 0));
    assert_eq!(lookup_account(&sm, 2), (0, 0, 0, 9));
    assert_eq!(lookup_account(&sm, 3), (0, 0, 0, 0));
    assert_eq!((ts(&sm, 1), ts(&sm, 2), ts(&sm, 3)), (4, 5, 6));
}

/// Beyond the tables: an imported batch still moves the ledger's clock by its size, so the
/// next ordinary batch's timestamps come after every imported one, and an import after
/// ordinary events must not regress below them.
#[test]
fn imported_events_and_the_ledger_clock() {
    use CreateAccountResult as A;
    use CreateTransferResult as T;
    let mut sm = sm();
    let now = 1_000_000;
    assert_eq!(
        sm.create_accounts(now, &[imported_account(1, 100), imported_account(2, 200)]),
        vec![A::Ok, A::Ok]
    );
    assert_eq!(sm.timestamp(), now);
    assert_eq!(sm.create_accounts(now, &[account(3, 1, 1)]), vec![A::Ok]);
    assert_eq!(account_ts(&sm, 3), now + 1);
    // An imported account must come after the newest account, imported or not.
    assert_eq!(
        sm.create_accounts(now, &[imported_account(4, 300)]),
        vec![A::ImportedEventTimestampMustNotRegress]
    );
    assert_eq!(
        sm.create_transfers(now, &[transfer(1, 1, 2, 5, 1)]),
        vec![T::Ok]
    );
    let t1 = ts(&sm, 1);
    // An imported transfer must come after the newest transfer.
    assert_eq!(
        sm.create_transfers(now, &[imported(transfer(2, 1, 2, 5, 1), t1 - 1)]),
        vec![T::ImportedEventTimestampMustNotRegress]
    );
    assert_eq!(
        sm.create_transfers(now, &[imported(transfer(2, 1, 2, 5, 1), t1 + 1)]),
        vec![T::Ok]
    );
    // Closed accounts, exceeds_credits and the rest still apply to imports, after the
    // imported checks (TigerBeetle's order).
    let limited = Account {
        flags: AccountFlags::IMPORTED | AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
        ..imported_account(5, sm.timestamp() + 1)
    };
    // The batch's own timestamp is sm.timestamp() + 1 at the same `now`: an import at it
    // would advance; with the clock further on it is in the past.
    assert_eq!(
        sm.create_accounts(now, &[limited]),
        vec![A::ImportedEventTimestampMustNotAdvance]
    );
    let later = 2 * now;
    assert_eq!(sm.create_accounts(later, &[limited]), vec![A::Ok]);
    let after = sm.timestamp() + 1;
    let overdraw = imported(transfer(3, 5, 2, 1, 1), after);
    assert_eq!(sm.create_transfers(3 * now, &[overdraw]), vec![T::ExceedsCredits]);
    // exceeds_credits is transient: the id is burnt, imported or not.
    let retry = imported(transfer(3, 5, 2, 1, 1), sm.timestamp() + 1);
    assert_eq!(sm.create_transfers(4 * now, &[retry]), vec![T::IdAlreadyFailed]);
}

// --- get_account_transfers -----------------------------------------------------------------

/// The four transfers of TigerBeetle's single-phase query tables, between accounts 1 and 2
/// (with `history` when asked).
fn single_phase(history: bool) -> StateMachine {
    let mut sm = sm();
    let flags = if history { AccountFlags::HISTORY } else { AccountFlags::empty() };
    commit_accounts(
        &mut sm,
        &[
            (Account { flags, ..account(1, 1, 1) }, CreateAccountResult::Ok),
            (Account { flags, ..account(2, 1, 1) }, CreateAccountResult::Ok),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (with_user_data(transfer(1, 1, 2, 10, 1), 1000, 10, 1), CreateTransferResult::Ok),
            (with_user_data(transfer(2, 2, 1, 11, 2), 1001, 10, 2), CreateTransferResult::Ok),
            (with_user_data(transfer(3, 1, 2, 12, 1), 1000, 20, 2), CreateTransferResult::Ok),
            (with_user_data(transfer(4, 2, 1, 13, 2), 1001, 20, 1), CreateTransferResult::Ok),
        ],
    );
    sm
}

/// `get_account_transfers A<account> U<ud128> U<ud64> U<ud32> C<code> <tmin> <tmax> <limit>
/// <DR> <CR> <REV>`, with timestamps given as transfer ids (0: none).
#[allow(clippy::too_many_arguments)]
fn account_filter(
    sm: &StateMachine,
    account_id: u128,
    user_data: (u128, u64, u32),
    code: u16,
    (tmin, tmax): (u128, u128),
    limit: u32,
    (debits, credits): (bool, bool),
    reversed: bool,
) -> AccountFilter {
    let at = |id: u128| if id == 0 { 0 } else { ts(sm, id) };
    AccountFilter {
        account_id,
        user_data_128: user_data.0,
        user_data_64: user_data.1,
        user_data_32: user_data.2,
        code,
        timestamp_min: at(tmin),
        timestamp_max: at(tmax),
        limit,
        debits,
        credits,
        reversed,
    }
}

fn transfer_ids(transfers: Vec<Transfer>) -> Vec<u128> {
    transfers.iter().map(|t| t.id).collect()
}

const DR: (bool, bool) = (true, false);
const CR: (bool, bool) = (false, true);
const DR_CR: (bool, bool) = (true, true);
const NONE: (u128, u64, u32) = (0, 0, 0);
const ANY: (u128, u128) = (0, 0);

#[test]
fn get_account_transfers_single_phase() {
    let sm = single_phase(false);
    let cases: Vec<(AccountFilter, Vec<u128>)> = vec![
        // Debits + credits, chronological.
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, false), vec![1, 2, 3, 4]),
        // Debits + credits, limit=2.
        (account_filter(&sm, 1, NONE, 0, ANY, 2, DR_CR, false), vec![1, 2]),
        // Debits + credits, timestamp_min>0.
        (account_filter(&sm, 1, NONE, 0, (3, 0), 10, DR_CR, false), vec![3, 4]),
        // Debits + credits, timestamp_max>0.
        (account_filter(&sm, 1, NONE, 0, (0, 2), 10, DR_CR, false), vec![1, 2]),
        // Debits + credits, 0 < timestamp_min ≤ timestamp_max.
        (account_filter(&sm, 1, NONE, 0, (2, 3), 10, DR_CR, false), vec![2, 3]),
        // Debits + credits, reverse-chronological.
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, true), vec![4, 3, 2, 1]),
        // Debits only.
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR, false), vec![1, 3]),
        // Credits only.
        (account_filter(&sm, 1, NONE, 0, ANY, 10, CR, false), vec![2, 4]),
        // Debits + credits + user_data_128, chronological.
        (account_filter(&sm, 1, (1001, 0, 0), 0, ANY, 10, DR_CR, false), vec![2, 4]),
        // Debits + credits + user_data_64, chronological.
        (account_filter(&sm, 1, (0, 10, 0), 0, ANY, 10, DR_CR, false), vec![1, 2]),
        // Debits + credits + user_data_32, chronological.
        (account_filter(&sm, 1, (0, 0, 1), 0, ANY, 10, DR_CR, false), vec![1, 4]),
        // Debits + credits + code, chronological.
        (account_filter(&sm, 1, NONE, 1, ANY, 10, DR_CR, false), vec![1, 3]),
        // Debits + credits + all filters, 0 < timestamp_min ≤ timestamp_max, chronological.
        (account_filter(&sm, 1, (1000, 10, 1), 1, (1, 3), 10, DR_CR, false), vec![1]),
        // Debits only + all filters.
        (account_filter(&sm, 1, (1000, 10, 1), 1, (1, 3), 10, DR, false), vec![1]),
        // Credits only + all filters.
        (account_filter(&sm, 2, (1000, 10, 1), 1, (1, 3), 10, CR, false), vec![1]),
        // Not found.
        (account_filter(&sm, 1, (1000, 20, 2), 2, ANY, 10, DR_CR, false), vec![]),
    ];
    for (filter, expected) in cases {
        assert_eq!(transfer_ids(sm.get_account_transfers(&filter)), expected, "{filter:?}");
    }
}

/// The two-phase table: accounts 1 and 2 with `history`, T1 pending 2, T2 posting 1 of it.
fn two_phase() -> StateMachine {
    let mut sm = sm();
    let history = |id| Account {
        flags: AccountFlags::HISTORY,
        ..account(id, 1, 1)
    };
    commit_accounts(&mut sm, &[(history(1), CreateAccountResult::Ok), (history(2), CreateAccountResult::Ok)]);
    let pending = Transfer {
        flags: TransferFlags::PENDING,
        ..transfer(1, 1, 2, 2, 1)
    };
    let post = Transfer {
        pending_id: 1,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..transfer(2, 1, 2, 1, 1)
    };
    commit_transfers(&mut sm, &[(pending, CreateTransferResult::Ok), (post, CreateTransferResult::Ok)]);
    sm
}

#[test]
fn get_account_transfers_two_phase_and_invalid_filters() {
    let sm = two_phase();
    let all = account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, false);
    assert_eq!(transfer_ids(sm.get_account_transfers(&all)), vec![1, 2]);
    let invalid = [
        // Invalid account.
        account_filter(&sm, 3, NONE, 0, ANY, 10, DR_CR, false),
        // Invalid filter flags.
        account_filter(&sm, 1, NONE, 0, ANY, 10, (false, false), false),
        // Invalid timestamp_min > timestamp_max.
        account_filter(&sm, 1, NONE, 0, (2, 1), 10, DR_CR, false),
        // Invalid limit.
        account_filter(&sm, 1, NONE, 0, ANY, 0, DR_CR, false),
        // Beyond TigerBeetle's: ids 0 and int max, timestamps past 2^63 - 1.
        AccountFilter { account_id: 0, ..all },
        AccountFilter { account_id: u128::MAX, ..all },
        AccountFilter { timestamp_min: TIMESTAMP_MAX + 1, ..all },
        AccountFilter { timestamp_max: u64::MAX, ..all },
    ];
    for filter in invalid {
        assert!(sm.get_account_transfers(&filter).is_empty(), "{filter:?}");
        assert!(sm.get_account_balances(&filter).is_empty(), "{filter:?}");
    }
    // Success.
    let code = account_filter(&sm, 1, NONE, 1, ANY, 10, DR_CR, false);
    assert_eq!(transfer_ids(sm.get_account_transfers(&code)), vec![1, 2]);
}

// --- get_account_balances ------------------------------------------------------------------

/// `get_account_balances_result T<id> <debits_pending> <debits_posted> <credits_pending>
/// <credits_posted>`
fn balances(sm: &StateMachine, filter: &AccountFilter) -> Vec<(u128, u128, u128, u128, u128)> {
    sm.get_account_balances(filter)
        .iter()
        .map(|b| {
            let id = sm.transfers().iter().find(|t| t.timestamp == b.timestamp).expect("a transfer's timestamp").id;
            (id, b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted)
        })
        .collect()
}

#[test]
fn get_account_balances_single_phase() {
    let sm = single_phase(true);
    let b1 = (1, 0, 10, 0, 0);
    let b2 = (2, 0, 10, 0, 11);
    let b3 = (3, 0, 22, 0, 11);
    let b4 = (4, 0, 22, 0, 24);
    let cases = vec![
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, false), vec![b1, b2, b3, b4]),
        (account_filter(&sm, 1, NONE, 0, ANY, 2, DR_CR, false), vec![b1, b2]),
        (account_filter(&sm, 1, NONE, 0, (3, 0), 10, DR_CR, false), vec![b3, b4]),
        (account_filter(&sm, 1, NONE, 0, (0, 2), 10, DR_CR, false), vec![b1, b2]),
        (account_filter(&sm, 1, NONE, 0, (2, 3), 10, DR_CR, false), vec![b2, b3]),
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, true), vec![b4, b3, b2, b1]),
        (account_filter(&sm, 1, NONE, 0, ANY, 10, DR, false), vec![b1, b3]),
        (account_filter(&sm, 1, NONE, 0, ANY, 10, CR, false), vec![b2, b4]),
        (account_filter(&sm, 1, (1001, 0, 0), 0, ANY, 10, DR_CR, false), vec![b2, b4]),
        (account_filter(&sm, 1, (0, 10, 0), 0, ANY, 10, DR_CR, false), vec![b1, b2]),
        (account_filter(&sm, 1, (0, 0, 1), 0, ANY, 10, DR_CR, false), vec![b1, b4]),
        (account_filter(&sm, 1, NONE, 1, ANY, 10, DR_CR, false), vec![b1, b3]),
        (account_filter(&sm, 1, (1000, 10, 1), 1, (1, 3), 10, DR_CR, false), vec![b1]),
        (account_filter(&sm, 1, (1000, 10, 1), 1, (1, 3), 10, DR, false), vec![b1]),
        (account_filter(&sm, 2, (1000, 10, 1), 1, (1, 3), 10, CR, false), vec![(1, 0, 0, 0, 10)]),
        (account_filter(&sm, 1, (1000, 20, 2), 2, ANY, 10, DR_CR, false), vec![]),
    ];
    for (filter, expected) in cases {
        assert_eq!(balances(&sm, &filter), expected, "{filter:?}");
    }
}

#[test]
fn get_account_balances_two_phase() {
    let sm = two_phase();
    let all = account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, false);
    assert_eq!(balances(&sm, &all), vec![(1, 2, 0, 0, 0), (2, 0, 1, 0, 0)]);
}

#[test]
fn get_account_balances_invalid_filter() {
    let mut sm = sm();
    commit_accounts(
        &mut sm,
        &[
            (Account { flags: AccountFlags::HISTORY, ..account(1, 1, 1) }, CreateAccountResult::Ok),
            (account(2, 1, 1), CreateAccountResult::Ok),
        ],
    );
    commit_transfers(
        &mut sm,
        &[
            (transfer(1, 1, 2, 2, 1), CreateTransferResult::Ok),
            (transfer(2, 1, 2, 1, 1), CreateTransferResult::Ok),
        ],
    );
    for filter in [
        // Invalid account.
        account_filter(&sm, 3, NONE, 0, ANY, 10, DR_CR, false),
        // Account without flags.history.
        account_filter(&sm, 2, NONE, 0, ANY, 10, DR_CR, false),
        // Invalid filter flags.
        account_filter(&sm, 1, NONE, 0, ANY, 10, (false, false), false),
        // Invalid timestamp_min > timestamp_max.
        account_filter(&sm, 1, NONE, 0, (2, 1), 10, DR_CR, false),
        // Invalid limit.
        account_filter(&sm, 1, NONE, 0, ANY, 0, DR_CR, false),
    ] {
        assert!(sm.get_account_balances(&filter).is_empty(), "{filter:?}");
    }
    // Success.
    let code = account_filter(&sm, 1, NONE, 1, ANY, 10, DR_CR, false);
    assert_eq!(balances(&sm, &code), vec![(1, 0, 2, 0, 0), (2, 0, 3, 0, 0)]);
    // The account without history still has its transfers.
    let other = account_filter(&sm, 2, NONE, 0, ANY, 10, DR_CR, false);
    assert_eq!(transfer_ids(sm.get_account_transfers(&other)), vec![1, 2]);
}

/// TigerBeetle 0.16.78 answers get_account_balances from the transfers' indexes: an expiry
/// (not a transfer) has no entry, and a rolled-back chain leaves none.
#[test]
fn balances_are_recorded_per_transfer_only() {
    let mut sm = sm();
    let history = |id| Account {
        flags: AccountFlags::HISTORY,
        ..account(id, 1, 1)
    };
    assert!(sm.create_accounts(1_000, &[history(1), history(2)]).iter().all(|r| *r == CreateAccountResult::Ok));
    let pending = Transfer {
        flags: TransferFlags::PENDING,
        timeout: 1,
        ..transfer(1, 1, 2, 5, 1)
    };
    assert_eq!(sm.create_transfers(2_000, &[pending]), vec![CreateTransferResult::Ok]);
    // A failed chain: nothing recorded.
    let linked = Transfer {
        flags: TransferFlags::LINKED,
        ..transfer(2, 1, 2, 1, 1)
    };
    assert_eq!(
        sm.create_transfers(3_000, &[linked, transfer(3, 1, 9, 1, 1)]),
        vec![CreateTransferResult::LinkedEventFailed, CreateTransferResult::CreditAccountNotFound]
    );
    // The pending transfer expires in the next batch, before transfer 4.
    let later = 2_000 + 2_000_000_000;
    assert_eq!(sm.create_transfers(later, &[transfer(4, 1, 2, 1, 1)]), vec![CreateTransferResult::Ok]);
    assert_eq!(sm.pending_status(1), Some(PendingStatus::Expired));
    let all = account_filter(&sm, 1, NONE, 0, ANY, 10, DR_CR, false);
    assert_eq!(balances(&sm, &all), vec![(1, 5, 0, 0, 0), (4, 0, 1, 0, 0)]);
    assert_eq!(lookup_account(&sm, 1), (0, 1, 0, 0));
}

// --- query_accounts / query_transfers ----------------------------------------------------------

/// `query_accounts U<ud128> U<ud64> U<ud32> L<ledger> C<code> <tmin> <tmax> L<limit> <REV>`;
/// `L-0` (the largest limit) is `u32::MAX` here.
#[allow(clippy::too_many_arguments)]
fn query(
    user_data: (u128, u64, u32),
    ledger: u32,
    code: u16,
    (timestamp_min, timestamp_max): (u64, u64),
    limit: u32,
    reversed: bool,
) -> QueryFilter {
    QueryFilter {
        user_data_128: user_data.0,
        user_data_64: user_data.1,
        user_data_32: user_data.2,
        ledger,
        code,
        timestamp_min,
        timestamp_max,
        limit,
        reversed,
    }
}

const L_MAX: u32 = u32::MAX;

#[test]
fn query_accounts() {
    let mut sm = sm();
    let a = |id, ud128, ud64, ud32, ledger, code| Account {
        user_data_128: ud128,
        user_data_64: ud64,
        user_data_32: ud32,
        ..account(id, ledger, code)
    };
    let rows = [
        a(1, 1000, 10, 1, 1, 1),
        a(2, 1000, 11, 2, 2, 2),
        a(3, 1000, 10, 3, 3, 3),
        a(4, 1000, 11, 4, 4, 4),
        a(5, 2000, 10, 1, 3, 5),
        a(6, 2000, 11, 2, 2, 6),
        a(7, 2000, 10, 3, 1, 7),
        a(8, 1000, 10, 1, 1, 1),
    ];
    commit_accounts(&mut sm, &rows.map(|a| (a, CreateAccountResult::Ok)));
    let t = |id| account_ts(&sm, id);
    let ids = |filter: QueryFilter| sm.query_accounts(&filter).iter().map(|a| a.id).collect::<Vec<_>>();
    let cases: Vec<(QueryFilter, Vec<u128>)> = vec![
        // WHERE user_data_128=1000:
        (query((1000, 0, 0), 0, 0, (0, 0), L_MAX, false), vec![1, 2, 3, 4, 8]),
        // WHERE user_data_128=1000 ORDER BY DESC:
        (query((1000, 0, 0), 0, 0, (0, 0), L_MAX, true), vec![8, 4, 3, 2, 1]),
        // WHERE user_data_64=10 AND user_data_32=3
        (query((0, 10, 3), 0, 0, (0, 0), L_MAX, false), vec![3, 7]),
        (query((0, 10, 3), 0, 0, (0, 0), L_MAX, true), vec![7, 3]),
        // WHERE user_data_64=11 AND user_data_32=2 AND ledger=2:
        (query((0, 11, 2), 2, 0, (0, 0), L_MAX, false), vec![2, 6]),
        (query((0, 11, 2), 2, 0, (0, 0), L_MAX, true), vec![6, 2]),
        // WHERE user_data_128=1000 AND user_data_64=10 AND user_data_32=1 AND ledger=1 AND code=1:
        (query((1000, 10, 1), 1, 1, (0, 0), L_MAX, false), vec![1, 8]),
        (query((1000, 10, 1), 1, 1, (0, 0), L_MAX, true), vec![8, 1]),
        // WHERE user_data_128=1000 AND timestamp >= A3.timestamp:
        (query((1000, 0, 0), 0, 0, (t(3), 0), L_MAX, false), vec![3, 4, 8]),
        // WHERE user_data_128=1000 AND timestamp <= A3.timestamp:
        (query((1000, 0, 0), 0, 0, (0, t(3)), L_MAX, false), vec![1, 2, 3]),
        // WHERE user_data_128=1000 AND timestamp BETWEEN A2.timestamp AND A4.timestamp:
        (query((1000, 0, 0), 0, 0, (t(2), t(4)), L_MAX, false), vec![2, 3, 4]),
        // SELECT *:
        (query(NONE, 0, 0, (0, 0), L_MAX, false), (1..=8).collect()),
        (query(NONE, 0, 0, (0, 0), L_MAX, true), (1..=8).rev().collect()),
        // SELECT * WHERE timestamp >= A2.timestamp LIMIT 3:
        (query(NONE, 0, 0, (t(2), 0), 3, false), vec![2, 3, 4]),
        // SELECT * LIMIT 1:
        (query(NONE, 0, 0, (0, 0), 1, false), vec![1]),
        (query(NONE, 0, 0, (0, 0), 1, true), vec![8]),
        // NOT FOUND: LIMIT 0; user_data_128=3000; user_data_128=1000 AND code=5; all five
        // with code=2; user_data_128=1000 BETWEEN A5 AND A7.
        (query(NONE, 0, 0, (0, 0), 0, false), vec![]),
        (query((3000, 0, 0), 0, 0, (0, 0), L_MAX, false), vec![]),
        (query((1000, 0, 0), 0, 5, (0, 0), L_MAX, false), vec![]),
        (query((1000, 10, 1), 1, 2, (0, 0), L_MAX, false), vec![]),
        (query((1000, 0, 0), 0, 0, (t(5), t(7)), L_MAX, false), vec![]),
        // Beyond TigerBeetle's table: invalid ranges return nothing.
        (query(NONE, 0, 0, (t(4), t(3)), L_MAX, false), vec![]),
        (query(NONE, 0, 0, (TIMESTAMP_MAX + 1, 0), L_MAX, false), vec![]),
    ];
    for (filter, expected) in cases {
        assert_eq!(ids(filter), expected, "{filter:?}");
    }
}

#[test]
fn query_transfers() {
    let mut sm = sm();
    commit_accounts(
        &mut sm,
        &[
            (account(1, 1, 1), CreateAccountResult::Ok),
            (account(2, 1, 1), CreateAccountResult::Ok),
            (account(3, 2, 1), CreateAccountResult::Ok),
            (account(4, 2, 1), CreateAccountResult::Ok),
        ],
    );
    let t = |id, dr, cr, amount, ud128, ud64, ud32, ledger, code| Transfer {
        ledger,
        ..with_user_data(transfer(id, dr, cr, amount, code), ud128, ud64, ud32)
    };
    let rows = [
        t(1, 1, 2, 0, 1000, 10, 1, 1, 1),
        t(2, 3, 4, 11, 1000, 11, 2, 2, 2),
        t(3, 2, 1, 12, 1000, 10, 3, 1, 3),
        t(4, 4, 3, 13, 1000, 11, 4, 2, 4),
        t(5, 2, 1, 14, 2000, 10, 1, 1, 5),
        t(6, 4, 3, 15, 2000, 11, 2, 2, 6),
        t(7, 1, 2, 16, 2000, 10, 3, 1, 7),
        t(8, 2, 1, 17, 1000, 10, 1, 1, 1),
    ];
    commit_transfers(&mut sm, &rows.map(|t| (t, CreateTransferResult::Ok)));
    let at = |id| ts(&sm, id);
    let ids = |filter: QueryFilter| transfer_ids(sm.query_transfers(&filter));
    let cases: Vec<(QueryFilter, Vec<u128>)> = vec![
        (query((1000, 0, 0), 0, 0, (0, 0), L_MAX, false), vec![1, 2, 3, 4, 8]),
        (query((1000, 0, 0), 0, 0, (0, 0), L_MAX, true), vec![8, 4, 3, 2, 1]),
        (query((0, 10, 3), 0, 0, (0, 0), L_MAX, false), vec![3, 7]),
        (query((0, 10, 3), 0, 0, (0, 0), L_MAX, true), vec![7, 3]),
        (query((0, 11, 2), 2, 0, (0, 0), L_MAX, false), vec![2, 6]),
        (query((0, 11, 2), 2, 0, (0, 0), L_MAX, true), vec![6, 2]),
        (query((1000, 10, 1), 1, 1, (0, 0), L_MAX, false), vec![1, 8]),
        (query((1000, 10, 1), 1, 1, (0, 0), L_MAX, true), vec![8, 1]),
        (query((1000, 0, 0), 0, 0, (at(3), 0), L_MAX, false), vec![3, 4, 8]),
        (query((1000, 0, 0), 0, 0, (0, at(3)), L_MAX, false), vec![1, 2, 3]),
        (query((1000, 0, 0), 0, 0, (at(2), at(4)), L_MAX, false), vec![2, 3, 4]),
        (query(NONE, 0, 0, (0, 0), L_MAX, false), (1..=8).collect()),
        (query(NONE, 0, 0, (0, 0), L_MAX, true), (1..=8).rev().collect()),
        (query(NONE, 0, 0, (at(2), 0), 3, false), vec![2, 3, 4]),
        (query(NONE, 0, 0, (0, 0), 1, false), vec![1]),
        (query(NONE, 0, 0, (0, 0), 1, true), vec![8]),
        (query(NONE, 0, 0, (0, 0), 0, false), vec![]),
        (query((3000, 0, 0), 0, 0, (0, 0), L_MAX, false), vec![]),
        (query((1000, 0, 0), 0, 5, (0, 0), L_MAX, false), vec![]),
        (query((1000, 10, 1), 1, 2, (0, 0), L_MAX, false), vec![]),
        (query((1000, 0, 0), 0, 0, (at(5), at(7)), L_MAX, false), vec![]),
    ];
    for (filter, expected) in cases {
        assert_eq!(ids(filter), expected, "{filter:?}");
    }
}

// --- Bounded pages --------------------------------------------------------------------------

/// A SplitMix64 step, for reproducible data without an rng crate.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Follows `resume_after` from page to page as the HTTP layer's `Link` does, and returns the
/// concatenation, checking each page's bounds on the way.
fn follow<T: Clone, F: Copy>(
    first: F,
    limit: usize,
    mut page: impl FnMut(&F) -> QueryPage<T>,
    mut resume: impl FnMut(&F, u64) -> F,
) -> Vec<T> {
    let mut all = Vec::new();
    let mut filter = first;
    for _ in 0..100_000 {
        let p = page(&filter);
        assert!(p.rows.len() <= limit);
        all.extend(p.rows);
        match p.resume_after {
            None => return all,
            Some(after) => filter = resume(&filter, after),
        }
    }
    panic!("paging does not end");
}

fn resumed(min: &mut u64, max: &mut u64, reversed: bool, after: u64) {
    if reversed {
        *max = after - 1;
        assert!(*max > 0);
    } else {
        *min = after + 1;
    }
}

/// For many filters, page sizes and scan budgets (1 included: a page that examines one
/// transfer at a time still makes progress), following the pages returns exactly the
/// unbounded (TigerBeetle) result, in order.
#[test]
fn bounded_pages_followed_to_the_end_return_the_whole_result() {
    let mut sm = sm();
    let accounts: Vec<Account> = (1..=6)
        .map(|id| Account {
            flags: AccountFlags::HISTORY,
            user_data_32: (id % 2) as u32,
            ..account(id, 1, 1 + (id % 3) as u16)
        })
        .collect();
    assert!(sm.create_accounts(100, &accounts).iter().all(|r| *r == CreateAccountResult::Ok));
    let mut rng = 42;
    for batch in 0..4u64 {
        let events: Vec<Transfer> = (0..100u64)
            .map(|i| {
                let r = splitmix(&mut rng);
                let dr = 1 + (r % 6) as u128;
                let cr = 1 + (dr % 6);
                with_user_data(
                    transfer((batch * 100 + i + 1) as u128, dr, cr, 1, 1 + (r >> 8) as u16 % 3),
                    (r >> 16) as u128 % 3,
                    (r >> 24) % 2,
                    (r >> 32) as u32 % 2,
                )
            })
            .collect();
        assert!(sm.create_transfers(1_000 * (batch + 1), &events).iter().all(|r| *r == CreateTransferResult::Ok));
    }
    let budgets = [1, 2, 7, 64, usize::MAX];
    let limits = [1u32, 3, 50, 8189];
    let mut checked = 0;
    for reversed in [false, true] {
        for user_data_128 in [0, 1, 2] {
            for code in [0, 2] {
                for &limit in &limits {
                    let q = QueryFilter { user_data_128, code, limit: u32::MAX, reversed, ..Default::default() };
                    let want = sm.query_transfers(&q);
                    let qa = QueryFilter { user_data_32: (user_data_128 % 2) as u32, ..q };
                    let want_accounts = sm.query_accounts(&qa);
                    let a = AccountFilter {
                        account_id: 1 + user_data_128,
                        user_data_128,
                        code,
                        limit: u32::MAX,
                        debits: true,
                        credits: code != 2,
                        reversed,
                        ..Default::default()
                    };
                    let want_account = sm.get_account_transfers(&a);
                    let want_balances = sm.get_account_balances(&a);
                    assert_eq!(want_balances.len(), want_account.len());
                    for &budget in &budgets {
                        let got = follow(
                            QueryFilter { limit, ..q },
                            limit as usize,
                            |f| sm.query_transfers_page(f, budget),
                            |f, after| {
                                let mut f = *f;
                                resumed(&mut f.timestamp_min, &mut f.timestamp_max, reversed, after);
                                f
                            },
                        );
                        assert_eq!(got, want, "query_transfers {q:?} limit {limit} budget {budget}");
                        let got = follow(
                            QueryFilter { limit, ..qa },
                            limit as usize,
                            |f| sm.query_accounts_page(f, budget),
                            |f, after| {
                                let mut f = *f;
                                resumed(&mut f.timestamp_min, &mut f.timestamp_max, reversed, after);
                                f
                            },
                        );
                        assert_eq!(got, want_accounts, "query_accounts {qa:?} limit {limit} budget {budget}");
                        let resume_account = |f: &AccountFilter, after: u64| {
                            let mut f = *f;
                            resumed(&mut f.timestamp_min, &mut f.timestamp_max, reversed, after);
                            f
                        };
                        let got = follow(
                            AccountFilter { limit, ..a },
                            limit as usize,
                            |f| sm.get_account_transfers_page(f, budget),
                            resume_account,
                        );
                        assert_eq!(got, want_account, "get_account_transfers {a:?} limit {limit} budget {budget}");
                        let got = follow(
                            AccountFilter { limit, ..a },
                            limit as usize,
                            |f| sm.get_account_balances_page(f, budget),
                            resume_account,
                        );
                        assert_eq!(got, want_balances, "get_account_balances {a:?} limit {limit} budget {budget}");
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 2 * 3 * 2 * limits.len() * budgets.len());
    // The unbounded results are not trivially empty.
    assert!(sm.query_transfers(&QueryFilter { user_data_128: 1, code: 2, limit: 8189, ..Default::default() }).len() > 10);
}

/// A page stops after `scan_rows_max` examined objects even when it found nothing, and says
/// where to resume; a page that reaches the limit with nothing left after it says it is complete.
#[test]
fn a_page_stops_at_its_scan_budget() {
    let mut sm = sm();
    commit_accounts(&mut sm, &[(account(1, 1, 1), CreateAccountResult::Ok), (account(2, 1, 1), CreateAccountResult::Ok)]);
    let events: Vec<Transfer> = (1..=10).map(|id| transfer(id, 1, 2, 1, if id == 10 { 7 } else { 1 })).collect();
    assert!(sm.create_transfers(TICK, &events).iter().all(|r| *r == CreateTransferResult::Ok));
    let filter = QueryFilter { code: 7, limit: 10, ..Default::default() };
    let page = sm.query_transfers_page(&filter, 4);
    assert!(page.rows.is_empty());
    assert_eq!(page.resume_after, Some(ts(&sm, 4)));
    let page = sm.query_transfers_page(&filter, 10);
    assert_eq!(transfer_ids(page.rows), vec![10]);
    assert_eq!(page.resume_after, None);
    let exact = QueryFilter { limit: 10, ..Default::default() };
    assert_eq!(sm.query_transfers_page(&exact, usize::MAX).resume_after, None);
    let short = QueryFilter { limit: 9, ..Default::default() };
    assert_eq!(sm.query_transfers_page(&short, usize::MAX).resume_after, Some(ts(&sm, 9)));
}

// --- Imported events through the WAL ---------------------------------------------------------

/// Imported events carry their timestamps in the WAL record's 128-byte events (the flag and
/// the timestamp field), so recovery replays them to the same state; a checkpoint keeps them
/// too.
#[test]
fn imported_events_survive_recovery_and_checkpoints() {
    let config = LedgerConfig {
        id_hash_key: Some(IdHashKey::new([1, 1, 2, 3])),
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::open(SimStorage::new(), config.clone()).unwrap();
    let now = 5_000_000;
    let accounts = vec![
        Account { flags: AccountFlags::IMPORTED | AccountFlags::HISTORY, ..imported_account(1, 10) },
        imported_account(2, 20),
    ];
    ledger.submit(now, &[Operation::CreateAccounts(accounts)]).unwrap();
    let transfers = vec![imported(transfer(1, 1, 2, 5, 1), 30), imported(transfer(2, 2, 1, 2, 1), 40)];
    let replies = ledger.submit(now, &[Operation::CreateTransfers(transfers)]).unwrap();
    assert_eq!(replies, vec![OperationReply::CreateTransfers(vec![CreateTransferResult::Ok; 2])]);
    ledger.submit(now + 1, &[Operation::CreateTransfers(vec![transfer(3, 1, 2, 1, 1)])]).unwrap();
    let hash = ledger.state().state_hash();
    // A crash: every acknowledged (synced) batch is on the disk, and only those.
    let mut recovered = Ledger::open(ledger.into_storage().crash(&mut SimRng::new(1)), config.clone()).unwrap();
    assert_eq!(recovered.state().state_hash(), hash);
    assert_eq!(recovered.state().lookup_transfer(2).unwrap().timestamp, 40);
    recovered.checkpoint().unwrap();
    let from_checkpoint = Ledger::open(recovered.into_storage().crash(&mut SimRng::new(2)), config).unwrap();
    assert_eq!(from_checkpoint.state().state_hash(), hash);
    let filter = AccountFilter { account_id: 1, limit: 10, debits: true, credits: true, ..Default::default() };
    let history: Vec<u64> = from_checkpoint.state().get_account_balances(&filter).iter().map(|b| b.timestamp).collect();
    assert_eq!(history[..2], [30, 40]);
}
