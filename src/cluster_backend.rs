//! The ledger on a TigerBeetle cluster (`ledger.backend = "tigerbeetle"`,
//! docs/cluster-backend.md): the same submission queues in and the same completions out as the
//! embedded ledger thread (src/committer.rs), with TigerBeetle requests in between.
//!
//! [`Core`] is the policy, sans I/O: it takes submissions, the cluster's replies and the time,
//! and emits requests to send and replies to deliver. Unit tests drive it with a fake cluster;
//! the thread (feature `tigerbeetle`) drives it with tb_client sessions and channels.
//!
//! What it promises:
//! - A reply leaves only after the cluster replied, that is after the request was committed on
//!   a quorum of replicas: the appliance keeps no log of its own.
//! - Consecutive create submissions of one kind are joined into one request up to
//!   `batch_events_max` events, but never after a submission whose last event is `linked`:
//!   TigerBeetle would carry the open chain into the next submission's events, where the
//!   embedded ledger answers `linked_event_chain_open` for it. Such a submission ends its
//!   request, so both backends answer it the same.
//!   Nor are submissions whose first events differ in `imported`: TigerBeetle takes a request's
//!   first event to decide whether the whole batch is imported, the embedded ledger each
//!   submission's.
//! - Nothing that would stop the cluster is sent: a `create_transfers` request holding imported
//!   posts or voids is preceded by a lookup of their pending transfers, and a submission whose
//!   post or void is not after its pending transfer (`cluster::guard`) is answered
//!   [`Reply::Refused`] (422) instead of being sent.
//! - Order: a write request goes out only when nothing else is in flight, and reads only when
//!   no write is in flight, so every request sees the writes submitted before it, as with the
//!   embedded ledger (reads run concurrently across sessions).
//! - Created objects carry their timestamps: TigerBeetle 0.16's create reply has none, but its
//!   header carries the timestamp the request was prepared with, from which TigerBeetle derives
//!   every event's (`T - n + i + 1` for event i of n, an imported event its own), so they are
//!   computed. A create reply without it (never from the client library) breaks the protocol.
//! - Deadlines: every request and every waiting submission has one (`request_timeout`). Past
//!   it, the waiting submissions are answered [`Reply::Unavailable`] (503 with Retry-After);
//!   a reply that arrives later is dropped (the request may have been applied: a client that
//!   retries with the same ids gets `exists`). A session whose request expired stays busy until
//!   tb_client gives that request back, so requests in flight never exceed the sessions.
//! - Bounds: at most `sessions` requests in flight and `pending_max` submissions held; when
//!   both are full the thread stops draining its queues, which fill, and the workers answer
//!   503 `ledger_busy`.
//! - Reachability: any reply (late ones too) marks the cluster reachable, an expired request
//!   marks it unreachable; when idle a cheap probe (a lookup of one id) goes out every
//!   `probe_interval`, so `/readyz` recovers by itself when the cluster returns.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use cluster::wire::{self, Op};
use cluster::ClusterError;
use ledger_svc::api::{self, Command, PageRows, Reply};
use ledger_svc::model::{AccountFlags, Operation, OperationReply, Transfer, TransferFlags};

use crate::committer::{ReplyTo, Submission};

/// The error code of a submission refused because it would stop a TigerBeetle 0.16.78
/// cluster (HTTP 422; docs/api.md).
pub const REFUSED_CODE: &str = "tigerbeetle_0_16_78_limitation";

/// Why a submission holding an imported post or void is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// The lookup showed it would stop the cluster (`imported_resolutions = "guard"`).
    WouldStop,
    /// Every one is refused (`imported_resolutions = "refuse"`, the default).
    Outright,
}

/// Submissions the backend holds that are not yet in a request: beyond this it stops draining
/// the submission queues (docs/limits.md).
pub const PENDING_SUBMISSIONS_MAX: usize = 4_096;

/// How often an idle backend probes the cluster (a lookup of one id), so readiness follows
/// the cluster without traffic.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// The shortest time between two log lines about refused submissions (each line counts the
/// refusals since the last one; the metric counts every one).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The policy's settings (from `[ledger.tigerbeetle]`).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    pub sessions: usize,
    pub batch_events_max: usize,
    pub request_timeout: Duration,
    pub retry_after_s: u32,
    pub pending_max: usize,
    pub probe_interval: Duration,
    /// `imported_resolutions = "guard"`: an imported post or void is sent unless a lookup of
    /// its pending transfer shows it would stop the cluster. Otherwise ("refuse") every one is
    /// refused unsent: another writer of the cluster (another appliance) could create the
    /// pending transfer between the lookup and the create, which the guard cannot see.
    pub guard_imported_resolutions: bool,
}

/// What the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `body` as `op` on client session `session`, tagged `tag`.
    Send {
        session: usize,
        tag: u64,
        op: Op,
        body: Vec<u8>,
    },
    /// Deliver `reply` to the worker of `reply_to`.
    Reply { reply_to: ReplyTo, reply: Reply },
}

/// Counts the driver turns into metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests whose deadline passed before the cluster replied.
    pub requests_expired: u64,
    /// Submissions answered 503 `ledger_unavailable` (in an expired request, or waiting).
    pub submissions_unavailable: u64,
    /// Replies that came after their request's deadline (dropped).
    pub late_replies: u64,
    /// Requests tb_client gave back without a reply, or whose reply broke the protocol.
    pub failed: u64,
    /// Submissions refused because they would stop a TigerBeetle 0.16.78 cluster
    /// (`cluster::guard`), answered [`Reply::Refused`] without being sent.
    pub refused: u64,
}

struct Waiting {
    reply_to: ReplyTo,
    command: Command,
    arrived: Instant,
}

enum Stage {
    /// A create request: its submissions in order, each with its events.
    Create(Vec<(ReplyTo, Operation)>),
    /// The lookup of pending transfers that goes before a `create_transfers` request holding
    /// imported posts or voids, so none that would stop the cluster is sent
    /// (`cluster::guard`).
    Guard(Vec<(ReplyTo, Operation)>),
    LookupAccounts(Vec<(ReplyTo, u128)>),
    LookupTransfers(Vec<(ReplyTo, u128)>),
    Query {
        reply_to: ReplyTo,
        command: Command,
        limit: usize,
    },
    Probe,
}

impl Stage {
    fn reply_tos(&self) -> Vec<ReplyTo> {
        match self {
            Stage::Create(subs) | Stage::Guard(subs) => subs.iter().map(|(r, _)| *r).collect(),
            Stage::LookupAccounts(subs) | Stage::LookupTransfers(subs) => {
                subs.iter().map(|(r, _)| *r).collect()
            }
            Stage::Query { reply_to, .. } => vec![*reply_to],
            Stage::Probe => Vec::new(),
        }
    }
}

struct Request {
    session: usize,
    op: Op,
    /// `None` once the deadline passed: its submissions were answered, the session waits for
    /// tb_client to give the request back.
    stage: Option<Stage>,
    write: bool,
    sent: Instant,
    deadline: Instant,
}

