//! The differential oracle: one seeded workload run against the embedded ledger
//! (`ledger_svc::state_machine::StateMachine`, in process) and against a real TigerBeetle
//! cluster, request by request, comparing every answer (docs/ledger.md "Differential testing
//! against TigerBeetle").
//!
//! The workload ([`Workload`]) depends only on its seed, never on the answers, so a seed and a
//! request number replay any difference exactly. It covers accounts with every flag that
//! matters, imported events with explicit timestamps, plain, pending, post, void, balancing
//! and closing transfers, linked chains (failing ones and a chain left open at the end of a
//! batch), invalid events on purpose, retries (`exists` and `exists_with_different_*`) and the
//! six queries with filters, limits and `reversed`.
//!
//! Timestamps differ between the two sides (each assigns its own clock's), so rows are
//! compared with `timestamp` cleared, except for imported objects, whose timestamps the
//! workload chose. Every timeout the random workload gives a pending transfer is 0 or at
//! least [`TIMEOUT_MIN_S`], longer than any run: expiry depends on each side's clock and is
//! checked by its own scenario ([`expiry_scenario`]) instead.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ledger_svc::model::{
    Account, AccountBalance, AccountFilter, AccountFlags, Operation, OperationReply, QueryFilter, Transfer,
    TransferFlags, AMOUNT_MAX, BATCH_EVENTS_MAX,
};
use ledger_svc::state_machine::{StateMachine, TIMESTAMP_MAX};

#[cfg(any(feature = "tigerbeetle", test))]
use crate::guard::stops_tigerbeetle_0_16_78;
use crate::ClusterError;

/// The shortest non-zero timeout (seconds) the random workload gives a pending transfer: far
/// longer than any run, so nothing expires while the two sides are compared.
pub const TIMEOUT_MIN_S: u32 = 3600;

/// The most events one generated create request carries (well under TigerBeetle's 8189, so
/// a seed exercises many batches).
pub const GENERATED_BATCH_MAX: usize = 300;

/// The most ids one final lookup request asks for (TigerBeetle's 8189 per request).
const LOOKUP_CHUNK: usize = 4096;

/// Timestamps of the objects imported at the start of every workload: far in the past of both
/// clocks, so they are valid imports and older than anything either side creates afterwards.
pub const IMPORT_BASE: u64 = 1_000_000_000;

/// A small deterministic PRNG (SplitMix64): no dependency, the same stream on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// One request of the workload, as both sides receive it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Create(Operation),
    /// Imported events whose `timestamp` fields are offsets after the newest object of the
    /// side that runs them: each side adds its own newest timestamp (found with a query of
    /// its own), so imports can follow objects whose timestamps the two clocks chose.
    CreateImportedAfterNewest(Operation),
    LookupAccounts(Vec<u128>),
    LookupTransfers(Vec<u128>),
    GetAccountTransfers(AccountFilter),
    GetAccountBalances(AccountFilter),
    QueryAccounts(QueryFilter),
    QueryTransfers(QueryFilter),
}

impl Request {
    /// Events the request carries: its create events, its ids, or 1 for a filter.
    pub fn events(&self) -> usize {
        match self {
            Request::Create(operation) | Request::CreateImportedAfterNewest(operation) => operation.len(),
            Request::LookupAccounts(ids) | Request::LookupTransfers(ids) => ids.len(),
            _ => 1,
        }
    }
}

/// One answer: the dense create results, or the rows of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Create(OperationReply),
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
    Balances(Vec<AccountBalance>),
}

/// A ledger the oracle can drive: the embedded state machine or a TigerBeetle cluster.
pub trait Side {
    fn name(&self) -> &'static str;
    fn run(&mut self, request: &Request) -> Result<Answer, ClusterError>;
}

/// `operation` with `base` added to every event's timestamp (see
/// [`Request::CreateImportedAfterNewest`]).
pub fn after(operation: &Operation, base: u64) -> Operation {
    match operation {
        Operation::CreateAccounts(events) => Operation::CreateAccounts(
            events.iter().map(|a| Account { timestamp: a.timestamp.saturating_add(base), ..*a }).collect(),
        ),
        Operation::CreateTransfers(events) => Operation::CreateTransfers(
            events.iter().map(|t| Transfer { timestamp: t.timestamp.saturating_add(base), ..*t }).collect(),
        ),
    }
}

/// Imported timestamps below this were chosen by the workload itself and are compared; those
/// above were offsets after each side's own newest object, and differ like any other.
pub const IMPORTED_COMPARED_BELOW: u64 = 1 << 50;

/// Nanoseconds since the Unix epoch, TigerBeetle's clock.
pub fn wall_clock_ns() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(TIMESTAMP_MAX)
}

/// The embedded ledger, in process. Its clock is the wall clock (as a cluster's is) plus a
/// skew the caller may add with [`Embedded::advance`] to stand for time passing.
#[derive(Debug, Default)]
pub struct Embedded {
    sm: StateMachine,
    skew_ns: u64,
}

impl Embedded {
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves this side's clock forward by `by` without waiting.
    pub fn advance(&mut self, by: Duration) {
        self.skew_ns += u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    }

    pub fn state(&self) -> &StateMachine {
        &self.sm
    }

    fn now(&self) -> u64 {
        wall_clock_ns().saturating_add(self.skew_ns).min(TIMESTAMP_MAX)
    }
}

impl Side for Embedded {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn run(&mut self, request: &Request) -> Result<Answer, ClusterError> {
        let now = self.now();
        let sm = &mut self.sm;
        Ok(match request {
            Request::Create(Operation::CreateAccounts(events)) => {
                Answer::Create(OperationReply::CreateAccounts(sm.create_accounts(now, events)))
            }
            Request::Create(Operation::CreateTransfers(events)) => {
                Answer::Create(OperationReply::CreateTransfers(sm.create_transfers(now, events)))
            }
            Request::CreateImportedAfterNewest(operation) => {
                let newest = sm.accounts().last().map_or(0, |a| a.timestamp);
                let newest = newest.max(sm.transfers().last().map_or(0, |t| t.timestamp));
                return self.run(&Request::Create(after(operation, newest)));
            }
            Request::LookupAccounts(ids) => Answer::Accounts(sm.lookup_accounts(ids)),
            Request::LookupTransfers(ids) => Answer::Transfers(sm.lookup_transfers(ids)),
            Request::GetAccountTransfers(filter) => Answer::Transfers(sm.get_account_transfers(filter)),
            Request::GetAccountBalances(filter) => Answer::Balances(sm.get_account_balances(filter)),
            Request::QueryAccounts(filter) => Answer::Accounts(sm.query_accounts(filter)),
            Request::QueryTransfers(filter) => Answer::Transfers(sm.query_transfers(filter)),
        })
    }
}

