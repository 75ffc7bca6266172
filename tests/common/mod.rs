//! Support for the root lab tests: a private lab per test (RAII), the appliance as a child
//! process (RAII), clients that run inside the lab's client namespace, and a small HTTPS client.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
pub use pantera::lab::{Lab, LabSpec};

pub const PANTERA: &str = env!("CARGO_BIN_EXE_pantera");
pub const PORT: u16 = 8443;

/// The lab tests need root (netns, veth, XDP). They fail loudly without it rather than pass
/// silently: `cargo xtask test` runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "root lab tests need root: run `cargo xtask test` as root"
    );
}

pub fn lab(tag: &str, queues: u32) -> Lab {
    require_root();
    Lab::create(&LabSpec::unique(tag, queues)).expect("cannot create the lab")
}

/// Moves the calling thread into the lab's client namespace. Sockets it opens from then on
/// live in that namespace (setns(2) with CLONE_NEWNET affects only the calling thread).
pub fn enter_netns(netns: &str) {
    let f = File::open(Path::new("/run/netns").join(netns)).expect("netns exists");
    nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a fresh thread inside the client namespace.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    let netns = netns.to_owned();
    thread::spawn(move || {
        enter_netns(&netns);
        f()
    })
}

pub fn free_local_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// `pantera format --data-dir dir --cluster-id cluster_id`, asserting success.
pub fn format_data_dir(dir: &Path, cluster_id: u128) {
    let out = Command::new(PANTERA)
        .args(["format", "--data-dir"])
        .arg(dir)
        .args(["--cluster-id", &cluster_id.to_string()])
        .output()
        .expect("run pantera format");
    assert!(
        out.status.success(),
        "pantera format: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The appliance, started as a child process on a test lab. Killed on drop.
pub struct Server {
    child: Option<Child>,
    pub dir: PathBuf,
    pub management: SocketAddr,
    pub service: Ipv4Addr,
    pub interface: String,
    config_path: PathBuf,
    /// Extra environment for the process (e.g. a fault switch).
    env: Vec<(String, String)>,
    /// Where the process's stderr (its log) goes; None: the test's own stderr.
    log: Option<PathBuf>,
}

impl Server {
    /// Writes a configuration for `lab` under `dir` (certificates, WAL) and starts the
    /// appliance; returns once /readyz answers 200.
    pub fn start(lab: &Lab, dir: &Path, app: &str, extra_toml: &str) -> Server {
        Server::start_with_env(lab, dir, app, extra_toml, &[])
    }

    /// As `start`, with extra environment variables for the process.
    pub fn start_with_env(
        lab: &Lab,
        dir: &Path,
        app: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Server {
        Server::start_with_tls(lab, dir, app, "", extra_toml, env)
    }

    /// As `start_with_env`, with extra lines for the `[tls]` section (`tls_toml`).
    pub fn start_with_tls(
        lab: &Lab,
        dir: &Path,
        app: &str,
        tls_toml: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let mut server = Server::configure(lab, dir, app, tls_toml, extra_toml, env);
        server.spawn();
        server
    }

    /// As `start`, with the process's log (stderr) appended to `dir/pantera.log`
    /// (`log_text`).
    pub fn start_logged(lab: &Lab, dir: &Path, app: &str, extra_toml: &str) -> Server {
        let mut server = Server::configure(lab, dir, app, "", extra_toml, &[]);
        server.log = Some(dir.join("pantera.log"));
        server.spawn();
        server
    }

    /// As `start_logged`, with extra environment for the process (e.g. `RUST_LOG` empty, so
    /// the configuration's `log.level` applies).
    pub fn start_logged_with_env(
        lab: &Lab,
        dir: &Path,
        app: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let mut server = Server::configure(lab, dir, app, "", extra_toml, env);
        server.log = Some(dir.join("pantera.log"));
        server.spawn();
        server
    }

    /// The log written so far (`start_logged`).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.as_ref().expect("started with start_logged"))
            .expect("read the log")
    }

    /// The configuration file the process reads (at start and on SIGHUP).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// As `start_logged`, with `edit` applied to the configuration file's text before the
    /// start (keys of a section the template already has, such as `[ledger]`).
    pub fn start_logged_edited(
        lab: &Lab,
        dir: &Path,
        app: &str,
        extra_toml: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Server {
        let mut server = Server::configure(lab, dir, app, "", extra_toml, &[]);
        let text = std::fs::read_to_string(&server.config_path).expect("read config");
        std::fs::write(&server.config_path, edit(text)).expect("write config");
        server.log = Some(dir.join("pantera.log"));
        server.spawn();
        server
    }

    /// Writes the configuration and certificates; the process is not started.
    fn configure(
        lab: &Lab,
        dir: &Path,
        app: &str,
        tls_toml: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let tls = init_certs(lab, dir);
        // `serve` opens only a formatted data directory: format it as an operator would.
        let data = dir.join("data");
        if !data.exists() {
            format_data_dir(&data, 0);
        }
        let management: SocketAddr = format!("127.0.0.1:{}", free_local_port())
            .parse()
            .expect("addr");
        let config = format!(
            r#"
[dataplane]
interface = "{interface}"

[service]
address = "{service}"
port = {PORT}
app = "{app}"

[tls]
cert_chain = "{tls}/server.pem"
private_key = "{tls}/server.key"
client_ca = "{tls}/ca.pem"
# "teller": a second writer, for the tests that issue its certificate
# (tls_term::certs::issue_client).
roles = {{ "cn:client" = "write", "cn:reader" = "read", "cn:teller" = "write" }}
handshake_timeout_ms = 2000
{tls_toml}

[ledger]
data_dir = "{data}"

[management]
listen = "{management}"
{extra_toml}
"#,
            interface = lab.spec.host_if,
            service = lab.spec.service_ipv4,
            tls = tls.display(),
            data = data.display(),
        );
        // No grace period unless the test sets one: a stop in the other tests need not wait
        // for load balancers that are not there.
        let config = if extra_toml.contains("[shutdown]") {
            config
        } else {
            config + "\n[shutdown]\ngrace_ms = 0\n"
        };
        let config_path = dir.join("pantera.toml");
        std::fs::write(&config_path, config).expect("write config");
        Server {
            child: None,
            dir: dir.to_owned(),
            management,
            service: lab.spec.service_ipv4,
            interface: lab.spec.host_if.clone(),
            config_path,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log: None,
        }
    }

    /// Starts (or restarts) the process with the same configuration and waits until ready.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new(PANTERA);
        command
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(path) = &self.log {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .expect("open the log file");
            command.stderr(file);
        }
        let child = command.spawn().expect("start pantera serve");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Starts the process with the same configuration, expecting it to refuse to start:
    /// returns its exit status and its stderr (it must exit within `timeout`).
    pub fn spawn_refused(&mut self, timeout: Duration) -> (ExitStatus, String) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(PANTERA)
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pantera serve");
        let mut stderr = child.stderr.take().expect("piped");
        let reader = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let status = match wait_exit(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                let _ = child.wait();
                panic!("pantera serve did not refuse to start within {timeout:?}");
            }
        };
        (status, reader.join().expect("stderr reader"))
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .expect("running")
                .try_wait()
                .expect("try_wait")
            {
                let log = self
                    .log
                    .as_ref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .unwrap_or_default();
                panic!("pantera exited before it was ready: {st}\n{log}");
            }
            if http_get(self.management, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pantera not ready within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn metrics(&self) -> String {
        match http_get(self.management, "/metrics") {
            Ok((_, body)) => body,
            // A server started with a log: its last words say why it does not answer.
            Err(e) => match &self.log {
                Some(log) => panic!(
                    "scrape /metrics: {e}; the server's log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                ),
                None => panic!("scrape /metrics: {e}"),
            },
        }
    }

    /// The value of one sample line of /metrics (the sum over label sets matching `filter`).
    pub fn metric_sum(&self, name: &str, filter: &[&str]) -> f64 {
        self.metrics()
            .lines()
            // The series' own name, not a prefix: `pantera_tcp_connections` is not
            // `pantera_tcp_connections_accepted_total`.
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && filter.iter().all(|f| l.contains(f))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Polls /metrics until the sum reaches `min` (workers publish a few times a second), and
    /// returns the last value seen.
    pub fn wait_metric(&self, name: &str, filter: &[&str], min: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.metric_sum(name, filter);
            if v >= min || Instant::now() > deadline {
                return v;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("kill -TERM");
        wait_bounded(&mut child, Duration::from_secs(20))
    }

    /// SIGKILL: no clean-up of any kind runs in the process.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
    }

    /// Waits (bounded) for the process to exit on its own; None if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_exit(self.child.as_mut().expect("running"), timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

/// Polls until `child` exits or `timeout` passes; None if it still runs.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("pantera did not stop within {timeout:?} of SIGTERM");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// True while an XDP program stays attached to `interface` for 2 s: the kernel may finish
/// releasing a closed bpf_link a moment after the process is gone.
pub fn xdp_still_attached(interface: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while xdp_attached(interface) {
        if Instant::now() > deadline {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

/// XDP programs attached to an interface, as `ip -d link show` reports them.
pub fn xdp_attached(interface: &str) -> bool {
    let out = Command::new("ip")
        .args(["-d", "link", "show", "dev", interface])
        .output()
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("prog/xdp") || text.contains(" xdp")
}

/// A plain HTTP/1.1 GET on a kernel socket (the management listener).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: pantera\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A rustls client configuration trusting the lab CA, with the named client certificate
/// (`client`, `reader`) or none.
pub fn tls_client_config(tls_dir: &Path, who: Option<&str>) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_dir.join("ca.pem")).expect("ca.pem") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match who {
        Some(name) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(tls_dir.join(format!("{name}.pem")))
                .expect("client cert")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(tls_dir.join(format!("{name}.key")))
                .expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects over TLS from the current thread's namespace and finishes the handshake.
pub fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let conn =
        rustls::ClientConnection::new(Arc::clone(config), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// One HTTP/1.1 request on a keep-alive stream; returns (status, body).
pub fn request(
    stream: &mut impl ReadWrite,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    read_response(stream)
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads one Content-Length framed response.
pub fn read_response(stream: &mut impl Read) -> std::io::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        buf.push(byte[0]);
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
    let (status, length) = pantera::lab_client::response_head(&String::from_utf8_lossy(&buf));
    let status = status.unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The JSON value of `field` of an account, read through the API.
pub fn account_field(stream: &mut impl ReadWrite, id: u128, field: &str) -> String {
    let (status, body) =
        request(stream, "GET", &format!("/v1/accounts/{id}"), "").expect("GET account");
    assert_eq!(status, 200, "GET /v1/accounts/{id}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("account JSON");
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {body}"))
        .to_owned()
}

/// Adds `.last` of the lab's /24 to the client namespace's interface and returns it (a second
/// client address beside the lab's own, e.g. an honest client beside an attacker).
pub fn add_client_address(lab: &Lab, last: u8) -> Ipv4Addr {
    let o = lab.spec.peer_ipv4.octets();
    let ip = Ipv4Addr::new(o[0], o[1], o[2], last);
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.spec.netns,
            "addr",
            "add",
            &format!("{ip}/{}", lab.spec.prefix_len),
            "dev",
            &lab.spec.peer_if,
        ])
        .output()
        .expect("ip addr add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ip
}

/// A TCP connection from `local` (an address of the current namespace) to `to`; connect(2)
/// gives up after 3 s (a dropped SYN is otherwise retried for minutes).
pub fn connect_from(local: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    connect_with(Some(local), None, to)
}

/// As `connect_from`, from `local` when given (else the kernel's choice), with the socket's
/// receive buffer set to `rcvbuf` bytes before the handshake when given (a tiny window: a
/// client that does not read stops the server's output almost at once).
pub fn connect_with(
    local: Option<Ipv4Addr>,
    rcvbuf: Option<usize>,
    to: SocketAddr,
) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::{AsRawFd, OwnedFd};
    let SocketAddr::V4(to) = to else {
        unreachable!("the lab is IPv4")
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    if let Some(bytes) = rcvbuf {
        setsockopt(&fd, sockopt::RcvBuf, &bytes)?;
    }
    setsockopt(
        &fd,
        sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(3, 0),
    )?;
    if let Some(local) = local {
        bind(
            fd.as_raw_fd(),
            &SockaddrIn::from(std::net::SocketAddrV4::new(local, 0)),
        )?;
    }
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// One mTLS `GET /v1/accounts/1` on a new connection from `local`: the status, or where it
/// failed.
pub fn one_request(
    config: &Arc<rustls::ClientConfig>,
    local: Ipv4Addr,
    to: SocketAddr,
) -> Result<u16, String> {
    let tcp = connect_from(local, to).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    let conn =
        rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    request(&mut stream, "GET", "/v1/accounts/1", "")
        .map(|(status, _)| status)
        .map_err(|e| format!("request: {e}"))
}

/// A process's resident memory (VmRSS of /proc/PID/status), in bytes.
pub fn rss_bytes(pid: Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The lab certificates in `dir/tls` (`pantera certs init`, kept when already there), as a
/// server start makes them; a test that issues CRLs or client certificates first calls it.
pub fn init_certs(lab: &Lab, dir: &Path) -> PathBuf {
    let tls = dir.join("tls");
    let out = Command::new(PANTERA)
        .args(["certs", "init", "--dir"])
        .arg(&tls)
        .args(["--service-ip", &lab.spec.service_ipv4.to_string()])
        .output()
        .expect("run pantera certs init");
    assert!(
        out.status.success(),
        "certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tls
}
