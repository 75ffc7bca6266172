//! Unit tests of the state machine: every result status it can return (checked for
//! coverage at the end of each table), every flag-compatibility rule, and the semantics of
//! linked chains, two-phase transfers, expiry, balancing, closing, timestamps and queries.

use std::collections::HashSet;

use ledger_svc::state_machine::TIMESTAMP_MAX;
use ledger_svc::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;
const H: u128 = 1 << 127;

fn account(id: u128) -> Account {
    Account {
        id,
        ledger: 1,
        code: 10,
        ..Default::default()
    }
}

fn account_with(id: u128, flags: AccountFlags) -> Account {
    Account {
        flags,
        ..account(id)
    }
}

fn transfer(id: u128, dr: u128, cr: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: dr,
        credit_account_id: cr,
        amount,
        ledger: 1,
        code: 1,
        ..Default::default()
    }
}

fn pending(id: u128, dr: u128, cr: u128, amount: u128, timeout: u32) -> Transfer {
    Transfer {
        flags: TransferFlags::PENDING,
        timeout,
        ..transfer(id, dr, cr, amount)
    }
}

fn post(id: u128, pending_id: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount,
        flags: TransferFlags::POST_PENDING_TRANSFER,
        ..Default::default()
    }
}

fn void(id: u128, pending_id: u128) -> Transfer {
    Transfer {
        id,
        pending_id,
        flags: TransferFlags::VOID_PENDING_TRANSFER,
        ..Default::default()
    }
}

struct Fixture {
    sm: StateMachine,
    now: u64,
    seen: HashSet<CreateTransferResult>,
}

