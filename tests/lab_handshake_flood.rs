//! Edge defence on a private lab (root): a ClientHello flood from one address against the
//! established connections of the same queue (issue 8, item 4; docs/limits.md, "TLS";
//! src/handshake.rs).
//!
//! The attacker records one ClientHello and sends the same bytes on every connection it
//! opens, then abandons the connection (never answers the server's flight; the oldest it
//! holds are closed to bound its own descriptors). Each costs the attacker a connect and one
//! write, and the server a handshake step's crypto (ECDHE and a signature, docs/tls.md
//! "Figures"). One queue, so the flood and the established connections share one worker.
//! Every load is bounded in count and time.
//!
//! The established load is measured in alternating windows: quiet, a flood of the same
//! connections without ClientHellos (TCP only: nothing for TLS to do), and the ClientHello
//! flood. What the TLS-level defence must keep is 80 % of the TCP-only figure (the TCP cost of
//! a connection flood is the stack's part of the edge defence, SYN cookies and XDP limits);
//! on the shared two-vCPU lab machine with this debug build it measured 0.85–1.00, and
//! 0.65–0.92 of the quiet figure, so the test asserts 0.8 of the TCP-only figure and only 0.5
//! of quiet. The old worker, which ran every ClientHello at once and walked every pending
//! handshake each turn, measured 0.64–0.70 of the TCP-only figure and 0.04–0.42 of quiet.
//! Figures in docs/PERFORMANCE.md, "ClientHello flood".

mod common;

use std::collections::VecDeque;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use pantera::lab_client::{raise_open_files_limit, Fleet, FleetLimits};

