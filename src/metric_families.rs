//! The metric families that replace the old `counter`-labelled ones, one metric per meaning,
//! and the metrics about the process itself: build info, process resources, certificate
//! expiry, ledger events by result.
//!
//! Prometheus conventions: names in base units ending in `_total` for counters; a label only
//! where its values are the same kind of thing and their sum means something (the reasons a
//! connection was refused, the reasons a packet was dropped), never a `counter` label that
//! mixes frames, bytes and events under one name.

use prometheus::{Counter, CounterVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use rustls::pki_types::CertificateDer;

use crate::metrics::{sync_counter, Metrics};

/// The version `pantera --version` prints: the crate version and the git commit it was built
/// from (`-dirty` when the tree had changes, `unknown` outside git; see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PANTERA_COMMIT"),
    ")"
);
/// The commit alone, for `pantera_build_info`.
pub const COMMIT: &str = env!("PANTERA_COMMIT");

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric");
    m
}

/// One counter per queue.
fn per_queue(registry: &Registry, name: &str, help: &str) -> IntCounterVec {
    counter_vec(registry, name, help, &["queue"])
}

/// The userspace TCP/IP stack's counters, by queue (`tcp::StackCounters`).
#[derive(Clone, Debug)]
pub struct TcpMetrics {
    pub rx_frames: IntCounterVec,
    pub rx_bytes: IntCounterVec,
    pub tx_frames: IntCounterVec,
    pub tx_bytes: IntCounterVec,
    /// Connections that completed the handshake.
    pub connections_accepted: IntCounterVec,
    /// Connections that ended, however they ended (accepted minus open).
    pub connections_closed: IntCounterVec,
    /// Open connections aborted after the idle timeout.
    pub idle_timeouts: IntCounterVec,
    /// Connections aborted by the application (a TLS failure, a deadline).
    pub connections_aborted: IntCounterVec,
    /// Handshakes that left LISTEN but never completed (RST, timeout); includes
    /// `handshake_timeouts`.
    pub handshakes_failed: IntCounterVec,
    pub handshake_timeouts: IntCounterVec,
    /// Connections refused, `reason`: at_capacity, per_source, listen_pool_empty.
    pub connections_refused: IntCounterVec,
    pub lingering_reclaimed: IntCounterVec,
    pub arp_announcements: IntCounterVec,
    pub ingress_limit_hits: IntCounterVec,
    pub neighbours_learned: IntCounterVec,
    pub neighbour_rebinds_refused: IntCounterVec,
    pub neighbours_evicted: IntCounterVec,
    pub neighbours_table_full: IntCounterVec,
    pub syn_cookies_sent: IntCounterVec,
    pub syn_cookies_accepted: IntCounterVec,
    pub syn_cookies_unsent: IntCounterVec,
    /// Sockets the stack looked at because they were ready, `pass`: egress or service.
    pub socket_visits: IntCounterVec,
    pub table_walks: IntCounterVec,
}

