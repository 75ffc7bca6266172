//! `pantera serve-kernel`: the kernel-socket baseline of the HTTPS benchmark (DESIGN.md, "What
//! is measured").
//!
//! The same TLS configuration, the same HTTP decoder and API, the same ledger thread with the
//! same WAL and group commit as `pantera serve`; only the path below TLS differs: a kernel
//! `TcpListener` and one blocking thread per connection instead of XDP, AF_XDP and smoltcp.
//! It is deliberately plain (it is the yardstick, not the product), but it keeps the
//! appliance's rules: responses in request order, 503 with Retry-After when the ledger's
//! queue is full, a bound on connections, a handshake timeout and an idle timeout.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use ledger_svc::api::{self, Action, Role};
use ledger_svc::http::{self, RequestDecoder, Response};
use rustls::ServerConnection;

use crate::committer::{self, Completion, LedgerClient, ReplyTo, Submission};
use crate::config::{Config, Roles};
use crate::metrics::{self, status_label, Metrics};

/// Plaintext read from TLS per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Stack of a connection thread: TLS and HTTP state live on the heap.
const CONN_THREAD_STACK_BYTES: usize = 512 * 1024;
/// How often the main thread looks at `stop`.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Pause after a failed accept (EMFILE, ENOBUFS) so the loop cannot spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);
/// The metrics' queue label for this server's counters.
const QUEUE_LABEL: &str = "kernel";