/// The backend's policy: batching, splitting, deadlines, ordering and reachability.
pub struct Core {
    config: CoreConfig,
    pending: VecDeque<Waiting>,
    requests: HashMap<u64, Request>,
    /// Per session: the tag of its request in flight (live or expired).
    busy: Vec<Option<u64>>,
    next_tag: u64,
    reachable: bool,
    last_reply: Option<Instant>,
    last_probe: Option<Instant>,
    stopping: bool,
    stats: Stats,
    /// When a refusal was last logged, and how many came since: refusals are logged at most
    /// once per [`REFUSAL_LOG_INTERVAL`], never once per request.
    refusal_logged: Option<Instant>,
    refusals_unlogged: u64,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("pending", &self.pending.len())
            .field("requests", &self.requests.len())
            .field("reachable", &self.reachable)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn ends_in_open_chain(operation: &Operation) -> bool {
    match operation {
        Operation::CreateAccounts(events) => events
            .last()
            .is_some_and(|e| e.flags.contains(AccountFlags::LINKED)),
        Operation::CreateTransfers(events) => events
            .last()
            .is_some_and(|e| e.flags.contains(TransferFlags::LINKED)),
    }
}

/// Whether the submission's first event is imported (`None` for an empty one). TigerBeetle
/// decides from a request's first event whether the whole batch is imported
/// (`batch_imported = events[0].flags.imported`), and answers an event that differs
/// `imported_event_expected` or `imported_event_not_expected`; the embedded ledger decides it
/// per submission. Only submissions whose first events agree are joined, so each decides for
/// itself in both backends.
fn first_imported(operation: &Operation) -> Option<bool> {
    match operation {
        Operation::CreateAccounts(events) => events
            .first()
            .map(|e| e.flags.contains(AccountFlags::IMPORTED)),
        Operation::CreateTransfers(events) => events
            .first()
            .map(|e| e.flags.contains(TransferFlags::IMPORTED)),
    }
}

/// The transfers of a request's submissions, one slice each.
fn transfer_events(subs: &[(ReplyTo, Operation)]) -> Vec<&[Transfer]> {
    subs.iter()
        .map(|(_, operation)| match operation {
            Operation::CreateTransfers(events) => events.as_slice(),
            Operation::CreateAccounts(_) => &[],
        })
        .collect()
}

fn create_op(operation: &Operation) -> Op {
    match operation {
        Operation::CreateAccounts(_) => Op::CreateAccounts,
        Operation::CreateTransfers(_) => Op::CreateTransfers,
    }
}

impl Core {
    pub fn new(config: CoreConfig) -> Core {
        assert!(config.sessions >= 1 && config.batch_events_max >= 1 && config.pending_max >= 1);
        Core {
            busy: vec![None; config.sessions],
            config,
            pending: VecDeque::new(),
            requests: HashMap::new(),
            next_tag: 0,
            // Unknown until the first reply: not ready before the cluster has answered once.
            reachable: false,
            last_reply: None,
            last_probe: None,
            stopping: false,
            stats: Stats::default(),
            refusal_logged: None,
            refusals_unlogged: 0,
        }
    }

    /// Room for another submission.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.config.pending_max
    }

    /// Takes a submission (the caller checked [`Core::has_room`]).
    pub fn submit(&mut self, now: Instant, submission: Submission) {
        debug_assert!(self.has_room());
        self.pending.push_back(Waiting {
            reply_to: submission.reply_to,
            command: submission.command,
            arrived: now,
        });
    }

    /// No more submissions will come: no more probes; the stop waits only for live requests.
    pub fn stop(&mut self) {
        self.stopping = true;
    }

