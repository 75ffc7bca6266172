//! The TigerBeetle ledger backend (src/cluster_backend.rs) in process, against a real
//! 1-replica TigerBeetle cluster on loopback (`cluster::local::LocalCluster`): accounts,
//! transfers joined into one request, linked chains (one that fails, one left open), lookups
//! and query pages through the same submission queues and completions the workers use. The
//! same commands also run through the embedded ledger thread, and both must give the same
//! replies, timestamps aside.
//!
//! Needs the `tigerbeetle` feature and the server `cargo xtask tigerbeetle build` installs.

use std::time::Duration;

use cluster::local::LocalCluster;
use crossbeam_channel::Receiver;
use ledger_svc::api::{Command, Reply};
use ledger_svc::model::{
    Account, AccountFilter, AccountFlags, Operation, QueryFilter, Transfer, TransferFlags,
};
use pantera::cluster_backend::{driver, CoreConfig, PENDING_SUBMISSIONS_MAX, PROBE_INTERVAL};
use pantera::committer::{self, Completion, LedgerClient, ReplyTo, Submission};
use pantera::metrics::Metrics;

const REPLY_WAIT: Duration = Duration::from_secs(20);

fn reply_to(seq: u64) -> ReplyTo {
    ReplyTo {
        worker: 0,
        slot: 0,
        generation: 1,
        seq,
    }
}

fn account(id: u128, flags: AccountFlags) -> Account {
    Account {
        id,
        ledger: 1,
        code: 10,
        flags,
        ..Account::default()
    }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128, flags: TransferFlags) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        flags,
        ..Transfer::default()
    }
}

fn transfers(events: Vec<Transfer>) -> Command {
    Command::Mutate(Operation::CreateTransfers(events))
}

/// The commands of the scenario, in rounds: the commands of one round are submitted together
/// (joined into requests where the rules allow), each round after the previous one's replies.
fn rounds() -> Vec<Vec<Command>> {
    let linked = TransferFlags::LINKED;
    let none = TransferFlags::empty();
    vec![
        vec![Command::Mutate(Operation::CreateAccounts(vec![
            account(1, AccountFlags::HISTORY),
            account(2, AccountFlags::HISTORY),
            account(3, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS),
        ]))],
        // Three submissions joined into one request: a plain transfer, a chain that fails as a
        // whole (account 3 has no credits), and one that fails alone.
        vec![
            transfers(vec![
                transfer(10, 1, 2, 100, none),
                transfer(11, 1, 2, 5, none),
            ]),
            transfers(vec![
                transfer(12, 2, 1, 7, linked),
                transfer(13, 3, 1, 1, none),
            ]),
            transfers(vec![transfer(14, 1, 99, 1, none)]),
        ],
        // A submission ending in an open chain, then one that must not continue it.
        vec![
            transfers(vec![
                transfer(15, 1, 2, 1, none),
                transfer(16, 1, 2, 1, linked),
            ]),
            transfers(vec![transfer(17, 2, 1, 3, none)]),
        ],
        // Retries answer `exists`, nothing applied twice.
        vec![
            transfers(vec![transfer(10, 1, 2, 100, none)]),
            Command::Mutate(Operation::CreateAccounts(vec![account(
                1,
                AccountFlags::HISTORY,
            )])),
        ],
        vec![
            Command::LookupAccount(1),
            Command::LookupAccount(2),
            Command::LookupAccount(42),
            Command::LookupTransfer(10),
            Command::LookupTransfer(12),
        ],
        vec![
            Command::AccountTransfers(AccountFilter {
                account_id: 1,
                limit: 2,
                debits: true,
                credits: true,
                ..AccountFilter::default()
            }),
            Command::AccountBalances(AccountFilter {
                account_id: 2,
                limit: 10,
                debits: true,
                credits: true,
                ..AccountFilter::default()
            }),
            Command::QueryAccounts(QueryFilter {
                ledger: 1,
                limit: 2,
                ..QueryFilter::default()
            }),
            Command::QueryTransfers(QueryFilter {
                code: 1,
                limit: 10,
                reversed: true,
                ..QueryFilter::default()
            }),
        ],
    ]
}

/// Submits each round and collects its replies in submission order.
fn exchange(client: &LedgerClient, completions: &Receiver<Completion>) -> Vec<Vec<Reply>> {
    let mut seq = 0;
    let mut all = Vec::new();
    for round in rounds() {
        let first = seq;
        for command in round.iter().cloned() {
            client
                .submit(Submission {
                    reply_to: reply_to(seq),
                    command,
                })
                .expect("room in the queue");
            seq += 1;
        }
        let mut replies: Vec<Option<Reply>> = vec![None; round.len()];
        for _ in 0..round.len() {
            let c = completions
                .recv_timeout(REPLY_WAIT)
                .expect("a reply within the wait");
            replies[(c.reply_to.seq - first) as usize] = Some(c.reply);
        }
        all.push(
            replies
                .into_iter()
                .map(|r| r.expect("one reply each"))
                .collect(),
        );
    }
    all
}