impl Fixture {
    /// Accounts: 1, 2 plain; 3 debits_must_not_exceed_credits; 4 credits_must_not_exceed_debits;
    /// 5, 6 on ledger 2; 8 history; 9 plain (closing tests); 20..=31 plain (overflow tests).
    fn new() -> Self {
        let mut sm = StateMachine::new();
        let mut accounts = vec![
            account(1),
            account(2),
            account_with(3, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
            account_with(4, AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS),
            Account {
                ledger: 2,
                ..account(5)
            },
            Account {
                ledger: 2,
                ..account(6)
            },
            account_with(8, AccountFlags::HISTORY),
            account(9),
        ];
        accounts.extend((20..=31).map(account));
        let results = sm.create_accounts(NOW, &accounts);
        assert!(
            results.iter().all(|r| *r == CreateAccountResult::Ok),
            "{results:?}"
        );
        Fixture {
            sm,
            now: NOW,
            seen: HashSet::new(),
        }
    }

    fn batch(&mut self, events: &[Transfer]) -> Vec<CreateTransferResult> {
        self.now += 1000;
        let results = self.sm.create_transfers(self.now, events);
        self.seen.extend(results.iter().copied());
        results
    }

    fn one(&mut self, event: Transfer) -> CreateTransferResult {
        let results = self.batch(&[event]);
        assert_eq!(results.len(), 1);
        results[0]
    }

    fn expect(&mut self, event: Transfer, expected: CreateTransferResult) {
        assert_eq!(self.one(event), expected, "event {event:?}");
    }

    fn balances(&self, id: u128) -> (u128, u128, u128, u128) {
        let a = self.sm.lookup_account(id).expect("account exists");
        (
            a.debits_pending,
            a.debits_posted,
            a.credits_pending,
            a.credits_posted,
        )
    }
}

/// Every CreateTransferResult, each produced by the smallest event that triggers it.
#[test]
fn every_transfer_status() {
    use CreateTransferResult as R;
    let mut f = Fixture::new();

    f.expect(transfer(100, 1, 2, 10), R::Ok);
    // Linked chains: a failure fails the whole chain; a chain left open fails.
    let linked = |t: Transfer| Transfer {
        flags: t.flags | TransferFlags::LINKED,
        ..t
    };
    assert_eq!(
        f.batch(&[linked(transfer(101, 1, 2, 1)), transfer(102, 1, 77, 1)]),
        vec![R::LinkedEventFailed, R::CreditAccountNotFound]
    );
    assert_eq!(
        f.batch(&[linked(transfer(103, 1, 2, 1))]),
        vec![R::LinkedEventChainOpen]
    );
    assert_eq!(
        f.batch(&[
            linked(transfer(104, 1, 2, 1)),
            linked(transfer(105, 1, 2, 1))
        ]),
        vec![R::LinkedEventFailed, R::LinkedEventChainOpen]
    );
    f.expect(
        Transfer {
            timestamp: 5,
            ..transfer(110, 1, 2, 1)
        },
        R::TimestampMustBeZero,
    );
    f.expect(
        Transfer {
            flags: TransferFlags::from_bits_retain(1 << 9),
            ..transfer(111, 1, 2, 1)
        },
        R::ReservedFlag,
    );

    // Imported events (TigerBeetle 0.16 `flags.imported`; their rules in full are in
    // tests/ledger_queries.rs). A batch at `f.now + 1000` has that as its own timestamp.
    let imported = |t: Transfer, timestamp: u64| Transfer {
        flags: t.flags | TransferFlags::IMPORTED,
        timestamp,
        ..t
    };
    let past = f.now + 500;
    assert_eq!(
        f.batch(&[imported(transfer(120, 1, 2, 1), past), transfer(121, 1, 2, 1)]),
        vec![R::Ok, R::ImportedEventExpected]
    );
    let past = f.now + 500;
    assert_eq!(
        f.batch(&[transfer(122, 1, 2, 1), imported(transfer(123, 1, 2, 1), past)]),
        vec![R::Ok, R::ImportedEventNotExpected]
    );
    f.expect(imported(transfer(124, 1, 2, 1), 0), R::ImportedEventTimestampOutOfRange);
    f.expect(imported(transfer(124, 1, 2, 1), 1 << 63), R::ImportedEventTimestampOutOfRange);
    let now = f.now + 1000;
    f.expect(imported(transfer(124, 1, 2, 1), now), R::ImportedEventTimestampMustNotAdvance);
    let last = f.sm.lookup_transfer(122).unwrap().timestamp;
    f.expect(imported(transfer(124, 1, 2, 1), last), R::ImportedEventTimestampMustNotRegress);
    let past = f.now + 500;
    f.expect(imported(pending(124, 1, 2, 1, 5), past), R::ImportedEventTimeoutMustBeZero);
    f.now += 1000;
    assert_eq!(f.sm.create_accounts(f.now, &[account(40)]), vec![CreateAccountResult::Ok]);
    let before_account = f.sm.lookup_account(40).unwrap().timestamp - 1;
    f.expect(
        imported(transfer(124, 40, 1, 1), before_account),
        R::ImportedEventTimestampMustPostdateDebitAccount,
    );
    f.expect(
        imported(transfer(124, 1, 40, 1), before_account),
        R::ImportedEventTimestampMustPostdateCreditAccount,
    );
    f.expect(transfer(0, 1, 2, 1), R::IdMustNotBeZero);
    f.expect(transfer(u128::MAX, 1, 2, 1), R::IdMustNotBeIntMax);

    // The exists family, against transfer 200.
    let original = Transfer {
        user_data_128: 7,
        user_data_64: 8,
        user_data_32: 9,
        ..transfer(200, 1, 2, 10)
    };
    f.expect(original, R::Ok);
    f.expect(
        Transfer {
            flags: TransferFlags::PENDING,
            ..original
        },
        R::ExistsWithDifferentFlags,
    );
    f.expect(
        Transfer {
            pending_id: 7,
            ..original
        },
        R::ExistsWithDifferentPendingId,
    );
    f.expect(
        Transfer {
            timeout: 5,
            ..original
        },
        R::ExistsWithDifferentTimeout,
    );
    f.expect(
        Transfer {
            debit_account_id: 3,
            ..original
        },
        R::ExistsWithDifferentDebitAccountId,
    );
    f.expect(
        Transfer {
            credit_account_id: 3,
            ..original
        },
        R::ExistsWithDifferentCreditAccountId,
    );
    f.expect(
        Transfer {
            amount: 11,
            ..original
        },
        R::ExistsWithDifferentAmount,
    );
    f.expect(
        Transfer {
            user_data_128: 0,
            ..original
        },
        R::ExistsWithDifferentUserData128,
    );
    f.expect(
        Transfer {
            user_data_64: 0,
            ..original
        },
        R::ExistsWithDifferentUserData64,
    );
    f.expect(
        Transfer {
            user_data_32: 0,
            ..original
        },
        R::ExistsWithDifferentUserData32,
    );
    f.expect(
        Transfer {
            ledger: 2,
            ..original
        },
        R::ExistsWithDifferentLedger,
    );
    f.expect(
        Transfer {
            code: 2,
            ..original
        },
        R::ExistsWithDifferentCode,
    );
    f.expect(original, R::Exists);
    // Precedence: exists checks come before validation of the other fields.
    f.expect(
        Transfer {
            debit_account_id: 0,
            ..original
        },
        R::ExistsWithDifferentDebitAccountId,
    );

    // A transient failure burns the id.
    f.expect(transfer(201, 1, 77, 1), R::CreditAccountNotFound);
    f.expect(transfer(201, 1, 2, 1), R::IdAlreadyFailed);
    // A non-transient failure does not.
    f.expect(
        transfer(202, 1, 2, 1).clone_with_code(0),
        R::CodeMustNotBeZero,
    );
    f.expect(transfer(202, 1, 2, 1), R::Ok);

    f.expect(
        Transfer {
            flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER,
            ..post(300, 210, 1)
        },
        R::FlagsAreMutuallyExclusive,
    );
    f.expect(transfer(301, 0, 2, 1), R::DebitAccountIdMustNotBeZero);
    f.expect(
        transfer(302, u128::MAX, 2, 1),
        R::DebitAccountIdMustNotBeIntMax,
    );
    f.expect(transfer(303, 1, 0, 1), R::CreditAccountIdMustNotBeZero);
    f.expect(
        transfer(304, 1, u128::MAX, 1),
        R::CreditAccountIdMustNotBeIntMax,
    );
    f.expect(transfer(305, 1, 1, 1), R::AccountsMustBeDifferent);
    f.expect(
        Transfer {
            pending_id: 5,
            ..transfer(306, 1, 2, 1)
        },
        R::PendingIdMustBeZero,
    );
    f.expect(post(307, 0, 1), R::PendingIdMustNotBeZero);
    f.expect(post(308, u128::MAX, 1), R::PendingIdMustNotBeIntMax);
    f.expect(post(309, 309, 1), R::PendingIdMustBeDifferent);
    f.expect(
        Transfer {
            timeout: 1,
            ..transfer(310, 1, 2, 1)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    f.expect(
        Transfer {
            flags: TransferFlags::CLOSING_DEBIT,
            ..transfer(311, 1, 2, 1)
        },
        R::ClosingTransferMustBePending,
    );
    f.expect(
        Transfer {
            ledger: 0,
            ..transfer(312, 1, 2, 1)
        },
        R::LedgerMustNotBeZero,
    );
    f.expect(
        transfer(313, 1, 2, 1).clone_with_code(0),
        R::CodeMustNotBeZero,
    );
    f.expect(transfer(314, 77, 2, 1), R::DebitAccountNotFound);
    f.expect(transfer(315, 1, 77, 1), R::CreditAccountNotFound);
    f.expect(transfer(316, 1, 5, 1), R::AccountsMustHaveTheSameLedger);
    f.expect(
        transfer(317, 5, 6, 1),
        R::TransferMustHaveTheSameLedgerAsAccounts,
    );

    // Two-phase: pending 210 (50 from 1 to 2).
    f.expect(pending(210, 1, 2, 50, 0), R::Ok);
    f.expect(post(320, 999, 1), R::PendingTransferNotFound);
    f.expect(post(321, 200, 1), R::PendingTransferNotPending);
    f.expect(
        Transfer {
            debit_account_id: 3,
            ..post(322, 210, 1)
        },
        R::PendingTransferHasDifferentDebitAccountId,
    );
    f.expect(
        Transfer {
            credit_account_id: 3,
            ..post(323, 210, 1)
        },
        R::PendingTransferHasDifferentCreditAccountId,
    );
    f.expect(
        Transfer {
            ledger: 2,
            ..post(324, 210, 1)
        },
        R::PendingTransferHasDifferentLedger,
    );
    f.expect(
        Transfer {
            code: 9,
            ..post(325, 210, 1)
        },
        R::PendingTransferHasDifferentCode,
    );
    f.expect(post(326, 210, 51), R::ExceedsPendingTransferAmount);
    f.expect(
        Transfer {
            amount: 49,
            ..void(327, 210)
        },
        R::PendingTransferHasDifferentAmount,
    );
    f.expect(post(328, 210, 20), R::Ok);
    f.expect(post(329, 210, 20), R::PendingTransferAlreadyPosted);
    f.expect(pending(211, 1, 2, 5, 0), R::Ok);
    f.expect(void(330, 211), R::Ok);
    f.expect(post(331, 211, 5), R::PendingTransferAlreadyVoided);
    f.expect(pending(212, 1, 2, 5, 1), R::Ok);
    f.now += 2 * S; // the next batch sweeps 212's expiry
    f.expect(post(332, 212, 5), R::PendingTransferExpired);

    // Closing: a pending closing_debit closes 9.
    f.expect(
        Transfer {
            flags: TransferFlags::PENDING | TransferFlags::CLOSING_DEBIT,
            ..transfer(213, 9, 1, 0)
        },
        R::Ok,
    );
    f.expect(transfer(333, 9, 1, 1), R::DebitAccountAlreadyClosed);
    f.expect(transfer(334, 1, 9, 1), R::CreditAccountAlreadyClosed);

    // Overflows, on accounts 20..=31.
    f.expect(pending(400, 20, 21, u128::MAX, 0), R::Ok);
    f.expect(pending(401, 20, 22, 1, 0), R::OverflowsDebitsPending);
    f.expect(pending(402, 23, 21, 1, 0), R::OverflowsCreditsPending);
    f.expect(transfer(403, 24, 25, u128::MAX), R::Ok);
    f.expect(transfer(404, 24, 26, 1), R::OverflowsDebitsPosted);
    f.expect(transfer(405, 27, 25, 1), R::OverflowsCreditsPosted);
    f.expect(pending(406, 28, 29, H, 0), R::Ok);
    f.expect(transfer(407, 28, 30, H), R::OverflowsDebits);
    f.expect(transfer(408, 31, 29, H), R::OverflowsCredits);

    f.expect(transfer(409, 3, 1, 1), R::ExceedsCredits);
    f.expect(transfer(410, 1, 4, 1), R::ExceedsDebits);

    // overflows_timeout needs a clock near the end of the timestamp range.
    let before = f.now;
    f.now = TIMESTAMP_MAX - 10 * S;
    f.expect(pending(411, 1, 2, 1, 100), R::OverflowsTimeout);
    f.expect(pending(412, 1, 2, 1, 5), R::Ok);
    assert!(f.now > before);

    let missing: Vec<_> = R::ALL.iter().filter(|r| !f.seen.contains(r)).collect();
    assert!(missing.is_empty(), "statuses never produced: {missing:?}");
}

trait WithCode {
    fn clone_with_code(self, code: u16) -> Self;
}
impl WithCode for Transfer {
    fn clone_with_code(self, code: u16) -> Self {
        Transfer { code, ..self }
    }
}

/// Every CreateAccountResult.
#[test]
fn every_account_status() {
    use CreateAccountResult as R;
    let mut sm = StateMachine::new();
    let mut seen = HashSet::new();
    let mut now = NOW;
    let mut run = |sm: &mut StateMachine, events: &[Account]| {
        now += 1000;
        let results = sm.create_accounts(now, events);
        seen.extend(results.iter().copied());
        results
    };
    let linked = |a: Account| Account {
        flags: a.flags | AccountFlags::LINKED,
        ..a
    };
    let original = Account {
        user_data_128: 1,
        user_data_64: 2,
        user_data_32: 3,
        ..account(1)
    };
    assert_eq!(run(&mut sm, &[original]), vec![R::Ok]);
    assert_eq!(
        run(&mut sm, &[linked(account(2)), account(0)]),
        vec![R::LinkedEventFailed, R::IdMustNotBeZero]
    );
    assert!(
        sm.lookup_account(2).is_none(),
        "the failed chain was rolled back"
    );
    assert_eq!(
        run(&mut sm, &[account(3), linked(account(4))]),
        vec![R::Ok, R::LinkedEventChainOpen]
    );
    assert!(sm.lookup_account(4).is_none());
    // Imported events (their rules in full are in tests/ledger_queries.rs).
    let imported = |a: Account, timestamp: u64| Account {
        flags: a.flags | AccountFlags::IMPORTED,
        timestamp,
        ..a
    };
    let past = sm.timestamp() + 1;
    assert_eq!(
        run(&mut sm, &[imported(account(50), past), account(51)]),
        vec![R::Ok, R::ImportedEventExpected]
    );
    let past = sm.timestamp() + 1;
    assert_eq!(
        run(&mut sm, &[account(52), imported(account(53), past)]),
        vec![R::Ok, R::ImportedEventNotExpected]
    );
    let cases: Vec<(Account, R)> = vec![
        (imported(account(54), 0), R::ImportedEventTimestampOutOfRange),
        (imported(account(54), TIMESTAMP_MAX), R::ImportedEventTimestampMustNotAdvance),
        (imported(account(54), 1), R::ImportedEventTimestampMustNotRegress),
        (
            Account {
                timestamp: 1,
                ..account(10)
            },
            R::TimestampMustBeZero,
        ),
        (
            Account {
                flags: AccountFlags::from_bits_retain(1 << 6),
                ..account(10)
            },
            R::ReservedFlag,
        ),
        (
            Account {
                flags: AccountFlags::from_bits_retain(1 << 9),
                ..account(10)
            },
            R::ReservedFlag,
        ),
        (account(0), R::IdMustNotBeZero),
        (account(u128::MAX), R::IdMustNotBeIntMax),
        (
            Account {
                flags: AccountFlags::HISTORY,
                ..original
            },
            R::ExistsWithDifferentFlags,
        ),
        (
            Account {
                user_data_128: 9,
                ..original
            },
            R::ExistsWithDifferentUserData128,
        ),
        (
            Account {
                user_data_64: 9,
                ..original
            },
            R::ExistsWithDifferentUserData64,
        ),
        (
            Account {
                user_data_32: 9,
                ..original
            },
            R::ExistsWithDifferentUserData32,
        ),
        (
            Account {
                ledger: 9,
                ..original
            },
            R::ExistsWithDifferentLedger,
        ),
        (
            Account {
                code: 9,
                ..original
            },
            R::ExistsWithDifferentCode,
        ),
        (original, R::Exists),
        // exists comes before validation of balances and ledger.
        (
            Account {
                debits_posted: 5,
                ..original
            },
            R::Exists,
        ),
        (
            account_with(
                10,
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
            R::FlagsAreMutuallyExclusive,
        ),
        (
            Account {
                debits_pending: 1,
                ..account(10)
            },
            R::DebitsPendingMustBeZero,
        ),
        (
            Account {
                debits_posted: 1,
                ..account(10)
            },
            R::DebitsPostedMustBeZero,
        ),
        (
            Account {
                credits_pending: 1,
                ..account(10)
            },
            R::CreditsPendingMustBeZero,
        ),
        (
            Account {
                credits_posted: 1,
                ..account(10)
            },
            R::CreditsPostedMustBeZero,
        ),
        (
            Account {
                ledger: 0,
                ..account(10)
            },
            R::LedgerMustNotBeZero,
        ),
        (
            Account {
                code: 0,
                ..account(10)
            },
            R::CodeMustNotBeZero,
        ),
        // Precedence among validation failures: reserved flag before id, id before ledger.
        (
            Account {
                flags: AccountFlags::from_bits_retain(1 << 6),
                ..account(0)
            },
            R::ReservedFlag,
        ),
        (
            Account {
                ledger: 0,
                ..account(0)
            },
            R::IdMustNotBeZero,
        ),
        (
            Account {
                debits_pending: 1,
                ledger: 0,
                ..account(10)
            },
            R::DebitsPendingMustBeZero,
        ),
        // Allowed flag combinations.
        (
            account_with(11, AccountFlags::CLOSED | AccountFlags::HISTORY),
            R::Ok,
        ),
        (
            account_with(
                12,
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY,
            ),
            R::Ok,
        ),
    ];
    for (event, expected) in cases {
        assert_eq!(run(&mut sm, &[event]), vec![expected], "event {event:?}");
    }
    let missing: Vec<_> = R::ALL.iter().filter(|r| !seen.contains(r)).collect();
    assert!(missing.is_empty(), "statuses never produced: {missing:?}");
    // An account created closed rejects transfers.
    assert_eq!(
        sm.create_transfers(now + S, &[transfer(1, 1, 11, 1)]),
        vec![CreateTransferResult::CreditAccountAlreadyClosed]
    );
}

/// Each transfer flag-compatibility rule, and the combinations that are allowed.
#[test]
fn transfer_flag_compatibility() {
    use CreateTransferResult as R;
    use TransferFlags as F;
    let mut f = Fixture::new();
    f.expect(pending(500, 1, 2, 10, 0), R::Ok);
    for (i, extra) in [
        F::PENDING,
        F::BALANCING_DEBIT,
        F::BALANCING_CREDIT,
        F::CLOSING_DEBIT,
        F::CLOSING_CREDIT,
        F::VOID_PENDING_TRANSFER,
    ]
    .into_iter()
    .enumerate()
    {
        let id = 510 + i as u128;
        f.expect(
            Transfer {
                flags: F::POST_PENDING_TRANSFER | extra,
                ..post(id, 500, 1)
            },
            R::FlagsAreMutuallyExclusive,
        );
        if extra != F::VOID_PENDING_TRANSFER {
            f.expect(
                Transfer {
                    flags: F::VOID_PENDING_TRANSFER | extra,
                    ..void(id + 20, 500)
                },
                R::FlagsAreMutuallyExclusive,
            );
        }
    }
    // Post/void take no timeout.
    f.expect(
        Transfer {
            timeout: 1,
            ..post(540, 500, 1)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    // Timeout and closing need pending.
    f.expect(
        Transfer {
            timeout: 1,
            ..transfer(541, 1, 2, 1)
        },
        R::TimeoutReservedForPendingTransfer,
    );
    f.expect(
        Transfer {
            flags: F::CLOSING_CREDIT,
            ..transfer(542, 1, 2, 1)
        },
        R::ClosingTransferMustBePending,
    );
    // Allowed: pending with balancing; both closing flags on one pending transfer; balancing
    // on both sides; linked on the last event of a chain that closes.
    f.expect(
        Transfer {
            flags: F::PENDING | F::BALANCING_CREDIT,
            ..transfer(543, 1, 2, 1)
        },
        R::Ok,
    );
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT | F::BALANCING_CREDIT,
            ..transfer(544, 1, 2, 1)
        },
        R::Ok,
    );
    f.expect(
        Transfer {
            flags: F::PENDING | F::CLOSING_DEBIT | F::CLOSING_CREDIT,
            ..transfer(545, 20, 21, 0)
        },
        R::Ok,
    );
    assert!(f
        .sm
        .lookup_account(20)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
    assert!(f
        .sm
        .lookup_account(21)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
    // The post of a closing transfer is refused (its accounts are closed); the void reopens.
    f.expect(post(546, 545, AMOUNT_MAX), R::DebitAccountAlreadyClosed);
    f.expect(void(547, 545), R::Ok);
    assert!(!f
        .sm
        .lookup_account(20)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
    assert!(!f
        .sm
        .lookup_account(21)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
}

#[test]
fn linked_chain_rolls_back_everything() {
    use CreateTransferResult as R;
    let mut f = Fixture::new();
    let l = |t: Transfer| Transfer {
        flags: t.flags | TransferFlags::LINKED,
        ..t
    };
    f.expect(pending(600, 1, 2, 30, 60), R::Ok);
    let before = f.sm.state_hash();
    let results = f.batch(&[
        transfer(601, 1, 2, 5),       // independent, succeeds
        l(transfer(602, 1, 8, 7)),    // chain: posted, touches a history account
        l(post(603, 600, 10)),        // chain: posts the pending transfer
        l(pending(604, 2, 1, 3, 10)), // chain: new pending with expiry
        transfer(605, 3, 1, 1),       // chain end: exceeds_credits
        transfer(606, 2, 1, 4),       // after the chain, succeeds
    ]);
    assert_eq!(
        results,
        vec![
            R::Ok,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::LinkedEventFailed,
            R::ExceedsCredits,
            R::Ok
        ]
    );
    assert_ne!(f.sm.state_hash(), before);
    for id in [602, 603, 604, 605] {
        assert!(f.sm.lookup_transfer(id).is_none());
    }
    assert_eq!(f.sm.pending_status(600), Some(PendingStatus::Pending));
    assert_eq!(f.balances(1), (30, 5, 0, 4));
    assert_eq!(f.balances(2), (0, 4, 30, 5));
    assert_eq!(f.balances(8), (0, 0, 0, 0));
    let filter = AccountFilter {
        account_id: 8,
        limit: 10,
        debits: true,
        credits: true,
        ..Default::default()
    };
    assert!(f.sm.get_account_balances(&filter).is_empty());
    assert!(f.sm.get_account_transfers(&filter).is_empty());
    // The rolled-back ids are free (linked_event_failed is not transient) but 605 is burnt.
    f.expect(post(603, 600, 10), R::Ok);
    f.expect(transfer(605, 3, 1, 1), R::IdAlreadyFailed);
    // The pending transfer's expiry index survived the rollback and was then consumed by the
    // post: nothing expires later.
    f.now += 120 * S;
    assert_eq!(f.sm.expire_pending_transfers(f.now), 0);
    // A successful chain applies all.
    assert_eq!(
        f.batch(&[
            l(transfer(610, 1, 2, 1)),
            l(transfer(611, 2, 1, 2)),
            transfer(612, 1, 2, 3)
        ]),
        vec![R::Ok, R::Ok, R::Ok]
    );
}

#[test]
fn two_phase_post_partial_full_and_void() {
    use CreateTransferResult as R;
    let mut f = Fixture::new();
    f.expect(pending(700, 1, 2, 100, 0), R::Ok);
    assert_eq!(f.balances(1), (100, 0, 0, 0));
    f.expect(
        Transfer {
            user_data_64: 42,
            ..post(701, 700, 60)
        },
        R::Ok,
    );
    assert_eq!(f.balances(1), (0, 60, 0, 0));
    assert_eq!(f.balances(2), (0, 0, 0, 60));
    let stored = *f.sm.lookup_transfer(701).unwrap();
    assert_eq!(
        (
            stored.debit_account_id,
            stored.credit_account_id,
            stored.ledger,
            stored.code
        ),
        (1, 2, 1, 1)
    );
    assert_eq!((stored.amount, stored.user_data_64), (60, 42));
    // Retries of the post: same request -> exists; different amount -> exists_with_different_amount.
    f.expect(
        Transfer {
            user_data_64: 42,
            ..post(701, 700, 60)
        },
        R::Exists,
    );
    f.expect(
        Transfer {
            user_data_64: 42,
            ..post(701, 700, 61)
        },
        R::ExistsWithDifferentAmount,
    );
    f.expect(post(701, 700, 60), R::ExistsWithDifferentUserData64);

    // AMOUNT_MAX posts the full amount, and a retry with AMOUNT_MAX is `exists`.
    f.expect(pending(702, 1, 2, 40, 0), R::Ok);
    f.expect(post(703, 702, AMOUNT_MAX), R::Ok);
    assert_eq!(f.sm.lookup_transfer(703).unwrap().amount, 40);
    f.expect(post(703, 702, AMOUNT_MAX), R::Exists);
    assert_eq!(f.balances(1), (0, 100, 0, 0));

    // Void with amount 0 releases all; with the exact amount too.
    f.expect(pending(704, 1, 2, 25, 0), R::Ok);
    f.expect(void(705, 704), R::Ok);
    assert_eq!(f.sm.lookup_transfer(705).unwrap().amount, 25);
    f.expect(pending(706, 1, 2, 25, 0), R::Ok);
    f.expect(
        Transfer {
            amount: 25,
            ..void(707, 706)
        },
        R::Ok,
    );
    assert_eq!(f.balances(1), (0, 100, 0, 0));
    // A post of zero is allowed and releases the reservation.
    f.expect(pending(708, 1, 2, 9, 0), R::Ok);
    f.expect(post(709, 708, 0), R::Ok);
    assert_eq!(f.balances(1), (0, 100, 0, 0));
    // Limits were checked when the amount was reserved: posting to a limited account works.
    f.expect(transfer(710, 1, 3, 50), R::Ok);
    f.expect(pending(711, 3, 1, 50, 0), R::Ok);
    f.expect(transfer(712, 3, 1, 1), R::ExceedsCredits);
    f.expect(post(713, 711, AMOUNT_MAX), R::Ok);
    assert_eq!(f.balances(3), (0, 50, 0, 50));
}

#[test]
fn pending_transfers_expire_with_the_ledger_clock() {
    use CreateTransferResult as R;
    let mut f = Fixture::new();
    f.expect(transfer(800, 1, 8, 100), R::Ok);
    f.expect(pending(801, 8, 2, 30, 5), R::Ok);
    let created = f.sm.lookup_transfer(801).unwrap().timestamp;
    assert_eq!(f.sm.poll_at(), Some(created + 5 * S));
    assert_eq!(f.sm.expire_pending_transfers(created + 5 * S - 1), 0);
    assert_eq!(f.balances(8), (30, 0, 0, 100));
    assert_eq!(f.sm.expire_pending_transfers(created + 5 * S), 1);
    assert_eq!(f.sm.pending_status(801), Some(PendingStatus::Expired));
    assert_eq!(f.balances(8), (0, 0, 0, 100));
    assert_eq!(f.balances(2), (0, 0, 0, 0));
    assert_eq!(f.sm.poll_at(), None);
    // The history shows the reservation; the release by expiry is not a transfer, so (as in
    // TigerBeetle 0.16, whose get_account_balances walks the account's transfers) it has no
    // entry of its own: the account itself shows it.
    let filter = AccountFilter {
        account_id: 8,
        limit: 10,
        debits: true,
        credits: true,
        ..Default::default()
    };
    let history = f.sm.get_account_balances(&filter);
    let pendings: Vec<u128> = history.iter().map(|b| b.debits_pending).collect();
    assert_eq!(pendings, vec![0, 30]);
    assert!(history.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
    f.now = created + 10 * S;
    f.expect(post(802, 801, 1), R::PendingTransferExpired);
    f.expect(void(803, 801), R::PendingTransferExpired);

    // An expired closing transfer reopens its account.
    f.expect(
        Transfer {
            flags: TransferFlags::PENDING | TransferFlags::CLOSING_CREDIT,
            ..pending(804, 1, 9, 0, 1)
        },
        R::Ok,
    );
    assert!(f
        .sm
        .lookup_account(9)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
    f.now += 2 * S;
    f.expect(transfer(805, 1, 2, 1), R::Ok); // the batch sweeps expiries first
    assert!(!f
        .sm
        .lookup_account(9)
        .unwrap()
        .flags
        .contains(AccountFlags::CLOSED));
    f.expect(transfer(806, 1, 9, 1), R::Ok);
}

#[test]
fn balancing_transfers_clamp_the_amount() {
    use CreateTransferResult as R;
    use TransferFlags as F;
    let mut f = Fixture::new();
    f.expect(transfer(900, 1, 3, 100), R::Ok); // 3 has 100 credits
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT,
            ..transfer(901, 3, 2, 1000)
        },
        R::Ok,
    );
    assert_eq!(f.sm.lookup_transfer(901).unwrap().amount, 100);
    assert_eq!(f.balances(3), (0, 100, 0, 100));
    // A retry with a bound covering what moved is `exists`; a lower bound is not.
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT,
            ..transfer(901, 3, 2, 1000)
        },
        R::Exists,
    );
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT,
            ..transfer(901, 3, 2, 99)
        },
        R::ExistsWithDifferentAmount,
    );
    // Nothing left: a zero-amount transfer succeeds.
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT,
            ..transfer(902, 3, 2, 1000)
        },
        R::Ok,
    );
    assert_eq!(f.sm.lookup_transfer(902).unwrap().amount, 0);
    // balancing_credit: 4 may not take more credits than its debits.
    f.expect(transfer(903, 4, 1, 70), R::Ok);
    f.expect(
        Transfer {
            flags: F::BALANCING_CREDIT,
            ..transfer(904, 2, 4, 500)
        },
        R::Ok,
    );
    assert_eq!(f.sm.lookup_transfer(904).unwrap().amount, 70);
    // Pending balancing counts pending amounts too.
    f.expect(transfer(905, 1, 20, 10), R::Ok);
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT | F::PENDING,
            ..transfer(906, 20, 2, 7)
        },
        R::Ok,
    );
    f.expect(
        Transfer {
            flags: F::BALANCING_DEBIT,
            ..transfer(907, 20, 2, 100)
        },
        R::Ok,
    );
    assert_eq!(f.sm.lookup_transfer(907).unwrap().amount, 3);
}

