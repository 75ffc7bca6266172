//! The simulated clients' workload, shared by the ledger-path simulator (`sim`) and the
//! whole-appliance one (`pantera`'s `sim` feature): which request each client makes next,
//! its HTTP bytes, and what the reply to it tells the checker (`sim_audit::Auditor`, which
//! the workload owns because the workload is what tells it what was sent and acknowledged).
//!
//! Every random choice is drawn from the caller's `SimRng`, in a fixed order, so a seed makes
//! the same requests in both simulators as long as they draw the same numbers in between.
//! The one thing in which the two simulators' clients differ, how often an idle client makes
//! its next request, is `WorkloadConfig::request_one_in`.
//!
//! The workload: each client first creates its `ACCOUNTS_PER_CLIENT` accounts (the first one
//! with `debits_must_not_exceed_credits`), then, per request, draws one of ten: a lookup of an
//! acknowledged transfer (1 in 10), a post or void of one of its own acknowledged pending
//! transfers (2 in 10, while it has one), a pending transfer with a 1-3 s timeout (2 in 10,
//! or 4 when it has nothing to resolve) or a plain transfer (the rest), between random
//! accounts of any client.

use crate::sim_audit::Auditor;
use crate::storage::SimRng;

/// Accounts each client creates with its first request (ids `client * 3 + 1 ..= client * 3 + 3`).
pub const ACCOUNTS_PER_CLIENT: u128 = 3;
/// Transfer ids start above it, clear of the account ids of any small number of clients.
const TRANSFER_ID_BASE: u128 = 1_000;

/// What a request asks for, kept by the client to read the reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Accounts,
    /// A transfer: its id, debit, credit, amount, whether it is pending, and whether it posts
    /// or voids a pending one.
    Transfer {
        id: u128,
        debit: u128,
        credit: u128,
        amount: u128,
        pending: bool,
        resolves: bool,
    },
    Lookup(u128),
}

/// One request a client makes: resent byte for byte (same ids) until it is answered.
#[derive(Clone, Debug)]
pub struct Request {
    /// The client's count of requests before this one (0 for its accounts).
    pub number: u64,
    pub kind: Kind,
    /// The whole HTTP/1.1 request.
    pub bytes: Vec<u8>,
}

/// The workload's parameters.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadConfig {
    pub clients: usize,
    /// Requests each client makes (resends not counted); bounds its pending transfers too.
    pub requests_per_client: u64,
    /// An idle client makes its next request with a chance of 1 in this, per turn: the
    /// ledger-path simulator's clients think for 5 ms on average, the whole appliance's 20
    /// (a turn is a simulated millisecond in both).
    pub request_one_in: u64,
}

#[derive(Debug, Default)]
struct ClientState {
    made: u64,
    /// Pending transfers this client had acknowledged, to post or void later: (id, debit,
    /// credit, amount).
    pending: Vec<(u128, u128, u128, u128)>,
}

/// The clients' workload and the checker's record of what they were told.
#[derive(Debug)]
pub struct Workload {
    config: WorkloadConfig,
    clients: Vec<ClientState>,
    next_id: u128,
    audit: Auditor,
}

impl Workload {
    pub fn new(config: WorkloadConfig) -> Self {
        assert!(config.request_one_in > 0, "a chance of 1 in 0");
        let clients = (0..config.clients)
            .map(|_| ClientState::default())
            .collect();
        Workload {
            config,
            clients,
            next_id: TRANSFER_ID_BASE,
            audit: Auditor::new(),
        }
    }

    /// The checker's record: what clients sent and were acknowledged.
    pub fn audit(&self) -> &Auditor {
        &self.audit
    }

    /// Requests `client` made so far.
    pub fn made(&self, client: usize) -> u64 {
        self.clients[client].made
    }

    /// Whether `client` made all its requests.
    pub fn exhausted(&self, client: usize) -> bool {
        self.clients[client].made >= self.config.requests_per_client
    }

    /// A turn of `client` with no request outstanding: its next request, or None while it
    /// thinks (or when it is done). Draws from `rng` only while it has requests left.
    pub fn next_request(&mut self, rng: &mut SimRng, client: usize) -> Option<Request> {
        if self.exhausted(client) || !rng.chance(1, self.config.request_one_in) {
            return None;
        }
        let number = self.clients[client].made;
        self.clients[client].made += 1;
        let (kind, bytes) = self.make(rng, client, number);
        Some(Request {
            number,
            kind,
            bytes,
        })
    }

