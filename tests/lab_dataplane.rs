//! Root lab tests of the dataplane (issue: XDP steering, AF_XDP queues, the userspace stack).
//! Each test makes its own namespace and veth pair (removed on drop, also on failure), runs the
//! real XDP program and AF_XDP sockets, and talks to the appliance from the client namespace.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;

fn mac_of(interface: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).expect("mac").trim().to_owned()
}

#[test]
fn ping_and_arp_are_answered_by_the_userspace_stack_and_the_host_keeps_its_address() {
    let lab = lab("ping", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "echo", "");
    // No kernel owns the service address: whatever answers is the userspace stack.
    let owned = std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output().expect("ip addr");
    assert!(!String::from_utf8_lossy(&owned.stdout).contains(&format!("{}/", lab.spec.service_ipv4)));

    let service = lab.spec.service_ipv4.to_string();
    let out = lab.exec_in_ns(&["ping", "-c", "5", "-i", "0.2", "-W", "2", &service]).expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("5 received"), "ping {service}: {text}");

    // ARP resolved the service address to the interface's MAC.
    let neigh = lab.exec_in_ns(&["ip", "neigh", "show", &service]).expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(neigh.contains(&mac_of(&lab.spec.host_if)), "neighbour entry for {service}: {neigh}");

    // While the program is attached, the kernel's own address on the link still answers.
    assert!(xdp_attached(&lab.spec.host_if));
    let host = lab.spec.host_ipv4.to_string();
    let out = lab.exec_in_ns(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &host]).expect("ping host");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3 received"), "ping {host}: {text}");

    // And the appliance saw the echo requests through its own sockets.
    assert!(server.wait_metric("pantera_xdp_packets_total", &["icmp"], 5.0) >= 5.0, "{}", server.metrics());
}

/// Deterministic bytes for connection `i`, so a swapped or corrupted stream is caught.
fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Opens `conns` connections at once (all held open together), then echoes `bytes` on each.
fn echo_concurrently(lab: &Lab, conns: usize, bytes: usize) -> usize {
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let all_connected = Arc::new(Barrier::new(conns));
    let handles: Vec<_> = (0..conns)
        .map(|i| {
            let all_connected = Arc::clone(&all_connected);
            in_netns(&lab.spec.netns, move || {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10));
                all_connected.wait();
                let mut stream = stream.map_err(|e| format!("connection {i}: connect: {e}"))?;
                stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                let data = payload(i, bytes);
                let mut writer = stream.try_clone().expect("clone");
                let sent = data.clone();
                let w = std::thread::spawn(move || writer.write_all(&sent));
                let mut back = vec![0; bytes];
                stream.read_exact(&mut back).map_err(|e| format!("connection {i}: read: {e}"))?;
                w.join().expect("writer").map_err(|e| format!("connection {i}: write: {e}"))?;
                if back != data {
                    return Err(format!("connection {i}: echoed bytes differ"));
                }
                Ok(())
            })
        })
        .collect();
    let results: Vec<Result<(), String>> = handles.into_iter().map(|h| h.join().expect("client thread")).collect();
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{} of {conns} connections failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(5)]);
    conns
}

#[test]
fn two_hundred_concurrent_connections_each_echo_64_kib_intact() {
    let lab = lab("echo", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "echo", "");
    assert_eq!(echo_concurrently(&lab, 200, 64 * 1024), 200);
    assert!(server.wait_metric("pantera_tcp_connections_accepted_total", &[], 200.0) >= 200.0, "{}", server.metrics());
}

#[test]
fn a_syn_to_another_port_gets_no_answer_at_all() {
    let lab = lab("closed", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "echo", "");
    let addr = SocketAddr::from((lab.spec.service_ipv4, 9999));
    let result = in_netns(&lab.spec.netns, move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .join()
        .expect("client thread");
    // No RST (that would be ConnectionRefused): the SYN is dropped in XDP and the connect times out.
    let err = result.expect_err("nothing listens on port 9999");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(server.wait_metric("pantera_xdp_packets_total", &["action=\"drop\"", "reason=\"port\""], 1.0) >= 1.0, "{}", server.metrics());
}

#[test]
fn sigterm_detaches_the_program_and_a_start_after_sigkill_succeeds() {
    let lab = lab("stop", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&lab, dir.path(), "echo", "");
    assert!(xdp_attached(&lab.spec.host_if));
    let status = server.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert!(!xdp_still_attached(&lab.spec.host_if), "no XDP program is left on {} after SIGTERM", lab.spec.host_if);

    server.spawn();
    server.kill();
    // A SIGKILLed appliance runs no clean-up at all; the next start must still succeed.
    server.spawn();
    assert_eq!(echo_concurrently(&lab, 4, 4096), 4);
}

#[test]
fn with_two_queues_both_workers_serve_connections() {
    let lab = lab("queues", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "echo", "");
    assert_eq!(echo_concurrently(&lab, 64, 1024), 64);
    server.wait_metric("pantera_tcp_connections_accepted_total", &[], 64.0);
    let q0 = server.metric_sum("pantera_tcp_connections_accepted_total", &["queue=\"0\""]);
    let q1 = server.metric_sum("pantera_tcp_connections_accepted_total", &["queue=\"1\""]);
    assert!(q0 >= 1.0 && q1 >= 1.0, "accepted per queue: q0={q0} q1={q1}\n{}", server.metrics());
    assert_eq!(q0 + q1, 64.0);
}
