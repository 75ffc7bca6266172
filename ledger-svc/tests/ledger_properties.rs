//! Property tests of the state machine over random batches: linked chains, pending/post/void,
//! expiry, balancing, limits and retries. After every batch:
//! - Σ debits_posted = Σ credits_posted and Σ debits_pending = Σ credits_pending;
//! - no account with `debits_must_not_exceed_credits` has debits (pending + posted) above its
//!   posted credits, and the mirror for `credits_must_not_exceed_debits`;
//! - a linked chain is all-or-nothing;
//! - resubmitting the committed batch returns `exists` for every event it created and
//!   changes no balance;
//! - replaying the same batches on a fresh state machine gives the same state hash.

use ledger_svc::*;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000_000_000_000;
const S: u64 = 1_000_000_000;
const ACCOUNTS: u128 = 8;
const TRANSFER_IDS: u128 = 48;

/// Accounts 1..=8, each with random flags; 7 and 8 sometimes on ledger 2.
fn accounts_strategy() -> impl Strategy<Value = Vec<Account>> {
    prop::collection::vec((0u8..6, 1u32..=2), ACCOUNTS as usize).prop_map(|kinds| {
        kinds
            .into_iter()
            .zip(1..=ACCOUNTS)
            .map(|((kind, ledger), id)| {
                let flags = match kind {
                    0 | 1 => AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
                    2 => AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                    3 => AccountFlags::HISTORY,
                    _ => AccountFlags::empty(),
                };
                // The funding accounts 5 and 6 carry no limit.
                let flags = if id == 5 || id == 6 {
                    AccountFlags::empty()
                } else {
                    flags
                };
                let ledger = if id <= 6 { 1 } else { ledger };
                Account {
                    id,
                    ledger,
                    code: 1,
                    flags,
                    ..Default::default()
                }
            })
            .collect()
    })
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    (
        1..=TRANSFER_IDS,
        1..=ACCOUNTS,
        1..=ACCOUNTS,
        prop_oneof![4 => 0u128..100, 1 => Just(AMOUNT_MAX), 1 => 100u128..10_000],
        0u8..10,
        prop::bool::weighted(0.15),
        0u32..3,
        1..=TRANSFER_IDS,
    )
        .prop_map(|(id, dr, cr, amount, kind, linked, timeout, pending_id)| {
            let base = Transfer {
                id,
                debit_account_id: dr,
                credit_account_id: cr,
                amount: if amount == AMOUNT_MAX && kind < 5 {
                    50
                } else {
                    amount
                },
                ledger: 1,
                code: 1,
                ..Default::default()
            };
            let mut t = match kind {
                0..=2 => base,
                3 => Transfer {
                    flags: TransferFlags::PENDING,
                    timeout,
                    ..base
                },
                4 => Transfer {
                    flags: TransferFlags::PENDING | TransferFlags::CLOSING_DEBIT,
                    timeout,
                    ..base
                },
                5 => Transfer {
                    flags: TransferFlags::POST_PENDING_TRANSFER,
                    pending_id,
                    debit_account_id: 0,
                    credit_account_id: 0,
                    ledger: 0,
                    code: 0,
                    ..base
                },
                6 => Transfer {
                    flags: TransferFlags::VOID_PENDING_TRANSFER,
                    pending_id,
                    amount: 0,
                    debit_account_id: 0,
                    credit_account_id: 0,
                    ..base
                },
                7 => Transfer {
                    flags: TransferFlags::BALANCING_DEBIT,
                    amount: 1000,
                    ..base
                },
                8 => Transfer {
                    flags: TransferFlags::BALANCING_CREDIT,
                    amount: 1000,
                    ..base
                },
                _ => Transfer {
                    flags: TransferFlags::PENDING | TransferFlags::BALANCING_DEBIT,
                    amount: 1000,
                    ..base
                },
            };
            if linked {
                t.flags.insert(TransferFlags::LINKED);
            }
            t
        })
}

#[derive(Clone, Debug)]
struct Batch {
    advance_ms: i64,
    transfers: Vec<Transfer>,
}

fn batch_strategy() -> impl Strategy<Value = Batch> {
    (
        -500i64..3000,
        prop::collection::vec(transfer_strategy(), 1..32),
    )
        .prop_map(|(advance_ms, transfers)| Batch {
            advance_ms,
            transfers,
        })
}