/// The reply with its timestamps (and the paging bounds built from them) zeroed.
fn without_timestamps(reply: &Reply, created_timestamps: &mut Vec<u64>) -> Reply {
    let mut reply = reply.clone();
    match &mut reply {
        Reply::Created(results) => {
            for r in results {
                if r.status == "ok" {
                    created_timestamps
                        .push(r.timestamp.expect("a created object has its timestamp"));
                } else {
                    assert_eq!(r.timestamp, None, "{r:?}");
                }
                r.timestamp = None;
            }
        }
        Reply::Account { account, .. } => account.iter_mut().for_each(|a| a.timestamp = 0),
        Reply::Transfer { transfer, .. } => transfer.iter_mut().for_each(|t| t.timestamp = 0),
        Reply::AccountTransfers { transfers, next } => {
            transfers.iter_mut().for_each(|t| t.timestamp = 0);
            next.iter_mut().for_each(|f| {
                (f.timestamp_min, f.timestamp_max) = (
                    u64::from(f.timestamp_min != 0),
                    u64::from(f.timestamp_max != 0),
                )
            });
        }
        Reply::AccountBalances { balances, next } => {
            balances.iter_mut().for_each(|b| b.timestamp = 0);
            next.iter_mut().for_each(|f| {
                (f.timestamp_min, f.timestamp_max) = (
                    u64::from(f.timestamp_min != 0),
                    u64::from(f.timestamp_max != 0),
                )
            });
        }
        Reply::Accounts { accounts, next } => {
            accounts.iter_mut().for_each(|a| a.timestamp = 0);
            next.iter_mut().for_each(|f| {
                (f.timestamp_min, f.timestamp_max) = (
                    u64::from(f.timestamp_min != 0),
                    u64::from(f.timestamp_max != 0),
                )
            });
        }
        Reply::Transfers { transfers, next } => {
            transfers.iter_mut().for_each(|t| t.timestamp = 0);
            next.iter_mut().for_each(|f| {
                (f.timestamp_min, f.timestamp_max) = (
                    u64::from(f.timestamp_min != 0),
                    u64::from(f.timestamp_max != 0),
                )
            });
        }
        Reply::Internal(_) | Reply::Unavailable { .. } => {}
    }
    reply
}

fn embedded_replies() -> Vec<Vec<Reply>> {
    let committer::Channels {
        client,
        submissions,
        replies_tx,
        replies_rx,
    } = committer::channels(64, 1);
    let thread = std::thread::spawn(move || {
        let mut ledger = ledger_svc::Ledger::open(
            ledger_svc::SimStorage::new(),
            ledger_svc::LedgerConfig::default(),
        )
        .expect("open");
        committer::run(
            &mut ledger,
            &submissions,
            &replies_tx,
            8189,
            &Metrics::new(),
            "fsync",
        )
        .expect("run");
    });
    let replies = exchange(&client, &replies_rx[0]);
    drop(client);
    thread.join().expect("the embedded ledger thread");
    replies
}

#[test]
fn the_tigerbeetle_backend_answers_as_the_embedded_ledger_does() {
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let committer::Channels {
        client,
        submissions,
        replies_tx,
        replies_rx,
    } = committer::channels(64, 1);
    let metrics = Metrics::new();
    let thread_metrics = metrics.clone();
    let (cluster_id, addresses) = (cluster.cluster_id(), cluster.addresses());
    let config = CoreConfig {
        sessions: 2,
        batch_events_max: 8189,
        request_timeout: Duration::from_secs(10),
        retry_after_s: 1,
        pending_max: PENDING_SUBMISSIONS_MAX,
        probe_interval: PROBE_INTERVAL,
    };
    let thread = std::thread::spawn(move || {
        driver::run(
            cluster_id,
            &addresses,
            config,
            &submissions,
            &replies_tx,
            &thread_metrics,
        )
    });
    let cluster_replies = exchange(&client, &replies_rx[0]);
    drop(client);
    thread
        .join()
        .expect("the backend thread")
        .expect("the sessions opened");
    let embedded = embedded_replies();

    let (mut cluster_timestamps, mut embedded_timestamps) = (Vec::new(), Vec::new());
    for (round, (ours, theirs)) in cluster_replies.iter().zip(&embedded).enumerate() {
        for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
            assert_eq!(
                without_timestamps(a, &mut cluster_timestamps),
                without_timestamps(b, &mut embedded_timestamps),
                "round {round}, reply {i}: TigerBeetle {a:?}, embedded {b:?}"
            );
        }
    }
    // Created objects carry the cluster's timestamps, strictly increasing in request order.
    assert_eq!(cluster_timestamps.len(), embedded_timestamps.len());
    assert!(
        cluster_timestamps.windows(2).all(|w| w[0] < w[1]),
        "{cluster_timestamps:?}"
    );
    // The facts the comparison stands on, spelt out.
    let status = |round: usize, i: usize| match &cluster_replies[round][i] {
        Reply::Created(r) => r.iter().map(|e| e.status).collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    assert_eq!(status(1, 0), ["ok", "ok"]);
    assert_eq!(status(1, 1), ["linked_event_failed", "exceeds_credits"]);
    assert_eq!(status(1, 2), ["credit_account_not_found"]);
    assert_eq!(status(2, 0), ["ok", "linked_event_chain_open"]);
    assert_eq!(
        status(2, 1),
        ["ok"],
        "the next submission did not continue the open chain"
    );
    assert_eq!(status(3, 0), ["exists"]);
    match &cluster_replies[4][0] {
        Reply::Account {
            account: Some(a), ..
        } => assert_eq!((a.debits_posted, a.credits_posted), (106, 3)),
        other => panic!("{other:?}"),
    }
    match &cluster_replies[5][0] {
        Reply::AccountTransfers { transfers, next } => {
            assert_eq!(transfers.len(), 2);
            assert!(next.is_some(), "account 1 has more than 2 transfers");
        }
        other => panic!("{other:?}"),
    }
    // At most one request per write submission; at least two in round 2 (nothing joins after
    // an open chain) and in round 3 (two kinds). How many joined depends on how many were
    // queued when the thread drained (the joining itself is unit-tested in the core).
    let requests: u64 = ["create_accounts", "create_transfers"]
        .iter()
        .map(|op| metrics.cluster.requests.with_label_values(&[op]).get())
        .sum();
    assert!(
        (6..=9).contains(&requests),
        "{requests} create requests for 9 write submissions"
    );
    assert_eq!(metrics.cluster.deadline_expiries.get(), 0);
}

