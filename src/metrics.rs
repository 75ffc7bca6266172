//! Prometheus metrics and the management listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! The management listener is a kernel TCP socket on the operator's network (default
//! 127.0.0.1:9464), never on the service's queues. Workers own plain counters in their stacks
//! and publish them here a few times a second (`sync_counter`), so the hot path touches no
//! shared cache line per packet.
//!
//! The listener serves a bounded number of connections at once, each within one deadline for
//! the whole exchange, so a slow or stuck client can delay neither `/healthz` nor a scrape
//! (docs/limits.md). `/healthz` and `/readyz` read the threads' heartbeats (`health`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::health::Health;
use crate::metric_families::{LedgerCounts, TcpMetrics, XskMetrics};

/// Every metric the appliance exports. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// The process collector's registry: its metrics keep their standard unprefixed names
    /// (`process_cpu_seconds_total`, ...).
    process_registry: Registry,
    /// Always 1, labelled with the binary's version and git commit.
    pub build_info: IntGaugeVec,
    /// XDP verdicts, summed over CPUs: `action` redirect, drop or pass, and its `reason`.
    pub xdp_packets: IntCounterVec,
    /// AF_XDP socket counters per queue, one metric per meaning.
    pub xsk: XskMetrics,
    /// TCP stack counters per queue, one metric per meaning.
    pub tcp: TcpMetrics,
    pub tcp_connections: IntGaugeVec,
    /// Completed TLS handshakes by protocol version and whether the session was resumed.
    pub tls_handshakes: IntCounterVec,
    /// Sessions ended by an error, by reason.
    pub tls_errors: IntCounterVec,
    /// Connections that entered a queue's handshake budget (open at TCP, TLS not done).
    pub tls_handshakes_started: IntCounterVec,
    /// Pending handshakes evicted, oldest first, because the queue's budget was full.
    pub tls_handshakes_evicted: IntCounterVec,
    /// Handshakes pending on a queue now (against `tls.handshakes_pending_max`).
    pub tls_handshakes_pending: IntGaugeVec,
    /// Handshake steps (the calls that run the handshake's crypto) run, by queue.
    pub tls_handshake_steps: IntCounterVec,
    /// The time those steps took, in seconds: the queue's CPU spent on handshakes.
    pub tls_handshake_step_seconds: prometheus::CounterVec,
    /// notAfter of the server certificate (`cert` server) and of the client CA (`client_ca`),
    /// in seconds since the Unix epoch.
    pub tls_certificate_expiry: IntGaugeVec,
    /// Worker turns that ended with handshake steps still waiting (per-turn bound or time
    /// share reached).
    pub tls_handshake_turns_limited: IntCounterVec,
    /// HTTP responses by status code.
    pub http_responses: IntCounterVec,
    /// Time from a request's first byte to its response queued for sending, by route template
    /// and status class.
    pub http_request_seconds: HistogramVec,
    /// Connections cut because a request deadline passed (`phase` head or body; 408 sent) or
    /// because they sat idle between requests (`phase` idle).
    pub http_deadlines: IntCounterVec,
    /// Bytes the HTTPS connections of a queue hold (output, awaited replies, request
    /// buffers), against the per-queue budget.
    pub https_held_bytes: IntGaugeVec,
    /// Requests answered 503 because the ledger's queue was full.
    pub ledger_queue_full: IntCounter,
    pub ledger_queue_depth: IntGauge,
    /// Ledger submissions whose replies a queue's worker awaits (its share of the queue).
    pub ledger_replies_awaited: IntGaugeVec,
    pub ledger_batches: IntCounter,
    /// Events applied by the ledger by operation and result, and queries answered.
    pub ledger: LedgerCounts,
    pub ledger_requests: IntCounter,
    pub ledger_batch_requests: Histogram,
    pub ledger_commit_seconds: HistogramVec,
    /// Checkpoints written and recorded (WAL segments before them removed).
    pub ledger_checkpoints: IntCounter,
    /// The ledger thread's pause to begin a checkpoint: roll the WAL and list the directory
    /// (the checkpoint writer thread builds and writes it from the WAL).
    pub ledger_checkpoint_begin_seconds: Histogram,
    /// Bytes of a torn WAL tail that recovery cut (and kept aside) at this start; 0: none.
    pub ledger_recovery_cut_bytes: IntGauge,
    /// 1 when this start followed a clean stop (the clean-stop marker was found).
    pub ledger_recovery_clean_stop: IntGauge,
    /// The pipelined group commit's WAL syncs (src/committer.rs).
    pub ledger_sync: crate::committer::SyncMetrics,
    /// The TigerBeetle backend's (`ledger.backend = "tigerbeetle"`).
    pub cluster: crate::cluster_backend::ClusterMetrics,
    pub ready: IntGauge,
    /// The heartbeats of the worker and ledger threads, read by `/healthz` and `/readyz`.
    pub health: Health,
    /// 1 while every registered heartbeat is fresh (as `/healthz` would answer), at scrape time.
    pub healthy: IntGauge,
    /// Seconds since each registered thread's last heartbeat, at scrape time.
    pub heartbeat_age_seconds: GaugeVec,
    /// Management connections by how they ended: served, refused, timed_out, too_large, failed.
    pub management_connections: IntCounterVec,
    /// Management connections being served now (at most `MANAGEMENT_CONNECTIONS_MAX`).
    pub management_connections_open: IntGauge,
    /// Held while the scrape-time gauges are refreshed and gathered, so two concurrent
    /// scrapes do not see each other's half-refreshed heartbeat series.
    render_lock: Arc<Mutex<()>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::with_health(Health::new())
    }

    /// Metrics whose `/healthz` reads `health` (tests pass one with a manual clock).
    pub fn with_health(health: Health) -> Metrics {
        let registry = Registry::new_custom(Some("pantera".to_owned()), None).expect("valid prefix");
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let counter = |name: &str, help: &str| {
            let m = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let gauge = |name: &str, help: &str| {
            let m = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(m.clone())).expect("unique metric");
            m
        };
        let process_registry = Registry::new();
        let build_info = crate::metric_families::register_process(&registry, &process_registry);
        let xdp_packets =
            counter_vec("xdp_packets_total", "Packets seen by the XDP steering program, by action (redirect, drop, pass) and reason.", &["action", "reason"]);
        let xsk = XskMetrics::new(&registry);
        let tcp = TcpMetrics::new(&registry);
        let tcp_connections = IntGaugeVec::new(Opts::new("tcp_connections", "Open TCP connections, by queue."), &["queue"]).expect("valid");
        registry.register(Box::new(tcp_connections.clone())).expect("unique");
        let tls_handshakes = counter_vec("tls_handshakes_total", "Completed TLS handshakes.", &["version", "resumed"]);
        let tls_errors = counter_vec("tls_errors_total", "TLS sessions ended by an error, by reason.", &["reason"]);
        let tls_handshakes_started =
            counter_vec("tls_handshakes_started_total", "Connections that entered the handshake budget, by queue.", &["queue"]);
        let tls_handshakes_evicted =
            counter_vec("tls_handshakes_evicted_total", "Pending TLS handshakes evicted (oldest first) because the budget was full, by queue.", &["queue"]);
        let tls_handshakes_pending =
            IntGaugeVec::new(Opts::new("tls_handshakes_pending", "TLS handshakes pending, by queue."), &["queue"]).expect("valid");
        registry.register(Box::new(tls_handshakes_pending.clone())).expect("unique");
        let tls_handshake_steps = counter_vec("tls_handshake_steps_total", "TLS handshake steps (crypto) run, by queue.", &["queue"]);
        let tls_handshake_step_seconds = crate::metric_families::handshake_step_seconds(&registry);
        let tls_certificate_expiry = IntGaugeVec::new(
            Opts::new("tls_certificate_expiry_timestamp_seconds", "notAfter of the server certificate and of the client CA, in Unix seconds."),
            &["cert"],
        )
        .expect("valid");
        registry.register(Box::new(tls_certificate_expiry.clone())).expect("unique");
        let tls_handshake_turns_limited = counter_vec(
            "tls_handshake_turns_limited_total",
            "Worker turns that left TLS handshake steps waiting (per-turn bound or time share), by queue.",
            &["queue"],
        );
        let http_responses = counter_vec("http_responses_total", "HTTP responses, by status code.", &["status"]);
        let http_request_seconds = HistogramVec::new(
            HistogramOpts::new("http_request_seconds", "Time from a request's first byte to its response queued for sending, by route and status class.")
                .buckets(prometheus::exponential_buckets(50e-6, 2.0, 16).expect("valid")),
            &["route", "status_class"],
        )
        .expect("valid");
        registry.register(Box::new(http_request_seconds.clone())).expect("unique");
        let http_deadlines = counter_vec("http_deadlines_total", "Connections cut by a request deadline (head, body) or the idle timeout.", &["phase"]);
        let https_held_bytes = IntGaugeVec::new(Opts::new("https_held_bytes", "Bytes held by the HTTPS connections of a queue, against its budget."), &["queue"]).expect("valid");
        registry.register(Box::new(https_held_bytes.clone())).expect("unique");
        let ledger_queue_full = counter("ledger_queue_full_total", "Requests answered 503 because the ledger queue was full.");
        let ledger_queue_depth = gauge("ledger_queue_depth", "Submissions waiting for the ledger thread.");
        let ledger_batches = counter("ledger_batches_total", "Group commits (one WAL record and one fsync each).");
        let ledger = LedgerCounts::new(&registry);
        let ledger_replies_awaited = crate::metric_families::gauge_vec(
            &registry,
            "ledger_replies_awaited",
            "Ledger submissions whose replies the queue's worker awaits, by queue.",
            &["queue"],
        );
        let ledger_requests = counter("ledger_requests_total", "Requests executed by the ledger thread.");
        let ledger_batch_requests = Histogram::with_opts(
            HistogramOpts::new("ledger_batch_requests", "Requests per group commit.")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0]),
        )
        .expect("valid");
        registry.register(Box::new(ledger_batch_requests.clone())).expect("unique");
        let ledger_commit_seconds = HistogramVec::new(
            HistogramOpts::new("ledger_commit_seconds", "Time to apply and make durable one batch.")
                .buckets(prometheus::exponential_buckets(10e-6, 2.0, 16).expect("valid")),
            &["durability"],
        )
        .expect("valid");
        registry.register(Box::new(ledger_commit_seconds.clone())).expect("unique");
        let ledger_checkpoints = counter("ledger_checkpoints_total", "Checkpoints written and recorded.");
        let ledger_checkpoint_begin_seconds = Histogram::with_opts(
            HistogramOpts::new("ledger_checkpoint_begin_seconds", "Ledger thread pause to begin a checkpoint (roll the WAL, list the directory).")
                .buckets(prometheus::exponential_buckets(1e-5, 2.0, 16).expect("valid")),
        )
        .expect("valid");
        registry.register(Box::new(ledger_checkpoint_begin_seconds.clone())).expect("unique");
        let ready = gauge("ready", "1 once every worker runs and the ledger has recovered.");
        let ledger_recovery_cut_bytes = gauge("ledger_recovery_cut_bytes", "Bytes of a torn WAL tail cut (and kept aside) by recovery at this start.");
        let ledger_recovery_clean_stop = gauge("ledger_recovery_clean_stop", "1 when this start followed a clean stop.");
        let ledger_sync = crate::committer::SyncMetrics::register(&registry);
        let cluster = crate::cluster_backend::ClusterMetrics::register(&registry);
        let healthy = gauge("healthy", "1 while every worker and ledger thread heartbeat is fresh.");
        let heartbeat_age_seconds =
            GaugeVec::new(Opts::new("heartbeat_age_seconds", "Seconds since the thread's last heartbeat."), &["thread"]).expect("valid");
        registry.register(Box::new(heartbeat_age_seconds.clone())).expect("unique");
        let management_connections =
            counter_vec("management_connections_total", "Management connections, by how they ended.", &["outcome"]);
        let management_connections_open = gauge("management_connections_open", "Management connections being served.");
        Metrics {
            registry,
            process_registry,
            build_info,
            xdp_packets,
            xsk,
            tcp,
            tcp_connections,
            tls_handshakes,
            tls_errors,
            tls_handshakes_started,
            tls_handshakes_evicted,
            tls_handshakes_pending,
            tls_handshake_steps,
            tls_handshake_step_seconds,
            tls_certificate_expiry,
            tls_handshake_turns_limited,
            http_responses,
            http_request_seconds,
            http_deadlines,
            https_held_bytes,
            ledger_queue_full,
            ledger_queue_depth,
            ledger_replies_awaited,
            ledger_batches,
            ledger,
            ledger_requests,
            ledger_batch_requests,
            ledger_commit_seconds,
            ledger_checkpoints,
            ledger_checkpoint_begin_seconds,
            ledger_recovery_cut_bytes,
            ledger_recovery_clean_stop,
            ledger_sync,
            cluster,
            ready,
            health,
            healthy,
            heartbeat_age_seconds,
            management_connections,
            management_connections_open,
            render_lock: Arc::new(Mutex::new(())),
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let _refreshing = self.render_lock.lock().unwrap_or_else(|e| e.into_inner());
        // A thread that stopped cleanly has unregistered: its series goes too.
        self.heartbeat_age_seconds.reset();
        for (thread, age_ms) in self.health.ages_ms() {
            self.heartbeat_age_seconds.with_label_values(&[thread.as_str()]).set(age_ms as f64 / 1000.0);
        }
        self.healthy.set(i64::from(self.health.check().is_ok()));
        let mut out = Vec::with_capacity(16 * 1024);
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        TextEncoder::new().encode(&families, &mut out).expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Counts what a connection reports (handshakes, responses, TLS errors, deadlines) and hands
/// each response to `audit` (the audit log keeps the writes); returns how many responses it
/// queued. The few events worth a log line are logged too, with the connection's slot and
/// peer (`conn`, asked only for a line that is written).
pub fn record_events(
    connection: &mut ledger_svc::connection::Connection,
    metrics: &Metrics,
    conn: impl Fn() -> crate::logging::ConnFields,
    mut audit: impl FnMut(ledger_svc::connection::Answered),
) -> usize {
    use ledger_svc::connection::Event;
    let mut responses = 0;
    while let Some(event) = connection.poll_event() {
        crate::logging::connection_event(&event, &conn);
        responses += usize::from(matches!(event, Event::Response { .. }));
        match event {
            Event::Handshake { version, resumed } => {
                metrics.tls_handshakes.with_label_values(&[version, if resumed { "true" } else { "false" }]).inc()
            }
            Event::Response(answered) => {
                metrics.http_responses.with_label_values(&[status_label(answered.status)]).inc();
                metrics
                    .http_request_seconds
                    .with_label_values(&[answered.route, status_class(answered.status)])
                    .observe(answered.duration.as_secs_f64());
                audit(answered);
            }
            Event::TlsFailed { reason } => metrics.tls_errors.with_label_values(&[reason]).inc(),
            Event::DeadlineCut { phase } => metrics.http_deadlines.with_label_values(&[phase]).inc(),
            Event::IdleClosed => metrics.http_deadlines.with_label_values(&["idle"]).inc(),
        }
    }
    responses
}

/// Brings a Prometheus counter up to a cumulative value owned elsewhere (a stack's counters).
/// Each labelled series has one writer, so read-then-add does not race.
pub fn sync_counter(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

/// The `status` label of `http_responses_total`: the codes the appliance sends by name, the
/// rest by class, so the label set stays bounded.
pub fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        411 => "411",
        413 => "413",
        431 => "431",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The `status_class` label of `http_request_seconds`: 2xx, 3xx, 4xx or 5xx.
pub fn status_class(status: u16) -> &'static str {
    match status {
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// Connections the management listener serves at once, one handler thread each (allocated at
/// start). A scraper, a liveness probe, a readiness probe and an operator's curl fit; past it a
/// new connection is closed at once and counted, so a burst of clients cannot queue up.
pub const MANAGEMENT_CONNECTIONS_MAX: usize = 4;
/// The whole exchange (request in, response out) must finish within this after accept; a
/// client that trickles its request or reads its response slowly is cut off when it passes,
/// whatever its pace, so it holds a handler for at most this long.
pub const MANAGEMENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Request line and headers a management client may send; past it, 431 and close.
pub const MANAGEMENT_REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long the acceptor waits in poll(2) for a connection before it looks at `stop` again
/// (a stop needs no wake-up connection). A connection wakes it at once: a readiness probe
/// is answered as soon as the appliance is ready, not up to a sleep later.
const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// Stack of a handler thread: it parses a request line and copies a rendered page.
const HANDLER_STACK_BYTES: usize = 256 * 1024;
/// How long a cut-off client is given to take its one-line 408.
const GOODBYE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// The management listener's bounds (the defaults above; tests shrink them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagementLimits {
    pub connections_max: usize,
    pub request_timeout: Duration,
    pub request_bytes_max: usize,
}

impl Default for ManagementLimits {
    fn default() -> ManagementLimits {
        ManagementLimits {
            connections_max: MANAGEMENT_CONNECTIONS_MAX,
            request_timeout: MANAGEMENT_REQUEST_TIMEOUT,
            request_bytes_max: MANAGEMENT_REQUEST_BYTES_MAX,
        }
    }
}

/// How a management connection ended: the `outcome` label of
/// `management_connections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A response was sent (whatever its status).
    Served,
    /// Closed at once: `connections_max` connections were being served.
    Refused,
    /// The request or the response did not finish before the deadline (408 when possible).
    TimedOut,
    /// The request head outgrew `request_bytes_max` (431).
    TooLarge,
    /// The client closed before a whole request, or the socket failed.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Served => "served",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::TooLarge => "too_large",
            Outcome::Failed => "failed",
        }
    }
}

