//! The sans-IO HTTPS connection attacked in memory: a rustls client on one side, the
//! connection on the other, a simulated TCP send buffer between them and a fake clock, so every
//! deadline is reached without sleeping.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ledger_svc::api::{Command, EventResult, Reply, Role};
use ledger_svc::connection::{Budget, Connection, ConnectionLimits, Event};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tempfile::TempDir;
use tls_term::certs::{self, DevCertPaths};

/// What the simulated TCP connection holds toward the client before the server must wait:
/// a send buffer of 64 KiB, as the appliance's default.
const TCP_SEND_BUFFER_BYTES: usize = 64 * 1024;

struct Certs {
    _dir: TempDir,
    paths: DevCertPaths,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), false).unwrap();
    Certs { _dir: dir, paths }
}

fn client_config(paths: &DevCertPaths) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&paths.ca_cert).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(&paths.client_cert).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&paths.client_key).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(config)
}

/// One client and one server connection over a simulated TCP link.
struct Pair {
    server: Connection,
    client: ClientConnection,
    now: Instant,
    /// Ciphertext the client sent that the server has not taken (it stays in TCP).
    to_server: Vec<u8>,
    /// Ciphertext the server sent that the client has not read (the TCP send buffer).
    to_client: Vec<u8>,
    /// The client reads what arrives.
    client_reads: bool,
    /// Plaintext the client has read.
    received: Vec<u8>,
    events: Vec<Event>,
    /// Submissions taken from the server and not yet answered: (seq, command).
    ledger: Vec<(u64, Command)>,
    /// The most the server held at any step.
    held_bytes_max_seen: usize,
}

impl Pair {
    fn new(certs: &Certs, limits: ConnectionLimits, budget: Budget) -> Pair {
        let tls = tls_term::server_config(&tls_term::TlsSettings::lab(&certs.paths.dir)).unwrap();
        let roles = tls_term::ClientPolicy { roles: tls_term::RoleMap::from_roles([("cn:client", "write")]).unwrap(), ..Default::default() };
        let now = Instant::now();
        let server = Connection::new(&tls, limits, Arc::new(roles), budget, now).unwrap();
        let client = ClientConnection::new(client_config(&certs.paths), ServerName::try_from("pantera.lab").unwrap()).unwrap();
        let mut pair = Pair {
            server,
            client,
            now,
            to_server: Vec::new(),
            to_client: Vec::new(),
            client_reads: true,
            received: Vec::new(),
            events: Vec::new(),
            ledger: Vec::new(),
            held_bytes_max_seen: 0,
        };
        for _ in 0..20 {
            pair.pump();
        }
        assert!(!pair.client.is_handshaking() && !pair.server.is_handshaking(), "handshake");
        pair
    }

    /// Moves bytes both ways until nothing moves; the fake ledger keeps submissions.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while self.client.wants_write() {
                self.client.write_tls(&mut self.to_server).unwrap();
            }
            if !self.to_server.is_empty() {
                let n = self.server.handle_ciphertext(self.now, &self.to_server);
                self.to_server.drain(..n);
                moved |= n > 0;
            }
            if self.server.is_held_back() {
                self.server.resume(self.now);
            }
            while let Some(s) = self.server.poll_submission() {
                self.ledger.push((s.seq, s.command));
                moved = true;
            }
            let room = TCP_SEND_BUFFER_BYTES.saturating_sub(self.to_client.len());
            if room > 0 {
                let mut buf = vec![0u8; room];
                let n = self.server.poll_ciphertext(&mut buf);
                self.to_client.extend_from_slice(&buf[..n]);
                moved |= n > 0;
            }
            if self.client_reads && !self.to_client.is_empty() {
                let mut slice = &self.to_client[..];
                let n = self.client.read_tls(&mut slice).unwrap();
                self.to_client.drain(..n);
                self.client.process_new_packets().unwrap();
                let mut chunk = [0u8; 16 * 1024];
                loop {
                    match self.client.reader().read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => self.received.extend_from_slice(&chunk[..k]),
                    }
                }
                moved |= n > 0;
            }
            while let Some(e) = self.server.poll_event() {
                self.events.push(e);
            }
            self.held_bytes_max_seen = self.held_bytes_max_seen.max(self.server.held_bytes());
            if !moved {
                break;
            }
        }
    }

    /// Answers every submission the fake ledger holds: lookups find nothing, creates succeed.
    fn answer_all(&mut self) {
        for (seq, command) in std::mem::take(&mut self.ledger) {
            let reply = match command {
                Command::LookupAccount(id) => Reply::Account { id, account: None },
                Command::LookupTransfer(id) => Reply::Transfer { id, transfer: None },
                Command::AccountTransfers(_) => Reply::AccountTransfers { transfers: Vec::new(), next: None },
                Command::AccountBalances(_) => Reply::AccountBalances { balances: Vec::new(), next: None },
                Command::QueryAccounts(_) => Reply::Accounts { accounts: Vec::new(), next: None },
                Command::QueryTransfers(_) => Reply::Transfers { transfers: Vec::new(), next: None },
                Command::Mutate(op) => Reply::Created(vec![EventResult { status: "ok", timestamp: Some(1) }; op.len()]),
            };
            self.server.handle_reply(self.now, seq, &reply);
        }
        self.pump();
    }

    fn send(&mut self, bytes: &[u8]) {
        self.client.writer().write_all(bytes).unwrap();
        self.pump();
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        if self.server.poll_at().is_some_and(|at| at <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.pump();
    }

    /// The status codes of the complete responses received so far.
    fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.received);
        text.match_indices("HTTP/1.1 ").filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok()).collect()
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: pantera.lab\r\n\r\n")
}

