//! The whole stack in memory, without root: a client smoltcp interface and rustls clients on one
//! end of a simulated link that drops, reorders and duplicates frames; on the other end the
//! appliance's own worker (userspace TCP, TLS, HTTP, API) and its ledger thread with a real WAL.
//!
//! On the wall clock, so not replayable: the deterministic whole-appliance simulator
//! (`pantera::sim`, `cargo xtask sim --stack`) runs the same path with faults and a seed. This
//! test stays for what the simulator replaces: the production crypto (ring's key exchange,
//! the ECDSA certificates of `certs init`, resumption as configured) and the real ledger thread
//! (`committer::run`: channels, files, the checkpoint writer thread).

mod common;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pantera::committer;
use pantera::config::Config;
use pantera::metrics::Metrics;
use pantera::worker::{smoltcp_now, AppConfig, LedgerApp, Port, Worker};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp as stcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tcp::sim::{Side, SimConfig, SimLink};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);

/// One end of the shared link, owned (the worker owns its port).
struct End {
    link: Rc<RefCell<SimLink>>,
    side: Side,
}

struct Rx(Vec<u8>);

struct Tx {
    link: Rc<RefCell<SimLink>>,
    toward: Side,
    now: smoltcp::time::Instant,
}

impl Device for End {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, now: smoltcp::time::Instant) -> Option<(Rx, Tx)> {
        let frame = self.link.borrow_mut().take(self.side, now)?;
        Some((Rx(frame), Tx { link: Rc::clone(&self.link), toward: self.side.peer(), now }))
    }

    fn transmit(&mut self, now: smoltcp::time::Instant) -> Option<Tx> {
        Some(Tx { link: Rc::clone(&self.link), toward: self.side.peer(), now })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        // A full queue loses the frame, as a full NIC ring would.
        self.link.borrow_mut().inject(self.toward, self.now, &frame);
        r
    }
}

impl Port for End {
    fn service(&mut self) {}
    fn wait(&mut self, _timeout: Duration) {}
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    fn pending(&mut self) -> bool {
        false
    }
}

/// A client connection: a smoltcp socket carrying a rustls session, and the requests it still
/// has to send, one at a time (keep-alive).
struct Client {
    handle: SocketHandle,
    tls: rustls::ClientConnection,
    requests: VecDeque<String>,
    waiting: bool,
    received: Vec<u8>,
    responses: Vec<(u16, String)>,
}

impl Client {
    /// Moves bytes between the socket and TLS, sends the next request, parses responses.
    fn pump(&mut self, sockets: &mut SocketSet<'_>) {
        let socket = sockets.get_mut::<stcp::Socket>(self.handle);
        while socket.can_recv() {
            let tls = &mut self.tls;
            let n = socket.recv(|data| {
                let n = tls.read_tls(&mut &data[..]).unwrap_or(0);
                (n, n)
            });
            if n.unwrap_or(0) == 0 {
                break;
            }
            self.tls.process_new_packets().expect("server TLS is valid");
        }
        let mut plain = Vec::new();
        let _ = self.tls.reader().read_to_end(&mut plain);
        self.received.extend_from_slice(&plain);
        while let Some((status, body, used)) = parse_response(&self.received) {
            self.responses.push((status, body));
            self.received.drain(..used);
            self.waiting = false;
        }
        if !self.waiting && !self.tls.is_handshaking() {
            if let Some(request) = self.requests.pop_front() {
                self.tls.writer().write_all(request.as_bytes()).expect("write request");
                self.waiting = true;
            }
        }
        while self.tls.wants_write() && socket.can_send() {
            let mut out = Vec::new();
            let _ = self.tls.write_tls(&mut out);
            let sent = socket.send_slice(&out).expect("send");
            // smoltcp's buffer is far larger than one flight here; nothing is left behind.
            assert_eq!(sent, out.len(), "client socket buffer full");
        }
    }

    fn done(&self) -> bool {
        self.requests.is_empty() && !self.waiting
    }

    /// Closes as a client that connects per request does once answered: close_notify, FIN.
    fn close(&mut self, sockets: &mut SocketSet<'_>) {
        self.tls.send_close_notify();
        self.pump(sockets);
        sockets.get_mut::<stcp::Socket>(self.handle).close();
    }

    /// Both sides have closed: the server answered the FIN with its own.
    fn closed(&self, sockets: &SocketSet<'_>) -> bool {
        use stcp::State::*;
        matches!(sockets.get::<stcp::Socket>(self.handle).state(), TimeWait | Closed)
    }
}

fn parse_response(buf: &[u8]) -> Option<(u16, String, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().ok()))??;
    if buf.len() < end + length {
        return None;
    }
    Some((status, String::from_utf8_lossy(&buf[end..end + length]).into_owned(), end + length))
}

