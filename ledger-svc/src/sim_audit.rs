//! The simulators' auditor (TigerBeetle's idea): what clients were told, checked against the
//! ledger's state. Shared by the ledger-path simulator (`sim`) and the whole-appliance one
//! (`pantera`'s `sim` feature), so both check the same invariants:
//!
//! - acknowledged survives: every transfer a client got `created` or `exists` for is in the
//!   ledger with the acknowledged accounts and amount, every acknowledged account exists;
//! - exactly once: no transfer is `created` twice, a retry after `created` gets `exists`, and
//!   the ledger holds no transfer no client sent (a retry applied again);
//! - double entry: Σ debits = Σ credits, pending and posted;
//! - limits: no `debits_must_not_exceed_credits` account is overdrawn;
//! - durable before released: no reply leaves while a WAL segment is not durable.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::AccountFlags;
use crate::state_machine::StateMachine;

/// What the auditor knows of a transfer from the replies clients got.
#[derive(Debug, Default)]
struct Seen {
    debit: u128,
    credit: u128,
    /// None for a post or void (its amount may be the pending one's).
    amount: Option<u128>,
    created: u64,
    acknowledged: bool,
}

/// The auditor's record of one run.
#[derive(Debug, Default)]
pub struct Auditor {
    seen: BTreeMap<u128, Seen>,
    /// Every transfer id a client sent.
    sent: BTreeSet<u128>,
    accounts_acknowledged: BTreeSet<u128>,
}

impl Auditor {
    pub fn new() -> Self {
        Auditor::default()
    }

    /// A client sent (or is about to send) a transfer with this id.
    pub fn sent_transfer(&mut self, id: u128) {
        self.sent.insert(id);
    }

    /// A client got `created` or `exists` for this account.
    pub fn account_acknowledged(&mut self, id: u128) {
        self.accounts_acknowledged.insert(id);
    }

    /// A client got `status` (a create result, or `http NNN`) for transfer `id`. Returns the
    /// broken invariants (a second `created`, a retry answered otherwise than `exists`).
    pub fn transfer_reply(
        &mut self,
        id: u128,
        debit: u128,
        credit: u128,
        amount: Option<u128>,
        status: &str,
    ) -> Vec<String> {
        let seen = self.seen.entry(id).or_default();
        seen.debit = debit;
        seen.credit = credit;
        seen.amount = amount;
        let mut problems = Vec::new();
        if status == "created" {
            seen.created += 1;
            if seen.created > 1 {
                problems.push(format!(
                    "transfer {id} created twice (a retry applied again)"
                ));
            }
        } else if seen.created > 0 && status != "exists" {
            problems.push(format!("transfer {id}: a retry got {status:?} after \"created\" (TigerBeetle answers \"exists\")"));
        }
        if status == "created" || status == "exists" {
            seen.acknowledged = true;
        }
        problems
    }

    /// The acknowledged transfers' ids, in order.
    pub fn acknowledged(&self) -> impl Iterator<Item = u128> + '_ {
        self.seen
            .iter()
            .filter(|(_, s)| s.acknowledged)
            .map(|(id, _)| *id)
    }

    pub fn acknowledged_count(&self) -> u64 {
        self.seen.values().filter(|s| s.acknowledged).count() as u64
    }

    /// The invariants over a ledger's state (live, or just recovered); `when` prefixes each.
    pub fn check_state(&self, state: &StateMachine, when: &str) -> Vec<String> {
        let mut violations = Vec::new();
        for (id, seen) in &self.seen {
            if !seen.acknowledged {
                continue;
            }
            match state.lookup_transfer(*id) {
                None => violations.push(format!("{when}: acknowledged transfer {id} is missing")),
                Some(t) => {
                    if t.debit_account_id != seen.debit
                        || t.credit_account_id != seen.credit
                        || seen.amount.is_some_and(|a| a != t.amount)
                    {
                        violations.push(format!(
                            "{when}: transfer {id} differs from what was acknowledged"
                        ));
                    }
                }
            }
        }
        // Exactly once: the ledger holds no transfer that no client sent (a retry applied
        // again would show up as one).
        for t in state.transfers() {
            if !self.sent.contains(&t.id) {
                violations.push(format!(
                    "{when}: transfer {} is in the ledger but no client sent it",
                    t.id
                ));
                break;
            }
        }
        for id in &self.accounts_acknowledged {
            if state.lookup_account(*id).is_none() {
                violations.push(format!("{when}: acknowledged account {id} is missing"));
            }
        }
        let (mut dp, mut dpo, mut cp, mut cpo) = (0u128, 0u128, 0u128, 0u128);
        for a in state.accounts() {
            dp += a.debits_pending;
            dpo += a.debits_posted;
            cp += a.credits_pending;
            cpo += a.credits_posted;
            if a.flags
                .contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
                && a.debits_pending + a.debits_posted > a.credits_posted
            {
                violations.push(format!(
                    "{when}: account {} is overdrawn past its limit",
                    a.id
                ));
            }
        }
        if dp != cp || dpo != cpo {
            violations.push(format!(
                "{when}: debits ({dp} pending, {dpo} posted) differ from credits ({cp}, {cpo})"
            ));
        }
        violations
    }
}
