//! Root lab tests of the stop (issue: operating it): SIGTERM under load drains without losing
//! a reply, and the hard stop bounds a drain that cannot finish.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};

/// Keep-alive connections posting transfers at once.
const CLIENTS: u128 = 16;
/// Requests one client sends at most: the load is bounded whatever happens.
const REQUESTS_PER_CLIENT_MAX: u128 = 50_000;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

/// One response: its status, whether it announced `Connection: close`, and its body.
fn read_response_full(stream: &mut impl Read) -> std::io::Result<(u16, bool, String)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (status, length) = pantera::lab_client::response_head(&head);
    let close = head
        .to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n");
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok((
        status.unwrap_or(0),
        close,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

fn post_transfer(stream: &mut TlsStream, id: u128) -> std::io::Result<(u16, bool, String)> {
    let body = format!(
        r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#
    );
    let head = format!("POST /v1/transfers HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()?;
    read_response_full(stream)
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Transfers answered 200 with result `created`, and when.
    acked: Vec<(u128, Instant)>,
    /// Requests sent and not acknowledged (no answer, or another answer).
    unacked: u64,
    /// Connections whose last response said `Connection: close`.
    close_announced: u64,
    /// Connections that ended without it (EOF or an error): closed by the drain while idle,
    /// the request sent meanwhile was not executed.
    ended_otherwise: u64,
    /// When the first connection ended: the drain had begun.
    first_end_at: Option<Instant>,
}

/// Posts transfers `first_id..` over keep-alive connections until the connection ends after
/// `signalled` is set (a new connection is not opened then), or the bound is reached.
fn client(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    first_id: u128,
    signalled: Arc<AtomicBool>,
    acked_total: Arc<AtomicU64>,
) -> Seen {
    let mut seen = Seen::default();
    let mut next = first_id;
    let give_up = Instant::now() + Duration::from_secs(60);
    while next < first_id + REQUESTS_PER_CLIENT_MAX && Instant::now() < give_up {
        if signalled.load(Ordering::Relaxed) {
            break;
        }
        let mut stream = tls_connect(&config, addr).expect("connect before the stop");
        loop {
            let id = next;
            next += 1;
            match post_transfer(&mut stream, id) {
                Ok((200, close, body)) if body.contains(r#""status":"created""#) => {
                    seen.acked.push((id, Instant::now()));
                    acked_total.fetch_add(1, Ordering::Relaxed);
                    if close {
                        seen.close_announced += 1;
                        seen.first_end_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
                Ok((status, close, body)) => {
                    seen.unacked += 1;
                    assert!(
                        !body.contains(r#""status":"created""#) || status != 200,
                        "{body}"
                    );
                    if close {
                        seen.close_announced += 1;
                        seen.first_end_at.get_or_insert_with(Instant::now);
                        break;
                    }
                }
                Err(_) => {
                    seen.unacked += 1;
                    seen.ended_otherwise += 1;
                    seen.first_end_at.get_or_insert_with(Instant::now);
                    break;
                }
            }
            if next >= first_id + REQUESTS_PER_CLIENT_MAX || Instant::now() >= give_up {
                break;
            }
        }
    }
    seen
}

/// Every notification the test's stand-in for systemd received, in order.
fn notifications(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).expect("nonblocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// Receives notifications into `seen` until one has the line `line` after the first
/// `after` (bounded).
fn wait_for_notification(socket: &UnixDatagram, seen: &mut Vec<String>, line: &str, after: usize) {
    socket.set_nonblocking(false).expect("blocking");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    while !seen
        .iter()
        .skip(after)
        .any(|m| m.lines().any(|l| l == line))
    {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {line} within 10 s ({e}): {seen:?}"));
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

/// The index of the first notification with the line `line`.
fn position(sent: &[String], line: &str) -> Option<usize> {
    sent.iter().position(|m| m.lines().any(|l| l == line))
}

#[test]
fn sigterm_under_load_answers_every_transfer_that_reached_the_ledger_and_exits_0() {
    let lab = lab("drain", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    // The test stands in for systemd: READY=1, then STOPPING=1.
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    let mut server = Server::start_with_env(
        &lab,
        dir.path(),
        "ledger",
        "[shutdown]\ngrace_ms = 300\ntimeout_ms = 20000\n",
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8 path"))],
    );
    let tls = dir.path().join("tls");
    let config = tls_client_config(&tls, Some("client"));
    let addr = service(&lab);
    {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, addr).expect("connect");
            let (st, b) = request(
                &mut s,
                "POST",
                "/v1/accounts",
                r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#,
            )
            .expect("accounts");
            assert_eq!(st, 200, "{b}");
        })
        .join()
        .expect("accounts");
    }

    // A reload (SIGHUP, the unchanged file) is framed as Type=notify-reload expects.
    let mut seen = Vec::new();
    wait_for_notification(&notify, &mut seen, "READY=1", 0);
    kill(server.pid(), Signal::SIGHUP).expect("kill -HUP");
    wait_for_notification(&notify, &mut seen, "RELOADING=1", 0);
    let reloading_at = position(&seen, "RELOADING=1").expect("RELOADING=1");
    assert!(
        seen[reloading_at]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{seen:?}"
    );
    wait_for_notification(&notify, &mut seen, "READY=1", reloading_at + 1);

    let signalled = Arc::new(AtomicBool::new(false));
    let acked_total = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (config, signalled, acked_total) = (
                Arc::clone(&config),
                Arc::clone(&signalled),
                Arc::clone(&acked_total),
            );
            in_netns(&lab.spec.netns, move || {
                client(config, addr, (c + 1) * 1_000_000, signalled, acked_total)
            })
        })
        .collect();
    // The load runs on every connection before the signal (bounded wait).
    let load_deadline = Instant::now() + Duration::from_secs(30);
    while acked_total.load(Ordering::Relaxed) < 1_000 && Instant::now() < load_deadline {
        thread::sleep(Duration::from_millis(20));
    }
    println!(
        "{} transfers acknowledged before the signal",
        acked_total.load(Ordering::Relaxed)
    );

    kill(server.pid(), Signal::SIGTERM).expect("kill -TERM");
    signalled.store(true, Ordering::Relaxed);
    // /readyz turns 503 at once (the management listener stays up), while the service still
    // answers during the grace period.
    let not_ready_seen = loop {
        match http_get(server.management, "/readyz") {
            Ok((503, _)) => break Instant::now(),
            Ok((200, _)) => thread::sleep(Duration::from_millis(5)),
            other => panic!("/readyz during the stop: {other:?}"),
        }
    };
    // The management listener answers through the drain, until the process is about to exit.
    let mut last_not_ready = not_ready_seen;
    let exit_deadline = Instant::now() + Duration::from_secs(30);
    while server.is_running() && Instant::now() < exit_deadline {
        match http_get(server.management, "/readyz") {
            Ok((503, _)) => last_not_ready = Instant::now(),
            Ok(other) => panic!("/readyz during the stop: {other:?}"),
            // The listener closes last, just before the exit.
            Err(_) => {}
        }
        thread::sleep(Duration::from_millis(2));
    }
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("pantera exits after the drain");
    assert!(status.success(), "exit status after a drain: {status}");
    assert!(
        !xdp_still_attached(&server.interface),
        "an XDP program was left on {}",
        server.interface
    );

    let mut acked = BTreeSet::new();
    let (mut unacked, mut announced, mut ended, mut acked_while_not_ready) = (0, 0, 0, 0);
    let mut drain_began: Option<Instant> = None;
    for c in clients {
        let seen = c.join().expect("client");
        drain_began = match (drain_began, seen.first_end_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        acked_while_not_ready += seen
            .acked
            .iter()
            .filter(|(_, at)| *at > not_ready_seen)
            .count();
        acked.extend(seen.acked.into_iter().map(|(id, _)| id));
        unacked += seen.unacked;
        announced += seen.close_announced;
        ended += seen.ended_otherwise;
    }
    println!(
        "{} transfers acknowledged ({acked_while_not_ready} after /readyz turned 503), {unacked} not; {announced} connections ended with Connection: close, {ended} otherwise",
        acked.len()
    );
    assert!(
        acked_while_not_ready > 0,
        "the service stopped answering during the grace period"
    );
    // Each connection was ended by the drain: after a response with Connection: close, or
    // (idle at that moment) by close_notify and FIN.
    assert_eq!(
        announced + ended,
        CLIENTS as u64,
        "connections that did not end"
    );
    let drain_began = drain_began.expect("the connections ended");
    assert!(
        last_not_ready > drain_began,
        "/readyz did not answer (503) once the drain had begun"
    );

    let mut sent = seen;
    sent.extend(notifications(&notify));
    let ready_at = position(&sent, "READY=1");
    let stopping_at = position(&sent, "STOPPING=1");
    assert!(
        matches!((ready_at, stopping_at), (Some(r), Some(s)) if r < reloading_at && reloading_at < s),
        "notifications: {sent:?}"
    );

    // After a restart on the same data directory, the ledger holds exactly the transfers
    // acknowledged: each is there, and there are no others (every transfer moves 1 from
    // account 1, so its debits count them).
    server.spawn();
    let expected = acked.clone();
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect after the restart");
        let debits: u128 = account_field(&mut s, 1, "debits_posted")
            .parse()
            .expect("a number");
        assert_eq!(
            debits,
            expected.len() as u128,
            "transfers in the ledger vs transfers acknowledged"
        );
        for id in &expected {
            let (status, body) =
                request(&mut s, "GET", &format!("/v1/transfers/{id}"), "").expect("lookup");
            assert_eq!(
                status, 200,
                "acknowledged transfer {id} is not in the ledger: {body}"
            );
        }
    })
    .join()
    .expect("check after the restart");
    assert_eq!(server.terminate().code(), Some(0));
}

/// A TCP connection whose receive buffer is tiny, so a client that does not read stops the
/// server's output almost at once.
fn connect_small_window(to: SocketAddr) -> std::io::Result<TcpStream> {
    let tcp = connect_with(None, Some(4096), to)?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(tcp)
}

#[test]
fn the_hard_stop_ends_a_drain_that_cannot_finish_and_exits_3() {
    let lab = lab("hardstop", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_logged(
        &lab,
        dir.path(),
        "ledger",
        "[shutdown]\ngrace_ms = 0\ntimeout_ms = 1500\n",
    );
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let addr = service(&lab);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let clients = in_netns(&lab.spec.netns, move || {
        // A: pipelines thousands of requests and never reads: its responses can never all
        // be sent, so its drain cannot finish.
        let tcp = connect_small_window(addr).expect("connect A");
        let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
        let mut a = rustls::StreamOwned::new(
            rustls::ClientConnection::new(Arc::clone(&config), name).expect("client"),
            tcp,
        );
        while a.conn.is_handshaking() {
            a.conn.complete_io(&mut a.sock).expect("handshake A");
        }
        for _ in 0..3_000 {
            // The server stops reading once its output bound is reached: the send timeout
            // ends the writing then.
            if a.write_all(b"GET /nowhere HTTP/1.1\r\nHost: pantera\r\n\r\n")
                .and_then(|_| a.flush())
                .is_err()
            {
                break;
            }
        }
        // B: half of a transfer's request: never answered, closed by the drain.
        let mut b = tls_connect(&config, addr).expect("connect B");
        b.write_all(b"POST /v1/transfers HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[{\"id\":")
            .and_then(|_| b.flush())
            .expect("half a request");
        ready_tx.send(()).expect("ready");
        let b_result = read_response_full(&mut b);
        // A stays unread until the process is gone.
        let _ = stop_rx.recv_timeout(Duration::from_secs(30));
        drop(a);
        b_result
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("clients ready");
    kill(server.pid(), Signal::SIGTERM).expect("kill -TERM");
    // The drain cannot finish (A never reads): only the hard stop ends the process.
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the hard stop ends the process");
    let _ = stop_tx.send(());
    assert_eq!(status.code(), Some(3), "a hard stop exits 3: {status}");
    assert!(
        !xdp_still_attached(&server.interface),
        "an XDP program was left on {}",
        server.interface
    );
    let b_result = clients.join().expect("clients");
    assert!(
        b_result.is_err(),
        "a request half-sent when the drain began was answered: {b_result:?}"
    );
    // The cut is logged at error level: A, which never read its responses.
    let log = server.log_text();
    assert!(
        log.contains("hard stop: cutting 1 connection(s)"),
        "no per-queue account of the cut in the log:\n{log}"
    );
    assert!(
        log.contains("ERROR") && log.contains("shutdown.timeout_ms (1500 ms) passed with work left"),
        "no hard-stop line in the log:\n{log}"
    );
}