/// Serves the HTTPS ledger API on `listen` with kernel sockets until `stop` is set (the caller
/// registers SIGTERM/SIGINT on it, as `serve` does), then closes every connection, lets the
/// ledger drain what was submitted, and returns. The management listener
/// (`config.management.listen`) answers /readyz once the ledger has recovered and the port is
/// open.
pub fn serve_kernel(config: &Config, listen: SocketAddr, stop: Arc<AtomicBool>) -> Result<()> {
    let started = Instant::now();
    let metrics = Metrics::new();
    let management = metrics::spawn_management(config.management.listen, metrics.clone(), Arc::clone(&stop))?;
    let tls_settings = config.tls_settings()?;
    let tls = tls_term::server_config(&tls_settings).context("tls")?;

    // The ledger exactly as `serve` runs it: recovered before the port opens. One reply
    // channel per connection slot: the committer routes a reply by `ReplyTo::worker`.
    let connections_max = config.tcp.connections_max;
    let committer::Started { client, replies: reply_rx, thread: ledger_thread } = committer::start(config, connections_max, &metrics)?;

    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let shared = Shared {
        tls,
        handshake_timeout: Duration::from_millis(tls_settings.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(config.tcp.idle_timeout_ms),
        http_limits: config.http_limits(),
        roles: config.roles(),
        ledger: client,
        completions: reply_rx,
        slots: Slots::new(connections_max),
        metrics: metrics.clone(),
        stop: Arc::clone(&stop),
    };
    metrics.ready.set(1);
    log::info!("serving {local} on kernel sockets (baseline), up to {connections_max} connections; ready in {:?}", started.elapsed());

    thread::scope(|scope| {
        let shared = &shared;
        let acceptor = thread::Builder::new()
            .name("accept".to_owned())
            .spawn_scoped(scope, move || accept_loop(scope, &listener, shared))
            .expect("spawn the acceptor");
        while !stop.load(Ordering::Relaxed) && !acceptor.is_finished() {
            thread::sleep(STOP_POLL);
        }
        stop.store(true, Ordering::Relaxed);
        log::info!("stopping");
        metrics.ready.set(0);
        // Wake the acceptor from accept(2) so it sees `stop`.
        let _ = TcpStream::connect_timeout(&wake_address(local), Duration::from_secs(1));
        // Every connection thread blocked in read(2) returns now.
        shared.slots.close_all();
    });
    // Every connection thread has ended; dropping the last ledger client lets the ledger
    // thread drain what was submitted and stop.
    drop(shared);
    let _ = ledger_thread.join();
    let _ = management.join();
    log::info!("stopped cleanly");
    Ok(())
}

/// A listener on 0.0.0.0 is woken through loopback.
fn wake_address(local: SocketAddr) -> SocketAddr {
    let mut a = local;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}

struct Shared {
    tls: Arc<rustls::ServerConfig>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    http_limits: http::Limits,
    roles: Roles,
    ledger: LedgerClient,
    /// Indexed by connection slot.
    completions: Vec<Receiver<Completion>>,
    slots: Slots,
    metrics: Metrics,
    stop: Arc<AtomicBool>,
}

/// The bounded table of connections: a free list of slots and, per busy slot, a handle on its
/// socket so a stop can end a thread blocked in read(2).
struct Slots {
    inner: Mutex<SlotTable>,
}

struct SlotTable {
    free: Vec<usize>,
    sockets: Vec<Option<TcpStream>>,
    /// Per slot: bumped for each connection it holds, so a reply left over from an earlier
    /// connection in the slot is recognised and dropped.
    generation: Vec<u32>,
    closed: bool,
}

impl Slots {
    fn new(count: usize) -> Slots {
        Slots {
            inner: Mutex::new(SlotTable {
                free: (0..count).rev().collect(),
                sockets: (0..count).map(|_| None).collect(),
                generation: vec![0; count],
                closed: false,
            }),
        }
    }

    /// A free slot for `stream` and its new generation, or None at capacity or after
    /// `close_all`.
    fn take(&self, stream: &TcpStream) -> Option<(usize, u32)> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.closed {
            return None;
        }
        let slot = t.free.pop()?;
        t.sockets[slot] = stream.try_clone().ok();
        t.generation[slot] = t.generation[slot].wrapping_add(1);
        Some((slot, t.generation[slot]))
    }

    fn put(&self, slot: usize) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.sockets[slot] = None;
        t.free.push(slot);
    }

    fn close_all(&self) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.closed = true;
        for s in t.sockets.iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop<'scope>(scope: &'scope thread::Scope<'scope, '_>, listener: &TcpListener, shared: &'scope Shared) {
    let tcp = |counter: &str| shared.metrics.tcp.with_label_values(&[QUEUE_LABEL, counter]);
    let gauge = shared.metrics.tcp_connections.with_label_values(&[QUEUE_LABEL]);
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("accept failed: {e}");
                thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        // Past connections_max a new connection is closed at once, like a full listener pool.
        let Some((slot, generation)) = shared.slots.take(&stream) else {
            tcp("refused_at_capacity").inc();
            continue;
        };
        tcp("accepted").inc();
        gauge.inc();
        let gauge = gauge.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{slot}"))
            .stack_size(CONN_THREAD_STACK_BYTES)
            .spawn_scoped(scope, move || {
                serve_connection(shared, Conn { slot, generation }, stream);
                shared.slots.put(slot);
                gauge.dec();
                tcp("closed").inc();
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
            shared.slots.put(slot);
            shared.metrics.tcp_connections.with_label_values(&[QUEUE_LABEL]).dec();
            tcp("closed").inc();
        }
    }
}

/// A response in its request's place: ready, or waiting for the ledger's reply `seq`.
enum Pending {
    Ready(Response),
    Waiting(u64),
}

/// A connection's place: its slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn {
    slot: usize,
    generation: u32,
}

