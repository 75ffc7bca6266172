//! `pantera serve-kernel`: the kernel-socket baseline of the HTTPS benchmark (docs/design.md, "What
//! is measured").
//!
//! The same TLS configuration, the same HTTP decoder and API, the same ledger thread with the
//! same WAL and group commit as `pantera serve`; only the path below TLS differs: a kernel
//! `TcpListener` and one blocking thread per connection instead of XDP, AF_XDP and smoltcp.
//! It is deliberately plain (it is the yardstick, not the product), but it keeps the
//! appliance's rules: responses in request order, 503 with Retry-After when the ledger's
//! queue is full, a bound on connections, a handshake timeout and an idle timeout.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::Receiver;
use ledger_svc::connection::{Budget, Connection, ConnectionLimits};

use crate::committer::{self, Completion, LedgerClient, ReplyTo, Submission};
use crate::config::Config;
use crate::metrics::{self, record_events, Metrics};

/// Ciphertext read from the socket, and written to it, per call.
const IO_CHUNK_BYTES: usize = 16 * 1024;
/// A pause when a connection can move nothing at all (the shared budget is spent and it
/// awaits no reply): the others drain meanwhile.
const BUDGET_WAIT: Duration = Duration::from_millis(1);
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
pub fn serve_kernel(config: &Config, lab_home: Option<&std::path::Path>, listen: SocketAddr, stop: Arc<AtomicBool>) -> Result<()> {
    let started = Instant::now();
    // The data directory first: a missing, unformatted or foreign one refuses the start.
    let storage = committer::open_storage(config, lab_home)?;
    let metrics = Metrics::new();
    let management = metrics::spawn_management(config.management.listen, metrics.clone(), Arc::clone(&stop))?;
    // The deep check of `serve` and `check-config` (src/check.rs); its warnings go to the log.
    for warning in crate::check::deep(config, crate::check::DataDir::Skip, std::time::SystemTime::now())? {
        log::warn!("{warning}");
    }
    let tls_settings = config.tls_settings()?;
    let server_tls = tls_term::server_tls(&tls_settings).context("tls")?;
    let policy = Arc::new(config.client_policy(server_tls.trust.clone())?);
    let tls = server_tls.config;

    // The ledger exactly as `serve` runs it: recovered before the port opens. One reply
    // channel per connection slot: the committer routes a reply by `ReplyTo::worker`.
    let connections_max = config.tcp.connections_max;
    let committer::Started { client, replies: reply_rx, thread: ledger_thread } =
        committer::prepare(config, storage, connections_max, &metrics)?.spawn()?;

    let listener = TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    let shared = Shared {
        tls,
        limits: config.connection_limits(),
        roles: policy,
        budget: config.queue_budget(),
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
            crate::logging::flush_suppressed();
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
    limits: ConnectionLimits,
    roles: Arc<tls_term::ClientPolicy>,
    /// One budget for every connection of this server, as for one queue of `serve`.
    budget: Budget,
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
    let tcp = &shared.metrics.tcp;
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
            tcp.connections_refused.with_label_values(&[QUEUE_LABEL, "at_capacity"]).inc();
            continue;
        };
        tcp.connections_accepted.with_label_values(&[QUEUE_LABEL]).inc();
        gauge.inc();
        let gauge = gauge.clone();
        let spawned = thread::Builder::new()
            .name(format!("conn-{slot}"))
            .stack_size(CONN_THREAD_STACK_BYTES)
            .spawn_scoped(scope, move || {
                serve_connection(shared, Conn { slot, generation }, stream);
                shared.slots.put(slot);
                gauge.dec();
                tcp.connections_closed.with_label_values(&[QUEUE_LABEL]).inc();
            });
        if let Err(e) = spawned {
            log::warn!("cannot start a connection thread: {e}");
            shared.slots.put(slot);
            shared.metrics.tcp_connections.with_label_values(&[QUEUE_LABEL]).dec();
            tcp.connections_closed.with_label_values(&[QUEUE_LABEL]).inc();
        }
    }
}

/// A connection's place: its slot and the slot's generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn {
    slot: usize,
    generation: u32,
}

/// The connection's slot and peer for a log line (a syscall, made only when a line is written).
fn conn_fields(id: Conn, sock: &TcpStream) -> crate::logging::ConnFields {
    crate::logging::ConnFields { slot: id.slot, peer: sock.peer_addr().ok() }
}