/// Serves the management endpoints on a kernel socket until `stop` is set, with the default
/// bounds.
pub fn spawn_management(listen: SocketAddr, metrics: Metrics, stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    spawn_management_with(listen, metrics, stop, ManagementLimits::default())
}

/// Serves the management endpoints until `stop` is set: an acceptor thread hands each
/// connection to one of `limits.connections_max` handler threads, or closes it at once when
/// all are busy. The returned thread ends after the handlers have.
pub fn spawn_management_with(
    listen: SocketAddr,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    limits: ManagementLimits,
) -> anyhow::Result<thread::JoinHandle<()>> {
    spawn_management_on(bind_management(listen)?, metrics, stop, limits)
}

/// Binds the management listener (`management.listen`), nonblocking: the first half of
/// [`spawn_management`] (`serve` binds before it drops its privileges).
pub fn bind_management(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen} (management.listen)"))?;
    listener.set_nonblocking(true).context("management listener")?;
    Ok(listener)
}

/// Waits until `listener` has a connection to accept or `timeout` passes. An error (EINTR)
/// only ends the wait early: the caller tries accept and waits again.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(std::os::fd::AsFd::as_fd(listener), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, timeout);
}

/// The second half of [`spawn_management_with`]: serves on `listener` (from
/// [`bind_management`]) until `stop` is set.
pub fn spawn_management_on(
    listener: TcpListener,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
    limits: ManagementLimits,
) -> anyhow::Result<thread::JoinHandle<()>> {
    assert!(limits.connections_max > 0 && limits.request_bytes_max > 0 && !limits.request_timeout.is_zero(), "{limits:?}");
    let listen = listener.local_addr().context("management listener")?;
    // Room for every connection being served, so a hand-off never waits: the acceptor counts
    // them in `open` before it sends.
    let (tx, rx) = crossbeam_channel::bounded::<(TcpStream, Instant)>(limits.connections_max);
    let open = Arc::new(AtomicUsize::new(0));
    let mut handlers = Vec::with_capacity(limits.connections_max);
    for i in 0..limits.connections_max {
        let (rx, metrics, open) = (rx.clone(), metrics.clone(), Arc::clone(&open));
        let handler = thread::Builder::new().name(format!("management-{i}")).stack_size(HANDLER_STACK_BYTES).spawn(move || {
            crate::sandbox::confine_thread(crate::sandbox::Kind::Management);
            let mut buffer = vec![0u8; limits.request_bytes_max];
            for (stream, accepted) in rx {
                let outcome = serve_one(&stream, accepted, &metrics, &limits, &mut buffer);
                drop(stream);
                metrics.management_connections.with_label_values(&[outcome.label()]).inc();
                metrics.management_connections_open.dec();
                open.fetch_sub(1, Ordering::AcqRel);
            }
        });
        handlers.push(handler.context("cannot start a management handler thread")?);
    }
    log::info!(
        "management listener on http://{listen} (/metrics, /healthz, /readyz), {} connections at once, {:?} per request",
        limits.connections_max,
        limits.request_timeout
    );
    let acceptor = thread::Builder::new().name("management".to_owned()).spawn(move || {
        crate::sandbox::confine_thread(crate::sandbox::Kind::Management);
        let refused = metrics.management_connections.with_label_values(&[Outcome::Refused.label()]);
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    // Only this thread adds to `open`, so the check and the add do not race.
                    if open.load(Ordering::Acquire) >= limits.connections_max {
                        refused.inc();
                        drop(stream);
                        continue;
                    }
                    open.fetch_add(1, Ordering::AcqRel);
                    metrics.management_connections_open.inc();
                    tx.try_send((stream, Instant::now())).expect("room for every open connection");
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener, ACCEPT_POLL),
                Err(e) => {
                    log::warn!("management accept failed: {e}");
                    thread::sleep(ACCEPT_POLL);
                }
            }
        }
        // Closing the queue ends each handler after the connection it holds, if any (bounded
        // by the request timeout).
        drop(tx);
        for h in handlers {
            let _ = h.join();
        }
    })?;
    Ok(acceptor)
}

