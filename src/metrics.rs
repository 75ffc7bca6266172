//! Prometheus metrics and the management listener (`/metrics`, `/healthz`, `/readyz`).
//!
//! The management listener is a kernel TCP socket on the operator's network (default
//! 127.0.0.1:9464), never on the service's queues. Workers own plain counters in their stacks
//! and publish them here a few times a second (`sync_counter`), so the hot path touches no
//! shared cache line per packet.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use anyhow::Context;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the appliance exports. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// XDP verdicts, summed over CPUs: `verdict` is e.g. redirect_tcp, drop_port, pass_other.
    pub xdp_packets: IntCounterVec,
    /// AF_XDP socket counters per queue: `counter` is rx_frames, tx_frames, rx_dropped, ...
    pub xsk: IntCounterVec,
    /// TCP stack counters per queue: accepted, closed, idle_timeouts, refused_at_capacity, ...
    pub tcp: IntCounterVec,
    pub tcp_connections: IntGaugeVec,
    /// Completed TLS handshakes by protocol version and whether the session was resumed.
    pub tls_handshakes: IntCounterVec,
    /// Sessions ended by an error, by reason.
    pub tls_errors: IntCounterVec,
    /// HTTP responses by status code.
    pub http_responses: IntCounterVec,
    /// Connections cut because a request deadline passed (`phase` head or body; 408 sent) or
    /// because they sat idle between requests (`phase` idle).
    pub http_deadlines: IntCounterVec,
    /// Bytes the HTTPS connections of a queue hold (output, awaited replies, request
    /// buffers), against the per-queue budget.
    pub https_held_bytes: IntGaugeVec,
    /// Requests answered 503 because the ledger's queue was full.
    pub ledger_queue_full: IntCounter,
    pub ledger_queue_depth: IntGauge,
    pub ledger_batches: IntCounter,
    pub ledger_events: IntCounter,
    pub ledger_requests: IntCounter,
    pub ledger_batch_requests: Histogram,
    pub ledger_commit_seconds: HistogramVec,
    /// Checkpoints written and recorded (WAL segments before them removed).
    pub ledger_checkpoints: IntCounter,
    /// The ledger thread's pause to encode a checkpoint (the write runs on its own thread).
    pub ledger_checkpoint_encode_seconds: Histogram,
    pub ready: IntGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
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
        let xdp_packets = counter_vec("xdp_packets_total", "Packets seen by the XDP steering program, by verdict and reason.", &["verdict"]);
        let xsk = counter_vec("xsk_total", "AF_XDP socket counters, by queue.", &["queue", "counter"]);
        let tcp = counter_vec("tcp_total", "Userspace TCP/IP stack counters, by queue.", &["queue", "counter"]);
        let tcp_connections = IntGaugeVec::new(Opts::new("tcp_connections", "Open TCP connections, by queue."), &["queue"]).expect("valid");
        registry.register(Box::new(tcp_connections.clone())).expect("unique");
        let tls_handshakes = counter_vec("tls_handshakes_total", "Completed TLS handshakes.", &["version", "resumed"]);
        let tls_errors = counter_vec("tls_errors_total", "TLS sessions ended by an error, by reason.", &["reason"]);
        let http_responses = counter_vec("http_responses_total", "HTTP responses, by status code.", &["status"]);
        let http_deadlines = counter_vec("http_deadlines_total", "Connections cut by a request deadline (head, body) or the idle timeout.", &["phase"]);
        let https_held_bytes = IntGaugeVec::new(Opts::new("https_held_bytes", "Bytes held by the HTTPS connections of a queue, against its budget."), &["queue"]).expect("valid");
        registry.register(Box::new(https_held_bytes.clone())).expect("unique");
        let ledger_queue_full = counter("ledger_queue_full_total", "Requests answered 503 because the ledger queue was full.");
        let ledger_queue_depth = gauge("ledger_queue_depth", "Submissions waiting for the ledger thread.");
        let ledger_batches = counter("ledger_batches_total", "Group commits (one WAL record and one fsync each).");
        let ledger_events = counter("ledger_events_total", "Accounts and transfers submitted to the ledger.");
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
        let ledger_checkpoint_encode_seconds = Histogram::with_opts(
            HistogramOpts::new("ledger_checkpoint_encode_seconds", "Ledger thread pause to encode a checkpoint.")
                .buckets(prometheus::exponential_buckets(1e-3, 2.0, 12).expect("valid")),
        )
        .expect("valid");
        registry.register(Box::new(ledger_checkpoint_encode_seconds.clone())).expect("unique");
        let ready = gauge("ready", "1 once every worker runs and the ledger has recovered.");
        Metrics {
            registry,
            xdp_packets,
            xsk,
            tcp,
            tcp_connections,
            tls_handshakes,
            tls_errors,
            http_responses,
            http_deadlines,
            https_held_bytes,
            ledger_queue_full,
            ledger_queue_depth,
            ledger_batches,
            ledger_events,
            ledger_requests,
            ledger_batch_requests,
            ledger_commit_seconds,
            ledger_checkpoints,
            ledger_checkpoint_encode_seconds,
            ready,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Counts what a connection reports (handshakes, responses, TLS errors, deadlines).
pub fn record_events(connection: &mut ledger_svc::connection::Connection, metrics: &Metrics) {
    use ledger_svc::connection::Event;
    while let Some(event) = connection.poll_event() {
        match event {
            Event::Handshake { version, resumed } => {
                metrics.tls_handshakes.with_label_values(&[version, if resumed { "true" } else { "false" }]).inc()
            }
            Event::Response { status } => metrics.http_responses.with_label_values(&[status_label(status)]).inc(),
            Event::TlsFailed { reason } => metrics.tls_errors.with_label_values(&[reason]).inc(),
            Event::DeadlineCut { phase } => metrics.http_deadlines.with_label_values(&[phase]).inc(),
            Event::IdleClosed => metrics.http_deadlines.with_label_values(&["idle"]).inc(),
        }
    }
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

/// Request lines and headers a management client may send before it is cut off.
const MANAGEMENT_REQUEST_BYTES_MAX: u64 = 8 * 1024;

/// Serves the management endpoints on a kernel socket until `stop` is set.
pub fn spawn_management(
    listen: SocketAddr,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<thread::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen} (management.listen)"))?;
    listener.set_nonblocking(true).context("management listener")?;
    log::info!("management listener on http://{listen} (/metrics, /healthz, /readyz)");
    let handle = thread::Builder::new().name("management".to_owned()).spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = serve_one(stream, &metrics) {
                        log::debug!("management request failed: {e}");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    log::warn!("management accept failed: {e}");
                    thread::sleep(Duration::from_millis(50));
                }
            }
        }
    })?;
    Ok(handle)
}