/// Transfers of one event each, pipelined through the backend thread at up to `WINDOW` in
/// flight, against a 1-replica cluster: every one is created exactly once and the balances
/// add up. Prints the rate and how many requests carried them (a figure, not asserted).
#[test]
fn pipelined_single_transfers_are_joined_into_requests_and_all_applied() {
    const TRANSFERS: u64 = 20_000;
    const WINDOW: u64 = 2_000;
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let committer::Channels {
        client,
        submissions,
        replies_tx,
        replies_rx,
    } = committer::channels(4_096, 1);
    let metrics = Metrics::new();
    let thread_metrics = metrics.clone();
    let (cluster_id, addresses) = (cluster.cluster_id(), cluster.addresses());
    let config = CoreConfig {
        sessions: 4,
        batch_events_max: 8189,
        request_timeout: Duration::from_secs(10),
        retry_after_s: 1,
        pending_max: PENDING_SUBMISSIONS_MAX,
        probe_interval: PROBE_INTERVAL,
    };
    let thread = std::thread::spawn(move || {
        driver::run(
            cluster_id,
            &addresses,
            config,
            &submissions,
            &replies_tx,
            &thread_metrics,
        )
    });
    let completions = &replies_rx[0];
    let accounts = Command::Mutate(Operation::CreateAccounts(vec![
        account(1, AccountFlags::empty()),
        account(2, AccountFlags::empty()),
    ]));
    client
        .submit(Submission {
            reply_to: reply_to(0),
            command: accounts,
        })
        .expect("room");
    completions
        .recv_timeout(REPLY_WAIT)
        .expect("accounts created");
    let started = std::time::Instant::now();
    let (mut sent, mut created) = (0u64, 0u64);
    while created < TRANSFERS {
        while sent < TRANSFERS && sent - created < WINDOW {
            let command = transfers(vec![transfer(
                1_000 + u128::from(sent),
                1,
                2,
                1,
                TransferFlags::empty(),
            )]);
            client
                .submit(Submission {
                    reply_to: reply_to(sent + 1),
                    command,
                })
                .expect("the window fits the queue");
            sent += 1;
        }
        let c = completions
            .recv_timeout(REPLY_WAIT)
            .expect("a reply within the wait");
        match c.reply {
            Reply::Created(results) if results.len() == 1 && results[0].status == "ok" => {
                created += 1
            }
            other => panic!("transfer {}: {other:?}", c.reply_to.seq),
        }
    }
    let took = started.elapsed();
    client
        .submit(Submission {
            reply_to: reply_to(0),
            command: Command::LookupAccount(1),
        })
        .expect("room");
    match completions.recv_timeout(REPLY_WAIT).expect("lookup").reply {
        Reply::Account {
            account: Some(a), ..
        } => assert_eq!(a.debits_posted, u128::from(TRANSFERS)),
        other => panic!("{other:?}"),
    }
    drop(client);
    thread
        .join()
        .expect("the backend thread")
        .expect("the sessions opened");
    let requests = metrics
        .cluster
        .requests
        .with_label_values(&["create_transfers"])
        .get();
    println!(
        "{TRANSFERS} single-event transfers through the TigerBeetle backend (1 replica, {WINDOW} in flight): {:.0} transfers/s, {requests} create requests ({:.0} events each on average)",
        TRANSFERS as f64 / took.as_secs_f64(),
        TRANSFERS as f64 / requests as f64
    );
    assert_eq!(metrics.cluster.deadline_expiries.get(), 0);
}