/// Reads one request and answers it, all before `accepted + limits.request_timeout`.
fn serve_one(mut stream: &TcpStream, accepted: Instant, metrics: &Metrics, limits: &ManagementLimits, buffer: &mut [u8]) -> Outcome {
    let deadline = accepted + limits.request_timeout;
    if stream.set_nonblocking(false).is_err() {
        return Outcome::Failed;
    }
    let mut len: usize = 0;
    let mut scanned: usize = 0;
    let head_len = loop {
        if let Some(end) = head_end(&buffer[..len], scanned) {
            break end;
        }
        // The blank line may straddle two reads: the next search starts a little before the
        // bytes it has not seen.
        scanned = len.saturating_sub(READ_OVERLAP_BYTES);
        if len == buffer.len() {
            let _ = write_by(stream, &response("431 Request Header Fields Too Large", "text/plain", b"request too large\n"), deadline);
            return Outcome::TooLarge;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return timed_out(stream);
        }
        match stream.read(&mut buffer[len..]) {
            Ok(0) => return Outcome::Failed,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return timed_out(stream),
            Err(_) => return Outcome::Failed,
        }
    };
    let page = answer(&buffer[..head_len], metrics);
    match write_by(stream, &page, deadline) {
        Ok(()) => {
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Write);
            Outcome::Served
        }
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Outcome::TimedOut,
        Err(_) => Outcome::Failed,
    }
}