/// A TigerBeetle cluster through [`crate::client::BlockingClient`]: every request has a
/// deadline, so a cluster that stops answering fails the run instead of hanging it.
#[cfg(feature = "tigerbeetle")]
#[derive(Debug)]
pub struct Remote {
    client: crate::client::BlockingClient,
    timeout: Duration,
}

#[cfg(feature = "tigerbeetle")]
impl Remote {
    pub fn connect(cluster_id: u128, addresses: &str, timeout: Duration) -> Result<Self, ClusterError> {
        Ok(Remote { client: crate::client::BlockingClient::connect(cluster_id, addresses)?, timeout })
    }
}

#[cfg(feature = "tigerbeetle")]
impl Remote {
    /// Refuses to send a batch that would stop TigerBeetle 0.16.78 ([`stops_tigerbeetle_0_16_78`]),
    /// so a workload that strays there fails with a clear message instead of a dead cluster.
    fn refuse_what_stops_the_cluster(&mut self, events: &[Transfer]) -> Result<(), ClusterError> {
        let pending_ids = crate::guard::pending_ids_to_check(events);
        if pending_ids.is_empty() {
            return Ok(());
        }
        let Answer::Transfers(found) = self.run(&Request::LookupTransfers(pending_ids))? else {
            unreachable!("a lookup of transfers answers transfers")
        };
        let stored: HashMap<u128, u64> = found.iter().map(|t| (t.id, t.timestamp)).collect();
        match stops_tigerbeetle_0_16_78(events, |id| stored.get(&id).copied()) {
            Some(index) => Err(ClusterError::Packet(format!(
                "not sent: event {index} is an imported post or void older than its pending transfer, which stops a TigerBeetle 0.16.78 replica"
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(feature = "tigerbeetle")]
impl Side for Remote {
    fn name(&self) -> &'static str {
        "tigerbeetle"
    }

    fn run(&mut self, request: &Request) -> Result<Answer, ClusterError> {
        use crate::wire::{self, Op};
        let mut body = Vec::new();
        // TigerBeetle never returns more rows than fit one reply, whatever the limit asks.
        let rows_max = |limit: u32| (limit as usize).min(BATCH_EVENTS_MAX);
        Ok(match request {
            Request::CreateImportedAfterNewest(operation) => {
                // The newest account and transfer: a reversed query without conditions.
                let newest = QueryFilter { limit: 1, reversed: true, ..Default::default() };
                let mut newest_timestamp = 0;
                for request in [Request::QueryAccounts(newest), Request::QueryTransfers(newest)] {
                    newest_timestamp = newest_timestamp.max(match self.run(&request)? {
                        Answer::Accounts(rows) => rows.first().map_or(0, |a| a.timestamp),
                        Answer::Transfers(rows) => rows.first().map_or(0, |t| t.timestamp),
                        _ => 0,
                    });
                }
                return self.run(&Request::Create(after(operation, newest_timestamp)));
            }
            Request::Create(operation) => {
                if let Operation::CreateTransfers(events) = operation {
                    self.refuse_what_stops_the_cluster(events)?;
                }
                let op = wire::encode_operation(operation, &mut body);
                let reply = self.client.request(op, body, self.timeout)?;
                Answer::Create(wire::create_results(op, operation.len(), &reply)?)
            }
            Request::LookupAccounts(ids) => {
                wire::encode_ids(ids, &mut body);
                let reply = self.client.request(Op::LookupAccounts, body, self.timeout)?;
                Answer::Accounts(wire::accounts(Op::LookupAccounts, &reply, ids.len())?)
            }
            Request::LookupTransfers(ids) => {
                wire::encode_ids(ids, &mut body);
                let reply = self.client.request(Op::LookupTransfers, body, self.timeout)?;
                Answer::Transfers(wire::transfers(Op::LookupTransfers, &reply, ids.len())?)
            }
            Request::GetAccountTransfers(filter) => {
                wire::encode_account_filter(filter, &mut body);
                let reply = self.client.request(Op::GetAccountTransfers, body, self.timeout)?;
                Answer::Transfers(wire::transfers(Op::GetAccountTransfers, &reply, rows_max(filter.limit))?)
            }
            Request::GetAccountBalances(filter) => {
                wire::encode_account_filter(filter, &mut body);
                let reply = self.client.request(Op::GetAccountBalances, body, self.timeout)?;
                Answer::Balances(wire::balances(&reply, rows_max(filter.limit))?)
            }
            Request::QueryAccounts(filter) => {
                wire::encode_query_filter(filter, &mut body);
                let reply = self.client.request(Op::QueryAccounts, body, self.timeout)?;
                Answer::Accounts(wire::accounts(Op::QueryAccounts, &reply, rows_max(filter.limit))?)
            }
            Request::QueryTransfers(filter) => {
                wire::encode_query_filter(filter, &mut body);
                let reply = self.client.request(Op::QueryTransfers, body, self.timeout)?;
                Answer::Transfers(wire::transfers(Op::QueryTransfers, &reply, rows_max(filter.limit))?)
            }
        })
    }
}

/// An answer with every timestamp the two sides may legitimately disagree on cleared: those
/// each side assigned itself. Imported objects keep theirs (the workload chose them).
pub fn normalized(answer: &Answer) -> Answer {
    match answer {
        Answer::Create(reply) => Answer::Create(reply.clone()),
        Answer::Accounts(rows) => Answer::Accounts(
            rows.iter()
                .map(|a| {
                    let kept = a.flags.contains(AccountFlags::IMPORTED) && a.timestamp < IMPORTED_COMPARED_BELOW;
                    let timestamp = if kept { a.timestamp } else { 0 };
                    Account { timestamp, ..*a }
                })
                .collect(),
        ),
        Answer::Transfers(rows) => Answer::Transfers(
            rows.iter()
                .map(|t| {
                    let kept = t.flags.contains(TransferFlags::IMPORTED) && t.timestamp < IMPORTED_COMPARED_BELOW;
                    let timestamp = if kept { t.timestamp } else { 0 };
                    Transfer { timestamp, ..*t }
                })
                .collect(),
        ),
        Answer::Balances(rows) => {
            Answer::Balances(rows.iter().map(|b| AccountBalance { timestamp: 0, ..*b }).collect())
        }
    }
}

/// Where two answers differ (after [`normalized`]), or `None` when they agree.
pub fn difference(a: &Answer, b: &Answer) -> Option<String> {
    let (a, b) = (normalized(a), normalized(b));
    if a == b {
        return None;
    }
    fn first<T: PartialEq + fmt::Debug>(what: &str, a: &[T], b: &[T]) -> String {
        match a.iter().zip(b).position(|(x, y)| x != y) {
            Some(i) => format!("{what} {i} differs: {:?} vs {:?}", a[i], b[i]),
            None => format!("{} {what}s vs {}", a.len(), b.len()),
        }
    }
    Some(match (&a, &b) {
        (Answer::Create(OperationReply::CreateAccounts(x)), Answer::Create(OperationReply::CreateAccounts(y))) => {
            first("result", x, y)
        }
        (Answer::Create(OperationReply::CreateTransfers(x)), Answer::Create(OperationReply::CreateTransfers(y))) => {
            first("result", x, y)
        }
        (Answer::Accounts(x), Answer::Accounts(y)) => first("row", x, y),
        (Answer::Transfers(x), Answer::Transfers(y)) => first("row", x, y),
        (Answer::Balances(x), Answer::Balances(y)) => first("row", x, y),
        _ => "answers of different kinds".to_owned(),
    })
}

/// The first difference of a run, with everything needed to replay it.
#[derive(Debug)]
pub struct Divergence {
    pub seed: u64,
    /// The request's position in the seed's workload (0-based; the final lookups follow the
    /// generated requests).
    pub request_number: usize,
    pub request: Request,
    pub embedded: Result<Answer, ClusterError>,
    pub cluster: Result<Answer, ClusterError>,
    pub detail: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {} request {}: {}", self.seed, self.request_number, self.detail)?;
        writeln!(f, "request: {:?}", self.request)?;
        writeln!(f, "embedded: {:?}", self.embedded)?;
        write!(f, "cluster:  {:?}", self.cluster)
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub requests: usize,
    pub events: usize,
    /// How often each create result was answered (both sides agreed on each): the coverage
    /// of the workload.
    pub results: BTreeMap<&'static str, usize>,
    /// Query requests that returned at least one row.
    pub rows_nonempty: usize,
}

impl Outcome {
    fn count(&mut self, request: &Request, answer: &Answer) {
        self.requests += 1;
        self.events += request.events();
        match answer {
            Answer::Create(OperationReply::CreateAccounts(results)) => {
                for r in results {
                    *self.results.entry(r.name()).or_default() += 1;
                }
            }
            Answer::Create(OperationReply::CreateTransfers(results)) => {
                for r in results {
                    *self.results.entry(r.name()).or_default() += 1;
                }
            }
            Answer::Accounts(rows) => self.rows_nonempty += usize::from(!rows.is_empty()),
            Answer::Transfers(rows) => self.rows_nonempty += usize::from(!rows.is_empty()),
            Answer::Balances(rows) => self.rows_nonempty += usize::from(!rows.is_empty()),
        }
    }
}

/// Runs one request on both sides and compares the answers; returns the (agreed) answer.
pub fn compare_one(
    seed: u64,
    request_number: usize,
    request: &Request,
    embedded: &mut dyn Side,
    cluster: &mut dyn Side,
) -> Result<Answer, Box<Divergence>> {
    let a = embedded.run(request);
    let b = cluster.run(request);
    let detail = match (&a, &b) {
        (Ok(x), Ok(y)) => match difference(x, y) {
            None => return Ok(x.clone()),
            Some(detail) => detail,
        },
        (Err(e), _) => format!("the embedded side failed: {e}"),
        (_, Err(e)) => format!("the cluster failed: {e}"),
    };
    Err(Box::new(Divergence { seed, request_number, request: request.clone(), embedded: a, cluster: b, detail }))
}

/// Runs seed `seed`'s workload until at least `events` events were sent, then looks up every
/// account and transfer id the workload used on both sides; stops at the first difference.
pub fn run_seed(
    seed: u64,
    events: usize,
    embedded: &mut dyn Side,
    cluster: &mut dyn Side,
) -> Result<Outcome, Box<Divergence>> {
    let mut workload = Workload::new(seed);
    let mut outcome = Outcome::default();
    while outcome.events < events {
        let request = workload.next_request();
        let answer = compare_one(seed, outcome.requests, &request, embedded, cluster)?;
        outcome.count(&request, &answer);
    }
    for request in workload.final_lookups() {
        let answer = compare_one(seed, outcome.requests, &request, embedded, cluster)?;
        outcome.count(&request, &answer);
    }
    Ok(outcome)
}

/// Pending-transfer expiry on both sides: pending transfers with a timeout of 1 s (one of
/// them closing its debit account, a `history` account), a wait of `wait` (real time for the
/// cluster; `advance` moves the embedded side's clock by the same amount), then a post and a
/// void of the expired one, which must both answer `pending_transfer_expired`, a transfer on
/// the account the expiry reopened, and the accounts, transfers, balances and queries of both
/// sides compared. Ids are taken from `id_base` upwards. `wait` must exceed 1 s.
pub fn expiry_scenario(
    id_base: u128,
    wait: Duration,
    embedded: &mut dyn Side,
    cluster: &mut dyn Side,
    mut advance: impl FnMut(&mut dyn Side, Duration),
) -> Result<Outcome, Box<Divergence>> {
    let seed = 0;
    let (dr, cr, closing_dr) = (id_base, id_base + 1, id_base + 2);
    let (pending, kept, closing) = (id_base + 10, id_base + 11, id_base + 12);
    let account = |id, flags| Account { id, ledger: 1, code: 1, flags, ..Default::default() };
    let transfer = |id, debit_account_id, timeout, flags| Transfer {
        id,
        debit_account_id,
        credit_account_id: cr,
        amount: 10,
        ledger: 1,
        code: 1,
        timeout,
        flags,
        ..Default::default()
    };
    // A post of the full amount (AMOUNT_MAX), a void of it (0).
    let resolve = |id, flags: TransferFlags| Transfer {
        id,
        pending_id: pending,
        amount: if flags.contains(TransferFlags::POST_PENDING_TRANSFER) { AMOUNT_MAX } else { 0 },
        flags,
        ..Default::default()
    };
    let history = AccountFlags::HISTORY;
    let ids = vec![dr, cr, closing_dr];
    let transfer_ids: Vec<u128> = (id_base + 10..id_base + 20).collect();
    let filter = |account_id, reversed| AccountFilter {
        account_id,
        limit: 100,
        debits: true,
        credits: true,
        reversed,
        ..Default::default()
    };
    let before = vec![
        Request::Create(Operation::CreateAccounts(vec![account(dr, history), account(cr, history), account(closing_dr, history)])),
        Request::Create(Operation::CreateTransfers(vec![
            transfer(pending, dr, 1, TransferFlags::PENDING),
            transfer(kept, dr, u32::MAX, TransferFlags::PENDING),
            transfer(closing, closing_dr, 1, TransferFlags::PENDING | TransferFlags::CLOSING_DEBIT),
            // The closed account refuses a transfer until the closing one expires.
            transfer(id_base + 13, closing_dr, 0, TransferFlags::empty()),
        ])),
        Request::LookupAccounts(ids.clone()),
    ];
    let after = vec![
        Request::Create(Operation::CreateTransfers(vec![resolve(id_base + 14, TransferFlags::POST_PENDING_TRANSFER)])),
        Request::Create(Operation::CreateTransfers(vec![resolve(id_base + 15, TransferFlags::VOID_PENDING_TRANSFER)])),
        // The expiry reopened the account.
        Request::Create(Operation::CreateTransfers(vec![transfer(id_base + 16, closing_dr, 0, TransferFlags::empty())])),
        Request::LookupAccounts(ids.clone()),
        Request::LookupTransfers(transfer_ids),
        Request::GetAccountTransfers(filter(dr, false)),
        Request::GetAccountBalances(filter(dr, false)),
        Request::GetAccountBalances(filter(cr, true)),
        Request::GetAccountBalances(filter(closing_dr, false)),
        Request::QueryTransfers(QueryFilter { ledger: 1, limit: 100, ..Default::default() }),
    ];
    let mut outcome = Outcome::default();
    for request in &before {
        let answer = compare_one(seed, outcome.requests, request, embedded, cluster)?;
        outcome.count(request, &answer);
    }
    std::thread::sleep(wait);
    advance(embedded, wait);
    for request in &after {
        let answer = compare_one(seed, outcome.requests, request, embedded, cluster)?;
        outcome.count(request, &answer);
    }
    Ok(outcome)
}

/// The seeded workload. It remembers what it sent (not what succeeded), so it never depends
/// on either side's answers.
#[derive(Debug)]
pub struct Workload {
    rng: Rng,
    requests: usize,
    /// Every account event sent with a fresh id (for retries), and each id's ledger.
    accounts: Vec<Account>,
    ledgers: HashMap<u128, u32>,
    next_account: u128,
    /// Every transfer sent with a fresh id (for retries and as pending ids).
    transfers: Vec<Transfer>,
    pendings: Vec<u128>,
    next_transfer: u128,
    /// Timestamps of the imported objects (usable in filters: both sides agree on them).
    imported: Vec<u64>,
}

/// Account ids start here and transfer ids at `TRANSFER_ID_BASE`: disjoint, so a transfer id
/// used as an account id (and the reverse) is an unknown id.
const ACCOUNT_ID_BASE: u128 = 1;
const TRANSFER_ID_BASE: u128 = 1 << 40;
/// Ids above every generated one: "not found".
const UNKNOWN_ID: u128 = 1 << 80;

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: Rng::new(seed),
            requests: 0,
            accounts: Vec::new(),
            ledgers: HashMap::new(),
            next_account: ACCOUNT_ID_BASE,
            transfers: Vec::new(),
            pendings: Vec::new(),
            next_transfer: TRANSFER_ID_BASE,
            imported: Vec::new(),
        }
    }

    /// The next request: first the imported objects, then a first set of accounts, then a mix
    /// of creates (about two thirds) and queries.
    pub fn next_request(&mut self) -> Request {
        let n = self.requests;
        self.requests += 1;
        match n {
            0 => return self.imported_accounts(),
            1 => return self.imported_transfers(),
            2 => {
                let accounts = (0..40).map(|_| self.fresh_account()).collect();
                return Request::Create(Operation::CreateAccounts(accounts));
            }
            _ => {}
        }
        match self.rng.below(100) {
            0..=6 => self.account_batch(),
            7..=62 => self.transfer_batch(),
            63..=66 => self.imported_after_newest(),
            67..=71 => {
                let ids = self.some_ids(true);
                Request::LookupAccounts(ids)
            }
            72..=78 => {
                let ids = self.some_ids(false);
                Request::LookupTransfers(ids)
            }
            79..=86 => Request::GetAccountTransfers(self.account_filter()),
            87..=92 => Request::GetAccountBalances(self.account_filter()),
            93..=95 => Request::QueryAccounts(self.query_filter()),
            _ => Request::QueryTransfers(self.query_filter()),
        }
    }

    /// Lookups of every account and transfer id the workload used, in chunks.
    pub fn final_lookups(&self) -> Vec<Request> {
        let accounts: Vec<u128> = (ACCOUNT_ID_BASE..self.next_account).collect();
        let transfers: Vec<u128> = (TRANSFER_ID_BASE..self.next_transfer).collect();
        let mut out: Vec<Request> =
            accounts.chunks(LOOKUP_CHUNK).map(|ids| Request::LookupAccounts(ids.to_vec())).collect();
        out.extend(transfers.chunks(LOOKUP_CHUNK).map(|ids| Request::LookupTransfers(ids.to_vec())));
        out
    }

    // -- imported objects ---------------------------------------------------------------------

    /// Imported accounts at IMPORT_BASE + 10·k, with the imported failures on purpose.
    fn imported_accounts(&mut self) -> Request {
        let mut events = Vec::new();
        for k in 1..=8u64 {
            // One ledger and no limits, so the imported transfers between them mostly succeed.
            let mut a = self.fresh_account();
            a.ledger = 1;
            self.ledgers.insert(a.id, 1);
            a.flags = if k % 2 == 0 { AccountFlags::IMPORTED | AccountFlags::HISTORY } else { AccountFlags::IMPORTED };
            a.timestamp = IMPORT_BASE + 10 * k;
            *self.accounts.last_mut().expect("just sent") = a;
            self.imported.push(a.timestamp);
            events.push(a);
        }
        let mut bad = |timestamp: u64, flags: AccountFlags| {
            let mut a = self.fresh_account();
            a.flags = flags;
            a.timestamp = timestamp;
            *self.accounts.last_mut().expect("just sent") = a;
            a
        };
        // Regresses, out of range (0 and past 2^63 − 1), advances past the batch, not imported.
        events.push(bad(IMPORT_BASE + 5, AccountFlags::IMPORTED));
        events.push(bad(0, AccountFlags::IMPORTED));
        events.push(bad(u64::MAX, AccountFlags::IMPORTED));
        events.push(bad(TIMESTAMP_MAX, AccountFlags::IMPORTED));
        events.push(bad(0, AccountFlags::empty()));
        let mut last = bad(IMPORT_BASE + 90, AccountFlags::IMPORTED | AccountFlags::HISTORY);
        last.ledger = 1;
        self.ledgers.insert(last.id, 1);
        *self.accounts.last_mut().expect("just sent") = last;
        events.push(last);
        self.imported.push(IMPORT_BASE + 90);
        Request::Create(Operation::CreateAccounts(events))
    }

    /// Imported transfers between the imported accounts at IMPORT_BASE + 100 + 10·k.
    fn imported_transfers(&mut self) -> Request {
        let imported: Vec<Account> = self
            .accounts
            .iter()
            .filter(|a| a.flags.contains(AccountFlags::IMPORTED) && self.imported.contains(&a.timestamp))
            .copied()
            .collect();
        let mut events = Vec::new();
        let first = imported[0];
        let last = imported[imported.len() - 1];
        let imported_transfer = |w: &mut Self, dr: &Account, cr: &Account, timestamp: u64, flags: TransferFlags| {
            let mut t = w.fresh_plain(dr.id, cr.id);
            t.ledger = dr.ledger;
            t.flags = flags | TransferFlags::IMPORTED;
            t.timestamp = timestamp;
            *w.transfers.last_mut().expect("just sent") = t;
            t
        };
        // Before its (last imported) debit account: must postdate the debit account.
        events.push(imported_transfer(self, &last, &first, IMPORT_BASE + 15, TransferFlags::empty()));
        // After its debit account, before its credit account.
        events.push(imported_transfer(self, &first, &last, IMPORT_BASE + 17, TransferFlags::empty()));
        let mut ts = IMPORT_BASE + 100;
        for k in 0..imported.len() * 2 {
            let dr = imported[k % imported.len()];
            let cr = imported[(k + 1 + k / imported.len()) % imported.len()];
            ts += 10;
            let flags = if k % 3 == 0 { TransferFlags::PENDING } else { TransferFlags::empty() };
            let t = imported_transfer(self, &dr, &cr, ts, flags);
            if flags.contains(TransferFlags::PENDING) {
                self.pendings.push(t.id);
            }
            self.imported.push(ts);
            events.push(t);
        }
        // A timeout on an imported pending transfer; a timestamp shared with an account; one
        // regressing; a post of an imported pending transfer.
        ts += 10;
        let mut t = imported_transfer(self, &first, &last, ts, TransferFlags::PENDING);
        t.timeout = TIMEOUT_MIN_S;
        events.push(t);
        events.push(imported_transfer(self, &first, &last, IMPORT_BASE + 90, TransferFlags::empty()));
        events.push(imported_transfer(self, &first, &last, IMPORT_BASE + 101, TransferFlags::empty()));
        if let Some(&pending) = self.pendings.first() {
            ts += 10;
            let id = self.take_transfer_id();
            let post = Transfer {
                id,
                pending_id: pending,
                amount: AMOUNT_MAX,
                flags: TransferFlags::POST_PENDING_TRANSFER | TransferFlags::IMPORTED,
                timestamp: ts,
                ..Default::default()
            };
            self.transfers.push(post);
            self.imported.push(ts);
            events.push(post);
        }
        Request::Create(Operation::CreateTransfers(events))
    }

    /// Imported accounts or transfers after each side's newest object (offsets 1, 2, ...),
    /// with a repeated or zero offset now and then (`_must_not_regress` on both sides).
    fn imported_after_newest(&mut self) -> Request {
        let len = self.rng.range(1, 12) as usize;
        let accounts = self.rng.chance(40);
        let mut offset = 0u64;
        // Mostly increasing; now and then repeated or zero (`_must_not_regress`).
        let next_offset = |rng: &mut Rng, offset: &mut u64| {
            match rng.below(100) {
                0..=4 => return 0,
                5..=9 => {}
                _ => *offset += rng.range(1, 3),
            }
            *offset
        };
        if accounts {
            let events = (0..len)
                .map(|_| {
                    let mut a = self.fresh_account();
                    a.flags.insert(AccountFlags::IMPORTED);
                    a.timestamp = next_offset(&mut self.rng, &mut offset);
                    *self.accounts.last_mut().expect("just sent") = a;
                    a
                })
                .collect();
            return Request::CreateImportedAfterNewest(Operation::CreateAccounts(events));
        }
        let events = (0..len)
            .map(|_| {
                let mut t = match self.rng.below(10) {
                    0..=5 => {
                        let (dr, cr) = self.two_accounts();
                        self.fresh_plain(dr, cr)
                    }
                    6 | 7 => {
                        let (dr, cr) = self.two_accounts();
                        let mut t = self.fresh_plain(dr, cr);
                        t.flags = TransferFlags::PENDING;
                        self.pendings.push(t.id);
                        t
                    }
                    8 => self.resolve(true),
                    _ => self.resolve(false),
                };
                t.flags.insert(TransferFlags::IMPORTED);
                t.timestamp = if t.flags.intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER) {
                    // Strictly after every object before it, its pending transfer included:
                    // TigerBeetle 0.16.78 stops on an imported post or void that is not
                    // (see `stops_tigerbeetle_0_16_78`).
                    offset += self.rng.range(1, 3);
                    offset
                } else {
                    next_offset(&mut self.rng, &mut offset)
                };
                *self.transfers.last_mut().expect("just sent") = t;
                t
            })
            .collect();
        Request::CreateImportedAfterNewest(Operation::CreateTransfers(events))
    }

