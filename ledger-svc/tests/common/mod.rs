//! Builders the ledger's integration tests share.

use ledger_svc::{Account, AccountFlags, Operation};

/// `create_accounts` for ids `1..=count` on ledger 1, code 1; every id divisible by
/// `history_every` keeps its balance history.
pub fn accounts(count: u128, history_every: u128) -> Operation {
    Operation::CreateAccounts(
        (1..=count)
            .map(|id| Account {
                id,
                ledger: 1,
                code: 1,
                flags: if id % history_every == 0 {
                    AccountFlags::HISTORY
                } else {
                    AccountFlags::empty()
                },
                ..Default::default()
            })
            .collect(),
    )
}
