//! Edge defence on a private lab (root): one address that opens connections and never speaks
//! must not lock out the others. The lab's client namespace gets a second address for the
//! honest client; every load is bounded in count and time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn two_thousand_silent_connections_from_one_address_do_not_lock_out_another() {
    let lab = lab("edge-one", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // The TLS handshake budget (src/handshake.rs) would reset the silent connections, which
    // never finish a handshake, long before 512 of them are open: raised to the table here so
    // that this test still exercises the per-source bound (the budget has its own test,
    // tests/lab_handshake_flood.rs).
    let server = Server::start_with_tls(&lab, dir.path(), "ledger", "handshakes_pending_max = 1024", "", &[]);
    let service = SocketAddr::from((server.service, PORT));
    let honest_ip = add_client_address(&lab, 4);
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let attack_for = Duration::from_secs(10);

    // The attacker: up to 2,000 connections from the lab's client address, opened as fast as
    // they are accepted and held without a byte, for 10 s.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, attacker_ip) = (Arc::clone(&stop), lab.spec.peer_ipv4);
        in_netns(&lab.spec.netns, move || {
            let mut held = Vec::new();
            let mut attempts = 0;
            while attempts < 2_000 && !stop.load(Ordering::Relaxed) {
                attempts += 1;
                if let Ok(s) = connect_from(attacker_ip, service) {
                    held.push(s);
                }
            }
            while !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(50));
            }
            (attempts, held.len())
        })
    };
    // The honest client on the other address: a new connection and a request every 100 ms.
    let honest = {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let started = Instant::now();
            let mut results = Vec::new();
            while started.elapsed() < attack_for {
                results.push(one_request(&config, honest_ip, service));
                thread::sleep(Duration::from_millis(100));
            }
            results
        })
    };
    let results = honest.join().expect("honest client");
    stop.store(true, Ordering::Relaxed);
    let (attempts, held) = attacker.join().expect("attacker");
    let failed: Vec<_> = results.iter().filter(|r| !matches!(r, Ok(404))).collect();
    let refused = server.metric_sum("pantera_tcp_connections_refused_total", &["reason=\"per_source\""]);
    println!("attacker: {attempts} connects, {held} held; honest client: {} of {} answered; refused_per_source {refused}", results.len() - failed.len(), results.len());
    assert!(failed.is_empty(), "the honest client was locked out {} of {} times: {failed:?}", failed.len(), results.len());
    assert!(refused > 0.0, "the per-source bound never engaged:\n{}", server.metrics());
}