/// Keep-alive mTLS connections of the established load: few enough that they do not
/// saturate the two vCPUs by themselves.
const ESTABLISHED: usize = 8;
/// The established load is measured in alternating windows (quiet, a TCP-only flood, the
/// ClientHello flood), so that the other work on a shared machine (it moves within seconds)
/// weighs on all alike.
const WINDOW_TRIPLES: usize = 6;
const WINDOW: Duration = Duration::from_millis(1000);
/// Before each window: the flood gets going, or the server drops what it left.
const SETTLE: Duration = Duration::from_millis(150);
const GET_ACCOUNT: &[u8] = b"GET /v1/accounts/1 HTTP/1.1\r\nHost: pantera\r\n\r\n";
/// The flood's bounds: connections in total, seconds, connects in flight at once, and
/// connections held open (past it the oldest is closed).
const FLOOD_CONNECTS_MAX: usize = 200_000;
const FLOOD_FOR_MAX: Duration = Duration::from_secs(30);
const FLOOD_CONNECTING_MAX: usize = 64;
const FLOOD_HELD_MAX: usize = 600;
/// The flood's pace: past the ~1.7k full handshakes a second this build's worker can do
/// alone, so the old worker spent all its time on them; capped so the attacker's own CPU
/// (its connects, and the veth's XDP work done in its softirq) does not take the machine's
/// second vCPU from the established clients: that is the attacker's cost, not the server's.
const FLOOD_HELLOS_PER_S: u64 = 1_000;
/// Established throughput during the ClientHello flood over that during the same flood of
/// connections without ClientHellos: what the TLS-level defence keeps (issue 8: 80 %).
const TLS_RATIO_MIN: f64 = 0.8;
/// Established throughput during the ClientHello flood over quiet: the whole flood, TCP
/// included (see the module documentation).
const RATIO_MIN: f64 = 0.5;
/// The handshakes' share of the worker's time during the flood: 10 % configured while the
/// established connections are busy; more when they pause (the share then does not apply)
/// and when the worker is preempted mid-step on this shared machine (wall time is counted).
const STEP_SHARE_MAX: f64 = 0.25;
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Requests answered over some windows, their time, and the time of each round (one request
/// on each of the `ESTABLISHED` connections, all in flight together).
#[derive(Default)]
struct Phase {
    answered: usize,
    elapsed: Duration,
    rounds: Vec<Duration>,
}

impl Phase {
    fn per_s(&self) -> f64 {
        self.answered as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        let mut r = self.rounds.clone();
        r.sort_unstable();
        let i = ((r.len() as f64 * p).ceil() as usize).clamp(1, r.len()) - 1;
        r[i].as_secs_f64() * 1e3
    }
}

/// Rounds of requests for `WINDOW`, added to `phase`.
fn measure(fleet: &mut Fleet, phase: &mut Phase, deadline: Instant) {
    let started = Instant::now();
    while started.elapsed() < WINDOW {
        let report = fleet.round(GET_ACCOUNT, deadline).unwrap_or_else(|e| panic!("a round of requests: {e}"));
        assert_eq!(report.count_of(200), ESTABLISHED, "an established connection failed: {report:?}");
        phase.answered += report.answered;
        phase.rounds.push(report.elapsed);
    }
    phase.elapsed += started.elapsed();
}

/// What the flooder did.
#[derive(Debug, Default)]
struct FloodReport {
    connects: usize,
    hellos_sent: usize,
    /// Connections opened and held without a ClientHello (the TCP-only control).
    silent: usize,
    failed: usize,
    elapsed: Duration,
    /// CPU time of the flooding thread (its syscalls, and the veth work done in its context).
    cpu: Duration,
}

/// CPU time of the calling thread so far, from /proc (utime + stime, in clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("read /proc/thread-self/stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state (field 3) here.
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// What the flooder does now.
const PAUSED: u8 = 0;
/// Connections opened and held, nothing sent: the same TCP load with nothing for TLS to do.
const TCP_ONLY: u8 = 1;
/// Connections opened, one ClientHello sent on each, then held.
const HELLO: u8 = 2;

/// Opens connections from `from` to `to` at `FLOOD_HELLOS_PER_S` and, in `HELLO` mode, sends
/// `hello` on each, never anything more, until `stop` is set or its bounds are reached. When
/// the mode changes it closes what it holds.
fn flood(from: Ipv4Addr, to: SocketAddrV4, hello: &[u8], mode: &AtomicU8, stop: &AtomicBool) -> FloodReport {
    // The attacker's own CPU is its cost, not the server's: on this shared two-vCPU machine
    // its thread would otherwise take time from the established clients' thread. nice 19:
    // it runs on what the others leave (setpriority(2) with PRIO_PROCESS and 0 names the
    // calling thread on Linux).
    // SAFETY: a plain syscall on the calling thread, no pointers.
    let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
    assert_eq!(niced, 0, "setpriority: {}", std::io::Error::last_os_error());
    let started = Instant::now();
    let cpu_at_start = thread_cpu();
    let mut report = FloodReport::default();
    let mut connecting: Vec<TcpStream> = Vec::with_capacity(FLOOD_CONNECTING_MAX);
    let mut held: VecDeque<TcpStream> = VecDeque::with_capacity(FLOOD_HELD_MAX + 1);
    // Time spent flooding, which paces the connects.
    let (mut flooding, mut resumed, mut last_mode) = (Duration::ZERO, None::<Instant>, PAUSED);
    while !stop.load(Ordering::Relaxed) && started.elapsed() < FLOOD_FOR_MAX {
        let now_mode = mode.load(Ordering::Relaxed);
        if now_mode != last_mode {
            last_mode = now_mode;
            if let Some(at) = resumed.take() {
                flooding += at.elapsed();
                report.elapsed = flooding;
            }
            connecting.clear();
            held.clear();
        }
        if now_mode == PAUSED {
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        let at = *resumed.get_or_insert_with(Instant::now);
        let due = ((flooding + at.elapsed()).as_micros() as u64 * FLOOD_HELLOS_PER_S / 1_000_000) as usize;
        while connecting.len() < FLOOD_CONNECTING_MAX && report.connects < FLOOD_CONNECTS_MAX.min(due) {
            let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None).expect("socket");
            // The smallest receive buffer: the server's flight is never read, so the attacker
            // does not pay to take it in (its window stays nearly closed).
            nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBuf, &1).expect("SO_RCVBUF");
            bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(from, 0))).expect("bind the flood address");
            report.connects += 1;
            match connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
                Ok(()) | Err(Errno::EINPROGRESS) => connecting.push(TcpStream::from(fd)),
                Err(_) => report.failed += 1,
            }
        }
        if connecting.is_empty() {
            thread::sleep(Duration::from_micros(500));
            continue;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd<'_>> = connecting.iter().map(|s| PollFd::new(s.as_fd(), PollFlags::POLLOUT)).collect();
            let _ = poll(&mut fds, PollTimeout::from(1u8));
            fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect()
        };
        let mut still = Vec::with_capacity(connecting.len());
        for (stream, ready) in connecting.drain(..).zip(ready) {
            if !ready {
                still.push(stream);
                continue;
            }
            let sent = matches!(stream.take_error(), Ok(None)) && (now_mode == TCP_ONLY || (&stream).write(hello).is_ok_and(|n| n == hello.len()));
            if !sent {
                report.failed += 1;
                continue;
            }
            if now_mode == HELLO {
                report.hellos_sent += 1;
            } else {
                report.silent += 1;
            }
            // Held and never answered; past the bound the oldest is closed.
            held.push_back(stream);
            if held.len() > FLOOD_HELD_MAX {
                held.pop_front();
            }
        }
        connecting = still;
    }
    if let Some(at) = resumed {
        report.elapsed = flooding + at.elapsed();
    }
    report.cpu = thread_cpu() - cpu_at_start;
    report
}

