//! `https load`: the load client, usable alone against a running appliance and used by
//! `https run` for every measurement. Event-driven (engine.rs: a few threads, each with its own
//! epoll and its connections as state machines), mutual TLS, keep-alive with `--pipeline`
//! requests in flight, or one request per connection (`--new-connections`, with or without
//! session resumption); closed loop, or open loop at a fixed total rate (`--rate`) with latency
//! from each request's intended send time (schedule.rs). Live progress on stderr, a human
//! summary on stdout, the full figures as JSON (`--json`), SVG plots (`--plot-dir`).
//!
//! Before the clock starts (not timed): the two accounts the transfers move money between are
//! created (`--setup-accounts`) or read (`--accounts`), and keep-alive connections are opened.
//! After the end: the ledger check (the debit account's debits and the credit account's credits
//! each grew by exactly the `created` replies: Σ debits = Σ credits over the run's accounts).

use std::io::{self, IsTerminal as _, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::engine::{self, Plan, Report, Requests, StartLine};
use crate::http1::{self, Response};
use crate::progress::Progress;
use crate::results::{Merger, RunConfig, RunResult};
use crate::schedule::ErrorKind;

/// Connections one run may open at once (each holds a socket and a TLS client).
pub const CONNECTIONS_MAX: usize = 10_000;
/// Threads of the client: a few, not one per connection.
pub const THREADS_MAX: usize = 64;
/// Requests in flight per keep-alive connection.
pub const PIPELINE_MAX: usize = 1024;
/// The longest run.
pub const RUN_SECONDS_MAX: u64 = 3600;
/// Requests one run may be asked for by count.
pub const REQUESTS_MAX: u64 = 1 << 32;
/// The highest open-loop rate, requests per second in all.
pub const RATE_PER_S_MAX: f64 = 10_000_000.0;
/// The setup and check requests' I/O timeout (blocking, outside the timed run).
const IO_TIMEOUT: Duration = engine::IO_TIMEOUT;
/// Plaintext read per call (setup and check).
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// How often the merging thread refreshes the progress display.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// POST one transfer per request (fresh ids) between the two accounts; ok only when the
    /// reply is 200 with status `created`; the ledger is checked at the end.
    Transfers,
    /// GET the credit account (`GET /v1/accounts/{id}`): a ledger read; ok when 200.
    Read,
    /// POST a transfer body to `--path`; any 200 counts (a server returning a constant, e.g. nginx).
    Constant,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Transfers => "transfers",
            Workload::Read => "read",
            Workload::Constant => "constant",
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The server, IP:PORT (default: the lab's service address).
    #[arg(long, default_value = "10.99.0.2:8443")]
    pub target: SocketAddr,
    /// The name the server certificate is checked against (the dev certificate has
    /// `pantera.lab` and the service IP; the kernel baseline and nginx use the same one).
    #[arg(long, default_value = "pantera.lab")]
    pub server_name: String,
    /// Connections, spread over the threads.
    #[arg(long, visible_alias = "conns", default_value_t = 16)]
    pub connections: usize,
    /// Client threads, each with its own epoll (default: 2, or 1 for a single connection).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Requests in flight per keep-alive connection.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// One request per connection, then close: every request pays a TCP and TLS handshake.
    #[arg(long)]
    pub new_connections: bool,
    /// With --new-connections: resume TLS sessions (TLS 1.3 PSK); without it every handshake is full.
    #[arg(long)]
    pub resume: bool,
    /// Open loop: this many requests per second in all, on a fixed schedule, latency from
    /// each request's intended send time. Without it: closed loop (send when there is room).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long to send (e.g. 10s, 500ms, 2m); in-flight requests then get up to 5 s to finish.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many requests in all (whichever of this and --duration comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    #[arg(long, value_enum, default_value_t = Workload::Transfers)]
    pub workload: Workload,
    /// The path of the constant workload.
    #[arg(long, default_value = "/v1/transfers")]
    pub path: String,
    /// Create two fresh accounts to transfer between (transfers and read workloads).
    #[arg(long)]
    pub setup_accounts: bool,
    /// Use these existing accounts instead: DEBIT_ID,CREDIT_ID (decimal).
    #[arg(long, value_parser = parse_accounts, conflicts_with = "setup_accounts")]
    pub accounts: Option<(u128, u128)>,
    /// The CA that signed the server certificate.
    #[arg(long, default_value = ".pantera/tls/ca.pem")]
    pub ca: PathBuf,
    /// The client certificate (mTLS); `client` has the write role.
    #[arg(long, default_value = ".pantera/tls/client.pem")]
    pub cert: PathBuf,
    #[arg(long, default_value = ".pantera/tls/client.key")]
    pub key: PathBuf,
    /// Write every figure of the run here as JSON (read by `https compare` and `https run`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG plots of the run here (throughput over time, latency by percentile).
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
    /// The run's name in tables and plot legends.
    #[arg(long)]
    pub label: Option<String>,
    /// No progress display.
    #[arg(long)]
    pub quiet: bool,
}

/// `10s`, `500ms`, `2m`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale_ms) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60e3)
    } else {
        (s, 1e3)
    };
    let v: f64 = number.trim().parse().map_err(|_| format!("`{s}` is not a duration (e.g. 10s, 500ms, 2m)"))?;
    let ms = v * scale_ms;
    if !(ms.is_finite() && ms >= 1.0 && ms <= (RUN_SECONDS_MAX * 1000) as f64) {
        return Err(format!("`{s}`: a duration from 1ms to {RUN_SECONDS_MAX}s"));
    }
    Ok(Duration::from_micros((ms * 1e3) as u64))
}

