//! `https load`: the client side of one measurement. N threads, one blocking rustls client each,
//! M requests per connection; every request is timed, and the results are printed as one JSON
//! line for `https run` (or a person) to read.
//!
//! Keep-alive mode opens the connections first (not timed), lines all threads up on a barrier,
//! then sends M requests back to back on each. Handshake mode opens a new TCP connection and does
//! a full TLS handshake for every request (`Connection: close`), so its rate is the server's
//! new-connection rate; `--resume` lets the client resume sessions instead.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::http1::{self, Response};

/// Connections one load run may open at once: each is a thread.
pub const CONNS_MAX: usize = 1024;
/// Requests one connection may send in one run.
pub const REQUESTS_PER_CONN_MAX: u64 = 1 << 24;
/// The longest one run may last, whatever it was asked.
pub const RUN_SECONDS_MAX: u64 = 3600;
/// A connect, read or write that takes longer is an error (and bounds a stuck run).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Transport errors in a row after which a connection's thread gives up.
const CONSECUTIVE_ERRORS_MAX: u32 = 20;
/// Plaintext read per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// The slowest latency recorded without saturation (60 s).
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Open the connections once, then send every request on them.
    Keepalive,
    /// A new TCP connection and TLS handshake for every request.
    Handshake,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// POST one transfer per request between two accounts created at start; the ledger's
    /// balances are checked against the count of `created` replies at the end.
    Transfers,
    /// POST the same body; any 200 counts (a server returning a constant, e.g. nginx).
    Constant,
}

#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The server, IP:PORT.
    #[arg(long)]
    pub target: SocketAddr,
    /// The name the server certificate is checked against (the dev certificate has
    /// `pantera.lab` and the service IP; the kernel baseline and nginx use the same one).
    #[arg(long, default_value = "pantera.lab")]
    pub server_name: String,
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    #[arg(long, default_value_t = 1000)]
    pub requests_per_conn: u64,
    #[arg(long, value_enum, default_value_t = Mode::Keepalive)]
    pub mode: Mode,
    #[arg(long, value_enum, default_value_t = Workload::Transfers)]
    pub workload: Workload,
    #[arg(long, default_value = "/v1/transfers")]
    pub path: String,
    /// The CA that signed the server certificate.
    #[arg(long, default_value = ".pantera/tls/ca.pem")]
    pub ca: PathBuf,
    /// The client certificate (mTLS); `client` has the write role.
    #[arg(long, default_value = ".pantera/tls/client.pem")]
    pub cert: PathBuf,
    #[arg(long, default_value = ".pantera/tls/client.key")]
    pub key: PathBuf,
    /// Resume TLS sessions (handshake mode); without it every handshake is a full one.
    #[arg(long)]
    pub resume: bool,
    /// Stop sending new requests after this long, whatever is left.
    #[arg(long, default_value_t = 60)]
    pub max_seconds: u64,
}

/// What one connection's thread measured.
#[derive(Debug)]
struct ConnTally {
    latency_us: Histogram<u64>,
    ok: u64,
    errors: u64,
    status_503: u64,
    transport_errors: u64,
    first_error: Option<String>,
}

