//! Edge defence in the XDP program (issue 8, items 3 and 6), on a private lab (root): the
//! source allowlist, the per-source SYN token bucket, and stealth mode. Each test first runs
//! the attack with the defence off, where it gets through as it did before the defence
//! existed, then with it on. The lab's client namespace gets a second address (.4) for the
//! other client; every flood is bounded in count and time, and all traffic stays on the
//! test's own veth pair.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};

/// Runs `one_request` from the client namespace.
fn request_from(lab: &Lab, config: &Arc<rustls::ClientConfig>, local: Ipv4Addr) -> Result<u16, String> {
    let (config, to) = (Arc::clone(config), SocketAddr::from((lab.spec.service_ipv4, PORT)));
    in_netns(&lab.spec.netns, move || one_request(&config, local, to)).join().expect("client thread")
}

/// Echo replies received by `ping -c count` from `source` to `target` in the client namespace.
fn pings_answered(lab: &Lab, source: &str, target: &str, count: u32) -> u32 {
    let count = count.to_string();
    let out = lab.exec_in_ns(&["ping", "-n", "-c", &count, "-i", "0.2", "-W", "1", "-I", source, target]).expect("ping");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(',')
        .find_map(|part| part.trim().strip_suffix(" received").and_then(|n| n.parse().ok()))
        .unwrap_or_else(|| panic!("ping {target}: {text}"))
}

/// Packets counted under a steering counter's name (`drop_syn_rate`: action drop, reason
/// syn_rate).
fn xdp_count(server: &Server, verdict: &str) -> f64 {
    server.metric_sum("pantera_xdp_packets_total", &xdp_filter(verdict).iter().map(String::as_str).collect::<Vec<_>>())
}

fn xdp_filter(verdict: &str) -> [String; 2] {
    let (action, reason) = verdict.split_once('_').expect("action_reason");
    [format!("action=\"{action}\""), format!("reason=\"{reason}\"")]
}

fn wait_xdp(server: &Server, verdict: &str, min: f64) -> f64 {
    let filter = xdp_filter(verdict);
    server.wait_metric("pantera_xdp_packets_total", &[filter[0].as_str(), filter[1].as_str()], min)
}

#[test]
fn a_source_outside_the_allowlist_cannot_complete_a_handshake_and_an_allowed_one_is_served() {
    let lab = lab("edge-allow", 1);
    let allowed = add_client_address(&lab, 4);
    let stranger = lab.spec.peer_ipv4;
    let service = lab.spec.service_ipv4.to_string();

    // Without an allowlist (the default, and all there was before it): anyone is served.
    let open_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, open_dir.path(), "ledger", "");
    let config = tls_client_config(&open_dir.path().join("tls"), Some("client"));
    assert_eq!(request_from(&lab, &config, stranger), Ok(404), "without an allowlist the other source is served");
    drop(server);

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", &format!("\n[edge]\nallow_sources = [\"{allowed}/32\"]\n"));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    assert_eq!(request_from(&lab, &config, allowed), Ok(404), "the allowed source is served");
    // The other source holds a valid client certificate, but its SYN (and the retransmit a
    // second later) never reaches the stack: no TCP handshake, so no TLS handshake either.
    let refused = request_from(&lab, &config, stranger);
    assert!(matches!(&refused, Err(e) if e.starts_with("connect:")), "the other source got {refused:?}");
    assert_eq!(pings_answered(&lab, &stranger.to_string(), &service, 2), 0, "ping from outside the allowlist");
    assert_eq!(pings_answered(&lab, &allowed.to_string(), &service, 2), 2, "ping from the allowlist");
    // SYN + at least one retransmit within the 3 s connect timeout, and two echo requests.
    let dropped = wait_xdp(&server, "drop_not_allowed", 4.0);
    assert!(dropped >= 4.0, "drop_not_allowed = {dropped}\n{}", server.metrics());
    assert_eq!(request_from(&lab, &config, allowed), Ok(404), "the allowed source is still served");
}