    // -- accounts -----------------------------------------------------------------------------

    fn take_account_id(&mut self) -> u128 {
        let id = self.next_account;
        self.next_account += 1;
        id
    }

    fn take_transfer_id(&mut self) -> u128 {
        let id = self.next_transfer;
        self.next_transfer += 1;
        id
    }

    fn small(&mut self, zero_percent: u64, max: u64) -> u64 {
        if self.rng.chance(zero_percent) {
            0
        } else {
            self.rng.range(1, max)
        }
    }

    /// A valid account with a fresh id (recorded for retries).
    fn fresh_account(&mut self) -> Account {
        let id = self.take_account_id();
        let limits = [
            AccountFlags::empty(),
            AccountFlags::empty(),
            AccountFlags::empty(),
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS,
            AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        ];
        let mut flags = self.rng.pick(&limits);
        if self.rng.chance(35) {
            flags.insert(AccountFlags::HISTORY);
        }
        let ledger = if self.rng.chance(85) { 1 } else { 2 };
        let account = Account {
            id,
            user_data_128: u128::from(self.small(50, 4)),
            user_data_64: self.small(50, 4),
            user_data_32: self.small(50, 4) as u32,
            ledger,
            code: self.rng.range(1, 3) as u16,
            flags,
            ..Default::default()
        };
        self.accounts.push(account);
        self.ledgers.insert(id, ledger);
        account
    }