#[test]
fn timestamps_are_unique_and_increase_even_when_the_clock_goes_back() {
    let mut sm = StateMachine::new();
    sm.create_accounts(NOW, &[account(1), account(2)]);
    let a1 = sm.lookup_account(1).unwrap().timestamp;
    let a2 = sm.lookup_account(2).unwrap().timestamp;
    assert_eq!(a2, NOW);
    assert_eq!(a1, NOW - 1);
    // The clock goes backwards: timestamps still increase.
    let results = sm.create_transfers(
        NOW - 5 * S,
        &[
            transfer(1, 1, 2, 1),
            transfer(2, 1, 77, 1),
            transfer(3, 1, 2, 1),
        ],
    );
    assert_eq!(results[1], CreateTransferResult::CreditAccountNotFound);
    let t1 = sm.lookup_transfer(1).unwrap().timestamp;
    let t3 = sm.lookup_transfer(3).unwrap().timestamp;
    assert!(t1 > a2);
    // The failed event consumed a timestamp, as in TigerBeetle.
    assert_eq!(t3, t1 + 2);
    assert_eq!(sm.timestamp(), t3);
    sm.create_transfers(NOW + S, &[transfer(4, 1, 2, 1)]);
    assert_eq!(sm.lookup_transfer(4).unwrap().timestamp, NOW + S);
}