/// Serves one connection to its end.
fn serve_connection(shared: &Shared, id: Conn, mut sock: TcpStream) {
    let slot = id.slot;
    let mut next_seq = 0u64;
    let mut conn = match ServerConnection::new(Arc::clone(&shared.tls)) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot create a TLS session: {e}");
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    let role = match handshake(shared, &mut conn, &mut sock) {
        Ok(role) => role,
        Err(e) => {
            log::debug!("connection {slot}: handshake failed: {e}");
            shared.metrics.tls_errors.with_label_values(&["handshake"]).inc();
            return;
        }
    };
    // From here on a read that waits longer than the idle timeout ends the connection.
    let _ = sock.set_read_timeout(Some(shared.idle_timeout));
    let mut decoder = RequestDecoder::new(shared.http_limits);
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut plaintext = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::new();
    let completions = &shared.completions[slot];
    let result: io::Result<()> = (|| {
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        loop {
            // Ok(0) is the peer's close_notify; a bare FIN or a timeout is an error.
            let n = tls.read(&mut plaintext)?;
            if n == 0 {
                return Ok(());
            }
            decoder.feed(&plaintext[..n]);
            let mut closing = false;
            loop {
                match decoder.poll_request() {
                    Ok(Some(request)) => pending.push_back(dispatch(shared, id, &mut next_seq, role, &request)),
                    Ok(None) => break,
                    Err(e) => {
                        // Answer what came before, then the error, then close (RFC 9112 §9.6).
                        pending.push_back(Pending::Ready(Response::from(&e)));
                        closing = true;
                        break;
                    }
                }
            }
            // Every request decoded so far was submitted before we wait for the first reply,
            // so pipelined requests share a group commit. Replies come back in submission
            // order (one FIFO channel per slot), and responses go out in request order.
            for p in pending.drain(..) {
                let response = match p {
                    Pending::Ready(r) => r,
                    Pending::Waiting(seq) => wait_reply(completions, id, seq)?,
                };
                shared.metrics.http_responses.with_label_values(&[status_label(response.status)]).inc();
                closing |= decoder.encode_response(&response, &mut out);
            }
            if !out.is_empty() {
                tls.write_all(&out)?;
                tls.flush()?;
                out.clear();
            }
            if closing || decoder.is_closed() {
                return Ok(());
            }
            // A client waiting on `Expect: 100-continue` gets it once nothing else is owed
            // (RFC 9110 §10.1.1).
            if decoder.poll_continue() {
                tls.write_all(http::CONTINUE_RESPONSE)?;
                tls.flush()?;
            }
        }
    })();
    if let Err(e) = result {
        log::debug!("connection {slot}: {e}");
    }
    // close_notify (RFC 8446 §6.1), then FIN.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut sock);
    let _ = sock.shutdown(Shutdown::Write);
}

/// The TLS handshake, bounded by `tls.handshake_timeout_ms`; then the client's role.
fn handshake(shared: &Shared, conn: &mut ServerConnection, sock: &mut TcpStream) -> io::Result<Option<Role>> {
    let deadline = Instant::now() + shared.handshake_timeout;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timeout"));
        }
        sock.set_read_timeout(Some(left))?;
        // complete_io sends the alert rustls queued when the handshake fails.
        if conn.complete_io(sock)? == (0, 0) && conn.is_handshaking() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the TLS handshake"));
        }
    }
    let identity = conn.peer_certificates().and_then(|c| c.first()).and_then(tls_term::identity::identity_of);
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "other",
    };
    let resumed = if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) { "true" } else { "false" };
    shared.metrics.tls_handshakes.with_label_values(&[version, resumed]).inc();
    Ok(shared.roles.of(identity.as_deref()))
}

/// A request's response, or its place in the ledger's queue.
fn dispatch(shared: &Shared, id: Conn, next_seq: &mut u64, role: Option<Role>, request: &http::Request) -> Pending {
    let Some(role) = role else {
        return Pending::Ready(api::error_response(403, "forbidden", "this client identity has no role on this appliance"));
    };
    match api::handle(request, role) {
        Action::Respond(response) => Pending::Ready(response),
        Action::Ledger(command) => {
            let seq = *next_seq;
            *next_seq += 1;
            match shared.ledger.submit(Submission { reply_to: reply_to(id, seq), command }) {
                Ok(()) => Pending::Waiting(seq),
                Err(_) => {
                    shared.metrics.ledger_queue_full.inc();
                    let mut r = api::error_response(503, "ledger_busy", "the ledger's queue is full; retry after the indicated delay");
                    r.retry_after_s = Some(1);
                    Pending::Ready(r)
                }
            }
        }
    }
}

/// Where the ledger sends the reply to request `seq` of connection `id`. Each slot is its own
/// committer `worker` (one reply channel per slot).
fn reply_to(id: Conn, seq: u64) -> ReplyTo {
    ReplyTo { worker: id.slot, slot: id.slot, generation: id.generation, seq }
}