#[test]
fn a_client_hello_flood_from_one_address_leaves_established_connections_their_throughput() {
    let deadline = Instant::now() + TEST_TIMEOUT;
    raise_open_files_limit(8192).expect("raise RLIMIT_NOFILE");
    let lab = lab("hsflood", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // The per-source bound (docs/limits.md, TCP) would cap the attacker at 512 open
    // connections and refuse the rest before any TLS work: raised to the table here, so what
    // is tested is the TLS-level defence, not the TCP one.
    let server = Server::start(&lab, dir.path(), "ledger", "\n[tcp]\nconnections_per_source_max = 1024\n");
    let service = SocketAddrV4::new(lab.spec.service_ipv4, PORT);
    let flood_ip = add_client_address(&lab, 4);
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));

    // The recorded ClientHello: a fresh session's first flight, no ticket, so each copy asks
    // for a full handshake.
    let hello = {
        let name = rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::V4(*service.ip()).into());
        let mut c = rustls::ClientConnection::new(Arc::clone(&config), name).expect("client session");
        let mut hello = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut hello).expect("write the ClientHello");
        }
        hello
    };

    let opened = {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, SocketAddr::V4(service)).expect("connect for set-up");
            let (status, body) = request(&mut s, "POST", "/v1/accounts", r#"[{"id":"1","ledger":1,"code":1}]"#).expect("create account 1");
            assert_eq!(status, 200, "{body}");
            drop(s);
            Fleet::connect(config, SocketAddr::V4(service), ESTABLISHED, FleetLimits::default(), deadline)
        })
        .join()
        .expect("client thread")
    };
    let (mut fleet, _) = opened.unwrap_or_else(|e| panic!("opening the established connections: {e}"));

    // Back to back on a noisy machine: a warm-up, then quiet, TCP-only and ClientHello
    // windows in turn.
    let (mut quiet, mut silent, mut flooded) = (Phase::default(), Phase::default(), Phase::default());
    measure(&mut fleet, &mut Phase::default(), deadline);
    let (mode, stop) = (Arc::new(AtomicU8::new(PAUSED)), Arc::new(AtomicBool::new(false)));
    let flooder = {
        let (mode, stop) = (Arc::clone(&mode), Arc::clone(&stop));
        in_netns(&lab.spec.netns, move || flood(flood_ip, service, &hello, &mode, &stop))
    };
    let mut step_us = 0.0;
    for _ in 0..WINDOW_TRIPLES {
        for (m, phase) in [(PAUSED, &mut quiet), (TCP_ONLY, &mut silent), (HELLO, &mut flooded)] {
            mode.store(m, Ordering::Relaxed);
            thread::sleep(SETTLE);
            let step_us_before = server.metric_sum("pantera_tls_handshake_step_seconds_total", &[]) * 1e6;
            measure(&mut fleet, phase, deadline);
            if m == HELLO {
                step_us += server.metric_sum("pantera_tls_handshake_step_seconds_total", &[]) * 1e6 - step_us_before;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let report = flooder.join().expect("flooder");
    let step_share = step_us / 1e6 / flooded.elapsed.as_secs_f64();
    // What the ClientHellos cost beyond the same connections without them: the TLS-level
    // defence, which is what this test is about; and the whole flood against quiet.
    let tls_ratio = flooded.per_s() / silent.per_s();
    let ratio = flooded.per_s() / quiet.per_s();
    let metrics = server.metrics();
    println!(
        "lab_handshake_flood: established {:.0} req/s quiet, {:.0} req/s during a TCP-only flood, {:.0} req/s during \
         the ClientHello flood: {:.2} of the TCP-only figure, {:.2} of quiet; \
         round of {ESTABLISHED} p50/p99 {:.2}/{:.2} ms quiet, {:.2}/{:.2} ms flooded; flood: {:?} ({:.0} hellos/s); \
         handshake steps took {:.0} % of the worker's time during the flood",
        quiet.per_s(),
        silent.per_s(),
        flooded.per_s(),
        tls_ratio,
        ratio,
        quiet.percentile_ms(0.5),
        quiet.percentile_ms(0.99),
        flooded.percentile_ms(0.5),
        flooded.percentile_ms(0.99),
        report,
        report.hellos_sent as f64 / (report.elapsed.as_secs_f64() / 2.0),
        step_share * 100.0,
    );
    for line in metrics.lines().filter(|l| l.starts_with("pantera_tls") || l.contains("refused") || l.contains("accepted")) {
        println!("  {line}");
    }
    assert!(report.hellos_sent > 1_000, "the flood did not get going: {report:?}");
    // The flood reached the handshake budget and was evicted from it, oldest first.
    let started = server.metric_sum("pantera_tls_handshakes_started_total", &[]);
    let evicted = server.metric_sum("pantera_tls_handshakes_evicted_total", &[]);
    assert!(started >= 0.9 * report.hellos_sent as f64, "handshakes started {started}, hellos sent {}", report.hellos_sent);
    assert!(evicted > 0.0, "the budget never evicted:\n{metrics}");
    assert!(step_share <= STEP_SHARE_MAX, "handshake steps took {:.0} % of the worker's time", step_share * 100.0);
    assert!(tls_ratio >= TLS_RATIO_MIN, "the ClientHellos took established throughput to {tls_ratio:.2} of the TCP-only flood's figure");
    assert!(ratio >= RATIO_MIN, "established throughput fell to {ratio:.2} of the quiet figure during the flood");
}