/// Bytes of the blank line that ends a request head, less one: how far before new bytes the
/// search for it starts.
const READ_OVERLAP_BYTES: usize = 3;

/// The length of the request head (through its blank line) in `buffer`, if it is complete,
/// searching from `from`. A bare LF is accepted as a line end (RFC 9112 §2.2).
fn head_end(buffer: &[u8], from: usize) -> Option<usize> {
    let window = &buffer[from.min(buffer.len())..];
    let crlf = window.windows(4).position(|w| w == b"\r\n\r\n").map(|i| from + i + 4);
    let lf = window.windows(2).position(|w| w == b"\n\n").map(|i| from + i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The request deadline passed: a best-effort 408 (RFC 9110 §15.5.9), then close.
fn timed_out(mut stream: &TcpStream) -> Outcome {
    if stream.set_write_timeout(Some(GOODBYE_WRITE_TIMEOUT)).is_ok() {
        let _ = stream.write_all(&response("408 Request Timeout", "text/plain", b"request timeout\n"));
    }
    Outcome::TimedOut
}

/// Writes all of `bytes`, giving up when `deadline` passes.
fn write_by(mut stream: &TcpStream, bytes: &[u8], deadline: Instant) -> std::io::Result<()> {
    let mut pos = 0;
    while pos < bytes.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_write_timeout(Some(left))?;
        match stream.write(&bytes[pos..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => pos += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The response to a request head: the endpoints and their health semantics.
///
/// - `/healthz`: 200 while every registered thread's heartbeat is fresh
///   (`health::HEARTBEAT_STALE_AFTER`), else 503 naming each stale or panicked thread.
/// - `/readyz`: 200 while ready (the ledger recovered, every worker running, not stopping,
///   and with the TigerBeetle backend the cluster answering) and healthy, else 503 saying
///   which.
fn answer(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let request_line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return response("405 Method Not Allowed", "text/plain", b"method not allowed\n");
    }
    let unhealthy = |troubles: Vec<crate::health::Unhealthy>| {
        let mut body = String::from("unhealthy\n");
        for t in troubles {
            body.push_str(&format!("{t}\n"));
        }
        response("503 Service Unavailable", "text/plain", body.as_bytes())
    };
    match path {
        "/metrics" => {
            #[cfg(feature = "fault-injection")]
            crate::fault::sandbox_point(crate::sandbox::Kind::Management);
            response("200 OK", "text/plain; version=0.0.4", &metrics.render())
        }
        "/healthz" => match metrics.health.check() {
            Ok(()) => response("200 OK", "text/plain", b"ok\n"),
            Err(troubles) => unhealthy(troubles),
        },
        // With the TigerBeetle backend, not ready while the cluster does not answer (the
        // process is fine: /healthz stays 200).
        "/readyz" => match (metrics.ready.get() == 1, metrics.health.check()) {
            (true, Ok(())) if metrics.cluster.reachable.get() != 1 => {
                response("503 Service Unavailable", "text/plain", b"not ready: the ledger's TigerBeetle cluster does not answer\n")
            }
            (true, Ok(())) => response("200 OK", "text/plain", b"ready\n"),
            (false, _) => response("503 Service Unavailable", "text/plain", b"not ready\n"),
            (true, Err(troubles)) => unhealthy(troubles),
        },
        _ => response("404 Not Found", "text/plain", b"not found\n"),
    }
}

fn response(status: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
        .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Clock, Health};

    #[test]
    fn sync_counter_follows_a_cumulative_value() {
        let m = Metrics::new();
        let c = m.tcp.connections_accepted.with_label_values(&["0"]);
        sync_counter(&c, 5);
        sync_counter(&c, 5);
        sync_counter(&c, 9);
        assert_eq!(c.get(), 9);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("pantera_tcp_connections_accepted_total{queue=\"0\"} 9"), "{text}");
    }

    /// A management listener on a free loopback port.
    struct Listener {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Listener {
        fn start(metrics: &Metrics, limits: ManagementLimits) -> Listener {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = probe.local_addr().expect("addr");
            drop(probe);
            let stop = Arc::new(AtomicBool::new(false));
            let thread = spawn_management_with(addr, metrics.clone(), Arc::clone(&stop), limits).expect("listen");
            Listener { addr, stop, thread: Some(thread) }
        }
    }

    impl Drop for Listener {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                t.join().expect("management thread");
            }
        }
    }

    /// GET `path`; (status, body, time to the whole response). A response that takes longer
    /// than 3 s is an error.
    fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, Duration)> {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        Ok((status, body, started.elapsed()))
    }

    fn outcome(m: &Metrics, outcome: Outcome) -> u64 {
        m.management_connections.with_label_values(&[outcome.label()]).get()
    }

    /// Waits (bounded) until `open` connections are being served.
    fn wait_open(m: &Metrics, open: i64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while m.management_connections_open.get() != open {
            assert!(Instant::now() < deadline, "{} open, expected {open}", m.management_connections_open.get());
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn management_endpoints_answer() {
        let m = Metrics::new();
        let listener = Listener::start(&m, ManagementLimits::default());
        let get = |path: &str| get(listener.addr, path).expect("answer");
        let (status, body, _) = get("/readyz");
        assert_eq!((status, body.as_str()), (503, "not ready\n"));
        m.ready.set(1);
        assert_eq!(get("/readyz").0, 200);
        assert_eq!(get("/healthz").0, 200);
        let ledger = m.health.register("ledger");
        ledger.beat();
        let metrics = get("/metrics").1;
        assert!(metrics.contains("pantera_ready 1"), "{metrics}");
        assert!(metrics.contains("pantera_healthy 1"), "{metrics}");
        assert!(metrics.contains("pantera_heartbeat_age_seconds{thread=\"ledger\"}"), "{metrics}");
        assert_eq!(get("/nope").0, 404);
        assert_eq!(get("/healthz?verbose=1").0, 200);
        let mut s = TcpStream::connect(listener.addr).expect("connect");
        s.write_all(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 405"), "{out}");
        // A bare LF ends lines too.
        let mut s = TcpStream::connect(listener.addr).expect("connect");
        s.write_all(b"GET /healthz HTTP/1.0\n\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        wait_open(&m, 0);
        assert_eq!(outcome(&m, Outcome::Served), 8);
    }

    #[test]
    fn a_stale_heartbeat_turns_healthz_and_readyz_to_503() {
        let clock = Clock::manual(0);
        let m = Metrics::with_health(Health::with_clock(Duration::from_secs(5), clock.clone()));
        let listener = Listener::start(&m, ManagementLimits::default());
        let worker = m.health.register("worker-q0");
        let ledger = m.health.register("ledger");
        m.ready.set(1);
        assert_eq!(get(listener.addr, "/healthz").expect("answer").0, 200);
        assert_eq!(get(listener.addr, "/readyz").expect("answer").0, 200);

        // The worker keeps beating; the ledger thread stops (stuck in a loop, say).
        clock.advance(Duration::from_secs(6));
        worker.beat();
        let (status, body, _) = get(listener.addr, "/healthz").expect("answer");
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, "unhealthy\nledger: no heartbeat for 6.0 s\n");
        let (status, body, _) = get(listener.addr, "/readyz").expect("answer");
        assert_eq!(status, 503, "ready but not healthy is not ready: {body}");
        assert!(body.contains("ledger: no heartbeat"), "{body}");
        let metrics = get(listener.addr, "/metrics").expect("answer").1;
        assert!(metrics.contains("pantera_healthy 0"), "{metrics}");
        assert!(metrics.contains("pantera_heartbeat_age_seconds{thread=\"ledger\"} 6"), "{metrics}");
        assert!(metrics.contains("pantera_heartbeat_age_seconds{thread=\"worker-q0\"} 0"), "{metrics}");

        ledger.beat();
        assert_eq!(get(listener.addr, "/healthz").expect("answer").0, 200);
        assert_eq!(get(listener.addr, "/readyz").expect("answer").0, 200);
    }

    #[test]
    fn a_client_sending_one_byte_a_second_does_not_delay_healthz() {
        let m = Metrics::new();
        let listener = Listener::start(&m, ManagementLimits::default());
        let addr = listener.addr;
        let request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        // One byte, then a second's wait for the server to react, and so on; returns the bytes
        // sent and when the server ended the connection.
        let slow = thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            let mut sent = 0;
            let mut reply = Vec::new();
            for &byte in request {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                sent += 1;
                let mut buf = [0u8; 256];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        reply.extend_from_slice(&buf[..n]);
                        let _ = s.read_to_end(&mut reply);
                        break;
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            (sent, Instant::now(), String::from_utf8_lossy(&reply).into_owned())
        });
        wait_open(&m, 1);
        // Let it trickle for a second: it holds its connection the whole time.
        thread::sleep(Duration::from_secs(1));
        let (status, body, latency) = get(addr, "/healthz").expect("/healthz must answer while a slow client is connected");
        let answered = Instant::now();
        println!("/healthz answered in {latency:?} while a client sent one byte a second");
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        assert!(latency < Duration::from_secs(1), "/healthz took {latency:?}");
        let (sent, cut_off, reply) = slow.join().expect("slow client");
        assert!(cut_off > answered, "the slow client was still connected when /healthz answered");
        assert!(sent < request.len(), "the slow client never finished its request: cut off after {sent} bytes");
        assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
        wait_open(&m, 0);
        assert_eq!(outcome(&m, Outcome::TimedOut), 1);
        assert_eq!(outcome(&m, Outcome::Served), 1);
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline_not_per_read() {
        let m = Metrics::new();
        let limits = ManagementLimits { request_timeout: Duration::from_millis(500), ..ManagementLimits::default() };
        let listener = Listener::start(&m, limits);
        let mut s = TcpStream::connect(listener.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let started = Instant::now();
        let mut reply = Vec::new();
        // A byte every 100 ms: no single read waits long, the whole request does.
        for &byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if s.write_all(&[byte]).is_err() {
                break;
            }
            let mut buf = [0u8; 256];
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    reply.extend_from_slice(&buf[..n]);
                    break;
                }
                Err(_) => {}
            }
        }
        let elapsed = started.elapsed();
        println!("trickling client cut off after {elapsed:?} (request timeout 500 ms)");
        assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&reply));
        assert!(elapsed < Duration::from_secs(3), "cut off after {elapsed:?}");
        wait_open(&m, 0);
        assert_eq!(outcome(&m, Outcome::TimedOut), 1);
    }

    #[test]
    fn clients_past_the_bound_are_refused_at_once_and_health_answers_after_they_go() {
        let m = Metrics::new();
        let limits = ManagementLimits { request_timeout: Duration::from_secs(10), ..ManagementLimits::default() };
        let listener = Listener::start(&m, limits);
        // Silent clients hold every handler.
        let holders: Vec<TcpStream> = (0..limits.connections_max).map(|_| TcpStream::connect(listener.addr).expect("connect")).collect();
        wait_open(&m, limits.connections_max as i64);
        // Three more: each is closed at once, long before the request timeout.
        for _ in 0..3 {
            let started = Instant::now();
            let mut s = TcpStream::connect(listener.addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            let mut buf = [0u8; 64];
            let read = s.read(&mut buf);
            let elapsed = started.elapsed();
            println!("an extra management client was closed after {elapsed:?}: {read:?}");
            assert!(matches!(read, Ok(0)) || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset), "{read:?}");
            assert!(elapsed < Duration::from_secs(1), "refused after {elapsed:?}");
        }
        assert_eq!(outcome(&m, Outcome::Refused), 3);
        let refused = get(listener.addr, "/healthz");
        assert!(refused.as_ref().map_or(true, |(status, ..)| *status == 0), "a fresh client is refused too while the bound is reached: {refused:?}");
        assert_eq!(outcome(&m, Outcome::Refused), 4);
        drop(holders);
        wait_open(&m, 0);
        let (status, _, latency) = get(listener.addr, "/healthz").expect("answers once the holders are gone");
        println!("/healthz answered in {latency:?} after the holders left");
        assert_eq!(status, 200);
        wait_open(&m, 0);
        assert_eq!(outcome(&m, Outcome::Failed), limits.connections_max as u64, "the holders closed without a request");
        assert_eq!(outcome(&m, Outcome::Served), 1);
    }

    #[test]
    fn an_oversized_request_head_gets_431() {
        let m = Metrics::new();
        let listener = Listener::start(&m, ManagementLimits::default());
        let mut s = TcpStream::connect(listener.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
        let mut head = b"GET /healthz HTTP/1.1\r\nX-Big: ".to_vec();
        head.resize(MANAGEMENT_REQUEST_BYTES_MAX, b'a');
        s.write_all(&head).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        wait_open(&m, 0);
        assert_eq!(outcome(&m, Outcome::TooLarge), 1);
    }

    #[test]
    fn the_end_of_a_request_head_is_found_across_reads() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
        // The first read ended after 15 bytes ("...1.1\r"): the next search starts 3 before.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nxyz", 15 - READ_OVERLAP_BYTES), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 13), Some(16));
        assert_eq!(head_end(b"", 3), None);
    }
}