/// Blocks until the ledger's reply to `seq` of connection `id` arrives.
fn wait_reply(completions: &Receiver<Completion>, id: Conn, seq: u64) -> io::Result<Response> {
    loop {
        let c = completions
            .recv()
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the ledger thread has stopped"))?;
        if c.reply_to.generation != id.generation {
            // A reply to an earlier connection in this slot that ended before reading it.
            continue;
        }
        if c.reply_to.seq != seq {
            // The committer releases one channel's replies in submission order.
            return Err(io::Error::other(format!("ledger reply {} arrived while waiting for {seq}", c.reply_to.seq)));
        }
        return Ok(c.response);
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::path::Path;

    fn free_port() -> SocketAddr {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind");
        probe.local_addr().expect("addr")
    }

    fn lab_config(home: &Path) -> Config {
        tls_term::certs::init(&home.join("tls"), "10.99.0.2".parse().expect("ip"), false).expect("dev certificates");
        let mut config = Config::lab(home);
        config.management.listen = free_port();
        config.tcp.idle_timeout_ms = 5_000;
        config
    }

    fn client(home: &Path, who: &str) -> Arc<rustls::ClientConfig> {
        let tls = home.join("tls");
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(tls.join("ca.pem")).expect("ca") {
            roots.add(c.expect("pem")).expect("ca cert");
        }
        let chain = CertificateDer::pem_file_iter(tls.join(format!("{who}.pem"))).expect("cert").map(|c| c.expect("pem")).collect();
        let key = PrivateKeyDer::from_pem_file(tls.join(format!("{who}.key"))).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client auth");
        Arc::new(config)
    }

    /// Sends `requests` in one write (pipelined) and reads `count` responses: (status, body).
    fn exchange(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, requests: &str, count: usize) -> Vec<(u16, String)> {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let conn = rustls::ClientConnection::new(Arc::clone(config), ServerName::try_from("pantera.lab").expect("name")).expect("client");
        let mut tls = rustls::StreamOwned::new(conn, sock);
        tls.write_all(requests.as_bytes()).expect("write");
        tls.flush().expect("flush");
        let mut buffer = Vec::new();
        let mut responses = Vec::new();
        let mut chunk = [0u8; 4096];
        while responses.len() < count {
            let text = String::from_utf8_lossy(&buffer).into_owned();
            if let Some(head_end) = text.find("\r\n\r\n") {
                let head = &text[..head_end];
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("length")))
                    .expect("content-length");
                if buffer.len() >= head_end + 4 + length {
                    let status = head[9..12].parse().expect("status");
                    let body = String::from_utf8_lossy(&buffer[head_end + 4..head_end + 4 + length]).into_owned();
                    responses.push((status, body));
                    buffer.drain(..head_end + 4 + length);
                    continue;
                }
            }
            let n = tls.read(&mut chunk).expect("read");
            assert!(n > 0, "closed after {} responses", responses.len());
            buffer.extend_from_slice(&chunk[..n]);
        }
        responses
    }

    fn post(path: &str, body: &str) -> String {
        format!("POST {path} HTTP/1.1\r\nHost: pantera.lab\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }

    #[test]
    fn serves_the_ledger_api_over_kernel_tls_in_order_and_stops() {
        let home = tempfile::tempdir().expect("tempdir");
        let config = lab_config(home.path());
        let listen = free_port();
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (config, stop) = (config.clone(), Arc::clone(&stop));
            thread::spawn(move || serve_kernel(&config, listen, stop))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(listen).is_err() {
            assert!(Instant::now() < deadline, "the baseline never listened");
            assert!(!server.is_finished(), "the baseline stopped: {:?}", server.join());
            thread::sleep(Duration::from_millis(20));
        }
        let writer = client(home.path(), "client");
        let accounts = post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":10},{"id":"2","ledger":1,"code":10}]"#);
        let r = exchange(&writer, listen, &accounts, 1);
        assert_eq!(r[0].0, 200, "{r:?}");
        assert_eq!(r[0].1.matches("\"created\"").count(), 2, "{r:?}");

        // Three pipelined transfers, then a read: answered in request order, the read after
        // the three are durable.
        let mut pipelined = String::new();
        for (id, amount) in [(10, 5), (11, 7), (10, 9)] {
            let body = format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"{amount}","ledger":1,"code":1}}]"#);
            pipelined.push_str(&post("/v1/transfers", &body));
        }
        pipelined.push_str("GET /v1/accounts/2 HTTP/1.1\r\nHost: pantera.lab\r\n\r\n");
        let r = exchange(&writer, listen, &pipelined, 4);
        assert!(r[0].1.contains("\"created\""), "{r:?}");
        assert!(r[1].1.contains("\"created\""), "{r:?}");
        // Same id, different amount: TigerBeetle's exists_with_different_amount, in third place.
        assert!(r[2].1.contains("exists_with_different_amount"), "{r:?}");
        assert_eq!(r[3].0, 200);
        assert!(r[3].1.contains(r#""credits_posted":"12""#), "{r:?}");

        // The reader may read but not write.
        let reader = client(home.path(), "reader");
        let r = exchange(&reader, listen, &post("/v1/transfers", "[]"), 1);
        assert_eq!(r[0].0, 403, "{r:?}");

        // A malformed request gets its 4xx and the connection closes after it.
        let r = exchange(&writer, listen, "POST /v1/transfers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 1);
        assert_eq!(r[0].0, 411, "{r:?}");

        stop.store(true, Ordering::Relaxed);
        server.join().expect("no panic").expect("clean stop");
    }

    #[test]
    fn a_full_ledger_queue_is_answered_503_with_retry_after() {
        let home = tempfile::tempdir().expect("tempdir");
        let config = lab_config(home.path());
        // A queue of one that nobody drains: the second submission finds it full.
        let committer::Channels { client: ledger, submissions: _rx, replies_tx: _reply_tx, replies_rx: reply_rx } = committer::channels(1, 1);
        let shared = Shared {
            tls: tls_term::server_config(&config.tls_settings().expect("settings")).expect("tls"),
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            http_limits: config.http_limits(),
            roles: config.roles(),
            ledger,
            completions: reply_rx,
            slots: Slots::new(1),
            metrics: Metrics::new(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut decoder = RequestDecoder::new(shared.http_limits);
        let body = r#"[{"id":"1","ledger":1,"code":10}]"#;
        decoder.feed(post("/v1/accounts", body).repeat(2).as_bytes());
        let mut seq = 0;
        let id = Conn { slot: 0, generation: 1 };
        let first = decoder.poll_request().expect("valid").expect("complete");
        let second = decoder.poll_request().expect("valid").expect("complete");
        assert!(matches!(dispatch(&shared, id, &mut seq, Some(Role::Write), &first), Pending::Waiting(0)));
        match dispatch(&shared, id, &mut seq, Some(Role::Write), &second) {
            Pending::Ready(r) => {
                assert_eq!(r.status, 503);
                assert_eq!(r.retry_after_s, Some(1));
            }
            Pending::Waiting(_) => panic!("the full queue took a submission"),
        }
        assert_eq!(shared.metrics.ledger_queue_full.get(), 1);
        // No role: 403 without touching the ledger.
        assert!(matches!(dispatch(&shared, id, &mut seq, None, &first), Pending::Ready(Response { status: 403, .. })));
    }

    #[test]
    fn slots_are_bounded_and_each_connection_gets_a_new_generation() {
        let slots = Slots::new(2);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let a = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (s0, g0) = slots.take(&a).expect("free slot");
        let (s1, _) = slots.take(&a).expect("free slot");
        assert_ne!(s0, s1);
        assert!(slots.take(&a).is_none(), "past connections_max");
        slots.put(s0);
        assert_eq!(slots.take(&a), Some((s0, g0.wrapping_add(1))));
        slots.close_all();
        slots.put(s1);
        assert!(slots.take(&a).is_none(), "closed");
    }

    #[test]
    fn a_stale_reply_is_dropped_and_the_awaited_one_returned() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let id = Conn { slot: 2, generation: 7 };
        let old = Conn { slot: 2, generation: 6 };
        for (conn, seq, status) in [(old, 0, 500), (old, 1, 500), (id, 0, 200)] {
            tx.send(Completion { reply_to: reply_to(conn, seq), response: Response::json(status, Vec::new()) }).expect("send");
        }
        assert_eq!(wait_reply(&rx, id, 0).expect("reply").status, 200);
        tx.send(Completion { reply_to: reply_to(id, 5), response: Response::json(200, Vec::new()) }).expect("send");
        assert!(wait_reply(&rx, id, 1).is_err(), "out of order");
        drop(tx);
        assert!(wait_reply(&rx, id, 2).is_err(), "ledger gone");
    }
}