    /// Nothing waits: no submission held, no live request (expired ones may still be in
    /// tb_client; nobody waits for them).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
            && self
                .requests
                .values()
                .all(|r| r.stage.is_none() || matches!(r.stage, Some(Stage::Probe)))
    }

    /// Whether the cluster answered last (see the module's "Reachability").
    pub fn reachable(&self) -> bool {
        self.reachable
    }

    /// Sessions with a request in flight (live or expired).
    pub fn in_flight(&self) -> usize {
        self.busy.iter().filter(|b| b.is_some()).count()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The client session request `tag` was sent on, while it is in flight.
    pub fn session_of(&self, tag: u64) -> Option<usize> {
        self.requests.get(&tag).map(|r| r.session)
    }

    /// The cluster answered request `tag` (or tb_client gave it back), with the reply header's
    /// timestamp (`reply_timestamp`, 0 without a reply). Returns the request's operation and
    /// time in flight for the metrics, when the tag was known.
    ///
    /// A create request's created timestamps are computed from `reply_timestamp` (each request
    /// carries one batch: one packet per session at a time, so tb_client never merges two); a
    /// create reply whose header timestamp cannot hold its events breaks the protocol.
    pub fn completed(
        &mut self,
        now: Instant,
        tag: u64,
        result: Result<Vec<u8>, ClusterError>,
        reply_timestamp: u64,
        out: &mut Vec<Action>,
    ) -> Option<(Op, Duration)> {
        let request = self.requests.remove(&tag)?;
        if self.busy[request.session] == Some(tag) {
            self.busy[request.session] = None;
        }
        let took = now.saturating_duration_since(request.sent);
        let body = match result {
            Ok(body) => {
                self.reachable = true;
                self.last_reply = Some(now);
                body
            }
            Err(error) => {
                self.stats.failed += 1;
                log::warn!("TigerBeetle request {:?} failed: {error}", request.op);
                if let Some(stage) = request.stage {
                    self.answer_unavailable(stage.reply_tos(), out);
                }
                return Some((request.op, took));
            }
        };
        let Some(stage) = request.stage else {
            self.stats.late_replies += 1;
            return Some((request.op, took));
        };
        let protocol = |core: &mut Core,
                        error: wire::WireError,
                        reply_tos: Vec<ReplyTo>,
                        out: &mut Vec<Action>| {
            core.stats.failed += 1;
            log::error!("TigerBeetle reply broke the protocol: {error}");
            for reply_to in reply_tos {
                out.push(Action::Reply {
                    reply_to,
                    reply: Reply::Internal("the TigerBeetle cluster's reply broke the protocol"),
                });
            }
        };
        match stage {
            Stage::Create(subs) => {
                let events: usize = subs.iter().map(|(_, o)| o.len()).sum();
                let results = match wire::create_results(request.op, events, &body) {
                    Ok(results) => results,
                    Err(e) => {
                        protocol(self, e, subs.iter().map(|(r, _)| *r).collect(), out);
                        return Some((request.op, took));
                    }
                };
                match computed_timestamps(request.op, &subs, &results, reply_timestamp) {
                    Ok(timestamps) => answer_created(&subs, &results, &timestamps, out),
                    Err(e) => protocol(self, e, subs.iter().map(|(r, _)| *r).collect(), out),
                }
            }
            Stage::Guard(subs) => {
                match wire::transfers(request.op, &body, wire::BATCH_EVENTS_MAX) {
                    Ok(rows) => {
                        let stored: HashMap<u128, u64> =
                            rows.iter().map(|t| (t.id, t.timestamp)).collect();
                        // The write goes on the same session: nothing overtook the lookup, nothing
                        // overtakes the write.
                        self.guard(now, request.session, subs, &stored, Refusal::WouldStop, out);
                    }
                    Err(e) => protocol(self, e, subs.iter().map(|(r, _)| *r).collect(), out),
                }
            }
            Stage::LookupAccounts(subs) => match wire::accounts(request.op, &body, subs.len()) {
                Ok(rows) => {
                    let found: HashMap<u128, _> = rows.into_iter().map(|a| (a.id, a)).collect();
                    for (reply_to, id) in subs {
                        out.push(Action::Reply {
                            reply_to,
                            reply: Reply::Account {
                                id,
                                account: found.get(&id).copied(),
                            },
                        });
                    }
                }
                Err(e) => protocol(self, e, subs.iter().map(|(r, _)| *r).collect(), out),
            },
            Stage::LookupTransfers(subs) => match wire::transfers(request.op, &body, subs.len()) {
                Ok(rows) => {
                    let found: HashMap<u128, _> = rows.into_iter().map(|t| (t.id, t)).collect();
                    for (reply_to, id) in subs {
                        out.push(Action::Reply {
                            reply_to,
                            reply: Reply::Transfer {
                                id,
                                transfer: found.get(&id).copied(),
                            },
                        });
                    }
                }
                Err(e) => protocol(self, e, subs.iter().map(|(r, _)| *r).collect(), out),
            },
            Stage::Query {
                reply_to,
                command,
                limit,
            } => {
                let rows = match &command {
                    Command::AccountBalances(_) => {
                        wire::balances(&body, limit).map(PageRows::Balances)
                    }
                    Command::QueryAccounts(_) => {
                        wire::accounts(request.op, &body, limit).map(PageRows::Accounts)
                    }
                    _ => wire::transfers(request.op, &body, limit).map(PageRows::Transfers),
                };
                match rows {
                    Ok(rows) => out.push(Action::Reply {
                        reply_to,
                        reply: api::page_reply(&command, rows),
                    }),
                    Err(e) => protocol(self, e, vec![reply_to], out),
                }
            }
            Stage::Probe => {}
        }
        Some((request.op, took))
    }

    /// Expires what passed its deadline, sends what may go, probes when idle. Call after every
    /// event and at [`Core::next_wake`].
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Action>) {
        // Requests past their deadline: their submissions are answered now.
        let mut expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.stage.is_some() && r.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        expired.sort_unstable();
        for tag in expired {
            let request = self.requests.get_mut(&tag).expect("listed");
            let stage = request.stage.take().expect("live");
            self.reachable = false;
            self.stats.requests_expired += 1;
            let reply_tos = stage.reply_tos();
            self.answer_unavailable(reply_tos, out);
        }
        // Submissions that waited past the deadline without a request (every session busy).
        while self
            .pending
            .front()
            .is_some_and(|w| w.arrived + self.config.request_timeout <= now)
        {
            let waiting = self.pending.pop_front().expect("front");
            self.answer_unavailable(vec![waiting.reply_to], out);
        }
        self.dispatch(now, out);
        if self.probe_due(now) {
            if let Some(session) = self.free_session() {
                self.last_probe = Some(now);
                let mut body = Vec::with_capacity(16);
                wire::encode_ids(&[1], &mut body);
                self.send(
                    now,
                    session,
                    Op::LookupAccounts,
                    body,
                    Stage::Probe,
                    false,
                    out,
                );
            }
        }
    }

    /// When [`Core::poll`] has something to do next without a new event.
    pub fn next_wake(&self) -> Option<Instant> {
        let requests = self
            .requests
            .values()
            .filter(|r| r.stage.is_some())
            .map(|r| r.deadline);
        let pending = self
            .pending
            .front()
            .map(|w| w.arrived + self.config.request_timeout);
        // Before the first probe, `poll` probes at once (the driver polls every turn).
        let idle = self.pending.is_empty() && self.requests.values().all(|r| r.stage.is_none());
        let probe = if self.stopping || !idle {
            None
        } else {
            self.next_probe_at()
        };
        requests.chain(pending).chain(probe).min()
    }

    /// When the next probe is due; `None` before any probe or reply (due at once).
    fn next_probe_at(&self) -> Option<Instant> {
        let last = [self.last_probe, self.last_reply]
            .into_iter()
            .flatten()
            .max();
        last.map(|last| last + self.config.probe_interval)
    }

    fn probe_due(&self, now: Instant) -> bool {
        !self.stopping
            && self.pending.is_empty()
            && self.requests.values().all(|r| r.stage.is_none())
            && self.next_probe_at().is_none_or(|at| at <= now)
    }

    fn free_session(&self) -> Option<usize> {
        self.busy.iter().position(Option::is_none)
    }

    fn answer_unavailable(&mut self, reply_tos: Vec<ReplyTo>, out: &mut Vec<Action>) {
        for reply_to in reply_tos {
            self.stats.submissions_unavailable += 1;
            out.push(Action::Reply {
                reply_to,
                reply: Reply::Unavailable {
                    retry_after_s: self.config.retry_after_s,
                },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: Instant,
        session: usize,
        op: Op,
        body: Vec<u8>,
        stage: Stage,
        write: bool,
        out: &mut Vec<Action>,
    ) {
        self.next_tag += 1;
        let tag = self.next_tag;
        self.busy[session] = Some(tag);
        self.requests.insert(
            tag,
            Request {
                session,
                op,
                stage: Some(stage),
                write,
                sent: now,
                deadline: now + self.config.request_timeout,
            },
        );
        out.push(Action::Send {
            session,
            tag,
            op,
            body,
        });
    }

    /// Sends the create request of `subs` (one kind, joined by [`Core::dispatch`]'s rules).
    fn send_create(
        &mut self,
        now: Instant,
        session: usize,
        subs: Vec<(ReplyTo, Operation)>,
        out: &mut Vec<Action>,
    ) {
        let op = create_op(&subs[0].1);
        let events: usize = subs.iter().map(|(_, o)| o.len()).sum();
        let mut body = Vec::with_capacity(events * ledger_svc::codec::EVENT_SIZE);
        for (_, operation) in &subs {
            wire::encode_operation(operation, &mut body);
        }
        self.send(now, session, op, body, Stage::Create(subs), true, out);
    }

    /// With the timestamps of the pending transfers the cluster holds: answers the submissions
    /// that would stop the cluster [`Reply::Refused`] and sends the others' request.
    fn guard(
        &mut self,
        now: Instant,
        session: usize,
        subs: Vec<(ReplyTo, Operation)>,
        stored: &HashMap<u128, u64>,
        why: Refusal,
        out: &mut Vec<Action>,
    ) {
        let stopping =
            cluster::guard::stopping_events(&transfer_events(&subs), |id| stored.get(&id).copied());
        let mut kept = Vec::with_capacity(subs.len());
        for ((reply_to, operation), stop) in subs.into_iter().zip(stopping) {
            let Some(index) = stop else {
                kept.push((reply_to, operation));
                continue;
            };
            self.stats.refused += 1;
            self.refusals_unlogged += 1;
            out.push(Action::Reply {
                reply_to,
                reply: Reply::Refused {
                    code: REFUSED_CODE,
                    message: match why {
                        Refusal::WouldStop => format!(
                            "event {index} is an imported post or void whose timestamp is not after its pending transfer's: TigerBeetle 0.16.78 would stop on it, so nothing of this request was applied"
                        ),
                        Refusal::Outright => format!(
                            "event {index} is an imported post or void, which this appliance does not send to a TigerBeetle 0.16.78 cluster (ledger.tigerbeetle.imported_resolutions = \"refuse\"): one whose timestamp is not after its pending transfer's stops every replica; nothing of this request was applied"
                        ),
                    },
                },
            });
        }
        if self.refusals_unlogged > 0
            && self
                .refusal_logged
                .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_LOG_INTERVAL)
        {
            log::warn!(
                "refused {} submission(s) holding an imported post or void not after its pending transfer (it would stop the TigerBeetle 0.16.78 cluster; metric ledger_cluster_refused_total)",
                self.refusals_unlogged
            );
            self.refusal_logged = Some(now);
            self.refusals_unlogged = 0;
        }
        if !kept.is_empty() {
            self.send_create(now, session, kept, out);
        }
    }

    /// Sends requests from the head of the pending submissions while a session is free and the
    /// order allows (a write alone; reads together, after the writes before them).
    fn dispatch(&mut self, now: Instant, out: &mut Vec<Action>) {
        loop {
            let Some(head) = self.pending.front() else {
                return;
            };
            let Some(session) = self.free_session() else {
                return;
            };
            let live = || {
                self.requests
                    .values()
                    .filter(|r| r.stage.is_some() && !matches!(r.stage, Some(Stage::Probe)))
            };
            let write = head.command.is_mutation();
            let blocked = if write {
                live().next().is_some()
            } else {
                live().any(|r| r.write)
            };
            if blocked {
                return;
            }
            let head = self.pending.pop_front().expect("front");
            match head.command {
                Command::Mutate(operation) => {
                    let op = create_op(&operation);
                    let mut events = operation.len();
                    let mut open = ends_in_open_chain(&operation);
                    let imported = first_imported(&operation);
                    let mut subs = vec![(head.reply_to, operation)];
                    while !open {
                        let joins = match self.pending.front().map(|w| &w.command) {
                            Some(Command::Mutate(next)) => {
                                create_op(next) == op
                                    && first_imported(next) == imported
                                    && events + next.len() <= self.config.batch_events_max
                            }
                            _ => false,
                        };
                        if !joins {
                            break;
                        }
                        let next = self.pending.pop_front().expect("front");
                        let Command::Mutate(operation) = next.command else {
                            unreachable!("checked above")
                        };
                        events += operation.len();
                        open = ends_in_open_chain(&operation);
                        subs.push((next.reply_to, operation));
                    }
                    // Imported posts or voids: their pending transfers' timestamps first, so
                    // nothing that would stop the cluster is sent (one more round trip, only
                    // for such requests).
                    let pending_ids = if op == Op::CreateTransfers {
                        let all: Vec<Transfer> = transfer_events(&subs)
                            .into_iter()
                            .flatten()
                            .copied()
                            .collect();
                        cluster::guard::pending_ids_to_check(&all)
                    } else {
                        Vec::new()
                    };
                    if pending_ids.is_empty() {
                        self.send_create(now, session, subs, out);
                    } else if !self.config.guard_imported_resolutions {
                        // Refused outright: as if every pending transfer were newer than any
                        // post or void of it.
                        let stored: HashMap<u128, u64> =
                            pending_ids.iter().map(|id| (*id, u64::MAX)).collect();
                        self.guard(now, session, subs, &stored, Refusal::Outright, out);
                    } else {
                        let mut body = Vec::with_capacity(pending_ids.len() * 16);
                        wire::encode_ids(&pending_ids, &mut body);
                        self.send(
                            now,
                            session,
                            Op::LookupTransfers,
                            body,
                            Stage::Guard(subs),
                            true,
                            out,
                        );
                    }
                }
                Command::LookupAccount(id) | Command::LookupTransfer(id) => {
                    let accounts = matches!(head.command, Command::LookupAccount(_));
                    let mut subs = vec![(head.reply_to, id)];
                    while subs.len() < self.config.batch_events_max {
                        let next_id = match self.pending.front().map(|w| &w.command) {
                            Some(Command::LookupAccount(id)) if accounts => *id,
                            Some(Command::LookupTransfer(id)) if !accounts => *id,
                            _ => break,
                        };
                        let next = self.pending.pop_front().expect("front");
                        subs.push((next.reply_to, next_id));
                    }
                    let ids: Vec<u128> = subs.iter().map(|(_, id)| *id).collect();
                    let mut body = Vec::with_capacity(ids.len() * 16);
                    wire::encode_ids(&ids, &mut body);
                    if accounts {
                        self.send(
                            now,
                            session,
                            Op::LookupAccounts,
                            body,
                            Stage::LookupAccounts(subs),
                            false,
                            out,
                        );
                    } else {
                        self.send(
                            now,
                            session,
                            Op::LookupTransfers,
                            body,
                            Stage::LookupTransfers(subs),
                            false,
                            out,
                        );
                    }
                }
                command => {
                    let limit = api::page_probe_limit(&command).expect("a paged query");
                    let mut body = Vec::with_capacity(wire::ACCOUNT_FILTER_SIZE);
                    let op = match &command {
                        Command::AccountTransfers(f) => {
                            wire::encode_account_filter(
                                &ledger_svc::model::AccountFilter { limit, ..*f },
                                &mut body,
                            );
                            Op::GetAccountTransfers
                        }
                        Command::AccountBalances(f) => {
                            wire::encode_account_filter(
                                &ledger_svc::model::AccountFilter { limit, ..*f },
                                &mut body,
                            );
                            Op::GetAccountBalances
                        }
                        Command::QueryAccounts(f) => {
                            wire::encode_query_filter(
                                &ledger_svc::model::QueryFilter { limit, ..*f },
                                &mut body,
                            );
                            Op::QueryAccounts
                        }
                        Command::QueryTransfers(f) => {
                            wire::encode_query_filter(
                                &ledger_svc::model::QueryFilter { limit, ..*f },
                                &mut body,
                            );
                            Op::QueryTransfers
                        }
                        _ => unreachable!("matched above"),
                    };
                    let stage = Stage::Query {
                        reply_to: head.reply_to,
                        command,
                        limit: limit as usize,
                    };
                    self.send(now, session, op, body, stage, false, out);
                }
            }
        }
    }
}

/// The timestamps of the objects a one-batch create request of n events created, from the
/// reply header's timestamp T: event i (counted over the whole request) got `T - n + i + 1`,
/// an imported event its own (TigerBeetle 0.16.78's `execute_create`, and `execute_multi_batch`
/// whose batch timestamp equals T for a request of one batch). A T too small to hold the
/// request (0: no header timestamp) breaks the protocol.
fn computed_timestamps(
    op: Op,
    subs: &[(ReplyTo, Operation)],
    results: &OperationReply,
    reply_timestamp: u64,
) -> Result<HashMap<u128, u64>, wire::WireError> {
    let n = subs.iter().map(|(_, o)| o.len() as u64).sum::<u64>();
    if reply_timestamp <= n {
        return Err(wire::WireError::HeaderTimestamp { op, timestamp: reply_timestamp, events: n });
    }
    let first = reply_timestamp - n + 1;
    let mut timestamps = HashMap::new();
    let mut index = 0u64;
    for (_, operation) in subs {
        match (operation, results) {
            (Operation::CreateAccounts(events), OperationReply::CreateAccounts(r)) => {
                for a in events {
                    if r[index as usize] == ledger_svc::CreateAccountResult::Ok {
                        let own = a.flags.contains(AccountFlags::IMPORTED);
                        timestamps.insert(a.id, if own { a.timestamp } else { first + index });
                    }
                    index += 1;
                }
            }
            (Operation::CreateTransfers(events), OperationReply::CreateTransfers(r)) => {
                for t in events {
                    if r[index as usize] == ledger_svc::CreateTransferResult::Ok {
                        let own = t.flags.contains(TransferFlags::IMPORTED);
                        timestamps.insert(t.id, if own { t.timestamp } else { first + index });
                    }
                    index += 1;
                }
            }
            // `wire::create_results` decodes the reply of the request's own operation.
            _ => unreachable!("the results of {op:?} are of the request's kind"),
        }
    }
    Ok(timestamps)
}

/// Splits the dense results of one request back to its submissions, in order.
fn answer_created(
    subs: &[(ReplyTo, Operation)],
    results: &OperationReply,
    timestamps: &HashMap<u128, u64>,
    out: &mut Vec<Action>,
) {
    let mut at = 0;
    for (reply_to, operation) in subs {
        let n = operation.len();
        let slice = match results {
            OperationReply::CreateAccounts(r) => {
                OperationReply::CreateAccounts(r[at..at + n].to_vec())
            }
            OperationReply::CreateTransfers(r) => {
                OperationReply::CreateTransfers(r[at..at + n].to_vec())
            }
        };
        at += n;
        out.push(Action::Reply {
            reply_to: *reply_to,
            reply: api::created_reply(&slice, operation, |id| timestamps.get(&id).copied()),
        });
    }
}

/// The TigerBeetle backend's metrics (registered beside the others in `metrics.rs`; zero and
/// `ledger_cluster_reachable` 1 with the embedded backend).
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// Requests sent to the cluster, by TigerBeetle operation.
    pub requests: prometheus::IntCounterVec,
    /// From a request's send to its reply (late replies too).
    pub request_seconds: prometheus::Histogram,
    /// Requests whose deadline passed before the cluster replied.
    pub deadline_expiries: prometheus::IntCounter,
    /// Submissions answered 503 `ledger_unavailable`.
    pub unavailable: prometheus::IntCounter,
    /// Replies that came after their deadline (dropped).
    pub late_replies: prometheus::IntCounter,
    /// Requests that failed without a reply, or whose reply broke the protocol.
    pub failed: prometheus::IntCounter,
    /// Submissions refused because they would stop a TigerBeetle 0.16.78 cluster.
    pub refused: prometheus::IntCounter,
    /// Client sessions with a request in flight.
    pub in_flight: prometheus::IntGauge,
    /// 1 while the cluster answers (see `Core`'s reachability); read by `/readyz`.
    pub reachable: prometheus::IntGauge,
}