fn connect(iface: &mut Interface, sockets: &mut SocketSet<'static>, tls_config: &Arc<rustls::ClientConfig>, port: u16, requests: Vec<String>) -> Client {
    let mut socket = stcp::Socket::new(stcp::SocketBuffer::new(vec![0; 65535]), stcp::SocketBuffer::new(vec![0; 65535]));
    socket.connect(iface.context(), (IpAddress::Ipv4(SERVER_IP), 8443), port).expect("connect");
    let name = rustls_pki_types::ServerName::IpAddress(IpAddr::V4(SERVER_IP).into());
    Client {
        handle: sockets.add(socket),
        tls: rustls::ClientConnection::new(Arc::clone(tls_config), name).expect("client"),
        requests: requests.into(),
        waiting: false,
        received: Vec::new(),
        responses: Vec::new(),
    }
}

fn post(path: &str, body: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: pantera\r\n\r\n")
}

/// `run`'s usual end: every client has its answers.
fn all_done(clients: &[Client], _: &SocketSet<'_>) -> bool {
    clients.iter().all(Client::done)
}

/// Runs both ends until `finished` (bounded by `limit`).
fn run(
    worker: &mut Worker<End>,
    iface: &mut Interface,
    client_end: &mut End,
    sockets: &mut SocketSet<'_>,
    clients: &mut [Client],
    limit: Duration,
    finished: impl Fn(&[Client], &SocketSet<'_>) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !finished(clients, sockets) {
        assert!(Instant::now() < deadline, "the clients did not finish within {limit:?}");
        let now = Instant::now();
        worker.turn(now);
        // The worker drives only connections with news; none with work may be left out.
        let missed = worker.readiness_violations(now);
        assert!(missed.is_empty(), "connections with work no event would have driven: {missed:?}");
        iface.poll(smoltcp_now(now), client_end, sockets);
        for c in clients.iter_mut() {
            c.pump(sockets);
        }
        iface.poll(smoltcp_now(now), client_end, sockets);
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// The appliance's worker and ledger thread on one end of a simulated link, a client
/// interface on the other.
struct Rig {
    dir: tempfile::TempDir,
    worker: Worker<End>,
    iface: Interface,
    client_end: End,
    sockets: SocketSet<'static>,
    tls_config: Arc<rustls::ClientConfig>,
    ledger_thread: std::thread::JoinHandle<Result<(), ledger_svc::LedgerError>>,
    link: Rc<RefCell<SimLink>>,
}

impl Rig {
    fn new(link: SimConfig) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_dir = dir.path().join("tls");
        tls_term::certs::init(&tls_dir, IpAddr::V4(SERVER_IP), false).expect("certs");
        let config = Config::lab(dir.path());
        let metrics = Metrics::new();

        // The ledger thread, with a real WAL in the temp dir.
        std::fs::create_dir_all(dir.path().join("wal")).expect("wal dir");
        let storage = ledger_svc::FileStorage::open(&dir.path().join("wal")).expect("storage");
        let mut ledger = ledger_svc::Ledger::open(storage, config.ledger_config().expect("ledger config")).expect("open ledger");
        let committer::Channels { client: client_handle, submissions: rx, replies_tx: reply_tx, replies_rx: mut reply_rx } = committer::channels(64, 1);
        let m = metrics.clone();
        let ledger_thread = std::thread::spawn(move || committer::run(&mut ledger, &rx, &reply_tx, &committer::CommitSettings::fsync(8189, pantera::config::LEDGER_PIPELINE_DEPTH_DEFAULT), &m));

        let link = Rc::new(RefCell::new(SimLink::new(link)));
        let server_mac = [0x02, 0, 0, 0, 0, 2];
        let settings = config.tls_settings().expect("tls settings");
        let server_tls = tls_term::server_tls(&settings).expect("server config");
        let app = AppConfig::Ledger(Box::new(LedgerApp {
            roles: std::sync::Arc::new(config.client_policy(server_tls.trust.clone()).expect("roles")),
            tls: server_tls.config,
            limits: config.connection_limits(),
            budget: config.queue_budget(),
            handshakes: config.handshake_limits(),
            ledger: client_handle,
            completions: reply_rx.remove(0),
            audit: None,
        }));
        let mut stack_config = config.stack_config(server_mac);
        stack_config.connections_max = 16;
        stack_config.listen_sockets = 8;
        let server_end = End { link: Rc::clone(&link), side: Side::A };
        let worker = Worker::new(0, "0".to_owned(), server_end, &stack_config, app, metrics, 0).expect("worker");

        let mut client_end = End { link: Rc::clone(&link), side: Side::B };
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress([0x02, 0, 0, 0, 0, 1])));
        iface_config.random_seed = 11;
        let mut iface = Interface::new(iface_config, &mut client_end, smoltcp_now(Instant::now()));
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24)).expect("room"));
        let sockets = SocketSet::new(Vec::new());
        let tls_config = common::tls_client_config(&tls_dir, Some("client"));
        Rig { dir, worker, iface, client_end, sockets, tls_config, ledger_thread, link }
    }
}