impl TcpMetrics {
    pub fn new(r: &Registry) -> TcpMetrics {
        TcpMetrics {
            rx_frames: per_queue(r, "tcp_rx_frames_total", "Frames received by the userspace TCP/IP stack, by queue."),
            rx_bytes: per_queue(r, "tcp_rx_bytes_total", "Bytes of the frames received by the userspace TCP/IP stack, by queue."),
            tx_frames: per_queue(r, "tcp_tx_frames_total", "Frames sent by the userspace TCP/IP stack, by queue."),
            tx_bytes: per_queue(r, "tcp_tx_bytes_total", "Bytes of the frames sent by the userspace TCP/IP stack, by queue."),
            connections_accepted: per_queue(r, "tcp_connections_accepted_total", "TCP connections that completed the handshake, by queue."),
            connections_closed: per_queue(r, "tcp_connections_closed_total", "TCP connections that ended (however they ended), by queue."),
            idle_timeouts: per_queue(r, "tcp_idle_timeouts_total", "Open TCP connections aborted after the idle timeout, by queue."),
            connections_aborted: per_queue(r, "tcp_connections_aborted_total", "TCP connections aborted by the application (TLS failure, deadline), by queue."),
            handshakes_failed: per_queue(r, "tcp_handshakes_failed_total", "TCP handshakes that never completed (RST or timeout), by queue."),
            handshake_timeouts: per_queue(r, "tcp_handshake_timeouts_total", "TCP handshakes aborted at the handshake timeout, by queue."),
            connections_refused: counter_vec(
                r,
                "tcp_connections_refused_total",
                "TCP connections refused, by queue and reason (at_capacity, per_source, listen_pool_empty).",
                &["queue", "reason"],
            ),
            lingering_reclaimed: per_queue(r, "tcp_lingering_reclaimed_total", "TIME-WAIT sockets cut short to listen again, by queue."),
            arp_announcements: per_queue(r, "tcp_arp_announcements_total", "Gratuitous ARP announcements sent, by queue."),
            ingress_limit_hits: per_queue(r, "tcp_ingress_limit_hits_total", "Stack polls that stopped at the per-poll frame bound, by queue."),
            neighbours_learned: per_queue(r, "tcp_neighbours_learned_total", "Neighbours learned from received frames, by queue."),
            neighbour_rebinds_refused: per_queue(
                r,
                "tcp_neighbour_rebinds_refused_total",
                "Frames or ARP that showed another MAC for a protected neighbour, refused, by queue.",
            ),
            neighbours_evicted: per_queue(r, "tcp_neighbours_evicted_total", "Idle neighbours evicted to make room, by queue."),
            neighbours_table_full: per_queue(r, "tcp_neighbours_table_full_total", "New neighbours not learned because the table was full, by queue."),
            syn_cookies_sent: per_queue(r, "tcp_syn_cookies_sent_total", "SYNs answered with a SYN cookie, by queue."),
            syn_cookies_accepted: per_queue(r, "tcp_syn_cookies_accepted_total", "Connections opened from a valid SYN cookie, by queue."),
            syn_cookies_unsent: per_queue(r, "tcp_syn_cookies_unsent_total", "Cookie SYN-ACKs dropped for want of a transmit buffer, by queue."),
            socket_visits: counter_vec(
                r,
                "tcp_socket_visits_total",
                "Sockets the stack looked at because they were ready, by queue and pass (egress, service).",
                &["queue", "pass"],
            ),
            table_walks: per_queue(r, "tcp_table_walks_total", "Walks of the whole socket table, by queue."),
        }
    }

    /// Brings the series of queue `q` up to the stack's cumulative counters.
    pub fn sync(&self, q: &str, c: &tcp::StackCounters) {
        let one = |family: &IntCounterVec, value: u64| {
            sync_counter(&family.with_label_values(&[q]), value)
        };
        let two = |family: &IntCounterVec, label: &str, value: u64| {
            sync_counter(&family.with_label_values(&[q, label]), value)
        };
        one(&self.rx_frames, c.rx_frames);
        one(&self.rx_bytes, c.rx_bytes);
        one(&self.tx_frames, c.tx_frames);
        one(&self.tx_bytes, c.tx_bytes);
        one(&self.connections_accepted, c.accepted);
        one(&self.connections_closed, c.closed);
        one(&self.idle_timeouts, c.idle_timeouts);
        one(&self.connections_aborted, c.aborted);
        one(&self.handshakes_failed, c.handshakes_failed);
        one(&self.handshake_timeouts, c.handshake_timeouts);
        two(
            &self.connections_refused,
            "at_capacity",
            c.refused_at_capacity,
        );
        two(
            &self.connections_refused,
            "per_source",
            c.refused_per_source,
        );
        two(
            &self.connections_refused,
            "listen_pool_empty",
            c.refused_listen_pool_empty,
        );
        one(&self.lingering_reclaimed, c.lingering_reclaimed);
        one(&self.arp_announcements, c.announcements);
        one(&self.ingress_limit_hits, c.ingress_limit_hits);
        one(&self.neighbours_learned, c.neighbours_learned);
        one(&self.neighbour_rebinds_refused, c.neighbour_rebinds_refused);
        one(&self.neighbours_evicted, c.neighbours_evicted);
        one(&self.neighbours_table_full, c.neighbours_table_full);
        one(&self.syn_cookies_sent, c.syn_cookies_sent);
        one(&self.syn_cookies_accepted, c.syn_cookies_accepted);
        one(&self.syn_cookies_unsent, c.syn_cookies_unsent);
        two(&self.socket_visits, "egress", c.egress_visits);
        two(&self.socket_visits, "service", c.service_visits);
        one(&self.table_walks, c.table_walks);
    }
}