impl ClusterMetrics {
    pub fn register(registry: &prometheus::Registry) -> ClusterMetrics {
        use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
        let requests = IntCounterVec::new(
            Opts::new(
                "ledger_cluster_requests_total",
                "Requests sent to the TigerBeetle cluster, by operation.",
            ),
            &["operation"],
        )
        .expect("valid");
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ledger_cluster_request_seconds",
                "Time from sending a request to the TigerBeetle cluster to its reply.",
            )
            .buckets(prometheus::exponential_buckets(50e-6, 2.0, 18).expect("valid")),
        )
        .expect("valid");
        let deadline_expiries = IntCounter::new(
            "ledger_cluster_deadline_expiries_total",
            "TigerBeetle requests whose deadline passed before the reply.",
        )
        .expect("valid");
        let unavailable = IntCounter::new(
            "ledger_cluster_unavailable_total",
            "Submissions answered 503 ledger_unavailable (deadline passed).",
        )
        .expect("valid");
        let late_replies = IntCounter::new(
            "ledger_cluster_late_replies_total",
            "TigerBeetle replies that came after their deadline (dropped).",
        )
        .expect("valid");
        let failed = IntCounter::new(
            "ledger_cluster_failed_total",
            "TigerBeetle requests given back without a reply or with a malformed one.",
        )
        .expect("valid");
        let refused = IntCounter::new(
            "ledger_cluster_refused_total",
            "Submissions refused (422) because they would stop a TigerBeetle 0.16.78 cluster.",
        )
        .expect("valid");
        let in_flight = IntGauge::new(
            "ledger_cluster_in_flight",
            "TigerBeetle client sessions with a request in flight.",
        )
        .expect("valid");
        let reachable = IntGauge::new(
            "ledger_cluster_reachable",
            "1 while the TigerBeetle cluster answers (always 1 with the embedded ledger).",
        )
        .expect("valid");
        reachable.set(1);
        for metric in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_seconds.clone()),
            Box::new(deadline_expiries.clone()),
            Box::new(unavailable.clone()),
            Box::new(late_replies.clone()),
            Box::new(failed.clone()),
            Box::new(refused.clone()),
            Box::new(in_flight.clone()),
            Box::new(reachable.clone()),
        ] {
            registry.register(metric).expect("unique");
        }
        ClusterMetrics {
            requests,
            request_seconds,
            deadline_expiries,
            unavailable,
            late_replies,
            failed,
            refused,
            in_flight,
            reachable,
        }
    }
}

