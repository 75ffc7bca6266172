//! A fleet of HTTPS keep-alive clients for the lab: thousands of mutual-TLS connections driven
//! by one thread over nonblocking sockets and poll(2), for the capacity test and the `conns`
//! benchmark (one thread per connection does not scale to 10,000).
//!
//! Every wait is bounded by a deadline the caller passes, and every loop by a count: a fleet
//! that cannot finish says how far it got instead of hanging.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// The longest single poll(2) wait, so deadlines are noticed promptly.
const POLL_WAIT_MAX: Duration = Duration::from_millis(100);
/// Plaintext read per call from a session.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A response head larger than this is a broken server, not a slow one.
const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;

/// Bounds on the work a fleet keeps in flight.
#[derive(Clone, Copy, Debug)]
pub struct FleetLimits {
    /// TCP + TLS handshakes under way at once. The appliance's stack has no listen backlog
    /// (`tcp.listen_sockets` SYNs per poll), so keeping this at or below its listening pool
    /// avoids refused connects.
    pub connects_in_flight_max: usize,
    /// Requests awaiting a response at once, over the whole fleet (the ledger's queue is
    /// bounded too: past it the appliance answers 503).
    pub requests_in_flight_max: usize,
    /// Refused or failed connects retried before the fleet gives up.
    pub connect_retries_max: usize,
}