/// The AF_XDP socket counters, by queue (the worker's `Port::counters`).
#[derive(Clone, Debug)]
pub struct XskMetrics {
    pub rx_frames: IntCounterVec,
    pub tx_frames: IntCounterVec,
    /// Frames the kernel dropped for the socket, `reason`: ring_full (the RX ring was full:
    /// the worker is too slow), other (the kernel's rx_dropped).
    pub rx_dropped: IntCounterVec,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: IntCounterVec,
    pub tx_no_frame: IntCounterVec,
    /// Invalid descriptors, `ring`: rx (the kernel's count) or tx (the kernel's), or
    /// userspace (ours: a frame the ring did not hold).
    pub invalid_descriptors: IntCounterVec,
    pub wakeup_errors: IntCounterVec,
}

impl XskMetrics {
    pub fn new(r: &Registry) -> XskMetrics {
        XskMetrics {
            rx_frames: per_queue(r, "xsk_rx_frames_total", "Frames received on the AF_XDP socket and handed to the stack, by queue."),
            tx_frames: per_queue(r, "xsk_tx_frames_total", "Frames put on the AF_XDP TX ring, by queue."),
            rx_dropped: counter_vec(
                r,
                "xsk_rx_dropped_total",
                "Frames the kernel dropped for the AF_XDP socket, by queue and reason (ring_full, other).",
                &["queue", "reason"],
            ),
            fill_ring_empty: per_queue(r, "xsk_fill_ring_empty_total", "Times the kernel found the AF_XDP fill ring empty, by queue."),
            tx_no_frame: per_queue(r, "xsk_tx_no_frame_total", "Transmits refused for want of a free UMEM frame, by queue."),
            invalid_descriptors: counter_vec(
                r,
                "xsk_invalid_descriptors_total",
                "Invalid AF_XDP ring descriptors, by queue and ring (rx, tx: the kernel's; userspace: ours).",
                &["queue", "ring"],
            ),
            wakeup_errors: per_queue(r, "xsk_wakeup_errors_total", "Failed AF_XDP TX kicks or fill wakeups, by queue."),
        }
    }