#[cfg(feature = "tigerbeetle")]
fn op_name(op: Op) -> &'static str {
    match op {
        Op::CreateAccounts => "create_accounts",
        Op::CreateTransfers => "create_transfers",
        Op::LookupAccounts => "lookup_accounts",
        Op::LookupTransfers => "lookup_transfers",
        Op::GetAccountTransfers => "get_account_transfers",
        Op::GetAccountBalances => "get_account_balances",
        Op::QueryAccounts => "query_accounts",
        Op::QueryTransfers => "query_transfers",
    }
}

/// The backend configured, its thread not started yet (`serve` drops its privileges in
/// between, as for the embedded ledger).
#[derive(Debug)]
#[cfg_attr(not(feature = "tigerbeetle"), allow(dead_code))]
pub struct Prepared {
    channels: crate::committer::Channels,
    cluster_id: u128,
    addresses: String,
    core: CoreConfig,
    metrics: crate::metrics::Metrics,
}

/// Makes the channels (a reply channel for each of `workers`) and the policy from
/// `[ledger.tigerbeetle]`. Nothing is connected yet: the sessions are opened by the thread.
pub fn prepare(
    config: &crate::config::Config,
    workers: usize,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<Prepared> {
    let t = config.tigerbeetle()?;
    Ok(Prepared {
        channels: crate::committer::channels(config.ledger.queue_depth_max, workers),
        cluster_id: config.ledger.cluster_id,
        addresses: t.addresses.clone(),
        core: CoreConfig {
            sessions: t.sessions,
            batch_events_max: t.batch_events_max,
            request_timeout: Duration::from_millis(t.request_timeout_ms),
            retry_after_s: t.retry_after_s,
            pending_max: PENDING_SUBMISSIONS_MAX,
            probe_interval: PROBE_INTERVAL,
            guard_imported_resolutions: t.imported_resolutions == "guard",
        },
        metrics: metrics.clone(),
    })
}

impl Prepared {
    /// Starts the backend thread (`ledger`), confined with the `cluster` allowlist before it
    /// opens its client sessions, so tb_client's own I/O threads inherit that filter.
    #[cfg(feature = "tigerbeetle")]
    pub fn spawn(self) -> anyhow::Result<crate::committer::Started> {
        let Prepared {
            channels,
            cluster_id,
            addresses,
            core,
            metrics,
        } = self;
        let crate::committer::Channels {
            client,
            submissions,
            replies_tx,
            replies_rx,
        } = channels;
        let thread = std::thread::Builder::new()
            .name("ledger".to_owned())
            .spawn(move || {
                crate::sandbox::confine_thread(crate::sandbox::Kind::Cluster);
                if let Err(e) = driver::run(
                    cluster_id,
                    &addresses,
                    core,
                    &submissions,
                    &replies_tx,
                    &metrics,
                ) {
                    log::error!(
                        "FATAL: the TigerBeetle backend could not start its client sessions: {e}"
                    );
                    std::process::exit(70);
                }
            })?;
        Ok(crate::committer::Started {
            client,
            replies: replies_rx,
            thread,
        })
    }

    #[cfg(not(feature = "tigerbeetle"))]
    pub fn spawn(self) -> anyhow::Result<crate::committer::Started> {
        anyhow::bail!(
            "ledger.backend = \"tigerbeetle\" needs a binary built with the `tigerbeetle` feature"
        )
    }
}

/// The backend thread: tb_client sessions, the submission queues and the reply channels
/// around a [`Core`].
#[cfg(feature = "tigerbeetle")]
pub mod driver {
    use std::time::{Duration, Instant};

    use cluster::client::{Client, Completion as TbCompletion};
    use cluster::ClusterError;
    use crossbeam_channel::{Sender, TryRecvError};

    use super::{op_name, Action, Core, CoreConfig};
    use crate::committer::{Completion, Queues};
    use crate::metrics::Metrics;

    /// The longest the idle thread waits before it beats its heartbeat again.
    const HEARTBEAT_TICK: Duration = Duration::from_millis(250);

    /// Runs until every `LedgerClient` is dropped, the queues are drained and every live
    /// request is answered or past its deadline (so a stop never waits longer than one
    /// deadline on a dead cluster). Err only when the sessions cannot be opened.
    pub fn run(
        cluster_id: u128,
        addresses: &str,
        config: CoreConfig,
        rx: &Queues,
        replies: &[Sender<Completion>],
        metrics: &Metrics,
    ) -> Result<(), ClusterError> {
        let heartbeat = metrics.health.register("ledger");
        let m = &metrics.cluster;
        m.reachable.set(0);
        // Completions are bounded by the requests in flight: at most one per session (and what
        // a replaced session gives back as it closes).
        let (tx, completions) = crossbeam_channel::unbounded::<TbCompletion>();
        let mut sessions = (0..config.sessions)
            .map(|_| Client::connect_to(cluster_id, addresses, tx.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        log::info!(
            "ledger backend: TigerBeetle cluster {cluster_id} at {addresses}, {} client session(s)",
            sessions.len()
        );
        let mut core = Core::new(config);
        let mut out = Vec::new();
        let mut clients_gone = false;
        let never = crossbeam_channel::never();
        let mut arrived: Option<TbCompletion> = None;
        // What the metrics already count: replies (above) and `poll` (below) both move the
        // core's counts, so the difference is taken once per turn against this.
        let mut before = core.stats().clone();
        loop {
            heartbeat.beat();
            let now = Instant::now();
            while let Some(c) = arrived.take().or_else(|| completions.try_recv().ok()) {
                // An evicted session (the cluster keeps a bounded number of client sessions and
                // evicts the least recently used) fails every later request: open a new one.
                let evicted = matches!(&c.result, Err(ClusterError::Packet(kind)) if kind.contains("ClientEvicted"));
                let session = core.session_of(c.tag);
                if let Some((_, took)) = core.completed(now, c.tag, c.result, c.timestamp, &mut out) {
                    m.request_seconds.observe(took.as_secs_f64());
                }
                if let (true, Some(session)) = (evicted, session) {
                    log::warn!("TigerBeetle client session {session} was evicted by the cluster; opening a new one");
                    sessions[session] = Client::connect_to(cluster_id, addresses, tx.clone())?;
                }
            }
            while core.has_room() {
                match rx.writes.try_recv() {
                    Ok(s) => core.submit(now, s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        clients_gone = true;
                        break;
                    }
                }
            }
            while core.has_room() {
                match rx.reads.try_recv() {
                    Ok(s) => core.submit(now, s),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        clients_gone = true;
                        break;
                    }
                }
            }
            metrics
                .ledger_queue_depth
                .set((rx.writes.len() + rx.reads.len()) as i64);
            if clients_gone {
                core.stop();
            }
            core.poll(now, &mut out);
            for action in out.drain(..) {
                match action {
                    Action::Send {
                        session,
                        tag,
                        op,
                        body,
                    } => {
                        m.requests.with_label_values(&[op_name(op)]).inc();
                        sessions[session].submit(tag, op, body);
                    }
                    Action::Reply { reply_to, reply } => {
                        if let ledger_svc::api::Reply::Created(_) = reply {
                            metrics.ledger_requests.inc();
                        }
                        // A worker that has stopped no longer needs its replies.
                        let _ = replies[reply_to.worker].send(Completion { reply_to, reply });
                    }
                }
            }
            let after = core.stats();
            m.deadline_expiries
                .inc_by(after.requests_expired - before.requests_expired);
            m.unavailable
                .inc_by(after.submissions_unavailable - before.submissions_unavailable);
            m.late_replies
                .inc_by(after.late_replies - before.late_replies);
            m.failed.inc_by(after.failed - before.failed);
            m.refused.inc_by(after.refused - before.refused);
            before = after.clone();
            m.in_flight.set(core.in_flight() as i64);
            m.reachable.set(i64::from(core.reachable()));
            if clients_gone && rx.writes.is_empty() && rx.reads.is_empty() && core.is_idle() {
                break;
            }
            let wait = core.next_wake().map_or(HEARTBEAT_TICK, |at| {
                at.saturating_duration_since(Instant::now())
                    .min(HEARTBEAT_TICK)
            });
            let room = !clients_gone && core.has_room();
            let writes = if room { &rx.writes } else { &never };
            let reads = if room { &rx.reads } else { &never };
            let timer = crossbeam_channel::after(wait);
            crossbeam_channel::select! {
                recv(completions) -> c => arrived = c.ok(),
                recv(writes) -> s => match s {
                    Ok(s) => core.submit(Instant::now(), s),
                    Err(_) => clients_gone = true,
                },
                recv(reads) -> s => match s {
                    Ok(s) => core.submit(Instant::now(), s),
                    Err(_) => clients_gone = true,
                },
                recv(timer) -> _ => {},
            }
        }
        m.in_flight.set(0);
        log::info!("ledger backend stopped: {:?}", core.stats());
        // Dropping the sessions gives back what tb_client still holds (expired requests).
        drop(sessions);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_svc::model::{Account, CreateTransferResult, Transfer};

    fn config() -> CoreConfig {
        CoreConfig {
            sessions: 2,
            batch_events_max: 8189,
            request_timeout: Duration::from_secs(2),
            retry_after_s: 3,
            pending_max: 64,
            probe_interval: Duration::from_millis(500),
            guard_imported_resolutions: true,
        }
    }

    fn to(seq: u64) -> ReplyTo {
        ReplyTo {
            worker: 0,
            slot: seq as usize,
            generation: 1,
            seq,
        }
    }

    fn transfers(ids: &[u128], linked_last: bool) -> Command {
        let mut events: Vec<Transfer> = ids
            .iter()
            .map(|&id| Transfer {
                id,
                debit_account_id: 1,
                credit_account_id: 2,
                amount: 1,
                ledger: 1,
                code: 1,
                ..Transfer::default()
            })
            .collect();
        if linked_last {
            events.last_mut().expect("one").flags = TransferFlags::LINKED;
        }
        Command::Mutate(Operation::CreateTransfers(events))
    }

    /// The header timestamp of a reply whose timestamp nothing reads (a lookup's, a probe's,
    /// a late one's): the client library gives every reply one.
    const REPLY_TIMESTAMP: u64 = 1_000_000;

    fn sends(out: &[Action]) -> Vec<(u64, Op, usize)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { tag, op, body, .. } => Some((*tag, *op, body.len())),
                _ => None,
            })
            .collect()
    }

    fn replies(out: &mut Vec<Action>) -> Vec<(u64, Reply)> {
        let mut got = Vec::new();
        out.retain(|a| match a {
            Action::Reply { reply_to, reply } => {
                got.push((reply_to.seq, reply.clone()));
                false
            }
            _ => true,
        });
        got
    }

    /// A core that has answered one probe: the cluster is reachable, nothing in flight.
    /// Submits `command` as request `seq` of the one worker (see [`to`]).
    fn submit(core: &mut Core, now: Instant, seq: u64, command: Command) {
        core.submit(now, Submission { reply_to: to(seq), command });
    }

    fn started(t0: Instant) -> Core {
        let mut core = Core::new(config());
        let mut out = Vec::new();
        core.poll(t0, &mut out);
        let probe = sends(&out);
        assert_eq!(probe.len(), 1, "an idle core probes the cluster: {out:?}");
        assert_eq!(probe[0].1, Op::LookupAccounts);
        core.completed(t0, probe[0].0, Ok(Vec::new()), REPLY_TIMESTAMP, &mut out);
        assert!(core.reachable());
        core
    }

    fn sparse(pairs: &[(u32, u32)]) -> Vec<u8> {
        pairs
            .iter()
            .flat_map(|(i, c)| i.to_le_bytes().into_iter().chain(c.to_le_bytes()))
            .collect()
    }

    fn transfer_rows(rows: &[(u128, u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        for &(id, timestamp) in rows {
            ledger_svc::codec::write_transfer(
                &mut body,
                &Transfer {
                    id,
                    timestamp,
                    ..Transfer::default()
                },
            );
        }
        body
    }

    #[test]
    fn a_submission_ending_in_an_open_chain_ends_its_request() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        submit(&mut core, t0, 1, transfers(&[10], false));
        submit(&mut core, t0, 2, transfers(&[11, 12], true));
        submit(&mut core, t0, 3, transfers(&[13], false));
        core.poll(t0, &mut out);
        // 1 and 2 joined (3 events); 3 not joined after 2's open chain, and it waits: one
        // write in flight at a time.
        let first = sends(&out);
        assert_eq!(first.len(), 1, "{out:?}");
        assert_eq!((first[0].1, first[0].2), (Op::CreateTransfers, 3 * 128));
        out.clear();
        // TigerBeetle answers the open chain at the request's end: 11 failed, 12 open.
        let failed = CreateTransferResult::LinkedEventFailed.code();
        let open = CreateTransferResult::LinkedEventChainOpen.code();
        // 10 was created: event 0 of 3 under the header timestamp 779 got 779 - 3 + 0 + 1.
        core.completed(
            t0,
            first[0].0,
            Ok(sparse(&[(1, failed), (2, open)])),
            779,
            &mut out,
        );
        assert!(sends(&out).is_empty(), "no lookup follows: {out:?}");
        let got = replies(&mut out);
        let statuses = |r: &Reply| match r {
            Reply::Created(results) => results
                .iter()
                .map(|e| (e.status, e.timestamp))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].0, statuses(&got[0].1)),
            (1, vec![("ok", Some(777))])
        );
        assert_eq!(
            (got[1].0, statuses(&got[1].1)),
            (
                2,
                vec![
                    ("linked_event_failed", None),
                    ("linked_event_chain_open", None)
                ]
            )
        );
        core.poll(t0, &mut out);
        let second = sends(&out);
        assert_eq!(
            (second.len(), second[0].2),
            (1, 128),
            "3 goes alone, after the write before it: {out:?}"
        );
    }

    /// Each event's status and timestamp.
    type Statuses = Vec<(&'static str, Option<u64>)>;

    #[test]
    fn dense_results_split_back_to_each_submission_in_order() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        for (seq, ids) in [(1, vec![1u128, 2]), (2, vec![3, 4, 5]), (3, vec![6])] {
            submit(&mut core, t0, seq, transfers(&ids, false));
        }
        core.poll(t0, &mut out);
        let request = sends(&out);
        assert_eq!(request[0].2, 6 * 128, "one request for all three");
        out.clear();
        let exceeds = CreateTransferResult::ExceedsCredits.code();
        let exists = CreateTransferResult::Exists.code();
        // Ids 1, 3 and 5 were created, events 0, 2 and 4 of 6 under the header timestamp 106:
        // 106 - 6 + i + 1.
        core.completed(
            t0,
            request[0].0,
            Ok(sparse(&[(1, exceeds), (3, exists), (5, exceeds)])),
            106,
            &mut out,
        );
        let got: Vec<(u64, Statuses)> = replies(&mut out)
            .into_iter()
            .map(|(seq, r)| match r {
                Reply::Created(results) => (
                    seq,
                    results.iter().map(|e| (e.status, e.timestamp)).collect(),
                ),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, vec![("ok", Some(101)), ("exceeds_credits", None)]),
                (
                    2,
                    vec![("ok", Some(103)), ("exists", None), ("ok", Some(105))]
                ),
                (3, vec![("exceeds_credits", None)]),
            ]
        );
    }

    #[test]
    fn past_the_deadline_exactly_the_waiting_submissions_get_503_and_a_late_reply_is_dropped() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        submit(&mut core, t0, 1, transfers(&[1], false));
        core.poll(t0, &mut out);
        let write = sends(&out)[0].0;
        out.clear();
        // Queued behind the write (reads wait for it): it waits from t0 + 1 s.
        let t1 = t0 + Duration::from_secs(1);
        submit(&mut core, t1, 2, Command::LookupAccount(5));
        core.poll(t1, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            core.next_wake(),
            Some(t0 + Duration::from_secs(2)),
            "the write's deadline is next"
        );
        // The write's deadline: only its submission is answered.
        core.poll(t0 + Duration::from_secs(2), &mut out);
        let got = replies(&mut out);
        assert_eq!(got, vec![(1, Reply::Unavailable { retry_after_s: 3 })]);
        assert!(!core.reachable());
        assert_eq!(core.stats().requests_expired, 1);
        // The read may go now, on the other session (the first still holds the expired write).
        let read = sends(&out);
        assert_eq!(read.len(), 1);
        assert_eq!(core.in_flight(), 2);
        out.clear();
        // Nothing more comes back: the read expires too, then every session is busy.
        core.poll(t0 + Duration::from_secs(4), &mut out);
        assert_eq!(
            replies(&mut out),
            vec![(2, Reply::Unavailable { retry_after_s: 3 })]
        );
        submit(&mut core, t0 + Duration::from_secs(4), 3, Command::LookupAccount(6));
        core.poll(t0 + Duration::from_secs(4), &mut out);
        assert!(sends(&out).is_empty(), "no free session");
        core.poll(t0 + Duration::from_secs(6), &mut out);
        assert_eq!(
            replies(&mut out),
            vec![(3, Reply::Unavailable { retry_after_s: 3 })],
            "a submission waiting for a session has the deadline too"
        );
        assert_eq!(core.stats().submissions_unavailable, 3);
        out.clear();
        // The cluster returns: the late reply frees its session and marks the cluster
        // reachable, and answers nobody (its submission already had its 503).
        core.completed(
            t0 + Duration::from_secs(7),
            write,
            Ok(Vec::new()),
            REPLY_TIMESTAMP,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert!(core.reachable());
        assert_eq!((core.stats().late_replies, core.in_flight()), (1, 1));
        assert!(core.is_idle());
    }

    #[test]
    fn reads_are_joined_and_go_together_but_not_past_a_write() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        submit(&mut core, t0, 1, Command::LookupAccount(7));
        submit(&mut core, t0, 2, Command::LookupAccount(8));
        submit(&mut core, t0, 3, transfers(&[1], false));
        core.poll(t0, &mut out);
        let lookups = sends(&out);
        assert_eq!(
            lookups.len(),
            1,
            "the write waits for the reads before it: {out:?}"
        );
        assert_eq!((lookups[0].1, lookups[0].2), (Op::LookupAccounts, 32));
        out.clear();
        let mut rows = Vec::new();
        ledger_svc::codec::write_account(
            &mut rows,
            &Account {
                id: 8,
                ledger: 1,
                code: 1,
                timestamp: 5,
                ..Account::default()
            },
        );
        core.completed(t0, lookups[0].0, Ok(rows), REPLY_TIMESTAMP, &mut out);
        let got = replies(&mut out);
        assert!(
            matches!(
                got[0],
                (
                    1,
                    Reply::Account {
                        id: 7,
                        account: None
                    }
                )
            ),
            "{got:?}"
        );
        assert!(
            matches!(
                got[1],
                (
                    2,
                    Reply::Account {
                        id: 8,
                        account: Some(Account { timestamp: 5, .. })
                    }
                )
            ),
            "{got:?}"
        );
        core.poll(t0, &mut out);
        assert_eq!(sends(&out)[0].1, Op::CreateTransfers);
    }

    #[test]
    fn a_query_asks_one_row_more_and_pages_like_the_embedded_ledger() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        let filter = ledger_svc::model::QueryFilter {
            ledger: 1,
            limit: 2,
            timestamp_min: 0,
            timestamp_max: 0,
            ..Default::default()
        };
        let command = Command::QueryTransfers(filter);
        submit(&mut core, t0, 1, command);
        core.poll(t0, &mut out);
        let Some(Action::Send { tag, op, body, .. }) = out.pop() else {
            panic!("a request")
        };
        assert_eq!(op, Op::QueryTransfers);
        let limit = u32::from_le_bytes(body[56..60].try_into().expect("4 bytes"));
        assert_eq!(
            limit, 3,
            "the page's 2 rows and one to learn whether more remain"
        );
        core.completed(
            t0,
            tag,
            Ok(transfer_rows(&[(1, 10), (2, 20), (3, 30)])),
            REPLY_TIMESTAMP,
            &mut out,
        );
        match replies(&mut out).pop() {
            Some((
                1,
                Reply::Transfers {
                    transfers,
                    next: Some(next),
                },
            )) => {
                assert_eq!(
                    transfers.iter().map(|t| t.id).collect::<Vec<_>>(),
                    vec![1, 2]
                );
                assert_eq!(
                    (next.timestamp_min, next.limit),
                    (21, 2),
                    "the next page starts after the last row shown"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_full_core_stops_taking_submissions_and_a_stop_waits_only_for_live_requests() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig {
            pending_max: 2,
            ..config()
        });
        submit(&mut core, t0, 1, Command::LookupAccount(1));
        submit(&mut core, t0, 2, Command::LookupAccount(2));
        assert!(!core.has_room());
        let mut out = Vec::new();
        core.stop();
        core.poll(t0, &mut out);
        assert!(core.has_room(), "both went into one request");
        assert!(!core.is_idle());
        core.poll(t0 + Duration::from_secs(2), &mut out);
        assert!(core.is_idle(), "an expired request does not hold the stop");
        assert!(
            !sends(&out)
                .iter()
                .any(|s| s.2 == 16 && s.1 == Op::LookupAccounts && s.0 > 1),
            "no probe after the stop"
        );
    }

    /// Completes write `tag` with every event created.
    fn finish_write(core: &mut Core, t0: Instant, tag: u64) {
        let mut out = Vec::new();
        core.completed(t0, tag, Ok(Vec::new()), REPLY_TIMESTAMP, &mut out);
        assert!(sends(&out).is_empty(), "nothing follows a write: {out:?}");
    }

    fn imported(mut command: Command, timestamps: &[u64]) -> Command {
        if let Command::Mutate(Operation::CreateTransfers(events)) = &mut command {
            for (t, &timestamp) in events.iter_mut().zip(timestamps) {
                t.flags.insert(TransferFlags::IMPORTED);
                t.timestamp = timestamp;
            }
        }
        command
    }

    #[test]
    fn submissions_are_joined_only_when_their_first_events_agree_on_imported() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        let commands = [
            transfers(&[1], false),
            imported(transfers(&[2, 3], false), &[10, 11]),
            imported(transfers(&[4], false), &[12]),
            transfers(&[5], false),
        ];
        for (seq, command) in commands.into_iter().enumerate() {
            submit(&mut core, t0, seq as u64, command);
        }
        let mut sizes = Vec::new();
        for _ in 0..3 {
            core.poll(t0, &mut out);
            let sent = sends(&out);
            assert_eq!(sent.len(), 1, "one write at a time: {out:?}");
            sizes.push(sent[0].2 / 128);
            out.clear();
            finish_write(&mut core, t0, sent[0].0);
        }
        // TigerBeetle takes a request's first event to decide whether the batch is imported:
        // the plain one alone, the two imported ones together, the plain one alone.
        assert_eq!(sizes, vec![1, 3, 1]);
        assert!(core.is_idle());
    }

    #[test]
    fn a_submission_that_would_stop_the_cluster_is_refused_and_the_others_go() {
        let t0 = Instant::now();
        let mut core = started(t0);
        let mut out = Vec::new();
        let pending = {
            let mut c = imported(transfers(&[10], false), &[100]);
            if let Command::Mutate(Operation::CreateTransfers(events)) = &mut c {
                events[0].flags.insert(TransferFlags::PENDING);
            }
            c
        };
        let post = |id: u128, pending_id: u128, timestamp: u64| {
            Command::Mutate(Operation::CreateTransfers(vec![Transfer {
                id,
                pending_id,
                flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
                timestamp,
                ..Transfer::default()
            }]))
        };
        // 2 posts 10 before its timestamp (in the same request); 3 posts 7, which the cluster
        // holds, after its timestamp.
        for (seq, command) in [(1, pending), (2, post(11, 10, 50)), (3, post(12, 7, 300))] {
            submit(&mut core, t0, seq, command);
        }
        core.poll(t0, &mut out);
        let lookup = sends(&out);
        assert_eq!(
            (lookup.len(), lookup[0].1, lookup[0].2),
            (1, Op::LookupTransfers, 2 * 16),
            "the pending transfers 7 and 10 first: {out:?}"
        );
        out.clear();
        core.completed(
            t0,
            lookup[0].0,
            Ok(transfer_rows(&[(7, 200)])),
            REPLY_TIMESTAMP,
            &mut out,
        );
        let got = replies(&mut out);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            matches!(&got[0], (2, Reply::Refused { code: REFUSED_CODE, message }) if message.contains("event 0")),
            "{got:?}"
        );
        let create = sends(&out);
        assert_eq!(
            (create.len(), create[0].1, create[0].2),
            (1, Op::CreateTransfers, 2 * 128),
            "1 and 3 go"
        );
        assert_eq!(core.stats().refused, 1);
        // A request without imported posts or voids goes without the lookup.
        out.clear();
        finish_write(&mut core, t0, create[0].0);
        submit(&mut core, t0, 4, transfers(&[20], false));
        core.poll(t0, &mut out);
        assert_eq!(sends(&out)[0].1, Op::CreateTransfers);
    }

    #[test]
    fn by_default_every_imported_post_or_void_is_refused_unsent_and_the_rest_goes() {
        let t0 = Instant::now();
        let mut core = Core::new(CoreConfig { guard_imported_resolutions: false, ..config() });
        submit(&mut core, t0, 0, Command::LookupAccount(1));
        let mut out = Vec::new();
        core.poll(t0, &mut out);
        let probe_or_lookup = sends(&out)[0].0;
        out.clear();
        core.completed(t0, probe_or_lookup, Ok(Vec::new()), REPLY_TIMESTAMP, &mut out);
        out.clear();
        // An imported post well after its pending transfer: the guard would let it through,
        // but another appliance could have created the pending transfer a moment ago.
        let post = Command::Mutate(Operation::CreateTransfers(vec![Transfer {
            id: 11,
            pending_id: 10,
            flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
            timestamp: 1_000_000,
            ..Transfer::default()
        }]));
        let plain_imported = imported(transfers(&[12], false), &[1_000_001]);
        submit(&mut core, t0, 1, post);
        submit(&mut core, t0, 2, plain_imported);
        core.poll(t0, &mut out);
        let got = replies(&mut out);
        assert!(
            matches!(&got[..], [(1, Reply::Refused { code: REFUSED_CODE, message })] if message.contains("imported_resolutions")),
            "{got:?}"
        );
        let sent = sends(&out);
        assert_eq!((sent.len(), sent[0].1, sent[0].2), (1, Op::CreateTransfers, 128), "no lookup; the other imported transfer goes: {out:?}");
        assert_eq!(core.stats().refused, 1);
    }

    /// A started core with one request in flight: submissions 1 (transfers 1 and 2) and 2
    /// (transfer 3) joined into one `create_transfers` of three events. Returns its tag.
    fn three_events_in_flight(t0: Instant) -> (Core, u64) {
        let mut core = started(t0);
        let mut out = Vec::new();
        submit(&mut core, t0, 1, transfers(&[1, 2], false));
        submit(&mut core, t0, 2, transfers(&[3], false));
        core.poll(t0, &mut out);
        let sent = sends(&out);
        assert_eq!((sent.len(), sent[0].1, sent[0].2), (1, Op::CreateTransfers, 3 * 128));
        (core, sent[0].0)
    }

    #[test]
    fn created_timestamps_come_from_the_reply_header_without_a_lookup() {
        let t0 = Instant::now();
        // Two submissions joined into one request of three events; the middle one fails.
        let (mut core, tag) = three_events_in_flight(t0);
        let mut out = Vec::new();
        core.completed(t0, tag, Ok(sparse(&[(1, 21)])), 1_000, &mut out);
        assert!(sends(&out).is_empty(), "no lookup follows: {out:?}");
        let got = replies(&mut out);
        let stamps: Vec<Vec<Option<u64>>> = got
            .iter()
            .map(|(_, reply)| match reply {
                Reply::Created(results) => results.iter().map(|r| r.timestamp).collect(),
                other => panic!("{other:?}"),
            })
            .collect();
        // Event i of n = 3 got 1000 - 3 + i + 1: 998, (999 failed), 1000.
        assert_eq!(stamps, vec![vec![Some(998), None], vec![Some(1_000)]]);
    }

    #[test]
    fn a_create_reply_whose_header_timestamp_cannot_hold_its_events_breaks_the_protocol() {
        let t0 = Instant::now();
        let (mut core, tag) = three_events_in_flight(t0);
        let mut out = Vec::new();
        // Three events need a header timestamp above 3; 0 is a reply without one.
        core.completed(t0, tag, Ok(Vec::new()), 3, &mut out);
        assert!(sends(&out).is_empty(), "no lookup follows: {out:?}");
        assert_eq!(
            replies(&mut out),
            vec![
                (1, Reply::Internal("the TigerBeetle cluster's reply broke the protocol")),
                (2, Reply::Internal("the TigerBeetle cluster's reply broke the protocol")),
            ]
        );
        assert_eq!(core.stats().failed, 1);
        assert!(core.is_idle(), "the session is free again");
    }
}
