//! The differential oracle against a real TigerBeetle 0.16.78 (docs/ledger.md "Differential
//! testing against TigerBeetle"): several seeds of the same workload on the embedded ledger and
//! on a fresh 1-replica cluster each, every answer compared, then every account's balances.
//! Needs the server `cargo xtask tigerbeetle build` installs; every request has a deadline, so
//! a cluster that stops answering fails the test instead of hanging it.

use std::time::{Duration, Instant};

use cluster::local::LocalCluster;
use cluster::oracle::{self, Embedded, Remote, Side};

/// The seeds of `cargo xtask test`: 4 × 3,000 events, over the 10,000 the issue asks for.
const SEEDS: [u64; 4] = [1, 2, 0x5eed, 0xdead_beef];
const EVENTS_PER_SEED: usize = 3_000;
/// How long a fresh cluster may take to serve.
const READY: Duration = Duration::from_secs(90);
/// Every request's deadline.
const REQUEST: Duration = Duration::from_secs(30);

fn cluster() -> (LocalCluster, Remote) {
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster.wait_ready(READY).expect("the cluster serves");
    let remote = Remote::connect(cluster.cluster_id(), &cluster.addresses(), REQUEST).expect("connect");
    (cluster, remote)
}

#[test]
fn the_embedded_ledger_and_tigerbeetle_agree_on_every_answer() {
    let mut total = 0;
    let mut results = std::collections::BTreeMap::new();
    let started = Instant::now();
    let mut busy = Duration::ZERO;
    for seed in SEEDS {
        let (_cluster, mut remote) = cluster();
        let mut embedded = Embedded::new();
        let t = Instant::now();
        match oracle::run_seed(seed, EVENTS_PER_SEED, &mut embedded, &mut remote) {
            Ok(outcome) => {
                let elapsed = t.elapsed();
                busy += elapsed;
                total += outcome.events;
                for (name, n) in &outcome.results {
                    *results.entry(*name).or_insert(0usize) += n;
                }
                println!(
                    "seed {seed:#x}: {} events in {} requests, {:.0} events/s, identical",
                    outcome.events,
                    outcome.requests,
                    outcome.events as f64 / elapsed.as_secs_f64()
                );
            }
            Err(divergence) => panic!("the embedded ledger and TigerBeetle differ:\n{divergence}"),
        }
    }
    println!(
        "{total} events over seeds {SEEDS:x?}: {:.0} events/s while comparing, {:.1} s in all",
        total as f64 / busy.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    println!("results both sides gave: {results:?}");
    assert!(total >= 10_000, "the oracle compared {total} events");
    // The workload reaches what it is meant to: a sample of the results it aims at.
    for name in [
        "ok",
        "exists",
        "exists_with_different_amount",
        "id_already_failed",
        "linked_event_failed",
        "linked_event_chain_open",
        "exceeds_credits",
        "exceeds_debits",
        "pending_transfer_already_posted",
        "pending_transfer_already_voided",
        "exceeds_pending_transfer_amount",
        "debit_account_already_closed",
        "overflows_debits_posted",
        "imported_event_timestamp_must_not_regress",
        "imported_event_timestamp_must_postdate_debit_account",
        "imported_event_timeout_must_be_zero",
        "reserved_flag",
    ] {
        assert!(results.get(name).copied().unwrap_or(0) > 0, "no event answered {name}: {results:?}");
    }
}

#[test]
fn a_pending_transfer_expires_alike_on_both() {
    let (_cluster, mut remote) = cluster();
    let mut embedded = Embedded::new();
    // The embedded side reads the wall clock, which the wait advances as it does the
    // cluster's: `advance` has nothing to add.
    let outcome = oracle::expiry_scenario(1 << 100, Duration::from_millis(2_500), &mut embedded, &mut remote, |_, _| {})
        .unwrap_or_else(|divergence| panic!("expiry differs:\n{divergence}"));
    // Both answered alike; the embedded answer is what TigerBeetle's must be as well.
    assert_eq!(outcome.results.get("pending_transfer_expired"), Some(&2), "{:?}", outcome.results);
    assert_eq!(outcome.results.get("debit_account_already_closed"), Some(&1), "{:?}", outcome.results);
    let lookup = oracle::Request::LookupAccounts(vec![1 << 100, (1 << 100) + 2]);
    let oracle::Answer::Accounts(rows) = embedded.run(&lookup).expect("lookup") else { unreachable!() };
    assert_eq!(rows[0].debits_pending, 10, "only the pending transfer without a timeout still holds its amount");
    assert!(!rows[1].flags.contains(ledger_svc::model::AccountFlags::CLOSED), "the expiry reopened the account");
    assert_eq!(rows[1].debits_posted, 10, "a transfer after the expiry went through");
}

/// The one difference the oracle found, and TigerBeetle's side of it (docs/ledger.md
/// "Differential testing against TigerBeetle"): an imported post whose timestamp is older than
/// its pending transfer stops a 0.16.78 replica (an assertion, `p.timestamp < timestamp`,
/// checked before the `imported_event_timestamp_must_not_regress` it would otherwise answer),
/// and the replica stops again when restarted, since it replays the request. The embedded
/// ledger answers `imported_event_timestamp_must_not_regress`; the workload never sends such
/// a post to the cluster. When a TigerBeetle release answers it instead, this test fails:
/// then the workload may send it and the exclusion goes.
#[test]
fn tigerbeetle_0_16_78_stops_on_an_imported_post_older_than_its_pending_transfer() {
    use ledger_svc::model::{
        Account, CreateTransferResult, Operation, OperationReply, Transfer, TransferFlags, AMOUNT_MAX,
    };
    use oracle::{Answer, Request};

    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster.wait_ready(READY).expect("the cluster serves");
    let mut remote = Remote::connect(cluster.cluster_id(), &cluster.addresses(), Duration::from_secs(3)).expect("connect");
    let mut embedded = Embedded::new();
    let account = |id| Account { id, ledger: 1, code: 1, ..Default::default() };
    let pending = Transfer {
        id: 10,
        debit_account_id: 1,
        credit_account_id: 2,
        amount: 5,
        ledger: 1,
        code: 1,
        flags: TransferFlags::PENDING,
        ..Default::default()
    };
    // Imported, and older than the pending transfer it posts (which has the cluster's time).
    let post = Transfer {
        id: 11,
        pending_id: 10,
        amount: AMOUNT_MAX,
        flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
        timestamp: oracle::IMPORT_BASE,
        ..Default::default()
    };
    for request in [
        Request::Create(Operation::CreateAccounts(vec![account(1), account(2)])),
        Request::Create(Operation::CreateTransfers(vec![pending])),
    ] {
        assert_eq!(embedded.run(&request).expect("embedded"), remote.run(&request).expect("cluster"));
    }
    let request = Request::Create(Operation::CreateTransfers(vec![post]));
    assert_eq!(
        embedded.run(&request).expect("embedded"),
        Answer::Create(OperationReply::CreateTransfers(vec![CreateTransferResult::ImportedEventTimestampMustNotRegress]))
    );
    // The oracle's cluster side refuses to send it ...
    let refused = remote.run(&request).expect_err("the oracle refuses the post");
    assert!(refused.to_string().contains("not sent"), "{refused}");
    // ... and this is why: sent as is, it gets no answer and the replica stops.
    let mut client = cluster::client::BlockingClient::connect(cluster.cluster_id(), &cluster.addresses()).expect("connect");
    let mut body = Vec::new();
    let op = cluster::wire::encode_operation(&Operation::CreateTransfers(vec![post]), &mut body);
    let reply = client.request(op, body, Duration::from_secs(3));
    assert!(reply.is_err(), "TigerBeetle 0.16.78 answered the imported post ({reply:?}): lift the exclusion");
    let pid = cluster.pid(0).expect("started");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(status.is_empty() || status.contains("zombie"), "the replica stopped:\n{status}");
}