    /// An account event: fresh, invalid on purpose, or a retry.
    fn account_event(&mut self) -> Account {
        let kind = self.rng.below(100);
        if kind < 70 || self.accounts.is_empty() {
            let mut a = self.fresh_account();
            if self.rng.chance(3) {
                // Created closed: TigerBeetle 0.16 accepts the flag at creation.
                a.flags.insert(AccountFlags::CLOSED);
            }
            return a;
        }
        if kind < 85 {
            // Invalid on purpose (the id is burnt: not recorded for retries).
            let mut a = self.fresh_account();
            self.accounts.pop();
            match self.rng.below(11) {
                0 => a.id = 0,
                1 => a.id = u128::MAX,
                2 => a.flags = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
                3 => a.debits_pending = 1,
                4 => a.debits_posted = 1,
                5 => a.credits_pending = 1,
                6 => a.credits_posted = 1,
                7 => a.ledger = 0,
                8 => a.code = 0,
                9 => a.flags = AccountFlags::from_bits_retain(1 << (6 + self.rng.below(10))),
                _ => a.timestamp = 1 + self.rng.below(1000),
            }
            return a;
        }
        // A retry: identical, or one field changed.
        let mut a = self.accounts[self.rng.below(self.accounts.len() as u64) as usize];
        match self.rng.below(8) {
            0..=2 => {}
            3 => a.flags = AccountFlags::from_bits_retain(a.flags.bits() ^ AccountFlags::HISTORY.bits()),
            4 => a.user_data_128 += 1,
            5 => a.user_data_64 += 1,
            6 => a.user_data_32 += 1,
            _ => {
                if self.rng.chance(50) {
                    a.ledger += 1
                } else {
                    a.code += 1
                }
            }
        }
        if a.flags.contains(AccountFlags::IMPORTED) && self.rng.chance(50) {
            // A retried import keeps its timestamp: `exists` comes before the regress check.
        } else if a.flags.contains(AccountFlags::IMPORTED) {
            // Imported again later but not first in its batch, or with a regressing
            // timestamp: deterministic failures on both sides.
            a.timestamp = IMPORT_BASE + self.rng.below(50);
        }
        a
    }