#[test]
fn transfers_complete_through_the_whole_stack_over_a_lossy_reordering_link() {
    const CONNS: usize = 4;
    const PER_CONN: usize = 25;
    let Rig { dir: _dir, mut worker, mut iface, mut client_end, mut sockets, tls_config, ledger_thread, link } = Rig::new(SimConfig {
        seed: 7,
        loss_ppm: 20_000,
        reorder_ppm: 20_000,
        duplicate_ppm: 5_000,
        latency: smoltcp::time::Duration::from_micros(200),
        ..SimConfig::default()
    });
    let mut setup = vec![connect(&mut iface, &mut sockets, &tls_config, 40_000, vec![post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#)])];
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut setup, Duration::from_secs(60), all_done);
    assert_eq!(setup[0].responses[0].0, 200, "{:?}", setup[0].responses);

    let mut clients: Vec<Client> = (0..CONNS)
        .map(|c| {
            let requests = (0..PER_CONN)
                .map(|i| {
                    let id = 100 + c * PER_CONN + i;
                    post("/v1/transfers", &format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"{}","ledger":1,"code":1}}]"#, i + 1))
                })
                .collect();
            connect(&mut iface, &mut sockets, &tls_config, 41_000 + c as u16, requests)
        })
        .collect();
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut clients, Duration::from_secs(120), all_done);
    for c in &clients {
        assert_eq!(c.responses.len(), PER_CONN);
        for (status, body) in &c.responses {
            assert_eq!(*status, 200, "{body}");
            assert!(body.contains("\"created\""), "{body}");
        }
    }
    let expected: usize = CONNS * (1..=PER_CONN).sum::<usize>();

    let mut check = vec![connect(&mut iface, &mut sockets, &tls_config, 42_000, vec![get("/v1/accounts/1"), get("/v1/accounts/2")])];
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut check, Duration::from_secs(60), all_done);
    let debit: serde_json::Value = serde_json::from_str(&check[0].responses[0].1).expect("json");
    let credit: serde_json::Value = serde_json::from_str(&check[0].responses[1].1).expect("json");
    assert_eq!(debit["debits_posted"], expected.to_string());
    assert_eq!(credit["credits_posted"], expected.to_string());
    let stats = link.borrow().stats().clone();
    assert!(stats.lost > 0 && stats.reordered > 0, "the link did drop and reorder: {stats:?}");

    drop(worker);
    ledger_thread.join().expect("ledger thread").expect("ledger ran without a storage error");
}

/// The handshakes' time share (docs/pipeline.md, "Handshakes") applies while established
/// connections are busy answering again. A client that connects per request is all handshake
/// cost: its one request, its answer and its close must not count as busy established work,
/// or such clients hold each other's handshakes to the share (a per-request load ran at 0.28x
/// when the close counted). A keep-alive client's second answer does count.
#[test]
fn only_a_connection_answering_again_makes_the_handshakes_keep_to_their_share() {
    let Rig { dir: _dir, mut worker, mut iface, mut client_end, mut sockets, tls_config, ledger_thread, link: _link } = Rig::new(SimConfig { seed: 3, ..SimConfig::default() });
    let accounts = post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#);
    let transfer = |id: usize| post("/v1/transfers", &format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#));
    // Connections of one request each, closed once answered.
    let mut once: Vec<Client> = (0..4)
        .map(|c| {
            let request = if c == 0 { accounts.clone() } else { transfer(100 + c) };
            connect(&mut iface, &mut sockets, &tls_config, 40_000 + c as u16, vec![request])
        })
        .collect();
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut once[..1], Duration::from_secs(60), all_done);
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut once, Duration::from_secs(60), all_done);
    for c in &mut once {
        assert_eq!(c.responses.iter().map(|r| r.0).collect::<Vec<_>>(), vec![200], "{:?}", c.responses);
        c.close(&mut sockets);
    }
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut once, Duration::from_secs(60), |clients, sockets| {
        clients.iter().all(|c| c.closed(sockets))
    });
    assert_eq!(worker.established_busy_at(), None, "a connection answered once, then closing, counted as busy");
    // A keep-alive connection: its first answer does not count, its second does.
    let mut kept = vec![connect(&mut iface, &mut sockets, &tls_config, 41_000, vec![transfer(200)])];
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut kept, Duration::from_secs(60), all_done);
    assert_eq!(worker.established_busy_at(), None, "a first answer counted as busy");
    kept[0].requests.push_back(transfer(201));
    run(&mut worker, &mut iface, &mut client_end, &mut sockets, &mut kept, Duration::from_secs(60), all_done);
    assert_eq!(kept[0].responses.iter().map(|r| r.0).collect::<Vec<_>>(), vec![200, 200]);
    assert!(worker.established_busy_at().is_some(), "a second answer on one connection is busy established work");
    drop(worker);
    ledger_thread.join().expect("ledger thread").expect("ledger ran without a storage error");
}