    fn make(&mut self, rng: &mut SimRng, client: usize, number: u64) -> (Kind, Vec<u8>) {
        let accounts = self.config.clients as u128 * ACCOUNTS_PER_CLIENT;
        if number == 0 {
            // Its accounts; the first of each may not go overdrawn.
            let base = client as u128 * ACCOUNTS_PER_CLIENT;
            let body = format!(
                r#"[{{"id":"{}","ledger":1,"code":1,"flags":["debits_must_not_exceed_credits"]}},{{"id":"{}","ledger":1,"code":1}},{{"id":"{}","ledger":1,"code":1}}]"#,
                base + 1,
                base + 2,
                base + 3
            );
            return (Kind::Accounts, post("/v1/accounts", &body));
        }
        let roll = rng.below(10);
        if roll == 0 {
            let known: Vec<u128> = self.audit.acknowledged().collect();
            if !known.is_empty() {
                let id = known[rng.below(known.len() as u64) as usize];
                let bytes = format!("GET /v1/transfers/{id} HTTP/1.1\r\nHost: pantera\r\n\r\n");
                return (Kind::Lookup(id), bytes.into_bytes());
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.audit.sent_transfer(id);
        let pending = &mut self.clients[client].pending;
        if roll <= 2 && !pending.is_empty() {
            let index = rng.below(pending.len() as u64) as usize;
            let (pending_id, debit, credit, amount) = pending.swap_remove(index);
            let flag = if rng.chance(1, 2) {
                "post_pending_transfer"
            } else {
                "void_pending_transfer"
            };
            let body = format!(
                r#"[{{"id":"{id}","pending_id":"{pending_id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"{amount}","ledger":1,"code":1,"flags":["{flag}"]}}]"#
            );
            let kind = Kind::Transfer {
                id,
                debit,
                credit,
                amount,
                pending: false,
                resolves: true,
            };
            return (kind, post("/v1/transfers", &body));
        }
        let debit = 1 + u128::from(rng.below(accounts as u64));
        let mut credit = 1 + u128::from(rng.below(accounts as u64));
        if credit == debit {
            credit = debit % accounts + 1;
        }
        let amount = 1 + u128::from(rng.below(100));
        let pending = roll <= 4;
        let body = if pending {
            let timeout = 1 + rng.below(3);
            format!(
                r#"[{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"{amount}","ledger":1,"code":1,"timeout":{timeout},"flags":["pending"]}}]"#
            )
        } else {
            format!(
                r#"[{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"{amount}","ledger":1,"code":1}}]"#
            )
        };
        let kind = Kind::Transfer {
            id,
            debit,
            credit,
            amount,
            pending,
            resolves: false,
        };
        (kind, post("/v1/transfers", &body))
    }

    /// The final reply (not a 503, which the client answers by sending again) to `client`'s
    /// request of `kind`: the checker notes what it acknowledged, and the client keeps a
    /// created pending transfer to resolve later. Returns the broken invariants.
    pub fn reply(&mut self, client: usize, kind: &Kind, status: u16, body: &[u8]) -> Vec<String> {
        match *kind {
            Kind::Accounts => {
                if status == 200 {
                    for (index, s) in statuses(body).into_iter().enumerate() {
                        if s == "created" || s == "exists" {
                            let id = client as u128 * ACCOUNTS_PER_CLIENT + 1 + index as u128;
                            self.audit.account_acknowledged(id);
                        }
                    }
                }
                Vec::new()
            }
            Kind::Transfer {
                id,
                debit,
                credit,
                amount,
                pending,
                resolves,
            } => {
                let s = if status == 200 {
                    statuses(body).into_iter().next().unwrap_or_default()
                } else {
                    format!("http {status}")
                };
                let problems =
                    self.audit
                        .transfer_reply(id, debit, credit, (!resolves).then_some(amount), &s);
                if pending && s == "created" {
                    self.clients[client]
                        .pending
                        .push((id, debit, credit, amount));
                }
                problems
            }
            Kind::Lookup(id) if status != 200 => {
                vec![format!(
                    "lookup of acknowledged transfer {id} answered {status}"
                )]
            }
            Kind::Lookup(_) => Vec::new(),
        }
    }
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `status` of each result in a JSON array of results (empty if the body is not one).
fn statuses(body: &[u8]) -> Vec<String> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_slice(body) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| i.get("status").and_then(|s| s.as_str()).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(request_one_in: u64) -> WorkloadConfig {
        WorkloadConfig {
            clients: 2,
            requests_per_client: 40,
            request_one_in,
        }
    }

    /// Drives one client to the end, every transfer answered `created`.
    fn drive(seed: u64) -> Vec<Request> {
        let mut rng = SimRng::new(seed);
        let mut workload = Workload::new(config(1));
        let mut made = Vec::new();
        while let Some(request) = workload.next_request(&mut rng, 0) {
            let body: &[u8] = match request.kind {
                Kind::Accounts => {
                    br#"[{"status":"created"},{"status":"created"},{"status":"created"}]"#
                }
                _ => br#"[{"status":"created"}]"#,
            };
            assert!(
                workload.reply(0, &request.kind, 200, body).is_empty(),
                "{request:?}"
            );
            made.push(request);
        }
        made
    }

    #[test]
    fn a_client_makes_its_accounts_then_every_kind_of_transfer() {
        let requests = drive(7);
        assert_eq!(requests.len(), 40);
        assert_eq!(requests[0].kind, Kind::Accounts);
        assert!(requests[0]
            .bytes
            .starts_with(b"POST /v1/accounts HTTP/1.1\r\n"));
        assert!(requests
            .iter()
            .enumerate()
            .all(|(i, r)| r.number == i as u64));
        let count = |f: &dyn Fn(&Kind) -> bool| requests.iter().filter(|r| f(&r.kind)).count();
        assert!(count(&|k| matches!(k, Kind::Lookup(_))) > 0);
        assert!(count(&|k| matches!(k, Kind::Transfer { pending: true, .. })) > 0);
        assert!(count(&|k| matches!(k, Kind::Transfer { resolves: true, .. })) > 0);
        assert!(
            count(&|k| matches!(
                k,
                Kind::Transfer {
                    pending: false,
                    resolves: false,
                    ..
                }
            )) > 0
        );
        for r in &requests {
            if let Kind::Transfer { debit, credit, .. } = r.kind {
                assert_ne!(debit, credit);
                assert!(
                    (1..=6).contains(&debit) && (1..=6).contains(&credit),
                    "{r:?}"
                );
            }
        }
    }

    #[test]
    fn a_seed_makes_the_same_requests() {
        let bytes = |rs: Vec<Request>| rs.into_iter().map(|r| r.bytes).collect::<Vec<_>>();
        assert_eq!(bytes(drive(3)), bytes(drive(3)));
        assert_ne!(bytes(drive(3)), bytes(drive(4)));
    }

    #[test]
    fn an_idle_client_waits_one_in_n_turns_on_average() {
        let mut rng = SimRng::new(1);
        let mut workload = Workload::new(WorkloadConfig {
            requests_per_client: 1_000,
            ..config(20)
        });
        let turns = 20_000;
        let mut made = 0;
        for _ in 0..turns {
            // No reply is needed: the next request is made all the same.
            made += u64::from(workload.next_request(&mut rng, 1).is_some());
        }
        assert_eq!(workload.made(1), made);
        assert!(
            (800..1_200).contains(&made),
            "{made} requests in {turns} turns"
        );
    }

    #[test]
    fn a_bad_reply_is_a_violation() {
        let mut workload = Workload::new(config(1));
        let lookup = workload.reply(0, &Kind::Lookup(1_001), 404, b"");
        assert_eq!(
            lookup,
            vec!["lookup of acknowledged transfer 1001 answered 404".to_string()]
        );
        let kind = Kind::Transfer {
            id: 1_001,
            debit: 1,
            credit: 2,
            amount: 5,
            pending: false,
            resolves: false,
        };
        assert!(workload
            .reply(0, &kind, 200, br#"[{"status":"created"}]"#)
            .is_empty());
        assert!(
            !workload
                .reply(0, &kind, 200, br#"[{"status":"created"}]"#)
                .is_empty(),
            "created twice"
        );
        assert_eq!(workload.audit().acknowledged_count(), 1);
    }
}