    fn account_batch(&mut self) -> Request {
        let len = self.batch_len();
        let mut events: Vec<Account> = (0..len).map(|_| self.account_event()).collect();
        // A batch is imported when its first event is: keep those rare and deterministic
        // (every imported timestamp here regresses, or is a retry).
        self.link(&mut events, |a, on| {
            if on {
                a.flags.insert(AccountFlags::LINKED)
            } else {
                a.flags.remove(AccountFlags::LINKED)
            }
        });
        Request::Create(Operation::CreateAccounts(events))
    }

    fn batch_len(&mut self) -> usize {
        match self.rng.below(100) {
            0..=19 => 1,
            20..=79 => self.rng.range(2, 20) as usize,
            80..=96 => self.rng.range(21, 100) as usize,
            _ => self.rng.range(101, GENERATED_BATCH_MAX as u64) as usize,
        }
    }

    /// Linked chains over a batch: most batches have none; some have chains of 2–5 events;
    /// a few leave the last event linked (a chain open at the end of the batch).
    fn link<E>(&mut self, events: &mut [E], mut set: impl FnMut(&mut E, bool)) {
        if self.rng.chance(70) {
            return;
        }
        let mut i = 0;
        while i < events.len() {
            if self.rng.chance(25) {
                let len = self.rng.range(2, 5) as usize;
                let end = (i + len).min(events.len());
                for event in &mut events[i..end - 1] {
                    set(event, true);
                }
                set(&mut events[end - 1], false);
                i = end;
            } else {
                i += 1;
            }
        }
        if self.rng.chance(10) {
            if let Some(last) = events.last_mut() {
                set(last, true);
            }
        }
    }