/// Sends `count` SYNs from `local` to `to`, `per_batch` at a time with a pause between
/// batches: each is a nonblocking connect(2) on a fresh socket, closed at once (a socket in
/// SYN-SENT closes without a segment, so nothing is retransmitted). Bounded by `count` and by
/// `time_max`. Returns the SYNs sent.
fn syn_flood(local: Ipv4Addr, to: SocketAddr, count: usize, per_batch: usize, time_max: Duration) -> usize {
    let SocketAddr::V4(to) = to else { unreachable!("the lab is IPv4") };
    let started = Instant::now();
    let mut sent = 0;
    while sent < count && started.elapsed() < time_max {
        for _ in 0..per_batch.min(count - sent) {
            let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)
                .expect("socket");
            bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(local, 0))).expect("bind");
            match connect(fd.as_raw_fd(), &SockaddrIn::from(to)) {
                Err(nix::errno::Errno::EINPROGRESS) => sent += 1,
                other => panic!("nonblocking connect: {other:?}"),
            }
        }
        thread::sleep(Duration::from_millis(5));
    }
    sent
}

/// The flood and, beside it, the other source's requests every 100 ms until the flood ends.
/// Returns (SYNs sent, the flood's duration, the other source's results).
fn flood_with_a_client_beside_it(lab: &Lab, config: &Arc<rustls::ClientConfig>, other: Ipv4Addr) -> (usize, Duration, Vec<Result<u16, String>>) {
    let to = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let done = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (done, attacker) = (Arc::clone(&done), lab.spec.peer_ipv4);
        in_netns(&lab.spec.netns, move || {
            let started = Instant::now();
            let sent = syn_flood(attacker, to, 3_000, 20, Duration::from_secs(20));
            done.store(true, Ordering::Relaxed);
            (sent, started.elapsed())
        })
    };
    let client = {
        let (done, config) = (Arc::clone(&done), Arc::clone(config));
        in_netns(&lab.spec.netns, move || {
            let mut results = Vec::new();
            // At least five requests, and one every 100 ms while the flood lasts (bounded).
            while (results.len() < 5 || !done.load(Ordering::Relaxed)) && results.len() < 300 {
                results.push(one_request(&config, other, to));
                thread::sleep(Duration::from_millis(100));
            }
            results
        })
    };
    let (sent, took) = flooder.join().expect("flood thread");
    (sent, took, client.join().expect("client thread"))
}

#[test]
fn a_source_sending_syns_past_its_rate_is_dropped_in_xdp_and_another_source_is_served() {
    let lab = lab("edge-syn", 1);
    let other = add_client_address(&lab, 4);
    let (rate, burst) = (100.0, 200.0);

    // The limit off: every SYN of the flood reaches the appliance.
    let open_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, open_dir.path(), "ledger", "\n[edge]\nsyn_rate_per_source = 0\n");
    let config = tls_client_config(&open_dir.path().join("tls"), Some("client"));
    let (sent, _, _) = flood_with_a_client_beside_it(&lab, &config, other);
    assert_eq!(sent, 3_000);
    let redirected = wait_xdp(&server, "redirect_tcp", 3_000.0);
    assert!(redirected >= 3_000.0, "with the limit off every SYN reaches the appliance: redirect_tcp = {redirected}");
    assert_eq!(xdp_count(&server, "drop_syn_rate"), 0.0);
    drop(server);

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", &format!("\n[edge]\nsyn_rate_per_source = {rate}\nsyn_burst_per_source = {burst}\n"));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let (sent, took, results) = flood_with_a_client_beside_it(&lab, &config, other);
    assert_eq!(sent, 3_000);
    // What the bucket can let through: the burst, then the rate over the flood's duration
    // (measured, plus a second for scheduling); everything else must have been dropped.
    let passed_max = burst + rate * (took.as_secs_f64() + 1.0);
    let expected_drops = sent as f64 - passed_max;
    assert!(expected_drops > 1_000.0, "the flood was too slow to overrun its bucket ({took:?}); the test proves nothing");
    let dropped = wait_xdp(&server, "drop_syn_rate", expected_drops);
    println!("{sent} SYNs in {took:?}: {dropped} dropped for rate (at least {expected_drops:.0} expected); other source: {results:?}");
    assert!(dropped >= expected_drops, "drop_syn_rate = {dropped}, expected at least {expected_drops:.0}\n{}", server.metrics());
    assert!(dropped <= sent as f64, "only the flood's SYNs are dropped: {dropped} of {sent}");
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(404))).collect();
    assert!(failed.is_empty(), "the other source failed {} of {} times: {failed:?}", failed.len(), results.len());
}