fn parse_accounts(s: &str) -> Result<(u128, u128), String> {
    let (d, c) = s.split_once(',').ok_or("DEBIT_ID,CREDIT_ID")?;
    let id = |x: &str| x.trim().parse::<u128>().map_err(|_| format!("`{x}` is not an account id"));
    let (d, c) = (id(d)?, id(c)?);
    if d == c || d == 0 || c == 0 {
        return Err("two different, non-zero account ids".to_owned());
    }
    Ok((d, c))
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
    debit: u128,
    credit: u128,
}

impl Ids {
    /// Fresh accounts in the run's block, or the given ones.
    fn new(accounts: Option<(u128, u128)>) -> Ids {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
        let run = u128::from(nanos.max(1)) << 64;
        let (debit, credit) = accounts.unwrap_or((run | 1, run | 2));
        Ids { run, debit, credit }
    }
    fn debit_account(self) -> u128 {
        self.debit
    }
    fn credit_account(self) -> u128 {
        self.credit
    }
    /// Transfer `request` of connection `conn`: unique within the run (connections below
    /// 2^24, requests per connection below 2^40), and never an account id of the run (those
    /// have no connection bits and are below 3).
    fn transfer(self, conn: usize, request: u64) -> u128 {
        self.run | ((conn as u128) << 40) | u128::from(request + 1) | (1 << 63)
    }
}

fn transfer_body(out: &mut Vec<u8>, ids: Ids, conn: usize, request: u64) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        r#"[{{"id":"{}","debit_account_id":"{}","credit_account_id":"{}","amount":"1","ledger":1,"code":1}}]"#,
        ids.transfer(conn, request),
        ids.debit_account(),
        ids.credit_account()
    );
}

/// True when a create reply reports every event `created` (docs/design.md: one result per event).
fn all_created(body: &[u8], events: usize) -> bool {
    let Ok(serde_json::Value::Array(results)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    results.len() == events && results.iter().all(|r| r.get("status").and_then(|s| s.as_str()) == Some("created"))
}


/// What each request is, per workload.
#[derive(Debug)]
struct Workloads {
    workload: Workload,
    ids: Ids,
    path: String,
    /// `Host` header value.
    host: String,
}

impl Requests for Workloads {
    fn encode(&self, conn: usize, seq: u64, close: bool, out: &mut Vec<u8>) {
        match self.workload {
            Workload::Read => {
                let path = format!("/v1/accounts/{}", self.ids.credit_account());
                http1::encode_request(out, "GET", &path, &self.host, b"", close);
            }
            Workload::Transfers | Workload::Constant => {
                let mut body = Vec::with_capacity(192);
                transfer_body(&mut body, self.ids, conn, seq);
                let path = if self.workload == Workload::Transfers { "/v1/transfers" } else { &self.path };
                http1::encode_request(out, "POST", path, &self.host, &body, close);
            }
        }
    }

    fn judge(&self, response: &Response) -> Option<ErrorKind> {
        match response.status {
            200 if self.workload != Workload::Transfers || all_created(&response.body, 1) => None,
            200 => Some(ErrorKind::NotCreated),
            503 => Some(ErrorKind::Status503),
            _ => Some(ErrorKind::StatusOther),
        }
    }
}

/// Runs the load: setup, the timed run, the ledger check, then the summary, JSON and plots.
pub fn run(args: &LoadArgs) -> Result<()> {
    let result = measure(args)?;
    print!("{}", summary(&result));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&result)?;
        std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(dir) = &args.plot_dir {
        for path in crate::plot::run(dir, &result)? {
            eprintln!("https: wrote {}", path.display());
        }
    }
    // The figures are out either way; the exit status says whether the run itself was sound
    // (a script or the demo stops on it). Some errors under overload (503s) are a result, not
    // a failure; nothing answered, or a ledger that does not add up, is.
    ensure!(result.totals.ok > 0, "no request succeeded");
    ensure!(
        result.ledger_check == "ok" || result.ledger_check == "skipped",
        "the ledger check failed: {}",
        result.ledger_check
    );
    Ok(())
}

