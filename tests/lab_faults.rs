//! A thread that dies ends the process (issue: hostile clients, liveness): with the
//! `fault-injection` feature, `PANTERA_FAULT` makes the ledger thread or a worker panic, and
//! the process must exit non-zero within a bounded time instead of living on half-alive,
//! answering its probes.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long a process with a dead thread may take to end.
const EXIT_WAIT: Duration = Duration::from_secs(10);

#[test]
fn a_ledger_thread_panic_ends_serve_kernel_non_zero() {
    let home = tempfile::tempdir().expect("tempdir");
    let tls = home.path().join("tls");
    // Certificates for loopback: this test needs no lab.
    let out = Command::new(PANTERA)
        .args(["certs", "init", "--dir"])
        .arg(&tls)
        .args(["--service-ip", "127.0.0.1"])
        .output()
        .expect("run pantera certs init");
    assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
    let listen: SocketAddr = format!("127.0.0.1:{}", free_local_port()).parse().expect("addr");
    let management: SocketAddr = format!("127.0.0.1:{}", free_local_port()).parse().expect("addr");
    let mut child = Command::new(PANTERA)
        .args(["serve-kernel", "--lab", "--home"])
        .arg(home.path())
        .args(["--listen", &listen.to_string(), "--management", &management.to_string()])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned()))
        .env("PANTERA_FAULT", "ledger-panic")
        .stdin(Stdio::null())
        .spawn()
        .expect("start pantera serve-kernel");
    let pid = child.id();
    // Killed if an assertion fails before it exits.
    struct KillOnDrop(Option<std::process::Child>);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Some(mut c) = self.0.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut guard = KillOnDrop(None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            panic!("serve-kernel exited before it was ready: {st}");
        }
        if http_get(management, "/readyz").map(|(s, _)| s == 200).unwrap_or(false) {
            break;
        }
        assert!(Instant::now() < deadline, "serve-kernel not ready");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(management, "/healthz").expect("healthz").0, 200);

    // One request reaches the ledger thread (a read is answered by it too): it panics.
    let config = tls_client_config(&tls, Some("client"));
    let sent = Instant::now();
    let answer = tls_connect(&config, listen).and_then(|mut s| request(&mut s, "GET", "/v1/accounts/1", ""));
    let status = wait_exit(&mut child, EXIT_WAIT);
    let exited_after = sent.elapsed();
    if status.is_none() {
        guard.0 = Some(child);
        panic!("serve-kernel (pid {pid}) still runs {EXIT_WAIT:?} after its ledger thread panicked");
    }
    let status = status.expect("exited");
    println!("serve-kernel exited {exited_after:?} after the request that made the ledger thread panic: {status}");
    assert!(!status.success(), "a dead ledger thread must end the process non-zero: {status}");
    assert!(answer.is_err(), "the request got an answer from a process without a ledger: {answer:?}");
    assert!(http_get(management, "/healthz").is_err(), "the management listener still answers");
}

#[test]
fn a_worker_panic_ends_serve_non_zero() {
    let lab = lab("wpanic", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_with_env(&lab, dir.path(), "ledger", "", &[("PANTERA_FAULT", "worker-panic")]);
    assert_eq!(http_get(server.management, "/healthz").expect("healthz").0, 200);
    // The worker panics on the turn after it accepts this connection.
    let service = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let sent = Instant::now();
    let _connected = in_netns(&lab.spec.netns, move || std::net::TcpStream::connect_timeout(&service, Duration::from_secs(5))).join();
    let status = server.wait_exit(EXIT_WAIT);
    let exited_after = sent.elapsed();
    let status = status.unwrap_or_else(|| panic!("pantera still runs {EXIT_WAIT:?} after a worker panicked"));
    println!("pantera serve exited {exited_after:?} after the connection that made its worker panic: {status}");
    assert!(!status.success(), "a dead worker must end the process non-zero: {status}");
    assert!(http_get(server.management, "/healthz").is_err(), "the management listener still answers");
    // The kernel released the XDP link with the process: the host has its queue back.
    assert!(!xdp_still_attached(&server.interface), "XDP program still attached to {}", server.interface);
}
