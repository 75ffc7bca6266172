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
use crossbeam_channel::{Receiver, Sender};
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
fn exchange(backend: &mut Backend) -> Vec<Vec<Reply>> {
    rounds().into_iter().map(|round| backend.ask(round)).collect()
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
            next.iter_mut()
                .for_each(|f| bounds_set(&mut f.timestamp_min, &mut f.timestamp_max));
        }
        Reply::AccountBalances { balances, next } => {
            balances.iter_mut().for_each(|b| b.timestamp = 0);
            next.iter_mut()
                .for_each(|f| bounds_set(&mut f.timestamp_min, &mut f.timestamp_max));
        }
        Reply::Accounts { accounts, next } => {
            accounts.iter_mut().for_each(|a| a.timestamp = 0);
            next.iter_mut()
                .for_each(|f| bounds_set(&mut f.timestamp_min, &mut f.timestamp_max));
        }
        Reply::Transfers { transfers, next } => {
            transfers.iter_mut().for_each(|t| t.timestamp = 0);
            next.iter_mut()
                .for_each(|f| bounds_set(&mut f.timestamp_min, &mut f.timestamp_max));
        }
        Reply::Internal(_) | Reply::Unavailable { .. } | Reply::Refused { .. } => {}
    }
    reply
}

/// A next page's timestamp bounds, kept only as whether each is set: the bounds come from the
/// rows' timestamps, which differ between the backends, but which bound a page sets does not.
fn bounds_set(timestamp_min: &mut u64, timestamp_max: &mut u64) {
    (*timestamp_min, *timestamp_max) = (
        u64::from(*timestamp_min != 0),
        u64::from(*timestamp_max != 0),
    );
}

fn embedded_replies() -> Vec<Vec<Reply>> {
    let mut embedded = Backend::embedded();
    let replies = exchange(&mut embedded);
    embedded.stop();
    replies
}

#[test]
fn the_tigerbeetle_backend_answers_as_the_embedded_ledger_does() {
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let mut backend = Backend::start_with(&cluster, backend_config(), 64);
    let cluster_replies = exchange(&mut backend);
    let metrics = backend.stop();
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
    let backend = Backend::start_with(&cluster, CoreConfig { sessions: 4, ..backend_config() }, 4_096);
    let (client, completions) = (&backend.client, &backend.completions);
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
    // (reply seq, the timestamp the reply gave): compared below with what the cluster holds.
    let mut stamped = Vec::new();
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
                created += 1;
                stamped.push((c.reply_to.seq, results[0].timestamp.expect("a created transfer's timestamp")));
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
    // The timestamps the replies gave (computed from each reply header) are the cluster's: a
    // sample of them, looked up one by one.
    for &(seq, timestamp) in stamped.iter().step_by(997) {
        let id = 1_000 + u128::from(seq - 1);
        client
            .submit(Submission { reply_to: reply_to(0), command: Command::LookupTransfer(id) })
            .expect("room");
        match completions.recv_timeout(REPLY_WAIT).expect("lookup").reply {
            Reply::Transfer { transfer: Some(t), .. } => assert_eq!(t.timestamp, timestamp, "transfer {id}"),
            other => panic!("{other:?}"),
        }
    }
    let metrics = backend.stop();
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

/// The backend's settings in these tests: a 10 s deadline (a slow shared machine must not turn
/// into 503s), the guard for imported posts and voids on (the attack tests exercise it).
fn backend_config() -> CoreConfig {
    CoreConfig {
        sessions: 2,
        batch_events_max: 8189,
        request_timeout: Duration::from_secs(10),
        retry_after_s: 1,
        pending_max: PENDING_SUBMISSIONS_MAX,
        probe_interval: PROBE_INTERVAL,
        guard_imported_resolutions: true,
    }
}

/// A backend thread in front of a cluster (or the embedded ledger), and its end of the queues.
struct Backend {
    client: LedgerClient,
    completions: Receiver<Completion>,
    thread: std::thread::JoinHandle<()>,
    metrics: Metrics,
    seq: u64,
}

impl Backend {
    fn start(cluster: &LocalCluster, request_timeout: Duration) -> Backend {
        Backend::start_with(cluster, CoreConfig { request_timeout, ..backend_config() }, 64)
    }

    /// A backend thread with `config` and submission queues of `queue_depth_max`.
    fn start_with(cluster: &LocalCluster, config: CoreConfig, queue_depth_max: usize) -> Backend {
        let (cluster_id, addresses) = (cluster.cluster_id(), cluster.addresses());
        Backend::spawn(queue_depth_max, move |submissions, replies_tx, metrics| {
            driver::run(cluster_id, &addresses, config, &submissions, &replies_tx, &metrics)
                .expect("the sessions opened")
        })
    }

    /// The queues of one worker, and a thread that serves them with `run` (given the ledger
    /// thread's ends and a handle on the metrics).
    fn spawn(
        queue_depth_max: usize,
        run: impl FnOnce(committer::Queues, Vec<Sender<Completion>>, Metrics) + Send + 'static,
    ) -> Backend {
        let committer::Channels {
            client,
            submissions,
            replies_tx,
            mut replies_rx,
        } = committer::channels(queue_depth_max, 1);
        let metrics = Metrics::new();
        let thread_metrics = metrics.clone();
        let thread = std::thread::spawn(move || run(submissions, replies_tx, thread_metrics));
        Backend {
            client,
            completions: replies_rx.remove(0),
            thread,
            metrics,
            seq: 0,
        }
    }

    /// Submits `commands` together (joined where the rules allow) and returns their replies in
    /// order.
    fn ask(&mut self, commands: Vec<Command>) -> Vec<Reply> {
        let first = self.seq;
        let n = commands.len();
        for command in commands {
            self.client
                .submit(Submission {
                    reply_to: reply_to(self.seq),
                    command,
                })
                .expect("room in the queue");
            self.seq += 1;
        }
        let mut replies: Vec<Option<Reply>> = vec![None; n];
        for _ in 0..n {
            let c = self
                .completions
                .recv_timeout(REPLY_WAIT)
                .expect("a reply within the wait");
            replies[(c.reply_to.seq - first) as usize] = Some(c.reply);
        }
        replies.into_iter().map(|r| r.expect("one each")).collect()
    }

    fn stop(self) -> Metrics {
        drop(self.client);
        self.thread.join().expect("the ledger thread");
        self.metrics
    }

    /// The embedded ledger thread, in memory, behind the same queues.
    fn embedded() -> Backend {
        Backend::spawn(64, |submissions, replies_tx, metrics| {
            let mut ledger = ledger_svc::Ledger::open(
                ledger_svc::SimStorage::new(),
                ledger_svc::LedgerConfig::default(),
            )
            .expect("open");
            committer::run(&mut ledger, &submissions, &replies_tx, &committer::CommitSettings::fsync(8189, 2), &metrics).expect("run");
        })
    }
}

/// Whether process `pid` runs (exists and is not a zombie waiting to be reaped).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name in parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

fn statuses(reply: &Reply) -> Vec<&'static str> {
    match reply {
        Reply::Created(results) => results.iter().map(|e| e.status).collect(),
        other => panic!("{other:?}"),
    }
}