/// Checks the arguments against their bounds; returns the thread count.
fn validate(args: &LoadArgs) -> Result<usize> {
    ensure!((1..=CONNECTIONS_MAX).contains(&args.connections), "--connections must be 1..={CONNECTIONS_MAX}");
    ensure!((1..=PIPELINE_MAX).contains(&args.pipeline), "--pipeline must be 1..={PIPELINE_MAX}");
    ensure!(!(args.new_connections && args.pipeline > 1), "--pipeline needs keep-alive connections (not --new-connections)");
    ensure!(!args.resume || args.new_connections, "--resume applies to --new-connections");
    if let Some(rate) = args.rate {
        ensure!(rate > 0.0 && rate <= RATE_PER_S_MAX, "--rate must be above 0 and at most {RATE_PER_S_MAX}");
    }
    if let Some(n) = args.requests {
        ensure!(n >= args.connections as u64 && n <= REQUESTS_MAX, "--requests must be from --connections to {REQUESTS_MAX}");
    }
    if args.workload != Workload::Constant {
        ensure!(
            args.setup_accounts || args.accounts.is_some(),
            "the {} workload needs accounts: --setup-accounts (two fresh ones) or --accounts DEBIT,CREDIT",
            args.workload.name()
        );
    }
    let threads = args.threads.unwrap_or(if args.connections == 1 { 1 } else { 2 });
    ensure!((1..=THREADS_MAX).contains(&threads), "--threads must be 1..={THREADS_MAX}");
    Ok(threads.min(args.connections))
}

/// Everything but the output.
pub fn measure(args: &LoadArgs) -> Result<RunResult> {
    let threads = validate(args)?;
    let tls = client_config(&args.ca, &args.cert, &args.key, args.resume)?;
    let server_name = ServerName::try_from(args.server_name.clone()).context("--server-name")?;
    // Setup and check speak over their own connection, with a config that never resumes, so
    // they leave nothing in the run's session cache.
    let setup_tls = client_config(&args.ca, &args.cert, &args.key, false)?;
    let client = Client { config: setup_tls, target: args.target, server_name: server_name.clone(), host: args.server_name.clone() };
    let ids = Ids::new(args.accounts);
    let posted_before = match args.workload {
        Workload::Constant => None,
        _ => {
            if args.setup_accounts {
                setup_accounts(&client, ids)?;
            }
            Some(posted(&client, ids).context("cannot read the run's accounts before the run")?)
        }
    };
    let plan = Plan {
        target: args.target,
        server_name,
        tls,
        connections: args.connections,
        threads,
        pipeline: args.pipeline,
        new_connections: args.new_connections,
        rate_per_s: args.rate,
        duration: args.duration,
        requests_total: args.requests,
    };
    let requests = Workloads { workload: args.workload, ids, path: args.path.clone(), host: args.server_name.clone() };
    let started_unix_s = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let cpu_before = crate::process::cpu_ticks(std::process::id());
    let merger = drive(args, &plan, &requests)?;
    let client_cpu_s = crate::process::cpu_ticks(std::process::id()).saturating_sub(cpu_before) as f64
        / crate::process::clock_ticks_per_second() as f64;
    let ledger_check = match (args.workload, posted_before) {
        (Workload::Transfers, Some(before)) => match posted(&client, ids) {
            Ok(after) => {
                let debits = after.debits.saturating_sub(before.debits);
                let credits = after.credits.saturating_sub(before.credits);
                if debits == credits && credits == merger.total.ok {
                    "ok".to_owned()
                } else {
                    format!("mismatch: debits_posted grew by {debits}, credits_posted by {credits}, created replies {}", merger.total.ok)
                }
            }
            Err(e) => format!("error: {e:#}"),
        },
        _ => "skipped".to_owned(),
    };
    let label = args.label.clone().unwrap_or_else(|| {
        let kind = if args.new_connections { if args.resume { " new-conn resumed" } else { " new-conn" } } else { "" };
        format!("{} ×{}{kind}", args.workload.name(), args.connections)
    });
    let config = RunConfig {
        target: args.target.to_string(),
        workload: args.workload.name().to_owned(),
        path: args.path.clone(),
        connections: args.connections,
        threads,
        pipeline: args.pipeline,
        new_connections: args.new_connections,
        resume: args.resume,
        rate_per_s: args.rate,
        duration_s: args.duration.as_secs_f64(),
        requests: args.requests,
    };
    Ok(merger.result(label, started_unix_s, config, client_cpu_s, ledger_check))
}