    // -- transfers ----------------------------------------------------------------------------

    /// An account id for a transfer: mostly a recent one (fresh accounts are not yet saturated
    /// by huge amounts or closed), sometimes any, rarely unknown.
    fn account_id(&mut self) -> u128 {
        let count = self.accounts.len() as u64;
        if count == 0 || self.rng.chance(2) {
            return UNKNOWN_ID + u128::from(self.rng.below(1000));
        }
        let index = if self.rng.chance(75) { count - 1 - self.rng.below(count.min(60)) } else { self.rng.below(count) };
        self.accounts[index as usize].id
    }

    fn amount(&mut self) -> u128 {
        match self.rng.below(1000) {
            0..=49 => 0,
            50..=849 => u128::from(self.rng.range(1, 1000)),
            850..=989 => u128::from(self.rng.range(1000, 1_000_000)),
            990..=994 => u128::MAX / 2 + 1,
            _ => u128::MAX,
        }
    }

    /// A plain transfer with a fresh id between `dr` and `cr`, on the debit account's ledger.
    fn fresh_plain(&mut self, dr: u128, cr: u128) -> Transfer {
        let id = self.take_transfer_id();
        let ledger = self.ledgers.get(&dr).copied().unwrap_or(1);
        let t = Transfer {
            id,
            debit_account_id: dr,
            credit_account_id: cr,
            amount: self.amount(),
            user_data_128: u128::from(self.small(60, 4)),
            user_data_64: self.small(60, 4),
            user_data_32: self.small(60, 4) as u32,
            ledger,
            code: self.rng.range(1, 3) as u16,
            ..Default::default()
        };
        self.transfers.push(t);
        t
    }

    fn two_accounts(&mut self) -> (u128, u128) {
        let dr = self.account_id();
        let mut cr = self.account_id();
        for _ in 0..4 {
            if cr != dr && (self.ledgers.get(&cr) == self.ledgers.get(&dr) || self.rng.chance(5)) {
                break;
            }
            cr = self.account_id();
        }
        (dr, cr)
    }

    fn timeout(&mut self) -> u32 {
        if self.rng.chance(70) {
            0
        } else {
            self.rng.range(u64::from(TIMEOUT_MIN_S), u64::from(u32::MAX)) as u32
        }
    }

    /// A post or void of a pending transfer sent before (or of an unknown or non-pending one).
    fn resolve(&mut self, post: bool) -> Transfer {
        let id = self.take_transfer_id();
        let pending_id = match self.rng.below(100) {
            _ if self.pendings.is_empty() => UNKNOWN_ID,
            0..=4 => UNKNOWN_ID + u128::from(self.rng.below(10)),
            5..=9 if !self.transfers.is_empty() => self.transfers[self.rng.below(self.transfers.len() as u64) as usize].id,
            _ => {
                // Mostly recent pending transfers, so most are still pending.
                let n = self.pendings.len() as u64;
                let back = self.rng.below(n.min(40));
                self.pendings[(n - 1 - back) as usize]
            }
        };
        let p = self.transfers.iter().rev().find(|t| t.id == pending_id).copied();
        let mut t = Transfer {
            id,
            pending_id,
            flags: if post { TransferFlags::POST_PENDING_TRANSFER } else { TransferFlags::VOID_PENDING_TRANSFER },
            ..Default::default()
        };
        let p_amount = p.map_or(1, |p| p.amount);
        t.amount = match self.rng.below(100) {
            0..=29 => AMOUNT_MAX,
            30..=49 => 0,
            50..=69 => p_amount,
            70..=84 => p_amount / 2,
            85..=94 => p_amount.saturating_add(1),
            _ => self.amount(),
        };
        if let Some(p) = p {
            // Optional fields: 0 (take the pending transfer's), the same, or different.
            match self.rng.below(12) {
                0 => t.debit_account_id = p.debit_account_id,
                1 => t.credit_account_id = p.credit_account_id,
                2 => t.ledger = p.ledger,
                3 => t.code = p.code,
                4 => t.debit_account_id = p.credit_account_id,
                5 => t.credit_account_id = p.debit_account_id,
                6 => t.ledger = p.ledger + 1,
                7 => t.code = p.code + 1,
                8 => t.user_data_128 = 7,
                9 => t.user_data_64 = 7,
                _ => {}
            }
        }
        self.transfers.push(t);
        t
    }