fn check_invariants(sm: &StateMachine) -> Result<(), TestCaseError> {
    let (mut dp, mut dpo, mut cp, mut cpo) = (0u128, 0u128, 0u128, 0u128);
    for a in sm.accounts() {
        dp += a.debits_pending;
        dpo += a.debits_posted;
        cp += a.credits_pending;
        cpo += a.credits_posted;
        if a.flags
            .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        {
            prop_assert!(
                a.debits_pending + a.debits_posted <= a.credits_posted,
                "limit broken: {a:?}"
            );
        }
        if a.flags
            .contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        {
            prop_assert!(
                a.credits_pending + a.credits_posted <= a.debits_posted,
                "limit broken: {a:?}"
            );
        }
    }
    prop_assert_eq!(dpo, cpo, "posted sums differ");
    prop_assert_eq!(dp, cp, "pending sums differ");
    Ok(())
}

fn check_chains(
    events: &[Transfer],
    results: &[CreateTransferResult],
) -> Result<(), TestCaseError> {
    let mut start = 0;
    for (i, t) in events.iter().enumerate() {
        if !t.flags.contains(TransferFlags::LINKED) || i + 1 == events.len() {
            let chain = &results[start..=i];
            if chain.len() > 1 {
                let ok = chain
                    .iter()
                    .filter(|r| **r == CreateTransferResult::Ok)
                    .count();
                prop_assert!(
                    ok == 0 || ok == chain.len(),
                    "chain {start}..={i} partly applied: {chain:?}"
                );
            }
            start = i + 1;
        }
    }
    Ok(())
}

fn funding() -> Vec<Transfer> {
    // Give every account some credits from a funding account so limits are not all-blocking.
    (1..=6u128)
        .map(|id| Transfer {
            id: 1000 + id,
            debit_account_id: if id == 6 { 5 } else { 6 },
            credit_account_id: id,
            amount: 500,
            ledger: 1,
            code: 1,
            ..Default::default()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_batch(
        accounts in accounts_strategy(),
        batches in prop::collection::vec(batch_strategy(), 1..12),
    ) {
        let mut sm = StateMachine::new();
        let mut replica = StateMachine::new();
        let mut now = NOW;
        sm.create_accounts(now, &accounts);
        replica.create_accounts(now, &accounts);
        sm.create_transfers(now, &funding());
        replica.create_transfers(now, &funding());
        check_invariants(&sm)?;
        for batch in &batches {
            now = now.saturating_add_signed(batch.advance_ms * 1_000_000);
            let before = sm.clone();
            let results = sm.create_transfers(now, &batch.transfers);
            prop_assert_eq!(results.len(), batch.transfers.len());
            check_invariants(&sm)?;
            check_chains(&batch.transfers, &results)?;

            // Resubmit the committed batch on a copy: created events answer `exists`, and no
            // balance moves, unless an event that FAILED the first time now succeeds: a failed
            // event is not stored (TigerBeetle), so its retry is judged afresh against the state
            // the batch left (e.g. a balancing transfer capped at 0 the first time, capped at
            // what a later event of the batch credited the second time).
            let mut retry = sm.clone();
            let accounts_before: Vec<Account> = retry.accounts().copied().collect();
            let again = retry.create_transfers(now, &batch.transfers);
            for (i, (first, second)) in results.iter().zip(&again).enumerate() {
                if *first == CreateTransferResult::Ok {
                    // A later event of the same batch may reuse the id (and got `exists` or a
                    // mismatch the first time); the retry answers for the stored transfer.
                    let stored = sm.lookup_transfer(batch.transfers[i].id).unwrap();
                    if stored.timestamp > before.timestamp() && !matches!(second,
                        CreateTransferResult::Exists | CreateTransferResult::LinkedEventFailed) {
                        prop_assert!(false, "event {i} was created, retry gave {second:?}");
                    }
                }
            }
            let accounts_after: Vec<Account> = retry.accounts().copied().collect();
            let created_again: Vec<usize> = (0..again.len())
                .filter(|&i| again[i] == CreateTransferResult::Ok)
                .collect();
            for &i in &created_again {
                prop_assert!(results[i] != CreateTransferResult::Ok, "event {} was created twice", i);
            }
            if created_again.is_empty() {
                prop_assert_eq!(accounts_before, accounts_after, "resubmission moved a balance");
            }

            let replica_results = replica.create_transfers(now, &batch.transfers);
            prop_assert_eq!(&results, &replica_results);
            prop_assert_eq!(sm.state_hash(), replica.state_hash());
        }
        // Sweep every expiry: the invariants still hold and nothing is left pending.
        sm.expire_pending_transfers(now + 10 * S);
        check_invariants(&sm)?;
    }
}