fn serve_one(stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(std::io::Read::take(&stream, MANAGEMENT_REQUEST_BYTES_MAX));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers so the client sees a clean close.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let ready = metrics.ready.get() == 1;
    let (status, content_type, body): (&str, &str, Vec<u8>) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
        ("GET", "/healthz") => ("200 OK", "text/plain", b"ok\n".to_vec()),
        ("GET", "/readyz") if ready => ("200 OK", "text/plain", b"ready\n".to_vec()),
        ("GET", "/readyz") => ("503 Service Unavailable", "text/plain", b"starting\n".to_vec()),
        ("GET", _) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        _ => ("405 Method Not Allowed", "text/plain", b"method not allowed\n".to_vec()),
    };
    let mut w = &stream;
    write!(w, "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
    w.write_all(&body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_counter_follows_a_cumulative_value() {
        let m = Metrics::new();
        let c = m.tcp.with_label_values(&["0", "accepted"]);
        sync_counter(&c, 5);
        sync_counter(&c, 5);
        sync_counter(&c, 9);
        assert_eq!(c.get(), 9);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(text.contains("pantera_tcp_total{counter=\"accepted\",queue=\"0\"} 9"), "{text}");
    }

    #[test]
    fn management_endpoints_answer() {
        let m = Metrics::new();
        let stop = Arc::new(AtomicBool::new(false));
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let handle = spawn_management(addr, m.clone(), stop.clone()).expect("listen");
        let get = |path: &str| {
            let mut s = TcpStream::connect(addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
            let mut out = String::new();
            std::io::Read::read_to_string(&mut s, &mut out).expect("read");
            out
        };
        assert!(get("/readyz").starts_with("HTTP/1.1 503"));
        m.ready.set(1);
        assert!(get("/readyz").starts_with("HTTP/1.1 200"));
        assert!(get("/healthz").starts_with("HTTP/1.1 200"));
        assert!(get("/metrics").contains("pantera_ready 1"));
        assert!(get("/nope").starts_with("HTTP/1.1 404"));
        stop.store(true, Ordering::Relaxed);
        handle.join().expect("management thread");
    }
}