impl Default for FleetLimits {
    fn default() -> Self {
        FleetLimits { connects_in_flight_max: 48, requests_in_flight_max: 256, connect_retries_max: 1000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{call}: {error}")]
    Syscall { call: &'static str, error: io::Error },
    #[error("{what}: {done} of {total} done when the deadline passed ({in_flight} in flight)")]
    Deadline { what: &'static str, done: usize, total: usize, in_flight: usize },
    #[error("connects failed {failures} times (more than the {max} retries allowed); last: {last}")]
    ConnectRetries { failures: usize, max: usize, last: String },
    #[error("only IPv4 targets are supported, not {0}")]
    NotIpv4(SocketAddr),
}

fn syscall(call: &'static str) -> impl FnOnce(Errno) -> FleetError {
    move |errno| FleetError::Syscall { call, error: io::Error::from(errno) }
}

/// Raises this process's open-file limit (soft, and hard if needed) to at least `min`.
pub fn raise_open_files_limit(min: u64) -> Result<(), FleetError> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(syscall("getrlimit"))?;
    if soft >= min {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_NOFILE, min, hard.max(min)).map_err(syscall("setrlimit"))
}

/// Moves the calling thread into the named network namespace (`/run/netns/NAME`): sockets it
/// opens from then on live there (setns(2) with CLONE_NEWNET affects only the calling thread).
pub fn enter_netns(netns: &str) -> Result<(), FleetError> {
    let path = std::path::Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).map_err(|error| FleetError::Syscall { call: "open /run/netns", error })?;
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(syscall("setns"))
}

/// A TLS 1.3 client configuration (ring) trusting `ca` and presenting `cert` + `key` (mTLS),
/// ALPN http/1.1, without session resumption: every connection does a full handshake.
pub fn client_config(ca: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<ClientConfig>, FleetError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |error: String| FleetError::Syscall { call: "load client TLS files", error: io::Error::other(error) };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(format!("{}: {e}", ca.display())))? {
        roots.add(c.map_err(|e| bad(format!("{}: {e}", ca.display())))?).map_err(|e| bad(e.to_string()))?;
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(format!("{}: {e}", cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| bad(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// What opening the fleet took.
#[derive(Clone, Debug, Default)]
pub struct ConnectReport {
    pub opened: usize,
    pub elapsed: Duration,
    /// Time from the start to each thousandth connection open (to see how the rate changes as
    /// the server holds more connections).
    pub elapsed_per_thousand: Vec<Duration>,
    /// Connects that failed (refused, reset, TLS error) and were retried.
    pub retries: usize,
}

impl ConnectReport {
    /// Handshakes per second over the whole fleet.
    pub fn rate_per_s(&self) -> f64 {
        self.opened as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// What one request on every connection gave.
#[derive(Clone, Debug, Default)]
pub struct RoundReport {
    pub answered: usize,
    /// Responses by status code, as (status, count), ascending.
    pub statuses: Vec<(u16, usize)>,
    /// Connections that ended without a complete response, with the first reason seen.
    pub failed: usize,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
}

impl RoundReport {
    pub fn count_of(&self, status: u16) -> usize {
        self.statuses.iter().find(|(s, _)| *s == status).map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Handshaking,
    Idle,
    Requesting,
    Failed,
}

#[derive(Debug)]
struct Client {
    stream: TcpStream,
    tls: ClientConnection,
    phase: Phase,
    /// Plaintext of the response being received.
    response: Vec<u8>,
}

/// Many keep-alive HTTPS connections to one target, all driven from the calling thread.
#[derive(Debug)]
pub struct Fleet {
    clients: Vec<Client>,
    config: Arc<ClientConfig>,
    target: SocketAddrV4,
    limits: FleetLimits,
}

impl Fleet {
    /// Opens `count` connections and finishes their TLS handshakes, at most
    /// `limits.connects_in_flight_max` at a time. The sockets live in the network namespace
    /// of the calling thread; the fleet may be driven from any thread afterwards.
    pub fn connect(
        config: Arc<ClientConfig>,
        target: SocketAddr,
        count: usize,
        limits: FleetLimits,
        deadline: Instant,
    ) -> Result<(Fleet, ConnectReport), FleetError> {
        let SocketAddr::V4(target) = target else { return Err(FleetError::NotIpv4(target)) };
        assert!(limits.connects_in_flight_max >= 1 && limits.requests_in_flight_max >= 1);
        let mut fleet = Fleet { clients: Vec::with_capacity(count), config, target, limits };
        let mut report = ConnectReport::default();
        let started = Instant::now();
        let mut in_flight: Vec<usize> = Vec::with_capacity(limits.connects_in_flight_max);
        let mut last_failure = String::new();
        while report.opened < count {
            while in_flight.len() < limits.connects_in_flight_max && fleet.clients.len() < count {
                let client = fleet.start_connect()?;
                fleet.clients.push(client);
                in_flight.push(fleet.clients.len() - 1);
            }
            if Instant::now() >= deadline {
                return Err(FleetError::Deadline { what: "connect", done: report.opened, total: count, in_flight: in_flight.len() });
            }
            let ready = fleet.wait(&in_flight, deadline)?;
            for (index, revents) in ready {
                let client = &mut fleet.clients[index];
                if client.phase == Phase::Connecting {
                    if revents.is_empty() {
                        continue;
                    }
                    match client.stream.take_error() {
                        Ok(None) => {
                            client.phase = Phase::Handshaking;
                            let _ = client.stream.set_nodelay(true);
                        }
                        Ok(Some(e)) | Err(e) => {
                            last_failure = format!("connect: {e}");
                            client.phase = Phase::Failed;
                        }
                    }
                }
                if client.phase == Phase::Handshaking {
                    if let Err(e) = client.drive_io() {
                        last_failure = format!("handshake: {e}");
                        client.phase = Phase::Failed;
                    } else if !client.tls.is_handshaking() && !client.tls.wants_write() {
                        client.phase = Phase::Idle;
                        report.opened += 1;
                        if report.opened % 1000 == 0 {
                            report.elapsed_per_thousand.push(started.elapsed());
                        }
                    }
                }
                if client.phase == Phase::Failed {
                    report.retries += 1;
                    if report.retries > limits.connect_retries_max {
                        return Err(FleetError::ConnectRetries { failures: report.retries, max: limits.connect_retries_max, last: last_failure });
                    }
                    // The slot gets a fresh attempt; the failed socket is closed by the drop.
                    fleet.clients[index] = fleet.start_connect()?;
                }
            }
            in_flight.retain(|&i| matches!(fleet.clients[i].phase, Phase::Connecting | Phase::Handshaking));
        }
        report.elapsed = started.elapsed();
        Ok((fleet, report))
    }

    /// Connections open (handshake done, no failure seen).
    pub fn open(&self) -> usize {
        self.clients.iter().filter(|c| matches!(c.phase, Phase::Idle | Phase::Requesting)).count()
    }

    /// Sends `request` (one whole HTTP/1.1 request, keep-alive) on every open connection and
    /// reads one Content-Length framed response on each, at most
    /// `limits.requests_in_flight_max` outstanding at a time.
    pub fn round(&mut self, request: &[u8], deadline: Instant) -> Result<RoundReport, FleetError> {
        let started = Instant::now();
        let mut report = RoundReport::default();
        let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
        let mut waiting: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].phase == Phase::Idle).rev().collect();
        let total = waiting.len();
        let mut in_flight: Vec<usize> = Vec::with_capacity(self.limits.requests_in_flight_max);
        let mut sent: Vec<usize> = Vec::with_capacity(self.limits.requests_in_flight_max);
        while !waiting.is_empty() || !in_flight.is_empty() {
            sent.clear();
            while in_flight.len() < self.limits.requests_in_flight_max {
                let Some(index) = waiting.pop() else { break };
                let client = &mut self.clients[index];
                client.response.clear();
                client.phase = Phase::Requesting;
                if let Err(e) = client.tls.writer().write_all(request) {
                    client.fail(&mut report, format!("send: {e}"));
                    continue;
                }
                in_flight.push(index);
                sent.push(index);
            }
            // Sending also reads whatever the socket holds, and a response read into the
            // session no longer shows as readable to poll(2): look at each right after sending.
            for &index in &sent {
                let client = &mut self.clients[index];
                if client.phase != Phase::Requesting {
                    continue;
                }
                client.collect_response(&mut report, &mut statuses);
            }
            in_flight.retain(|&i| self.clients[i].phase == Phase::Requesting);
            if Instant::now() >= deadline {
                return Err(FleetError::Deadline { what: "requests", done: report.answered + report.failed, total, in_flight: in_flight.len() });
            }
            let ready = self.wait(&in_flight, deadline)?;
            for (index, revents) in ready {
                if revents.is_empty() {
                    continue;
                }
                let client = &mut self.clients[index];
                client.collect_response(&mut report, &mut statuses);
            }
            in_flight.retain(|&i| self.clients[i].phase == Phase::Requesting);
        }
        report.statuses = statuses.into_iter().collect();
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// A nonblocking connect to the target, with a fresh TLS client session.
    fn start_connect(&self) -> Result<Client, FleetError> {
        let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
            .map_err(syscall("socket"))?;
        let stream = TcpStream::from(fd);
        let phase = match connect(std::os::fd::AsRawFd::as_raw_fd(&stream), &SockaddrIn::from(self.target)) {
            Ok(()) => Phase::Handshaking,
            Err(Errno::EINPROGRESS) => Phase::Connecting,
            Err(e) => return Err(syscall("connect")(e)),
        };
        let name = ServerName::IpAddress((*self.target.ip()).into());
        let mut tls = ClientConnection::new(Arc::clone(&self.config), name)
            .map_err(|e| FleetError::Syscall { call: "rustls ClientConnection::new", error: io::Error::other(e) })?;
        // A request is handed to the session whole (a bulk body may be megabytes); the
        // ciphertext then leaves as the socket takes it.
        tls.set_buffer_limit(None);
        Ok(Client { stream, tls, phase, response: Vec::new() })
    }

    /// Waits (bounded by `POLL_WAIT_MAX` and `deadline`) for any of `indices` to be ready;
    /// returns each with what poll(2) reported.
    fn wait(&self, indices: &[usize], deadline: Instant) -> Result<Vec<(usize, PollFlags)>, FleetError> {
        let mut fds: Vec<PollFd<'_>> = indices
            .iter()
            .map(|&i| {
                let client = &self.clients[i];
                let mut events = PollFlags::POLLIN;
                if client.phase == Phase::Connecting || client.tls.wants_write() {
                    events |= PollFlags::POLLOUT;
                }
                PollFd::new(client.stream.as_fd(), events)
            })
            .collect();
        let wait = deadline.saturating_duration_since(Instant::now()).min(POLL_WAIT_MAX);
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(syscall("poll")(e)),
        }
        Ok(indices.iter().zip(&fds).map(|(&i, fd)| (i, fd.revents().unwrap_or(PollFlags::empty()))).collect())
    }
}

impl Client {
    /// Moves ciphertext both ways until the socket would block.
    fn drive_io(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        loop {
            match self.tls.read_tls(&mut self.stream) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
                Ok(_) => {
                    self.tls.process_new_packets().map_err(io::Error::other)?;
                    // Take the plaintext as it comes: rustls stops reading once it holds more
                    // than its buffer limit of it (a large response).
                    self.take_plaintext()?;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        // Reading may have produced something to send (a handshake flight, an alert).
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves decrypted bytes into `response`.
    fn take_plaintext(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            match self.tls.reader().read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "close_notify before a whole response")),
                Ok(n) => self.response.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves the socket's bytes and, once a whole response is in, counts it and goes idle.
    fn collect_response(&mut self, report: &mut RoundReport, statuses: &mut std::collections::BTreeMap<u16, usize>) {
        match self.drive_io().and_then(|()| self.read_response()) {
            Ok(Some(status)) => {
                *statuses.entry(status).or_default() += 1;
                report.answered += 1;
                self.phase = Phase::Idle;
            }
            Ok(None) => {}
            Err(e) => self.fail(report, format!("response: {e}")),
        }
    }

    /// Some(status) once a whole response is in.
    fn read_response(&mut self) -> io::Result<Option<u16>> {
        self.take_plaintext()?;
        let Some(head_end) = self.response.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.response.len() > RESPONSE_HEAD_BYTES_MAX {
                return Err(io::Error::other("response head too large"));
            }
            return Ok(None);
        };
        let head = String::from_utf8_lossy(&self.response[..head_end]);
        let (status, length) = response_head(&head);
        let status = status.ok_or_else(|| io::Error::other("no status"))?;
        if self.response.len() < head_end + 4 + length {
            return Ok(None);
        }
        if self.response.len() > head_end + 4 + length {
            return Err(io::Error::other("bytes after the response (none were asked for)"));
        }
        Ok(Some(status))
    }

    fn fail(&mut self, report: &mut RoundReport, reason: String) {
        self.phase = Phase::Failed;
        report.failed += 1;
        report.first_failure.get_or_insert(reason);
    }
}

/// The status and the `Content-Length` (0 when absent) of a response head.
pub fn response_head(head: &str) -> (Option<u16>, usize) {
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (status, length)
}