impl ConnTally {
    fn new() -> ConnTally {
        ConnTally {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            status_503: 0,
            transport_errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, what: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    fn merge(&mut self, other: &ConnTally) {
        self.latency_us.add(&other.latency_us).expect("same bounds");
        self.ok += other.ok;
        self.errors += other.errors;
        self.status_503 += other.status_503;
        self.transport_errors += other.transport_errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// The client's TLS configuration: TLS 1.3 only (like the nginx peer), the dev CA as the only
/// trust anchor, and the client certificate for mTLS.
pub fn client_config(ca: &PathBuf, cert: &PathBuf, key: &PathBuf, resume: bool) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).with_context(|| format!("cannot read {}", ca.display()))? {
        roots.add(c.with_context(|| format!("bad PEM in {}", ca.display()))?)?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).with_context(|| format!("cannot read the key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Ok(Arc::new(config))
}

/// One TLS connection and its receive buffer.
struct Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

#[derive(Debug)]
struct Client {
    config: Arc<ClientConfig>,
    target: SocketAddr,
    server_name: ServerName<'static>,
    /// `Host` header value.
    host: String,
}

impl Client {
    fn connect(&self) -> io::Result<Conn> {
        let sock = TcpStream::connect_timeout(&self.target, IO_TIMEOUT)?;
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        let conn = ClientConnection::new(Arc::clone(&self.config), self.server_name.clone()).map_err(io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Conn { tls, rx: Vec::with_capacity(READ_CHUNK_BYTES), tx: Vec::with_capacity(1024) })
    }
}

impl Conn {
    /// Sends one request and reads its response.
    fn exchange(&mut self, method: &str, path: &str, host: &str, body: &[u8], close: bool) -> io::Result<Response> {
        self.tx.clear();
        http1::encode_request(&mut self.tx, method, path, host, body, close);
        self.tls.write_all(&self.tx)?;
        self.tls.flush()?;
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            match http1::parse_response(&self.rx) {
                Ok(Some((response, used))) => {
                    self.rx.drain(..used);
                    return Ok(response);
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let n = self.tls.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
            self.rx.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends close_notify (RFC 8446 §6.1) and closes.
    fn close(mut self) {
        self.tls.conn.send_close_notify();
        let _ = self.tls.flush();
    }
}

/// Ids of this run: the accounts and transfers of one run never collide with an earlier run's
/// on the same ledger (each run takes its own 2^64 block, keyed by the start time).
#[derive(Clone, Copy, Debug)]
struct Ids {
    run: u128,
}

impl Ids {
    fn new() -> Ids {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        Ids { run: u128::from(nanos.max(1)) << 64 }
    }
    fn debit_account(self) -> u128 {
        self.run | 1
    }
    fn credit_account(self) -> u128 {
        self.run | 2
    }
    /// Transfer `request` of connection `conn`: unique within the run.
    fn transfer(self, conn: usize, request: u64) -> u128 {
        self.run | ((conn as u128) << 32) | u128::from(request + 1)
    }
}

fn transfer_body(ids: Ids, conn: usize, request: u64) -> Vec<u8> {
    format!(
        r#"[{{"id":"{}","debit_account_id":"{}","credit_account_id":"{}","amount":"1","ledger":1,"code":1}}]"#,
        ids.transfer(conn, request),
        ids.debit_account(),
        ids.credit_account()
    )
    .into_bytes()
}

/// True when a create reply reports every event `created` (docs/design.md: one result per event).
fn all_created(body: &[u8], events: usize) -> bool {
    let Ok(serde_json::Value::Array(results)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    results.len() == events && results.iter().all(|r| r.get("status").and_then(|s| s.as_str()) == Some("created"))
}

struct Shared<'a> {
    args: &'a LoadArgs,
    client: Client,
    ids: Ids,
    barrier: Barrier,
    deadline: Instant,
}

/// Runs the load and prints one JSON line.
pub fn run(args: &LoadArgs) -> Result<()> {
    ensure!((1..=CONNS_MAX).contains(&args.conns), "--conns must be 1..={CONNS_MAX}");
    ensure!((1..=REQUESTS_PER_CONN_MAX).contains(&args.requests_per_conn), "--requests-per-conn must be 1..={REQUESTS_PER_CONN_MAX}");
    ensure!((1..=RUN_SECONDS_MAX).contains(&args.max_seconds), "--max-seconds must be 1..={RUN_SECONDS_MAX}");
    let config = client_config(&args.ca, &args.cert, &args.key, args.resume)?;
    let server_name = ServerName::try_from(args.server_name.clone()).context("--server-name")?;
    let client = Client { config, target: args.target, server_name, host: args.server_name.clone() };
    let ids = Ids::new();

    if args.workload == Workload::Transfers {
        setup_accounts(&client, ids)?;
    }
    let shared = Shared {
        args,
        client,
        ids,
        barrier: Barrier::new(args.conns + 1),
        deadline: Instant::now() + Duration::from_secs(args.max_seconds),
    };
    let mut total = ConnTally::new();
    let elapsed;
    {
        let shared = &shared;
        let (e, tallies) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..args.conns)
                .map(|conn| {
                    std::thread::Builder::new()
                        .name(format!("load-{conn}"))
                        .stack_size(256 * 1024)
                        .spawn_scoped(scope, move || match shared.args.mode {
                            Mode::Keepalive => keepalive(shared, conn),
                            Mode::Handshake => handshakes(shared, conn),
                        })
                        .expect("spawn a load thread")
                })
                .collect();
            // Everyone is connected (or has failed to): the clock starts now.
            shared.barrier.wait();
            let started = Instant::now();
            let tallies: Vec<ConnTally> = handles.into_iter().map(|h| h.join().expect("a load thread panicked")).collect();
            (started.elapsed(), tallies)
        });
        elapsed = e;
        for t in &tallies {
            total.merge(t);
        }
    }
    let ledger_check = match args.workload {
        Workload::Transfers => check_ledger(&shared.client, ids, total.ok),
        Workload::Constant => "skipped".to_owned(),
    };
    let seconds = elapsed.as_secs_f64();
    let h = &total.latency_us;
    // Every answered request was timed once; a transport error has no answer.
    let answered = h.len();
    let line = serde_json::json!({
        "target": args.target.to_string(),
        "mode": match args.mode { Mode::Keepalive => "keepalive", Mode::Handshake => if args.resume { "resume" } else { "handshake" } },
        "workload": match args.workload { Workload::Transfers => "transfers", Workload::Constant => "constant" },
        "conns": args.conns,
        "requests": answered + total.transport_errors,
        "ok": total.ok,
        "errors": total.errors,
        "status_503": total.status_503,
        "transport_errors": total.transport_errors,
        "first_error": total.first_error,
        "elapsed_s": seconds,
        "ok_per_s": if seconds > 0.0 { total.ok as f64 / seconds } else { 0.0 },
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
        "ledger_check": ledger_check,
    });
    println!("{line}");
    Ok(())
}

/// Creates the run's two accounts (one request, before the clock starts).
fn setup_accounts(client: &Client, ids: Ids) -> Result<()> {
    let body = format!(
        r#"[{{"id":"{}","ledger":1,"code":10}},{{"id":"{}","ledger":1,"code":10}}]"#,
        ids.debit_account(),
        ids.credit_account()
    );
    let mut conn = client.connect().with_context(|| format!("cannot connect to {}", client.target))?;
    let response = conn.exchange("POST", "/v1/accounts", &client.host, body.as_bytes(), false)?;
    conn.close();
    if response.status != 200 || !all_created(&response.body, 2) {
        bail!("account setup failed: {} {}", response.status, String::from_utf8_lossy(&response.body));
    }
    Ok(())
}

/// After the run: the credit account's `credits_posted` must equal the `created` replies seen
/// (each transfer moves 1). A mismatch means an acknowledged transfer was lost or an
/// unacknowledged one applied twice.
fn check_ledger(client: &Client, ids: Ids, created: u64) -> String {
    let path = format!("/v1/accounts/{}", ids.credit_account());
    let result = client.connect().and_then(|mut conn| {
        let r = conn.exchange("GET", &path, &client.host, b"", false);
        conn.close();
        r
    });
    let response = match result {
        Ok(r) => r,
        Err(e) => return format!("error: {e}"),
    };
    let posted = serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get("credits_posted")?.as_str()?.parse::<u64>().ok());
    match posted {
        Some(p) if p == created => "ok".to_owned(),
        Some(p) => format!("mismatch: credits_posted {p}, created replies {created}"),
        None => format!("error: {} {}", response.status, String::from_utf8_lossy(&response.body)),
    }
}

/// Judges one response and records it.
fn record(tally: &mut ConnTally, workload: Workload, started: Instant, response: &Response) {
    let us = (started.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
    tally.latency_us.record(us).expect("clamped into the bounds");
    let good = response.status == 200 && (workload == Workload::Constant || all_created(&response.body, 1));
    if good {
        tally.ok += 1;
    } else {
        if response.status == 503 {
            tally.status_503 += 1;
        }
        tally.error(|| format!("{} {}", response.status, String::from_utf8_lossy(&response.body)));
    }
}

fn keepalive(shared: &Shared<'_>, index: usize) -> ConnTally {
    let mut tally = ConnTally::new();
    let args = shared.args;
    let mut conn = shared.client.connect().map_err(|e| transport_error(&mut tally, &e)).ok();
    shared.barrier.wait();
    let mut consecutive = 0u32;
    for request in 0..args.requests_per_conn {
        if Instant::now() >= shared.deadline || consecutive >= CONSECUTIVE_ERRORS_MAX {
            break;
        }
        let body = transfer_body(shared.ids, index, request);
        let started = Instant::now();
        // After an error or a `Connection: close` the next request reconnects (not timed apart:
        // the reconnect is part of that request's latency).
        let mut c = match conn.take() {
            Some(c) => c,
            None => match shared.client.connect() {
                Ok(c) => c,
                Err(e) => {
                    transport_error(&mut tally, &e);
                    consecutive += 1;
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        match c.exchange("POST", &args.path, &shared.client.host, &body, false) {
            Ok(response) => {
                consecutive = 0;
                record(&mut tally, args.workload, started, &response);
                if !response.close {
                    conn = Some(c);
                }
            }
            Err(e) => {
                transport_error(&mut tally, &e);
                consecutive += 1;
            }
        }
    }
    if let Some(c) = conn {
        c.close();
    }
    tally
}

fn handshakes(shared: &Shared<'_>, index: usize) -> ConnTally {
    let mut tally = ConnTally::new();
    let args = shared.args;
    shared.barrier.wait();
    let mut consecutive = 0u32;
    for request in 0..args.requests_per_conn {
        if Instant::now() >= shared.deadline || consecutive >= CONSECUTIVE_ERRORS_MAX {
            break;
        }
        let body = transfer_body(shared.ids, index, request);
        let started = Instant::now();
        let result = shared.client.connect().and_then(|mut c| {
            let r = c.exchange("POST", &args.path, &shared.client.host, &body, true);
            c.close();
            r
        });
        match result {
            Ok(response) => {
                consecutive = 0;
                record(&mut tally, args.workload, started, &response);
            }
            Err(e) => {
                transport_error(&mut tally, &e);
                consecutive += 1;
            }
        }
    }
    tally
}

fn transport_error(tally: &mut ConnTally, e: &io::Error) {
    tally.transport_errors += 1;
    tally.error(|| format!("transport: {e}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_within_a_run_and_apart_from_the_accounts() {
        let ids = Ids { run: 7u128 << 64 };
        assert_ne!(ids.transfer(0, 0), ids.transfer(1, 0));
        assert_ne!(ids.transfer(0, 1), ids.transfer(1, 0));
        assert_ne!(ids.transfer(0, 0), 0);
        assert_eq!(ids.transfer(3, 9) >> 64, 7);
        assert_ne!(ids.debit_account(), ids.credit_account());
    }

    #[test]
    fn transfer_bodies_name_both_accounts() {
        let ids = Ids { run: 1u128 << 64 };
        let body: serde_json::Value = serde_json::from_slice(&transfer_body(ids, 2, 5)).expect("valid JSON");
        let t = &body[0];
        assert_eq!(t["id"], ((1u128 << 64) | (2u128 << 32) | 6).to_string());
        assert_eq!(t["debit_account_id"], ids.debit_account().to_string());
        assert_eq!(t["credit_account_id"], ids.credit_account().to_string());
        assert_eq!(t["amount"], "1");
        assert_eq!(t["ledger"], 1);
    }

    #[test]
    fn only_created_counts() {
        assert!(all_created(br#"[{"index":0,"status":"created","timestamp":"1"}]"#, 1));
        assert!(!all_created(br#"[{"index":0,"status":"exists"}]"#, 1));
        assert!(!all_created(br#"[]"#, 1));
        assert!(!all_created(br#"{"error":{}}"#, 1));
        assert!(!all_created(b"not json", 1));
    }

    #[test]
    fn errors_are_tallied_with_the_first_reason() {
        let mut t = ConnTally::new();
        let started = Instant::now();
        record(&mut t, Workload::Transfers, started, &Response { status: 200, body: br#"[{"status":"created"}]"#.to_vec(), close: false });
        record(&mut t, Workload::Transfers, started, &Response { status: 503, body: b"busy".to_vec(), close: false });
        record(&mut t, Workload::Transfers, started, &Response { status: 200, body: br#"[{"status":"exists"}]"#.to_vec(), close: false });
        transport_error(&mut t, &io::Error::other("reset"));
        assert_eq!((t.ok, t.errors, t.status_503, t.transport_errors), (1, 3, 1, 1));
        assert_eq!(t.first_error.as_deref(), Some("503 busy"));
        assert_eq!(t.latency_us.len(), 3);
        let mut sum = ConnTally::new();
        sum.merge(&t);
        sum.merge(&t);
        assert_eq!((sum.ok, sum.errors, sum.latency_us.len()), (2, 6, 6));
    }
}