/// The base of the timestamps the attack imports: far in the past of the cluster's clock.
const ATTACK_BASE: u64 = 1_000_000_000;

fn imported_account(id: u128, timestamp: u64) -> Account {
    Account {
        flags: AccountFlags::IMPORTED,
        timestamp,
        ..account(id, AccountFlags::empty())
    }
}

fn imported_transfer(id: u128, timestamp: u64, flags: TransferFlags) -> Transfer {
    Transfer {
        flags: flags | TransferFlags::IMPORTED,
        timestamp,
        ..transfer(id, 1, 2, 10, TransferFlags::empty())
    }
}

fn imported_resolve(id: u128, pending_id: u128, timestamp: u64) -> Transfer {
    Transfer {
        id,
        pending_id,
        amount: u128::MAX,
        flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
        timestamp,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// The attack of docs/cluster-backend.md "Requests that would stop the cluster": a client with
/// the write role imports a pending transfer, then an imported post whose timestamp is before
/// the pending transfer's (or both in one request). TigerBeetle 0.16.78 asserts the order before
/// it checks the import's timestamp, so the replica stops, and stops again replaying the
/// request at every restart. The backend refuses such a submission before it reaches the
/// cluster: the replica still runs and still serves, and every other submission is answered.
#[test]
fn an_imported_post_older_than_its_pending_transfer_is_refused_and_the_cluster_keeps_serving() {
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let pid = cluster.pid(0).expect("replica 0 runs");
    let mut backend = Backend::start(&cluster, Duration::from_secs(3));
    let setup = backend.ask(vec![Command::Mutate(Operation::CreateAccounts(vec![
        imported_account(1, ATTACK_BASE),
        imported_account(2, ATTACK_BASE + 1),
    ]))]);
    assert_eq!(statuses(&setup[0]), ["ok", "ok"]);
    let pending = backend.ask(vec![transfers(vec![imported_transfer(
        10,
        ATTACK_BASE + 100,
        TransferFlags::PENDING,
    )])]);
    assert_eq!(statuses(&pending[0]), ["ok"]);

    // The post is older than the pending transfer the cluster holds.
    let attack = backend.ask(vec![transfers(vec![imported_resolve(
        11,
        10,
        ATTACK_BASE + 50,
    )])]);
    let alive = runs(pid);
    assert!(
        !matches!(attack[0], Reply::Unavailable { .. }) && alive,
        "the attack got {:?}; the replica {}",
        attack[0],
        if alive { "runs" } else { "has stopped" }
    );
    assert_refused(&attack[0]);

    // Both in one submission, joined behind an innocent one, and followed by another: only the
    // attack is refused.
    let joined = backend.ask(vec![
        transfers(vec![imported_transfer(
            20,
            ATTACK_BASE + 200,
            TransferFlags::empty(),
        )]),
        transfers(vec![
            imported_transfer(21, ATTACK_BASE + 300, TransferFlags::PENDING),
            imported_resolve(22, 21, ATTACK_BASE + 300),
        ]),
        transfers(vec![imported_resolve(23, 10, ATTACK_BASE + 400)]),
    ]);
    assert!(runs(pid), "the replica has stopped: {joined:?}");
    assert_eq!(statuses(&joined[0]), ["ok"]);
    assert_refused(&joined[1]);
    assert_eq!(
        statuses(&joined[2]),
        ["ok"],
        "a post after its pending transfer goes through"
    );

    // The cluster still serves: nothing of the refused submissions was applied.
    let after = backend.ask(vec![
        Command::LookupTransfer(11),
        Command::LookupTransfer(21),
        Command::LookupAccount(1),
    ]);
    assert!(
        matches!(after[0], Reply::Transfer { transfer: None, .. }),
        "{after:?}"
    );
    assert!(
        matches!(after[1], Reply::Transfer { transfer: None, .. }),
        "{after:?}"
    );
    match &after[2] {
        Reply::Account {
            account: Some(a), ..
        } => assert_eq!(
            (a.debits_posted, a.debits_pending),
            (20, 0),
            "transfer 20 and the post of 10"
        ),
        other => panic!("{other:?}"),
    }
    assert!(runs(pid), "the replica has stopped");
    let metrics = backend.stop();
    assert_eq!(metrics.cluster.deadline_expiries.get(), 0);
    assert_guarded(&metrics, 2);
}

fn assert_refused(reply: &Reply) {
    match reply {
        Reply::Refused { code, message } => {
            assert_eq!(*code, "tigerbeetle_0_16_78_limitation");
            assert!(message.contains("TigerBeetle 0.16.78"), "{message}");
        }
        other => panic!("not refused: {other:?}"),
    }
}

fn assert_guarded(metrics: &Metrics, refused: u64) {
    assert_eq!(metrics.cluster.refused.get(), refused);
    // The guard's lookups: one before each request that held an imported post.
    assert!(
        metrics
            .cluster
            .requests
            .with_label_values(&["lookup_transfers"])
            .get()
            >= 2
    );
}

/// TigerBeetle decides from a request's first event whether the whole batch is imported; the
/// embedded ledger decides it for each submission. Submissions whose first events differ in
/// `imported` are queued behind a lookup (so they wait together and would be joined) and must
/// get the embedded ledger's answers, not `imported_event_expected`/`_not_expected`.
#[test]
fn submissions_joined_keep_their_own_imported_batch() {
    let base = ATTACK_BASE;
    let rounds = || {
        vec![
            vec![Command::Mutate(Operation::CreateAccounts(vec![
                imported_account(1, base),
                imported_account(2, base + 1),
            ]))],
            // Imported, then plain: both `ok` (the plain one gets the clock's timestamp).
            vec![
                Command::LookupAccount(1),
                transfers(vec![imported_transfer(
                    30,
                    base + 10,
                    TransferFlags::empty(),
                )]),
                transfers(vec![transfer(31, 1, 2, 1, TransferFlags::empty())]),
            ],
            // Plain, then imported: the import is older than the plain transfers, so
            // `imported_event_timestamp_must_not_regress` in its own batch.
            vec![
                Command::LookupAccount(2),
                transfers(vec![transfer(32, 1, 2, 1, TransferFlags::empty())]),
                transfers(vec![imported_transfer(
                    33,
                    base + 20,
                    TransferFlags::empty(),
                )]),
            ],
        ]
    };
    let run = |backend: &mut Backend| -> Vec<Vec<Reply>> {
        rounds()
            .into_iter()
            .map(|round| backend.ask(round))
            .collect()
    };
    let cluster = LocalCluster::start(1).expect("start a 1-replica cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let mut backend = Backend::start(&cluster, Duration::from_secs(10));
    let ours = run(&mut backend);
    backend.stop();
    let mut embedded = Backend::embedded();
    let theirs = run(&mut embedded);
    embedded.stop();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (round, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        // The lookups only hold the writes back (the embedded ledger may answer them after
        // the writes): the writes' answers are compared.
        for (i, (x, y)) in ours
            .iter()
            .zip(theirs)
            .enumerate()
            .skip(usize::from(round > 0))
        {
            assert_eq!(
                without_timestamps(x, &mut a),
                without_timestamps(y, &mut b),
                "round {round}, reply {i}: TigerBeetle {x:?}, embedded {y:?}"
            );
        }
    }
    assert_eq!(statuses(&ours[1][1]), ["ok"]);
    assert_eq!(statuses(&ours[1][2]), ["ok"]);
    assert_eq!(statuses(&ours[2][1]), ["ok"]);
    assert_eq!(
        statuses(&ours[2][2]),
        ["imported_event_timestamp_must_not_regress"]
    );
}