/// Starts the threads, lines them up, merges their reports while showing progress.
fn drive(args: &LoadArgs, plan: &Plan, requests: &Workloads) -> Result<Merger> {
    let line = StartLine::new(plan.threads);
    let (tx, rx) = mpsc::channel::<(usize, Report)>();
    let mut merger = Merger::new(plan.threads);
    std::thread::scope(|scope| -> Result<()> {
        for thread in 0..plan.threads {
            let tx = tx.clone();
            let line = &line;
            std::thread::Builder::new()
                .name(format!("load-{thread}"))
                .spawn_scoped(scope, move || engine::run_thread(plan, requests, thread, line, &tx))
                .context("cannot start a load thread")?;
        }
        drop(tx);
        line.connected.wait();
        let start = Instant::now();
        line.start.set(start).expect("set once, here");
        line.go.wait();
        let mut progress = Progress::new(!args.quiet, io::stderr().is_terminal(), plan.duration, plan.requests_total);
        loop {
            match rx.recv_timeout(PROGRESS_TICK) {
                Ok((thread, Report::Interval(i))) => merger.interval(thread, i),
                Ok((thread, Report::Done(s))) => merger.done(thread, s),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            progress.update(start.elapsed(), &merger);
        }
        progress.finish(start.elapsed(), &merger);
        Ok(())
    })?;
    ensure!(merger.all_done(), "a load thread ended without its summary");
    Ok(merger)
}

/// The short human summary (stdout).
pub fn summary(r: &RunResult) -> String {
    let c = &r.config;
    let t = &r.totals;
    let l = &r.latency_us;
    let ms = |us: u64| us as f64 / 1e3;
    let loop_kind = match c.rate_per_s {
        Some(rate) => format!("open loop at {rate:.0}/s"),
        None => "closed loop".to_owned(),
    };
    let conn_kind = if c.new_connections {
        if c.resume { "a new connection per request, resumed" } else { "a new connection per request" }
    } else {
        "keep-alive"
    };
    let mut out = format!(
        "https load: {} {} over {} connections ({conn_kind}, pipeline {}, {} threads), {loop_kind}\n",
        c.target, c.workload, c.connections, c.pipeline, c.threads
    );
    let noun = if c.workload == "transfers" { "transfers" } else { "requests" };
    out += &format!("  {} ok {noun} in {:.1} s: {:.0} {noun}/s; errors {}", t.ok, t.elapsed_s, t.ok_per_s, t.errors);
    let kinds: Vec<String> = r.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
    if !kinds.is_empty() {
        out += &format!(" ({})", kinds.join(", "));
    }
    out += "\n";
    out += &format!(
        "  latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms{}\n",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        if c.rate_per_s.is_some() { " (from the intended send times)" } else { "" }
    );
    let check = match r.ledger_check.as_str() {
        "ok" => "ok (Σ debits = Σ credits over the run's accounts = created replies)",
        other => other,
    };
    out += &format!("  TLS handshakes {} full, {} resumed; ledger check {check}", r.handshakes.full, r.handshakes.resumed);
    if t.missed_slots > 0 {
        out += &format!("; {} slots of the schedule came while their connection was busy and were not sent", t.missed_slots);
    }
    out += "\n";
    if let Some(e) = &r.first_error {
        out += &format!("  first error: {}\n", e.lines().next().unwrap_or(""));
    }
    out
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

/// What the run's transfers moved so far: the debit account's `debits_posted` and the credit
/// account's `credits_posted`.
#[derive(Debug, Clone, Copy)]
struct Posted {
    debits: u64,
    credits: u64,
}

/// Reads both accounts. After the run each side must have grown by exactly the `created`
/// replies seen (each transfer moves 1): otherwise an acknowledged transfer was lost, an
/// unacknowledged one applied twice, a side moved without the other (or someone else used the
/// accounts meanwhile).
fn posted(client: &Client, ids: Ids) -> Result<Posted> {
    Ok(Posted {
        debits: account_field(client, ids.debit_account(), "debits_posted")?,
        credits: account_field(client, ids.credit_account(), "credits_posted")?,
    })
}

fn account_field(client: &Client, id: u128, field: &str) -> Result<u64> {
    let path = format!("/v1/accounts/{id}");
    let mut conn = client.connect().with_context(|| format!("cannot connect to {}", client.target))?;
    let response = conn.exchange("GET", &path, &client.host, b"", false);
    conn.close();
    let response = response?;
    serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| v.get(field)?.as_str()?.parse::<u64>().ok())
        .with_context(|| format!("account {id}: {} {}", response.status, String::from_utf8_lossy(&response.body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Ids {
        Ids { run: 7u128 << 64, debit: (7u128 << 64) | 1, credit: (7u128 << 64) | 2 }
    }

    #[test]
    fn ids_are_unique_within_a_run_and_apart_from_the_accounts() {
        let ids = ids();
        assert_ne!(ids.transfer(0, 0), ids.transfer(1, 0));
        assert_ne!(ids.transfer(0, 1), ids.transfer(1, 0));
        assert_ne!(ids.transfer(CONNECTIONS_MAX - 1, (1 << 40) - 2), ids.transfer(CONNECTIONS_MAX - 2, (1 << 40) - 2));
        assert_eq!(ids.transfer(3, 9) >> 64, 7);
        for t in [ids.transfer(0, 0), ids.transfer(0, 1)] {
            assert_ne!(t, ids.debit_account());
            assert_ne!(t, ids.credit_account());
        }
        let given = Ids::new(Some((5, 6)));
        assert_eq!((given.debit_account(), given.credit_account()), (5, 6));
    }

    #[test]
    fn requests_per_workload() {
        let w = |workload| Workloads { workload, ids: ids(), path: "/constant".into(), host: "pantera.lab".into() };
        let mut out = Vec::new();
        w(Workload::Transfers).encode(2, 5, false, &mut out);
        let text = String::from_utf8(out.clone()).expect("ASCII");
        assert!(text.starts_with("POST /v1/transfers HTTP/1.1\r\nHost: pantera.lab\r\n"), "{text}");
        let body: serde_json::Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).expect("a body")).expect("JSON");
        assert_eq!(body[0]["id"], ids().transfer(2, 5).to_string());
        assert_eq!(body[0]["debit_account_id"], ids().debit_account().to_string());
        assert_eq!(body[0]["credit_account_id"], ids().credit_account().to_string());
        assert_eq!(body[0]["amount"], "1");
        out.clear();
        w(Workload::Read).encode(0, 0, true, &mut out);
        assert_eq!(out, format!("GET /v1/accounts/{} HTTP/1.1\r\nHost: pantera.lab\r\nConnection: close\r\n\r\n", ids().credit_account()).into_bytes());
        out.clear();
        w(Workload::Constant).encode(0, 0, false, &mut out);
        assert!(out.starts_with(b"POST /constant HTTP/1.1\r\n"));
    }

    #[test]
    fn only_a_created_transfer_is_ok() {
        let r = |status, body: &[u8]| Response { status, body: body.to_vec(), close: false };
        let t = Workloads { workload: Workload::Transfers, ids: ids(), path: String::new(), host: String::new() };
        assert_eq!(t.judge(&r(200, br#"[{"index":0,"status":"created","timestamp":"1"}]"#)), None);
        assert_eq!(t.judge(&r(200, br#"[{"index":0,"status":"exists"}]"#)), Some(ErrorKind::NotCreated));
        assert_eq!(t.judge(&r(200, b"not json")), Some(ErrorKind::NotCreated));
        assert_eq!(t.judge(&r(503, b"busy")), Some(ErrorKind::Status503));
        assert_eq!(t.judge(&r(404, b"")), Some(ErrorKind::StatusOther));
        let c = Workloads { workload: Workload::Constant, ..t };
        assert_eq!(c.judge(&r(200, b"anything")), None);
        assert!(!all_created(br#"[]"#, 1));
        assert!(!all_created(br#"{"error":{}}"#, 1));
    }

    #[test]
    fn durations_and_accounts_parse_with_clear_errors() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999s").is_err());
        assert_eq!(parse_accounts("5,6"), Ok((5, 6)));
        assert!(parse_accounts("5,5").is_err());
        assert!(parse_accounts("5").is_err());
        assert!(parse_accounts("x,6").is_err());
    }

    #[test]
    fn the_summary_names_rate_latency_and_errors() {
        let mut r = crate::results::tests::sample("x", 12345.0, 2900);
        r.errors.insert("status_503".into(), 3);
        r.totals.errors = 3;
        let s = summary(&r);
        assert!(s.contains("12345 transfers/s; errors 3 (status_503 3)"), "{s}");
        assert!(s.contains("p99 2.90 ms"), "{s}");
        assert!(s.contains("ledger check ok"), "{s}");
    }
}