/// Serves one connection to its end: the same sans-IO `Connection` the appliance's workers
/// drive, over a blocking kernel socket.
fn serve_connection(shared: &Shared, id: Conn, mut sock: TcpStream) {
    let mut conn = match Connection::new(&shared.tls, shared.limits, Arc::clone(&shared.roles), shared.budget.clone(), Instant::now()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("cannot create a TLS session: {e}");
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    // A client that stops reading is cut off once its socket's send buffer stays full this long.
    let _ = sock.set_write_timeout(Some(shared.limits.idle_timeout));
    let result = drive(shared, id, &mut conn, &mut sock);
    if let Err(e) = result {
        log::debug!("connection {}: {e}", id.slot);
    }
    // close_notify (RFC 8446 §6.1) if it is not out yet, then FIN.
    conn.close();
    let mut out = [0u8; IO_CHUNK_BYTES];
    loop {
        let n = conn.poll_ciphertext(&mut out);
        if n == 0 || sock.write_all(&out[..n]).is_err() {
            break;
        }
    }
    // What the drive and the close did (a response `close` still sent, a TLS error).
    let _ = record_events(&mut conn, &shared.metrics, || conn_fields(id, &sock), |_| {});
    let _ = sock.shutdown(Shutdown::Write);
}

/// The connection's loop: submissions out, ciphertext out, replies in, ciphertext in, until the
/// connection is closed or the socket fails.
fn drive(shared: &Shared, id: Conn, conn: &mut Connection, sock: &mut TcpStream) -> io::Result<()> {
    let completions = &shared.completions[id.slot];
    let mut rx = vec![0u8; IO_CHUNK_BYTES];
    // Received bytes the connection has not taken yet (backpressure): offered again first.
    let (mut rx_start, mut rx_end) = (0, 0);
    let mut tx = vec![0u8; IO_CHUNK_BYTES];
    let mut eof = false;
    loop {
        let mut moved = false;
        while let Some(s) = conn.poll_submission() {
            moved = true;
            match shared.ledger.submit(Submission { reply_to: reply_to(id, s.seq), command: s.command }) {
                Ok(()) => {}
                Err(_) => {
                    shared.metrics.ledger_queue_full.inc();
                    conn.handle_busy(Instant::now(), s.seq);
                }
            }
        }
        loop {
            let n = conn.poll_ciphertext(&mut tx);
            if n == 0 {
                break;
            }
            sock.write_all(&tx[..n])?;
            moved = true;
        }
        let _ = record_events(conn, &shared.metrics, || conn_fields(id, sock), |_| {});
        if conn.is_closed() {
            return Ok(());
        }
        if conn.awaiting() > 0 {
            // Every submission is out; its replies come back on this slot's channel.
            let c = completions.recv().map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the ledger thread has stopped"))?;
            // A reply to an earlier connection in this slot that ended before reading it is dropped.
            if c.reply_to.generation == id.generation {
                conn.handle_reply(Instant::now(), c.reply_to.seq, &c.reply);
            }
            continue;
        }
        if rx_start < rx_end {
            let n = conn.handle_ciphertext(Instant::now(), &rx[rx_start..rx_end]);
            rx_start += n;
            if n > 0 {
                continue;
            }
        }
        if eof {
            // Nothing more will arrive; what the connection still owes has been offered.
            if !moved {
                return Ok(());
            }
            continue;
        }
        if rx_start < rx_end || conn.is_held_back() {
            // Held back by the shared budget, with nothing of its own in flight: let the
            // other connections drain, then look again.
            if !moved {
                thread::sleep(BUDGET_WAIT);
                conn.resume(Instant::now());
                if conn.poll_at().is_some_and(|at| at <= Instant::now()) {
                    conn.handle_timeout(Instant::now());
                }
            }
            if rx_start < rx_end || conn.is_held_back() {
                continue;
            }
        }
        // Wait for bytes until the connection's next deadline.
        let now = Instant::now();
        let timeout = conn.poll_at().map(|at| at.saturating_duration_since(now)).unwrap_or(shared.limits.idle_timeout).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(timeout))?;
        match sock.read(&mut rx) {
            Ok(0) => {
                eof = true;
                conn.handle_eof(Instant::now());
            }
            Ok(n) => {
                rx_end = n;
                rx_start = conn.handle_ciphertext(Instant::now(), &rx[..n]);
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => conn.handle_timeout(Instant::now()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where the ledger sends the reply to request `seq` of connection `id`. Each slot is its own
/// committer `worker` (one reply channel per slot).
fn reply_to(id: Conn, seq: u64) -> ReplyTo {
    ReplyTo { worker: id.slot, slot: id.slot, generation: id.generation, seq }
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
            let (config, stop, home) = (config.clone(), Arc::clone(&stop), home.path().to_path_buf());
            // As `serve-kernel --lab`: the lab formats its fresh data directory.
            thread::spawn(move || serve_kernel(&config, Some(&home), listen, stop))
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
}