#[test]
fn stealth_mode_drops_frames_not_for_the_service_and_off_they_pass_as_before() {
    let lab = lab("edge-stealth", 1);
    let allowed = add_client_address(&lab, 4);
    let stranger = lab.spec.peer_ipv4;
    let host = lab.spec.host_ipv4.to_string();
    // The client knows the host's MAC, so its IPv4 frames reach the program without ARP
    // (ARP in stealth mode has its own counter and its own PROG_TEST_RUN cases).
    let host_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", lab.spec.host_if)).expect("mac");
    let out = lab
        .exec_in_ns(&["ip", "neigh", "replace", &host, "lladdr", host_mac.trim(), "dev", &lab.spec.peer_if, "nud", "permanent"])
        .expect("ip neigh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // IPv6 on this lab's two ends only (the lab keeps it off), with unique-local addresses.
    let subnet = lab.spec.host_ipv4.octets()[2];
    let (host6, peer6) = (format!("fd99:{subnet}::3"), format!("fd99:{subnet}::1"));
    std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", lab.spec.host_if), "0").expect("enable IPv6 on the host end");
    let (host_cidr6, peer_cidr6) = (format!("{host6}/64"), format!("{peer6}/64"));
    let sysctl = format!("net.ipv6.conf.{}.disable_ipv6=0", lab.spec.peer_if);
    let ipv6_on = [
        vec!["ip", "addr", "add", &host_cidr6, "dev", &lab.spec.host_if, "nodad"],
        vec!["ip", "netns", "exec", &lab.spec.netns, "sysctl", "-qw", &sysctl],
        vec!["ip", "-n", &lab.spec.netns, "addr", "add", &peer_cidr6, "dev", &lab.spec.peer_if, "nodad"],
    ];
    for args in ipv6_on {
        let out = Command::new(args[0]).args(&args[1..]).output().expect("ip");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let ping6 = |count: &str| {
        let out = lab.exec_in_ns(&["ping", "-6", "-n", "-c", count, "-i", "0.2", "-W", "1", &host6]).expect("ping -6");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Stealth off (the default): the host's own addresses answer through the program.
    let open_dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, open_dir.path(), "ledger", "");
    assert_eq!(pings_answered(&lab, &stranger.to_string(), &host, 2), 2, "IPv4 to the host, stealth off");
    let text = ping6("2");
    assert!(text.contains(" 2 received"), "IPv6 to the host, stealth off: {text}");
    assert!(xdp_count(&server, "pass_other") >= 4.0, "{}", server.metrics());
    let stealth_drops = ["drop_stealth_ipv4", "drop_stealth_ipv6", "drop_stealth_arp", "drop_stealth_other"];
    for verdict in stealth_drops {
        assert_eq!(xdp_count(&server, verdict), 0.0, "{verdict} with stealth off");
    }
    drop(server);

    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", &format!("\n[edge]\nstealth = true\nhost_allow = [\"{allowed}/32\"]\n"));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    assert_eq!(pings_answered(&lab, &stranger.to_string(), &host, 2), 0, "IPv4 to the host from outside host_allow, stealth on");
    let ipv4 = wait_xdp(&server, "drop_stealth_ipv4", 2.0);
    assert!(ipv4 >= 2.0, "drop_stealth_ipv4 = {ipv4}\n{}", server.metrics());
    let text = ping6("1");
    assert!(text.contains(" 0 received"), "IPv6 to the host, stealth on: {text}");
    let ipv6 = wait_xdp(&server, "drop_stealth_ipv6", 1.0);
    assert!(ipv6 >= 1.0, "drop_stealth_ipv6 = {ipv6}\n{}", server.metrics());
    // host_allow still reaches the host (its ARP included: the host resolves it to reply).
    assert_eq!(pings_answered(&lab, &allowed.to_string(), &host, 2), 2, "IPv4 to the host from host_allow, stealth on");
    // And the service is served to anyone, as before.
    assert_eq!(request_from(&lab, &config, stranger), Ok(404), "the service with stealth on");
}
