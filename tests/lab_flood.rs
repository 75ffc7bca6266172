//! A spoofed SYN flood on a private lab (root): 240 source addresses of the lab's subnet send
//! SYNs that nobody will ever acknowledge, at 50,000 per second for 6 s, while an honest client
//! on another address opens a new mTLS connection for every request. Without SYN cookies each
//! SYN took a listening socket for the 10 s handshake timeout and the honest client got 0 of 20
//! answers (docs/tcp.md, "SYN cookies"). Every frame stays inside the lab's namespace pair;
//! the flood stops by itself after its count or its time. `PANTERA_FLOOD_EXTRA_TOML` adds
//! configuration to the appliance's, to rerun the attack against other settings (with
//! `[tcp] syn_cookies = "off"` the honest client gets nothing through).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use pantera::lab_flood::{mac_of, SynFlood};

const FLOOD_RATE: u64 = 50_000;
const FLOOD_FOR: Duration = Duration::from_secs(6);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn a_spoofed_syn_flood_from_240_addresses_does_not_deny_an_honest_client() {
    let lab = lab("flood", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = std::env::var("PANTERA_FLOOD_EXTRA_TOML").unwrap_or_default();
    let server = Server::start(&lab, dir.path(), "ledger", &extra);
    let service = SocketAddr::from((server.service, PORT));
    let honest_ip = add_client_address(&lab, 4);
    // Spoofed sources: 240 addresses of the lab's own subnet that no host answers for.
    let octets = lab.spec.peer_ipv4.octets();
    let sources: Vec<Ipv4Addr> = (10..250).map(|last| Ipv4Addr::new(octets[0], octets[1], octets[2], last)).collect();
    assert!(!sources.contains(&server.service) && !sources.contains(&honest_ip));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    // Warm up: the honest client is served before the flood, and an account exists to read.
    let warm = in_netns(&lab.spec.netns, {
        let config = Arc::clone(&config);
        move || one_request(&config, honest_ip, service)
    });
    let status = warm.join().expect("warm-up").expect("served before the flood");
    assert!(status == 200 || status == 404, "status {status}");
    let rss_before = rss_bytes(server.pid());

    let dst_mac = mac_of(&lab.spec.host_if).expect("the appliance's MAC");
    // A spoofing attacker's made-up MAC: the SYN-ACKs to it are dropped by the client
    // namespace's kernel as not its own, as they would be on a switched network.
    let src_mac = [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01];
    let (peer_if, service_ip) = (lab.spec.peer_if.clone(), server.service);
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = in_netns(&lab.spec.netns, {
        let flooding = Arc::clone(&flooding);
        move || {
            let flood = SynFlood {
                src_mac,
                interface: peer_if,
                dst_mac,
                sources,
                dst: service_ip,
                port: PORT,
                rate: FLOOD_RATE,
                duration: FLOOD_FOR,
            };
            let report = flood.run().expect("flood");
            flooding.store(false, Ordering::Relaxed);
            (report.sent, report.elapsed)
        }
    });
    // The honest client: one request on a new connection every 25 ms while the flood lasts.
    let honest = in_netns(&lab.spec.netns, {
        let (config, flooding) = (Arc::clone(&config), Arc::clone(&flooding));
        move || {
            thread::sleep(Duration::from_millis(500));
            let mut results = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                let start = Instant::now();
                let outcome = one_request(&config, honest_ip, service);
                results.push((outcome, start.elapsed()));
                thread::sleep(Duration::from_millis(25));
            }
            results
        }
    });
    let (sent, took) = flooder.join().expect("flooder");
    let results = honest.join().expect("honest client");
    let rss_after = rss_bytes(server.pid());

    let rate = sent as f64 / took.as_secs_f64();
    let served: Vec<Duration> = results.iter().filter(|(r, _)| matches!(r, Ok(200) | Ok(404))).map(|(_, t)| *t).collect();
    let failures: Vec<&Result<u16, String>> = results.iter().map(|(r, _)| r).filter(|r| !matches!(r, Ok(200) | Ok(404))).collect();
    let mut latencies = served.clone();
    latencies.sort();
    let cookies = server.metric_sum("pantera_tcp_syn_cookies_sent_total", &[]);
    let accepted = server.metric_sum("pantera_tcp_syn_cookies_accepted_total", &[]);
    let summary = format!(
        "flood: {sent} SYNs in {took:?} ({rate:.0}/s); honest: {} of {} served, p50 {:?}, p99 {:?}; cookies sent {cookies}, accepted {accepted}; RSS {} -> {} KiB; failures {failures:?}",
        served.len(),
        results.len(),
        latencies.get(latencies.len() / 2),
        (!latencies.is_empty()).then(|| percentile(&latencies, 0.99)),
        rss_before / 1024,
        rss_after / 1024,
    );
    let counters: Vec<String> = server
        .metrics()
        .lines()
        .filter(|l| (l.starts_with("pantera_xsk_") || l.starts_with("pantera_xdp_packets_total") || l.contains("syn_cookies")) && !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect();
    let summary = format!("{summary}\n{}", counters.join("\n"));
    println!("{summary}");
    assert!(sent >= FLOOD_RATE * 5, "the flood was not a flood: {summary}");
    assert!(rate >= FLOOD_RATE as f64 * 0.9, "{summary}");
    assert!(results.len() >= 100, "{summary}");
    assert!(served.len() * 100 >= results.len() * 99, "fewer than 99 % served: {summary}");
    assert!(percentile(&latencies, 0.99) < Duration::from_millis(50), "p99: {summary}");
    // No state per SYN: the flood's SYNs were answered with cookies, and memory stayed flat.
    assert!(cookies >= sent as f64 * 0.9, "{summary}");
    assert!(rss_after <= rss_before + 4 * 1024 * 1024, "memory grew: {summary}");
}