#[test]
fn account_transfers_query_filters() {
    let mut f = Fixture::new();
    for i in 0..10u128 {
        let (dr, cr) = if i % 2 == 0 { (1, 2) } else { (2, 1) };
        assert_eq!(
            f.one(transfer(1000 + i, dr, cr, 1 + i)),
            CreateTransferResult::Ok
        );
    }
    let base = AccountFilter {
        account_id: 1,
        limit: 100,
        debits: true,
        credits: true,
        ..Default::default()
    };
    let ids = |v: Vec<Transfer>| v.iter().map(|t| (t.id - 1000) as u32).collect::<Vec<_>>();
    assert_eq!(
        ids(f.sm.get_account_transfers(&base)),
        (0..10).collect::<Vec<_>>()
    );
    assert_eq!(
        ids(f.sm.get_account_transfers(&AccountFilter {
            credits: false,
            ..base
        })),
        vec![0, 2, 4, 6, 8]
    );
    assert_eq!(
        ids(f.sm.get_account_transfers(&AccountFilter {
            debits: false,
            ..base
        })),
        vec![1, 3, 5, 7, 9]
    );
    assert_eq!(
        ids(f.sm.get_account_transfers(&AccountFilter {
            reversed: true,
            limit: 3,
            ..base
        })),
        vec![9, 8, 7]
    );
    let t3 = f.sm.lookup_transfer(1003).unwrap().timestamp;
    let t6 = f.sm.lookup_transfer(1006).unwrap().timestamp;
    let ranged = AccountFilter {
        timestamp_min: t3,
        timestamp_max: t6,
        ..base
    };
    assert_eq!(ids(f.sm.get_account_transfers(&ranged)), vec![3, 4, 5, 6]);
    assert_eq!(
        ids(f.sm.get_account_transfers(&AccountFilter {
            reversed: true,
            ..ranged
        })),
        vec![6, 5, 4, 3]
    );
    // Invalid filters return nothing.
    for bad in [
        AccountFilter { limit: 0, ..base },
        AccountFilter {
            debits: false,
            credits: false,
            ..base
        },
        AccountFilter {
            account_id: 0,
            ..base
        },
        AccountFilter {
            account_id: u128::MAX,
            ..base
        },
        AccountFilter {
            timestamp_min: t6,
            timestamp_max: t3,
            ..base
        },
        AccountFilter {
            timestamp_max: u64::MAX,
            ..base
        },
        AccountFilter {
            account_id: 77,
            ..base
        },
    ] {
        assert!(f.sm.get_account_transfers(&bad).is_empty(), "{bad:?}");
    }
    // Balances are kept only with `history`.
    assert!(f.sm.get_account_balances(&base).is_empty());
    assert_eq!(f.one(transfer(1100, 1, 8, 5)), CreateTransferResult::Ok);
    assert_eq!(f.one(transfer(1101, 8, 2, 2)), CreateTransferResult::Ok);
    let history = AccountFilter {
        account_id: 8,
        ..base
    };
    let balances = f.sm.get_account_balances(&history);
    assert_eq!(balances.len(), 2);
    assert_eq!(
        (balances[0].credits_posted, balances[0].debits_posted),
        (5, 0)
    );
    assert_eq!(
        (balances[1].credits_posted, balances[1].debits_posted),
        (5, 2)
    );
    assert_eq!(
        balances[1].timestamp,
        f.sm.lookup_transfer(1101).unwrap().timestamp
    );
    assert_eq!(
        f.sm.get_account_balances(&AccountFilter {
            credits: false,
            ..history
        })
        .len(),
        1
    );
    // Lookups return found items in order, skipping missing ones.
    let found: Vec<u128> =
        f.sm.lookup_accounts(&[2, 77, 1])
            .iter()
            .map(|a| a.id)
            .collect();
    assert_eq!(found, vec![2, 1]);
    let found: Vec<u128> =
        f.sm.lookup_transfers(&[1001, 5, 1000])
            .iter()
            .map(|t| t.id)
            .collect();
    assert_eq!(found, vec![1001, 1000]);
}

#[test]
fn oversized_and_empty_batches_do_not_panic() {
    let mut sm = StateMachine::new();
    assert!(sm.create_accounts(NOW, &[]).is_empty());
    assert!(sm.create_transfers(NOW, &[]).is_empty());
    let accounts: Vec<Account> = (1..=(BATCH_EVENTS_MAX as u128 + 5)).map(account).collect();
    let results = sm.create_accounts(NOW, &accounts);
    assert!(results.iter().all(|r| *r == CreateAccountResult::Ok));
}