    fn transfer_event(&mut self) -> Transfer {
        let kind = self.rng.below(100);
        match kind {
            0..=37 => {
                let (dr, cr) = self.two_accounts();
                self.fresh_plain(dr, cr)
            }
            38..=54 => {
                let (dr, cr) = self.two_accounts();
                let mut t = self.fresh_plain(dr, cr);
                t.flags = TransferFlags::PENDING;
                t.timeout = self.timeout();
                if self.rng.chance(4) {
                    t.flags.insert(if self.rng.chance(50) { TransferFlags::CLOSING_DEBIT } else { TransferFlags::CLOSING_CREDIT });
                }
                self.transfers.pop();
                self.transfers.push(t);
                self.pendings.push(t.id);
                t
            }
            55..=66 => self.resolve(true),
            67..=73 => self.resolve(false),
            74..=81 => {
                let (dr, cr) = self.two_accounts();
                let mut t = self.fresh_plain(dr, cr);
                t.flags = match self.rng.below(3) {
                    0 => TransferFlags::BALANCING_DEBIT,
                    1 => TransferFlags::BALANCING_CREDIT,
                    _ => TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT,
                };
                if self.rng.chance(30) {
                    t.amount = u128::MAX;
                }
                if self.rng.chance(20) {
                    t.flags.insert(TransferFlags::PENDING);
                }
                self.transfers.pop();
                self.transfers.push(t);
                t
            }
            82..=90 => self.invalid_transfer(),
            _ => self.retry_transfer(),
        }
    }

    /// A transfer invalid on purpose (its id is burnt: not recorded for retries).
    fn invalid_transfer(&mut self) -> Transfer {
        let (dr, cr) = self.two_accounts();
        let mut t = self.fresh_plain(dr, cr);
        self.transfers.pop();
        match self.rng.below(20) {
            0 => t.id = 0,
            1 => t.id = u128::MAX,
            2 => t.debit_account_id = 0,
            3 => t.debit_account_id = u128::MAX,
            4 => t.credit_account_id = 0,
            5 => t.credit_account_id = u128::MAX,
            6 => t.credit_account_id = t.debit_account_id,
            7 => t.flags = TransferFlags::from_bits_retain(1 << (9 + self.rng.below(7))),
            8 => t.pending_id = 1,
            9 => t.timeout = 1,
            10 => t.flags = TransferFlags::CLOSING_DEBIT,
            11 => t.ledger = 0,
            12 => t.code = 0,
            13 => t.ledger += 1,
            14 => t.flags = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER,
            15 => {
                t.flags = TransferFlags::POST_PENDING_TRANSFER | TransferFlags::PENDING;
                t.pending_id = self.pendings.last().copied().unwrap_or(1);
            }
            16 => {
                // Posting itself, a zero or int-max pending id.
                t.flags = TransferFlags::VOID_PENDING_TRANSFER;
                t.pending_id = self.rng.pick(&[0, u128::MAX, t.id]);
            }
            17 => t.timestamp = 1 + self.rng.below(1000),
            18 => {
                // Imported, not first in its batch (or first, with a regressing timestamp).
                t.flags = TransferFlags::IMPORTED;
                t.timestamp = IMPORT_BASE + 1 + self.rng.below(50);
            }
            _ => {
                t.flags = TransferFlags::PENDING;
                t.timeout = self.rng.range(1, u64::from(TIMEOUT_MIN_S) - 1) as u32;
                // Would expire during the run: left invalid (an unknown debit account) so
                // both sides answer alike whatever their clocks.
                t.debit_account_id = UNKNOWN_ID;
            }
        }
        t
    }

    /// A retry of a transfer sent before: identical, or one field changed.
    fn retry_transfer(&mut self) -> Transfer {
        if self.transfers.is_empty() {
            let (dr, cr) = self.two_accounts();
            return self.fresh_plain(dr, cr);
        }
        let n = self.transfers.len() as u64;
        let index = if self.rng.chance(60) { n - 1 - self.rng.below(n.min(100)) } else { self.rng.below(n) };
        let mut t = self.transfers[index as usize];
        if t.flags.contains(TransferFlags::IMPORTED)
            && t.flags.intersects(TransferFlags::POST_PENDING_TRANSFER | TransferFlags::VOID_PENDING_TRANSFER)
            && t.timestamp < IMPORT_BASE
        {
            // An offset import retried as is would be older than its pending transfer if the
            // first attempt failed: TigerBeetle 0.16.78 stops on that. Retried unimported.
            t.flags.remove(TransferFlags::IMPORTED);
            t.timestamp = 0;
        }
        match self.rng.below(14) {
            0..=4 => {}
            5 => t.flags = TransferFlags::from_bits_retain(t.flags.bits() ^ TransferFlags::LINKED.bits()),
            6 => t.pending_id = t.pending_id.wrapping_add(1),
            7 => {
                if t.flags.contains(TransferFlags::PENDING) {
                    t.timeout = t.timeout.wrapping_add(1).max(TIMEOUT_MIN_S)
                } else {
                    t.timeout = 1
                }
            }
            8 => t.debit_account_id += 1,
            9 => t.credit_account_id += 1,
            10 => t.amount = t.amount.wrapping_add(1),
            11 => t.user_data_128 += 1,
            12 => t.user_data_64 = t.user_data_64.wrapping_add(1),
            _ => {
                if self.rng.chance(50) {
                    t.ledger += 1
                } else {
                    t.code = t.code.wrapping_add(1)
                }
            }
        }
        t
    }

    fn transfer_batch(&mut self) -> Request {
        let len = self.batch_len();
        let first_id = self.next_transfer;
        let mut events: Vec<Transfer> = (0..len).map(|_| self.transfer_event()).collect();
        self.link(&mut events, |t, on| {
            if on {
                t.flags.insert(TransferFlags::LINKED)
            } else {
                t.flags.remove(TransferFlags::LINKED)
            }
        });
        // Keep what was linked for retries (the stored transfer has the flag).
        for t in events.iter().filter(|t| t.id >= first_id) {
            if let Some(sent) = self.transfers.iter_mut().rev().take(GENERATED_BATCH_MAX).find(|s| s.id == t.id) {
                sent.flags = t.flags;
            }
        }
        Request::Create(Operation::CreateTransfers(events))
    }

