//! JSON event arrays into the API: the body of `POST /v1/accounts` or `POST /v1/transfers`
//! decoded and validated by `api::handle`, applied to a ledger state that already holds four
//! accounts, and the reply rendered.
//!
//! Input: a selector byte (even: accounts, odd: transfers), then the body. Properties beyond
//! "no panic": a body the API accepts has at most `BATCH_EVENTS_MAX` events and gets exactly
//! one result per event; every response body is JSON and the reply fits the bound a connection
//! reserves for it (`api::reply_bytes_max`); and double entry holds afterwards: over
//! all accounts, posted debits equal posted credits and pending debits equal pending credits.
#![no_main]

use std::collections::BTreeSet;

use ledger_svc::api::{self, Action, Command, Reply, Role};
use ledger_svc::http::{Method, Request, Version};
use ledger_svc::{Account, IdHashKey, Operation, StateMachine, BATCH_EVENTS_MAX};
use libfuzzer_sys::fuzz_target;

const NOW_NS: u64 = 1_700_000_000_000_000_000;

fn assert_json(body: &[u8]) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
        panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(body));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let target = if selector % 2 == 0 { "/v1/accounts" } else { "/v1/transfers" };
    let request = Request {
        method: Method::Post,
        target: target.to_owned(),
        version: Version::Http11,
        keep_alive: true,
        body: body.to_vec(),
    };
    let operation = match api::handle(&request, Role::Write) {
        Action::Respond(response) => {
            assert_json(&response.body);
            return;
        }
        Action::Ledger(Command::Mutate(operation)) => operation,
        Action::Ledger(other) => panic!("a POST became a read: {other:?}"),
    };
    assert!(operation.len() <= BATCH_EVENTS_MAX, "{} events accepted", operation.len());

    // A fixed hash key: the run must not depend on the OS's randomness.
    let mut state = StateMachine::with_id_hash_key(IdHashKey::new([1, 2, 3, 4]));
    let base: Vec<Account> = (1..=4)
        .map(|id| Account { id, ledger: 1, code: 1, ..Default::default() })
        .collect();
    state.create_accounts(NOW_NS - 1_000, &base);
    let mut ids: BTreeSet<u128> = (1..=4).collect();
    let reply = match &operation {
        Operation::CreateAccounts(events) => {
            ids.extend(events.iter().map(|a| a.id));
            ledger_svc::OperationReply::CreateAccounts(state.create_accounts(NOW_NS, events))
        }
        Operation::CreateTransfers(events) => {
            ledger_svc::OperationReply::CreateTransfers(state.create_transfers(NOW_NS, events))
        }
    };
    match api::reply_of(&reply, &state, &operation) {
        Reply::Created(results) => assert_eq!(results.len(), operation.len(), "one result per event"),
        other => panic!("a mutation answered with {other:?}"),
    }
    let response = api::render_reply(&reply, &state, &operation);
    assert_json(&response.body);
    let bound = api::reply_bytes_max(&Command::Mutate(operation.clone()));
    assert!(response.body.len() <= bound, "reply of {} bytes, bound {bound}", response.body.len());

    let (mut debits, mut credits, mut debits_pending, mut credits_pending) = (0u128, 0u128, 0u128, 0u128);
    for id in ids {
        if let Some(a) = state.lookup_account(id) {
            debits = debits.wrapping_add(a.debits_posted);
            credits = credits.wrapping_add(a.credits_posted);
            debits_pending = debits_pending.wrapping_add(a.debits_pending);
            credits_pending = credits_pending.wrapping_add(a.credits_pending);
        }
    }
    assert_eq!(debits, credits, "posted debits and credits differ");
    assert_eq!(debits_pending, credits_pending, "pending debits and credits differ");
});