    /// Brings the series of queue `q` up to the port's cumulative counters (by the names
    /// `Port::counters` gives; a name this table does not know is left out).
    pub fn sync(&self, q: &str, counters: &[(&'static str, u64)]) {
        for &(name, value) in counters {
            let series = match name {
                "rx_frames" => self.rx_frames.with_label_values(&[q]),
                "tx_frames" => self.tx_frames.with_label_values(&[q]),
                "rx_dropped" => self.rx_dropped.with_label_values(&[q, "other"]),
                "rx_ring_full" => self.rx_dropped.with_label_values(&[q, "ring_full"]),
                "fill_ring_empty" => self.fill_ring_empty.with_label_values(&[q]),
                "tx_no_frame" => self.tx_no_frame.with_label_values(&[q]),
                "rx_invalid" => self.invalid_descriptors.with_label_values(&[q, "rx"]),
                "tx_invalid" => self.invalid_descriptors.with_label_values(&[q, "tx"]),
                "ring_desc_invalid" => self
                    .invalid_descriptors
                    .with_label_values(&[q, "userspace"]),
                "wakeup_errors" => self.wakeup_errors.with_label_values(&[q]),
                _ => continue,
            };
            sync_counter(&series, value);
        }
    }
}

/// Splits an XDP counter name (`redirect_tcp`, `drop_syn_rate`, `pass_other`) into the
/// `action` and `reason` labels of `xdp_packets_total`: ("redirect", "tcp"), ...
pub fn xdp_labels(name: &str) -> (&str, &str) {
    for action in ["redirect", "drop", "pass"] {
        if let Some(reason) = name
            .strip_prefix(action)
            .and_then(|rest| rest.strip_prefix('_'))
        {
            return (action, reason);
        }
    }
    ("other", name)
}

/// Brings `xdp_packets_total{action,reason}` up to the steering program's counters.
pub fn sync_xdp(metrics: &Metrics, counters: &[(&'static str, u64)]) {
    for &(name, value) in counters {
        let (action, reason) = xdp_labels(name);
        sync_counter(
            &metrics.xdp_packets.with_label_values(&[action, reason]),
            value,
        );
    }
}

/// Registers `build_info` (set to 1) and the process collector (CPU, memory, open fds, start
/// time), which goes in `process_registry`: the process metrics keep their standard names,
/// without the `pantera_` prefix.
pub fn register_process(registry: &Registry, process_registry: &Registry) -> IntGaugeVec {
    let build_info = IntGaugeVec::new(
        Opts::new(
            "build_info",
            "Always 1: the version and git commit of the running binary.",
        ),
        &["version", "commit"],
    )
    .expect("valid metric");
    registry
        .register(Box::new(build_info.clone()))
        .expect("unique metric");
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), COMMIT])
        .set(1);
    process_registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("unique metric");
    build_info
}

/// The certificate gauges' `cert` label values.
pub const CERT_SERVER: &str = "server";
pub const CERT_CLIENT_CA: &str = "client_ca";

/// Sets `tls_certificate_expiry_timestamp_seconds{cert="server"}` to the notAfter of the
/// chain's leaf (the first certificate). Called at start and again when the certificates are
/// reloaded.
pub fn set_cert_expiry(metrics: &Metrics, chain: &[CertificateDer<'_>]) -> anyhow::Result<()> {
    set_expiry(metrics, CERT_SERVER, chain.first().into_iter())
}

/// Sets `tls_certificate_expiry_timestamp_seconds{cert="client_ca"}` to the earliest notAfter
/// among the CA certificates clients are verified against: the first one to expire is the
/// one that stops clients getting in.
pub fn set_client_ca_expiry(metrics: &Metrics, cas: &[CertificateDer<'_>]) -> anyhow::Result<()> {
    set_expiry(metrics, CERT_CLIENT_CA, cas.iter())
}

fn set_expiry<'a>(
    metrics: &Metrics,
    cert: &str,
    certs: impl Iterator<Item = &'a CertificateDer<'a>>,
) -> anyhow::Result<()> {
    let mut earliest: Option<i64> = None;
    for der in certs {
        let not_after = tls_term::certs::not_after_unix(der)?;
        earliest = Some(earliest.map_or(not_after, |e| e.min(not_after)));
    }
    let Some(not_after) = earliest else {
        anyhow::bail!("no {cert} certificate to read the expiry of")
    };
    metrics
        .tls_certificate_expiry
        .with_label_values(&[cert])
        .set(not_after);
    Ok(())
}

/// Reads the server chain and the client CA (when configured) named by `settings` and sets
/// their expiry gauges; the reload path calls this with the new settings.
pub fn record_cert_expiry(
    metrics: &Metrics,
    settings: &tls_term::TlsSettings,
) -> anyhow::Result<()> {
    let chain = tls_term::load_certs("certificate chain", &settings.cert_chain)?;
    set_cert_expiry(metrics, &chain)?;
    match &settings.client_ca {
        Some(path) => set_client_ca_expiry(metrics, &tls_term::load_certs("client CA", path)?)?,
        None => {
            let _ = metrics
                .tls_certificate_expiry
                .remove_label_values(&[CERT_CLIENT_CA]);
        }
    }
    Ok(())
}

/// The ledger families the ledger thread counts.
#[derive(Clone, Debug)]
pub struct LedgerCounts {
    /// Events in applied write batches, by `operation` (create_accounts, create_transfers)
    /// and `result` (the ledger's result code: ok, exceeds_credits, ...).
    pub events: IntCounterVec,
    /// Queries (GETs) answered by the ledger thread.
    pub queries: prometheus::IntCounter,
}

impl LedgerCounts {
    pub fn new(r: &Registry) -> LedgerCounts {
        let events = counter_vec(
            r,
            "ledger_events_total",
            "Events in write batches applied by the ledger, by operation and result code.",
            &["operation", "result"],
        );
        let queries = prometheus::IntCounter::new(
            "ledger_queries_total",
            "Queries (reads) answered by the ledger thread.",
        )
        .expect("valid metric");
        r.register(Box::new(queries.clone()))
            .expect("unique metric");
        LedgerCounts { events, queries }
    }

    /// Counts the events of one applied operation by result code: one series update per
    /// distinct code, not per event.
    pub fn count_applied(&self, operation: &ledger_svc::Operation, reply: &ledger_svc::api::Reply) {
        let ledger_svc::api::Reply::Created(results) = reply else {
            return;
        };
        let name = match operation {
            ledger_svc::Operation::CreateAccounts(_) => "create_accounts",
            ledger_svc::Operation::CreateTransfers(_) => "create_transfers",
        };
        // Result codes are a small fixed set; most batches carry one or two of them. Counted
        // on the stack (this runs for every reply on the ledger thread): a code past the first
        // `CODES_MAX` distinct ones of a batch goes straight to its counter.
        const CODES_MAX: usize = 8;
        let mut by_code = [("", 0u64); CODES_MAX];
        let mut codes = 0;
        for result in results {
            match by_code[..codes].iter_mut().find(|(code, _)| *code == result.status) {
                Some((_, n)) => *n += 1,
                None if codes < CODES_MAX => {
                    by_code[codes] = (result.status, 1);
                    codes += 1;
                }
                None => self.events.with_label_values(&[name, result.status]).inc(),
            }
        }
        for &(code, n) in &by_code[..codes] {
            self.events.with_label_values(&[name, code]).inc_by(n);
        }
    }
}

/// Brings a float counter of seconds up to a cumulative count of microseconds owned elsewhere
/// (one writer per series, as `sync_counter`).
pub fn sync_seconds_from_us(counter: &Counter, micros: u64) {
    let target = micros as f64 / 1e6;
    let current = counter.get();
    if target > current {
        counter.inc_by(target - current);
    }
}

/// `tls_handshake_step_seconds_total{queue}`: the worker time spent in handshake steps.
pub fn handshake_step_seconds(r: &Registry) -> CounterVec {
    let m = CounterVec::new(
        Opts::new(
            "tls_handshake_step_seconds_total",
            "Time spent in TLS handshake steps (crypto), by queue.",
        ),
        &["queue"],
    )
    .expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

/// Registers an integer gauge family.
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_counter_names_split_into_action_and_reason() {
        assert_eq!(xdp_labels("redirect_tcp"), ("redirect", "tcp"));
        assert_eq!(
            xdp_labels("redirect_arp_request"),
            ("redirect", "arp_request")
        );
        assert_eq!(xdp_labels("drop_syn_rate"), ("drop", "syn_rate"));
        assert_eq!(xdp_labels("pass_other"), ("pass", "other"));
        assert_eq!(xdp_labels("dropped"), ("other", "dropped"));
    }

    #[test]
    fn every_steering_counter_has_a_known_action() {
        for c in dataplane::SteerCounter::ALL {
            let (action, reason) = xdp_labels(c.name());
            assert!(
                ["redirect", "drop", "pass"].contains(&action),
                "{}",
                c.name()
            );
            assert!(!reason.is_empty(), "{}", c.name());
        }
    }

    #[test]
    fn stack_counters_land_in_one_metric_per_meaning() {
        let m = Metrics::new();
        let c = tcp::StackCounters {
            accepted: 7,
            refused_per_source: 2,
            refused_at_capacity: 1,
            rx_bytes: 1500,
            ..Default::default()
        };
        m.tcp.sync("0", &c);
        m.tcp.sync("0", &c);
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(
            text.contains("pantera_tcp_connections_accepted_total{queue=\"0\"} 7"),
            "{text}"
        );
        assert!(
            text.contains(
                "pantera_tcp_connections_refused_total{queue=\"0\",reason=\"per_source\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pantera_tcp_connections_refused_total{queue=\"0\",reason=\"at_capacity\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("pantera_tcp_rx_bytes_total{queue=\"0\"} 1500"),
            "{text}"
        );
        assert!(
            !text.contains("counter=\""),
            "no counter label is left: {text}"
        );
    }

    #[test]
    fn xsk_counters_map_by_name() {
        let m = Metrics::new();
        m.xsk.sync(
            "1",
            &[
                ("rx_frames", 10),
                ("rx_ring_full", 3),
                ("rx_dropped", 1),
                ("tx_invalid", 2),
                ("unheard_of", 9),
            ],
        );
        let text = String::from_utf8(m.render()).expect("utf-8");
        assert!(
            text.contains("pantera_xsk_rx_frames_total{queue=\"1\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("pantera_xsk_rx_dropped_total{queue=\"1\",reason=\"ring_full\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("pantera_xsk_rx_dropped_total{queue=\"1\",reason=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pantera_xsk_invalid_descriptors_total{queue=\"1\",ring=\"tx\"} 2"),
            "{text}"
        );
        assert!(!text.contains("unheard_of"), "{text}");
    }

    #[test]
    fn build_info_and_process_metrics_are_exported() {
        let text = String::from_utf8(Metrics::new().render()).expect("utf-8");
        let line = format!(
            "pantera_build_info{{commit=\"{COMMIT}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "{line} in {text}");
        assert!(!COMMIT.is_empty());
        // The standard process metrics, without the pantera_ prefix.
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} in {text}"
            );
        }
    }

    #[test]
    fn ledger_events_are_counted_by_operation_and_result() {
        use ledger_svc::api::{EventResult, Reply};
        use ledger_svc::Operation;
        let m = Metrics::new();
        let ok = EventResult {
            status: "ok",
            timestamp: Some(1),
        };
        let short = EventResult {
            status: "exceeds_credits",
            timestamp: None,
        };
        let reply = Reply::Created(vec![ok, short, ok, ok]);
        m.ledger
            .count_applied(&Operation::CreateTransfers(Vec::new()), &reply);
        m.ledger.count_applied(
            &Operation::CreateAccounts(Vec::new()),
            &Reply::Created(vec![short]),
        );
        let events = |op: &str, code: &str| m.ledger.events.with_label_values(&[op, code]).get();
        assert_eq!(events("create_transfers", "ok"), 3);
        assert_eq!(events("create_transfers", "exceeds_credits"), 1);
        assert_eq!(events("create_accounts", "exceeds_credits"), 1);
    }

    #[test]
    fn a_batch_with_more_distinct_codes_than_the_stack_holds_counts_them_all() {
        use ledger_svc::api::{EventResult, Reply};
        use ledger_svc::Operation;
        let m = Metrics::new();
        let codes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
        // Each code twice, interleaved: codes past the eighth take the direct path.
        let results: Vec<EventResult> =
            codes.iter().chain(codes.iter()).map(|&status| EventResult { status, timestamp: None }).collect();
        m.ledger.count_applied(&Operation::CreateTransfers(Vec::new()), &Reply::Created(results));
        for code in codes {
            assert_eq!(m.ledger.events.with_label_values(&["create_transfers", code]).get(), 2, "{code}");
        }
    }

    #[test]
    fn certificate_expiry_is_the_leaf_not_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = tls_term::certs::init(dir.path(), "10.99.0.2".parse().expect("ip"), false)
            .expect("dev certs");
        let m = Metrics::new();
        let settings = tls_term::TlsSettings::lab(dir.path());
        record_cert_expiry(&m, &settings).expect("expiry");
        let server = m
            .tls_certificate_expiry
            .with_label_values(&[CERT_SERVER])
            .get();
        let ca = m
            .tls_certificate_expiry
            .with_label_values(&[CERT_CLIENT_CA])
            .get();
        let now = std::time::UNIX_EPOCH.elapsed().expect("clock").as_secs() as i64;
        // The dev leaf is valid for months, the dev CA for longer: both in the future, the
        // leaf first.
        assert!(server > now + 86_400, "server expiry {server}, now {now}");
        assert!(ca >= server, "client CA expiry {ca}, server {server}");
        let chain = tls_term::load_certs("certificate chain", &paths.server_cert).expect("chain");
        assert!(
            set_cert_expiry(&m, &chain[..0]).is_err(),
            "an empty chain is an error, not a panic"
        );
        assert!(
            set_cert_expiry(&m, &[CertificateDer::from(vec![1u8, 2, 3])]).is_err(),
            "garbage is an error"
        );
    }
}