#[test]
fn a_client_that_pipelines_and_never_reads_backs_up_into_tcp_not_memory() {
    let certs = certs();
    let limits = ConnectionLimits::default();
    let mut pair = Pair::new(&certs, limits, Budget::new(64 << 20));
    pair.client_reads = false;
    // 404s with 4 KB paths, as the attack measured before this fix did: 12 MB of requests.
    let request = get(&format!("/{}", "a".repeat(4096)));
    let count = 3000;
    let mut sent = 0;
    for _ in 0..count {
        pair.client.writer().write_all(request.as_bytes()).unwrap();
        sent += request.len();
        pair.pump();
    }
    // The server stopped taking input: most of it still waits in "TCP".
    while pair.client.wants_write() {
        pair.client.write_tls(&mut pair.to_server).unwrap();
    }
    let waiting = pair.to_server.len();
    assert!(waiting > 0, "the server took all {sent} bytes");
    for _ in 0..100 {
        pair.pump();
    }
    assert_eq!(pair.to_server.len(), waiting, "the server stopped reading: the rest stays in TCP");
    println!("the server took {} of {sent} bytes, then stopped reading", sent - waiting);
    // What it holds for the client is bounded by its output cap plus one response, and the
    // request bytes decoded from TLS and not yet parsed: one plaintext chunk and one head.
    let bound = limits.output_bytes_max + 8 * 1024 + 16 * 1024 + limits.http.header_bytes_max;
    assert!(pair.held_bytes_max_seen <= bound, "held {} bytes", pair.held_bytes_max_seen);
    let responses_before = pair.events.iter().filter(|e| matches!(e, Event::Response { .. })).count();
    assert!(responses_before < count, "{responses_before} responses while the client read nothing");
    // Once the client reads, every request is answered, in order, and nothing is lost.
    pair.client_reads = true;
    for _ in 0..10_000 {
        pair.pump();
        if pair.statuses().len() == count {
            break;
        }
    }
    let statuses = pair.statuses();
    assert_eq!(statuses.len(), count);
    assert!(statuses.iter().all(|&s| s == 404), "{:?}", &statuses[..10]);
    assert!(pair.held_bytes_max_seen <= bound, "held {} bytes", pair.held_bytes_max_seen);
}

#[test]
fn a_client_trickling_its_head_is_cut_at_the_head_deadline_whatever_it_sends() {
    let certs = certs();
    let limits = ConnectionLimits::default();
    let mut pair = Pair::new(&certs, limits, Budget::new(64 << 20));
    // One byte a second of a head that never ends: every byte is activity, none is a request.
    let head = b"GET /v1/accounts/1 HTTP/1.1\r\nX-Slow: ";
    let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
    let mut seconds = 0;
    while !pair.events.iter().any(|e| matches!(e, Event::DeadlineCut { .. })) {
        seconds += 1;
        assert!(seconds <= 60, "not cut after {seconds} s");
        pair.send(&[*bytes.next().unwrap()]);
        pair.advance(Duration::from_secs(1));
    }
    assert!(pair.events.contains(&Event::DeadlineCut { phase: "head" }), "{:?}", pair.events);
    assert_eq!(seconds as u64, limits.head_timeout.as_secs(), "cut at the deadline");
    assert_eq!(pair.statuses(), vec![408]);
    assert!(pair.server.is_closed(), "closed after the 408");
}