    // -- queries ------------------------------------------------------------------------------

    fn some_ids(&mut self, accounts: bool) -> Vec<u128> {
        let len = self.rng.range(1, 30) as usize;
        (0..len)
            .map(|_| {
                if self.rng.chance(15) {
                    return self.rng.pick(&[0, u128::MAX, UNKNOWN_ID + 5]);
                }
                if accounts {
                    self.account_id()
                } else {
                    let n = self.next_transfer - TRANSFER_ID_BASE;
                    if n == 0 {
                        UNKNOWN_ID
                    } else {
                        TRANSFER_ID_BASE + u128::from(self.rng.below(n as u64))
                    }
                }
            })
            .collect()
    }

    /// A timestamp range both sides agree on: open, within the imported objects (whose
    /// timestamps the workload chose), or invalid.
    fn timestamps(&mut self) -> (u64, u64) {
        let pick = |w: &mut Self| if w.imported.is_empty() { IMPORT_BASE } else { w.rng.pick(&w.imported) };
        match self.rng.below(100) {
            0..=69 => (0, 0),
            70..=77 => (0, pick(self)),
            78..=85 => (pick(self), 0),
            86..=89 => {
                let (a, b) = (pick(self), pick(self));
                (a.min(b), a.max(b))
            }
            90..=93 => (IMPORT_BASE + 5, IMPORT_BASE + 3),
            94..=96 => (0, u64::MAX),
            _ => (TIMESTAMP_MAX, 0),
        }
    }

    fn limit(&mut self) -> u32 {
        match self.rng.below(100) {
            0..=64 => self.rng.range(1, 30) as u32,
            65..=69 => 0,
            70..=84 => BATCH_EVENTS_MAX as u32,
            85..=89 => u32::MAX,
            _ => self.rng.range(31, 2000) as u32,
        }
    }

    fn account_filter(&mut self) -> AccountFilter {
        let account_id = if self.rng.chance(5) { self.rng.pick(&[0, u128::MAX, UNKNOWN_ID]) } else { self.account_id() };
        let (timestamp_min, timestamp_max) = self.timestamps();
        let (debits, credits) = match self.rng.below(100) {
            0..=59 => (true, true),
            60..=78 => (true, false),
            79..=96 => (false, true),
            _ => (false, false),
        };
        AccountFilter {
            account_id,
            user_data_128: if self.rng.chance(85) { 0 } else { u128::from(self.rng.range(1, 4)) },
            user_data_64: if self.rng.chance(85) { 0 } else { self.rng.range(1, 4) },
            user_data_32: if self.rng.chance(85) { 0 } else { self.rng.range(1, 4) as u32 },
            code: if self.rng.chance(80) { 0 } else { self.rng.range(1, 3) as u16 },
            timestamp_min,
            timestamp_max,
            limit: self.limit(),
            debits,
            credits,
            reversed: self.rng.chance(50),
        }
    }

    fn query_filter(&mut self) -> QueryFilter {
        let (timestamp_min, timestamp_max) = self.timestamps();
        QueryFilter {
            user_data_128: if self.rng.chance(70) { 0 } else { u128::from(self.rng.range(1, 4)) },
            user_data_64: if self.rng.chance(70) { 0 } else { self.rng.range(1, 4) },
            user_data_32: if self.rng.chance(70) { 0 } else { self.rng.range(1, 4) as u32 },
            ledger: if self.rng.chance(60) { 0 } else { self.rng.range(1, 3) as u32 },
            code: if self.rng.chance(70) { 0 } else { self.rng.range(1, 3) as u16 },
            timestamp_min,
            timestamp_max,
            limit: self.limit(),
            reversed: self.rng.chance(50),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_depends_only_on_its_seed() {
        let run = |seed| {
            let mut w = Workload::new(seed);
            (0..200).map(|_| w.next_request()).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    /// The rule itself is tested in `guard`; the workload never breaks it.
    #[test]
    fn the_workload_never_sends_what_stops_tigerbeetle() {
        for seed in 0..10 {
            let mut w = Workload::new(seed);
            for _ in 0..400 {
                if let Request::Create(Operation::CreateTransfers(events)) = w.next_request() {
                    let stored: HashMap<u128, u64> = w.transfers.iter().map(|t| (t.id, t.timestamp)).collect();
                    assert_eq!(stops_tigerbeetle_0_16_78(&events, |id| stored.get(&id).copied().filter(|&t| t > 0)), None);
                }
            }
        }
    }

    #[test]
    fn generated_batches_stay_within_bounds() {
        let mut w = Workload::new(3);
        for _ in 0..500 {
            let request = w.next_request();
            assert!(request.events() >= 1, "{request:?}");
            assert!(request.events() <= BATCH_EVENTS_MAX.min(GENERATED_BATCH_MAX), "{request:?}");
        }
    }

    #[test]
    fn two_embedded_ledgers_agree_and_a_changed_answer_is_reported() {
        // The harness itself: the same workload on two embedded ledgers never differs ...
        let (mut a, mut b) = (Embedded::new(), Embedded::new());
        let outcome = run_seed(11, 3000, &mut a, &mut b).expect("identical ledgers agree");
        assert!(outcome.events >= 3000);
        assert!(a.state().transfers_count() > 100, "the workload creates transfers");
        // Imports after the newest object succeed too (not only the deliberate failures).
        let late = |flags: TransferFlags, timestamp: u64| flags.contains(TransferFlags::IMPORTED) && timestamp > IMPORTED_COMPARED_BELOW;
        assert!(a.state().transfers().iter().filter(|t| late(t.flags, t.timestamp)).count() > 5);
        assert!(a.state().accounts().any(|x| x.flags.contains(AccountFlags::IMPORTED) && x.timestamp > IMPORTED_COMPARED_BELOW));
        // ... and a difference in a row is caught, timestamps aside.
        let row = Account { id: 1, ledger: 1, code: 1, timestamp: 5, ..Default::default() };
        let x = Answer::Accounts(vec![row]);
        assert_eq!(difference(&x, &Answer::Accounts(vec![Account { timestamp: 6, ..row }])), None);
        assert!(difference(&x, &Answer::Accounts(vec![Account { credits_posted: 1, ..row }])).is_some());
        let imported = Account { flags: AccountFlags::IMPORTED, ..row };
        assert!(difference(&Answer::Accounts(vec![imported]), &Answer::Accounts(vec![Account { timestamp: 6, ..imported }])).is_some());
    }
}