#[test]
fn a_client_trickling_its_body_is_cut_at_the_body_deadline() {
    let certs = certs();
    let limits = ConnectionLimits::default();
    let mut pair = Pair::new(&certs, limits, Budget::new(64 << 20));
    pair.send(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n[");
    let mut seconds = 0;
    while !pair.events.iter().any(|e| matches!(e, Event::DeadlineCut { .. })) {
        seconds += 1;
        assert!(seconds <= 120, "not cut after {seconds} s");
        pair.send(b" ");
        pair.advance(Duration::from_secs(1));
    }
    assert!(pair.events.contains(&Event::DeadlineCut { phase: "body" }), "{:?}", pair.events);
    assert_eq!(pair.statuses(), vec![408]);
    assert!(pair.ledger.is_empty(), "nothing reached the ledger");
}

#[test]
fn a_head_announcing_a_large_body_is_counted_against_the_budget_before_its_bytes_arrive() {
    // Counted, not allocated: the decoder's buffer grows only with the bytes that arrive
    // (`http::tests::a_head_announcing_a_large_body_reserves_nothing_...`).
    let certs = certs();
    let budget = Budget::new(64 << 20);
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), budget.clone());
    pair.send(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n[");
    assert_eq!(pair.server.held_bytes(), 8_000_000);
    assert_eq!(budget.held(), 8_000_000);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let certs = certs();
    let limits = ConnectionLimits::default();
    let mut pair = Pair::new(&certs, limits, Budget::new(64 << 20));
    pair.send(get("/v1/accounts/1").as_bytes());
    pair.answer_all();
    assert_eq!(pair.statuses(), vec![404]);
    pair.advance(limits.idle_timeout - Duration::from_secs(1));
    assert!(!pair.server.is_closed());
    pair.advance(Duration::from_secs(2));
    assert!(pair.events.contains(&Event::IdleClosed), "{:?}", pair.events);
    assert!(pair.server.is_closed());
}

#[test]
fn a_full_ledger_queue_is_answered_503_with_retry_after() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    pair.send(get("/v1/accounts/1").as_bytes());
    let (seq, _) = pair.ledger.pop().expect("a submission");
    pair.server.handle_busy(pair.now, seq);
    pair.pump();
    let text = String::from_utf8_lossy(&pair.received).into_owned();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert!(text.contains("ledger_busy"), "{text}");
}

#[test]
fn a_query_pipelined_after_a_transfer_waits_for_it_so_the_client_reads_its_own_write() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    let body = r#"[{"id":"1","ledger":1,"code":10}]"#;
    let post = format!("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    pair.send(format!("{post}{}{post}", get("/v1/accounts/1")).as_bytes());
    // Only the mutation went out; the lookup waits for its reply.
    assert_eq!(pair.ledger.len(), 1);
    assert!(pair.ledger[0].1.is_mutation());
    pair.answer_all();
    assert_eq!(pair.ledger.len(), 1, "then the lookup");
    assert!(!pair.ledger[0].1.is_mutation());
    pair.answer_all();
    assert_eq!(pair.ledger.len(), 1, "then the second create");
    pair.answer_all();
    assert_eq!(pair.statuses(), vec![200, 404, 200]);
}

#[test]
fn queries_in_flight_per_connection_are_bounded() {
    let certs = certs();
    let limits = ConnectionLimits { queries_in_flight_max: 4, ..ConnectionLimits::default() };
    let mut pair = Pair::new(&certs, limits, Budget::new(64 << 20));
    pair.send(get("/v1/accounts/1").repeat(20).as_bytes());
    assert_eq!(pair.ledger.len(), 4, "at most 4 queries of one connection wait for the ledger");
    for _ in 0..5 {
        pair.answer_all();
    }
    assert_eq!(pair.statuses().len(), 20, "all answered, in turn");
}

#[test]
fn a_spent_worker_budget_holds_back_new_requests_of_every_connection() {
    let certs = certs();
    let budget = Budget::new(8 * 1024);
    let mut a = Pair::new(&certs, ConnectionLimits::default(), budget.clone());
    let mut b = Pair::new(&certs, ConnectionLimits::default(), budget.clone());
    // A's query reserves a full page of transfers, more than the whole budget.
    a.send(get("/v1/accounts/1/transfers?limit=8189").as_bytes());
    assert_eq!(a.ledger.len(), 1);
    assert!(budget.held() > budget.bytes_max());
    b.send(get("/v1/accounts/2").as_bytes());
    assert!(b.ledger.is_empty(), "B starts no request while the budget is spent");
    a.answer_all();
    assert_eq!(budget.held(), 0, "A's reply was sent and its reservation returned");
    b.pump();
    assert_eq!(b.ledger.len(), 1, "then B goes on");
    b.answer_all();
    assert_eq!(b.statuses(), vec![404]);
    drop(a);
    drop(b);
    assert_eq!(budget.held(), 0);
}

#[test]
fn a_body_is_admitted_against_the_queue_budget_before_it_is_read() {
    let certs = certs();
    let budget = Budget::new(64 * 1024);
    let limits = ConnectionLimits::default();
    let mut a = Pair::new(&certs, limits, budget.clone());
    let mut b = Pair::new(&certs, limits, budget.clone());
    let body = format!("[{}]", r#"{"id":"1","ledger":1,"code":10}"#).into_bytes();
    let padded = |len: usize| {
        let mut v = body.clone();
        v.resize(len, b' ');
        v
    };
    let head = |len: usize| format!("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
    // A announces 40 KB and sends part of it: admitted, the whole length is counted.
    let a_body = padded(40_000);
    a.send(head(a_body.len()).as_bytes());
    a.send(&a_body[..1000]);
    assert!(budget.held() >= 40_000, "A's body counted: {}", budget.held());
    // B announces 40 KB too and sends all of it: it does not fit beside A's, so B holds back
    // (its bytes stay in TCP) and its body deadline waits.
    let b_body = padded(40_000);
    b.send(head(b_body.len()).as_bytes());
    b.send(&b_body);
    assert!(b.server.is_held_back(), "B must wait for room");
    assert!(budget.held() <= 64 * 1024 + 16 * 1024, "held {} of a 64 KiB budget", budget.held());
    b.advance(limits.body_timeout + Duration::from_secs(1));
    assert!(!b.events.iter().any(|e| matches!(e, Event::DeadlineCut { .. })), "held back by us, not cut: {:?}", b.events);
    // A finishes; its reply goes out; then B is admitted and finishes.
    a.send(&a_body[1000..]);
    assert_eq!(a.ledger.len(), 1);
    a.answer_all();
    assert_eq!(a.statuses(), vec![200]);
    b.pump();
    assert_eq!(b.ledger.len(), 1, "B admitted once A's body left the budget (held {}, A {}, B {}, B held back {}, events {:?})", budget.held(), a.server.held_bytes(), b.server.held_bytes(), b.server.is_held_back(), b.events);
    b.answer_all();
    assert_eq!(b.statuses(), vec![200]);
    drop(a);
    drop(b);
    assert_eq!(budget.held(), 0);
}

/// Every response says what it answered; a write says who asked, what, and what the ledger
/// answered, per result code (what the audit log records).
#[test]
fn each_response_reports_its_route_timing_and_for_a_write_its_identity_and_results() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    let body = r#"[{"id":"1","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1},{"id":"2","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1}]"#;
    let post = format!("POST /v1/transfers HTTP/1.1\r\nHost: pantera.lab\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    pair.send(post.as_bytes());
    pair.advance(Duration::from_millis(3));
    let (seq, _) = pair.ledger.pop().expect("the transfer reached the ledger");
    let reply = Reply::Created(vec![EventResult { status: "ok", timestamp: Some(1) }, EventResult { status: "exceeds_credits", timestamp: None }]);
    pair.server.handle_reply(pair.now, seq, &reply);
    pair.pump();
    pair.send(get("/v1/accounts/7").as_bytes());
    pair.answer_all();
    let answered: Vec<_> = pair.events.iter().filter_map(|e| if let Event::Response(a) = e { Some(a.clone()) } else { None }).collect();
    assert_eq!(answered.len(), 2, "{:?}", pair.events);
    let (write, read) = (&answered[0], &answered[1]);
    assert_eq!((write.status, write.method, write.route, write.request_bytes), (200, "POST", "/v1/transfers", body.len()));
    assert!(write.duration >= Duration::from_millis(3), "{:?}", write.duration);
    assert!(write.response_bytes > 0);
    let record = write.write.as_ref().expect("a POST is a write");
    assert_eq!((record.operation, record.events, record.identity.as_deref(), record.role), ("create_transfers", 2, Some("cn:client"), Some(Role::Write)));
    assert_eq!(record.results, vec![("ok", 1), ("exceeds_credits", 1)]);
    assert_eq!((read.status, read.method, read.route), (404, "GET", "/v1/accounts/{id}"));
    assert!(read.write.is_none());
}

#[test]
fn a_budget_with_a_new_bound_shares_the_count_and_each_holder_keeps_its_bound() {
    // A configuration reload gives new connections a budget with the new bound; the
    // connections made before keep theirs, and both count against one total.
    let certs = certs();
    let old = Budget::new(64 << 20);
    let mut first = Pair::new(&certs, ConnectionLimits::default(), old.clone());
    first.send(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n[");
    let new = old.with_bytes_max(1 << 20);
    assert_eq!((new.bytes_max(), old.bytes_max()), (1 << 20, 64 << 20));
    assert_eq!(new.held(), 8_000_000, "one count, shared");
    let mut second = Pair::new(&certs, ConnectionLimits::default(), new.clone());
    second.send(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n[");
    assert_eq!(second.server.held_bytes(), 0, "over the new bound, the new connection waits");
    assert!(second.server.is_held_back());
}

// --- Drain (a stopping appliance) -----------------------------------------------------------

/// The response heads received, in order (status line and headers of each).
fn heads(pair: &Pair) -> Vec<String> {
    let text = String::from_utf8_lossy(&pair.received).into_owned();
    text.split("HTTP/1.1 ").skip(1).map(|r| r.split("\r\n\r\n").next().unwrap_or("").to_owned()).collect()
}

/// True once the client has seen the server's close_notify.
fn client_saw_close_notify(pair: &mut Pair) -> bool {
    let mut buf = [0u8; 1];
    matches!(pair.client.reader().read(&mut buf), Ok(0))
}

#[test]
fn a_drained_connection_answers_every_request_already_read_then_closes() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    let body = r#"[{"id":"1","ledger":1,"code":10}]"#;
    let post = format!("POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    // A create awaiting the ledger, a lookup queued behind it (not yet submitted), and the
    // first half of a third request.
    pair.send(format!("{post}{}GET /v1/acc", get("/v1/accounts/1")).as_bytes());
    assert_eq!(pair.ledger.len(), 1, "the create is with the ledger");
    pair.server.drain(pair.now);
    pair.pump();
    assert!(pair.server.is_draining());
    assert!(!pair.server.is_closed(), "replies are still owed");
    // The replies come after the drain began: both requests are answered, in order.
    pair.answer_all();
    assert_eq!(pair.ledger.len(), 1, "the queued lookup is still submitted during the drain");
    assert!(!pair.server.is_closed());
    pair.answer_all();
    assert_eq!(pair.statuses(), vec![200, 404], "the partial request is not answered");
    let heads = heads(&pair);
    assert!(!heads[0].contains("Connection: close"), "{heads:?}");
    assert!(heads[1].contains("Connection: close"), "the last response announces the close: {heads:?}");
    // Then close_notify: the driver may close TCP.
    assert!(pair.server.is_closed());
    assert!(client_saw_close_notify(&mut pair), "close_notify reached the client");
    // Whatever the client sends now is discarded, never answered.
    pair.send(get("/v1/accounts/2").as_bytes());
    assert!(pair.ledger.is_empty());
    assert_eq!(pair.statuses().len(), 2);
}

#[test]
fn a_response_not_yet_sent_when_the_drain_begins_goes_out_before_close_notify() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    // The request arrives and is answered, but nothing is sent before the drain begins.
    pair.client.writer().write_all(get("/nowhere").as_bytes()).unwrap();
    while pair.client.wants_write() {
        pair.client.write_tls(&mut pair.to_server).unwrap();
    }
    let n = pair.server.handle_ciphertext(pair.now, &pair.to_server);
    pair.to_server.drain(..n);
    pair.server.drain(pair.now);
    pair.pump();
    assert_eq!(pair.statuses(), vec![404]);
    assert!(pair.server.is_closed());
    assert!(client_saw_close_notify(&mut pair));
}

#[test]
fn an_idle_keep_alive_connection_closes_at_once_when_drained() {
    let certs = certs();
    let mut pair = Pair::new(&certs, ConnectionLimits::default(), Budget::new(64 << 20));
    pair.send(get("/v1/accounts/1").as_bytes());
    pair.answer_all();
    assert_eq!(pair.statuses(), vec![404]);
    assert!(!pair.server.is_closed());
    pair.server.drain(pair.now);
    pair.pump();
    assert!(pair.server.is_closed(), "nothing is owed: close_notify at once");
    assert!(client_saw_close_notify(&mut pair));
    // Draining twice changes nothing.
    pair.server.drain(pair.now);
    assert!(pair.server.is_closed());
}
